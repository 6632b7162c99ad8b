"""Does filling CPN contours half a pixel outward change accuracy? (development images only)

CPN contours run through the centres of a cell's boundary pixels; filling such a polygon by
pixel centre drops about half of the boundary. This script predicts the development images
once per detector and paints the same proposals both ways (offset 0 = the old painting,
0.5 = the new default), at each detector's own validated threshold. The development images
are the 2 *training* images of nissl_rat_sscx that seed 0 of the k = 2 experiment did not
annotate; the test split is not opened.

    OMP_NUM_THREADS=1 python experiments/half_pixel.py --run runs/exp-nissl-k2 \
        --json docs/results/half_pixel/results.json [--offsets 0 0.5 1 1.5]
"""

from __future__ import annotations

import numpy as np
from _nissl_dev_set import arguments, detector_path, dev_items, summary, write

from cellsynth.evaluate.matching import aggregate, matching
from cellsynth.io.normalize import intensity_range
from cellsynth.segment.predict import _reader, load_detector, make_predictor, tiling
from cellsynth.segment.tiles import contours_to_labels, tiled_proposals


def main() -> None:
    args = arguments(__doc__, lambda ap: ap.add_argument(
        "--offsets", type=float, nargs="+", default=[0.0, 0.5],
        help="outward offsets (px) to paint with; more than 0.5 asks whether the detector's "
             "outlines are systematically smaller than the annotation's"))
    items = dev_items(args.data)
    out = summary(items)
    for name in args.detectors:
        det = load_detector(detector_path(args.run, name))
        tile, batch = tiling(det, None, None)
        predictor = make_predictor(det)
        rows = {}
        proposals = []
        for image, _ in items:  # once; each offset paints the same proposals
            low, high = intensity_range(image, det.normalization, where="dev")
            proposals.append(tiled_proposals(image, predictor, tile=tile, overlap=96,
                                             batch=batch,
                                             read=_reader(det.in_channels, low, high, "dev")))
        for offset in args.offsets:
            results = []
            for (c, s), (_, gt) in zip(proposals, items):
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
    write(args.json, out)


if __name__ == "__main__":
    main()
