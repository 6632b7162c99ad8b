"""How many of a `nissl_dev.py` run's false positives on its development images are small
objects that touch no annotated soma (the recipe's excess over the peer, docs/results.md,
twenty-fourth session), and how many of those are rods (axis ratio > 2): the mechanism that
simulating unannotated rods and capillary wall nuclei (``sim_rods``) is meant to remove; and
how many of the small annotated somata (<= 250 px) are found (IoU >= 0.5), which weighing
every annotated cell the same in the score loss (``score_balance``) is meant to raise.

    python experiments/unannotated_dev.py --runs OUT-s0/sim_tiny_ft_k2 OUT-s0/sim_rods_tiny_ft_k2 \\
        [--json FILE]

Each run predicts its dev images (training split; never the test split) with its last
checkpoint at the threshold chosen on its own 2 annotated images, as compare_dev.py does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from skimage.measure import regionprops

from cellsynth.io.datasets import load_dataset
from cellsynth.io.files import write_json
from cellsynth.segment.predict import load_detector, predict_image

SMALL = 250  # px: glial nuclei at 0.346 um/px are ~100-280 px; somata median ~540


def _kinds(truth: np.ndarray, predicted: np.ndarray) -> dict[str, int]:
    """Counts of detections, false positives (best IoU < 0.5), those touching no soma
    (best IoU <= 0.1), small ones among them and small rods; small somata and those found."""
    t_ids, t_area = np.unique(truth, return_counts=True)
    t_size = dict(zip(t_ids.tolist(), t_area.tolist()))
    pairs = predicted.astype(np.int64) * (int(truth.max()) + 1) + truth
    ids, counts = np.unique(pairs[predicted > 0], return_counts=True)
    p_ids, p_area = np.unique(predicted, return_counts=True)
    p_size = dict(zip(p_ids.tolist(), p_area.tolist()))
    best: dict[int, float] = {}
    found: set[int] = set()
    for key, inter in zip(ids.tolist(), counts.tolist()):
        p, t = divmod(key, int(truth.max()) + 1)
        if t == 0:
            continue
        iou = inter / (p_size[p] + t_size[t] - inter)
        best[p] = max(best.get(p, 0.0), iou)
        if iou >= 0.5:
            found.add(t)
    small = [t for t, area in t_size.items() if t and area <= SMALL]
    out = dict(detections=0, false_positives=0, unannotated=0, unannotated_small=0,
               unannotated_small_rods=0, small_somata=len(small),
               small_somata_found=sum(t in found for t in small))
    for region in regionprops(predicted):
        out["detections"] += 1
        iou = best.get(region.label, 0.0)
        if iou >= 0.5:
            continue
        out["false_positives"] += 1
        if iou > 0.1:
            continue
        out["unannotated"] += 1
        if region.area <= SMALL:
            out["unannotated_small"] += 1
            minor = max(region.axis_minor_length, 1e-6)
            out["unannotated_small_rods"] += int(region.axis_major_length / minor > 2.0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = {}
    for run in args.runs:
        thresh = float(json.loads((run / "dev.json").read_text())["thresh_on_k2"])
        detector = load_detector(run / "last.pt", precision="fp32")
        dev = load_dataset(run.parent / "data" / "dev", require_labels=True)
        total: dict[str, int] = {}
        for sample in dev:
            predicted = predict_image(detector, sample.read_image(), score_thresh=thresh,
                                      pixel_size_um=dev.pixel_size_um, where=str(sample.id))
            for k, v in _kinds(sample.read_labels(), predicted).items():
                total[k] = total.get(k, 0) + v
        result[str(run)] = total
        print(run, total, flush=True)
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
