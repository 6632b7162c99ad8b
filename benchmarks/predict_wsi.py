"""Whole-section prediction: megapixels/s, peak memory, equality and resume after kill -9.

    python benchmarks/predict_wsi.py [--size 20000] [--pixel-size 0.25] [--detector RUN]
                                     [--work DIR] [--threads N]

A synthetic section of ``size`` x ``size`` pixels (a fluorescence-nuclei simulation at the
detector's 0.5 um/px, upsampled to ``--pixel-size``; by default a 2.5 x 2.5 mm scan at
0.125 um/px, which the detector sees as 5,000 x 5,000 pixels) is written once as a tiled,
pyramidal, zlib-compressed OME-TIFF and once as an OME-Zarr, in bounded memory. Then, each
as its own ``cellsynth predict`` process (what a user runs):

1. the TIFF end to end -> OME-Zarr labels + detections table: MP/s and peak RSS (os.wait4);
2. a 2,048 x 2,048 crop, once as a flat TIFF (read and painted whole: the in-memory path) and
   once as a tiled pyramidal TIFF (the whole-section path): the labels must be identical;
3. the OME-Zarr, killed with SIGKILL once half of its rows of tiles are done, then run again:
   the rerun must say how many rows it kept, take about the remaining fraction of the time,
   and give the same labels as the uninterrupted TIFF run.

The ratio printed is the whole-section path's throughput against the in-memory path's on the
same 2,048 crop in this run (the baseline: what lazy reading, painting window by window and
OME-Zarr writing cost over plain tiled prediction); MP/s are each process's own timing.
Without ``--detector`` a tiny CPN is trained for 30 steps first (as the test suite does); its
cells are real enough for a pipeline benchmark, not for accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _tiny_detector(root: Path) -> Path:
    from cellsynth.segment.data import Augment
    from cellsynth.segment.trainer import TrainConfig, train
    from cellsynth.simulate import preset, write_simulation

    run = root / "detector"
    if (run / "last.pt").is_file() or (run / "best.pt").is_file():
        return run
    write_simulation(preset("fluo"), n=8, size=128, seed=0, out=root / "sim", progress=False)
    config = TrainConfig(steps=30, lr=4e-3, warmup=1, crop=96, batch=2, samples=32, order=4,
                         refinement_iterations=1, val_every=1000, precision="fp32",
                         augment=Augment(enabled=False),
                         pixel_size_um=preset("fluo").pixel_size_um)
    train(config, [root / "sim"], run, progress=False)
    return run


def _mosaic(size: int, seed: int = 0) -> np.ndarray:
    """A (size, size) uint8 fluorescence-nuclei image at the simulation's pixel size, made of
    simulated 512 px tiles (16 distinct ones, rotated and flipped where they repeat)."""
    from cellsynth.simulate import simulate

    tiles = [img if img.ndim == 2 else img[..., 0]
             for img, _ in simulate("fluo", 16, 512, seed=seed)]
    n = -(-size // 512)
    rows = []
    for i in range(n):
        row = []
        for j in range(n):
            k = i * n + j
            t = np.rot90(tiles[k % 16], k // 16)
            row.append(t[:, ::-1] if (k // 64) % 2 else t)
        rows.append(np.concatenate(row, axis=1))
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:size, :size])


def _section_window(low: np.ndarray, zoom: float, y0: int, x0: int, h: int, w: int
                    ) -> np.ndarray:
    """Pixels [y0:y0+h, x0:x0+w] of the low-resolution mosaic seen ``zoom`` times finer."""
    from scipy import ndimage as ndi

    ys = (np.arange(y0, y0 + h) + 0.5) / zoom - 0.5
    xs = (np.arange(x0, x0 + w) + 0.5) / zoom - 0.5
    lo_y, lo_x = max(0, int(ys[0]) - 1), max(0, int(xs[0]) - 1)
    patch = low[lo_y:int(ys[-1]) + 3, lo_x:int(xs[-1]) + 3].astype(np.float32)
    yy, xx = np.meshgrid(ys - lo_y, xs - lo_x, indexing="ij")
    out = ndi.map_coordinates(patch, [yy, xx], order=1, mode="nearest")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def write_section(low: np.ndarray, zoom: float, size: int, tiff: Path, zarr_path: Path,
                  pixel_size_um: float, *, tile: int = 512, levels: int = 4) -> None:
    """The section as a tiled pyramidal OME-TIFF and an OME-Zarr, written tile by tile."""
    import tifffile
    import zarr

    def tiles(level: int):
        f = 2 ** level
        n = -(-size // f)
        for y in range(0, n, tile):
            for x in range(0, n, tile):
                h, w = min(tile, n - y), min(tile, n - x)
                window = _section_window(low, zoom / f, y, x, h, w)
                yield np.pad(window, ((0, tile - h), (0, tile - w)))

    with tifffile.TiffWriter(tiff, bigtiff=True, ome=True) as tif:
        meta = {"axes": "YX", "PhysicalSizeX": pixel_size_um, "PhysicalSizeY": pixel_size_um,
                "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"}
        tif.write(tiles(0), shape=(size, size), dtype=np.uint8, tile=(tile, tile),
                  compression="zlib", subifds=levels - 1, metadata=meta)
        for level in range(1, levels):
            n = -(-size // 2 ** level)
            tif.write(tiles(level), shape=(n, n), dtype=np.uint8, tile=(tile, tile),
                      compression="zlib", subfiletype=1)
    root = zarr.open_group(str(zarr_path), mode="w", zarr_format=2)
    datasets = []
    for level in range(levels):
        f = 2 ** level
        n = -(-size // f)
        array = root.create_array(str(level), shape=(n, n), chunks=(1024, 1024),
                                  dtype=np.uint8, chunk_key_encoding={"name": "v2",
                                                                      "separator": "/"})
        for y in range(0, n, 1024):
            h = min(1024, n - y)
            array[y:y + h, :] = np.concatenate(
                [_section_window(low, zoom / f, y, x, h, min(1024, n - x))
                 for x in range(0, n, 1024)], axis=1)
        datasets.append({"path": str(level), "coordinateTransformations": [
            {"type": "scale", "scale": [pixel_size_um * f, pixel_size_um * f]}]})
    root.attrs["multiscales"] = [{"version": "0.4", "datasets": datasets, "axes": [
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"}]}]


def cpu_summary() -> str:
    """The CPU's model name, its cores here and whether it computes bf16 natively."""
    from cellsynth.hardware import cpu_bf16_support, cpu_model, usable_cores

    return f"{cpu_model()}, {usable_cores()} cores, {cpu_bf16_support()[1]}"


