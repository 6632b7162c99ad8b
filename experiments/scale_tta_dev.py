"""Do views at other scales add to the 8-view TTA? F1 on the Nissl development images
(the 2 training images the recipe does not annotate; the test split is not opened).

Each detector predicts every development image once per (scale, dihedral view): the image
flipped/transposed and resampled by the scale (the model sees cells ``scale`` times their
size), the proposals mapped back to the image. Settings are vote groups of those passes,
merged as ``predict --tta`` merges its 8 views (:func:`cellsynth.segment.tta.merge_views`):
``tta`` = the 8 views at scale 1 (what the recipe predicts), ``scales`` = all views at all
scales. Printed per detector and setting: F1@0.5 and F1avg at the detector's validated
threshold and at the best threshold here (the latter only to see what a threshold could do).

    OMP_NUM_THREADS=1 python experiments/scale_tta_dev.py --scales 0.8 1 1.25 \\
        --detectors runs/nissl-k2-s5x240-s0/soup ... --json docs/results/scale_tta_dev/results.json
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
from _nissl_dev_set import arguments, detector_path, dev_items, summary, write

from cellsynth.evaluate.matching import matching_by_score
from cellsynth.segment.predict import _SCORE_FLOOR, image_proposals, load_detector
from cellsynth.segment.tiles import contours_to_labels, offset_contours
from cellsynth.segment.trainer import THRESHOLD_GRID
from cellsynth.segment.tta import VIEWS, Dihedral, merge_views, to_image_coordinates


def passes(det, image: np.ndarray, scale: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """(contours in image pixels with the painting offset applied, scores) per view; every
    proposal above the TTA score floor (a vote may lift a low-scoring one)."""
    out = []
    for v in VIEWS:
        c, s, offset = image_proposals(  # the detector's pixels taken as 1, the image's as scale
            replace(det, pixel_size_um=1.0), np.asarray(Dihedral(image, v)[:, :]),
            score_thresh=_SCORE_FLOOR, pixel_size_um=scale)
        c = offset_contours(c, offset) if offset else c
        out.append((to_image_coordinates(c, v, image.shape[:2]), s))
    return out


def scored(items, merged) -> dict:
    painted = []
    for (image, _), (c, s) in zip(items, merged):
        labels, ids = contours_to_labels(c, s, image.shape[:2], score_thresh=THRESHOLD_GRID[0],
                                         offset=0.0, return_scores=True)
        painted.append((labels, ids))
    rows = {}
    for t, m in zip(THRESHOLD_GRID, matching_by_score([gt for _, gt in items], painted,
                                                      THRESHOLD_GRID)):
        rows[str(t)] = {"f1_50": float(m.f1[0]), "f1_avg": float(np.mean(m.f1)),
                        "precision_50": float(m.precision[0]), "recall_50": float(m.recall[0])}
    return rows


def main() -> None:
    args = arguments(__doc__, lambda ap: ap.add_argument("--scales", nargs="+", type=float,
                                                         default=[0.8, 1.0, 1.25]))
    items = dev_items(args.data)
    out = summary(items)
    out["scales"] = args.scales
    for name in args.detectors:
        det = load_detector(detector_path(args.run, name))
        t0 = time.time()
        by_scale = {s: [passes(det, image, s) for image, _ in items] for s in args.scales}
        settings = {"tta": [merge_views(by_scale[1.0][i]) for i in range(len(items))],
                    "scales": [merge_views([p for s in args.scales for p in by_scale[s][i]])
                               for i in range(len(items))]}
        for s in args.scales:
            if s != 1.0:
                settings[f"tta_at_{s}"] = [merge_views(by_scale[s][i]) for i in range(len(items))]
        res = {}
        own = str(det.score_thresh)
        for key, merged in settings.items():
            rows = scored(items, merged)
            best = max(rows, key=lambda t: rows[t]["f1_50"])
            res[key] = {"own": rows.get(own), "best_here": float(best), "at_best": rows[best]}
            r = rows.get(own)
            print(f"{name} {key:>12s}: thr {own} F1@0.5 {r['f1_50']:.3f} F1avg {r['f1_avg']:.3f} "
                  f"P {r['precision_50']:.2f} R {r['recall_50']:.2f}; best {best}: "
                  f"{rows[best]['f1_50']:.3f} / {rows[best]['f1_avg']:.3f}", flush=True)
        out["detectors"][name] = {"score_thresh": det.score_thresh, "settings": res,
                                  "seconds": round(time.time() - t0, 1)}
        write(args.json, out)


if __name__ == "__main__":
    main()
