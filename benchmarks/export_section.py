"""`cellsynth export` of a whole section's OME-Zarr prediction: the labels read in row bands
(now) against decoded whole (before 2026-12-07: ``read_labels_zarr`` -> numpy, plus an int64
bincount of every pixel), same run, same cells; peak memory (RSS) and time of each way in a
process of its own.

    python benchmarks/export_section.py [--size 8192] [--to geojson] [--json OUT]

The labels are a grid of 1024² tiles of ~400 disks each, ids numbered across tiles, written
as OME-Zarr (chunks of 1024) by the package's own writer; both ways must write the same
features. A 16384² section decoded whole took 3.3 GB (audit 7); a 100k² one would take
~120 GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TILE = 1024


class _Tiled:
    """A lazy (size, size) label image: the same tile of disks everywhere, ids offset."""

    def __init__(self, size: int):
        yy, xx = np.mgrid[:TILE, :TILE]
        tile = np.zeros((TILE, TILE), np.uint32)
        step, k = 50, 0
        for cy in range(step // 2, TILE, step):
            for cx in range(step // 2, TILE, step):
                k += 1
                tile[(yy - cy) ** 2 + (xx - cx) ** 2 < (0.4 * step) ** 2] = k
        self.tile, self.per_tile, self.n = tile, k, size // TILE
        self.shape, self.dtype = (self.n * TILE, self.n * TILE), np.dtype(np.uint32)

    def __getitem__(self, key):
        rows = np.arange(self.shape[0])[key[0]]
        cols = np.arange(self.shape[1])[key[1]]
        base = self.tile[np.ix_(rows % TILE, cols % TILE)]
        offset = ((rows // TILE)[:, None] * self.n + cols // TILE) * self.per_tile
        return np.where(base > 0, base + offset.astype(np.uint32), 0).astype(np.uint32)


def _child(pred: str, to: str, out: str, how: str) -> None:
    import cellsynth.io.export as export_module

    if how == "before":  # the whole level decoded, then its cells in one pass
        from cellsynth.io.ome_zarr import read_labels_zarr

        export_module.BAND_PIXELS = 1 << 62
        export_module.open_labels_zarr = lambda path, level=0: read_labels_zarr(path,
                                                                                level=level)
    started = time.perf_counter()
    summary = export_module.export(pred, to, out)
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mb": peak_mb,
                      "cells": summary["n_instances"]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--to", default="geojson", choices=["geojson", "coco"])
    parser.add_argument("--json", help="write the numbers here")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    from cellsynth.io.ome_zarr import write_labels_zarr

    with tempfile.TemporaryDirectory() as tmp:
        pred = Path(tmp) / "pred"
        (pred / "labels").mkdir(parents=True)
        labels = _Tiled(args.size)
        write_labels_zarr(pred / "labels" / "slide.ome.zarr", labels, pixel_size_um=1.0)
        (pred / "meta.json").write_text(json.dumps({
            "stage": "predict", "images": str(Path(tmp) / "slide.tif"),
            "images_pixel_size_um": {"slide": {"file": "slide.tif", "pixel_size_um": 1.0}}}))
        runs = {}
        for how in ("before", "now"):
            out = Path(tmp) / how
            done = subprocess.run([sys.executable, __file__, "--child", str(pred), args.to,
                                   str(out), how], check=True, capture_output=True, text=True)
            runs[how] = json.loads(done.stdout.strip().splitlines()[-1])
        name = "slide.geojson" if args.to == "geojson" else "annotations.json"
        a, b = ((Path(tmp) / how / name).read_bytes() for how in ("before", "now"))
        if args.to == "geojson":
            key = lambda f: f["properties"]["measurements"]["label"]  # noqa: E731
            same = (sorted(json.loads(a)["features"], key=key)
                    == sorted(json.loads(b)["features"], key=key))
        else:
            ann = lambda x: sorted(json.dumps(y, sort_keys=True)  # noqa: E731
                                   for y in json.loads(x)["annotations"])
            same = ann(a) == ann(b)
    assert same, "the two ways wrote different cells"
    before, now = runs["before"], runs["now"]
    print(f"{args.size}² OME-Zarr labels, {now['cells']} cells, --to {args.to}: peak memory "
          f"before {before['peak_mb']:.0f} MB, now {now['peak_mb']:.0f} MB "
          f"({before['peak_mb'] / now['peak_mb']:.1f}x less); time before "
          f"{before['seconds']:.1f} s, now {now['seconds']:.1f} s "
          f"({before['seconds'] / now['seconds']:.2f}x); the same cells")
    if args.json:
        Path(args.json).write_text(json.dumps({"size": args.size, "to": args.to,
                                               "before": before, "now": now}, indent=1) + "\n")


if __name__ == "__main__":
    main()
