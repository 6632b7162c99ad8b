"""Small pictures for humans: label contours over images and image grids (pure numpy)."""

from __future__ import annotations

import numpy as np
from skimage.segmentation import find_boundaries

__all__ = ["as_rgb8", "contour_overlay", "image_grid"]


def as_rgb8(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) image of any supported dtype -> (H, W, 3) uint8."""
    from cellsynth.io.images import to_uint8
    from cellsynth.io.normalize import normalize

    if image.dtype != np.uint8:  # 8-bit images are shown as they are, others by content
        image = to_uint8(normalize(image))
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return image


def contour_overlay(image: np.ndarray, labels: np.ndarray,
                    color: tuple[int, int, int] = (255, 200, 0)) -> np.ndarray:
    """Draw the inner outline of every label onto a copy of ``image``; (H, W, 3) uint8."""
    rgb = as_rgb8(image).copy()
    rgb[find_boundaries(labels, mode="inner")] = color
    return rgb


def image_grid(tiles: list[np.ndarray], *, columns: int = 4, gap: int = 4,
               fill: int = 255) -> np.ndarray:
    """Arrange (H, W, 3) uint8 tiles (any sizes) in a grid; (H', W', 3) uint8."""
    if not tiles:
        raise ValueError("image_grid: no tiles")
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    th = max(t.shape[0] for t in tiles)
    tw = max(t.shape[1] for t in tiles)
    out = np.full((rows * th + (rows - 1) * gap, columns * tw + (columns - 1) * gap, 3), fill,
                  np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        y, x = r * (th + gap), c * (tw + gap)
        out[y:y + tile.shape[0], x:x + tile.shape[1]] = as_rgb8(tile)
    return out
