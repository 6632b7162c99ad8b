"""From stain amounts to camera pixels: colour model (Beer-Lambert or emission), PSF, noise."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

__all__ = ["blur", "to_intensity", "stain_vectors", "add_camera_noise", "STAIN_VECTORS"]

# Per-channel absorbance (R, G, B) of one unit of stain. Violet: cresyl violet as measured on
# nissl_rat_sscx/train (cell-minus-background OD ~ (0.23, 0.28, 0.0)); hematoxylin and eosin
# after Ruifrok & Johnston (2001).
STAIN_VECTORS = {
    "violet": np.array([0.8, 1.0, 0.05], np.float32),
    "hematoxylin": np.array([0.65, 0.70, 0.29], np.float32) / 0.70,
    "eosin": np.array([0.07, 0.99, 0.11], np.float32) / 0.99,
}
# Transmitted light with no stain (white balance of the scanner).
_WHITE = {
    "gray": np.float32(0.93),
    "violet": np.array([0.93, 0.93, 0.86], np.float32),
    "he": np.array([0.95, 0.94, 0.96], np.float32),
}


def blur(field: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian PSF over the two spatial axes (no-op for tiny sigmas)."""
    if sigma_px < 0.2:
        return field
    sigma = (sigma_px, sigma_px) + (0,) * (field.ndim - 2)
    return ndi.gaussian_filter(field, sigma=sigma, mode="reflect", truncate=3.0)


def to_intensity(main: np.ndarray, counter: np.ndarray | None, color: str, *,
                 main_vector: Sequence[float] | None = None,
                 counter_vector: Sequence[float] | None = None) -> np.ndarray:
    """Turn stain amounts into intensities in [0, 1].

    Parameters
    ----------
    main : (H, W) float32, main stain (Nissl/Merker/hematoxylin OD, or fluorophore emission).
    counter : (H, W) float32 or None, counterstain OD (eosin; H&E only).
    color : "gray", "violet", "he" or "fluo".
    main_vector, counter_vector : absorbance (R, G, B) of one unit of the main stain and the
        counterstain (violet, he); None: :data:`STAIN_VECTORS` (violet; hematoxylin, eosin).

    Returns
    -------
    image : (H, W) for gray/fluo or (H, W, 3) for violet/he, float32.
    """
    if color == "fluo":
        return main
    if color == "gray":
        return _WHITE["gray"] * np.exp(-main)
    main_v, counter_v = stain_vectors(color, main_vector, counter_vector)
    if color == "violet":
        return _WHITE["violet"] * np.exp(-main[..., None] * main_v)
    if color == "he":
        od = main[..., None] * main_v
        if counter is not None:
            od = od + counter[..., None] * counter_v
        return _WHITE["he"] * np.exp(-od)
    raise ValueError(f"unknown color model {color!r}")


def stain_vectors(color: str, main_vector: Sequence[float] | None = None,
                  counter_vector: Sequence[float] | None = None
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """The (R, G, B) absorbance of one unit of main stain and of counterstain (None if the
    colour model has none) that ``color`` renders with: the given ones, else the defaults."""
    if color == "violet":
        default_main, default_counter = STAIN_VECTORS["violet"], None
    elif color == "he":
        default_main, default_counter = STAIN_VECTORS["hematoxylin"], STAIN_VECTORS["eosin"]
    else:
        raise ValueError(f"colour model {color!r} has no stain vectors")
    main = default_main if main_vector is None else np.asarray(main_vector, np.float32)
    counter = default_counter if counter_vector is None or default_counter is None \
        else np.asarray(counter_vector, np.float32)
    return main, counter


def add_camera_noise(
    rng: np.random.Generator, image: np.ndarray, *, shot: float, read: float
) -> np.ndarray:
    """Add signal-dependent (shot) and constant (read) Gaussian noise, clip to [0, 1]."""
    std = np.sqrt(shot * shot * np.clip(image, 0.0, None) + read * read, dtype=np.float32)
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    return np.clip(image + std * noise, 0.0, 1.0)
