"""Input handling shared by the realism metrics (:mod:`.c2st` and :mod:`.realism`).

Validates the two image sets and normalises every image by its content (1st-99.8th
percentile -> 0-1, not clipped: an affine map, so spectra only change in gain; bit depth and
the brightness of whole images do not count), as (H, W, C) float32 with a common C,
spawns the per-metric random streams, and samples random square windows uniformly over all
window positions of a set of images.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from cellsynth.io.normalize import normalize


def _prepare(a_images: Sequence[np.ndarray], b_images: Sequence[np.ndarray]
             ) -> tuple[list[np.ndarray], list[np.ndarray], bool]:
    """Both sets as lists of (H, W, C) float32 (normalised, ~[0, 1]) with a common C (1 or 3)."""
    sets = []
    for name, images in (("a_images", a_images), ("b_images", b_images)):
        if len(images) == 0:
            raise ValueError(f"{name}: empty image set")
        out = []
        for i, image in enumerate(images):
            image = np.asarray(image)
            if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)):
                raise ValueError(f"{name}[{i}]: expected shape (H, W) or (H, W, 3), "
                                 f"got {image.shape}")
            if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
                raise ValueError(f"{name}[{i}]: image contains NaN/inf values")
            try:  # by content, so a C2ST cannot tell sets apart by bit depth
                image = normalize(image, where=f"{name}[{i}]", clip=False)
            except ValueError as err:
                raise ValueError(f"{name}[{i}]: {err}") from None
            out.append(image if image.ndim == 3 else image[..., None])
        sets.append(out)
    rgb = [x.shape[-1] == 3 for s in sets for x in s]
    converted = any(rgb) and not all(rgb)
    if converted:
        from skimage.color import rgb2gray

        warnings.warn("realism: the image sets mix gray and RGB images; converting RGB to gray",
                      stacklevel=3)
        sets = [[rgb2gray(x)[..., None].astype(np.float32) if x.shape[-1] == 3 else x
                 for x in s] for s in sets]
    return sets[0], sets[1], converted


def _rngs(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent streams for C2ST and SWD, so each metric alone gives the same numbers."""
    return tuple(np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))


def _check_min_size(images: list[np.ndarray], name: str, size: int, why: str) -> None:
    for i, image in enumerate(images):
        if min(image.shape[:2]) < size:
            raise ValueError(f"{name}[{i}]: image {image.shape[0]}x{image.shape[1]} is smaller "
                             f"than {why} ({size} px)")


def _sample_windows(images: list[np.ndarray], which: np.ndarray, n: int, size: int,
                    rng: np.random.Generator) -> np.ndarray:
    """``n`` random size x size windows, (n, C, size, size), from images ``which``, uniform
    over all window positions (an image is drawn in proportion to its number of positions)."""
    positions = np.array([(images[i].shape[0] - size + 1) * (images[i].shape[1] - size + 1)
                          for i in which], dtype=float)
    picks = rng.choice(which, size=n, p=positions / positions.sum())
    out = np.empty((n, images[0].shape[-1], size, size), np.float32)
    for i in np.unique(picks):
        slots = np.flatnonzero(picks == i)
        h, w = images[i].shape[:2]
        ys = rng.integers(0, h - size + 1, slots.size)
        xs = rng.integers(0, w - size + 1, slots.size)
        windows = np.lib.stride_tricks.sliding_window_view(images[i], (size, size), axis=(0, 1))
        out[slots] = windows[ys, xs]  # (k, C, size, size)
    return out
