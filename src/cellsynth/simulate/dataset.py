"""Simulated datasets: the in-memory iterator and the parallel writer (Dask processes).

Image ``i`` of a run is drawn from the ``i``-th child of ``SeedSequence(seed)``, so a dataset
is byte-identical whatever the number of workers.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth import __version__
from cellsynth.config import from_dict, to_dict
from cellsynth.errors import ConfigError, DatasetError
from cellsynth.hardware import available_memory as _available_bytes
from cellsynth.hardware import die_with_parent
from cellsynth.io.datasets import write_dataset_meta
from cellsynth.io.files import staged_output_dir
from cellsynth.io.images import read_image, read_labels, write_image, write_labels
from cellsynth.simulate.presets import SimulationConfig
from cellsynth.simulate.scene import CLASSES, render_scene
from cellsynth.viz import contour_overlay, image_grid

__all__ = ["image_seeds", "simulate_config", "write_simulation", "add_class_maps"]

IMAGE_SUFFIX = ".png"
LABEL_SUFFIX = ".tif"
CLASS_DIR = "classes"  # what was drawn at each pixel (scene.CLASSES), beside images/ and labels/
CLASS_SUFFIX = ".png"
_PREVIEW_IMAGES = 16


def _shape(size: int | tuple[int, int]) -> tuple[int, int]:
    shape = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(shape) != 2 or min(shape) < 16:
        raise ConfigError(f"size must be at least 16 pixels per side, got {size}")
    return int(shape[0]), int(shape[1])


def image_seeds(seed: int, n: int) -> list[np.random.SeedSequence]:
    """Independent per-image seeds spawned from the run seed (image i -> child i)."""
    if n < 1:
        raise ConfigError(f"n must be >= 1, got {n}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    return np.random.SeedSequence(seed).spawn(n)


def simulate_config(config: SimulationConfig, n: int, size: int | tuple[int, int], seed: int
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``n`` (image, labels) pairs; see :func:`cellsynth.simulate.simulate`."""
    shape = _shape(size)
    for child in image_seeds(seed, n):
        yield render_scene(config, shape, np.random.default_rng(child))


def _write_chunk(config: SimulationConfig, shape: tuple[int, int], seeds: list, start: int,
                 width: int, root: str, parent: int | None = None) -> list[int]:
    """Render and write images ``start .. start+len(seeds)-1``; return their instance counts.

    In a worker, ``parent`` is the main process: the worker stops when that one is killed.
    """
    counts = []
    for offset, child in enumerate(seeds):
        if parent is not None:
            die_with_parent(parent)
        name = f"{start + offset:0{width}d}"
        image, labels, classes = render_scene(config, shape, np.random.default_rng(child),
                                              classes=True)
        write_image(Path(root, "images", name + IMAGE_SUFFIX), image)
        write_labels(Path(root, "labels", name + LABEL_SUFFIX), labels)
        write_image(Path(root, CLASS_DIR, name + CLASS_SUFFIX), classes)
        counts.append(int(labels.max()))
    return counts


def _run_parallel(tasks: list[tuple], workers: int, progress: Any) -> list[list[int]]:
    import dask
    from dask.callbacks import Callback

    class _Progress(Callback):
        def _posttask(self, key, result, dsk, state, worker_id):  # noqa: D401
            if isinstance(result, list):
                progress.update(len(result))

    delayed = [dask.delayed(_write_chunk, pure=True)(*task) for task in tasks]
    # Forked workers inherit the imports (spawn costs ~1.5 s per worker and fails when the
    # main module is stdin or a notebook); the simulator itself starts no threads.
    context = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with dask.config.set({"multiprocessing.context": context}), _Progress():
        return list(dask.compute(*delayed, scheduler="processes", num_workers=workers))


def _preview(root: Path, n: int, width: int) -> None:
    tiles = []
    for k in range(min(n, _PREVIEW_IMAGES)):
        name = f"{k:0{width}d}"
        tiles.append(contour_overlay(read_image(root / "images" / (name + IMAGE_SUFFIX)),
                                     read_labels(root / "labels" / (name + LABEL_SUFFIX))))
    write_image(root / "preview.png", image_grid(tiles, columns=4))


# Peak memory of drawing one image, per pixel (tracemalloc, 512² and 1024²: fluo 51-55,
# merker 66, nissl 96-98, he 101-102 bytes), with a margin.
_BYTES_PER_PIXEL = 120


