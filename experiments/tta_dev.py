"""Test-time augmentation on the Nissl development images (the test split is not opened).

Each seed-0 detector of the k = 2 experiment predicts the 2 training images that seed 0
did not annotate, once plainly and once with the 8 flips/transposes voting
(``predict_image(..., tta=True)``), both at the detector's own validated threshold.

    OMP_NUM_THREADS=1 python experiments/tta_dev.py --run runs/exp-nissl-k2 \\
        --json docs/results/tta_dev/results.json
"""

from __future__ import annotations

import time

import numpy as np
from _nissl_dev_set import arguments, detector_path, dev_items, summary, write

from cellsynth.evaluate.matching import aggregate, matching
from cellsynth.segment.predict import load_detector, predict_image


def main() -> None:
    args = arguments(__doc__)
    items = dev_items(args.data)
    out = summary(items)
    for name in args.detectors:
        det = load_detector(detector_path(args.run, name))
        rows = {}
        for tta in (False, True):
            started = time.perf_counter()
            m = aggregate([matching(gt, predict_image(det, image, tta=tta))
                           for image, gt in items])
            rows["tta" if tta else "plain"] = {
                "f1_50": float(m.f1[0]), "f1_avg": float(np.mean(m.f1)),
                "precision_50": float(m.precision[0]), "recall_50": float(m.recall[0]),
                "mean_iou_50": float(m.mean_iou[0]),
                "seconds": round(time.perf_counter() - started, 1)}
            print(f"{name:18s} {'tta' if tta else 'plain':5s}: F1@0.5 {m.f1[0]:.3f}  F1avg "
                  f"{np.mean(m.f1):.3f}  mean IoU {m.mean_iou[0]:.3f}", flush=True)
        out["detectors"][name] = {"score_thresh": det.score_thresh, **rows}
    write(args.json, out)


if __name__ == "__main__":
    main()
