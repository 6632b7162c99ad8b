"""Can the annotators' "too pale to be a soma" rule be learned from the k annotated images?
F1 on the Nissl development images (the 2 training images the recipe does not annotate; the
test split is not opened).

On the development images the recipe's soups find as many annotated somata as the
fine-tuned Cellpose peer but have 4-6x its orphan detections, ~40 % of them paler than the
10th percentile of the annotated somata (`experiments/nissl_errors.py`,
docs/results/nissl_errors_recipe/). This screen drops every detection whose mean stain
(1 - the mean of the channels of the content-normalised image, as the detector sees it) is
below the q-th percentile of the annotated somata's mean stain *in the recipe's 2
annotated images* (nothing from the development images chooses q's reference), for several
q, each detector predicting as the recipe does (8-view TTA, its validated threshold).

    OMP_NUM_THREADS=1 python experiments/stain_filter_dev.py \\
        --detectors runs/nissl-k2-s5x240-s0/soup ... \\
        --json docs/results/stain_filter_dev/results.json
"""

from __future__ import annotations

import time

import numpy as np
from _nissl_dev_set import ANNOTATED, arguments, detector_path, dev_items, summary, write
from scipy import ndimage

from cellsynth.evaluate.matching import aggregate, matching
from cellsynth.io.datasets import load_dataset
from cellsynth.io.normalize import normalize
from cellsynth.segment.predict import load_detector, predict_image

PERCENTILES = (0, 1, 2, 5, 10, 15)


def stain(image: np.ndarray) -> np.ndarray:
    """Stain density per pixel of the content-normalised image: dark = stained = 1."""
    x = normalize(image, where=None)
    return 1.0 - (x.mean(axis=-1) if x.ndim == 3 else x)


def object_stain(labels: np.ndarray, density: np.ndarray) -> dict[int, float]:
    ids = np.unique(labels[labels > 0])
    return dict(zip(ids.tolist(), ndimage.mean(density, labels, ids).tolist()))


def reference(data: str) -> np.ndarray:
    """Mean stain of every annotated soma of the recipe's 2 annotated images."""
    values = []
    for s in load_dataset(data, require_labels=True):
        if s.id in ANNOTATED:
            image, labels = s.read()
            values += list(object_stain(np.asarray(labels), stain(image)).values())
    return np.asarray(values)


def main() -> None:
    args = arguments(__doc__)
    items = dev_items(args.data)
    ref = reference(args.data)
    cuts = {q: float(np.percentile(ref, q)) if q > 0 else -np.inf for q in PERCENTILES}
    out = summary(items) | {"annotated_images": list(ANNOTATED), "reference_somata": len(ref),
                            "cuts": {str(q): c for q, c in cuts.items()}}
    for name in args.detectors:
        det = load_detector(detector_path(args.run, name))
        t0 = time.time()
        preds = [np.asarray(predict_image(det, image, tta=True)) for image, _ in items]
        stains = [object_stain(p, stain(image)) for p, (image, _) in zip(preds, items)]
        res = {}
        for q, cut in cuts.items():
            kept = [np.where(np.isin(p, [i for i, v in st.items() if v >= cut]), p, 0)
                    for p, st in zip(preds, stains)]
            m = aggregate(matching(gt, k) for k, (_, gt) in zip(kept, items))
            res[str(q)] = {"f1_50": float(m.f1[0]), "f1_avg": float(np.mean(m.f1)),
                           "precision_50": float(m.precision[0]),
                           "recall_50": float(m.recall[0]), "detected": int(m.n_pred)}
            r = res[str(q)]
            print(f"{name} q {q:>2}: F1@0.5 {r['f1_50']:.3f} F1avg {r['f1_avg']:.3f} "
                  f"P {r['precision_50']:.2f} R {r['recall_50']:.2f} n {r['detected']}",
                  flush=True)
        out["detectors"][name] = {"by_percentile": res, "seconds": round(time.time() - t0, 1)}
        write(args.json, out)


if __name__ == "__main__":
    main()
