"""What the errors of Nissl detectors are, next to the fine-tuned Cellpose peer (V1).

On development images (training-split images a k = 2 detector was not fine-tuned on; never
the test split), every detection that matches no annotated soma at IoU 0.5 (a false
positive) and every annotated soma left unmatched (a miss) is put into one class:

false positives
- ``orphan``: it overlaps no annotated soma by IoU > 0.1: something the annotators did not
  call a cell; split further into ``pale`` (its mean stain below the 10th percentile of the
  annotated somata's), ``elongated`` (axis ratio > 2.5) and ``other``;
- ``merge``: it overlaps two or more annotated somata by IoU > 0.1;
- ``piece``: it overlaps only somata already matched by another detection (a split);
- ``outline``: it overlaps one unmatched soma with IoU in (0.1, 0.5): found, outlined wrong.

misses: ``unseen`` (no detection overlaps it by IoU > 0.1) or ``outline`` (one does, < 0.5).

    python experiments/nissl_errors.py --repo CLONE_OF_rat_sscx_nissl_analysis \
        --detector sim0=runs/fit-detectors/.../simulated_k0_s0 --detector k2=RUN ... \
        --json docs/results/nissl_errors/results.json --pictures docs/results/nissl_errors

The peer's predictions come from the dataset owners' repository (see peer_cellpose.py);
nothing is downloaded.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import tifffile
from peer_cellpose import QC, _listing, _our_name, _read  # noqa: E402  (same folder)
from skimage.measure import regionprops

from cellsynth.evaluate.matching import _overlaps
from cellsynth.io.files import write_json
from cellsynth.io.images import read_image, read_labels
from cellsynth.segment.predict import load_detector, predict_image

TRAIN = Path(__file__).resolve().parents[1] / "../shared/data/nissl_rat_sscx/train"
# seed 0's development images in experiments/nissl_dev.py (its k = 2 images are the others)
DEV = ("SLD_0000404_20x_01_Region_1_t2", "SLD_0000406_20x_01_Region_1_t1")
# IoU above which a detection and a soma touch (no touch: an orphan, an unseen soma)
ORPHAN, PALE_PERCENTILE, ELONGATED = 0.1, 10, 2.5


def stain(image: np.ndarray) -> np.ndarray:
    """Stain density per pixel: 1 - mean of the channels scaled to [0, 1] (dark = stained)."""
    gray = image.astype(np.float64).mean(axis=-1) if image.ndim == 3 else image.astype(float)
    return 1.0 - gray / (gray.max() or 1.0)


def errors(gt: np.ndarray, pred: np.ndarray, density: np.ndarray) -> tuple[dict, list[int]]:
    """The classes' counts, and the labels of the orphan detections."""
    gi, pi, iou, n_gt, n_pred = _overlaps(gt, pred)
    matched = iou >= 0.5  # at most one partner above 0.5: the matching is unique
    gt_hit, pred_hit = set(gi[matched]), set(pi[matched])
    touch = iou > ORPHAN
    pred_ids = np.unique(pred[pred > 0])
    # _overlaps numbers objects 1..n in order of their ids
    pale = np.percentile([r.intensity_mean for r in regionprops(gt.astype(np.int32),
                                                                intensity_image=density)],
                         PALE_PERCENTILE)
    props = {r.label: r for r in regionprops(pred.astype(np.int32), intensity_image=density)}
    fp = dict(orphan_pale=0, orphan_elongated=0, orphan_other=0, merge=0, piece=0, outline=0)
    orphans = []
    for index, label in enumerate(pred_ids, start=1):
        if index in pred_hit:
            continue
        partners = gi[(pi == index) & touch]
        if partners.size == 0:
            r = props[label]
            ratio = r.axis_major_length / max(r.axis_minor_length, 1.0)
            kind = ("orphan_pale" if r.intensity_mean < pale else
                    "orphan_elongated" if ratio > ELONGATED else "orphan_other")
            orphans.append(int(label))
        elif partners.size >= 2:
            kind = "merge"
        elif partners[0] in gt_hit:
            kind = "piece"
        else:
            kind = "outline"
        fp[kind] += 1
    fn = dict(unseen=0, outline=0)
    for index in range(1, n_gt + 1):
        if index not in gt_hit:
            fn["outline" if np.any((gi == index) & touch) else "unseen"] += 1
    return dict(annotated=int(n_gt), detected=int(n_pred), matched=len(gt_hit), fp=fp, fn=fn,
                matched_iou_median=float(np.median(iou[matched])) if matched.any() else 0.0
                ), orphans


def total(per_image: dict) -> dict:
    out: dict = {}
    for result in per_image.values():
        for key, value in result.items():
            if isinstance(value, dict):
                out.setdefault(key, {})
                for k, v in value.items():
                    out[key][k] = out[key].get(k, 0) + v
            elif key != "matched_iou_median":
                out[key] = out.get(key, 0) + value
    out["precision"] = out["matched"] / max(out["detected"], 1)
    out["recall"] = out["matched"] / max(out["annotated"], 1)
    return out


def picture(path: Path, image: np.ndarray, gt: np.ndarray, pred: np.ndarray,
            orphans: list[int]) -> None:
    """Annotated somata green, this detector's orphan detections (labels) red."""
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    rgb = image[..., :3] if image.ndim == 3 else np.repeat(image[..., None], 3, axis=-1)
    rgb = rgb.astype(float) / (rgb.max() or 1.0)
    orphan = np.isin(pred, orphans)
    rgb[find_boundaries(gt)] = (0.0, 0.8, 0.0)
    rgb[find_boundaries(orphan)] = (1.0, 0.0, 0.0)
    plt.imsave(path, rgb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--detector", action="append", default=[], metavar="NAME=RUN")
    parser.add_argument("--images", nargs="*", default=list(DEV))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--pictures", type=Path)
    args = parser.parse_args()
    peer = {_our_name(n): n for n in _listing(args.repo, f"{QC}/v1")}
    sources = {"peer_v1": None} | dict(d.split("=", 1) for d in args.detector)
    results: dict = {"images": args.images, "thresholds": {"orphan": ORPHAN,
                     "pale_percentile": PALE_PERCENTILE, "elongated": ELONGATED},
                     "detectors": {}}
    for name, run in sources.items():
        detector = load_detector(run) if run else None
        per_image = {}
        for stem in args.images:
            image = read_image(TRAIN / "images" / f"{stem}.png")
            gt = read_labels(TRAIN / "labels" / f"{stem}.tif")
            pred = (tifffile.imread(io.BytesIO(_read(args.repo, f"{QC}/v1/{peer[stem]}")))
                    if detector is None else np.asarray(predict_image(detector, image)))
            per_image[stem], orphans = errors(gt, pred, stain(image))
            if args.pictures:
                args.pictures.mkdir(parents=True, exist_ok=True)
                picture(args.pictures / f"{name}_{stem}.png", image, gt, pred, orphans)
        summary = total(per_image)
        results["detectors"][name] = {"run": run, "total": summary, "per_image": per_image}
        print(f"{name:12s} P {summary['precision']:.2f} R {summary['recall']:.2f}  "
              f"false positives {summary['fp']}  misses {summary['fn']}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, results)


if __name__ == "__main__":
    main()
