"""Do detectors trained on different synthetic data vote better than each alone? On the
Nissl development images (the test split is not opened).

Each seed-0 detector predicts the 2 training images seed 0 did not annotate (optionally
with TTA) and keeps the proposals at or above its own validated threshold. The kept cells of
all detectors are grouped like TTA views (``tta.merge_views``: mask IoU > 0.5, at most one
per detector, outline = angle-wise median); a group is a cell when at least ``--vote`` of
the detectors found it (default: a strict majority). No threshold is tuned here.

    OMP_NUM_THREADS=1 python experiments/ensemble_dev.py --run runs/exp-nissl-k2 \\
        --detectors simulated_k2_s0 simulated_k2_replay-0.5_s0 refined_k2_s0 \\
        --json docs/results/ensemble_dev/results.json
"""

from __future__ import annotations

import itertools
import time

import numpy as np
from _nissl_dev_set import arguments, detector_path, dev_items, summary, write

from cellsynth.evaluate.matching import aggregate, matching
from cellsynth.segment.predict import image_proposals, load_detector
from cellsynth.segment.tiles import contours_to_labels, offset_contours
from cellsynth.segment.tta import merge_views


def scores(matches) -> dict:
    m = aggregate(matches)
    return {"f1_50": float(m.f1[0]), "f1_avg": float(np.mean(m.f1)),
            "precision_50": float(m.precision[0]), "recall_50": float(m.recall[0])}


def main() -> None:
    def extra(ap):
        ap.add_argument("--tta", action="store_true", help="each detector predicts with TTA")
        ap.add_argument("--vote", type=int, default=None,
                        help="detectors that must agree (default: a strict majority)")
    args = arguments(__doc__, extra)
    items = dev_items(args.data)
    out = summary(items)
    kept: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for name in args.detectors:
        det = load_detector(detector_path(args.run, name))
        started = time.perf_counter()
        kept[name], matches = [], []
        for image, gt in items:
            c, s, offset = image_proposals(det, image, tta=args.tta)
            keep = s >= det.score_thresh
            c = offset_contours(c[keep], offset) if offset else c[keep]
            kept[name].append((c, np.ones(int(keep.sum()), np.float32)))
            matches.append(matching(gt, contours_to_labels(c, s[keep], gt.shape,
                                                           score_thresh=0.0, offset=0.0)))
        out["detectors"][name] = {"score_thresh": det.score_thresh, **scores(matches),
                                  "seconds": round(time.perf_counter() - started, 1)}
        print(f"{name:30s}: " + "  ".join(f"{k} {v:.3f}" for k, v in scores(matches).items()),
              flush=True)
    out["ensembles"] = {}
    names = list(args.detectors)
    for r in range(2, len(names) + 1):
        for combo in itertools.combinations(names, r):
            need = args.vote or (r // 2 + 1)
            matches = []
            for i, (_image, gt) in enumerate(items):
                c, votes = merge_views([kept[n][i] for n in combo])
                matches.append(matching(gt, contours_to_labels(
                    c, votes * r, gt.shape, score_thresh=need - 1e-6, offset=0.0)))
            key = " + ".join(combo)
            out["ensembles"][key] = {"vote": need, **scores(matches)}
            print(f"{key} (>= {need} of {r}): " + "  ".join(
                f"{k} {v:.3f}" for k, v in scores(matches).items()), flush=True)
    out["tta"] = args.tta
    write(args.json, out)


if __name__ == "__main__":
    main()
