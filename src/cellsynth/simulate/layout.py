"""Where a scene's structures go: vessels, candidate cells of every type and out-of-focus
blobs (steps 1-2 of :mod:`cellsynth.simulate.scene`), and which cells survive occlusion.

Layout only: shapes, positions, sizes and stains, no pixel of the image. All randomness comes
from the caller's ``numpy.random.Generator``, drawn in the order the scene has always drawn it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cellsynth.simulate.presets import CellType, SimulationConfig
from cellsynth.simulate.shapes import Shape, polar_shape, radius_profiles

__all__ = ["Blob", "Cell", "candidates", "patch_slices", "place", "stain_like_covered",
           "vessels"]


@dataclass
class Cell:
    kind: CellType
    y: int               # image row of the patch centre
    x: int
    radius_px: float
    shape: Shape
    stain: float
    nucleus: tuple[float, float, float] | None    # (dy, dx, radius_px)
    nucleolus: tuple[float, float, float] | None  # (dy, dx, radius_px)


@dataclass
class Blob:
    """An out-of-focus, unlabeled cell: only its position, size and stain matter."""

    y: float
    x: float
    radius_px: float
    stain: float
    defocus_px: float


def patch_slices(cell: Cell, height: int, width: int):
    """Image slices and patch slices of the part of a cell's patch inside the image."""
    h, w = cell.shape.mask.shape
    y0, x0 = cell.y - cell.shape.cy, cell.x - cell.shape.cx
    iy0, ix0 = max(y0, 0), max(x0, 0)
    iy1, ix1 = min(y0 + h, height), min(x0 + w, width)
    if iy0 >= iy1 or ix0 >= ix1:
        return None
    image_sl = (slice(iy0, iy1), slice(ix0, ix1))
    patch_sl = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
    return image_sl, patch_sl


def vessels(config: SimulationConfig, rng: np.random.Generator, shape: tuple[int, int]):
    """Vessel lumen field (1 outside, ``lumen`` inside) and endothelial nuclei candidates."""
    height, width = shape
    px = config.pixel_size_um
    vc = config.vessels
    lumen = np.ones(shape, np.float32)
    area_100 = height * width * px * px / 1e4
    endothelial = CellType("endothelial", density=0.0, diameter_um=(3.0, 5.0), shape="elongated",
                           elongation=(2.5, 4.0), irregularity=0.05, stain=vc.endothelial_stain,
                           texture=0.15, edge_um=0.3, annotated=vc.endothelial_annotated)
    walls = []
    for _ in range(rng.poisson(vc.density * area_100)):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        angle = rng.uniform(0, np.pi)
        half_len = rng.uniform(*vc.length_um) / px / 2
        radius = rng.uniform(*vc.width_um) / px / 2
        dy, dx = np.sin(angle), np.cos(angle)
        reach = half_len + radius + 2
        y0, y1 = int(max(cy - reach, 0)), int(min(cy + reach, height))
        x0, x1 = int(max(cx - reach, 0)), int(min(cx + reach, width))
        if y0 < y1 and x0 < x1:
            yy, xx = np.ogrid[y0:y1, x0:x1]
            along = np.clip((xx - cx) * dx + (yy - cy) * dy, -half_len, half_len)
            dist = np.hypot(xx - (cx + along * dx), yy - (cy + along * dy))
            inside = np.clip(radius - dist + 0.5, 0.0, 1.0).astype(np.float32)
            lumen[y0:y1, x0:x1] *= 1.0 - (1.0 - vc.lumen) * inside
        n_wall = rng.poisson(vc.endothelial_per_100um * 2 * half_len * px / 100)
        for _ in range(n_wall):
            t = rng.uniform(-half_len, half_len)
            side = radius * (1 if rng.random() < 0.5 else -1)
            walls.append((cy + t * dy + side * dx, cx + t * dx - side * dy, angle))
    return lumen, endothelial, np.asarray(walls, np.float64).reshape(-1, 3)


