"""Pixel sizes: read them from image files, and bring images to a model's resolution and back.

A model works at one pixel size (the simulation's); an image taken at another is resampled to
it before prediction and the cells are drawn back at the image's own resolution. The pixel
size comes from an explicit option, a dataset's meta.json, or the file: OME-TIFF
(``PhysicalSizeX``), ImageJ TIFF (``XResolution`` with unit micron) or OME-Zarr (the
``scale`` of the level's coordinate transformation) or TIFF resolution tags in pixels per
centimetre (what cellsynth writes) or inch, the latter only at a microscope's sizes (<= 10 um
per pixel: a screenshot's meaningless 72 dpi is 353 um). cellsynth works on square pixels; a
file whose pixels are not is read at its x size, with a warning.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.io.images import TIFF_SUFFIXES

__all__ = ["RELATIVE_TOLERANCE", "pixel_scale", "read_pixel_size", "Rescaled", "rescale_image",
           "rescale_labels"]

RELATIVE_TOLERANCE = 1e-3  # pixel sizes this close are the same: no resampling

_UM_PER_UNIT = {"um": 1.0, "µm": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
                "micrometre": 1.0, "nm": 1e-3, "nanometer": 1e-3, "mm": 1e3,
                "millimeter": 1e3, "\\u00b5m": 1.0}


MAX_SCALE = 32.0  # resampling beyond this either way is a unit typed wrong (nm, mm for um)


def pixel_scale(source_um: float | None, target_um: float | None) -> float:
    """Factor that brings pixels of ``source_um`` to ``target_um`` (> 1: upsample); 1.0 if
    either is unknown or they agree within :data:`RELATIVE_TOLERANCE`. Raises
    :class:`ConfigError` beyond :data:`MAX_SCALE` either way (a pixel size of 250, nm typed
    for um, made one 512² image 304,704 tiles; 1e300 overflowed)."""
    if not source_um or not target_um:
        return 1.0
    factor = source_um / target_um
    if not (1.0 / MAX_SCALE <= factor <= MAX_SCALE):
        from cellsynth.errors import ConfigError

        raise ConfigError(f"pixel size {source_um:g} um against {target_um:g} um/px: a "
                          f"{factor:.3g}x resampling (at most {MAX_SCALE:g}x either way; "
                          f"a size in nm or mm where um was meant?)")
    return 1.0 if abs(factor - 1.0) <= RELATIVE_TOLERANCE else factor


def _tiff_pixel_size(path: Path, level: int = 0) -> float | None:
    """Of level 0 (OME, Aperio SVS ``MPP``, resolution tags, ImageJ), times how much smaller
    ``level`` is than level 0 (SVS pyramids shrink by 4 per level, others mostly by 2)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        size = _tiff_level0_pixel_size(tif)
        if size is None or not level:
            return size
        levels = tif.series[0].levels
        if level >= len(levels):
            return None
        axis = tif.series[0].axes.upper().index("X")
        return size * levels[0].shape[axis] / levels[level].shape[axis]


def _square(path: str, x: float, y: float | None) -> float:
    """``x``, saying once where a file states another size along y: cellsynth works on
    square pixels, so cells would be measured and resampled stretched."""
    if y is not None and y > 0 and abs(y / x - 1.0) > 0.01:
        import warnings

        warnings.warn(f"{path}: pixels are {x:g} x {y:g} um (not square); taken as {x:g} um "
                      f"along both axes, so cells look {y / x:.2g}x as tall as they are: "
                      f"resample the image to square pixels first", stacklevel=2)
    return x


def _ome_size(metadata: str, axis: str) -> float | None:
    match = re.search("PhysicalSize" + axis + r'="([0-9.eE+-]+)"', metadata)
    unit = re.search("PhysicalSize" + axis + r'Unit="([^"]+)"', metadata)
    if not match:
        return None
    scale = _UM_PER_UNIT.get(unit.group(1).lower() if unit else "µm")
    return float(match.group(1)) * scale if scale else None


# TIFF resolution units: 2 inch, 3 centimetre; an inch-based size counts only where it is a
# microscope's (a screenshot's 72 or 300 dpi is 353 or 85 um per pixel)
_UM_PER_RESOLUTION_UNIT = {2: 25400.0, 3: 1e4}
_MAX_INCH_PIXEL_UM = 10.0


def _resolution_size(page: Any, unit: int, name: str) -> float | None:
    tag = page.tags.get(name)
    if tag is None:
        return None
    numerator, denominator = tag.value
    if numerator <= 0:
        return None
    size = _UM_PER_RESOLUTION_UNIT[unit] * denominator / numerator
    return None if unit == 2 and size > _MAX_INCH_PIXEL_UM else size


def _tiff_level0_pixel_size(tif: Any) -> float | None:
    where = str(tif.filehandle.path)
    if tif.ome_metadata:
        x = _ome_size(tif.ome_metadata, "X")
        if x is not None:
            return _square(where, x, _ome_size(tif.ome_metadata, "Y"))
        if re.search(r'PhysicalSizeX="', tif.ome_metadata):
            return None  # (a unit it does not know)
    page = tif.pages[0]
    if tif.is_svs:  # Aperio: "...|MPP = 0.2520|..." in the description
        match = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", page.description or "")
        if match and float(match.group(1)) > 0:
            return float(match.group(1))
    unit = page.tags.get("ResolutionUnit")
    unit = int(unit.value) if unit is not None else None
    if unit in _UM_PER_RESOLUTION_UNIT:  # pixels per cm or inch
        x = _resolution_size(page, unit, "XResolution")
        if x is not None:
            return _square(where, x, _resolution_size(page, unit, "YResolution"))
    if tif.imagej_metadata:
        unit = str(tif.imagej_metadata.get("unit", "")).lower()
        tag = tif.pages[0].tags.get("XResolution")
        if unit in _UM_PER_UNIT and tag is not None:
            numerator, denominator = tag.value
            if numerator > 0:
                return denominator / numerator * _UM_PER_UNIT[unit]
    return None


