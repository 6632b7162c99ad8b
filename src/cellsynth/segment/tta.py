"""Test-time augmentation: predict the 8 flips/transposes of an image and let them vote.

A CPN trained with random flips and rotations still answers each orientation a little
differently: an ambiguous blob is a cell in some of them, an outline drifts by a pixel.
Each of the 8 dihedral views is predicted (tile by tile, so sections work as well), its
proposals are mapped back to the image, and proposals of the same cell are grouped (mask
IoU > 0.5 with the group's first, best-scoring member; at most one per view). A group is
one cell with

- score = sum of its members' scores / 8: a cell found in every view keeps its score, one
  found in 2 of 8 views gets a quarter of it, so unstable detections fall below threshold;
- outline = the median, angle by angle, of its members' radii around their mean centre
  (star-shaped cells, as CPN contours are), so one view's drift is voted down.

The result is again (contours, scores), painted and thresholded like any prediction.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cellsynth.segment.tiles import BoxIndex

__all__ = ["VIEWS", "Dihedral", "to_image_coordinates", "merge_views"]

# (transpose, flip rows, flip columns); the first is the image itself
VIEWS: tuple[tuple[bool, bool, bool], ...] = tuple(
    (t, fy, fx) for t in (False, True) for fy in (False, True) for fx in (False, True))


class Dihedral:
    """An (H, W[, C]) array (numpy or lazy) seen transposed and/or flipped; slicing a 2-D
    window reads only the source window it covers."""

    def __init__(self, image: Any, view: tuple[bool, bool, bool]):
        self.image, self.view = image, view
        h, w = int(image.shape[0]), int(image.shape[1])
        self.source_shape = (h, w)
        hv, wv = (w, h) if view[0] else (h, w)
        self.shape = (hv, wv) + tuple(int(n) for n in image.shape[2:])
        self.dtype = getattr(image, "dtype", np.dtype(np.float32))
        self.ndim = len(self.shape)

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        transpose, flip_y, flip_x = self.view
        (y0, y1, _), (x0, x1, _) = key[0].indices(self.shape[0]), key[1].indices(self.shape[1])
        if flip_y:
            y0, y1 = self.shape[0] - y1, self.shape[0] - y0
        if flip_x:
            x0, x1 = self.shape[1] - x1, self.shape[1] - x0
        if transpose:
            window = np.asarray(self.image[x0:x1, y0:y1])
            window = np.swapaxes(window, 0, 1)
        else:
            window = np.asarray(self.image[y0:y1, x0:x1])
        if flip_y:
            window = window[::-1]
        if flip_x:
            window = window[:, ::-1]
        return np.ascontiguousarray(window)


def to_image_coordinates(contours: np.ndarray, view: tuple[bool, bool, bool],
                         shape: tuple[int, int]) -> np.ndarray:
    """Contours (K, S, 2) as (x, y) predicted on a :class:`Dihedral` view of an image of
    ``shape`` (H, W) -> the same points in the image's own coordinates (a new array, except
    for the identity view, whose contours are returned as they are)."""
    transpose, flip_y, flip_x = view
    if not (transpose or flip_y or flip_x):  # the image itself
        return np.asarray(contours, np.float32)
    h, w = (shape[1], shape[0]) if transpose else shape  # the view's shape
    c = np.array(contours, np.float32, copy=True)
    if flip_x:
        c[..., 0] = (w - 1) - c[..., 0]
    if flip_y:
        c[..., 1] = (h - 1) - c[..., 1]
    if transpose:
        c = c[..., ::-1].copy()
    return c


def _mask(contour: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    from skimage.draw import polygon

    y0, x0, y1, x1 = box
    mask = np.zeros((y1 - y0, x1 - x0), bool)
    rr, cc = polygon(contour[:, 1] - y0, contour[:, 0] - x0, shape=mask.shape)
    mask[rr, cc] = True
    return mask


def _median_outline(members: list[np.ndarray], samples: int) -> np.ndarray:
    """The angle-by-angle median radius of star-shaped outlines around their mean centre."""
    centre = np.mean([m.mean(axis=0) for m in members], axis=0)  # (2,)
    angles = np.linspace(-np.pi, np.pi, samples, endpoint=False)
    radii = []
    for m in members:
        d = m - centre
        theta = np.arctan2(d[:, 1], d[:, 0])
        order = np.argsort(theta)
        radii.append(np.interp(angles, theta[order], np.hypot(d[:, 0], d[:, 1])[order],
                               period=2 * np.pi))
    r = np.median(radii, axis=0)
    return np.stack([centre[0] + r * np.cos(angles), centre[1] + r * np.sin(angles)],
                    axis=-1).astype(np.float32)


def merge_views(views: list[tuple[np.ndarray, np.ndarray]], *, min_iou: float = 0.5,
                grid: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Group the proposals of ``len(views)`` views (each (contours (K, S, 2), scores (K,)) in
    image coordinates) into cells; returns (contours (N, S, 2), scores (N,)), see the module
    docstring. Proposals are visited best score first, so each group is seeded by its best."""
    n_views = len(views)
    items = [(float(s), v, c) for v, (cs, ss) in enumerate(views) for c, s in zip(cs, ss)]
    if not items:
        return np.zeros((0, 1, 2), np.float32), np.zeros(0, np.float32)
    samples = max(c.shape[0] for _, _, c in items)
    items.sort(key=lambda t: -t[0])
    groups: list[dict[str, Any]] = []
    index = BoxIndex(grid)  # the groups' boxes, in the order of ``groups``
    for score, view, contour in items:
        lo = np.floor(contour.min(axis=0)).astype(int)  # (x, y)
        hi = np.ceil(contour.max(axis=0)).astype(int) + 1
        box = (int(lo[1]), int(lo[0]), int(hi[1]), int(hi[0]))  # (y0, x0, y1, x1)
        mask = _mask(contour, box)
        best, best_iou = None, min_iou
        for g, here, there in index.overlapping(box):
            group = groups[g]
            if view in group["views"]:
                continue
            inter = int((mask[here] & group["mask"][there]).sum())
            union = int(mask.sum()) + group["area"] - inter
            iou = inter / union if union else 0.0
            if iou > best_iou:
                best, best_iou = g, iou
        if best is None:
            index.add(box)
            groups.append({"mask": mask, "area": int(mask.sum()), "views": {view},
                           "members": [contour], "score": score})
        else:
            groups[best]["views"].add(view)
            groups[best]["members"].append(contour)
            groups[best]["score"] += score
    contours = np.stack([_median_outline(g["members"], samples) if len(g["members"]) > 1
                         else _resample(g["members"][0], samples) for g in groups])
    scores = np.array([g["score"] / n_views for g in groups], np.float32)
    return contours, scores


def _resample(contour: np.ndarray, samples: int) -> np.ndarray:
    if contour.shape[0] == samples:
        return contour.astype(np.float32)
    idx = np.linspace(0, contour.shape[0], samples, endpoint=False)
    closed = np.concatenate([contour, contour[:1]])
    return np.stack([np.interp(idx, np.arange(len(closed)), closed[:, i]) for i in (0, 1)],
                    axis=-1).astype(np.float32)