# Runs a command and reports its peak RSS. ru_maxrss survives execve, so a child forked from
# this (large) benchmark process would report this process's size; forked from this small
# wrapper it reports its own.
_MEASURED = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
             "print(f'peak_rss_kb={resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', "
             "file=sys.stderr); sys.exit(code)")


def _predict(detector: Path, images: Path, out: Path, pixel_size_um: float, *,
             labels_as: str = "ome-zarr", kill_when=None, threads: int | None = None
             ) -> dict:
    """Run `cellsynth predict` as a child process: seconds, peak RSS (GB), its output; with
    ``kill_when`` (a callable polled every 0.5 s) SIGKILL it once that returns True."""
    env = dict(os.environ)
    if threads:
        env["CELLSYNTH_THREADS"] = str(threads)
    cmd = [sys.executable, "-c", _MEASURED, shutil.which("cellsynth") or "cellsynth",
           "predict", "--detector", str(detector), "--images", str(images), "--out", str(out),
           "--pixel-size", str(pixel_size_um),
           "--precision", "fp32", "--labels", labels_as, "--score-thresh", "0.5"]
    started = time.perf_counter()
    log = out.with_name(out.name + ".log")
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        killed = False
        while kill_when is not None and proc.poll() is None:
            if kill_when():
                os.killpg(proc.pid, signal.SIGKILL)  # the predict process, not only the wrapper
                killed = True
                break
            time.sleep(0.5)
        code = proc.wait()
    seconds = time.perf_counter() - started
    text = log.read_text()
    if not killed and code != 0:
        raise SystemExit(f"predict failed ({cmd}):\n{text[-2000:]}")
    peak = re.search(r"peak_rss_kb=(\d+)", text)
    said = re.search(r"\(([\d.]+) MP/s\)", text)  # its own timing, without start-up
    return {"seconds": seconds, "peak_rss_gb": int(peak.group(1)) / 1024 ** 2 if peak else None,
            "log": text,
            "killed": killed, "mp_per_s": float(said.group(1)) if said else None}