def _zarr_pixel_size(path: Path, level: int) -> float | None:
    import zarr

    node = zarr.open(str(path), mode="r")
    if hasattr(node, "shape"):
        return None
    from cellsynth.io.ome_zarr import ngff_group

    multiscales = ngff_group(node)[1].get("multiscales")
    if not multiscales:
        return None
    axes = multiscales[0].get("axes") or []
    names = [(a["name"] if isinstance(a, dict) else a).lower() for a in axes]
    datasets = multiscales[0]["datasets"]
    dataset = datasets[min(level, len(datasets) - 1)]
    for transform in dataset.get("coordinateTransformations", []):
        if transform.get("type") == "scale" and "x" in names:
            i = names.index("x")
            unit = axes[i].get("unit", "micrometer") if isinstance(axes[i], dict) else "µm"
            scale = _UM_PER_UNIT.get(str(unit).lower())
            if not scale:
                return None
            y = (float(transform["scale"][names.index("y")]) * scale if "y" in names
                 else None)  # (in the same unit: OME-Zarr's axes share one)
            return _square(str(path), float(transform["scale"][i]) * scale, y)
    return None


def read_pixel_size(path: str | os.PathLike, *, level: int = 0) -> float | None:
    """The pixel size (µm) a TIFF or OME-Zarr image states about itself, else None."""
    path = Path(path)
    try:
        if path.is_dir():
            return _zarr_pixel_size(path, level)
        if path.suffix.lower() in TIFF_SUFFIXES:
            return _tiff_pixel_size(path, level)
    except Exception:  # unreadable metadata is no pixel size; reading the pixels will say more
        return None
    return None


class Rescaled:
    """An (H, W[, C]) array (numpy or lazy) seen at ``factor`` times its resolution.

    Slicing a window reads only the source window it covers (plus a margin), smooths it when
    downsampling (Gaussian, sigma = (1/factor - 1) / 2, as skimage's anti-aliasing) and samples
    it bilinearly at the pixel centres: output pixel ``i`` samples source ``(i + 0.5) / factor
    - 0.5``. So tiles of a rescaled section line up exactly.
    """

    def __init__(self, image: Any, factor: float):
        if not factor > 0:
            raise ValueError(f"factor must be > 0, got {factor}")
        self.image, self.factor = image, factor
        h, w = int(image.shape[0]), int(image.shape[1])
        self.source_shape = (h, w)
        size = (max(1, round(h * factor)), max(1, round(w * factor)))
        self.shape = size + tuple(int(n) for n in image.shape[2:])
        self.dtype = np.dtype(np.float32)
        self.sigma = max(0.0, (1.0 / factor - 1.0) / 2.0)

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        from scipy import ndimage as ndi

        ys, xs = key[0].indices(self.shape[0]), key[1].indices(self.shape[1])
        coords = []
        bounds = []
        for (start, stop, _), length in zip((ys, xs), self.source_shape):
            centres = (np.arange(start, stop) + 0.5) / self.factor - 0.5
            margin = int(math.ceil(3 * self.sigma)) + 2
            lo = max(0, int(math.floor(centres.min())) - margin) if len(centres) else 0
            hi = min(length, int(math.ceil(centres.max())) + margin + 1) if len(centres) else 0
            coords.append(centres - lo)
            bounds.append(slice(lo, hi))
        window = np.asarray(self.image[bounds[0], bounds[1]], np.float32)
        channels = window.shape[2:] if window.ndim == 3 else ()
        if self.sigma > 0:
            window = ndi.gaussian_filter(window, [self.sigma, self.sigma, 0][:window.ndim],
                                         mode="nearest")
        grid = np.meshgrid(coords[0], coords[1], indexing="ij")
        if not channels:
            return ndi.map_coordinates(window, grid, order=1, mode="nearest")
        return np.stack([ndi.map_coordinates(window[..., c], grid, order=1, mode="nearest")
                         for c in range(channels[0])], axis=-1)


def rescale_image(image: np.ndarray, factor: float) -> np.ndarray:
    """An in-memory (H, W[, C]) image at ``factor`` times its resolution: bilinear, smoothed
    first when downsampling; values keep their range, float32 out. ``factor`` 1.0: as is."""
    if factor == 1.0:
        return image
    from skimage.transform import rescale

    return rescale(image, factor, order=1, anti_aliasing=factor < 1,
                   channel_axis=-1 if image.ndim == 3 else None,
                   preserve_range=True).astype(np.float32)


def rescale_labels(labels: np.ndarray, factor: float,
                   shape: tuple[int, int] | None = None) -> np.ndarray:
    """Labels at ``factor`` times their resolution (nearest neighbour: ids stay ids), or
    resized to ``shape`` exactly (back to an original image's pixels)."""
    if factor == 1.0 and shape is None:
        return labels
    from skimage.transform import rescale, resize

    if shape is not None:
        return resize(labels, shape, order=0, anti_aliasing=False,
                      preserve_range=True).astype(labels.dtype)
    return rescale(labels, factor, order=0, anti_aliasing=False,
                   preserve_range=True).astype(labels.dtype)
