"""Intensity normalisation by image content (percentiles), not by the dtype's range.

Scientific cameras write 8-, 10-, 12- or 14-bit data into uint16 files; dividing by 65535
turned such an image nearly black and a detector found 0 cells on it. As in StarDist and
Cellpose, an image is mapped so that its ``low``-th percentile becomes 0 and its ``high``-th
becomes 1 (clipped). The range comes from the *whole* image (a regular subsample of at most
``MAX_SAMPLES`` pixels for large or lazy ones), never from a tile, so tiles of a section keep
one brightness. One range covers all channels by default, keeping the hue of a stain
(``per_channel`` stretches each channel alone). Every image that enters a model, real or
simulated, goes through :func:`normalize` with the settings the model records.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["Normalization", "DEFAULT", "DTYPE_SCALING", "MAX_SAMPLES", "intensity_range",
           "apply_range", "normalize"]

MAX_SAMPLES = 1 << 20      # pixels read to estimate the percentiles of a large image
# Sparse bright objects: where the 99.99th percentile lies this many ranges above the top of
# the range, the range is the background's alone (a little tissue on dark glass: nuclei 0.1 %
# of a fluorescence section put the 99.8th percentile on the camera noise, 12-15 of 0-180,
# which was stretched over [0, 1] and every tile called blank). A Gaussian's 99.99th
# percentile lies 0.15 ranges above its 1-99.8 range, hot pixels are fewer than 0.01 %.
# Only where the range is no wider than the camera noise makes it (_NOISE_RANGES noise sigmas
# from neighbouring pixels; Gaussian noise alone spans 5.2): an image whose body has cells of
# its own keeps its range, and a saturated speck of dust clips as before.
_SPARSE_TAIL = 99.99
_SPARSE = 3.0
_NOISE_RANGES = 10.0
_NOISE_ROWS = 16
# blocks added on a section's overview where its grid of blocks saw a range of noise alone
_TISSUE_BLOCKS = 16
# A lazy (chunked) image is sampled in 8 x 8 evenly spread blocks of 128 x 128 px. A piece of
# tissue lying between them is not seen (32 x 32 blocks of 32 px, as many pixels, took 10x
# the time on a 16384^2 zlib-tiled section and still missed a 320 px piece): where the grid
# saw noise alone, _TISSUE_BLOCKS more are read where the pyramid's overview level shows
# something (_tissue_corners)
_LAZY_BLOCKS = 8
_LAZY_BLOCK = 128


@dataclass(frozen=True)
class Normalization:
    """How intensities become float32 in [0, 1]: part of every model's recorded settings."""

    method: Literal["percentile", "dtype"] = "percentile"  # dtype: the range of uint8/uint16
    low: float = 1.0          # percentile mapped to 0
    high: float = 99.8        # percentile mapped to 1
    per_channel: bool = False  # one range per channel instead of one for all channels

    def __post_init__(self) -> None:
        if not 0.0 <= self.low < self.high <= 100.0:
            raise ValueError(f"normalization: 0 <= low < high <= 100 required, got low "
                             f"{self.low}, high {self.high}")


DEFAULT = Normalization()

# What models trained before content normalisation used; checkpoints without a recorded
# normalisation are applied with it, as they were trained.
DTYPE_SCALING = Normalization(method="dtype")


def _dtype_range(dtype: np.dtype) -> float:
    if dtype.kind == "b" or np.issubdtype(dtype, np.complexfloating):
        raise ValueError(f"unsupported image dtype {dtype} (expected integer or float)")
    if np.issubdtype(dtype, np.integer):
        return float(np.iinfo(dtype).max)
    return 1.0


def _sample(image: Any) -> np.ndarray:
    """At most ~MAX_SAMPLES pixels of an (H, W[, C]) array, spread over the whole image."""
    h, w = int(image.shape[0]), int(image.shape[1])
    if isinstance(image, np.ndarray):
        stride = max(1, math.ceil(math.sqrt(h * w / MAX_SAMPLES)))
        return image[::stride, ::stride]
    if h * w <= MAX_SAMPLES:
        return np.asarray(image[:, :])
    # lazy (zarr, tifffile): a strided read would decode every chunk; read a grid of blocks
    b = _LAZY_BLOCK
    ys = np.linspace(0, max(h - b, 0), _LAZY_BLOCKS).astype(int)
    xs = np.linspace(0, max(w - b, 0), _LAZY_BLOCKS).astype(int)
    return _blocks(image, [(y, x) for y in ys for x in xs])


