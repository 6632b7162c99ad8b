"""Do the recipe's outlines gain from moving each one to the stain's edge within +-r px?
F1 on the Nissl development images (the 2 training images the recipe does not annotate; the
test split is not opened).

Half of the recipe's misses at IoU 0.5 are *outline* misses (a detection lies on the soma
but overlaps it by less than 0.5; docs/results.md "Where the recipe's errors are"), and
matched somata reach IoU ~0.75, almost none 0.9. A throwaway snap on the zero-label detector
gave +0.014 / +0.014 (docs/results.md "Outlines on the development images"). Here each
detector predicts as the recipe does (8-view TTA, its threshold, the faint cut from the
recipe's 2 annotated images); then every cell is re-grown by a watershed on the gradient of
the smoothed stain, seeded by the cell shrunk by r px and by the background farther than r
px from every cell, so that each outline moves at most r px.

    OMP_NUM_THREADS=1 python experiments/boundary_snap_dev.py \\
        --detectors runs/nissl-k2-s0/soup runs/nissl-k2-s1/soup runs/nissl-k2-s2/soup \\
        --json docs/results/boundary_snap_dev/results.json
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from _nissl_dev_set import (
    ANNOTATED,
    arguments,
    detector_path,
    dev_items,
    recipe_faint_cut,
    recipe_predictions,
    scores,
    summary,
    write,
)
from scipy import ndimage
from skimage.filters import sobel
from skimage.segmentation import find_boundaries, watershed

from cellsynth.io.normalize import normalize
from cellsynth.segment.predict import load_detector

RADII = (1, 2, 3)
SIGMAS = (1.0, 2.0)


def snap(labels: np.ndarray, image: np.ndarray, r: int, sigma: float) -> np.ndarray:
    """Every cell of ``labels`` re-grown to the stain's edge, each outline moving <= r px."""
    x = normalize(image, where=None)
    gray = x.mean(axis=-1) if x.ndim == 3 else x
    grad = sobel(ndimage.gaussian_filter(gray.astype(np.float32), sigma))
    inner = find_boundaries(labels, mode="inner")
    depth = ndimage.distance_transform_edt(~inner)
    markers = np.where((labels > 0) & (depth >= r), labels, 0).astype(np.int64)
    lost = np.setdiff1d(np.unique(labels), np.unique(markers))
    lost = lost[lost > 0]
    if lost.size:  # cells thinner than 2r keep their whole mask as seed
        keep = np.isin(labels, lost)
        markers[keep] = labels[keep]
    bg = int(labels.max()) + 1
    markers[ndimage.distance_transform_edt(labels == 0) > r] = bg
    out = watershed(grad, markers)
    out[out == bg] = 0
    return out.astype(np.uint32)


def main() -> None:
    args = arguments(__doc__)
    items = dev_items(args.data)
    cut = recipe_faint_cut(args.data)
    out = summary(items) | {"annotated_images": list(ANNOTATED)}
    for name in args.detectors:
        path = detector_path(args.run, name)
        t0 = time.time()
        preds = recipe_predictions(load_detector(path), path, items, cut,
                                   Path("/tmp/boundary_snap_cache"))
        res = {"none": scores(preds, items)}
        for r in RADII:
            for s in SIGMAS:
                res[f"r{r}_s{s:g}"] = scores([snap(p, i, r, s) for p, (i, _) in
                                              zip(preds, items)], items)
        for v, m in res.items():
            print(f"{name} {v:>8}: F1@0.5 {m['f1_50']:.3f} F1avg {m['f1_avg']:.3f} "
                  f"F1@0.75 {m['f1_75']:.3f} P {m['precision_50']:.2f} R {m['recall_50']:.2f} "
                  f"n {m['detected']}", flush=True)
        out["detectors"][name] = {"by_variant": res, "seconds": round(time.time() - t0, 1)}
        write(args.json, out)


if __name__ == "__main__":
    main()
