"""Beside the faint cut: are the annotators' smallest and most elongated somata limits too?
F1 on the Nissl development images (the 2 training images the recipe does not annotate; the
test split is not opened).

Each detector predicts as the recipe does (8-view TTA, its threshold); the faint cut at q = 5
(stain_filter_dev.py) is applied, then detections smaller than the a-th percentile of the
annotated somata's areas, or more elongated (major / minor axis) than their e-th percentile,
are dropped: all percentiles of the 227 somata of the recipe's 2 annotated images.

    OMP_NUM_THREADS=1 python experiments/shape_filter_dev.py \\
        --detectors runs/nissl-k2-s5x240-s0/soup ... \\
        --json docs/results/shape_filter_dev/results.json
"""

from __future__ import annotations

import numpy as np
from _nissl_dev_set import arguments, detector_path, dev_items, summary, write
from skimage.measure import regionprops
from stain_filter_dev import ANNOTATED, object_stain, stain

from cellsynth.evaluate.matching import aggregate, matching
from cellsynth.io.datasets import load_dataset
from cellsynth.segment.predict import load_detector, predict_image

AREA = (0, 1, 2, 5)          # lower percentiles of the annotated areas
ELONGATION = (100, 99, 95)   # upper percentiles of the annotated axis ratios (100: none)


def shapes(labels: np.ndarray) -> dict[int, tuple[float, float]]:
    """id -> (area px, major / minor axis)."""
    return {r.label: (float(r.area), float(r.axis_major_length / max(r.axis_minor_length, 1.0)))
            for r in regionprops(labels)}


def main() -> None:
    args = arguments(__doc__)
    items = dev_items(args.data)
    ref_stain, ref_area, ref_ratio = [], [], []
    for s in load_dataset(args.data, require_labels=True):
        if s.id in ANNOTATED:
            image, labels = s.read()
            labels = np.asarray(labels)
            ref_stain += list(object_stain(labels, stain(image)).values())
            for area, ratio in shapes(labels).values():
                ref_area.append(area)
                ref_ratio.append(ratio)
    faint = float(np.percentile(ref_stain, 5))
    out = summary(items) | {"faint_cut": faint, "reference_somata": len(ref_area)}
    for name in args.detectors:
        det = load_detector(detector_path(args.run, name))
        preds = [np.asarray(predict_image(det, image, tta=True)) for image, _ in items]
        props = [(object_stain(p, stain(image)), shapes(p)) for p, (image, _) in zip(preds, items)]
        res = {}
        for a in AREA:
            for e in ELONGATION:
                min_area = np.percentile(ref_area, a) if a > 0 else 0.0
                max_ratio = np.percentile(ref_ratio, e) if e < 100 else np.inf
                kept = []
                for p, (st, sh) in zip(preds, props):
                    keep = [i for i, v in st.items() if v >= faint
                            and sh[i][0] >= min_area and sh[i][1] <= max_ratio]
                    kept.append(np.where(np.isin(p, keep), p, 0))
                m = aggregate(matching(gt, k) for k, (_, gt) in zip(kept, items))
                r = {"f1_50": float(m.f1[0]), "f1_avg": float(np.mean(m.f1)),
                     "precision_50": float(m.precision[0]), "recall_50": float(m.recall[0])}
                res[f"area{a}_ratio{e}"] = r
                print(f"{name} area q{a} ratio q{e}: F1@0.5 {r['f1_50']:.3f} F1avg "
                      f"{r['f1_avg']:.3f} P {r['precision_50']:.2f} R {r['recall_50']:.2f}",
                      flush=True)
        out["detectors"][name] = res
        write(args.json, out)


if __name__ == "__main__":
    main()
