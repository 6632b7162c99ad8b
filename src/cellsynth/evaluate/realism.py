"""Realism metrics: how distinguishable are two image sets (e.g. real vs simulated)?

- C2ST, a classifier two-sample test (a small CNN's k-fold held-out accuracy at telling crops
  of the two sets apart), lives in :mod:`cellsynth.evaluate.c2st` and is re-exported here.
- SWD, the sliced Wasserstein distance between the distributions of 7 x 7 Laplacian-pyramid
  patches at each scale (Karras et al. 2018, "Progressive growing of GANs", Sec. 5).
- Interpretable statistics: Wasserstein-1 distance between pixel-intensity distributions per
  channel, and the RMS difference of the log10 radially averaged power spectra.
- :func:`realism` computes all of them at once.

No pretrained weights are used anywhere. Images are ``(H, W)`` or ``(H, W, 3)`` arrays of
uint8, uint16 or float in [0, 1]; they are scaled to [0, 1] by their dtype's range.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.ndimage import convolve1d

from cellsynth.evaluate._common import _check_min_size, _prepare, _rngs, _sample_windows
from cellsynth.evaluate.c2st import C2STResult, _c2st_repeated, _check_c2st_options, c2st

__all__ = ["C2STResult", "SWDResult", "RealismResult", "c2st", "sliced_wasserstein",
           "histogram_distance", "spectrum_distance", "realism"]

_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0  # the 5-tap kernel of cv2.pyrDown


@dataclass(frozen=True)
class SWDResult:
    """Sliced Wasserstein distance x 1e3 per Laplacian level (finest first) and their mean."""

    mean_x1e3: float
    per_level_x1e3: tuple[float, ...]
    patches_per_level: int


@dataclass(frozen=True)
class RealismResult:
    """All realism metrics of :func:`realism`; ``to_dict`` gives JSON-ready nested data."""

    n_a: int
    n_b: int
    channels: int
    converted_to_gray: bool  # True if RGB images were converted to match a gray set
    seed: int
    c2st: C2STResult
    swd: SWDResult
    histogram_w1: float  # mean over channels, intensity units in [0, 1]
    histogram_w1_per_channel: tuple[float, ...]
    spectrum_rms_log10: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- SWD -------------------------------------------------------------------------------------

def _laplacian_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """Laplacian pyramid of an (H, W, C) image, finest level first; the last is the Gaussian
    residual. Binomial 5-tap filtering with mirrored borders, as cv2.pyrDown / cv2.pyrUp."""
    def blur(x: np.ndarray, gain: float = 1.0) -> np.ndarray:
        x = convolve1d(x, _BINOMIAL * gain, axis=0, mode="mirror")
        return convolve1d(x, _BINOMIAL * gain, axis=1, mode="mirror")

    pyramid, current = [], image.astype(np.float64)
    for _ in range(levels - 1):
        down = blur(current)[::2, ::2]
        up = np.zeros_like(current)
        up[::2, ::2] = down
        pyramid.append(current - blur(up, gain=2.0))  # gain 2 per axis restores the mean
        current = down
    pyramid.append(current)
    return pyramid


def _swd(a: list[np.ndarray], b: list[np.ndarray], *, rng: np.random.Generator, n_patches: int,
         n_directions: int = 512) -> SWDResult:
    _check_min_size(a + b, "images", 16, "the smallest SWD level")
    min_side = min(min(x.shape[:2]) for x in a + b)
    levels = int(np.floor(np.log2(min_side / 16))) + 1  # coarsest level >= 16 px, as Karras
    pyramids = [[_laplacian_pyramid(x, levels) for x in images] for images in (a, b)]
    per_level = []
    for level in range(levels):
        descriptors = [_sample_windows([p[level] for p in pyr], np.arange(len(pyr)), n_patches,
                                       7, rng) for pyr in pyramids]  # (N, C, 7, 7) each
        # Normalise each channel with statistics of both sets pooled (Karras normalises each
        # set on its own, which hides global intensity and contrast differences).
        both = np.concatenate(descriptors)
        mean = both.mean(axis=(0, 2, 3), keepdims=True)
        std = both.std(axis=(0, 2, 3), keepdims=True) + 1e-8
        da, db = (((d - mean) / std).reshape(n_patches, -1) for d in descriptors)
        directions = rng.standard_normal((da.shape[1], n_directions))
        directions /= np.linalg.norm(directions, axis=0, keepdims=True)
        pa, pb = np.sort(da @ directions, axis=0), np.sort(db @ directions, axis=0)
        per_level.append(float(np.abs(pa - pb).mean()) * 1e3)
    return SWDResult(mean_x1e3=float(np.mean(per_level)), per_level_x1e3=tuple(per_level),
                     patches_per_level=n_patches)


def sliced_wasserstein(a_images: Sequence[np.ndarray], b_images: Sequence[np.ndarray], *,
                       seed: int = 0, n_patches: int = 8192) -> SWDResult:
    """Sliced Wasserstein distance between multi-scale patch distributions (x 1e3).

    At each Laplacian-pyramid level (finest to the coarsest level of at least 16 px),
    ``n_patches`` random 7 x 7 patches per set are normalised per channel, projected on 512
    random unit directions, and the mean absolute difference of the sorted projections is
    taken (Karras et al. 2018). Independent samples of one distribution give a small positive
    value (sampling noise), not exactly 0.
    """
    if n_patches < 2:
        raise ValueError(f"sliced_wasserstein: n_patches must be >= 2, got {n_patches}")
    a, b, _ = _prepare(a_images, b_images)
    return _swd(a, b, rng=_rngs(seed)[1], n_patches=n_patches)


# --- simple statistics -----------------------------------------------------------------------

def _histogram_w1(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[float, ...]:
    """Wasserstein-1 per channel between pooled pixel intensities, on the 1/65535 grid; the
    ~1 % of pixels that normalisation puts beyond [0, 1] count as 0 or 1."""
    levels = 65535
    distances = []
    for c in range(a[0].shape[-1]):
        cdfs = []
        for images in (a, b):
            counts = sum(np.bincount(np.rint(np.clip(x[..., c].ravel(), 0, 1) * levels)
                                     .astype(np.int64),
                                     minlength=levels + 1) for x in images)
            cdfs.append(np.cumsum(counts) / counts.sum())
        distances.append(float(np.abs(cdfs[0] - cdfs[1])[:-1].sum() / levels))
    return tuple(distances)


def _mean_log_spectrum(images: list[np.ndarray], bins: int) -> np.ndarray:
    """log10 of the radially averaged power spectrum (mean over images), in ``bins`` bins of
    spatial frequency over (0, 0.5] cycles/pixel. Images are mean-free and Hann-windowed."""
    total, count = np.zeros(bins), np.zeros(bins)
    for image in images:
        x = image.mean(axis=-1)
        window = np.outer(np.hanning(x.shape[0]), np.hanning(x.shape[1]))
        x = (x - x.mean()) * window
        power = np.abs(np.fft.fft2(x)) ** 2 / (window**2).sum()
        radius = np.hypot(*np.meshgrid(np.fft.fftfreq(x.shape[0]), np.fft.fftfreq(x.shape[1]),
                                       indexing="ij"))
        index = np.ceil(radius / 0.5 * bins).astype(int) - 1  # bin i: (i/bins, (i+1)/bins] * 0.5
        valid = (radius > 0) & (index < bins)
        sums = np.bincount(index[valid], power[valid], minlength=bins)
        hits = np.bincount(index[valid], minlength=bins)
        total += np.divide(sums, hits, out=np.zeros(bins), where=hits > 0)
        count += hits > 0
    return np.log10(np.divide(total, count, out=np.full(bins, np.nan), where=count > 0) + 1e-12)


def _spectrum_rms(a: list[np.ndarray], b: list[np.ndarray], bins: int = 32) -> float:
    diff = _mean_log_spectrum(a, bins) - _mean_log_spectrum(b, bins)
    return float(np.sqrt(np.nanmean(diff**2)))


def histogram_distance(a_images: Sequence[np.ndarray], b_images: Sequence[np.ndarray]
                       ) -> tuple[float, ...]:
    """Wasserstein-1 distance between the pixel intensities (in [0, 1]) of the two sets, per
    channel: the mean absolute intensity change needed to turn one histogram into the other."""
    a, b, _ = _prepare(a_images, b_images)
    return _histogram_w1(a, b)


def spectrum_distance(a_images: Sequence[np.ndarray], b_images: Sequence[np.ndarray]) -> float:
    """RMS difference (in log10 units) of the sets' mean radially averaged power spectra of the
    channel-mean images (mean-free, Hann-windowed) over 32 frequency bins in (0, 0.5]
    cycles/pixel; 0.3 means a factor 2 in power on average. Blind to mean intensity."""
    a, b, _ = _prepare(a_images, b_images)
    return _spectrum_rms(a, b)


# --- everything ------------------------------------------------------------------------------

def realism(a_images: Sequence[np.ndarray], b_images: Sequence[np.ndarray], *, seed: int = 0,
            folds: int = 5, crop_size: int = 64, n_crops: int = 512, epochs: int = 12,
            swd_patches: int = 8192, threads: int | None = None,
            progress: bool = False, repeats: int = 1) -> RealismResult:
    """Compare two image sets with C2ST, SWD, intensity-histogram and power-spectrum distances.

    Parameters
    ----------
    a_images, b_images : sequences of (H, W) or (H, W, 3) arrays, uint8/uint16/float
        If one set is gray and the other RGB, RGB images are converted to gray (with a warning).
    seed : int
        Same seed, same result (on the same machine and torch version).
    folds, crop_size, n_crops, epochs, threads, repeats
        C2ST options, see :func:`c2st`.
    swd_patches : int
        Patches per set and pyramid level for the SWD, see :func:`sliced_wasserstein`.
    progress : bool
        Show C2ST training progress on stderr.
    """
    _check_c2st_options(folds, crop_size, n_crops, epochs)
    if swd_patches < 2:
        raise ValueError(f"realism: swd_patches must be >= 2, got {swd_patches}")
    a, b, converted = _prepare(a_images, b_images)
    swd_rng = _rngs(seed)[1]
    w1 = _histogram_w1(a, b)
    return RealismResult(
        n_a=len(a), n_b=len(b), channels=a[0].shape[-1], converted_to_gray=converted, seed=seed,
        c2st=_c2st_repeated(a, b, seed=seed, repeats=repeats, folds=folds,
                            crop_size=crop_size, n_crops=n_crops, epochs=epochs, batch_size=64,
                            threads=threads, progress=progress),
        swd=_swd(a, b, rng=swd_rng, n_patches=swd_patches),
        histogram_w1=float(np.mean(w1)), histogram_w1_per_channel=w1,
        spectrum_rms_log10=_spectrum_rms(a, b),
    )
