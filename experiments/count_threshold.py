"""Label-free score threshold: match the detector's cell count on unlabeled real images to
the count that `fit-simulator`'s estimator measures on them.

Zero-label detectors choose their score threshold on held-out *synthetic* images, where
they score near 1 on every cell (0.98 is typical); on real H&E they then find 1.4-2x as
many objects as there are nuclei (cell bodies, neuropil). The estimator behind
`cellsynth fit-simulator` counts cells on unlabeled images (multi-scale LoG + watershed,
-8 % / -19 % against the annotations of gbm40 / tcga_lgg). This script predicts the
unlabeled images once at a low threshold, reads every cell's score from the detections
table, and takes as threshold the score of the cell whose rank equals the estimated
count. The labels of the unlabeled folder are never read; the test split is only
predicted and scored, at the calibrated and at the detector's own threshold:

    python experiments/count_threshold.py \\
        --detector runs/fit-detectors/gbm40_brain_he-base/detectors/simulated_k0_s0 \\
        --unlabeled ../shared/data/gbm40_brain_he/train --preset he --pixel-size 0.25 \\
        --test ../shared/data/gbm40_brain_he/test --out runs/count-threshold/gbm40-base

Writes OUT/{calibrated,own}/predict/labels/ (so `experiments/compare_runs.py --a
OUT/calibrated --b OUT/own` pairs them) and OUT/result.json. Runs use the same rule through
`predict: {count_threshold: true}` (cellsynth.segment.calibrate), counting proposals rather
than the painted cells this script counts.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

GRID = np.round(np.concatenate([np.arange(0.5, 0.95, 0.05), np.arange(0.95, 0.999, 0.005),
                                [0.999]]), 4)


def scores(folder: Path) -> list[np.ndarray]:
    """Every detected cell's score, per image, from a prediction's detections/ tables."""
    found = []
    for table in sorted((folder / "detections").glob("*.csv")):
        with table.open() as f:
            found.append(np.array([float(row["score"]) for row in csv.DictReader(f)]))
    if not found:
        raise SystemExit(f"{folder}/detections: no tables")
    return found


def calibrate(per_image: list[np.ndarray], expected: float) -> tuple[float, dict]:
    """The package's rule (cellsynth.segment.calibrate.threshold_for_count: the score of the
    ``expected``-th best cell) and the counts at the thresholds of GRID."""
    from cellsynth.segment.calibrate import threshold_for_count

    everything = np.concatenate(per_image)
    thresh = threshold_for_count(per_image, expected, floor=float(GRID[0]))
    counts = {float(t): int((everything >= t).sum()) for t in [*GRID, thresh]}
    return thresh, counts


def main() -> None:
    from cellsynth.evaluate import evaluate_folders
    from cellsynth.io.files import write_json
    from cellsynth.pipeline import layout
    from cellsynth.segment.predict import load_detector, predict_folder
    from cellsynth.simulate.fit import match_statistics

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--detector", required=True)
    ap.add_argument("--unlabeled", required=True, help="real images; labels never read")
    ap.add_argument("--preset", required=True, help="the estimator's colour model / sizes")
    ap.add_argument("--pixel-size", type=float, required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    fit = match_statistics(args.unlabeled, args.preset, pixel_size_um=args.pixel_size)
    real = fit.real
    per_image_counts = [s["n_cells"] for s in real["per_image"]]
    # the estimator saw a spread subset of the folder: scale its count to every image
    from cellsynth.io.datasets import load_dataset

    samples = list(load_dataset(args.unlabeled))
    area_um2 = sum(s["area_um2"] for s in real["per_image"])
    expected_per_um2 = sum(per_image_counts) / area_um2
    total_um2 = 0.0
    for sample in samples:
        h, w = sample.read_image().shape[:2]
        total_um2 += h * w * args.pixel_size ** 2
    expected = expected_per_um2 * total_um2

    own = load_detector(args.detector).score_thresh
    low = args.out / "unlabeled_low"
    if not (low / "detections").is_dir():  # kept: a rerun only re-calibrates and scores
        predict_folder(args.detector, args.unlabeled, low, score_thresh=float(GRID[0]),
                       force=True, pixel_size_um=args.pixel_size, progress=False)
    per_image = scores(low)
    thresh, counts = calibrate(per_image, expected)
    print(f"estimator: {expected:.0f} cells on {len(samples)} unlabeled images; the detector "
          f"finds {counts[min(counts, key=lambda t: abs(t - own))]} at its own threshold "
          f"{own:.3f}, {counts[thresh]} at the calibrated {thresh:.5f}")
    result = {"detector": args.detector, "unlabeled": args.unlabeled, "test": args.test,
              "expected_count": expected, "own_thresh": own, "calibrated_thresh": thresh,
              "counts_by_thresh": counts, "test_scores": {}}
    for name, t in (("own", own), ("calibrated", thresh)):
        pred = args.out / name / layout.PREDICT
        predict_folder(args.detector, args.test, pred, score_thresh=t,
                       force=True, pixel_size_um=args.pixel_size, progress=False)
        m = evaluate_folders(args.test, pred).to_json()
        at = m["thresholds"].index(0.5)
        summary = {"f1_50": m["f1"][at], "f1_avg": m["f1_avg"], "ap_50": m["ap"][at],
                   "pq_50": m["pq"][at], "n_pred": m["n_pred"], "n_gt": m["n_gt"]}
        result["test_scores"][name] = summary
        print(f"test at {name} threshold {t:.5f}: F1@0.5 {summary['f1_50']:.3f}, "
              f"F1avg {summary['f1_avg']:.3f}, {summary['n_pred']} cells ({summary['n_gt']} "
              f"annotated)")
    write_json(args.out / "result.json", result)


if __name__ == "__main__":
    main()