def _check_memory(shape: tuple[int, int], workers: int) -> None:
    """Refuse up front an image size that cannot fit in memory (instead of a MemoryError or
    the OOM killer minutes later)."""
    need = shape[0] * shape[1] * _BYTES_PER_PIXEL * workers
    available = _available_bytes()
    if available is not None and need > 0.9 * available:
        raise ConfigError(
            f"a {shape[0]}x{shape[1]} image needs about {need / 2**30:.1f} GiB to draw "
            f"({workers} worker(s)), but {available / 2**30:.1f} GiB are available; use a "
            f"smaller --size (whole sections are predicted tile by tile, so training images "
            f"of 256-2048 px suffice) or fewer --workers")


def write_simulation(config: SimulationConfig, *, n: int, size: int | tuple[int, int],
                     seed: int, out: str | os.PathLike, workers: int = 1, force: bool = False,
                     progress: bool = True) -> dict[str, Any]:
    """Write a simulated dataset folder (images/, labels/, classes/, meta.json, preview.png).

    The folder is built beside ``out`` and moved into place when complete; an existing
    non-empty ``out`` is only replaced with ``force``. Returns a summary dict.
    """
    from tqdm.auto import tqdm

    shape = _shape(size)
    seeds = image_seeds(seed, n)
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    _check_memory(shape, min(workers, n))
    width = max(4, len(str(n - 1)))
    started = time.perf_counter()
    with staged_output_dir(out, force=force) as root:
        (root / "images").mkdir()
        (root / "labels").mkdir()
        (root / CLASS_DIR).mkdir()
        bar = tqdm(total=n, desc=f"simulate {config.preset}", unit="img", disable=not progress)
        with bar:
            if workers == 1:
                counts = []
                for i, child in enumerate(seeds):
                    counts += _write_chunk(config, shape, [child], i, width, str(root))
                    bar.update(1)
            else:
                chunk = max(1, min(64, math.ceil(n / (workers * 8))))
                tasks = [(config, shape, seeds[i:i + chunk], i, width, str(root), os.getpid())
                         for i in range(0, n, chunk)]
                counts = [c for part in _run_parallel(tasks, workers, bar) for c in part]
        elapsed = time.perf_counter() - started
        meta = {
            "cellsynth_version": __version__,
            "stage": "simulate",
            "preset": config.preset,
            "n": n,
            "size": list(shape),
            "seed": seed,
            "pixel_size_um": config.pixel_size_um,
            "color": config.color,
            "channels": config.channels,
            "n_instances": int(sum(counts)),
            "classes": {str(k): v for k, v in CLASSES.items()},
            "config": to_dict(config),
        }
        zoom = config.variation.zoom
        if zoom != (1.0, 1.0):  # pixel_size_um is then only the nominal (zoom 1) value
            meta["pixel_size_um_range"] = [config.pixel_size_um / zoom[1],
                                           config.pixel_size_um / zoom[0]]
        write_dataset_meta(root, meta)
        _preview(root, n, width)
    return {"n_images": n, "n_instances": int(sum(counts)),
            "images_per_s": n / max(elapsed, 1e-9), "seconds": elapsed}


def add_class_maps(root: str | os.PathLike) -> bool:
    """Give a simulation written before class maps existed its ``classes/`` folder.

    Every image is drawn again from ``meta.json`` (preset config, seed, n, size); drawing is
    deterministic, and each redrawn image must equal the stored one byte for byte, else
    :class:`DatasetError` (the simulator changed since). Returns False if the folder already
    had class maps. The folder appears whole or not at all.
    """
    import shutil

    from cellsynth.io.datasets import load_dataset
    from cellsynth.pipeline import layout

    root = Path(root)
    target = root / CLASS_DIR
    if target.is_dir():
        return False
    meta = load_dataset(root).meta
    try:
        config = from_dict(SimulationConfig, meta["config"], where=f"{root / layout.META}")
        n, seed, shape = int(meta["n"]), int(meta["seed"]), tuple(meta["size"])
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"{root / layout.META}: cannot redraw the simulation for its class "
                           f"maps (no {err})") from err
    width = max(4, len(str(n - 1)))
    staging = root / f".{CLASS_DIR}.{os.getpid()}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        for i, child in enumerate(image_seeds(seed, n)):
            name = f"{i:0{width}d}"
            image, _, classes = render_scene(config, _shape(shape), np.random.default_rng(child),
                                             classes=True)
            stored = root / "images" / (name + IMAGE_SUFFIX)
            if not np.array_equal(read_image(stored), image):
                raise DatasetError(f"{stored}: drawing it again from meta.json gives another "
                                   f"image (a different simulator version); simulate again")
            write_image(staging / (name + CLASS_SUFFIX), classes)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return True
