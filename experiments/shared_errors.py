"""Which of the recipe's errors the fine-tuned Cellpose peer (V1) makes too, on the Nissl
development images (the 2 training images the recipe does not annotate; never the test split).

A *miss* is an annotated soma that no detection matches at IoU >= 0.5, split into *merged*
(its best detection also covers another soma: one outline over two), *outline* and *unseen*
(:func:`miss_kinds`); a *false positive* a detection that matches no soma. A miss is
*shared* when the peer misses the same soma; a false positive is shared when one of the
peer's false positives covers it at IoU >= 0.5.
Somata that every recipe run and the peer miss are the part of the recall that neither
detector family reaches on these annotations.

    python experiments/shared_errors.py --repo CLONE_OF_rat_sscx_nissl_analysis \\
        --detectors runs/nissl-k2-s0 runs/nissl-k2-s1 runs/nissl-k2-s2 \\
        --json docs/results/nissl_shared_errors/results.json

(--detectors names recipe run folders; each is predicted as the recipe predicts: its soup,
8-view TTA, the faint cut, NMS 0.5.) The peer's predictions come from the dataset owners'
repository (see peer_cellpose.py); nothing is downloaded.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import tifffile
from _nissl_dev_set import (
    DEV,
    RECIPE_NMS,
    arguments,
    dev_items,
    recipe_faint_cut,
    recipe_run_predictions,
    summary,
    write,
)
from peer_cellpose import QC, _listing, _our_name, _read

from cellsynth.evaluate.matching import _overlaps


def missed(gt: np.ndarray, pred: np.ndarray) -> set[int]:
    """The labels of the annotated somata no detection matches at IoU >= 0.5."""
    gi, _, iou, _, _ = _overlaps(gt, pred)
    ids = np.unique(gt[gt > 0])  # (_overlaps numbers objects 1..n in order of their ids)
    return set(ids.tolist()) - set(ids[gi[iou >= 0.5] - 1].tolist())


def miss_kinds(gt: np.ndarray, pred: np.ndarray) -> dict[str, int]:
    """Every miss as ``merged`` (its best detection, IoU > 0.1, also touches another soma by
    IoU > 0.1: one outline over two somata), ``outline`` (it touches this soma alone) or
    ``unseen`` (no detection touches it)."""
    gi, pi, iou, _, _ = _overlaps(gt, pred)
    ids = np.unique(gt[gt > 0])
    index = {int(g): k + 1 for k, g in enumerate(ids)}
    touch = iou > 0.1
    out = {"merged": 0, "outline": 0, "unseen": 0}
    for soma in missed(gt, pred):
        near = (gi == index[soma]) & touch
        if not near.any():
            out["unseen"] += 1
            continue
        best = pi[near][np.argmax(iou[near])]
        out["merged" if ((pi == best) & touch).sum() >= 2 else "outline"] += 1
    return out


def unmatched(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """``pred`` with only its false positives (detections matching no soma) left."""
    _, pi, iou, _, _ = _overlaps(gt, pred)
    ids = np.unique(pred[pred > 0])
    false = np.setdiff1d(ids, ids[pi[iou >= 0.5] - 1])
    return np.where(np.isin(pred, false), pred, 0)


def shared_false(ours: np.ndarray, peer: np.ndarray) -> tuple[int, int]:
    """(false positives in ``ours``, those covered by one of ``peer``'s at IoU >= 0.5); both
    arrays hold false positives only."""
    n = len(np.unique(ours[ours > 0]))
    if n == 0 or not peer.any():
        return n, 0
    _, _, iou, _, _ = _overlaps(peer, ours)
    return n, int((iou >= 0.5).sum())  # (IoU > 0.5 pairs are one to one)


def main() -> None:
    args = arguments(__doc__, extra=lambda ap: (
        ap.add_argument("--repo", type=Path, required=True),
        ap.add_argument("--cache", type=Path, default=Path("runs/shared-errors-cache"))))
    items = dev_items(args.data)
    listing = {_our_name(n): n for n in _listing(args.repo, f"{QC}/v1")}
    peer = [tifffile.imread(io.BytesIO(_read(args.repo, f"{QC}/v1/{listing[stem]}")))
            for stem in DEV]
    peer_missed = [missed(gt, p) for p, (_, gt) in zip(peer, items)]
    peer_false = [unmatched(gt, p) for p, (_, gt) in zip(peer, items)]
    peer_kinds = [miss_kinds(gt, p) for p, (_, gt) in zip(peer, items)]
    out = summary(items) | {"nms": RECIPE_NMS, "peer_v1": {
        "missed": sum(map(len, peer_missed)),
        "missed_kinds": {k: sum(d[k] for d in peer_kinds) for k in peer_kinds[0]},
        "false_positives": int(sum(len(np.unique(f[f > 0])) for f in peer_false))}}
    cut = recipe_faint_cut(args.data)
    everyone: list[set[int]] | None = None
    for name in args.detectors:
        preds = recipe_run_predictions(name, items, cut, args.cache)
        ours = [missed(gt, p) for p, (_, gt) in zip(preds, items)]
        both = sum(len(a & b) for a, b in zip(ours, peer_missed))
        fp = [shared_false(unmatched(gt, p), f)
              for p, (_, gt), f in zip(preds, items, peer_false)]
        kinds = [miss_kinds(gt, p) for p, (_, gt) in zip(preds, items)]
        out["detectors"][name] = r = {
            "missed": sum(map(len, ours)), "missed_by_peer_too": both,
            "missed_kinds": {k: sum(d[k] for d in kinds) for k in kinds[0]},
            "false_positives": sum(n for n, _ in fp),
            "false_positives_of_peer_too": sum(s for _, s in fp)}
        print(f"{name}: misses {r['missed']} (peer too {both}; {r['missed_kinds']}), "
              f"false positives "
              f"{r['false_positives']} (peer too {r['false_positives_of_peer_too']})",
              flush=True)
        everyone = ours if everyone is None else [a & b for a, b in zip(everyone, ours)]
    if everyone is not None:
        out["missed_by_every_run"] = sum(map(len, everyone))
        out["missed_by_every_run_and_peer"] = sum(
            len(a & b) for a, b in zip(everyone, peer_missed))
        print(f"missed by every run {out['missed_by_every_run']}, and by the peer "
              f"{out['missed_by_every_run_and_peer']} (of {out['cells']} somata; the peer "
              f"misses {out['peer_v1']['missed']})")
    write(args.json, out)


if __name__ == "__main__":
    main()
