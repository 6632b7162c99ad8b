"""`cellsynth export --to geojson` of a section's labels: outlines and areas as exported now
(the pixel outline's corners, areas from one bincount) against the way before (skimage's
approximate_polygon per outline, one mask per cell for its area), same run, same cells.

    python benchmarks/export.py [--size 2048] [--cells 1500] [--json OUT]

The label image is a grid of disks; both ways must give the same cells and areas and
outlines of the same area within 1 px². A
6144² whole-section prediction of 13,083 cells took 443.6 s to export before (a user's run,
2026-12-05), its prediction 88.8 s.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _labels(size: int, cells: int) -> np.ndarray:
    side = int(np.ceil(np.sqrt(cells)))
    step = size // side
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int32)
    radius = step * 0.45
    for k in range(cells):
        cy, cx = (k // side) * step + step // 2, (k % side) * step + step // 2
        box = (slice(max(0, cy - step // 2), cy + step // 2),
               slice(max(0, cx - step // 2), cx + step // 2))
        inside = (yy[box] - cy) ** 2 + (xx[box] - cx) ** 2 < radius ** 2
        labels[box][inside] = k + 1
    return labels


def main() -> None:
    from cellsynth.io.export import _geojson

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--cells", type=int, default=1500)
    parser.add_argument("--json", help="write the timings here")
    args = parser.parse_args()
    labels = _labels(args.size, args.cells)

    def before() -> dict:  # the export of 2026-12-04: skimage's approximate_polygon at
        # 0.1 px for each outline, and a mask of the whole image per cell for its area
        from scipy import ndimage as ndi
        from skimage.measure import approximate_polygon, find_contours

        features = []
        for index, box in enumerate(ndi.find_objects(labels), start=1):
            if box is None:
                continue
            mask = np.pad(labels[box] == index, 1).astype(np.float32)
            contour = approximate_polygon(max(find_contours(mask, 0.5), key=len), 0.1)
            polygon = np.stack([contour[:, 1] - 1 + box[1].start + 0.5,
                                contour[:, 0] - 1 + box[0].start + 0.5], axis=1)
            features.append({"type": "Feature", "geometry": {
                "type": "Polygon", "coordinates": [polygon.round(2).tolist()]},
                "properties": {"objectType": "detection", "name": f"cell {index}",
                               "measurements": {"label": index,
                                                "area_px": int((labels == index).sum())}}})
        return {"type": "FeatureCollection", "features": features,
                "properties": {"image": "x"}}

    def shoelace(feature: dict) -> float:
        x, y = np.asarray(feature["geometry"]["coordinates"][0]).T
        return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))

    started = time.perf_counter()
    old = before()
    t_old = time.perf_counter() - started
    started = time.perf_counter()
    new = _geojson(labels, "x")
    t_new = time.perf_counter() - started
    pairs = list(zip(old["features"], new["features"], strict=True))
    assert all(a["properties"] == b["properties"] for a, b in pairs), "other cells or areas"
    # the outlines: the same shapes (now every corner of the pixel outline exactly, before
    # within 0.1 px of it)
    moved = max(abs(shoelace(a) - shoelace(b)) for a, b in pairs)
    assert moved < 1.0, f"an outline's area moved by {moved:.2f} px²"
    print(f"{args.size}² labels, {args.cells} cells: before {t_old:.2f} s, now {t_new:.2f} s "
          f"({t_old / t_new:.1f}x); same cells and areas, outlines' areas within "
          f"{moved:.3f} px²")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "size": args.size, "cells": args.cells, "seconds_before": t_old,
            "seconds_now": t_new, "speedup": t_old / t_new}, indent=1) + "\n")


if __name__ == "__main__":
    main()
