"""Random fields: band-limited noise for neuropil, granules and uneven staining.

All fields are drawn in the Fourier domain (white noise times a sum of Gaussian spectral
envelopes), which gives several scales for the price of one float32 FFT pair.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.fft

__all__ = ["band_noise", "smooth_field", "gaussian_blur_fft", "upsample"]


@functools.lru_cache(maxsize=16)
def _freq2(shape: tuple[int, int]) -> np.ndarray:
    """Squared spatial frequency (cycles/pixel) on the rfft2 grid of ``shape``, float32."""
    h, w = shape
    fy = np.fft.fftfreq(h).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(w).astype(np.float32)[None, :]
    return fy * fy + fx * fx


@functools.lru_cache(maxsize=64)
def _gaussian_transfer(shape: tuple[int, int], sigma: float) -> np.ndarray:
    # A Gaussian blur with sigma s multiplies the spectrum by exp(-2 pi^2 s^2 f^2).
    return np.exp(np.float32(-2.0 * np.pi**2 * sigma**2) * _freq2(shape))


@functools.lru_cache(maxsize=64)
def _envelope(shape: tuple[int, int], sigmas_px: tuple[float, ...],
              weights: tuple[float, ...]) -> np.ndarray:
    envelope = np.zeros_like(_freq2(shape))
    for sigma, weight in zip(sigmas_px, weights):
        # Blurred white noise has variance ~ 1 / (4 pi s^2): scale each band to unit variance.
        envelope += np.float32(weight * np.sqrt(4.0 * np.pi) * max(sigma, 0.5)) \
            * _gaussian_transfer(shape, sigma)
    envelope[0, 0] = 0.0  # zero mean
    return envelope


def band_noise(
    rng: np.random.Generator,
    shape: tuple[int, int],
    sigmas_px: tuple[float, ...],
    weights: tuple[float, ...] | None = None,
) -> np.ndarray:
    """Zero-mean, unit-variance noise whose spatial correlation mixes Gaussian scales.

    Parameters
    ----------
    shape : (H, W)
    sigmas_px : correlation lengths in pixels (Gaussian blur sigmas of white noise).
    weights : relative standard deviation of each scale (default equal).

    Returns
    -------
    field : (H, W) float32, periodic at the borders.
    """
    shape = (int(shape[0]), int(shape[1]))
    weights = weights if weights is not None else (1.0,) * len(sigmas_px)
    if len(weights) != len(sigmas_px):
        raise ValueError("band_noise: sigmas_px and weights differ in length")
    envelope = _envelope(shape, tuple(map(float, sigmas_px)), tuple(map(float, weights)))
    # The Fourier transform of white Gaussian noise is white complex Gaussian noise: draw it
    # there directly and save the forward FFT.
    spectrum = rng.standard_normal((*envelope.shape, 2), dtype=np.float32).view(np.complex64)
    field = scipy.fft.irfft2(spectrum[..., 0] * envelope, s=shape)
    std = field.std()
    return field / std if std > 0 else field


@functools.lru_cache(maxsize=16)
def _interpolation(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices and weights of periodic linear interpolation from n_in to n_out samples."""
    pos = np.arange(n_out) * n_in / n_out
    lo = np.floor(pos).astype(np.intp)
    frac = (pos - lo).astype(np.float32)
    return lo % n_in, (lo + 1) % n_in, frac


def upsample(coarse: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Periodic bilinear interpolation of a coarse (h, w) field to ``shape``."""
    # Element-wise gathers, not matrix products: BLAS threading costs more than it saves here.
    lo, hi, frac = _interpolation(shape[0], coarse.shape[0])
    rows = coarse[lo] * (1 - frac)[:, None] + coarse[hi] * frac[:, None]
    lo, hi, frac = _interpolation(shape[1], coarse.shape[1])
    return rows[:, lo] * (1 - frac) + rows[:, hi] * frac


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale_px: float
                 ) -> np.ndarray:
    """A very smooth unit-variance field with correlation length ``scale_px``.

    Drawn on a grid of ~8 samples per correlation length and linearly interpolated up, which
    is much cheaper than a full-size FFT for large scales.
    """
    step = max(1.0, scale_px / 8)
    coarse_shape = (max(8, int(np.ceil(shape[0] / step))), max(8, int(np.ceil(shape[1] / step))))
    coarse = band_noise(rng, coarse_shape, (scale_px * coarse_shape[0] / shape[0],))
    field = upsample(coarse, shape)
    field -= field.mean()
    std = field.std()
    return field / std if std > 0 else field


def gaussian_blur_fft(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Periodic Gaussian blur of a (H, W) image via FFT: cost independent of ``sigma_px``."""
    shape = (int(image.shape[0]), int(image.shape[1]))
    spectrum = scipy.fft.rfft2(image.astype(np.float32, copy=False))
    return scipy.fft.irfft2(spectrum * _gaussian_transfer(shape, sigma_px), s=shape)
