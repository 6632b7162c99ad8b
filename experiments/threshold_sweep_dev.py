"""F1 of the Nissl recipe's detectors at every score threshold from 0.8 up, on the development
images (the 2 unannotated training images) or on the 2 annotated ones the recipe validated
its threshold on; never the test split. Is the threshold the recipe chose on its own
fine-tuning images too low for unseen images (the twenty-fourth session found the recipe's
excess false positives are small unannotated objects)?

    python experiments/threshold_sweep_dev.py --images dev \\
        --detectors /work/exp/recipe-t1-s0 /work/exp/recipe-s1 /work/exp/recipe-s2 \\
        --json docs/results/nissl_false_positives/threshold_dev.json

Each detector predicts as the recipe predicts (soup, 8-view TTA, faint cut, NMS 0.5) with a
floor of 0.8 and its cells are kept by score (TTA's merge sees the floor, not each threshold:
a threshold's cells differ slightly from a prediction made at that threshold).
"""

from __future__ import annotations

import numpy as np
from _nissl_dev_set import ANNOTATED, arguments, dev_items, recipe_detector, recipe_faint_cut, write

from cellsynth.evaluate.matching import aggregate, matching
from cellsynth.io.datasets import load_dataset
from cellsynth.segment.predict import predict_image

THRESHOLDS = (0.8, 0.85, 0.9, 0.93, 0.95, 0.96, 0.97, 0.98, 0.99)


def main() -> None:
    args = arguments(__doc__, extra=lambda ap: ap.add_argument(
        "--images", choices=("dev", "annotated"), default="dev"))
    if args.images == "dev":
        items = dev_items(args.data)
    else:
        items = [(s.read_image(), s.read_labels())
                 for s in load_dataset(args.data, require_labels=True) if s.id in ANNOTATED]
    cut = recipe_faint_cut(args.data)
    out = {"images": args.images, "detectors": {}}
    for run in args.detectors:
        det = recipe_detector(run)
        preds = [predict_image(det, image, tta=True, faint=cut, score_thresh=THRESHOLDS[0],
                               return_scores=True) for image, _ in items]
        sweep = {}
        for t in THRESHOLDS:
            kept = []
            for labels, scores in preds:
                keep = np.nonzero(scores >= t)[0]
                kept.append(np.where(np.isin(labels, keep[keep > 0]), labels, 0))
            m = aggregate(matching(gt, p) for p, (_, gt) in zip(kept, items))
            sweep[str(t)] = {"f1_50": round(float(m.f1[0]), 4),
                             "f1_avg": round(float(np.mean(m.f1)), 4),
                             "detected": int(m.n_pred)}
        out["detectors"][run] = {"score_thresh": det.score_thresh, "sweep": sweep}
        print(run, det.score_thresh, {t: v["f1_50"] for t, v in sweep.items()}, flush=True)
    write(args.json, out)


if __name__ == "__main__":
    main()