def _labels(out: Path):
    """The (lazy, for OME-Zarr) label image of a one-image predict output."""
    import zarr

    from cellsynth.io.images import read_labels

    (path,) = sorted((out / "labels").iterdir())
    return zarr.open_group(str(path), mode="r")["0"] if path.name.endswith(".zarr") \
        else read_labels(path)


def _same(a, b, band: int = 1024) -> bool:
    """Equal label images, compared in bands (a section's labels are not loaded whole)."""
    if tuple(a.shape) != tuple(b.shape):
        return False
    return all(np.array_equal(np.asarray(a[y:y + band]), np.asarray(b[y:y + band]))
               for y in range(0, int(a.shape[0]), band))


def _cells(labels, band: int = 1024) -> int:
    return max(int(np.asarray(labels[y:y + band]).max())
               for y in range(0, int(labels.shape[0]), band))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000, help="section side in pixels")
    parser.add_argument("--pixel-size", type=float, default=0.125,
                        help="the section's um/px (the detector works at the simulation's "
                        "0.5 um/px: 0.125 means every model pixel covers 4 x 4 section pixels)")
    parser.add_argument("--detector", type=Path, help="a `cellsynth train` run (default: a "
                        "tiny one trained here)")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-predict-wsi"))
    parser.add_argument("--threads", type=int, help="CELLSYNTH_THREADS for the predictions")
    args = parser.parse_args()
    from cellsynth.simulate import preset

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    detector = args.detector or _tiny_detector(work)
    sim_px = preset("fluo").pixel_size_um
    zoom = sim_px / args.pixel_size
    tiff, zarr_path = work / f"section{args.size}.ome.tif", work / f"section{args.size}.zarr"
    if not tiff.is_file() or not zarr_path.is_dir():
        t0 = time.perf_counter()
        low = _mosaic(int(np.ceil(args.size / zoom)) + 2)
        write_section(low, zoom, args.size, work / "tmp.ome.tif", work / "tmp.zarr",
                      args.pixel_size)
        os.replace(work / "tmp.ome.tif", tiff)
        os.replace(work / "tmp.zarr", zarr_path)
        print(f"wrote the {args.size}^2 section ({tiff.stat().st_size / 1e6:.0f} MB TIFF) in "
              f"{time.perf_counter() - t0:.0f} s")
    print(f"machine: {cpu_summary()}; section {args.size}^2 px at {args.pixel_size} um/px, "
          f"detector at {sim_px} um/px ({zoom:g}x coarser)")
    for old in [*work.glob("out-*"), *work.glob(".out-*")]:
        shutil.rmtree(old) if old.is_dir() else old.unlink()

    # 2. a crop: in memory vs the whole-section path, same pixels
    import tifffile

    from cellsynth.segment.tiles import open_large_image

    crop = np.asarray(open_large_image(tiff)[:2048, :2048])
    for name in ("crop-flat", "crop-tiled"):
        (work / name).mkdir(exist_ok=True)
    tifffile.imwrite(work / "crop-flat" / "crop.tif", crop)
    with tifffile.TiffWriter(work / "crop-tiled" / "crop.tif") as tif:
        tif.write(crop, tile=(256, 256), compression="zlib", subifds=1)
        tif.write(crop[::2, ::2], tile=(256, 256), compression="zlib", subfiletype=1)
    flat = _predict(detector, work / "crop-flat", work / "out-crop-flat", args.pixel_size,
                    labels_as="tiff", threads=args.threads)
    tiled = _predict(detector, work / "crop-tiled", work / "out-crop-tiled", args.pixel_size,
                     threads=args.threads)
    same_crop = _same(_labels(work / "out-crop-flat"), _labels(work / "out-crop-tiled"))
    crop_cells = _cells(_labels(work / "out-crop-flat"))
    print(f"2048^2 crop: in memory {flat['mp_per_s']:.2f} MP/s, peak RSS "
          f"{flat['peak_rss_gb']:.2f} GB; whole-section path {tiled['mp_per_s']:.2f} MP/s, "
          f"peak RSS {tiled['peak_rss_gb']:.2f} GB; {crop_cells} cells; identical labels: "
          f"{same_crop}")

    # 1. the whole section from the pyramidal TIFF
    full = _predict(detector, tiff, work / "out-tiff", args.pixel_size, threads=args.threads)
    n_cells = _cells(_labels(work / "out-tiff"))
    print(f"section from TIFF: {full['seconds']:.0f} s with start-up, {full['mp_per_s']:.2f} "
          f"MP/s (section pixels), peak RSS {full['peak_rss_gb']:.2f} GB, {n_cells} cells")

    # 3. the OME-Zarr, killed half way, then resumed
    cache = work / ".out-zarr.proposals"

    def half_done() -> bool:
        return len(list(cache.glob("*/row*.npz"))) >= rows_total // 2

    from cellsynth.segment.predict import DEFAULT_TILE
    from cellsynth.segment.tiles import tile_origins

    model_side = int(round(args.size * args.pixel_size / sim_px))
    rows_total = len(tile_origins(model_side, DEFAULT_TILE, 96))  # the tiny model's crop < it
    first = _predict(detector, zarr_path, work / "out-zarr", args.pixel_size,
                     kill_when=half_done, threads=args.threads)
    rows_kept = len(list(cache.glob("*/row*.npz")))
    second = _predict(detector, zarr_path, work / "out-zarr", args.pixel_size,
                      threads=args.threads)
    said = re.search(r"continuing a prediction that was stopped \((\d+) rows", second["log"])
    same_resumed = _same(_labels(work / "out-zarr"), _labels(work / "out-tiff"))
    print(f"OME-Zarr: killed after {first['seconds']:.0f} s with {rows_kept}/{rows_total} rows "
          f"of tiles done; the rerun said {said.group(0) if said else 'nothing'!r}, took "
          f"{second['seconds']:.0f} s ({second['seconds'] / full['seconds']:.2f} of a whole "
          f"run), peak RSS {second['peak_rss_gb']:.2f} GB; labels equal to the TIFF run: "
          f"{same_resumed}")
    ratio = tiled["mp_per_s"] / flat["mp_per_s"]
    print(f"ratio: on the same 2048^2 crop the whole-section path runs at {ratio:.2f}x the "
          f"in-memory path's MP/s (the section's own rate is lower where tiles overlap more)")
    result = {
        "machine": cpu_summary(), "size": args.size, "pixel_size_um": args.pixel_size,
        "detector_pixel_size_um": sim_px, "threads": args.threads,
        "section_seconds": full["seconds"], "section_mp_per_s": full["mp_per_s"],
        "section_peak_rss_gb": full["peak_rss_gb"], "section_cells": n_cells,
        "crop_identical": same_crop, "crop_cells": crop_cells,
        "crop_in_memory_mp_per_s": flat["mp_per_s"], "crop_in_memory_peak_rss_gb":
        flat["peak_rss_gb"], "crop_section_path_mp_per_s": tiled["mp_per_s"],
        "kill_after_s": first["seconds"], "rows_total": rows_total, "rows_kept": rows_kept,
        "resume_said": said.group(0) if said else None, "resume_seconds": second["seconds"],
        "resume_peak_rss_gb": second["peak_rss_gb"], "resumed_identical": same_resumed,
        "ratio_section_vs_in_memory": ratio}
    (work / "results.json").write_text(json.dumps(result, indent=1) + "\n")
    ok = same_crop and same_resumed and said and full["peak_rss_gb"] < 3
    print("OK" if ok else "FAILED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