def _blocks(image: Any, corners: list[tuple[int, int]]) -> np.ndarray:
    """The ``_LAZY_BLOCK``-px blocks of a lazy image at ``corners``, as one (N, 1[, C])
    sample of pixels, block after block, row after row (see :func:`_block_noise`)."""
    b = _LAZY_BLOCK
    blocks = [np.asarray(image[y:y + b, x:x + b]) for y, x in corners]
    return np.concatenate([blk.reshape(-1, *blk.shape[2:]) for blk in blocks])[:, None]


def _block_noise(sample: np.ndarray, row: int) -> np.ndarray:
    """The camera noise (sigma, per channel) of a lazy image's block sample (:func:`_blocks`:
    rows of ``row`` neighbouring pixels): the MAD of horizontally neighbouring
    pixels' differences / sqrt 2, as :func:`_noise_sigma` measures it, from pixels read
    already."""
    return _mad_sigma(np.diff(sample.reshape(-1, row, sample.shape[-1]), axis=1))


def _tissue_corners(image: Any) -> list[tuple[int, int]]:
    """Corners of ``_TISSUE_BLOCKS`` blocks of a whole section on its most distinct pixels
    (farthest from the median) on the pyramid's overview level, one per cell of a 16 x 16
    grid of it at most: where a little tissue lies between the sampled grid of blocks. []
    where ``image`` has no overview (not a pyramid level opened by open_large_image)."""
    from scipy.ndimage import uniform_filter

    from cellsynth.io.sections import overview_of

    found = overview_of(image)
    if found is None:
        return []
    overview, factor = found
    small = np.asarray(overview[:, :], np.float64)
    if small.ndim == 3:
        small = small.mean(axis=2)
    small = np.nan_to_num(small, nan=float(np.nanmedian(small)))
    distinct = uniform_filter(np.abs(small - np.median(small)), 3, mode="nearest")
    sh, sw = distinct.shape
    cells = []
    for gy in range(16):
        for gx in range(16):
            cell = distinct[gy * sh // 16:(gy + 1) * sh // 16, gx * sw // 16:(gx + 1) * sw // 16]
            if cell.size:
                y, x = np.unravel_index(int(np.argmax(cell)), cell.shape)
                cells.append((float(cell[y, x]), gy * sh // 16 + y, gx * sw // 16 + x))
    cells.sort(reverse=True)
    h, w, b = int(image.shape[0]), int(image.shape[1]), _LAZY_BLOCK
    return [(int(min(max((y + 0.5) * factor - b / 2, 0), max(h - b, 0))),
             int(min(max((x + 0.5) * factor - b / 2, 0), max(w - b, 0))))
            for _, y, x in cells[:_TISSUE_BLOCKS]]


def intensity_range(image: Any, norm: Normalization = DEFAULT, *,
                    where: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) intensities of an image, each of shape (C,) (C = 1 for a 2-D image).

    ``image`` : (H, W) or (H, W, C) numpy array or lazy array (zarr, tifffile).
    ``where`` names the image in the one-line warning about a (nearly) constant image.
    """
    dtype = np.dtype(image.dtype)
    scale = _dtype_range(dtype)
    channels = int(image.shape[2]) if len(image.shape) == 3 else 1
    if norm.method == "dtype":
        return np.zeros(channels, np.float64), np.full(channels, scale)
    read = np.asarray(_sample(image), np.float64).reshape(-1, channels)
    axis = 0 if norm.per_channel else None
    sample = _finite(read, channels)
    lo, hi = np.percentile(sample, [norm.low, norm.high], axis=axis)
    row = min(int(image.shape[1]), _LAZY_BLOCK)  # (a block's rows: neighbouring pixels)
    if (not isinstance(image, np.ndarray) and read.shape[0] % row == 0
            and int(image.shape[0]) * int(image.shape[1]) > MAX_SAMPLES
            and np.any(hi - lo <= _NOISE_RANGES * _block_noise(read, row).max() + 1e-12)):
        # a section's grid of blocks that saw glass alone (a range of camera noise): add
        # blocks where its overview shows something, a little tissue between them (found
        # nothing, 0 cells, where a crop of the tissue found all; audit 7)
        corners = _tissue_corners(image)
        if corners:
            extra = np.asarray(_blocks(image, corners), np.float64).reshape(-1, channels)
            sample = _finite(np.concatenate([read, extra]), channels)
            lo, hi = np.percentile(sample, [norm.low, norm.high], axis=axis)
    lo = np.broadcast_to(lo, channels).astype(np.float64)
    hi = np.broadcast_to(hi, channels).astype(np.float64)
    flat = hi - lo <= 1e-6 * np.maximum(np.abs(hi), 1e-3)
    lo, hi = _beyond_sparse_background(image, sample, norm, lo, hi, flat, where)
    if flat.any():  # nearly constant between the percentiles: fall back to min/max
        mins = sample.min(axis=axis) if norm.per_channel else np.full(channels, sample.min())
        maxs = sample.max(axis=axis) if norm.per_channel else np.full(channels, sample.max())
        lo, hi = np.where(flat, mins, lo), np.where(flat, maxs, hi)
        constant = hi - lo <= 1e-6 * np.maximum(np.abs(hi), 1e-3)
        if constant.any():
            warnings.warn(f"{where or 'image'}: image is constant ({float(lo[0]):g}); "
                          "it is used as all zeros", stacklevel=2)
            hi = np.where(constant, lo + 1.0, hi)
        else:
            warnings.warn(f"{where or 'image'}: image is nearly constant (its {norm.low:g}-"
                          f"{norm.high:g} percentiles are equal); scaled by its min-max "
                          f"{float(lo.min()):g}-{float(hi.max()):g} instead", stacklevel=2)
    return lo, hi


def _finite(sample: np.ndarray, channels: int) -> np.ndarray:
    """The sample without NaN pixels (a section's padding, refused where it is read)."""
    finite = np.isfinite(sample).all(axis=1)
    return sample[finite] if finite.any() else np.zeros((1, channels))


def _noise_sigma(image: Any) -> np.ndarray:
    """The camera noise (sigma, per channel) from the differences of horizontally
    neighbouring pixels along ``_NOISE_ROWS`` evenly spread rows (at most 4096 px of each):
    the MAD of the differences, / sqrt 2."""
    h, w = int(image.shape[0]), int(image.shape[1])
    rows = np.unique(np.linspace(0, h - 1, min(_NOISE_ROWS, h)).astype(int))
    # (rows as 1-px slices: a lazy reader of channels-first files takes slices only)
    strip = np.stack([np.asarray(image[y:y + 1, :min(w, 4096)], np.float64)
                      .reshape(min(w, 4096), -1) for y in rows])
    return _mad_sigma(np.diff(strip, axis=1))


def _mad_sigma(diff: np.ndarray) -> np.ndarray:
    """Gaussian noise sigma, per channel (last axis), from differences of neighbouring
    pixels: their MAD (the finite ones) / sqrt 2; 0 where there are none."""
    diff = diff.reshape(-1, diff.shape[-1])
    diff = diff[np.isfinite(diff).all(axis=1)]
    if len(diff) == 0:
        return np.zeros(diff.shape[-1])
    return 1.4826 * np.median(np.abs(diff - np.median(diff, axis=0)), axis=0) / math.sqrt(2)


def _beyond_sparse_background(image: Any, sample: np.ndarray, norm: Normalization,
                              lo: np.ndarray, hi: np.ndarray, flat: np.ndarray,
                              where: str | None) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)``, or where the range is the camera noise's alone and a few objects lie far
    beyond it (see ``_SPARSE``), the range carried out to them: bright ones (fluorescence on
    dark glass) end it at the ``high`` percentile of the pixels above ``hi``, dark ones
    (brightfield: stained cells on bright glass) start it at the ``low`` percentile of those
    below ``lo``, as a crop of the tissue alone would give. Channels ``flat`` between the
    percentiles are left to the min/max fallback. Each side said in one warning."""
    bottom, top = lo.copy(), hi.copy()
    if sample.size == 0:
        return bottom, top
    columns = range(sample.shape[1]) if norm.per_channel else [None]
    noise = None
    for c in columns:
        values = sample[:, c] if c is not None else sample
        k = c if c is not None else 0
        if flat[k]:
            continue
        # how far the few brightest / darkest pixels lie beyond the range (-inf: not asked)
        above = (float(np.percentile(values, _SPARSE_TAIL)) - hi[k]
                 if norm.high < _SPARSE_TAIL else -np.inf)
        below = (lo[k] - float(np.percentile(values, 100.0 - _SPARSE_TAIL))
                 if norm.low > 100.0 - _SPARSE_TAIL else -np.inf)
        far = _SPARSE * (hi[k] - lo[k])
        if above <= far and below <= far:
            continue
        if noise is None:  # (read only where a tail says so: rows of a section)
            noise = _noise_sigma(image)
        sigma = float(noise[c] if c is not None and c < len(noise) else noise.max())
        if hi[k] - lo[k] > _NOISE_RANGES * sigma:
            continue
        at = slice(None) if c is None else c
        if above > far:
            top[at] = float(np.percentile(values[values > hi[k]], norm.high))
        if below > far:
            bottom[at] = float(np.percentile(values[values < lo[k]], norm.low))
    for moved, side in ((top != hi, "bright"), (bottom != lo, "dark")):
        key = _sparse_key(where) + ("" if side == "bright" else "\0dark")
        if not moved.any() or key in _SAID_SPARSE:
            continue
        # once per folder: a training set of sparse images said it for each (12 times in
        # the demo; then 10, its loaders' b_images[18] and unnamed images said each)
        _SAID_SPARSE.add(key)
        if side == "bright":
            share = float(np.mean(sample > hi.min())) * 100
            warnings.warn(f"{where or 'image'}: few bright pixels ({share:.2g} % above the "
                          f"background's {float(hi.max()):g}; a little tissue on dark glass?): "
                          f"the intensity range ends at their {norm.high:g}th percentile, "
                          f"{float(top.max()):g}, not at the image's (said once per folder)",
                          stacklevel=3)
        else:
            share = float(np.mean(sample < lo.max())) * 100
            warnings.warn(f"{where or 'image'}: few dark pixels ({share:.2g} % below the "
                          f"background's {float(lo.min()):g}; a little tissue on bright "
                          f"glass?): the intensity range starts at their {norm.low:g}th "
                          f"percentile, {float(bottom.min()):g}, not at the image's (said once "
                          f"per folder)", stacklevel=3)
    return bottom, top


_SAID_SPARSE: set[str] = set()  # folders whose sparse images were said


def _sparse_key(where: str | None) -> str:
    """What a sparse-tissue warning is said once for: the folder of a file, the set of an
    item ``name[i]``, and once for all images without a name ("")."""
    if not where:
        return ""
    name = re.sub(r"\[\d+\]$", "", where)
    return os.path.dirname(name) or name


def apply_range(image: np.ndarray, low: np.ndarray, high: np.ndarray, *,
                clip: bool = True) -> np.ndarray:
    """(H, W[, C]) -> float32: ``(image - low) / (high - low)``, clipped to [0, 1] unless
    ``clip`` is False (then an exactly affine map, as metrics of image statistics need)."""
    array = np.asarray(image, np.float32)
    lo, hi = np.asarray(low, np.float32), np.asarray(high, np.float32)
    if array.ndim == 2:
        lo, hi = lo[0], hi[0]
    out = (array - lo) / (hi - lo)
    return np.clip(out, 0.0, 1.0, out=out) if clip else out


def normalize(image: Any, norm: Normalization = DEFAULT, *, where: str | None = None,
              clip: bool = True) -> np.ndarray:
    """An image of any dtype (uint8/16/32, int, float of any range) as float32 in [0, 1].

    Shape is kept: (H, W) or (H, W, C). See :class:`Normalization` and :func:`apply_range`.
    """
    low, high = intensity_range(image, norm, where=where)
    return apply_range(np.asarray(image), low, high, clip=clip)
