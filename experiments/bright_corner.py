"""Issue 17 acceptance: a bright corner does not change the cells found in dim regions.

Builds a 4,096 x 4,096 12-bit uint16 section of one tissue by tiling one real test image
(``--image``, flipped in turn so tiles differ; values x 16), saturates a corner (``--corner`` px
square), predicts the whole section tile by tile, predicts a dim region alone, and compares the
cells whose centres lie inside that region (away from its border): matched at IoU 0.5 and the
mean IoU of the matches. The section without the corner is predicted too, as the control.
(A mosaic of images from different microscopes is the wrong premise: one range for the whole
image then differs from each part's own range by design.)

    python experiments/bright_corner.py --model runs/bit_depth/model \
        --test ../shared/data/dsb2018_fluo/test --json docs/results/bright_corner/results.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from cellsynth.evaluate import matching
from cellsynth.io.datasets import load_dataset
from cellsynth.io.files import write_json
from cellsynth.segment.predict import load_detector, predict_image

SIZE = 4096


def _section(test: Path, index: int) -> np.ndarray:
    image = load_dataset(test).samples[index].read_image()
    image = image if image.ndim == 2 else image.mean(axis=-1).astype(np.uint8)
    h, w = image.shape
    section = np.zeros((SIZE, SIZE), np.uint16)
    for i, y in enumerate(range(0, SIZE, h)):
        for j, x in enumerate(range(0, SIZE, w)):
            tile = image[::-1] if i % 2 else image
            tile = tile[:, ::-1] if j % 2 else tile  # mirrored: seamless at the joins
            part = tile[:SIZE - y, :SIZE - x]
            section[y:y + part.shape[0], x:x + part.shape[1]] = part.astype(np.uint16) * 16
    return section


def _inner(labels: np.ndarray, margin: int) -> np.ndarray:
    """Labels whose centre lies at least ``margin`` px inside the array."""
    ids = np.unique(labels)[1:]
    centres = ndi.center_of_mass(labels > 0, labels, ids)
    h, w = labels.shape
    keep = [i for i, (cy, cx) in zip(ids, centres)
            if margin <= cy < h - margin and margin <= cx < w - margin]
    return np.where(np.isin(labels, keep), labels, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--corner", type=int, default=160)
    parser.add_argument("--image", type=int, default=0, help="index of the test image tiled")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    detector = load_detector(args.model)
    section = _section(args.test, args.image)
    region = (slice(2048, 3072), slice(2048, 3072))
    alone = _inner(predict_image(detector, section[region], where="region"), 48)
    summary = {"section": f"{SIZE}x{SIZE} uint16 12-bit, test image {args.image} tiled",
               "region": "2048:3072, 2048:3072", "cells_alone": int(len(np.unique(alone)) - 1)}
    for name, corner in (("no_corner", 0), ("corner", args.corner)):
        image = section.copy()
        image[:corner, :corner] = 4095
        started = time.perf_counter()
        whole = predict_image(detector, image, where="section")
        seconds = time.perf_counter() - started
        found = _inner(whole[region], 48)
        result = matching(alone, found, thresholds=(0.5,))
        summary[name] = {"corner_px": corner, "cells_in_region": int(len(np.unique(found)) - 1),
                         "f1_vs_alone_at_iou_0.5": float(result.f1[0]),
                         "mean_matched_iou": float(result.mean_iou[0]),
                         "seconds": round(seconds, 1),
                         "megapixels_per_s": round(SIZE * SIZE / 1e6 / seconds, 3)}
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, summary)


if __name__ == "__main__":
    main()
