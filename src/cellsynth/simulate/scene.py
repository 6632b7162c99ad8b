"""Compose one simulated image and its exact instance label map.

Order of work (all randomness from one ``numpy.random.Generator``):

0. per-image variation (heterogeneous datasets only): magnification, density and brightness;
1. layout: layer bands, vessels, and candidate cells of every type (Poisson counts, density
   and size modulated by the bands);
2. occlusion: candidates are stacked in random order; a cell is kept only if every cell it
   covers keeps at least ``1 - max_occlusion`` of its area. The label map records, per pixel,
   the top-most labeled cell; each label is then cut to one 4-connected piece;
3. appearance: neuropil/stroma texture, pale halos, fibres, vessel lumina, out-of-focus
   (unlabeled) cells and, in H&E, unlabelled cell bodies and clearings form the background;
   each labeled cell is painted *only where the final label map holds its id*, so labels
   are exact by construction;
4. optics: uneven staining, colour model, PSF blur, camera noise, 8-bit quantisation.

Steps 1-2 (where things go) live in :mod:`cellsynth.simulate.layout`; this module paints.

On request (``classes=True``) it also returns a class map of what it drew at each pixel
(:data:`CLASSES`), for a refiner that must keep labelled cells cells and unlabelled
structures unlabelled; drawing it takes no random numbers, so image and labels are the same
with or without it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from scipy import ndimage as ndi
from skimage import measure
from skimage.draw import line_aa

from cellsynth.simulate import layout
from cellsynth.simulate.layout import Blob, Cell
from cellsynth.simulate.optics import add_camera_noise, blur, to_intensity
from cellsynth.simulate.presets import SimulationConfig
from cellsynth.simulate.texture import band_noise, gaussian_blur_fft, smooth_field, upsample

__all__ = ["render_scene", "CLASSES"]

# The class map's values (uint8). Where structures overlap, a labelled cell wins, then a vessel
# lumen (it is drawn over everything but cells), then an out-of-focus blob, then a fibre.
CLASSES = {0: "background", 1: "labelled cell", 2: "unlabelled cell (out of focus, glia)",
           3: "vessel lumen", 4: "fibre"}
_CELL, _BLOB, _VESSEL, _FIBRE = 1, 2, 3, 4
_FIBRE_MIN = 0.25  # of a fibre's antialiased line weight: thinner fringes are background

_MIN_AREA_PX = 6  # smaller visible remnants (slivers at the border) are dropped from labels


def _one_piece_per_label(labels: np.ndarray) -> np.ndarray:
    """Keep the largest 4-connected piece of every label, drop tiny remnants, renumber 1..N.

    Returns the old id of every new id (index 0 = background).
    """
    pieces, n_pieces = measure.label(labels, background=0, connectivity=1, return_num=True)
    owner = np.zeros(n_pieces + 1, np.int64)
    owner[pieces.ravel()] = labels.ravel()
    sizes = np.bincount(pieces.ravel(), minlength=n_pieces + 1)
    sizes[0] = 0
    # Largest piece of each label: sort pieces by (label, size) and take the last per label.
    order = np.lexsort((sizes, owner))
    last = np.r_[owner[order][1:] != owner[order][:-1], True]
    best = order[last]
    best = best[(owner[best] > 0) & (sizes[best] >= _MIN_AREA_PX)]
    new_id = np.zeros(n_pieces + 1, np.int32)
    new_id[best] = np.arange(1, best.size + 1, dtype=np.int32)
    labels[...] = new_id[pieces]
    return owner[best]


def _defocused(blobs: list[Blob], shape: tuple[int, int]) -> np.ndarray:
    """Out-of-focus cells as Gaussian blobs: impulses blurred once per size class.

    Blobs are at least a few pixels wide, so they are drawn on a grid up to 4x coarser and
    interpolated up, which costs a fraction of a full-size FFT.
    """
    sigmas = np.array([np.hypot(b.radius_px / 1.4, b.defocus_px) for b in blobs])
    step = int(np.clip(sigmas.min() // 2, 1, 4))
    coarse_shape = (-(-shape[0] // step), -(-shape[1] // step))
    classes = (sigmas > np.median(sigmas)).astype(int)
    coarse = np.zeros(coarse_shape, np.float32)
    for c in (0, 1):
        members = np.flatnonzero(classes == c)
        if members.size == 0:
            continue
        sigma = float(np.median(sigmas[members]))
        impulses = np.zeros(coarse_shape, np.float32)
        for i in members:
            b = blobs[i]
            iy, ix = int(b.y) // step, int(b.x) // step
            if 0 <= b.y < shape[0] and 0 <= b.x < shape[1]:
                # Peak of a unit impulse blurred with sigma s is 1 / (2 pi s^2).
                impulses[iy, ix] += b.stain * 2 * np.pi * (sigma / step) ** 2
        coarse += gaussian_blur_fft(impulses, sigma / step)
    return coarse if step == 1 else upsample(coarse, shape)


def _background(config: SimulationConfig, rng: np.random.Generator, labels: np.ndarray,
                lumen: np.ndarray, blobs: list[Blob], normal_hint: float):
    """Main-stain and counterstain density of everything that is not a labeled cell."""
    height, width = labels.shape
    px = config.pixel_size_um
    bgc = config.background
    texture = band_noise(rng, labels.shape, (bgc.grain_um / px, bgc.mottle_um / px), (1.0, 0.8))
    main = rng.uniform(*bgc.stain) * np.clip(1.0 + bgc.texture * texture, 0.0, None)
    if bgc.halo > 0:
        near = ndi.gaussian_filter((labels > 0).astype(np.float32), bgc.halo_um / px)
        main *= 1.0 - bgc.halo * np.clip(2.0 * near, 0.0, 1.0)
    area_100 = height * width * px * px / 1e4
    n_fibres = rng.poisson(bgc.fibres * area_100)
    fibres = None
    if n_fibres:
        fibres = np.zeros(labels.shape, np.float32)
        for _ in range(n_fibres):
            y, x = rng.uniform(0, height), rng.uniform(0, width)
            angle = normal_hint + 0.4 * rng.standard_normal()
            length = rng.uniform(*bgc.fibre_length_um) / px
            y1, x1 = y + length * np.sin(angle), x + length * np.cos(angle)
            rr, cc, val = line_aa(int(y), int(x), int(y1), int(x1))
            ok = (rr >= 0) & (rr < height) & (cc >= 0) & (cc < width)
            fibres[rr[ok], cc[ok]] += val[ok] * bgc.fibre_stain * rng.uniform(0.5, 1.5)
        main += blur(fibres, 0.4 / px)
        fibres /= max(bgc.fibre_stain, 1e-12)  # line weight x the per-fibre factor
    if blobs:
        main += _defocused(blobs, labels.shape)
    main *= lumen
    counter = None
    if bgc.counterstain[1] > 0:
        stroma = band_noise(rng, labels.shape, (bgc.grain_um / px, 3 * bgc.mottle_um / px),
                            (0.6, 1.0))
        counter = (rng.uniform(*bgc.counterstain)
                   * np.clip(1.0 + bgc.texture * stroma, 0.0, None) * lumen)
    return main.astype(np.float32), counter, fibres


_CLEAR = 0.9  # share of the stain a clearing (perinuclear rim, vacuole) washes out


def _bodies_and_clearings(config: SimulationConfig, rng: np.random.Generator,
                          labels: np.ndarray, main: np.ndarray, counter: np.ndarray | None
                          ) -> None:
    """Unlabelled structures of H&E tissue, drawn into the stain fields in place.

    * cell bodies: the cytoplasm around a share (``bodies``) of the labelled nuclei, plus
      bodies cut beside their nucleus (``free_bodies``, no nucleus, no label). A body is the
      region nearer to its nucleus than to any other, up to ``body_um`` beyond it, with a
      wobbly outline; it adds counterstain, and ``membrane`` main stain along its outline
      and where two bodies meet. This is what a detector must learn is *not* a nucleus.
    * clearings: a clear rim around a share (``clearing``) of the nuclei ("fried-egg" cells,
      retraction) and clear round vacuoles, where both stains are mostly washed out.

    Nuclei are painted afterwards, so labels stay exact. Draws no random numbers when all
    four amounts are 0, so presets without these structures render as before.
    """
    bgc = config.background
    if not (bgc.bodies or bgc.free_bodies or bgc.clearing or bgc.vacuoles):
        return
    height, width = labels.shape
    px = config.pixel_size_um
    area_100 = height * width * px * px / 1e4
    n = int(labels.max()) + 1
    target = main if counter is None else counter
    if bgc.bodies or bgc.free_bodies:
        shows = np.r_[False, rng.random(n - 1) < bgc.bodies]
        seeds = np.where(shows[labels], labels, 0)
        n_free = rng.poisson(bgc.free_bodies * area_100)
        fy, fx = rng.integers(0, height, n_free), rng.integers(0, width, n_free)
        seeds[fy, fx] = n + np.arange(n_free)
        reach = (rng.uniform(*bgc.body_um, n + n_free) / px).astype(np.float32)
        # A free body grows from a point: give it a nucleus' radius more.
        nucleus = next(c for c in config.cells if c.labeled)
        reach[n:] += np.mean(nucleus.diameter_um) / px / 2
        stain = rng.uniform(*bgc.body_stain, n + n_free).astype(np.float32)
        wobble = 1.0 + 0.3 * band_noise(rng, labels.shape, (1.5 / px, 4.0 / px), (0.6, 1.0))
        grain = np.clip(1.0 + bgc.texture * band_noise(rng, labels.shape, (bgc.grain_um / px,)),
                        0.0, None)
        if seeds.any():
            dist, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
            owner = seeds[iy, ix]
            edge = reach[owner] * wobble - dist.astype(np.float32)  # > 0 inside a body
            inside = np.clip(edge + 0.5, 0.0, 1.0) * (owner > 0)
            target += stain[owner] * inside * grain
            if bgc.membrane:
                # Outline: the last ~0.5 um inside a body, and where two bodies meet.
                rim = np.exp(-((edge * px / 0.5) ** 2)) * (edge > -0.5)
                meet = np.zeros(labels.shape, bool)
                meet[:, 1:] |= owner[:, 1:] != owner[:, :-1]
                meet[1:, :] |= owner[1:, :] != owner[:-1, :]
                rim = np.maximum(rim, meet * inside)
                main += bgc.membrane * rim.astype(np.float32) * (labels == 0)
    clear = np.zeros(labels.shape, np.float32)
    if bgc.clearing and n > 1:
        rims = np.r_[False, rng.random(n - 1) < bgc.clearing]
        width_px = (rng.uniform(*bgc.clearing_um, n) / px).astype(np.float32)
        dist, (iy, ix) = ndi.distance_transform_edt(labels == 0, return_indices=True)
        nearest = labels[iy, ix]
        # Retraction tears the rim open on one side more than the other: a smooth random
        # field (mean 1/2) decides how much of the rim is clear at each point.
        torn = np.clip(0.5 + band_noise(rng, labels.shape, (1.0 / px,)), 0.0, 1.0)
        clear = np.clip(width_px[nearest] - dist + 0.5, 0.0, 1.0) * rims[nearest] * torn
    for _ in range(rng.poisson(bgc.vacuoles * area_100)):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(*bgc.vacuole_um) / px / 2
        y0, y1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, height)
        x0, x1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, width)
        if y0 < y1 and x0 < x1:
            yy, xx = np.ogrid[y0:y1, x0:x1]
            hole = np.clip(r - np.hypot(yy - cy, xx - cx) + 0.5, 0.0, 1.0)
            np.maximum(clear[y0:y1, x0:x1], hole, out=clear[y0:y1, x0:x1])
    if clear.any():
        keep = (1.0 - _CLEAR * clear * (labels == 0)).astype(np.float32)
        main *= keep
        if counter is not None:
            counter *= keep


def _drop_unannotated(labels: np.ndarray, cells: list[Cell]) -> np.ndarray | None:
    """Take the cells of types with ``annotated: false`` out of ``labels`` (in place; the
    others keep their order, renumbered 1..N) once they are painted. Returns where they
    were, or None when every cell is annotated (then nothing changes)."""
    hidden = np.array([not c.kind.annotated for c in cells], bool)
    if not hidden.any():
        return None
    where = np.r_[False, hidden][labels]
    lut = np.zeros(len(cells) + 1, labels.dtype)
    lut[1:][~hidden] = np.arange(1, int((~hidden).sum()) + 1)
    labels[...] = lut[labels]
    return where


def _class_map(labels: np.ndarray, lumen: np.ndarray, blobs: list[Blob],
               fibres: np.ndarray | None, unannotated: np.ndarray | None = None,
               lumen_floor: float = 0.0) -> np.ndarray:
    """What was drawn at each pixel (:data:`CLASSES`); takes no random numbers.

    Cell bodies around nuclei and clearings count as background: they are stroma to a
    nucleus detector. Cells drawn in focus but not annotated (``unannotated``) are
    unlabelled cells. A vessel is where the lumen field lies more than halfway from 1 (no
    lumen) to ``lumen_floor`` (the preset's ``vessels.lumen``, its value on the axis)."""
    height, width = labels.shape
    classes = np.zeros(labels.shape, np.uint8)
    if fibres is not None:
        classes[fibres >= _FIBRE_MIN] = _FIBRE
    for b in blobs:  # the blob's in-focus body, as big as the cell it is
        r = b.radius_px
        y0, y1 = max(int(b.y - r), 0), min(int(b.y + r) + 2, height)
        x0, x1 = max(int(b.x - r), 0), min(int(b.x + r) + 2, width)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.ogrid[y0:y1, x0:x1]
        classes[y0:y1, x0:x1][(yy - b.y) ** 2 + (xx - b.x) ** 2 <= r * r] = _BLOB
    # (a fixed 0.5 missed every vessel of a preset whose lumen keeps half the background,
    # as nissl's does: its class maps held no vessel before 2026-12-07)
    classes[lumen < 0.5 * (1.0 + lumen_floor)] = _VESSEL
    if unannotated is not None:
        classes[unannotated] = _BLOB
    classes[labels > 0] = _CELL
    return classes


def _paint_cells(config: SimulationConfig, rng: np.random.Generator, main: np.ndarray,
                 labels: np.ndarray, cells: list[Cell], beneath: np.ndarray | None = None
                 ) -> None:
    """Paint every labeled cell where (and only where) the label map holds its id.

    The per-cell loop only scatters each cell's normalised radius into a full-size map and
    collects its parameters in tables indexed by label id; the appearance (soft edge,
    granules, nucleus, nucleolus) is then computed for all labeled pixels at once.

    A cell's soft edge fades towards what lies under it: the neuropil, or where it covers
    another cell (``beneath``, the id directly under each pixel's top cell; None: nowhere)
    the covered cell as painted there, by ``1 - config.seam`` (1: the neuropil everywhere, a
    pale seam between the two; 0: the cell beneath, no seam).
    """
    if not cells:
        return
    height, width = labels.shape
    px = config.pixel_size_um
    granules = band_noise(rng, labels.shape, (0.35 / px, 1.0 / px), (1.0, 0.6))
    n = len(cells) + 1
    far = np.float32(1e6)  # centre of an absent nucleus: never within reach
    stain, texture, sharpness, dome = (np.zeros(n, np.float32) for _ in range(4))
    nucleus = np.full((n, 4), [far, far, 0, 1], np.float32)    # y, x, radius, relative stain
    nucleolus = np.full((n, 4), [far, far, 0, 0], np.float32)  # y, x, radius, absolute stain
    seamless = beneath is not None and bool(beneath.any())
    rho = np.ones(labels.shape, np.float32)
    rho_beneath = np.ones(labels.shape, np.float32) if seamless else None
    for new_id, cell in enumerate(cells, start=1):
        image_sl, patch_sl = layout.patch_slices(cell, height, width)
        visible = labels[image_sl] == new_id
        rho[image_sl][visible] = cell.shape.rho[patch_sl][visible]
        if seamless:
            covered = beneath[image_sl] == new_id
            rho_beneath[image_sl][covered] = cell.shape.rho[patch_sl][covered]
        kind = cell.kind
        stain[new_id], texture[new_id] = cell.stain, kind.texture
        sharpness[new_id] = cell.radius_px / max(kind.edge_um / px, 0.5)
        dome[new_id] = kind.dome
        if cell.nucleus is not None:
            dy, dx, rn = cell.nucleus
            nucleus[new_id] = (cell.y + dy, cell.x + dx, rn, kind.nucleus_stain)
        if cell.nucleolus is not None:
            dy, dx, rnn = cell.nucleolus
            nucleolus[new_id] = (cell.y + dy, cell.x + dx, rnn,
                                 cell.stain * kind.nucleolus_stain)

    def painted(ids: np.ndarray, index: np.ndarray, r: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        """(body stain, edge weight) of the cells ``ids`` at the flat pixels ``index``, whose
        normalised radii in those cells are ``r``."""
        ys, xs = np.divmod(index, width)
        ys, xs = ys.astype(np.float32), xs.astype(np.float32)
        weight = np.clip(0.5 + (1.0 - r) * sharpness[ids], 0.0, 1.0)
        body = stain[ids] * (1.0 + texture[ids] * granules.reshape(-1)[index])
        if dome.any():  # 1 - rho^2 has mean 1/2 over the disc: the mean is kept
            d = dome[ids]
            body *= 1.0 - d + d * 2.0 * np.clip(1.0 - r * r, 0.0, 1.0)
        ny, nx, nr, nstain = nucleus[ids].T
        w_n = np.clip(0.5 + nr - np.hypot(ys - ny, xs - nx), 0.0, 1.0)
        body *= 1.0 - (1.0 - nstain) * w_n
        ny, nx, nr, nstain = nucleolus[ids].T
        w_nn = np.clip(0.5 + nr - np.hypot(ys - ny, xs - nx), 0.0, 1.0)
        body += (nstain - body) * w_nn
        return body, weight

    index = np.flatnonzero(labels)
    body, weight = painted(labels.reshape(-1)[index], index, rho.reshape(-1)[index])
    flat = main.reshape(-1)  # a view: main is contiguous
    background = flat[index]
    if seamless:  # where a cell covers another, its edge fades partly into that one
        ids_beneath = beneath.reshape(-1)[index]
        over = np.flatnonzero(ids_beneath)
        under, w_under = painted(ids_beneath[over], index[over],
                                 rho_beneath.reshape(-1)[index[over]])
        below = background[over] + (under - background[over]) * w_under
        background[over] += (1.0 - config.seam) * (below - background[over])
    flat[index] = background + (body - background) * weight


def _log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    low, high = bounds
    return low if low == high else float(np.exp(rng.uniform(np.log(low), np.log(high))))


def _vary(config: SimulationConfig, rng: np.random.Generator) -> SimulationConfig:
    """The config of one image: magnification, density, brightness, camera noise and PSF
    width drawn per image."""
    var = config.variation
    if not var.active:
        return config  # draws nothing: configs without variation render as before
    zoom, density, gain = (_log_uniform(rng, r) for r in (var.zoom, var.density,
                                                           var.brightness))
    density *= zoom ** var.zoom_density_exponent

    def scale(bounds: tuple[float, float]) -> tuple[float, float]:
        return bounds[0] * gain, bounds[1] * gain

    cells = tuple(replace(c, density=c.density * density, stain=scale(c.stain))
                  for c in config.cells)
    background = replace(config.background, stain=scale(config.background.stain),
                         counterstain=scale(config.background.counterstain),
                         fibre_stain=config.background.fibre_stain * gain,
                         body_stain=scale(config.background.body_stain),
                         membrane=config.background.membrane * gain,
                         free_bodies=config.background.free_bodies * density)
    vessels = replace(config.vessels, endothelial_stain=scale(config.vessels.endothelial_stain))
    # drawn after the others (a range of (1, 1) draws nothing), so configs without these
    # ranges draw their images as before
    noise, psf = (_log_uniform(rng, r) for r in (var.noise, var.blur))
    # A lower magnification comes with a lower aperture: the PSF keeps its width in pixels.
    optics = replace(config.optics, blur_um=config.optics.blur_um * psf / zoom,
                     halo_um=config.optics.halo_um * psf / zoom,
                     shot_noise=config.optics.shot_noise * noise,
                     read_noise=config.optics.read_noise * noise)
    return replace(config, pixel_size_um=config.pixel_size_um / zoom, cells=cells,
                   background=background, vessels=vessels, optics=optics)


def _psf(optics, px: float):
    """The point spread function as a function of a stain field: a Gaussian of
    ``optics.blur_um``, and with ``optics.halo`` that fraction of the light spread by a wide
    Gaussian of ``optics.halo_um`` (out-of-focus haze)."""
    sigma, halo = optics.blur_um / px, optics.halo

    def apply(field: np.ndarray) -> np.ndarray:
        sharp = blur(field, sigma)
        if not halo:
            return sharp
        return (1 - halo) * sharp + halo * blur(field, optics.halo_um / px)
    return apply


def render_scene(config: SimulationConfig, shape: tuple[int, int], rng: np.random.Generator,
                 *, classes: bool = False) -> tuple[np.ndarray, ...]:
    """Draw one image and its instance labels (and, with ``classes``, its class map).

    Returns
    -------
    image : (H, W) uint8 (gray, fluo) or (H, W, 3) uint8 (violet, he).
    labels : (H, W) uint16, 0 = background, ids 1..N; each id one 4-connected region.
    classes : (H, W) uint8 of :data:`CLASSES`, only if ``classes`` is true.
    """
    config = _vary(config, rng)
    height, width = shape
    px = config.pixel_size_um
    lumen, endothelial, walls = layout.vessels(config, rng, shape)
    candidates, blobs, normal = layout.candidates(config, rng, shape, lumen, endothelial, walls)
    labels, kept, beneath = layout.place(candidates, shape, config.max_occlusion)
    if config.kin_stain > 0:
        layout.stain_like_covered(kept, beneath, labels, config.kin_stain)
    old_ids = _one_piece_per_label(labels)
    cells = [kept[i - 1] for i in old_ids]
    if config.seam < 1.0:  # (the map beneath is painted only then: ids as the labels')
        renumber = np.zeros(len(kept) + 1, np.int32)  # (a dropped remnant beneath: none)
        renumber[old_ids] = np.arange(1, len(old_ids) + 1, dtype=np.int32)
        beneath = np.where(labels > 0, renumber[beneath], 0)
    else:
        beneath = None
    main, counter, fibres = _background(config, rng, labels, lumen, blobs, normal)
    _bodies_and_clearings(config, rng, labels, main, counter)
    _paint_cells(config, rng, main, labels, cells, beneath)
    unannotated = _drop_unannotated(labels, cells)
    field = np.exp(config.staining.unevenness
                   * smooth_field(rng, shape, config.staining.scale_um / px))
    main *= field
    if counter is not None:
        counter *= field
    psf = _psf(config.optics, px)
    intensity = to_intensity(psf(main), None if counter is None else psf(counter), config.color,
                             main_vector=config.staining.main_vector,
                             counter_vector=config.staining.counter_vector)
    intensity = add_camera_noise(rng, intensity, shot=config.optics.shot_noise,
                                 read=config.optics.read_noise)
    image = np.rint(intensity * 255.0).astype(np.uint8)
    if labels.max() > np.iinfo(np.uint16).max:
        raise ValueError("more than 65535 cells in one image; use smaller images")
    if classes:
        return image, labels.astype(np.uint16), _class_map(labels, lumen, blobs, fibres,
                                                           unannotated, config.vessels.lumen)
    return image, labels.astype(np.uint16)
