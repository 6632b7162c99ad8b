"""Would independently trained recipe runs voting beat one run? The soups of 3 recipe runs
(`cellsynth run configs/nissl-k2.yaml` at different seeds or thread counts: different
simulations, pretrainings and fine-tunings, unlike the 5 members of one soup, which share a
pretraining and were tried in member_ensemble_dev.py) each predict as the recipe does (8-view
TTA, NMS 0.5); their cells are grouped like TTA views (``tta.merge_views``: mask IoU > 0.5,
at most one per run, outline = angle-wise median, score = the runs' scores summed / n), then
the recipe's faint cut from its 2 annotated images and a threshold fixed before this ran:
the mean of the runs' own thresholds (each chosen on the 2 annotated images). A single run
goes through the same code with one member. F1 on the Nissl development images (the 2
training images the recipe does not annotate; the test split is not opened).

    OMP_NUM_THREADS=1 python experiments/run_ensemble_dev.py \\
        --groups runs/nissl-k2-s0,runs/nissl-k2-t2-s1,runs/nissl-k2-par-s2 \\
                 runs/nissl-k2-t2-s0,runs/nissl-k2-par-s1,runs/nissl-k2-s2 \\
        --json docs/results/run_ensemble_dev/results.json

Paired over the development images cut into 2 x 2 tiles: each group's vote against each of
its members (3 pairs per group).
"""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np
from _nissl_dev_set import dev_items, recipe_faint_cut, scores, summary, tile_matchings, write
from _paired import compare

from cellsynth.io.normalize import intensity_range
from cellsynth.segment.faint import drop_faint
from cellsynth.segment.predict import _reader, image_proposals, load_detector, set_nms
from cellsynth.segment.tiles import contours_to_labels
from cellsynth.segment.tta import merge_views

NMS = 0.5  # the recipe's
CACHE = Path("/tmp/run_ensemble_cache")


def proposals(run: Path, det, k: int, image) -> tuple:
    """The run's TTA proposals on development image ``k``, cached."""
    CACHE.mkdir(exist_ok=True)
    key = hashlib.md5(str((run / "soup").resolve()).encode()).hexdigest()[:8]
    f = CACHE / f"{key}_{k}.npz"
    if not f.exists():
        c, s, off = image_proposals(det, image, tta=True)
        np.savez(f, c=c, s=s, off=off)
    z = np.load(f)
    return z["c"], z["s"], float(z["off"])


def vote(runs, dets, items, cut) -> list[np.ndarray]:
    thresh = float(np.mean([d.score_thresh for d in dets]))
    preds = []
    for k, (image, gt) in enumerate(items):
        passes, offset = [], 0.0
        for run, det in zip(runs, dets):
            c, s, offset = proposals(run, det, k, image)
            passes.append((c, s))
        contours, votes = merge_views(passes) if len(passes) > 1 else passes[0]
        low, high = intensity_range(image, dets[0].normalization, where="image")
        read = _reader(dets[0].in_channels, low, high, "image")
        votes = drop_faint(contours, votes, image.shape[:2],
                           lambda ys, xs, r=read, im=image: r(im, ys, xs), cut, thresh)[0]
        preds.append(contours_to_labels(contours, votes, gt.shape, score_thresh=thresh,
                                        offset=offset))
    return preds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--groups", nargs="+", required=True, help="comma-separated run folders")
    p.add_argument("--data", default="../shared/data/nissl_rat_sscx/train")
    p.add_argument("--json")
    args = p.parse_args()
    items = dev_items(args.data)
    cut = recipe_faint_cut(args.data)
    out = summary(items) | {"nms": NMS, "groups": {}}
    ens_units, single_units = [], []
    for group in args.groups:
        t0 = time.time()
        runs = [Path(r) for r in group.split(",")]
        dets = [load_detector(r / "soup", say_precision=False) for r in runs]
        for det in dets:
            set_nms(det, NMS)
        res = {}
        singles = []
        for run, det in zip(runs, dets):
            pred = vote([run], [det], items, cut)
            res[str(run)] = scores(pred, items)
            singles.append(tile_matchings(items, pred))
            print(f"{run}: {res[str(run)]}", flush=True)
        pred = vote(runs, dets, items, cut)
        res["vote"] = scores(pred, items)
        print(f"vote of {group}: {res['vote']}", flush=True)
        units = tile_matchings(items, pred)
        ens_units += [units] * len(runs)
        single_units += singles
        out["groups"][group] = {"scores": res, "thresholds": [d.score_thresh for d in dets],
                                "seconds": round(time.time() - t0, 1)}
        write(args.json, out)
    print("vote - single run (each group against each of its runs):")
    _, _, out["paired"] = compare(ens_units, single_units)
    write(args.json, out)


if __name__ == "__main__":
    main()
