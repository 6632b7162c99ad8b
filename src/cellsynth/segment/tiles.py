"""Tiled instance prediction for images of any size, without seams or duplicate cells.

The image is cut into overlapping tiles. A cell found in a tile is kept only if its centre
lies in the tile's *core* (the tile minus half the overlap on every inner side); the cores
partition the image, so each cell is owned by exactly one tile and seen whole there as long
as the overlap exceeds the cell diameter. Kept cells are painted best score first; a
proposal mostly covered by a better one is dropped, which removes the rare duplicates whose
centres straddle a core border.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.errors import ImageReadError

__all__ = ["open_large_image", "tile_origins", "tiled_proposals", "predict_tiled",
           "contours_to_labels"]

# A predictor maps a batch (B, h, w, C) float32 in [0, 1] to per-tile (contours, scores),
# contours (K, S, 2) as (x, y) in tile coordinates.
Predictor = Callable[[np.ndarray], list[tuple[np.ndarray, np.ndarray]]]


def contours_to_labels(contours: np.ndarray, scores: np.ndarray, shape: tuple[int, int], *,
                       score_thresh: float = 0.0, min_visible: float = 0.5,
                       return_scores: bool = False):
    """Paint contours into a label map, best score first; overlaps go to the better cell.

    A proposal whose pixels are mostly (more than ``1 - min_visible``) taken already is
    dropped: this removes duplicates, e.g. the same cell found in two overlapping tiles.

    contours : (K, S, 2) polygon vertices as (x, y); scores : (K,).
    Returns (H, W) uint32 labels, ids 1..N in order of decreasing score, and with
    ``return_scores`` also each id's score ((N + 1,), index 0 = background = inf).
    Because painting is greedy in score order, the labels for a higher threshold ``t`` are
    exactly ``labels * (id_scores[labels] >= t)``: one painting serves every threshold.
    """
    from skimage.draw import polygon

    labels = np.zeros(shape, np.uint32)
    painted = [np.inf]
    for k in np.argsort(-scores, kind="stable"):
        if scores[k] < score_thresh:
            continue
        rr, cc = polygon(contours[k, :, 1], contours[k, :, 0], shape=shape)
        if rr.size == 0:
            continue
        free = labels[rr, cc] == 0
        if free.sum() < max(min_visible * rr.size, 1):
            continue
        labels[rr[free], cc[free]] = len(painted)
        painted.append(float(scores[k]))
    return (labels, np.array(painted)) if return_scores else labels


def open_large_image(path: str | os.PathLike) -> Any:
    """Open a TIFF or Zarr image lazily (array-like, sliced on demand)."""
    path = Path(path)
    try:
        import zarr

        if path.suffix.lower() == ".zarr" or path.is_dir():
            array = zarr.open(str(path), mode="r")
            if hasattr(array, "shape"):
                return array
            keys = sorted(array.array_keys())
            if not keys:
                raise ImageReadError(f"{path}: Zarr group holds no array")
            return array[keys[0]]  # highest resolution of a multiscale group
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            return zarr.open(tifffile.imread(path, aszarr=True), mode="r")
    except ImageReadError:
        raise
    except Exception as err:
        raise ImageReadError(f"{path}: cannot open lazily: {err}") from err
    raise ImageReadError(f"{path}: large images must be TIFF or Zarr")


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Start positions of tiles covering [0, length) with at least ``overlap`` between them."""
    if length <= tile:
        return [0]
    step = tile - overlap
    if step < 1:
        raise ValueError(f"overlap {overlap} must be smaller than the tile size {tile}")
    starts = list(range(0, length - tile, step)) + [length - tile]
    return sorted(set(starts))


def _core(start: int, tile: int, length: int, starts: list[int]) -> tuple[float, float]:
    """Half-open interval of positions owned by the tile at ``start``."""
    i = starts.index(start)
    low = 0.0 if i == 0 else (starts[i - 1] + tile + start) / 2
    high = float(length) if i == len(starts) - 1 else (start + tile + starts[i + 1]) / 2
    return low, high


def tiled_proposals(image: Any, predictor: Predictor, *, tile: int = 512, overlap: int = 96,
                    batch: int = 4, read: Callable[[Any, slice, slice], np.ndarray] | None = None,
                    progress: Callable[[int], None] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Cell proposals of a (H, W[, C]) image of any size, each owned by exactly one tile.

    Parameters
    ----------
    image : numpy array or lazy array-like (zarr) of shape (H, W) or (H, W, C).
    predictor : see ``Predictor``.
    read : turns ``image[ys, xs]`` into (h, w, C) float32 in [0, 1]; default casts.

    Returns
    -------
    contours : (K, S, 2) float, (x, y) in image coordinates.
    scores : (K,) float.
    """
    height, width = int(image.shape[0]), int(image.shape[1])
    read = read or (lambda img, ys, xs: np.asarray(img[ys, xs], np.float32))
    ys0, xs0 = tile_origins(height, tile, overlap), tile_origins(width, tile, overlap)
    th, tw = min(tile, height), min(tile, width)
    origins = [(y, x) for y in ys0 for x in xs0]
    contours: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    for b in range(0, len(origins), batch):
        chunk = origins[b:b + batch]
        tiles = np.stack([read(image, slice(y, y + th), slice(x, x + tw)) for y, x in chunk])
        for (y, x), (c, s) in zip(chunk, predictor(tiles)):
            if c.shape[0] == 0:
                continue
            centre = c.mean(axis=1)  # (K, 2) as (x, y)
            ylo, yhi = _core(y, th, height, ys0)
            xlo, xhi = _core(x, tw, width, xs0)
            cy, cx = centre[:, 1] + y, centre[:, 0] + x
            own = (cy >= ylo) & (cy < yhi) & (cx >= xlo) & (cx < xhi)
            shifted = c[own].astype(np.float32)
            shifted[..., 0] += x
            shifted[..., 1] += y
            contours.append(shifted)
            scores.append(s[own])
        if progress is not None:
            progress(len(chunk))
    if not contours:
        return np.zeros((0, 1, 2), np.float32), np.zeros(0, np.float32)
    return np.concatenate(contours), np.concatenate(scores)


def predict_tiled(image: Any, predictor: Predictor, *, score_thresh: float = 0.0,
                  **kwargs: Any) -> np.ndarray:
    """Instance labels (H, W) uint32 of an image of any size; see :func:`tiled_proposals`."""
    contours, scores = tiled_proposals(image, predictor, **kwargs)
    return contours_to_labels(contours, scores, (int(image.shape[0]), int(image.shape[1])),
                              score_thresh=score_thresh)
