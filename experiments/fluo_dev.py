"""Fine-tuned fluorescence detectors on the training images they did not see: F1 against
the score threshold (the test split is not opened).

A `cellsynth experiment` seed that annotated k of dsb2018_fluo's 46 training images leaves
46 - k of them unseen: a development set far larger than the test split's 15. Each detector
of that seed predicts them once (cells painted at threshold 0.5, then kept by score, which
equals painting at each threshold) and F1@0.5 / F1avg are printed at a grid of thresholds,
with the detector's own validated one.

    OMP_NUM_THREADS=1 python experiments/fluo_dev.py --seed 0 --detectors simulated_k0 \\
        simulated_k5 simulated_k5_replay-0.5 --json docs/results/fluo_dev/s0.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cellsynth.evaluate.matching import aggregate, matching, matching_by_score
from cellsynth.io.datasets import load_dataset
from cellsynth.io.files import write_json
from cellsynth.segment.predict import load_detector, predict_image

GRID = (0.5, 0.7, 0.8, 0.9, 0.93, 0.95, 0.96, 0.97, 0.98, 0.99)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/exp-fluo-direction"))
    ap.add_argument("--data", type=Path, default=Path("../shared/data/dsb2018_fluo/train"))
    ap.add_argument("--k", type=int, default=5, help="the seed's annotated images: data/kK_sS")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--detectors", nargs="+", required=True, help="names without _sSEED")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    seen = {p.stem for p in (args.run / "data" / f"k{args.k}_s{args.seed}" / "images").iterdir()}
    train = load_dataset(args.data, require_labels=True)
    dev = [s.read() for s in train if s.id not in seen]
    print(f"{len(dev)} development images (seed {args.seed}'s {len(seen)} annotated left out)")
    out = {"seed": args.seed, "k": args.k, "n_dev": len(dev), "detectors": {}}
    for name in args.detectors:
        det = load_detector(args.run / "detectors" / f"{name}_s{args.seed}")
        painted = [predict_image(det, image, score_thresh=GRID[0], return_scores=True)
                   for image, _ in dev]
        rows = {}
        for t, m in zip(GRID, matching_by_score([gt for _, gt in dev], painted, GRID)):
            rows[str(t)] = {"f1_50": float(m.f1[0]), "f1_avg": float(np.mean(m.f1))}
        own = rows.get(str(det.score_thresh))
        best = max(rows, key=lambda t: rows[t]["f1_50"])
        print(f"{name}: own threshold {det.score_thresh}"
              + (f" F1@0.5 {own['f1_50']:.3f} F1avg {own['f1_avg']:.3f}" if own else "")
              + f"; best {best}: {rows[best]['f1_50']:.3f} / {rows[best]['f1_avg']:.3f}",
              flush=True)
        # at its own threshold, by the images' nucleus size (mean annotated area < 400 px)
        sizes = {}
        for (_, gt), (labels, scores) in zip(dev, painted):
            area = (gt > 0).sum() / max(len(np.unique(gt)) - 1, 1)
            kind = "small nuclei" if area < 400 else "large nuclei"
            kept = labels * (scores[labels] >= det.score_thresh)
            sizes.setdefault(kind, []).append(matching(gt, kept))
        by_size = {}
        for kind, found in sorted(sizes.items()):
            m = aggregate(found)
            by_size[kind] = {"images": len(found), "n_gt": m.n_gt, "n_pred": m.n_pred,
                             "f1_50": float(m.f1[0])}
            print(f"   {kind}: {len(found)} images, {m.n_gt} annotated, {m.n_pred} detected, "
                  f"F1@0.5 {m.f1[0]:.3f}")
        out["detectors"][name] = {"score_thresh": det.score_thresh, "by_threshold": rows,
                                  "by_size": by_size}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, out)


if __name__ == "__main__":
    main()