def _nuclei(rng: np.random.Generator, kind: CellType, radius: np.ndarray, px: float):
    """Nucleus and nucleolus (dy, dx, r) per cell, or None, drawn for all cells of a type."""
    n = radius.size
    has_nucleus = rng.random(n) < kind.nucleus_prob
    rn = radius * rng.uniform(*kind.nucleus_scale, n)
    off = (radius - rn)[:, None] * rng.uniform(-0.5, 0.5, (n, 2))
    has_nucleolus = rng.random(n) < kind.nucleolus_prob
    rnn = max(kind.nucleolus_um / px / 2, 0.7)
    # A nucleolus sits inside the nucleus (or near the centre if the nucleus is not visible).
    base_r = np.where(has_nucleus, rn, 0.4 * radius)
    base = np.where(has_nucleus[:, None], off, 0.0)
    off2 = base + np.maximum(base_r - rnn, 0.0)[:, None] * rng.uniform(-0.5, 0.5, (n, 2))
    nuclei = [(o[0], o[1], r) if h else None for h, o, r in zip(has_nucleus, off, rn)]
    nucleoli = [(o[0], o[1], rnn) if h else None for h, o in zip(has_nucleolus, off2)]
    return nuclei, nucleoli


def _draw_cells(config: SimulationConfig, rng: np.random.Generator, kind: CellType,
                ys: np.ndarray, xs: np.ndarray, diameters_um: np.ndarray, angles: np.ndarray
                ) -> list[Cell]:
    """Shapes and appearance parameters for cells of one type at the given positions."""
    n = ys.size
    px = config.pixel_size_um
    radius = diameters_um / px / 2
    profiles = radius_profiles(rng, n, kind=kind.shape, irregularity=kind.irregularity,
                               apex=kind.apex)
    elongation = rng.uniform(*kind.elongation, n)
    offsets = rng.uniform(-0.5, 0.5, (n, 2))
    stain = rng.uniform(*kind.stain, n) * np.exp(
        config.staining.cell_variation * rng.standard_normal(n))
    nuclei, nucleoli = _nuclei(rng, kind, radius, px)
    return [
        Cell(kind, int(round(ys[i])), int(round(xs[i])), float(radius[i]),
              polar_shape(radius[i], profiles[i], elongation=elongation[i], angle=angles[i],
                          offset=offsets[i]),
              float(stain[i]), nuclei[i], nucleoli[i])
        for i in range(n)
    ]


