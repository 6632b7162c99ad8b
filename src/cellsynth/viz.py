"""Small pictures for humans: label contours over images and image grids (pure numpy)."""

from __future__ import annotations

import warnings

import numpy as np
from skimage.segmentation import find_boundaries

__all__ = ["as_rgb8", "contour_overlay", "image_grid", "outcome_overlay", "OUTCOME_COLORS"]

# true positive, false positive, missed (colour-blind safe: green / magenta / yellow)
OUTCOME_COLORS = {"tp": (40, 220, 40), "fp": (255, 0, 255), "fn": (255, 220, 0)}


def as_rgb8(image: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) image of any supported dtype -> (H, W, 3) uint8."""

    # 8-bit images are shown as they are (an H&E slide's colours), others by their content,
    # and so is a dim 8-bit one (a fluorescence image of values 4-55 was shown near black,
    # its 16-bit twin stretched)
    if image.dtype != np.uint8 or _dim(image):
        image = _stretched(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return image


def _stretched(image: np.ndarray) -> np.ndarray:
    """``image`` as uint8 stretched to its content, without a warning: a picture of an
    image whose reading warned already (a constant one was said twice, the second time
    naming no file)."""
    from cellsynth.io.images import to_uint8
    from cellsynth.io.normalize import normalize

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return to_uint8(normalize(image))


def _dim(image: np.ndarray) -> bool:
    """Whether an 8-bit image's content spans less than a quarter of its range (1st to
    99.8th percentile, on every 4th pixel of every 4th row)."""
    sample = image[::4, ::4]
    if not sample.size:
        return False
    low, high = np.percentile(sample, (1, 99.8))
    return bool(high - low < 64)


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


def outcome_overlay(image: np.ndarray, truth: np.ndarray, predicted: np.ndarray, *,
                    iou: float = 0.5) -> tuple[np.ndarray, dict[str, int]]:
    """Outlines coloured by outcome at an IoU threshold (>= 0.5, so matches are unique):
    predicted cells that match a true one (tp), predicted cells that do not (fp), and true
    cells nobody found (fn, drawn on the truth's outline). Returns (H, W, 3) uint8 and the
    counts."""
    if iou < 0.5:
        raise ValueError("outcome_overlay: iou must be >= 0.5 (matches are unique only then)")
    truth, predicted = np.asarray(truth, np.int64), np.asarray(predicted, np.int64)
    both = (truth > 0) & (predicted > 0)
    pairs, inter = np.unique(np.stack([truth[both], predicted[both]]), axis=1,
                             return_counts=True)
    area_t = np.bincount(truth.ravel())
    area_p = np.bincount(predicted.ravel())
    overlap = inter / (area_t[pairs[0]] + area_p[pairs[1]] - inter) if inter.size else inter
    hit = overlap >= iou
    found = np.zeros(area_t.size, bool)
    found[pairs[0][hit]] = True
    matched = np.zeros(area_p.size, bool)
    matched[pairs[1][hit]] = True
    rgb = as_rgb8(_stretched(image))  # contrast stretched: dim stains stay visible
    truth_edges = find_boundaries(truth, mode="thick") & (truth > 0)
    predicted_edges = find_boundaries(predicted, mode="thick") & (predicted > 0)
    rgb[truth_edges & ~found[truth]] = OUTCOME_COLORS["fn"]
    rgb[predicted_edges & ~matched[predicted]] = OUTCOME_COLORS["fp"]
    rgb[predicted_edges & matched[predicted]] = OUTCOME_COLORS["tp"]
    ids_t, ids_p = np.unique(truth[truth > 0]), np.unique(predicted[predicted > 0])
    tp = int(matched[ids_p].sum())
    return rgb, {"tp": tp, "fp": int(ids_p.size - tp), "fn": int(ids_t.size - found[ids_t].sum())}
