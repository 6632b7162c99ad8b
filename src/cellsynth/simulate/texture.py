"""Random fields: band-limited noise for neuropil, granules and uneven staining.

All fields are drawn in the Fourier domain (white noise times a sum of Gaussian spectral
envelopes), which gives several scales for the price of one float32 FFT pair.
"""

from __future__ import annotations

import functools

import numpy as np
import scipy.fft

__all__ = ["band_noise", "smooth_field", "gaussian_blur_fft"]


@functools.lru_cache(maxsize=16)
def _freq2(shape: tuple[int, int]) -> np.ndarray:
    """Squared spatial frequency (cycles/pixel) on the rfft2 grid of ``shape``, float32."""
    h, w = shape
    fy = np.fft.fftfreq(h).astype(np.float32)[:, None]
    fx = np.fft.rfftfreq(w).astype(np.float32)[None, :]
    return fy * fy + fx * fx


def _gaussian_transfer(shape: tuple[int, int], sigma: float) -> np.ndarray:
    # A Gaussian blur with sigma s multiplies the spectrum by exp(-2 pi^2 s^2 f^2).
    return np.exp(np.float32(-2.0 * np.pi**2 * sigma**2) * _freq2(shape))


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
    white = rng.standard_normal(shape, dtype=np.float32)
    envelope = np.zeros_like(_freq2(shape))
    for sigma, weight in zip(sigmas_px, weights):
        # Blurred white noise has variance ~ 1 / (4 pi s^2): scale each band to unit variance.
        envelope += np.float32(weight * np.sqrt(4.0 * np.pi) * max(sigma, 0.5)) \
            * _gaussian_transfer(shape, sigma)
    field = scipy.fft.irfft2(scipy.fft.rfft2(white) * envelope, s=shape)
    field -= field.mean()
    std = field.std()
    return field / std if std > 0 else field


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale_px: float
                 ) -> np.ndarray:
    """A very smooth unit-variance field with correlation length ``scale_px``."""
    return band_noise(rng, shape, (scale_px,))


def gaussian_blur_fft(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Periodic Gaussian blur of a (H, W) image via FFT: cost independent of ``sigma_px``."""
    shape = image.shape[:2]
    spectrum = scipy.fft.rfft2(image.astype(np.float32, copy=False))
    return scipy.fft.irfft2(spectrum * _gaussian_transfer(shape, sigma_px), s=shape)