def candidates(config: SimulationConfig, rng: np.random.Generator, shape: tuple[int, int],
                lumen: np.ndarray, endothelial: CellType, walls: np.ndarray
                ) -> tuple[list[Cell], list[Blob], float]:
    """Labeled candidate cells (in stacking order), unlabeled blobs, and the layer normal."""
    height, width = shape
    px = config.pixel_size_um
    lay = config.layers
    normal = rng.uniform(0, 2 * np.pi)  # direction across the bands (towards the pia)
    period_px = rng.uniform(*lay.period_um) / px
    phase = rng.uniform()
    area_100 = height * width * px * px / 1e4
    jitter = np.deg2rad(lay.orientation_jitter_deg)
    cells: list[Cell] = []
    blobs: list[Blob] = []
    for kind in config.cells:
        # Sample in a margin around the image so cells cut by the border appear too.
        margin = kind.diameter_um[1] / px / 2
        ext_area = (height + 2 * margin) * (width + 2 * margin) / (height * width)
        n = rng.poisson(kind.density * area_100 * ext_area * (1 + lay.density_contrast))
        ys = rng.uniform(-margin, height + margin, n)
        xs = rng.uniform(-margin, width + margin, n)
        band = np.sin(2 * np.pi * ((xs * np.cos(normal) + ys * np.sin(normal)) / period_px
                                   + phase + kind.layer_phase))
        keep = rng.random(n) * (1 + lay.density_contrast) < 1 + lay.density_contrast * band
        diameters = rng.uniform(*kind.diameter_um, n) * (1 + lay.size_contrast * band)
        ys, xs, diameters = ys[keep], xs[keep], diameters[keep]
        if not kind.labeled:
            stain = rng.uniform(*kind.stain, ys.size)
            blobs += [Blob(y, x, d / px / 2, s, kind.defocus_um / px)
                      for y, x, d, s in zip(ys, xs, diameters, stain)]
            continue
        iy = np.clip(ys, 0, height - 1).astype(int)
        ix = np.clip(xs, 0, width - 1).astype(int)
        outside_vessels = lumen[iy, ix] >= 0.5  # no cell bodies inside vessel lumina
        ys, xs, diameters = ys[outside_vessels], xs[outside_vessels], diameters[outside_vessels]
        angles = (normal + jitter * rng.standard_normal(ys.size) if kind.shape == "pyramidal"
                  else rng.uniform(0, 2 * np.pi, ys.size))
        cells += _draw_cells(config, rng, kind, ys, xs, diameters, angles)
    if len(walls):
        diameters = rng.uniform(*endothelial.diameter_um, len(walls))
        cells += _draw_cells(config, rng, endothelial, walls[:, 0], walls[:, 1], diameters,
                             walls[:, 2])
    order = rng.permutation(len(cells))
    return [cells[i] for i in order], blobs, normal


def place(cells: list[Cell], shape: tuple[int, int], max_occlusion: float
           ) -> tuple[np.ndarray, list[Cell], np.ndarray]:
    """Stack labeled cells in order; return the label map, the kept cells (id = index+1) and,
    per pixel, the id of the cell directly beneath the top one (0: none)."""
    labels = np.zeros(shape, np.int32)
    beneath = np.zeros(shape, np.int32)
    visible = np.zeros(len(cells) + 1, np.int64)  # visible area per id
    minimum = np.zeros(len(cells) + 1, np.float64)  # least visible area allowed per id
    kept: list[Cell] = []
    for cell in cells:
        slices = patch_slices(cell, *shape)
        if slices is None:
            continue
        image_sl, patch_sl = slices
        mask = cell.shape.mask[patch_sl]
        region = labels[image_sl]
        under = region[mask]
        if under.size == 0:
            continue
        covered = under[under > 0]
        if covered.size:
            counts = np.bincount(covered)
            ids = np.flatnonzero(counts)
            counts = counts[ids]
            left = visible[ids] - counts
            if np.any(left < minimum[ids]):
                continue
            visible[ids] = left
        kept.append(cell)
        new_id = len(kept)
        beneath[image_sl][mask] = under
        region[mask] = new_id
        visible[new_id] = under.size
        minimum[new_id] = (1.0 - max_occlusion) * under.size
    return labels, kept, beneath


def stain_like_covered(kept: list[Cell], beneath: np.ndarray, labels: np.ndarray,
                        kin: float) -> None:
    """Move the stain of every cell that covers others ``kin`` of the way towards the stain
    of the one it covers most (in place; from the stains as drawn, so a chain of covering
    cells does not compound). No random numbers are drawn."""
    top, under = labels.ravel(), beneath.ravel()
    pairs = np.flatnonzero((top > 0) & (under > 0))
    if pairs.size == 0:
        return
    n = len(kept) + 1
    keys, counts = np.unique(top[pairs].astype(np.int64) * n + under[pairs],
                             return_counts=True)
    tops, unders = np.divmod(keys, n)
    order = np.lexsort((counts, tops))  # per top id, its most covered cell last
    last = np.r_[tops[order][1:] != tops[order][:-1], True]
    drawn = [c.stain for c in kept]
    for i, j in zip(tops[order][last], unders[order][last]):
        kept[i - 1].stain = drawn[i - 1] + kin * (drawn[j - 1] - drawn[i - 1])
