"""How much contrast do real cells have, against the blank-tile rule of `predict`?

    python experiments/blank_tiles.py [--data ../shared/data] [--json OUT]

For every image of every dataset (train and test splits; labels read, nothing trained), scaled
to [0, 1] as `predict` scales it (the percentile range of the detector's default
normalisation):

- tiles: the image cut as `predict` cuts it (512 and 1024 px tiles, 96 overlap, balanced),
  how many :func:`cellsynth.segment.tiles.blank_tile` calls blank at EMPTY_CONTRAST; and the
  smallest contrast any tile has (the tile statistic: the largest |4x4 block mean - mean of the
  36 x 36 px around it|);
- cells: each annotated object alone, its bounding box plus a 36 px margin, with every other
  object's pixels replaced by the background median: that statistic is how far the object
  stands out. The rule loses a cell only if a tile holding it is blank, so the faintest
  objects' contrast against EMPTY_CONTRAST is the rule's safety margin.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cellsynth.io.datasets import load_dataset
from cellsynth.io.normalize import DEFAULT, apply_range, intensity_range
from cellsynth.segment.tiles import EMPTY_CONTRAST, balanced_tile, blank_tile, tile_origins


def contrast(tile: np.ndarray) -> float:
    """The tile statistic of blank_tile: the smallest contrast at which it is blank."""
    lo, hi = 0.0, 1.0
    for _ in range(20):  # bisection on the monotone rule
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if blank_tile(tile, mid) else (mid, hi)
    return hi


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    out = {"empty_contrast": EMPTY_CONTRAST, "datasets": {}}
    for root in sorted(p for p in args.data.iterdir() if p.is_dir()):
        tiles = {512: [0, 0], 1024: [0, 0]}
        tile_min = np.inf
        cells = []
        for split in ("train", "test"):
            if not (root / split).is_dir():
                continue
            for sample in load_dataset(root / split, require_labels=True):
                image, labels = sample.read()
                low, high = intensity_range(image, DEFAULT)
                x = apply_range(image, low, high)
                if x.ndim == 2:
                    x = x[..., None]
                h, w = labels.shape
                for size in tiles:
                    t = max(balanced_tile(h, size, 96), balanced_tile(w, size, 96))
                    for y in tile_origins(h, t, 96):
                        for x0 in tile_origins(w, t, 96):
                            window = x[y:y + t, x0:x0 + t]
                            tiles[size][0] += 1
                            tiles[size][1] += blank_tile(window)
                            tile_min = min(tile_min, contrast(window))
                background = np.median(x[labels == 0], axis=0)
                for region in np.unique(labels)[1:]:
                    ys, xs = np.nonzero(labels == region)
                    y0, y1 = max(ys.min() - 36, 0), min(ys.max() + 37, h)
                    x0, x1 = max(xs.min() - 36, 0), min(xs.max() + 37, w)
                    crop = x[y0:y1, x0:x1].copy()
                    others = (labels[y0:y1, x0:x1] != region) & (labels[y0:y1, x0:x1] > 0)
                    crop[others] = background
                    cells.append(contrast(crop))
        cells = np.array(cells)
        out["datasets"][root.name] = {
            "tiles": {str(k): {"n": v[0], "blank": v[1]} for k, v in tiles.items()},
            "smallest_tile_contrast": round(float(tile_min), 4),
            "cells": len(cells),
            "cell_contrast_min": round(float(cells.min()), 4),
            "cell_contrast_p1": round(float(np.percentile(cells, 1)), 4),
            "cell_contrast_median": round(float(np.median(cells)), 4),
            "cells_below_empty_contrast": int((cells <= EMPTY_CONTRAST).sum())}
        print(root.name, json.dumps(out["datasets"][root.name]), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
