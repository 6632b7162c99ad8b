"""Is the validated score threshold of a k = 2 detector too strict? F1 against threshold on
the Nissl development images (the test split is not opened).

Each detector predicts the 2 training images that seed 0 did not annotate once; the cells
are painted at the lowest threshold and then kept by score (greedy painting gives a cell
the same pixels whatever lower-scored cells exist, so this equals painting at each
threshold). Printed: F1@0.5 and F1avg at every threshold of the trainer's grid, the
detector's own validated threshold, and the best threshold on these images.

    OMP_NUM_THREADS=1 python experiments/threshold_dev.py --run runs/exp-nissl-k2 \\
        --detectors real_k2_s0 simulated_k2_s0 runs/nissl-k2/finetune \\
        --json docs/results/threshold_dev/results.json
"""

from __future__ import annotations

import numpy as np
from _nissl_dev_set import arguments, detector_path, dev_items, summary, write

from cellsynth.evaluate.matching import matching_by_score
from cellsynth.segment.predict import load_detector, predict_image
from cellsynth.segment.trainer import THRESHOLD_GRID


def main() -> None:
    args = arguments(__doc__)
    items = dev_items(args.data)
    out = summary(items)
    for name in args.detectors:
        det = load_detector(detector_path(args.run, name))
        painted = [predict_image(det, image, score_thresh=THRESHOLD_GRID[0], return_scores=True)
                   for image, _ in items]
        rows = {}
        for t, m in zip(THRESHOLD_GRID, matching_by_score([gt for _, gt in items], painted,
                                                          THRESHOLD_GRID)):
            rows[str(t)] = {"f1_50": float(m.f1[0]), "f1_avg": float(np.mean(m.f1)),
                            "precision_50": float(m.precision[0]),
                            "recall_50": float(m.recall[0])}
        best = max(rows, key=lambda t: rows[t]["f1_50"])
        own = rows[str(det.score_thresh)] if str(det.score_thresh) in rows else None
        print(f"{name}: validated threshold {det.score_thresh}"
              + (f" F1@0.5 {own['f1_50']:.3f} F1avg {own['f1_avg']:.3f}" if own else "")
              + f"; best here {best}: F1@0.5 {rows[best]['f1_50']:.3f} "
              f"F1avg {rows[best]['f1_avg']:.3f}", flush=True)
        for t, r in rows.items():
            print(f"   {t:>5s}: F1@0.5 {r['f1_50']:.3f} F1avg {r['f1_avg']:.3f} "
                  f"P {r['precision_50']:.2f} R {r['recall_50']:.2f}")
        out["detectors"][name] = {"score_thresh": det.score_thresh, "best_here": float(best),
                                  "by_threshold": rows}
    write(args.json, out)


if __name__ == "__main__":
    main()
