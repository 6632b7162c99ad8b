"""Splitting the recipe's merged detections into the cells beneath them, screened on the
Nissl development images (the 2 training images the recipe does not annotate; never the
test split).

Half of the recipe's misses there are *merges*: one detection over two annotated somata
(experiments/shared_errors.py). For most of them the detector does propose the single
somata too, below the score threshold (36 of 39 merged misses of seed 1 have a proposal at
IoU >= 0.5 before NMS, 23 after NMS 0.5, scores 0.37-0.97 against its threshold 0.95).
The rule tried here works on the proposals the recipe paints from (its soup, 8-view TTA,
the faint cut, NMS 0.5): a detection D that passes the threshold is replaced by *parts*,
proposals below the threshold with score >= ``low`` that lie >= ``inside`` within D, each
covers 20-80 % of D's area, they overlap each other by IoU <= 0.2 (picked best first), at
least two of them, and together cover >= ``cover`` of D. The parts take D's score.

    python experiments/split_merged_dev.py --detectors RUN_s0 RUN_s1 RUN_s2 \\
        --json docs/results/nissl_split/dev.json

Each setting is paired with the recipe as it is (no split) over 2 x 2 tiles, seeds averaged.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from _nissl_dev_set import (
    arguments,
    dev_items,
    recipe_faint_cut,
    scores,
    summary,
    tile_matchings,
    write,
)
from _paired import compare
from shared_errors import miss_kinds

from cellsynth.segment.predict import image_proposals, load_detector, set_nms
from cellsynth.segment.tiles import contours_to_labels
from cellsynth.segment.tta import _mask  # (a contour's mask within a box)

NMS = 0.5  # the recipe's
LOWS, COVERS = (0.3, 0.5, 0.7), (0.6, 0.7, 0.8)
INSIDE, PART_MIN, PART_MAX, PART_IOU = 0.8, 0.2, 0.8, 0.2


def _box(contour: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    lo = np.floor(contour.min(axis=0)).astype(int)
    hi = np.ceil(contour.max(axis=0)).astype(int) + 1
    return (max(lo[1], 0), max(lo[0], 0), min(hi[1], shape[0]), min(hi[0], shape[1]))


def split_merged(contours: np.ndarray, scores: np.ndarray, thresh: float,
                 shape: tuple[int, int], low: float, cover: float
                 ) -> tuple[np.ndarray, np.ndarray, int]:
    """(contours, scores, how many detections were split); see the module docstring."""
    kept = np.flatnonzero(scores >= thresh)
    pool = np.flatnonzero((scores >= low) & (scores < thresh))
    if kept.size == 0 or pool.size == 0:
        return contours, scores, 0
    boxes = np.array([_box(c, shape) for c in contours[pool]])
    scores = scores.copy()
    new_contours, new_scores, split = [], [], 0
    for d in kept:
        y0, x0, y1, x1 = box = _box(contours[d], shape)
        near = pool[(boxes[:, 0] < y1) & (boxes[:, 2] > y0) & (boxes[:, 1] < x1)
                    & (boxes[:, 3] > x0)]
        if near.size < 2:
            continue
        whole = _mask(contours[d], box)
        area = whole.sum()
        if area == 0:
            continue
        parts: list[np.ndarray] = []
        for p in near[np.argsort(-scores[near])]:
            m = _mask(contours[p], box)  # (clipped to D's box: what lies outside is lost)
            full = _mask(contours[p], _box(contours[p], shape)).sum()
            inside = (m & whole).sum()
            if full == 0 or inside < INSIDE * full or not (
                    PART_MIN * area <= full <= PART_MAX * area):
                continue
            if any((m & q).sum() > PART_IOU * (m | q).sum() for q in parts):
                continue
            parts.append(m)
            new_contours.append(contours[p])
            new_scores.append(scores[d])
        if len(parts) >= 2 and (np.logical_or.reduce(parts) & whole).sum() >= \
                cover * area:
            scores[d] = -1.0  # (D gives way to its parts)
            split += 1
        else:
            del new_contours[len(new_contours) - len(parts):]
            del new_scores[len(new_scores) - len(parts):]
    if not new_contours:
        return contours, scores, 0
    return (np.concatenate([contours, np.stack(new_contours)]),
            np.concatenate([scores, np.array(new_scores, scores.dtype)]), split)


def main() -> None:
    args = arguments(__doc__, extra=lambda ap: ap.add_argument(
        "--cache", type=Path, default=Path("runs/split-dev-cache")))
    items = dev_items(args.data)
    cut = recipe_faint_cut(args.data)
    out = summary(items) | {"nms": NMS, "inside": INSIDE, "part_area": [PART_MIN, PART_MAX],
                            "part_iou": PART_IOU, "settings": {}}
    args.cache.mkdir(parents=True, exist_ok=True)
    settings = [None, *itertools.product(LOWS, COVERS)]
    units: dict[str, list] = {}
    results: dict[str, dict] = {}
    for run in map(Path, args.detectors):
        det = load_detector(run / "soup" / "best.pt", say_precision=False)
        set_nms(det, NMS)
        proposals = []
        for k, (image, _) in enumerate(items):
            f = args.cache / f"{run.name}_{k}.npz"
            if not f.exists():
                c, s, off = image_proposals(det, image, tta=True, faint=cut)
                np.savez(f, contours=c, scores=s, offset=off)
            z = np.load(f)
            proposals.append((z["contours"], z["scores"], float(z["offset"])))
        for setting in settings:
            name = "recipe" if setting is None else f"low{setting[0]:g}_cover{setting[1]:g}"
            preds, n_split = [], 0
            for (c, s, off), (_, gt) in zip(proposals, items):
                if setting is not None:
                    c, s, n = split_merged(c, s, det.score_thresh, gt.shape, *setting)
                    n_split += n
                preds.append(contours_to_labels(c, s, gt.shape, score_thresh=det.score_thresh,
                                                offset=off))
            kinds = [miss_kinds(gt, p) for p, (_, gt) in zip(preds, items)]
            m = scores(preds, items) | {"split": n_split, "missed_kinds": {
                k: sum(d[k] for d in kinds) for k in kinds[0]}}
            results.setdefault(name, {})[str(run)] = m
            units.setdefault(name, []).append(tile_matchings(items, preds))
            print(f"{run.name} {name}: F1@0.5 {m['f1_50']:.3f} F1avg {m['f1_avg']:.3f} "
                  f"P {m['precision_50']:.2f} R {m['recall_50']:.2f} split {n_split} "
                  f"misses {m['missed_kinds']}", flush=True)
    for name in results:
        out["settings"][name] = {"runs": results[name]}
        if name != "recipe":
            print(f"{name} - recipe:")
            out["settings"][name]["paired"] = compare(units[name], units["recipe"])[2]
    write(args.json, out)


if __name__ == "__main__":
    main()
