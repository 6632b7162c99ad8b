"""Tiled instance prediction for images of any size, without seams or duplicate cells.

The image is cut into overlapping tiles. A cell found in a tile is kept only if its centre
lies in the tile's *core* (the tile minus half the overlap on every inner side); the cores
partition the image, so each cell is owned by exactly one tile and seen whole there as long
as the overlap exceeds the cell diameter. Kept cells are painted best score first; a
proposal mostly covered by a better one is dropped, which removes the rare duplicates whose
centres straddle a core border.

Tiles with no contrast at all (empty glass around a section, the dark field beside
fluorescent tissue) are not predicted: :func:`blank_tile` says so from the tile's own pixels,
so whole sections cost what their tissue costs.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.ndimage import uniform_filter

from cellsynth.io.sections import open_large_image

__all__ = ["open_large_image", "balanced_tile", "tile_origins", "tiled_proposals",
           "predict_tiled", "blank_tile", "TileCount", "EMPTY_CONTRAST",
           "offset_contours", "cell_masks", "contours_to_labels", "PaintedLabels", "ProposalStore"]

# A predictor maps a batch (B, h, w, C) float32 in [0, 1] to per-tile (contours, scores),
# contours (K, S, 2) as (x, y) in tile coordinates.
Predictor = Callable[[np.ndarray], list[tuple[np.ndarray, np.ndarray]]]

# CPN contours (the training targets and so the predictions) run through the centres of a
# cell's boundary pixels. Filling such a polygon by pixel centre leaves out about half of the
# boundary pixels: a perfect contour of a Nissl soma (~25 px across) came back with 88 % of
# its area and IoU 0.86, so no cell could pass IoU 0.9. Moved outward by half a pixel, the
# polygon is the cell's pixel-edge outline: IoU 0.97 (484 training somata, order 8).
HALF_PIXEL = 0.5


def offset_contours(contours: np.ndarray, distance: float = HALF_PIXEL) -> np.ndarray:
    """Move every vertex of closed polygons ``distance`` px along its outward normal.

    contours : (K, S, 2) vertices as (x, y), either orientation. The normal at a vertex is
    perpendicular to the chord between its two neighbours, pointing away from the inside
    (by the sign of the polygon's area); a degenerate chord leaves the vertex where it is.
    """
    c = np.asarray(contours, np.float64)
    if c.ndim != 3 or c.shape[-1] != 2 or c.shape[1] < 3 or distance == 0:
        return c.astype(np.float32, copy=True) if c.size else np.asarray(contours, np.float32)
    chord = np.roll(c, -1, axis=1) - np.roll(c, 1, axis=1)            # (K, S, 2)
    normal = np.stack([chord[..., 1], -chord[..., 0]], axis=-1)       # right of the chord
    length = np.linalg.norm(normal, axis=-1, keepdims=True)
    normal = np.divide(normal, length, out=np.zeros_like(normal), where=length > 1e-9)
    x, y = c[..., 0], c[..., 1]
    area2 = (x * np.roll(y, -1, axis=1) - np.roll(x, -1, axis=1) * y).sum(axis=1)  # (K,)
    # With y down (image rows), "right of the chord" points outward when area2 > 0.
    side = np.where(area2 >= 0, 1.0, -1.0)[:, None, None]
    return (c + distance * side * normal).astype(np.float32)


# Cells are painted as the pixels whose centres lie in the closed polygon: the set
# skimage.draw.polygon returns (inside by crossing number, on an edge or on a vertex). That
# function tests every pixel of the bounding box against every edge, one polygon per call,
# ~0.4 ms for a Nissl soma: 18 % of tiny_u22's prediction time. The same set by scanlines,
# a few hundred polygons per numpy call: on each pixel row, the crossings of the edges that
# straddle it (half-open straddle rule from above, and from below for points on an edge)
# bound runs of pixels, compared with the integer columns directly (no rounding); a vertex
# on a pixel centre is added. Identical to skimage on 4000 random polygons with integer,
# half-integer, clipped and self-intersecting vertices (700 of them in
# tests/segment/test_tiles.py) and on the Nissl test images' predictions; painting 3000
# proposals on 1024^2 takes 0.5 s instead of 2.0 s.
_SCANLINE = True  # False: skimage per polygon (benchmarks/predict.py's baseline)
_SCAN_CHUNK = 256
_SCAN_SIDES = (32, 64, 128, 256)  # polygons are padded to the box of their size class


def _scan_masks(c: np.ndarray, shape: tuple[int, int]) -> list[tuple[int, int, np.ndarray]]:
    """(y0, x0, mask) of each closed polygon of ``c`` ((K, S, 2) as (x, y), float64): the
    pixels ``y0 + i, x0 + j`` with ``mask[i, j]``, clipped to ``shape``."""
    h, w = shape
    x, y = c[..., 0], c[..., 1]
    y0 = np.maximum(np.ceil(y.min(axis=1)), 0)
    x0 = np.maximum(np.ceil(x.min(axis=1)), 0)
    rows_k = np.minimum(np.floor(y.max(axis=1)), h - 1) - y0 + 1
    cols_k = np.minimum(np.floor(x.max(axis=1)), w - 1) - x0 + 1
    n_rows = max(int(rows_k.max(initial=0)), 1)
    n_cols = max(int(cols_k.max(initial=0)), 1)
    rows = (y0[:, None] + np.arange(n_rows))[:, :, None]                # (K, R, 1)
    cols = (x0[:, None] + np.arange(n_cols))[:, None, None, :]          # (K, 1, 1, W)
    xj, yj = np.roll(x, 1, axis=1)[:, None], np.roll(y, 1, axis=1)[:, None]
    xi_, yi_ = x[:, None], y[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        cross = xi_ + (xj - xi_) * (rows - yi_) / (yj - yi_)             # (K, R, S)
    mask = np.zeros((c.shape[0], n_rows, n_cols), bool)
    for straddle, closed_left in (((yi_ > rows) != (yj > rows), True),
                                  ((yi_ < rows) != (yj < rows), False)):
        pairs = int(straddle.sum(axis=2).max(initial=0)) // 2
        if not pairs:
            continue
        a = np.sort(np.where(straddle, cross, np.inf), axis=2)[..., :2 * pairs, None]
        lo, hi = a[:, :, 0::2], a[:, :, 1::2]                           # (K, R, P, 1)
        run = (cols >= lo) & (cols < hi) if closed_left else (cols > lo) & (cols <= hi)
        mask |= run.any(axis=2)
    on = (np.abs(x - np.round(x)) < 1e-12) & (np.abs(y - np.round(y)) < 1e-12)
    if on.any():
        k, s = np.nonzero(on)
        i = np.round(y[k, s]).astype(np.int64) - y0[k].astype(np.int64)
        j = np.round(x[k, s]).astype(np.int64) - x0[k].astype(np.int64)
        keep = (i >= 0) & (i < rows_k[k]) & (j >= 0) & (j < cols_k[k])
        mask[k[keep], i[keep], j[keep]] = True
    return [(int(y0[k]), int(x0[k]), mask[k, :max(int(rows_k[k]), 0), :max(int(cols_k[k]), 0)])
            for k in range(c.shape[0])]


def cell_masks(contours: np.ndarray, order: np.ndarray, shape: tuple[int, int],
               offset: float = HALF_PIXEL):
    """Yield ``(k, y0, x0, mask)`` for the contours ``order`` names, in that order: the pixels
    whose centres lie in ``contours[k]`` ((K, S, 2) as (x, y)) moved ``offset`` px outward
    (:func:`offset_contours`), as a boolean mask whose [0, 0] is pixel (y0, x0), clipped to
    ``shape``; the mask may be empty. Computed a few hundred at a time."""
    shape = (int(shape[0]), int(shape[1]))
    order = np.asarray(order, np.int64)
    if not _SCANLINE:
        from skimage.draw import polygon

        for k in order:
            c = offset_contours(contours[k][None], offset)[0] if offset else contours[k]
            rr, cc = polygon(c[:, 1], c[:, 0], shape=shape)
            y0, x0 = (int(rr.min()), int(cc.min())) if rr.size else (0, 0)
            mask = np.zeros((int(rr.max(initial=-1)) + 1 - y0, int(cc.max(initial=-1)) + 1 - x0)
                            if rr.size else (0, 0), bool)
            mask[rr - y0, cc - x0] = True
            yield int(k), y0, x0, mask
        return
    for start in range(0, order.size, _SCAN_CHUNK):
        idx = order[start:start + _SCAN_CHUNK]
        c = np.asarray(contours)[idx].astype(np.float64)
        if offset:
            c = offset_contours(c, offset).astype(np.float64)
        side = np.maximum(np.ptp(c[..., 0], axis=1), np.ptp(c[..., 1], axis=1))
        size_class = np.searchsorted(_SCAN_SIDES, side)
        found: list[Any] = [None] * idx.size
        for cls in np.unique(size_class):
            members = np.flatnonzero(size_class == cls)
            groups = [members] if cls < len(_SCAN_SIDES) else [[m] for m in members]
            for g in groups:
                for m, result in zip(g, _scan_masks(c[g], shape)):
                    found[m] = result
        for k, (y0, x0, mask) in zip(idx, found):
            yield int(k), y0, x0, mask


def contours_to_labels(contours: np.ndarray, scores: np.ndarray, shape: tuple[int, int], *,
                       score_thresh: float = 0.0, min_visible: float = 0.5,
                       offset: float = HALF_PIXEL, return_scores: bool = False):
    """Paint contours into a label map, best score first; overlaps go to the better cell.

    A proposal whose pixels are mostly (more than ``1 - min_visible``) taken already is
    dropped: this removes duplicates, e.g. the same cell found in two overlapping tiles.

    contours : (K, S, 2) polygon vertices as (x, y); scores : (K,).
    ``offset``: each polygon is moved this many pixels outward before the pixels whose centres
    it holds are filled; CPN contours run through boundary pixel centres, hence half a pixel
    (see :func:`offset_contours`); 0 fills the polygon as given.
    Returns (H, W) uint32 labels, ids 1..N in order of decreasing score, and with
    ``return_scores`` also each id's score ((N + 1,), index 0 = background = inf).
    Because painting is greedy in score order, the labels for a higher threshold ``t`` are
    exactly ``labels * (id_scores[labels] >= t)``: one painting serves every threshold.
    """
    labels = np.zeros(shape, np.uint32)
    painted = [np.inf]
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] >= score_thresh]
    for k, y0, x0, mask in cell_masks(contours, order, shape, offset):
        area = int(mask.sum())
        if area == 0:
            continue
        window = labels[y0:y0 + mask.shape[0], x0:x0 + mask.shape[1]]
        free = mask & (window == 0)
        if free.sum() < max(min_visible * area, 1):
            continue
        window[free] = len(painted)
        painted.append(float(scores[k]))
    return (labels, np.array(painted)) if return_scores else labels


Box = tuple[int, int, int, int]  # (y0, x0, y1, x1), end exclusive


class BoxIndex:
    """Boxes filed by the ``grid`` x ``grid`` px cells they cover, so the stored boxes that
    overlap a new one are found without looking at all of them."""

    def __init__(self, grid: int = 64) -> None:
        self.grid = grid
        self.boxes: list[Box] = []
        self._buckets: dict[tuple[int, int], list[int]] = {}

    def _cells(self, box: Box) -> list[tuple[int, int]]:
        g = self.grid
        return [(gy, gx) for gy in range(box[0] // g, (box[2] - 1) // g + 1)
                for gx in range(box[1] // g, (box[3] - 1) // g + 1)]

    def add(self, box: Box) -> int:
        """File ``box``; returns its index."""
        for cell in self._cells(box):
            self._buckets.setdefault(cell, []).append(len(self.boxes))
        self.boxes.append(box)
        return len(self.boxes) - 1

    def overlapping(self, box: Box):
        """``(index, window in box, window in the stored box)`` of every stored box that
        overlaps ``box``, in the order they were added; the windows are (rows, columns)
        slices of canvases the size of each box that cover their intersection."""
        for j in sorted({j for cell in self._cells(box) for j in self._buckets.get(cell, ())}):
            b = self.boxes[j]
            oy0, ox0 = max(box[0], b[0]), max(box[1], b[1])
            oy1, ox1 = min(box[2], b[2]), min(box[3], b[3])
            if oy0 < oy1 and ox0 < ox1:
                yield (j, (slice(oy0 - box[0], oy1 - box[0]), slice(ox0 - box[1], ox1 - box[1])),
                       (slice(oy0 - b[0], oy1 - b[0]), slice(ox0 - b[1], ox1 - b[1])))


class PaintedLabels:
    """The label image :func:`contours_to_labels` paints, without holding it in memory.

    A whole section at 1 um/px has ~10^10 pixels: its labels do not fit in RAM. The greedy
    painting is global (whether a proposal is kept depends on every better one it overlaps),
    so the decisions are made first, proposal by proposal in score order, each on a canvas
    the size of its bounding box onto which the kept better proposals that touch it are
    drawn; each kept cell keeps its bounding box and mask. Any window of the labels is then
    painted on demand from the kept cells that touch it. Every pixel, id and score equals
    :func:`contours_to_labels` with the same arguments; memory is that of the kept masks
    (~1 byte per cell pixel), not of the image.

    Slicing (``labels[y0:y1, x0:x1]``) returns a uint32 array; ``id_scores`` is as
    ``contours_to_labels(..., return_scores=True)`` returns it; ``n_cells`` the number of ids.
    """

    def __init__(self, contours: np.ndarray, scores: np.ndarray, shape: tuple[int, int], *,
                 score_thresh: float = 0.0, min_visible: float = 0.5,
                 offset: float = HALF_PIXEL, grid: int = 64):
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(np.uint32)
        self.ndim = 2
        kept = BoxIndex(grid)  # (y0, x0, y1, x1) of kept cells
        masks: list[np.ndarray] = []
        painted = [np.inf]
        order = np.argsort(-scores, kind="stable")
        order = order[scores[order] >= score_thresh]
        for k, y0, x0, mask in cell_masks(contours, order, self.shape, offset):
            area = int(mask.sum())
            if area == 0:
                continue
            box = (y0, x0, y0 + mask.shape[0], x0 + mask.shape[1])
            taken = np.zeros_like(mask)
            for j, here, there in kept.overlapping(box):
                taken[here] |= masks[j][there]
            free = int((mask & ~taken).sum())
            if free < max(min_visible * area, 1):
                continue
            kept.add(box)
            masks.append(mask)
            painted.append(float(scores[k]))
        self._boxes = np.array(kept.boxes, np.int64).reshape(-1, 4)
        self._masks = masks
        self.id_scores = np.array(painted)
        self.n_cells = len(masks)

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        ys, xs = key
        y0, y1, sy = ys.indices(self.shape[0])
        x0, x1, sx = xs.indices(self.shape[1])
        window = self.window(y0, x0, max(y0, y1), max(x0, x1))
        return window[::sy, ::sx] if sy != 1 or sx != 1 else window

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        full = self.window(0, 0, *self.shape)
        return full if dtype is None else full.astype(dtype)

    def window(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        """The labels of rows y0:y1 and columns x0:x1 (uint32)."""
        out = np.zeros((y1 - y0, x1 - x0), np.uint32)
        b = self._boxes
        touching = np.flatnonzero((b[:, 0] < y1) & (b[:, 2] > y0) & (b[:, 1] < x1)
                                  & (b[:, 3] > x0))
        for j in touching:  # in id order = score order: better cells first
            by0, bx0, by1, bx1 = (int(v) for v in b[j])
            oy0, ox0, oy1, ox1 = max(y0, by0), max(x0, bx0), min(y1, by1), min(x1, bx1)
            target = out[oy0 - y0:oy1 - y0, ox0 - x0:ox1 - x0]
            mask = self._masks[j][oy0 - by0:oy1 - by0, ox0 - bx0:ox1 - bx0] & (target == 0)
            target[mask] = j + 1
        return out


def balanced_tile(length: int, tile: int, overlap: int, *, multiple: int = 32) -> int:
    """The smallest tile (a multiple of ``multiple``, at most ``tile``) that covers
    ``length`` with as few tiles as ``tile`` needs, each overlapping by at least ``overlap``.

    Tiles of the largest size waste work where the last one sticks out: 2,048 px in tiles of
    1,024 with 96 overlap needs 3 tiles, i.e. 3,072 px computed; tiles of 768 cover it with
    3 as well, 2,304 px. ``length <= tile``: one tile of ``length``.
    """
    if length <= tile:
        return length
    count = math.ceil((length - overlap) / (tile - overlap))
    needed = math.ceil((length - overlap) / count) + overlap
    return min(tile, -(-needed // multiple) * multiple)


# A tile is blank when no 4 x 4 block of it differs from the mean of the 9 x 9 blocks (36 x 36
# px) around it by more than this share of the image's intensity range, in any channel, beyond
# what the tile's own noise makes blocks differ. The faintest annotated objects measured
# (docs/results.md, "Blank tiles") stand out by more.
EMPTY_CONTRAST = 0.03
_BLOCK, _WINDOW = 4, 9
# Block means of 16 pixels of white noise sigma spread by sigma / 4; the largest of ~65,000
# blocks of a 1024^2 tile lies ~4.4 of those from the mean: allow 6, i.e. 1.5 sigma.
_NOISE = 1.5


def _pixel_noise(tile: np.ndarray) -> np.ndarray:
    """Per-channel standard deviation of the pixel noise, from the median absolute difference
    of horizontal neighbours (every 4th row): edges and texture barely move a median."""
    rows = tile[::4]
    if rows.shape[1] < 2:
        return np.zeros(tile.shape[-1], np.float32)
    diff = np.abs(np.diff(rows, axis=1)).reshape(-1, tile.shape[-1])
    return (1.4826 / np.sqrt(2) * np.median(diff, axis=0)).astype(np.float32)


def blank_tile(tile: np.ndarray, contrast: float = EMPTY_CONTRAST) -> bool:
    """True if the (h, w[, C]) tile, intensities scaled to [0, 1] by the image's range, holds
    nothing with ``contrast`` against its surroundings: the mean of every 4 x 4 block is within
    ``contrast`` (plus 1.5 x the tile's pixel noise) of the mean of the 36 x 36 px around it.
    Block means average camera noise away; the local mean ignores slow shading and
    vignetting. ``contrast <= 0``: never."""
    if contrast <= 0:
        return False
    tile = np.asarray(tile, np.float32)
    if tile.ndim == 2:
        tile = tile[..., None]
    if tile.size == 0:
        return True
    # a last partial block repeats its edge pixels
    tile = np.pad(tile, ((0, -tile.shape[0] % _BLOCK), (0, -tile.shape[1] % _BLOCK), (0, 0)),
                  mode="edge")
    h, w = tile.shape[0] // _BLOCK, tile.shape[1] // _BLOCK
    blocks = tile.reshape(h, _BLOCK, w, _BLOCK, -1).mean((1, 3))
    local = uniform_filter(blocks, size=(_WINDOW, _WINDOW, 1), mode="reflect")
    allowed = contrast + _NOISE * _pixel_noise(tile)
    return bool(np.all(np.abs(blocks - local).max(axis=(0, 1)) <= allowed))


@dataclass
class TileCount:
    """Tiles seen by :func:`tiled_proposals`: predicted, blank (not predicted) and kept from a
    store (predicted by an earlier, stopped run); and the detections dropped as fainter than
    the detector's faint cut (:mod:`cellsynth.segment.faint`)."""

    predicted: int = 0
    blank: int = 0
    stored: int = 0
    faint: int = 0


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


class ProposalStore:
    """The proposals of finished tile rows of one image, on disk, so that a killed prediction
    of a whole section resumes where it stopped.

    ``folder`` holds ``key.json`` (what the proposals depend on: model, image, tiling) and one
    ``rowNNNNN.npz`` per finished row of tiles, each written atomically; it is made when the
    first row is done. A folder made for another key is removed first. Several processes
    may fill one store at once (``predict --part``: each its own rows).
    """

    def __init__(self, folder: str | os.PathLike, key: dict[str, Any]):
        import json
        import shutil

        self.folder = Path(folder)
        self._key = json.dumps(key, sort_keys=True, default=str)
        stored = self.folder / "key.json"
        # made for another model, image or tiling (one without key.json has no rows yet:
        # another process is making it)
        if self.folder.is_dir() and stored.is_file() and stored.read_text() != self._key:
            shutil.rmtree(self.folder, ignore_errors=True)  # (parts starting at once: both)

    def variant(self, name: str) -> ProposalStore:
        """A store beside this one for another pass over the same image (``FOLDER.name``),
        e.g. one per test-time-augmentation view."""
        import json

        return ProposalStore(self.folder.with_name(f"{self.folder.name}.{name}"),
                             {**json.loads(self._key), "variant": name})

    def _path(self, row: int) -> Path:
        return self.folder / f"row{row:05d}.npz"

    def load(self, row: int) -> tuple[np.ndarray, np.ndarray] | None:
        path = self._path(row)
        if not path.is_file():
            return None
        with np.load(path) as data:
            return data["contours"], data["scores"]

    def save(self, row: int, contours: np.ndarray, scores: np.ndarray) -> None:
        from cellsynth.io.files import atomic_path

        if not (self.folder / "key.json").is_file():  # made at the first row, not before
            self.folder.mkdir(parents=True, exist_ok=True)
            with atomic_path(self.folder / "key.json") as tmp:
                tmp.write_text(self._key)
        with atomic_path(self._path(row)) as tmp, open(tmp, "wb") as f:
            np.savez(f, contours=contours, scores=scores)



def tiled_proposals(image: Any, predictor: Predictor, *, tile: int = 512, overlap: int = 96,
                    batch: int = 4, read: Callable[[Any, slice, slice], np.ndarray] | None = None,
                    progress: Callable[[int], None] | None = None,
                    store: ProposalStore | None = None, empty_contrast: float = 0.0,
                    count: TileCount | None = None,
                    part: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cell proposals of a (H, W[, C]) image of any size, each owned by exactly one tile.

    Parameters
    ----------
    image : numpy array or lazy array-like (zarr) of shape (H, W) or (H, W, C).
    predictor : see ``Predictor``.
    read : turns ``image[ys, xs]`` into (h, w, C) float32 in [0, 1]; default casts.
    store : keeps each finished row of tiles; rows it holds are not predicted again.
    empty_contrast : tiles that :func:`blank_tile` finds blank at this contrast are not
        predicted (0: every tile is). A cell owned by a tile has its centre in the tile's core
        and so most of its body inside the tile: a blank tile owns no visible cell.
    count : if given, counts the tiles predicted, blank and kept from ``store``.
    part : (i, n): only the rows of tiles ``r`` with ``r % n == i`` (the others are neither
        predicted nor read from ``store``): one of ``n`` processes filling ``store``.

    Returns
    -------
    contours : (K, S, 2) float, (x, y) in image coordinates.
    scores : (K,) float.
    """
    height, width = int(image.shape[0]), int(image.shape[1])
    read = read or (lambda img, ys, xs: np.asarray(img[ys, xs], np.float32))
    ys0, xs0 = tile_origins(height, tile, overlap), tile_origins(width, tile, overlap)
    th, tw = min(tile, height), min(tile, width)
    contours: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    for row, y in enumerate(ys0):
        if part is not None and row % part[1] != part[0]:
            continue
        kept = store.load(row) if store is not None else None
        if kept is not None:
            contours.append(kept[0])
            scores.append(kept[1])
            if count is not None:
                count.stored += len(xs0)
            if progress is not None:
                progress(len(xs0))
            continue
        row_contours: list[np.ndarray] = []
        row_scores: list[np.ndarray] = []
        for b in range(0, len(xs0), batch):
            chunk = xs0[b:b + batch]
            tiles = [read(image, slice(y, y + th), slice(x, x + tw)) for x in chunk]
            full = [i for i, t in enumerate(tiles) if not blank_tile(t, empty_contrast)]
            if count is not None:
                count.predicted += len(full)
                count.blank += len(chunk) - len(full)
            found = predictor(np.stack([tiles[i] for i in full])) if full else []
            for x, (c, s) in zip([chunk[i] for i in full], found):
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
                row_contours.append(shifted)
                row_scores.append(np.asarray(s[own], np.float32))
            if progress is not None:
                progress(len(chunk))
        if row_contours:
            contours.append(np.concatenate(row_contours))
            scores.append(np.concatenate(row_scores))
        else:
            contours.append(np.zeros((0, 1, 2), np.float32))
            scores.append(np.zeros(0, np.float32))
        if store is not None:
            store.save(row, contours[-1], scores[-1])
    contours = [c for c in contours if len(c)]  # empty rows: their point count may differ
    scores = [s for s in scores if len(s)]
    if not contours:
        return np.zeros((0, 1, 2), np.float32), np.zeros(0, np.float32)
    return np.concatenate(contours), np.concatenate(scores)


def predict_tiled(image: Any, predictor: Predictor, *, score_thresh: float = 0.0,
                  **kwargs: Any) -> np.ndarray:
    """Instance labels (H, W) uint32 of an image of any size; see :func:`tiled_proposals`."""
    contours, scores = tiled_proposals(image, predictor, **kwargs)
    return contours_to_labels(contours, scores, (int(image.shape[0]), int(image.shape[1])),
                              score_thresh=score_thresh)
