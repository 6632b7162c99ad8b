"""Label fidelity: do refined images still show each labelled cell where the simulation did?

Per instance, in the simulated and in the refined image (gray = mean over channels):

- *contrast*: mean intensity inside the instance minus the mean of a background ring around
  it (pixels within ``ring`` px that belong to no instance);
- *boundary*: mean of the inner boundary band (``band`` px inside the outline) minus the mean
  of the outer band (``band`` px outside, whatever label), i.e. the edge is where the label is.

An instance is preserved when both differences keep their sign. Instances whose simulated
difference is below ``min_contrast`` (no defined sign) or that have no background ring are
not counted.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from cellsynth.errors import DatasetError
from cellsynth.io.datasets import load_dataset
from cellsynth.io.normalize import normalize

__all__ = ["FidelityResult", "label_fidelity", "dataset_fidelity"]


@dataclass(frozen=True)
class FidelityResult:
    """Fractions of counted instances whose contrast / boundary sign is preserved."""

    n_instances: int  # counted instances
    n_skipped: int  # no background ring or |simulated contrast| < min_contrast
    contrast_preserved: float
    boundary_preserved: float
    preserved: float  # both

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _gray(image: np.ndarray) -> np.ndarray:
    image = normalize(image)
    return image.mean(axis=-1) if image.ndim == 3 else image


def _instance_signs(sim: np.ndarray, ref: np.ndarray, labels: np.ndarray, ring: int, band: int,
                    min_contrast: float) -> tuple[list[tuple[bool, bool]], int]:
    out, skipped = [], 0
    pad = max(ring, band) + 1
    disk = ndi.generate_binary_structure(2, 1)
    for lab_id, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        ys = slice(max(box[0].start - pad, 0), box[0].stop + pad)
        xs = slice(max(box[1].start - pad, 0), box[1].stop + pad)
        lab = labels[ys, xs]
        mask = lab == lab_id
        around = ndi.binary_dilation(mask, disk, iterations=ring) & (lab == 0)
        inner = mask & ~ndi.binary_erosion(mask, disk, iterations=band, border_value=1)
        outer = ndi.binary_dilation(mask, disk, iterations=band) & ~mask
        if not around.any() or not inner.any() or not outer.any():
            skipped += 1
            continue
        s, r = sim[ys, xs], ref[ys, xs]
        c_sim = s[mask].mean() - s[around].mean()
        b_sim = s[inner].mean() - s[outer].mean()
        if abs(c_sim) < min_contrast or abs(b_sim) < min_contrast:
            skipped += 1
            continue
        c_ref = r[mask].mean() - r[around].mean()
        b_ref = r[inner].mean() - r[outer].mean()
        out.append((bool(np.sign(c_sim) == np.sign(c_ref)),
                    bool(np.sign(b_sim) == np.sign(b_ref))))
    return out, skipped


def label_fidelity(sim_images: Sequence[np.ndarray], refined_images: Sequence[np.ndarray],
                   labels: Sequence[np.ndarray], *, ring: int = 4, band: int = 2,
                   min_contrast: float = 0.01) -> FidelityResult:
    """Fraction of instances whose contrast and boundary signs survive refinement.

    Parameters
    ----------
    sim_images, refined_images : (H, W) or (H, W, 3) images (uint8/uint16/float in [0, 1]).
    labels : (H, W) integer instance labels, 0 = background, one per image pair.
    ring : width of the background ring, pixels.
    band : width of the inner and outer boundary bands, pixels.
    min_contrast : simulated differences below this (in [0, 1] units) are not counted.
    """
    if not (len(sim_images) == len(refined_images) == len(labels)):
        raise ValueError(f"label_fidelity: got {len(sim_images)} simulated, "
                         f"{len(refined_images)} refined images and {len(labels)} label maps")
    if ring < 1 or band < 1:
        raise ValueError(f"label_fidelity: ring and band must be >= 1, got {ring}, {band}")
    signs: list[tuple[bool, bool]] = []
    skipped = 0
    for k, (sim, ref, lab) in enumerate(zip(sim_images, refined_images, labels)):
        if sim.shape[:2] != lab.shape or ref.shape[:2] != lab.shape:
            raise ValueError(f"label_fidelity: pair {k}: shapes {sim.shape}, {ref.shape} and "
                             f"labels {lab.shape} disagree")
        found, n_skip = _instance_signs(_gray(sim), _gray(ref), np.asarray(lab), ring, band,
                                        min_contrast)
        signs += found
        skipped += n_skip
    if not signs:
        return FidelityResult(0, skipped, float("nan"), float("nan"), float("nan"))
    arr = np.array(signs, bool)  # (N, 2)
    return FidelityResult(
        n_instances=len(arr), n_skipped=skipped,
        contrast_preserved=float(arr[:, 0].mean()), boundary_preserved=float(arr[:, 1].mean()),
        preserved=float(arr.all(axis=1).mean()),
    )


def dataset_fidelity(sim_dir: str | os.PathLike, refined_dir: str | os.PathLike,
                     **kwargs: Any) -> FidelityResult:
    """:func:`label_fidelity` of a refined dataset against the simulated one (matched by id)."""
    sim = load_dataset(sim_dir, require_labels=True)
    refined = {s.id: s for s in load_dataset(refined_dir)}
    missing = [s.id for s in sim if s.id not in refined]
    if missing:
        raise DatasetError(f"{Path(refined_dir)}: {len(missing)} simulated image(s) have no "
                           f"refined version, e.g. {missing[0]!r}")
    pairs = [(s.read(), refined[s.id].read_image()) for s in sim]
    return label_fidelity([p[0][0] for p in pairs], [p[1] for p in pairs],
                          [p[0][1] for p in pairs], **kwargs)
