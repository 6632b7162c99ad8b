"""The estimator that fit-simulator runs on real and on simulated images alike.

Cells are found by a multi-scale Laplacian of Gaussian on the stain channel and split or
merged by a watershed (their diameters in um and their number per area, their elongation and
orientation); the stain of cells and background, camera noise and sharpness are measured
too. :mod:`cellsynth.simulate.fit` matches these statistics between real images and
candidate simulations, so the estimator's biases cancel. Only images are read, never labels.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.fft
from scipy import ndimage as ndi
from skimage.draw import disk
from skimage.filters import threshold_otsu
from skimage.segmentation import find_boundaries, watershed

from cellsynth.simulate.optics import stain_vectors, to_intensity

__all__ = ["measure_counter_vector", "measure_image"]  # (fit.py also uses private helpers)

_SCALE_STEP = 1.15   # ratio of neighbouring LoG scales (sizes are interpolated between them)
_DISK_PEAK = 2 / math.e  # scale-normalised LoG response of a unit-contrast disk, best scale
_PRESMOOTH = 0.5     # Gaussian pre-smoothing, in units of the smallest radius searched
_INSIDE = 1.0        # a blob's centre closer than this x the larger radius: the same cell
_CONTAINS = 0.5      # a larger blob replaces the ones inside it if it is this strong
_THRESHOLD = 0.25    # a cell must reach this fraction of its image's cell-background contrast
_NO_DIP = 0.85       # neighbours merge unless the stain between them dips below this
_MIN_LEVEL = 0.02    # background texture is relative to the stain level, at least this
_HALO_RING = (1.0, 3.0)  # um outside a cell region: where its glow is measured
_CUT = 0.3           # a cell region: stain above background + this x (cell - background)
_REACH = 3.0         # a cell region reaches at most this many radii from its centre
_ORIENTED = 1.2      # cells at least this elongated (axis ratio) say which way they point
_MIN_ORIENTED = 5    # an image needs this many of them for its orientation coherence
_STAINED = 0.15      # a pixel absorbs at least this in every channel: stained (Macenko's beta)
_STAIN_SAMPLE = 20000  # pixels per image that stain vectors are measured from
_EXTREME = 0.1       # percentile of angle taken as a pure stain (Macenko's alpha; 1 biased
                     # eosin towards hematoxylin more: red 0.10 vs 0.09 at 0.1, 0.07 drawn)
_MIN_STAINED = 2000  # fewer stained pixels in all: the default stain vectors stay
_MIN_NOISE = 1e-4     # a noise level below this (0.03 grey levels of 8 bits) counts as this
_P10_P90 = 2.563     # the 10th-90th percentile range of a normal distribution, in stds
_LAPLACE = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], np.float32)  # Immerkaer (1996)


_BIT_DEPTHS = (8, 10, 12, 14, 16, 32)  # what cameras and their files hold


def full_scale(top: int) -> int | None:
    """The largest value of the fewest bits (of 8, 10, 12, 14, 16, 32 ...: ``_BIT_DEPTHS``)
    that hold ``top``, what an integer image is divided by; None beyond them."""
    bits = next((b for b in _BIT_DEPTHS if top < 1 << b), None)
    return None if bits is None else (1 << bits) - 1


def _as_float(image: np.ndarray, where: str = "image") -> np.ndarray:
    """Intensities in [0, 1] as the camera measured them: an integer image divided by the
    range of the fewest bits that hold its values (8-bit content in a uint16 file is read
    as the uint8 file is: it was stretched by percentiles, so the fitted stains and noise
    differed 1.5-2x between the two copies of one image), a float one in [0, 1] as it is,
    anything else stretched by percentiles (:func:`cellsynth.io.normalize.normalize`; its
    warnings name ``where``, the file)."""
    if np.issubdtype(image.dtype, np.integer) and image.size and image.min() >= 0:
        full = full_scale(int(image.max()))
        if full is not None:
            return (image.astype(np.float64) / full).astype(np.float32)
    if np.issubdtype(image.dtype, np.floating) and image.min() >= 0 and image.max() <= 1:
        return image.astype(np.float32)
    from cellsynth.io.normalize import normalize

    return normalize(image, where=where)


def _optical_density(image: np.ndarray, color: str) -> np.ndarray:
    """-log(intensity / the colour model's white), intensities in [0, 1] (clipped at 1/512)."""
    zero = np.zeros((1, 1), np.float32)
    white = to_intensity(zero, zero, color)[0, 0]
    return -np.log(np.clip(image, 1 / 512, None) / white)


def _stain_maps(image: np.ndarray, color: str, vectors: tuple | None = None
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """The main stain (cells bright) and the counterstain, in the simulator's own units:
    emission for fluorescence, optical density unmixed (Ruifrok-Johnston colour
    deconvolution) with ``vectors`` (main, counter; None each: the simulator's defaults,
    :func:`cellsynth.simulate.optics.stain_vectors`) for brightfield."""
    if color == "fluo" or (color == "gray" and image.ndim == 3):
        image = image if image.ndim == 2 else image.mean(axis=2)
        if color == "fluo":
            return image, None
    od = _optical_density(image, color)
    if color == "gray":
        return od, None
    h, e = stain_vectors(color, *(vectors or (None, None)))
    if color == "violet":
        return od @ (h / (h @ h)), None
    amounts = od @ np.linalg.inv(np.stack([h, e, np.cross(h, e)])).astype(np.float32)
    return amounts[..., 0], amounts[..., 1]


def measure_counter_vector(images: list[np.ndarray], color: str, *, seed: int = 0
                           ) -> tuple[float, float, float] | None:
    """The eosin vector of H&E images (Macenko et al., ISBI 2009): the optical densities of
    stained pixels (above ``_STAINED`` in every channel) are projected on the plane of their
    two main directions; the directions at the ``_EXTREME`` and 100 - ``_EXTREME`` percentile
    of angle are the two stains, and the one absorbing less red relative to green is eosin.
    Scaled to absorb 1 in green, as the simulator's vectors are, so stain amounts keep their
    meaning.

    Only eosin is taken: the hematoxylin extreme is biased towards eosin by the eosin under
    every nucleus (on images simulated with known vectors: red 0.74 measured vs 0.93 drawn,
    eosin 0.09 vs 0.07), and the hematoxylin of real H&E sets lies near the simulator's
    (tcga_lgg train: red 0.82-1.1 as the percentile goes 2 -> 0.1, vs 0.93), while their
    eosin does not (tcga_lgg, gbm40, monuseg: red 0.19-0.34, blue 0.32-0.64 vs 0.07, 0.11:
    mauve, not pink).

    None where the colour model has no counterstain or the images hold too few stained
    pixels (< ``_MIN_STAINED``) or no second stain that absorbs green; the default stays."""
    if color != "he":
        return None
    rng = np.random.default_rng(seed)
    ods = []
    for image in images:
        pixels = image.reshape(-1, image.shape[-1])[:, :3]
        if len(pixels) > _STAIN_SAMPLE:
            pixels = pixels[rng.choice(len(pixels), _STAIN_SAMPLE, replace=False)]
        od = _optical_density(pixels, color)
        ods.append(od[(od > _STAINED).all(axis=1)])
    od = np.concatenate(ods).astype(np.float64)
    if len(od) < _MIN_STAINED:
        return None
    _, vectors = np.linalg.eigh(np.cov(od.T))
    plane = vectors[:, [2, 1]] * np.where(vectors[0, [2, 1]] < 0, -1.0, 1.0)
    angles = np.arctan2(*(od @ plane).T[::-1])
    ends = [plane @ [math.cos(a), math.sin(a)]
            for a in np.percentile(angles, [_EXTREME, 100 - _EXTREME])]
    eosin = min(ends, key=lambda v: v[0] / max(v[1], 1e-9))
    if eosin[1] <= 0.1 * np.abs(eosin).max():
        return None  # no stain that absorbs green: not H&E as the simulator draws it
    return tuple(float(f"{v:.3g}") for v in np.clip(eosin / eosin[1], 0, None))


def _freq2(shape: tuple[int, int]) -> np.ndarray:
    fy = np.fft.fftfreq(shape[0]).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(shape[1]).astype(np.float32)[None, :]
    return fy * fy + fx * fx


def _find_cells(stain: np.ndarray, radii: np.ndarray, threshold: float) -> np.ndarray:
    """Bright blobs: maxima over space and scale of the scale-normalised LoG
    ``-s^2 Lap(G_s * stain)``, ``s = radius / sqrt(2)`` (the best scale of a disk), on a
    stain map smoothed a little (granules, nucleoli). Returns (n, 3) rows (y, x, radius_px).

    Of two blobs where one's centre lies inside the other, the larger is kept if it responds
    at least ``_CONTAINS`` as strongly (a cell, not its nucleus), else the smaller ones
    (cells, not a clump).
    """
    h, w = stain.shape
    sigmas = radii / math.sqrt(2)
    pad = int(min(3 * sigmas[-1], h - 1, w - 1))
    shape = (scipy.fft.next_fast_len(h + 2 * pad, real=True),
             scipy.fft.next_fast_len(w + 2 * pad, real=True))
    padded = np.pad(stain - stain.mean(), ((pad, shape[0] - h - pad), (pad, shape[1] - w - pad)),
                    mode="reflect").astype(np.float32)
    spectrum = scipy.fft.rfft2(padded)
    f2 = _freq2(shape)

    def response(k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The LoG response at scale k and its 3 x 3 maximum."""
        if k >= len(sigmas):
            return None
        t = np.float32(2 * math.pi**2 * sigmas[k] ** 2)  # Gaussian exp(-t f^2); -s^2 Lap: 2tf^2
        r = scipy.fft.irfft2(spectrum * (2 * t * f2 * np.exp(-t * f2)),
                             s=shape)[pad:pad + h, pad:pad + w]
        return r, ndi.maximum_filter(r, 3)

    rows = []
    below, here, above = None, response(0), response(1)
    for k in range(len(sigmas)):
        peak = (here[0] >= here[1]) & (here[0] > threshold)
        for other in (below, above):
            if other is not None:
                peak &= here[0] >= other[1]
        ys, xs = np.nonzero(peak)
        c = here[0][ys, xs]
        if below is not None and above is not None:  # parabola in log(scale) steps
            b, a = below[0][ys, xs], above[0][ys, xs]
            curve = b - 2 * c + a
            shift = np.clip(0.5 * (b - a) / np.where(curve < 0, curve, -np.inf), -0.5, 0.5)
        else:
            shift = np.zeros_like(c)
        rows.append(np.stack([ys, xs, radii[k] * _SCALE_STEP ** shift, c], axis=1))
        below, here, above = here, above, response(k + 2)
    found = np.concatenate(rows)
    keep: list[int] = []
    for i in np.argsort(-found[:, 3], kind="stable"):  # strongest first
        y, x, r, strength = found[i]
        if keep:
            kept = found[keep]
            clash = np.hypot(kept[:, 0] - y, kept[:, 1] - x) < _INSIDE * np.maximum(kept[:, 2], r)
            if clash.any():
                if r > kept[clash, 2].max() and strength >= _CONTAINS * kept[clash, 3].max():
                    keep = [j for j, c in zip(keep, clash) if not c]  # the cell, not its parts
                else:
                    continue
        keep.append(int(i))
    return found[keep, :3]


def _residuals(image: np.ndarray) -> list[np.ndarray]:
    """|second-difference residual| of each channel (the mask's norm is 6), borders cut."""
    channels = image[..., None] if image.ndim == 2 else image
    return [np.abs(ndi.convolve(channels[..., c], _LAPLACE)[1:-1, 1:-1])
            for c in range(channels.shape[2])]


def _noise(image: np.ndarray, residuals: list[np.ndarray] | None = None) -> float:
    """Camera-noise std: robust (MAD) size of a second-difference residual, per channel
    (``residuals``: :func:`_residuals` of ``image``, if already computed)."""
    residuals = _residuals(image) if residuals is None else residuals
    return float(np.mean([np.median(r) / 0.6745 / 6.0 for r in residuals]))


def _noise_level(image: np.ndarray, residuals: list[np.ndarray] | None = None) -> float:
    """A camera-noise level that moves continuously on 8-bit images: the mean of the
    smallest 3/4 of the second-difference residuals (:func:`_noise`'s median sits on a few
    grey levels there; this one tells two quiet images apart). Relative use only: the
    spread of noise between images."""
    residuals = _residuals(image) if residuals is None else residuals
    levels = []
    for r in residuals:
        r = r.ravel()
        levels.append(np.partition(r, (3 * r.size) // 4)[:(3 * r.size) // 4].mean() / 6.0)
    return float(np.mean(levels))


def _cell_regions(smooth: np.ndarray, cells: np.ndarray, background: float,
                  cut: float) -> np.ndarray:
    """Each found cell's region: a watershed of the smoothed stain from the cell centres,
    within the pixels above ``cut`` and at most ``_REACH`` radii from the centre; touching cells
    stay apart where the stain dips between them, neighbours without such a dip (two maxima of
    one elongated or textured cell) are merged. (H, W) int32, ids 1..n."""
    markers = np.zeros(smooth.shape, np.int32)
    ys, xs = cells[:, 0].astype(int), cells[:, 1].astype(int)
    markers[ys, xs] = np.arange(1, len(cells) + 1)
    regions = watershed(-smooth, markers, mask=smooth > cut)
    yy, xx = np.nonzero(regions)
    owner = regions[yy, xx] - 1
    far = np.hypot(yy - ys[owner], xx - xs[owner]) > _REACH * cells[owner, 2]
    regions[yy[far], xx[far]] = 0
    n = len(cells)
    pairs = []
    for a, b, va, vb in ((regions[:, :-1], regions[:, 1:], smooth[:, :-1], smooth[:, 1:]),
                         (regions[:-1], regions[1:], smooth[:-1], smooth[1:])):
        touch = (a != b) & (a > 0) & (b > 0)
        pairs.append(np.stack([np.minimum(a[touch], b[touch]), np.maximum(a[touch], b[touch]),
                               np.minimum(va[touch], vb[touch])], axis=1))
    pairs = np.concatenate(pairs)
    if len(pairs) == 0:
        return regions
    key = pairs[:, 0].astype(np.int64) * (n + 1) + pairs[:, 1].astype(np.int64)
    order = np.argsort(key, kind="stable")
    key, pairs = key[order], pairs[order]
    first = np.r_[0, np.flatnonzero(np.diff(key)) + 1]
    saddle = np.maximum.reduceat(pairs[:, 2], first)  # the highest pass between two regions
    a, b = pairs[first, 0].astype(int), pairs[first, 1].astype(int)
    peak = np.r_[0.0, ndi.maximum(smooth, regions, np.arange(1, n + 1))]
    flat = saddle - background >= _NO_DIP * (np.minimum(peak[a], peak[b]) - background)
    root = np.arange(n + 1)
    for i, j in zip(a[flat], b[flat]):  # union-find
        while root[i] != i:
            i = root[i]
        while root[j] != j:
            j = root[j]
        root[max(i, j)] = min(i, j)
    for i in range(n + 1):
        root[i] = root[root[i]]
    return root[regions]


def _shapes(regions: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Axis ratio (>= 1) and long-axis angle (radians, x right, y down) of regions 1..n, from
    their second moments (an ellipse of the same moments; 1 and 0 for empty regions)."""
    yy, xx = np.indices(regions.shape, dtype=np.float64)
    ids = regions.ravel()

    def total(w: np.ndarray | None) -> np.ndarray:
        return np.bincount(ids, weights=None if w is None else w.ravel(), minlength=n + 1)[1:]

    area = np.maximum(total(None), 1)
    my, mx = total(yy) / area, total(xx) / area
    syy = total(yy * yy) / area - my**2
    sxx = total(xx * xx) / area - mx**2
    sxy = total(yy * xx) / area - my * mx
    half = np.hypot((sxx - syy) / 2, sxy)
    mean = (sxx + syy) / 2 + 1 / 12  # + the variance of a pixel: a 1-pixel cell is round
    ratio = np.sqrt((mean + half) / np.maximum(mean - half, 1e-9))
    return ratio, 0.5 * np.arctan2(2 * sxy, sxx - syy)


def _region_excess(excess: np.ndarray, regions: np.ndarray, n: int) -> np.ndarray:
    """The mean of ``excess`` (stain above the background) in each of the ``n`` regions
    (NaN for empty ones): what :func:`_domes` and :func:`_halos` divide by."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.bincount(regions.ravel(), weights=excess.ravel(), minlength=n + 1)
                / np.bincount(regions.ravel(), minlength=n + 1))[1:]


def _domes(excess: np.ndarray, regions: np.ndarray, n: int, whole: np.ndarray) -> np.ndarray:
    """How much brighter (more stained) each region is in its middle than on average: the
    mean ``excess`` (stain above the background) of its inner half (distance to its rim over
    half its largest) over that of the whole region (``whole``, :func:`_region_excess`); 1
    for an evenly filled cell, more for a dome (NaN for empty regions). Touching regions are
    measured apart."""
    inside = (regions > 0) & ~find_boundaries(regions, mode="inner")
    depth = ndi.distance_transform_edt(inside)
    ids = np.arange(1, n + 1)
    deepest = np.r_[0.0, ndi.maximum(depth, regions, ids)]
    inner = (depth > 0.5 * deepest[regions]) & (regions > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        middle = (np.bincount(regions[inner], weights=excess[inner], minlength=n + 1)
                  / np.bincount(regions[inner], minlength=n + 1))[1:]
        return np.where(whole > 0, middle / whole, np.nan)


def _halos(excess: np.ndarray, regions: np.ndarray, n: int, whole: np.ndarray,
           px: float) -> np.ndarray:
    """How much each region glows past its outline: the mean ``excess`` (stain above the
    background) of the pixels :data:`_HALO_RING` um outside it (those nearer to it than to
    any other region) over that of the region (``whole``; NaN where a region has no such
    pixels or no stain). A Gaussian PSF's glow ends within ~2 sigma; a widefield
    microscope's out-of-focus haze reaches further."""
    distance, (iy, ix) = ndi.distance_transform_edt(regions == 0, return_indices=True)
    near, far = _HALO_RING[0] / px, _HALO_RING[1] / px
    ring = (distance >= near) & (distance <= far)
    owner = regions[iy[ring], ix[ring]]
    with np.errstate(invalid="ignore", divide="ignore"):
        outside = (np.bincount(owner, weights=excess[ring], minlength=n + 1)
                   / np.bincount(owner, minlength=n + 1))[1:]
        return np.where(whole > 0, outside / whole, np.nan)


def measure_image(image: np.ndarray, color: str, px: float, radii: np.ndarray,
             labels: np.ndarray | None = None, vectors: tuple | None = None) -> dict[str, Any]:
    """The estimator's statistics of one image (float in [0, 1]): what fit-simulator
    compares and `run --estimate` times; ``labels`` only for simulated images;
    ``vectors``: the stain vectors to unmix with (see :func:`_stain_maps`)."""
    stain, counter = _stain_maps(image, color, vectors)
    residuals = _residuals(image)  # camera noise, two ways
    h, w = stain.shape
    smooth = ndi.gaussian_filter(stain, _PRESMOOTH * radii[0])
    fg = smooth > threshold_otsu(smooth)
    contrast = (np.median(stain[fg]) - np.median(stain[~fg]) if fg.any() and (~fg).any()
                else float(np.percentile(stain, 99) - np.median(stain)))
    cells = _find_cells(smooth, radii, _THRESHOLD * _DISK_PEAK * max(contrast, 1e-4))
    near = np.zeros((h, w), bool)
    for y, x, radius in cells:
        near[disk((y, x), 1.5 * radius, shape=(h, w))] = True
    background = ~near if (~near).sum() > 0.02 * h * w else stain <= np.percentile(stain, 10)
    background_stain = float(np.median(stain[background]))
    centre = smooth[cells[:, 0].astype(int), cells[:, 1].astype(int)]
    cell_stain = float(np.median(centre)) if len(cells) else background_stain
    cut = background_stain + _CUT * (cell_stain - background_stain)
    regions = _cell_regions(smooth, cells, background_stain, cut)
    areas = np.bincount(regions.ravel(), minlength=len(cells) + 1)[1:]
    sums = np.bincount(regions.ravel(), weights=stain.ravel(), minlength=len(cells) + 1)[1:]
    found = areas >= math.pi * (radii[0] / 2) ** 2  # a cell fills at least a quarter-disk
    ratios, angles = _shapes(regions, len(cells))
    ratios, angles = ratios[found], angles[found]
    excess = stain - background_stain
    whole = _region_excess(excess, regions, len(cells))
    domes = _domes(excess, regions, len(cells), whole)[found]
    halos = _halos(excess, regions, len(cells), whole, px)[found]
    oriented = ratios >= _ORIENTED
    areas, levels = areas[found], sums[found] / np.maximum(areas[found], 1)
    rgb = image[..., None] if image.ndim == 2 else image
    inside = regions > 0
    logs = np.log(np.clip(levels, 1e-3, None))
    q75, q25 = np.percentile(logs, [75, 25]) if len(logs) else (0.0, 0.0)
    g1, g2, g4 = (ndi.gaussian_filter(stain, s) for s in (1.0, 2.0, 4.0))
    fine, medium = g1 - g2, g2 - g4  # detail bands: 1-2 px and 2-4 px
    stats = {
        "n_cells": int(found.sum()), "area_um2": h * w * px * px,
        "coverage": float(areas.sum()) / (h * w),
        "diameters_um": 2 * np.sqrt(areas / math.pi) * px,
        "levels": levels, "cell_spread": float(q75 - q25) / 1.349,
        "axis_ratios": ratios, "domes": domes[np.isfinite(domes)],
        "halos": halos[np.isfinite(halos)],
        # how much the elongated cells point one way: |mean of exp(2i angle)|, 0 = any way
        "coherence": (float(np.abs(np.mean(np.exp(2j * angles[oriented]))))
                      if oriented.sum() >= _MIN_ORIENTED else float("nan")),
        "background_stain": background_stain,
        "counterstain": float(np.median(counter[background])) if counter is not None else 0.0,
        "noise": _noise(image, residuals), "noise_level": _noise_level(image, residuals),
        "sharpness": float(np.std(fine) / max(np.std(medium), 1e-9)),
        # the background's own texture, away from the cells: how fine (the same band ratio)
        # and how strong (its variation below 4 px, relative to its level)
        "background_sharpness": float(np.std(fine[background])
                                      / max(np.std(medium[background]), 1e-9)),
        "background_texture": float(np.std((stain - g4)[background])
                                    / max(background_stain, _MIN_LEVEL)),
        "cell_rgb": (np.median(rgb[inside], axis=0) * 255 if inside.any()
                     else np.full(rgb.shape[2], np.nan)),
        "background_rgb": np.median(rgb[background], axis=0) * 255,
    }
    if labels is not None:
        label_areas = np.bincount(labels.ravel().astype(np.int64))[1:]
        stats["label_areas_um2"] = label_areas[label_areas > 0] * px * px
    return stats


def _pool(per_image: list[dict[str, Any]]) -> dict[str, Any]:
    """Pooled statistics: over all cells found (sizes, stain), all area (density), and the
    median image (background, noise, sharpness, within-image stain spread)."""
    def median_of(key: str) -> float:
        return float(np.median([s[key] for s in per_image]))

    diameters = np.concatenate([s["diameters_um"] for s in per_image])
    levels = np.concatenate([s["levels"] for s in per_image])
    ratios = np.concatenate([s["axis_ratios"] for s in per_image])
    domes = np.concatenate([s["domes"] for s in per_image])
    halos = np.concatenate([s["halos"] for s in per_image])
    coherence = [s["coherence"] for s in per_image if np.isfinite(s["coherence"])]
    area = sum(s["area_um2"] for s in per_image)
    logs = np.sort(np.log(diameters))[int(0.1 * diameters.size):int(np.ceil(0.9 * diameters.size))]
    def spread_of(key: str) -> float:
        """Between images: the log std, from the 10th-90th percentile range (robust to a
        few images whose noise is below one grey level)."""
        logs = np.log([max(s[key], _MIN_NOISE) for s in per_image])
        return float(np.subtract(*np.percentile(logs, [90, 10])) / _P10_P90)

    pooled = {
        # matched: the geometric mean of the middle 80 % (the median of a mixture of small
        # and large cells jumps between the two); the median is only reported
        "diameter_um": float(np.exp(logs.mean())) if logs.size else float("nan"),
        "median_diameter_um": float(np.median(diameters)) if diameters.size else float("nan"),
        "density": 1e4 * diameters.size / area,  # cells per 100 x 100 um^2
        "coverage": sum(s["coverage"] * s["area_um2"] for s in per_image) / area,
        "cell_stain": float(np.median(levels)) if levels.size else float("nan"),
        # shape: median axis ratio - 1 of all cells found; orientation coherence of the
        # median image (each image has its own pia direction)
        "elongation": float(np.median(ratios)) - 1 if ratios.size else float("nan"),
        "coherence": float(np.median(coherence)) if coherence else float("nan"),
        # the median cell's stain in its middle over its mean (1: evenly filled)
        "dome": float(np.median(domes)) if domes.size else float("nan"),
        # the median cell's glow just outside its outline over its mean stain
        "halo": float(np.median(halos)) if halos.size else float("nan"),
        **{k: median_of(k) for k in ("cell_spread", "background_stain", "counterstain",
                                     "noise", "sharpness", "background_sharpness",
                                     "background_texture")},
        # how much the camera noise and the sharpness differ between images
        "noise_spread": spread_of("noise_level"), "sharpness_spread": spread_of("sharpness"),
        "cell_rgb": np.median([s["cell_rgb"] for s in per_image if s["n_cells"]]
                              or [per_image[0]["cell_rgb"]], axis=0),
        "background_rgb": np.median([s["background_rgb"] for s in per_image], axis=0),
        "n_cells": int(diameters.size), "n_images": len(per_image),
    }
    if "label_areas_um2" in per_image[0]:
        areas = np.concatenate([s["label_areas_um2"] for s in per_image])
        pooled["label_median_area_um2"] = float(np.median(areas)) if areas.size else 0.0
        pooled["label_per_mm2"] = 1e6 * areas.size / area
    return pooled
