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

import hashlib
import time
from pathlib import Path

import numpy as np
from _nissl_dev_set import arguments, detector_path, dev_items, summary, write
from scipy import ndimage
from skimage.filters import sobel
from skimage.segmentation import find_boundaries, watershed

from cellsynth.evaluate.matching import aggregate, matching
from cellsynth.io.datasets import load_dataset
from cellsynth.io.normalize import normalize
from cellsynth.segment.faint import FAINT_PERCENTILE, calibrate_faint
from cellsynth.segment.predict import load_detector, predict_image

# the recipe's annotated images (configs/nissl-k2.yaml real.select.train)
ANNOTATED = ("SLD_0000406_20x_01_Region_1_t2", "SLD_0000563_20x_03_Region_1_t2")
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


def scores(preds, items) -> dict:
    m = aggregate(matching(gt, p) for p, (_, gt) in zip(preds, items))
    return {"f1_50": float(m.f1[0]), "f1_avg": float(np.mean(m.f1)),
            "f1_75": float(m.f1[5]), "precision_50": float(m.precision[0]),
            "recall_50": float(m.recall[0]), "detected": int(m.n_pred)}


def main() -> None:
    args = arguments(__doc__)
    items = dev_items(args.data)
    ref = [(s.read_image(), s.read_labels()) for s in load_dataset(args.data, require_labels=True)
           if s.id in ANNOTATED]
    cache = Path("/tmp/boundary_snap_cache")
    cache.mkdir(exist_ok=True)
    out = summary(items) | {"annotated_images": list(ANNOTATED)}
    for name in args.detectors:
        path = detector_path(args.run, name)
        det = load_detector(path)
        cut = calibrate_faint([(normalize(i, where=None), g) for i, g in ref], FAINT_PERCENTILE)
        key = hashlib.md5(str(path.resolve()).encode()).hexdigest()[:8]
        t0 = time.time()
        preds = []
        for k, (image, _) in enumerate(items):
            f = cache / f"{key}_{k}.npy"
            if not f.exists():
                np.save(f, np.asarray(predict_image(det, image, tta=True, faint=cut)))
            preds.append(np.load(f))
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
