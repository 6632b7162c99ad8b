"""Does filling CPN contours half a pixel outward change accuracy? (development images only)

CPN contours run through the centres of a cell's boundary pixels; filling such a polygon by
pixel centre drops about half of the boundary. This script predicts the development images
once per detector and paints the same proposals both ways (offset 0 = the old painting,
0.5 = the new default), at each detector's own validated threshold. The development images
are the 2 *training* images of nissl_rat_sscx that seed 0 of the k = 2 experiment did not
annotate; the test split is not opened.

    OMP_NUM_THREADS=1 python experiments/half_pixel.py --run runs/exp-nissl-k2 \
        --json docs/results/half_pixel/results.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cellsynth.evaluate.matching import aggregate, matching
from cellsynth.io.images import read_image, read_labels
from cellsynth.io.normalize import intensity_range
from cellsynth.segment.predict import _reader, load_detector, make_predictor, tiling
from cellsynth.segment.tiles import contours_to_labels, tiled_proposals

DEV = ("SLD_0000404_20x_01_Region_1_t2", "SLD_0000406_20x_01_Region_1_t1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/exp-nissl-k2", help="experiment output folder")
    ap.add_argument("--data", default="../shared/data/nissl_rat_sscx/train")
    ap.add_argument("--detectors", nargs="+", default=["real_k2_s0", "simulated_k0_s0",
                                                        "simulated_k2_s0", "refined_k2_s0"])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    data = Path(args.data)
    items = [(np.asarray(read_image(next((data / "images").glob(n + ".*")))),
              read_labels(next((data / "labels").glob(n + ".*")))) for n in DEV]
    out = {"dev_images": list(DEV), "cells": int(sum(len(np.unique(g)) - 1 for _, g in items)),
           "detectors": {}}
    for name in args.detectors:
        det = load_detector(Path(args.run) / "detectors" / name)
        tile, batch = tiling(det, None, None)
        predictor = make_predictor(det)
        rows = {}
        for offset in (0.0, 0.5):
            results = []
            for image, gt in items:
                low, high = intensity_range(image, det.normalization, where="dev")
                c, s = tiled_proposals(image, predictor, tile=tile, overlap=96, batch=batch,
                                       read=_reader(det.in_channels, low, high, "dev"))
                pred = contours_to_labels(c, s, gt.shape, score_thresh=det.score_thresh,
                                          offset=offset)
                results.append(matching(gt, pred))
            m = aggregate(results)
            rows[str(offset)] = {"f1_50": float(m.f1[0]), "f1_avg": float(np.mean(m.f1)),
                                 "f1_90": float(m.f1[-1]),
                                 "mean_iou_50": float(m.mean_iou[0])}
            print(f"{name:18s} offset {offset}: F1@0.5 {m.f1[0]:.3f}  F1avg "
                  f"{np.mean(m.f1):.3f}  F1@0.9 {m.f1[-1]:.3f}  mean IoU {m.mean_iou[0]:.3f}",
                  flush=True)
        out["detectors"][name] = {"score_thresh": det.score_thresh, **rows}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
