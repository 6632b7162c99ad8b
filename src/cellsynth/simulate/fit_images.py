"""What the simulator fit (:mod:`cellsynth.simulate.fit`) measures of the real images: up
to ``_MAX_REAL`` images spread over a folder, a whole section as a few windows of its tissue
(opened lazily, never decoded whole), each checked (size, channels, the stain the preset
draws) and the pixel size resolved. Only images are read, never labels.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.errors import ConfigError, DatasetError
from cellsynth.io.datasets import is_one_image
from cellsynth.simulate.estimate import _as_float, full_scale
from cellsynth.simulate.presets import SimulationConfig

__all__ = ["MIN_SIDE_PX", "MIN_CELL_PX", "median_diameter_um", "measured_shapes"]

MIN_SIDE_PX = 64     # smaller images hold too few cells and too little background to measure
MIN_CELL_PX = 4.0    # cells narrower than this (in pixels) cannot be told from grain
_MAX_REAL = 64       # real images measured (evenly spread over the folder)
_MAX_GUESS = 8       # of them, the stain check's votes (pipeline.stain.stain_mismatch)
_WINDOW_ABOVE = 2048 * 2048  # larger images (whole sections) are measured by windows ...
_WINDOW = 1024       # ... of this side ...
_WINDOWS = 4         # ... at most this many per image, where they show tissue


@dataclass(frozen=True)
class _Real:
    images: list[np.ndarray]   # (H, W) or (H, W, 3) float32 in [0, 1]
    names: list[str]
    pixel_size_um: float
    where: str                 # the folder, for messages
    raw: list[np.ndarray]      # the same images as read (their own dtype and range)
    # what each was read from: the image itself, or the whole section it is a window of
    sources: list[Any] = field(default_factory=list)
    # whether the images (or their folder) state their pixel size, rather than given/assumed
    stated: bool = False


def median_diameter_um(config: SimulationConfig) -> float:
    """Median equivalent diameter (um) of the labelled cells, mixing types by density."""
    cells = [c for c in config.cells if c.labeled and c.density > 0] or \
        [c for c in config.cells if c.labeled]
    grid = np.linspace(min(c.diameter_um[0] for c in cells),
                       max(c.diameter_um[1] for c in cells) + 1e-9, 4001)
    cdf = sum(max(c.density, 1e-9) * np.clip((grid - c.diameter_um[0])
                                             / max(c.diameter_um[1] - c.diameter_um[0], 1e-9),
                                             0, 1) for c in cells)
    return float(grid[np.searchsorted(cdf, cdf[-1] / 2)])


def _windows(image: Any, name: str, n: int, seed: int
             ) -> list[tuple[str, np.ndarray, np.ndarray, Any]]:
    """(name, pixels as read, float pixels in [0, 1], what they were read from) of an image,
    or of up to ``n`` windows of tissue of it (:func:`cellsynth.io.sections.tissue_windows`)
    if it is larger than ``_WINDOW_ABOVE`` pixels: a whole section is measured by a few
    windows, not decoded."""
    h, w = int(image.shape[0]), int(image.shape[1])
    if h * w <= _WINDOW_ABOVE:
        raw = np.asarray(image[0:h, 0:w]) if not isinstance(image, np.ndarray) else image
        return [(name, raw, _as_float(raw, where=name), raw)]
    from cellsynth.io.normalize import apply_range, intensity_range
    from cellsynth.io.sections import stage_channels, tissue_windows

    windows = [(y, x, stage_channels(raw))  # (an RGBA section's alpha is dropped on opening)
               for y, x, raw in tissue_windows(image, _WINDOW, n, seed=seed)]
    # all windows on one scale, the section's: integers by the bit depth their values need,
    # as a small image is read (a uint16 section stretched by its percentiles fitted other
    # stains and noise than the same pixels as uint8), anything else by the section's range
    full = (full_scale(max(int(raw.max()) for _, _, raw in windows)) if windows and
            np.issubdtype(np.dtype(image.dtype), np.unsignedinteger) else None)
    low, high = (None, None) if full else intensity_range(image, where=name)
    found = []
    for y, x, raw in windows:
        pixels = (raw.astype(np.float64) / full).astype(np.float32) if full else \
            apply_range(raw, low[:3], high[:3])
        found.append((f"{name}[{y}:{y + raw.shape[0]}, {x}:{x + raw.shape[1]}]", raw,
                      pixels, image))
    return found


def _spread(n: int) -> np.ndarray:
    """Indices of the images of a folder of ``n`` that are measured (evenly spread)."""
    return np.unique(np.linspace(0, n - 1, min(n, _MAX_REAL)).astype(int))


def _windows_per_image(n: int) -> int:
    """Windows measured of each whole section when ``n`` images are measured."""
    return int(np.clip(_MAX_REAL // max(n, 1), 1, _WINDOWS))


def measured_shapes(shapes: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """(H, W) of what the fit measures of a folder whose images have ``shapes`` (in the
    folder's order): up to ``_MAX_REAL`` images spread over it, a whole section (over
    ``_WINDOW_ABOVE`` pixels) as ``_WINDOWS`` windows at most (windows are cut only where
    they show tissue, so it may be fewer)."""
    keep = _spread(len(shapes))
    per_image = _windows_per_image(len(keep))
    found: list[tuple[int, int]] = []
    for i in keep:
        h, w = shapes[i]
        found += [(h, w)] if h * w <= _WINDOW_ABOVE else \
            [(min(h, _WINDOW), min(w, _WINDOW))] * per_image
    return found


def _stated_pixel_size(path: Path) -> float | None:
    """One image's pixel size: what the file states, else the meta.json of the dataset it
    is in (``DATA/images/x`` or ``DATA/x``)."""
    from cellsynth.io.datasets import meta_pixel_size
    from cellsynth.io.resample import read_pixel_size

    return read_pixel_size(path) or meta_pixel_size(path)


def _load(images: str | os.PathLike | Sequence[np.ndarray], base: SimulationConfig,
          pixel_size_um: float | None, channel: int | None = None) -> _Real:
    """Read (only) the images, check their sizes and channels, resolve the pixel size.

    Images over ``_WINDOW_ABOVE`` pixels (whole sections: opened lazily, read window by
    window) are measured by up to ``_WINDOWS`` windows of tissue each, at most ``_MAX_REAL``
    images or windows in all. ``channel``: only that channel of multi-channel images (else
    channel 0 of those that are neither gray nor RGB, with a warning)."""
    meta_px = None
    if isinstance(images, (str, os.PathLike)) and is_one_image(Path(images)):
        from cellsynth.io.sections import open_image

        opened = [(str(images), open_image(images, channel=channel))]
        meta_px, where = _stated_pixel_size(Path(images)), str(images)
    elif isinstance(images, (str, os.PathLike)):
        from cellsynth.io.datasets import load_dataset
        from cellsynth.io.sections import open_image

        dataset = load_dataset(images)  # lists the folder; no label file is opened
        samples = list(dataset)
        opened = [(str(samples[i].image_path),
                   open_image(samples[i].image_path, channel=channel))
                  for i in _spread(len(samples))]
        meta_px, where = dataset.pixel_size_um, str(images)
    else:
        opened = [(f"images[{i}]", np.asarray(a)) for i, a in enumerate(images)]
        if channel is not None:
            from cellsynth.io.images import select_channel

            opened = [(name, select_channel(a, channel, where=name)) for name, a in opened]
        where = "images"
        if not opened:
            raise DatasetError("images: no images given")
    per_image = _windows_per_image(len(opened))
    parts = [part for i, (name, image) in enumerate(opened)
             for part in _windows(image, name, per_image, seed=i)]
    for name, raw, _, _ in parts:
        if min(raw.shape[:2]) < MIN_SIDE_PX:
            raise DatasetError(f"{name}: image is {raw.shape[0]}x{raw.shape[1]} px, too "
                               f"small to estimate cells from (need >= {MIN_SIDE_PX} px a side)")
        if base.channels == 3 and raw.ndim != 3:
            raise DatasetError(f"{name}: a gray image, but preset {base.preset!r} "
                               f"({base.color}) needs RGB images")
    kinds: dict[int, str] = {}  # channels -> the first image with so many
    for name, raw, _, _ in parts:
        kinds.setdefault(raw.shape[2] if raw.ndim == 3 else 1, name.split("[")[0])
    if len(kinds) > 1:  # (the estimator stacked them: a traceback, "inhomogeneous shape")
        said = ", ".join(f"{file} has {n} channel{'s' if n > 1 else ''}"
                         for n, file in sorted(kinds.items()))
        raise DatasetError(f"{where}: images of different kinds ({said}); fit on images of "
                           f"one kind, converting or leaving out the others")
    from cellsynth.pipeline.stain import stain_mismatch

    wrong = stain_mismatch(base.color, [p[1] for p in parts][:_MAX_GUESS],
                           name=f"preset {base.preset!r}",
                           names=[p[0] for p in parts][:_MAX_GUESS])
    if wrong:  # (said before the minutes of fitting, not after: the fit runs anyway)
        import warnings

        warnings.warn(f"{where}: {wrong}", stacklevel=2)
    px = float(pixel_size_um or meta_px or base.pixel_size_um)
    if not (0 < px < float("inf")):
        raise ConfigError(f"{where}: pixel size must be a number > 0, got {px}")
    from cellsynth.io.resample import pixel_scale

    pixel_scale(base.pixel_size_um, px)  # (beyond 32x the preset's: a unit typed wrong)
    diameter = median_diameter_um(base)
    if diameter / px < MIN_CELL_PX:
        raise ConfigError(f"{where}: at {px:g} um/px the cells of preset {base.preset!r} "
                          f"(median diameter {diameter:.3g} um) are {diameter / px:.1f} px "
                          f"across; need >= {MIN_CELL_PX:g} px (check --pixel-size/meta.json)")
    return _Real([p[2] for p in parts], [p[0] for p in parts], px, where,
                 [p[1] for p in parts], [p[3] for p in parts], stated=meta_px is not None)
