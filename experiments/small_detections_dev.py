"""The Nissl recipe's small detections (<= 250 px) on the development images: do the false
ones differ from the true ones by score, stain or shape, and what would a higher score
threshold for small detections alone gain? (Development images only; never the test split.)

    python experiments/small_detections_dev.py \\
        --detectors /work/exp/recipe-t1-s0 /work/exp/recipe-s1 /work/exp/recipe-s2 \\
        --json docs/results/nissl_false_positives/small_detections.json

Each detector predicts as the recipe predicts (soup, 8-view TTA, faint cut, NMS 0.5); a
detection is true when it matches a soma at IoU >= 0.5.
"""

from __future__ import annotations

import numpy as np
from _nissl_dev_set import arguments, dev_items, recipe_detector, recipe_faint_cut, write
from skimage.measure import regionprops

from cellsynth.evaluate.matching import _overlaps
from cellsynth.io.normalize import normalize
from cellsynth.segment.predict import predict_image

SMALL_PX = 250
THRESHOLDS = (0.96, 0.97, 0.98)


def detections(det, items, cut) -> list[dict]:
    rows = []
    for image, gt in items:
        labels, scores = predict_image(det, image, tta=True, faint=cut, return_scores=True)
        signal = cut.signal(normalize(image, where=None))
        _, pi, iou, _, _ = _overlaps(gt, labels)
        ids = np.unique(labels[labels > 0])
        true = set(ids[pi[iou >= 0.5] - 1].tolist())
        for r in regionprops(labels, intensity_image=signal):
            rows.append({"true": r.label in true, "area": int(r.area),
                         "stain": float(r.intensity_mean),
                         "axis_ratio": float(r.axis_major_length
                                             / max(r.axis_minor_length, 1.0)),
                         "score": float(scores[r.label])})
    return rows


def f1(rows: list[dict], n_gt: int, small_thresh: float | None = None) -> float:
    kept = [r for r in rows if small_thresh is None or r["area"] > SMALL_PX
            or r["score"] >= small_thresh]
    tp = sum(r["true"] for r in kept)
    return 2 * tp / (len(kept) + n_gt)


def main() -> None:
    args = arguments(__doc__)
    items = dev_items(args.data)
    n_gt = int(sum(len(np.unique(g)) - 1 for _, g in items))
    cut = recipe_faint_cut(args.data)
    out = {"small_px": SMALL_PX, "somata": n_gt, "detectors": {}}
    pooled = []
    for run in args.detectors:
        det = recipe_detector(run)
        rows = detections(det, items, cut)
        pooled += rows
        base = f1(rows, n_gt)
        out["detectors"][run] = {"f1_50": round(base, 4), "small_threshold_gain": {
            str(t): round(f1(rows, n_gt, t) - base, 4) for t in THRESHOLDS}}
        print(run, out["detectors"][run], flush=True)
    groups = {}
    for small in (True, False):
        for true in (True, False):
            sel = [r for r in pooled if (r["area"] <= SMALL_PX) == small and r["true"] == true]
            groups[f"{'small' if small else 'large'} {'true' if true else 'false'}"] = {
                "n": len(sel), **{f"median_{k}": round(float(np.median([r[k] for r in sel])), 4)
                                  for k in ("area", "stain", "axis_ratio", "score")}}
    out["pooled_over_runs"] = groups
    for name, g in groups.items():
        print(name, g)
    write(args.json, out)


if __name__ == "__main__":
    main()
