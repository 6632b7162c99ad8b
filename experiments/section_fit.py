"""fit-simulator and the refiner's crops on a whole section: bounded time and memory, the
fit of the tissue it holds, no glass.

    python experiments/section_fit.py --work runs/section-fit [--size 8192]
        [--json docs/results/section_fit/results.json]

A Nissl "section" of ``size`` x ``size`` px at 0.346 um/px is written as a tiled,
pyramidal, zlib-compressed OME-TIFF (what slide scanners export): an ellipse of tissue
(the 4 unlabeled nissl_rat_sscx/train images, tiled with random flips and rotations) on
empty glass. Then, each as its own process (what a user runs), with peak RSS:

1. ``cellsynth fit-simulator --real`` on the 4 images themselves (the baseline) and on the
   folder holding the section: time, memory, and the fitted median soma diameter and
   density of both (the section holds the same tissue, so they should agree within the
   search's noise);
2. the refiner's real crops (``RealCrops``) of the section: set-up time and the share of
   256 crops of 128² that are tissue rather than glass.

The test split is not opened.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "nissl_rat_sscx" / "train"
PX = 0.346
GLASS = np.array([236, 233, 240], np.float32)
_MEASURED = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
             "print(f'peak_rss_kb={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', "
             "file=sys.stderr); sys.exit(code)")


def _tissue_mask(y: np.ndarray, x: np.ndarray, size: int) -> np.ndarray:
    c = size / 2
    return ((y - c) / (0.42 * size)) ** 2 + ((x - c) / (0.30 * size)) ** 2 <= 1.0


def write_section(path: Path, size: int, seed: int = 0, tile: int = 512) -> float:
    """The section, written tile by tile; returns the share of it that is tissue."""
    import tifffile

    from cellsynth.io.datasets import load_dataset

    images = [s.read_image()[..., :3] for s in load_dataset(DATA)]
    rng = np.random.default_rng(seed)
    n = -(-size // tile)
    choice = rng.integers(len(images), size=(n, n))
    turns = rng.integers(4, size=(n, n))

    def window(level: int):
        f = 2 ** level
        m = -(-size // f)
        for ty in range(0, m, tile):
            for tx in range(0, m, tile):
                y, x = np.mgrid[ty:ty + tile, tx:tx + tile] * f
                block = np.empty((tile, tile, 3), np.uint8)
                # tissue: the source image of the level-0 tile each pixel falls in
                iy, ix = np.minimum(y // tile, n - 1), np.minimum(x // tile, n - 1)
                for a, b in set(zip(iy.ravel().tolist(), ix.ravel().tolist())):
                    src = np.rot90(images[choice[a, b]], turns[a, b])
                    sel = (iy == a) & (ix == b)
                    block[sel] = src[(y[sel] - a * tile) % src.shape[0],
                                     (x[sel] - b * tile) % src.shape[1]]
                glass = np.clip(GLASS + rng.normal(0, 2.0, (tile, tile, 3)), 0, 255)
                inside = _tissue_mask(y, x, size)[..., None]
                yield np.where(inside, block, glass.astype(np.uint8))

    meta = {"axes": "YXS", "PhysicalSizeX": PX, "PhysicalSizeY": PX,
            "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"}
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        tif.write(window(0), shape=(size, size, 3), dtype=np.uint8, tile=(tile, tile),
                  compression="zlib", subifds=2, metadata=meta, photometric="rgb")
        for level in (1, 2):
            m = -(-size // 2 ** level)
            tif.write(window(level), shape=(m, m, 3), dtype=np.uint8, tile=(tile, tile),
                      compression="zlib", subfiletype=1, photometric="rgb")
    y, x = np.mgrid[0:size:16, 0:size:16]
    return float(_tissue_mask(y, x, size).mean())


def fit(real: Path, out: Path) -> dict:
    """``cellsynth fit-simulator`` in its own process: seconds, peak RSS, fitted numbers."""
    from cellsynth.simulate import simulation_config
    from cellsynth.simulate.fit import median_diameter_um

    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _MEASURED, "cellsynth", "fit-simulator",
                           "--real", str(real), "--preset", "nissl", "--pixel-size", str(PX),
                           "--out", str(out), "--force"], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"fit-simulator failed:\n{done.stderr[-3000:]}")
    rss = int(re.search(r"peak_rss_kb=(\d+)", done.stderr).group(1)) / 1e6
    config = simulation_config("nissl", config_file=out)
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(rss, 2),
            "median_diameter_um": round(median_diameter_um(config), 2),
            "density_per_mm2": round(sum(c.density for c in config.cells if c.labeled), 1)}


def crops(folder: Path) -> dict:
    from cellsynth.refine.data import RealCrops

    start = time.perf_counter()
    real = RealCrops(folder, 128, 3)
    setup = time.perf_counter() - start
    batch = real.sample(256, np.random.default_rng(0)).numpy()
    gray = (batch.mean(axis=1) + 1) / 2 * 255  # back to 0..255 (the range is ~the dtype's)
    mean = gray.reshape(256, -1).mean(axis=1)
    # glass is ~236 everywhere; a crop is glass if most of its pixels are that bright and flat
    glassy = ((gray > 225).reshape(256, -1).mean(axis=1) > 0.5)
    return {"setup_seconds": round(setup, 1), "regions": len(real.regions[0]),
            "glass_crops": int(glassy.sum()), "crops": 256,
            "mean_crop_brightness": round(float(mean.mean()), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    section_dir = args.work / "section"
    section_dir.mkdir(parents=True, exist_ok=True)
    tiff = section_dir / "section.ome.tif"
    start = time.perf_counter()
    tissue = write_section(tiff, args.size)
    print(f"section {args.size}² px ({tissue:.0%} tissue, {tiff.stat().st_size / 1e6:.0f} MB) "
          f"written in {time.perf_counter() - start:.0f} s")
    base = fit(DATA, args.work / "fit-images.yaml")
    print(f"fit on the 4 images:  {base}")
    section = fit(section_dir, args.work / "fit-section.yaml")
    print(f"fit on the section:   {section}")
    share = {k: round(section[k] / base[k] - 1, 3)
             for k in ("median_diameter_um", "density_per_mm2")}
    print(f"section vs images: {share} (relative difference)")
    refiner = crops(section_dir)
    print(f"refiner crops of the section: {refiner}")
    result = {"size_px": args.size, "pixel_size_um": PX, "tissue_share": round(tissue, 3),
              "file_mb": round(tiff.stat().st_size / 1e6, 1), "fit_images": base,
              "fit_section": section, "section_vs_images": share, "refiner_crops": refiner}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
