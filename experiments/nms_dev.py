"""Does the recipe suppress touching somata? Its CPN drops every proposal whose *box* overlaps
a better one by IoU > ``nms_thresh`` (0.2, celldetection's default); somata in a dense
cluster can have boxes that overlap that much. F1 on the Nissl development images (the 2
training images the recipe does not annotate; the test split is not opened), each soup
predicting as the recipe does (8-view TTA, its own threshold, the faint cut from the
recipe's 2 annotated images) at several NMS thresholds.

    OMP_NUM_THREADS=2 python experiments/nms_dev.py \\
        --detectors runs/nissl-k2-s0/soup runs/nissl-k2-s1/soup runs/nissl-k2-s2/soup \\
        --json docs/results/nms_dev/results.json

Each threshold is paired with the recipe's 0.2 over the development images cut into 2 x 2
tiles (the paired bootstrap of compare_dev.py, seeds averaged).
"""

from __future__ import annotations

import time
from pathlib import Path

from _nissl_dev_set import (
    ANNOTATED,
    arguments,
    detector_path,
    dev_items,
    recipe_faint_cut,
    recipe_predictions,
    scores,
    summary,
    tile_matchings,
    write,
)
from _paired import compare

from cellsynth.segment.predict import load_detector, set_nms

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
BASE = 0.2  # celldetection's default, the recipe's


def main() -> None:
    args = arguments(__doc__, lambda ap: ap.add_argument(
        "--thresholds", type=float, nargs="+", default=list(THRESHOLDS)))
    items = dev_items(args.data)
    cut = recipe_faint_cut(args.data)
    out = summary(items) | {"annotated_images": list(ANNOTATED), "paired_with": BASE}
    units: dict[float, list] = {}
    for name in args.detectors:
        path = detector_path(args.run, name)
        det = load_detector(path)
        res = {}
        t0 = time.time()
        for nms in sorted(set(args.thresholds) | {BASE}):
            set_nms(det, nms)
            preds = recipe_predictions(det, path, items, cut, Path("/tmp/nms_dev_cache"),
                                       tag=f"_{nms:g}")
            res[f"{nms:g}"] = m = scores(preds, items)
            units.setdefault(nms, []).append(
                tile_matchings(items, preds))
            print(f"{name} nms {nms:g}: F1@0.5 {m['f1_50']:.3f} F1avg {m['f1_avg']:.3f} "
                  f"P {m['precision_50']:.2f} R {m['recall_50']:.2f} n {m['detected']}",
                  flush=True)
        out["detectors"][name] = {"by_nms": res, "seconds": round(time.time() - t0, 1)}
        write(args.json, out)
    out["paired"] = {}
    for nms in sorted(units):
        if nms != BASE:
            print(f"nms {nms:g} - {BASE:g}:")
            _, _, diff = compare(units[nms], units[BASE])
            out["paired"][f"{nms:g}"] = diff
    write(args.json, out)


if __name__ == "__main__":
    main()
