"""A section predicted by one `cellsynth predict` against N `--part I/N` processes at once
(then the same command without --part, which paints), in one script, labels compared.

    python benchmarks/predict_parts.py --detector RUN [--images DIR] [--size 2048]
                                       [--parts 2] [--tile 512] [--json OUT]

The section is a ``--size``² mosaic of the images of ``--images`` (default: the Nissl
training images of ../shared/data, mirrored into a tiled TIFF), predicted as a whole section
(`predict` reads it lazily). The baseline is one process with every core (what `predict` did
before `--part`); the parts run side by side, each with cores / N threads, as N array jobs
on N machines would each have a machine of their own. On one machine the ratio is what
splitting the cores between processes gains or costs; across N machines the parts' wall time
is about 1 / N of the baseline's. The script prints both wall times, the ratio and how far
the labels agree (identical at equal thread counts, as the tests check; here the parts run at
fewer threads each, whose float sums can move a proposal's last bits).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _mosaic(images: Path, size: int) -> np.ndarray:
    """A (size, size[, C]) mosaic of the folder's images, mirrored at their edges."""
    from cellsynth.io.datasets import load_dataset
    from cellsynth.io.images import read_image

    tiles = [read_image(s.image_path) for s in load_dataset(images)]
    side = min(min(t.shape[:2]) for t in tiles)
    n = -(-size // side)
    rows = []
    for r in range(n):
        row = []
        for c in range(n):
            tile = tiles[(r * n + c) % len(tiles)][:side, :side]
            row.append(tile[::-1] if r % 2 else tile[:, ::-1] if c % 2 else tile)
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows)[:size, :size]


def main() -> None:
    import tifffile

    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detector", required=True, type=Path)
    parser.add_argument("--images", type=Path,
                        default=repo.parent / "shared/data/nissl_rat_sscx/train")
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--parts", type=int, default=2)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--pixel-size", type=float, default=0.346)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cores = os.cpu_count() or 1

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "section").mkdir()
        mosaic = _mosaic(args.images, args.size)
        # tiled (what a scanner's export is), so that predict reads it lazily, window by window
        tifffile.imwrite(root / "section" / "s.tif", mosaic, tile=(256, 256),
                         resolution=(1e4 / args.pixel_size, 1e4 / args.pixel_size),
                         resolutionunit="CENTIMETER", photometric="rgb" if mosaic.ndim == 3
                         else "minisblack")
        command = [sys.executable, "-m", "cellsynth", "predict", "--detector",
                   str(args.detector), "--images", str(root / "section"), "--tile",
                   str(args.tile), "--quiet", "--pixel-size", str(args.pixel_size),
                   "--labels", "tiff"]

        def cellsynth(extra: list[str], threads: int) -> subprocess.Popen:
            return subprocess.Popen(command + extra, stderr=subprocess.PIPE, text=True,
                                    env={**os.environ, "CELLSYNTH_THREADS": str(threads)})

        def finished(process: subprocess.Popen) -> None:
            err = process.communicate()[1]
            if process.returncode != 0:
                sys.exit(f"predict failed: {err[-2000:]}")

        started = time.perf_counter()
        finished(cellsynth(["--out", str(root / "alone")], cores))
        alone = time.perf_counter() - started

        started = time.perf_counter()
        jobs = [cellsynth(["--out", str(root / "parts"), "--part", f"{i}/{args.parts}"],
                          max(1, cores // args.parts)) for i in range(1, args.parts + 1)]
        for job in jobs:
            finished(job)
        predicted = time.perf_counter() - started
        finished(cellsynth(["--out", str(root / "parts")], cores))
        parts = time.perf_counter() - started

        from cellsynth.evaluate.matching import matching
        from cellsynth.io.images import read_labels

        one, split = (read_labels(root / name / "labels" / "s.tif") for name in ("alone",
                                                                                 "parts"))
        same = np.array_equal(one, split)
        # (the parts compute at cores / N threads: float sums in another order can move a
        # proposal's last bits, so the labels may differ by a few pixels; how much, here)
        agreement = matching(one, split)
        f1_50, f1_avg = float(agreement.f1[0]), float(agreement.f1_avg)
        meta = json.loads((root / "parts" / "meta.json").read_text())
        tiles = meta["images_pixel_size_um"]["s"]["tiles"]
        cells = int(meta["n_instances"])
        shutil.rmtree(root / "alone")
    ratio = alone / parts
    print(f"{args.size}² section, {cells} cells: one process ({cores} threads) {alone:.1f} s; "
          f"{args.parts} parts side by side ({max(1, cores // args.parts)} thread(s) each) "
          f"{predicted:.1f} s + painting {parts - predicted:.1f} s = {parts:.1f} s: "
          f"{ratio:.2f}x; the final call predicted {tiles['predicted']} tiles; labels "
          f"{'identical' if same else 'differ'} (parts against one process: F1@0.5 "
          f"{f1_50:.4f}, F1avg {f1_avg:.4f})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(
            {"size": args.size, "parts": args.parts, "cores": cores, "alone_s": alone,
             "parts_predict_s": predicted, "parts_total_s": parts, "ratio": ratio,
             "labels_identical": same, "agreement_f1_50": f1_50, "agreement_f1_avg": f1_avg,
             "cells": cells, "final_tiles": tiles}, indent=1) + "\n")


if __name__ == "__main__":
    main()
