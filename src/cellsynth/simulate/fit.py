"""Fit a simulator preset to unlabeled real images by matching summary statistics.

One estimator (:mod:`cellsynth.simulate.estimate`: cells found by a multi-scale Laplacian of
Gaussian and a watershed, their sizes, number per area and elongation, the stain of cells
and background, camera noise and sharpness) runs on the real images and on images simulated
from a candidate config. The candidate's cell sizes, densities, stain amounts, noise, blur
and elongation (on H&E also the background's grain and texture) are adjusted for a few
rounds until its statistics match the real ones (indirect inference), so the estimator's
own biases (touching cells, texture, blur) cancel instead of entering the config. The base
preset's ratios between its cell types are kept. Only images are read, never labels. The
answer is the mean of the last rounds, unless that matches far worse than the best round
searched, or its cells' size and number match worse than the base preset's (the search ran
away: e.g. on a few small images the regions found stop growing with the simulated cells),
then the best round whose cells did not; parameters that end at a limit of the search are
named in the printout.

The stain vectors are the base's (``stains="preset"``), or, with ``stains="measured"``,
H&E's eosin vector is measured from the real images first
(:func:`~cellsynth.simulate.estimate.measure_counter_vector`) and both the candidates and
the estimator use it. With the simulator's pink eosin, the mauve stroma of real H&E sets
is unmixed as hematoxylin and the search fills the background with hematoxylin (on images
drawn with a mauve eosin: 3.5x the background stain that was drawn); measured, the colours
look right, but a zero-label detector trained on them lost F1 on tcga_lgg's training
images (docs/results.md), so the preset's vectors stay the default.

How much the elongated cells point one way (orientation coherence) is measured and reported
but not fitted: on the ``nissl`` preset, narrowing the pyramidal cells' scatter around the
layer normal from 60 to 5 degrees moved this estimator's median coherence only from 0.14 to
0.21, less than it varies between four real Nissl images (0.06-0.44), so a fit would chase
noise.

On fluorescence the fit also draws what a widefield microscope and a mix of microscopes
show: nuclei brighter in the middle than at the rim (``dome``, matched by the estimator's
middle / mean stain of the cells found), out-of-focus haze around them (``optics.halo``,
matched by their glow 1-3 um past the regions found), and a camera noise and a focus that
differ per image (``variation.noise`` / ``variation.blur``, matched by the spread of the
noise level and the sharpness between images, in quadrature with what the scenes already
vary; see ``_VARIED``). A base that varies between images (zoom, density, ...) is judged
by 48 simulated images a round instead of 8-12.

What the real images *share* is fitted; how much they *vary* is a choice. The fit measures
the stain variation between cells and the camera noise of the median real image, and a
detector trained on a simulation that matches only that median sees less variety than the
real images hold (Nissl, seed 0: fitted variation 0.06 and noise 0.2x the hand preset's,
zero-label F1@0.5 -0.066). With ``spread="floor"`` (the default) the fitted stain
variation and noise are kept at least at the base preset's, which were set wide for
training on purpose; ``spread="fitted"`` takes the measured values as they are.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np

from cellsynth.config import to_dict
from cellsynth.errors import ConfigError, DatasetError
from cellsynth.simulate.dataset import image_seeds
from cellsynth.simulate.estimate import (
    _SCALE_STEP,
    _pool,
    measure_counter_vector,
    measure_image,
)
from cellsynth.simulate.fit_images import (
    MIN_CELL_PX,
    MIN_SIDE_PX,
    _load,
    _Real,
    measured_shapes,
    median_diameter_um,
)
from cellsynth.simulate.presets import SimulationConfig, preset
from cellsynth.simulate.scene import render_scene

__all__ = ["MIN_SIDE_PX", "MIN_CELL_PX", "SPREADS", "STAINS", "SimulatorFit", "count_cells",
           "fit_simulator", "match_statistics", "median_diameter_um", "config_override",
           "SearchPlan", "search_plan",
           "measured_shapes"]

# simulated images per round for a base that varies between images (fluo: zoom 0.4-3x,
# density 0.35-3x per image); with 12, the fitted labels' density moved by +-20 % between
# samples of 256 images and the fit's own
_N_SIM_VARIED = 48
_ROUNDS = 5          # updates of the search; each is judged by one more simulated batch
_AVERAGE = 3         # the fitted parameters: geometric mean of the last this many rounds
_DIVERGED, _DIVERGED_BY = 2.0, 0.05  # ... unless that matches > 2x (and > 0.05) worse than
                                     # the best round: then the best round (see _ran_away)
_LOW = 0.5           # smallest diameter searched, relative to the base's median cell
_MAX_STEP = math.log(2.0)  # largest change of a parameter per round (factor 2)
# Each parameter (a factor on the base's values; blur in um) is matched by one pooled
# statistic; the second number is the expected slope d log(statistic) / d log(parameter).
_KNOBS = {"size": ("diameter_um", 1.0), "density": ("density", 1.0),
          "cell_stain": ("cell_stain", 1.0), "background": ("background_stain", 1.0),
          "counterstain": ("counterstain", 1.0), "noise": ("noise", 1.0),
          "blur": ("sharpness", -0.3),
          # the regions found are rounder or longer than the cells for reasons of their own
          # (touching cells, texture): median axis ratio - 1 of the found regions moved only
          # 0.34 -> 0.41 -> 0.54 when the labels' moved 0.21 -> 0.46 -> 0.88 (nissl)
          "elongation": ("elongation", 0.25),
          # the background's texture (H&E only, see _TEXTURED): its grain size by how fine
          # the background is, its amplitude by how strongly it varies (he preset, 0.25 um/px:
          # grain 0.8 -> 0.25 um moved the band ratio 0.59 -> 0.65, texture 0.35 -> 0.7 moved
          # the variation 0.29 -> 0.37)
          "grain": ("background_sharpness", -0.15),
          "texture": ("background_texture", 0.35)}
_BOUNDS = {"size": (0.5, 2.5), "density": (0.05, 20.0), "cell_stain": (0.05, 20.0),
           "background": (0.01, 20.0), "counterstain": (0.01, 20.0), "noise": (0.01, 30.0),
           "elongation": (0.05, 6.0), "grain": (0.2, 3.0), "texture": (0.1, 4.0)}
# Colour models whose background texture is fitted. On H&E the stroma's fine texture was what
# the fit missed (tcga_lgg: background band ratio 0.81 real vs 0.63 fitted) and drawing it
# made its zero-label detector better (tcga train split: F1@0.5 0.632 -> 0.787); on Nissl,
# Merker and fluorescence the preset's texture stays until it is measured there.
# Grain finer than _MIN_GRAIN_PX pixels cannot be told from noise and blur: not fitted.
_TEXTURED = ("he",)
_MIN_GRAIN_PX = 2.0
# Colour models whose cells' stain profile (dome) and whose spread of camera noise and
# sharpness between images are fitted, with spread="fitted" (the images as measured). On
# dsb2018_fluo (several microscopes) real nuclei are brighter in the middle (the estimator's
# middle / mean stain 1.30 vs 1.21 for the preset's evenly filled ones) and the noise and
# sharpness vary 2.1x / 1.3x between images (p90 / p10) where the preset draws one camera
# and one focus (1.2x / 1.1x). Set by hand on the fit as measured, per-image noise 0.62-1.6x
# and blur 0.6-1.6x took a C2ST against dsb2018_fluo/train from 0.928 to 0.894, and a dome
# on top (an ellipsoid profile, since replaced) to 0.881 (3 repeats each; docs/results.md).
# Real nuclei also glow 2-4 um past their annotated outline (out-of-focus haze), which a
# Gaussian PSF cannot draw: without the halo the fit made its nuclei too large to match the
# size of the glowing regions found (labels' median area +34 % against the annotations,
# 256 images); with it, and 48 simulated images a round, +11 % (density +1 %). Both spreads
# (floor and fitted) draw them.
# Elsewhere the preset's even cells, sharp PSF and single camera stay until measured there.
_VARIED = ("fluo",)
_MIN_VARIED_IMAGES = 8  # fewer images cannot tell a spread between them
_MAX_SPREAD = 1.0       # log std of a per-image factor (a range of 0.18-5.7x)
_DOME_SLOPE = 0.3       # d(middle / mean stain) / d(dome), fluo preset at 0.5 um/px
_DOME_DEADBAND = 0.01   # seeds of one config differ by about this
# The glow past the cells' outline (estimate._halos; dsb2018_fluo/train 0.071, a Gaussian PSF
# alone 0.015): d(glow) / d(halo) at the fit's halo_um of 3 um, measured 0.23 (halo 0-0.5)
_HALO_SLOPE = 0.23
_HALO_DEADBAND = 0.005
_MAX_HALO = 0.8
_MAX_TEXTURE = 1.0  # band noise of a larger relative amplitude is clipped at 0 so often that
                    # it raises the mean stain
# A knob whose statistic barely responds moves only on a mismatch above the statistic's
# noise: two seeds of one nissl config differed by 7 % in found-region elongation, which a
# slope of 0.25 would turn into a 30 % change of the parameter.
_DEADBAND = {"elongation": math.log(1.1),
             # seeds of one he config differed by 6 % / 15 % in these (weak slopes, too)
             "grain": math.log(1.1), "texture": math.log(1.15)}
SPREADS = ("floor", "fitted")  # see the module docstring
STAINS = ("preset", "measured")  # the stain vectors drawn with (see the module docstring)
_ABSENT = object()  # a key that a config leaves out (an option at its default, added later)
_FLOOR = {"background_stain": 1e-3, "counterstain": 1e-3, "noise": 1e-4, "elongation": 0.01}


@dataclass(frozen=True)
class SimulatorFit:
    """The fitted config and the statistics behind it (pooled over images)."""

    config: SimulationConfig
    base: SimulationConfig        # the base preset at the real images' pixel size
    real: dict[str, Any]          # statistics of the real images (also ``per_image``)
    base_sim: dict[str, Any]      # ... of images simulated with ``base``
    fitted_sim: dict[str, Any]    # ... of images simulated with ``config``
    history: list[dict[str, float]]  # parameters and log(real/sim) of every round
    # what spread="floor" raised to the base's: {name: (as measured, as used)}
    floored: dict[str, tuple[float, float]] = field(default_factory=dict)
    # the round of the search taken as the answer when the mean of the last rounds matched
    # far worse (the search ran away; see _ran_away); None: that mean
    fallback: int | None = None


def _round(x: float) -> float:
    return float(f"{float(x):.4g}")


def _scale(bounds: tuple[float, float], factor: float) -> tuple[float, float]:
    return _round(bounds[0] * factor), _round(bounds[1] * factor)


def _apply(base: SimulationConfig, p: dict[str, float]) -> SimulationConfig:
    """``base`` with every cell type's diameter, density and stain scaled by the same factors
    (ratios between types kept), and the background, noise, blur and stain spread set."""
    def elongation(bounds: tuple[float, float]) -> tuple[float, float]:
        return (_round(1 + (bounds[0] - 1) * p["elongation"]),
                _round(1 + (bounds[1] - 1) * p["elongation"]))

    cells = tuple(replace(c, diameter_um=_scale(c.diameter_um, p["size"]),
                          elongation=elongation(c.elongation),
                          nucleolus_um=_round(c.nucleolus_um * p["size"]),
                          density=_round(c.density * p["density"]),
                          stain=_scale(c.stain, p["cell_stain"])) for c in base.cells)
    bg = base.background
    background = replace(bg, stain=_scale(bg.stain, p["background"]),
                         fibre_stain=_round(bg.fibre_stain * p["background"]),
                         counterstain=_scale(bg.counterstain, p["counterstain"]),
                         grain_um=_round(bg.grain_um * p["grain"]),
                         texture=_round(min(bg.texture * p["texture"],
                                            max(bg.texture, _MAX_TEXTURE))))
    optics = replace(base.optics, blur_um=_round(p["blur"]),
                     shot_noise=_round(base.optics.shot_noise * p["noise"]),
                     read_noise=_round(base.optics.read_noise * p["noise"]))
    staining = replace(base.staining, cell_variation=_round(p["cell_variation"]))
    variation = base.variation
    if "dome" in p:
        cells = tuple(replace(c, dome=_round(p["dome"])) for c in cells)
    if "halo" in p:
        optics = replace(optics, halo=_round(p["halo"]))
    for name, key in (("noise", "noise_spread"), ("blur", "blur_spread")):
        if p.get(key, 0.0) >= 0.01:  # below: the base's range (and no draws)
            variation = replace(variation, **{name: _spread_range(getattr(base.variation, name),
                                                                  p[key])})
    return replace(base, cells=cells, background=background, optics=optics, staining=staining,
                   variation=variation)


def _log_std(bounds: tuple[float, float]) -> float:
    """The std of log(factor) of a factor drawn log-uniformly from ``bounds``."""
    return math.log(bounds[1] / bounds[0]) / (2 * math.sqrt(3))


def _spread_range(bounds: tuple[float, float], log_std: float) -> tuple[float, float]:
    """A range with the same geometric centre as ``bounds`` whose log-uniform draws have
    this log std."""
    centre, half = math.sqrt(bounds[0] * bounds[1]), math.sqrt(3) * log_std
    return _round(centre * math.exp(-half)), _round(centre * math.exp(half))


def _simulate_stats(config: SimulationConfig, shape: tuple[int, int], seeds: list,
                    radii: np.ndarray, vectors: tuple | None = None) -> dict[str, Any]:
    """Pooled statistics of images simulated from ``config``, unmixed with ``vectors``."""
    per_image = []
    for child in seeds:
        image, labels = render_scene(config, shape, np.random.default_rng(child))
        per_image.append(measure_image(image.astype(np.float32) / 255.0, config.color,
                                  config.pixel_size_um, radii, labels, vectors))
    return _pool(per_image)


def _with_stain_vectors(real: _Real, base: SimulationConfig, seed: int) -> SimulationConfig:
    """``base`` with the counterstain (eosin) vector measured on the real images
    (:func:`~cellsynth.simulate.estimate.measure_counter_vector`), or ``base`` itself where
    it cannot be measured or the colour model has no counterstain."""
    vector = measure_counter_vector(real.images, base.color, seed=seed)
    if vector is None:
        return base
    return replace(base, staining=replace(base.staining, counter_vector=vector))


def _vectors(config: SimulationConfig) -> tuple:
    return config.staining.main_vector, config.staining.counter_vector


def _mismatch(real: dict[str, Any], sim: dict[str, Any], knobs: list[str]) -> dict[str, float]:
    """log(real / simulated) of each knob's statistic."""
    out = {}
    for knob in knobs:
        stat = _KNOBS[knob][0]
        floor = _FLOOR.get(stat, 1e-6)
        out[knob] = (math.log(max(real[stat], floor)) - math.log(max(sim[stat], floor))
                     if np.isfinite(sim[stat]) else 0.0)  # too few cells to tell this round
    return out


def _bounds(knob: str, px: float) -> tuple[float, float]:
    """The range the search keeps a knob in: factors on the base's values; blur in um."""
    return _BOUNDS.get(knob, (0.05 * px, 4.0 * px))


def _slope(history: list[dict[str, float]], knob: str) -> float:
    """d log(statistic) / d log(parameter): least squares over the rounds so far, kept
    within 0.35-2x of the expected slope (and of its sign); the expected one until the
    parameter has moved."""
    expected = _KNOBS[knob][1]
    x = np.log([max(h[knob], 1e-9) for h in history])
    if len(x) < 2 or np.ptp(x) < 0.05:
        return expected
    y = np.array([h[f"log_sim_{knob}"] for h in history])
    slope = float(np.polyfit(x, y, 1)[0]) / expected
    return expected * float(np.clip(slope, 0.35, 2.0))


class SearchPlan(NamedTuple):
    """What the fit simulates and measures (:func:`search_plan`)."""

    side: int           # px, of the square images simulated
    n_sim: int          # images simulated a batch (the same scenes every batch)
    batches: int        # batches simulated and measured: the rounds and the answer (one
                        # more where the search runs away, see _ran_away)
    radii: np.ndarray   # px, the LoG scales the estimator searches, real and simulated


def search_plan(shapes: Sequence[tuple[int, int]], base: SimulationConfig) -> SearchPlan:
    """The images the fit simulates and measures to match real images of ``shapes`` ((H, W)
    of each image or window measured, :func:`measured_shapes`); ``base`` at their pixel
    size. The side is the real images' median one (128-512 px); a batch covers their
    pixels (8-12 images; a base that varies between images, 48)."""
    px = base.pixel_size_um
    side = int(np.clip(np.median([min(s[:2]) for s in shapes]), 128, 512))
    n_sim = int(np.clip(math.ceil(sum(s[0] * s[1] for s in shapes) / side**2), 8, 12))
    if base.variation.active:  # each image its own zoom, density, ...: judge by more of them
        n_sim = max(n_sim, _N_SIM_VARIED)
    labelled = [c for c in base.cells if c.labeled]
    zoom = base.variation.zoom
    lo = max(_LOW * median_diameter_um(base) * zoom[0] / px, MIN_CELL_PX)
    hi = max(min(3.0 * max(c.diameter_um[1] for c in labelled) * zoom[1] / px,
                 min(side, *(min(s[:2]) for s in shapes)) / 3), 2 * lo)
    n_scales = int(math.ceil(math.log(hi / lo) / math.log(_SCALE_STEP))) + 1
    radii = lo * _SCALE_STEP ** np.arange(n_scales) / 2  # diameters lo..hi px -> radii
    return SearchPlan(side, n_sim, _ROUNDS + 2, radii)


def _fit(real: _Real, base: SimulationConfig, seed: int, spread: str = "floor",
         stains: str = "preset") -> SimulatorFit:
    """Measure the real images, then search (see the module docstring)."""
    px = real.pixel_size_um
    base = replace(base, pixel_size_um=px)
    side, n_sim = search_plan([a.shape for a in real.images], base)[:2]
    shape = (side, side)
    seeds = image_seeds(seed, n_sim)  # the same scenes every round: only parameters change
    # the real colours first: stain amounts are measured (in real and simulated images
    # alike) and drawn with the stain vectors of the real images
    start = _with_stain_vectors(real, base, seed) if stains == "measured" else base
    target, radii = _real_statistics(real, start)
    knobs = [k for k in _KNOBS if (k != "counterstain" or base.color == "he")
             and (k not in ("grain", "texture") or (
                 base.color in _TEXTURED and base.background.grain_um / px >= _MIN_GRAIN_PX))
             and np.isfinite(target[_KNOBS[k][0]])]
    fit = _search(real, start, target, radii, knobs, shape, seeds, spread)
    if start is base:
        return fit
    return replace(fit, base=base,  # what the base preset draws, measured as the real images
                   base_sim=_simulate_stats(base, shape, seeds, radii, _vectors(start)))


def _real_statistics(real: _Real, base: SimulationConfig) -> tuple[dict[str, Any], np.ndarray]:
    """The estimator's statistics of the real images (pooled, and ``per_image``) and the
    LoG radii it searched; ``base`` at the real images' pixel size, its stain vectors the
    ones the images are unmixed with."""
    px = real.pixel_size_um
    radii = search_plan([a.shape for a in real.images], base).radii
    per_image = [measure_image(a, base.color, px, radii, vectors=_vectors(base))
                 for a in real.images]
    target = _pool(per_image)
    if target["n_cells"] == 0:
        raise DatasetError(f"{real.where}: no cells found in {len(real.images)} image(s) "
                           f"(wrong preset {base.preset!r} or pixel size {px:g} um?)")
    target["per_image"] = [{k: v for k, v in s.items()
                            if k not in ("diameters_um", "levels", "axis_ratios", "domes",
                                          "halos")}
                           | {"image": name, "median_diameter_um":
                              float(np.median(s["diameters_um"])) if s["n_cells"] else None,
                              "coherence": (s["coherence"] if np.isfinite(s["coherence"])
                                            else None)}
                           for name, s in zip(real.names, per_image)]
    return target, radii


def _search(real: _Real, base: SimulationConfig, target: dict[str, Any], radii: np.ndarray,
            knobs: list[str], shape: tuple[int, int], seeds: list, spread: str = "floor"
            ) -> SimulatorFit:
    """Rounds of simulating, measuring and moving the knobs towards ``target``; with
    ``spread="floor"`` the answer's noise and stain variation are at least the base's."""
    px = real.pixel_size_um
    params = {k: 1.0 for k in _BOUNDS} | {
        "blur": base.optics.blur_um or 0.5 * px,
        "cell_variation": base.staining.cell_variation}
    # fitted on their own scale (arithmetic, not by factors): see _VARIED
    additive = ["cell_variation"]
    varied = base.color in _VARIED
    if varied and np.isfinite(target["dome"]):
        params["dome"] = max(c.dome for c in base.cells if c.labeled)
        additive.append("dome")
    if varied and np.isfinite(target["halo"]):
        params["halo"] = base.optics.halo
        additive.append("halo")
    if varied and len(real.images) >= _MIN_VARIED_IMAGES:
        params |= {"noise_spread": _log_std(base.variation.noise),
                   "blur_spread": _log_std(base.variation.blur)}
        additive += ["noise_spread", "blur_spread"]
    history: list[dict[str, float]] = []
    sims: list[dict[str, Any]] = []
    floored: dict[str, tuple[float, float]] = {}
    fallback = None
    # the floor moves the answer's noise off the real images' on purpose: not a mismatch
    unjudged = ("noise",) if spread == "floor" else ()

    def answer(params: dict[str, float]) -> dict[str, float]:
        """``params`` with spread="floor"'s floors applied (recorded in ``floored``)."""
        if spread != "floor":
            return params
        measured = _apply(base, params)
        params = params | {"noise": max(params["noise"], 1.0),
                           "cell_variation": max(params["cell_variation"],
                                                 base.staining.cell_variation)}
        used = _apply(base, params)
        floored.clear()
        floored.update({name: (get(measured), get(used)) for name, get in (
            ("stain variation between cells", lambda c: c.staining.cell_variation),
            ("shot noise", lambda c: c.optics.shot_noise),
            ("read noise", lambda c: c.optics.read_noise)) if get(measured) < get(used)})
        return params

    for round_ in range(_ROUNDS + 3):
        if round_ == _ROUNDS + 1:  # the answer: the mean of the last rounds (less noise)
            last = history[-_AVERAGE:]
            params = answer({k: float(np.exp(np.mean([np.log(max(h[k], 1e-6)) for h in last])))
                             for k in params} | {
                k: float(np.mean([h[k] for h in last])) for k in additive})
        elif round_ == _ROUNDS + 2:  # the search ran away (see _ran_away): its best round
            searched = history[:_ROUNDS + 1]
            if not _ran_away(history[-1], searched, unjudged):
                break
            # the best round whose cells are not themselves run away (round 0, the base, is)
            fallback = min((i for i, h in enumerate(searched)
                            if i == 0 or not _cells_diverged(h, searched[0])),
                           key=lambda i: _cost(searched[i], unjudged))
            params = answer({k: history[fallback][k] for k in params})
        sim = _simulate_stats(_apply(base, params), shape, seeds, radii, _vectors(base))
        error = _mismatch(target, sim, knobs)
        history.append({**params, **{f"log_error_{k}": v for k, v in error.items()},
                        **{f"log_sim_{k}": math.log(max(sim[_KNOBS[k][0]],
                                                        _FLOOR.get(_KNOBS[k][0], 1e-6)))
                           for k in knobs}})
        sims.append(sim)
        if round_ >= _ROUNDS:
            continue
        new = dict(params)
        for knob in knobs:  # a Newton step with the slope seen so far (or the expected one)
            if abs(error[knob]) < _DEADBAND.get(knob, 0.0):
                continue
            step = float(np.clip(error[knob] / _slope(history, knob), -_MAX_STEP, _MAX_STEP))
            low, high = _bounds(knob, px)
            new[knob] = float(np.clip(params[knob] * math.exp(step), low, high))
        # within-image stain spread: the lognormal cell variation adds in quadrature
        extra = target["cell_spread"] ** 2 - sim["cell_spread"] ** 2
        new["cell_variation"] = float(np.clip(math.sqrt(max(params["cell_variation"] ** 2
                                                            + extra, 0.0)), 0.0, 1.0))
        if "dome" in params and np.isfinite(sim["dome"]) and \
                abs(target["dome"] - sim["dome"]) >= _DOME_DEADBAND:
            new["dome"] = float(np.clip(params["dome"] + (target["dome"] - sim["dome"])
                                        / _DOME_SLOPE, 0.0, 1.0))
        if "halo" in params and np.isfinite(sim["halo"]) and \
                abs(target["halo"] - sim["halo"]) >= _HALO_DEADBAND:
            new["halo"] = float(np.clip(params["halo"] + (target["halo"] - sim["halo"])
                                        / _HALO_SLOPE, 0.0, _MAX_HALO))
        if "noise_spread" in params:
            # per-image factors add their log variance to what the scenes already vary
            for key, stat, slope in (("noise_spread", "noise_spread", 1.0),
                                     ("blur_spread", "sharpness_spread",
                                      abs(_slope(history, "blur")) if "blur" in knobs
                                      else abs(_KNOBS["blur"][1]))):
                extra = (target[stat] ** 2 - sim[stat] ** 2) / slope ** 2
                new[key] = float(np.clip(math.sqrt(max(params[key] ** 2 + extra, 0.0)),
                                         0.0, _MAX_SPREAD))
        params = new
    config = _apply(base, params)
    if median_diameter_um(config) / px < MIN_CELL_PX:
        raise DatasetError(f"{real.where}: the cells found are only "
                           f"{median_diameter_um(config) / px:.1f} px across (< {MIN_CELL_PX:g} "
                           f"px); give the real pixel size with --pixel-size")
    return SimulatorFit(config=config, base=base, real=target, base_sim=sims[0],
                        fitted_sim=sims[-1], history=history, floored=floored,
                        fallback=fallback)


def _cost(round_: dict[str, float], ignore: Sequence[str] = (),
          only: Sequence[str] | None = None) -> float:
    """How far one round of the search is from the real statistics: the sum of squared
    log mismatches beyond each knob's deadband (knobs in ``ignore`` left out; given ``only``,
    just those knobs)."""
    errors = {k.removeprefix("log_error_"): v for k, v in round_.items()
              if k.startswith("log_error_")}
    return sum(max(abs(v) - _DEADBAND.get(k, 0.0), 0.0) ** 2
               for k, v in errors.items()
               if k not in ignore and (only is None or k in only))


def _diverged(answer: float, best: float) -> bool:
    """The averaged answer matches far worse than the best round searched (the statistics
    responded against the expected slope, e.g. cells larger than the images can show)."""
    return answer > max(_DIVERGED * best, best + _DIVERGED_BY)


# What a detector learns a cell to be: a search whose cells match these worse than the base's
# ran away even where a statistic no knob can reach (perfect discs: elongation 50x below the
# base's) hides it in the total (one 128 px image of 8 discs: cost 19.8 -> 30.8, cells found
# 12x as many and a third as large as the real ones, cell stain 14x the base's)
_CELLS = ("size", "density")


def _cells_diverged(round_: dict[str, float], base: dict[str, float]) -> bool:
    """``round_``'s cell size and number match the real images far worse than the base's."""
    return _diverged(_cost(round_, only=_CELLS), _cost(base, only=_CELLS))


def _ran_away(answer: dict[str, float], searched: list[dict[str, float]],
              ignore: Sequence[str] = ()) -> bool:
    """The answer (the mean of the last rounds) matches far worse than the best round
    searched, or its cells (size and number) far worse than the base's (round 0)."""
    return (_diverged(_cost(answer, ignore), min(_cost(h, ignore) for h in searched))
            or _cells_diverged(answer, searched[0]))


def _check_choices(spread: str, stains: str = "preset") -> None:
    if spread not in SPREADS:
        raise ConfigError(f"spread must be one of {', '.join(SPREADS)}, got {spread!r}")
    if stains not in STAINS:
        raise ConfigError(f"stains must be one of {', '.join(STAINS)}, got {stains!r}")


def match_statistics(images: str | os.PathLike | Sequence[np.ndarray],
                     base: str | SimulationConfig, *, pixel_size_um: float | None = None,
                     seed: int = 0, spread: str = "floor", stains: str = "preset",
                     channel: int | None = None) -> SimulatorFit:
    """Fit ``base`` to real images and return the config with the statistics behind it.

    Parameters
    ----------
    images : a dataset folder (``images/`` or a plain folder of images; labels are never read)
        or a sequence of (H, W) / (H, W, 3) arrays, each at least ``MIN_SIDE_PX`` a side.
    base : preset name or config to start from; its colour model decides the stain channel.
    pixel_size_um : of the real images; default the folder's meta.json, else the base's.
    seed : seed of the simulated images compared with the real ones.
    spread : "floor" (stain variation between cells and camera noise at least the base's)
        or "fitted" (as measured on the real images); see the module docstring.
    stains : "preset" (the base's stain vectors) or "measured" (H&E: the eosin vector of the
        real images, :func:`~cellsynth.simulate.estimate.measure_counter_vector`).
    channel : only this channel (0-based) of multi-channel images, e.g. the nuclear stain of
        2 fluorescence channels (default: gray and RGB as they are, else channel 0).
    """
    _check_choices(spread, stains)
    base = preset(base) if isinstance(base, str) else base
    return _fit(_load(images, base, pixel_size_um, channel), base, seed, spread, stains)


def count_cells(images: str | os.PathLike | Sequence[np.ndarray],
                base: str | SimulationConfig, *, pixel_size_um: float | None = None,
                channel: int | None = None
                ) -> tuple[float, list[tuple[str, np.ndarray, int, Any]]]:
    """The estimator's cell count of unlabeled real images (no search, no simulation): their
    pixel size and, for each image it measured (of a folder: up to 64, spread over it),
    its name, its pixels as read, the number of cells found and what it was read from (the
    image itself, or the lazily opened whole section it is a window of, so that a detector
    can scale the window as it scales the section). Labels are never read."""
    base = preset(base) if isinstance(base, str) else base
    real = _load(images, base, pixel_size_um, channel)
    target, _ = _real_statistics(real, replace(base, pixel_size_um=real.pixel_size_um))
    return real.pixel_size_um, [(name, raw, int(s["n_cells"]), source)
                                for name, raw, s, source in zip(real.names, real.raw,
                                                                target["per_image"],
                                                                real.sources)]


def fit_simulator(images: str | os.PathLike | Sequence[np.ndarray],
                  base: str | SimulationConfig, *, pixel_size_um: float | None = None,
                  seed: int = 0, spread: str = "floor", stains: str = "preset",
                  channel: int | None = None) -> SimulationConfig:
    """The simulator config fitted to unlabeled real images (see :func:`match_statistics`).

    Cell diameters and densities (all cell types scaled alike), stain amounts of cells,
    background and counterstain, stain variation between cells, camera noise and blur are
    fitted, on H&E also the background's grain and texture; everything else is the base's.
    The config is at the real images' pixel size.
    """
    return match_statistics(images, base, pixel_size_um=pixel_size_um, seed=seed,
                            spread=spread, stains=stains, channel=channel).config


def config_override(config: SimulationConfig) -> dict[str, Any]:
    """What ``config`` changes in its preset, as the mapping ``simulate --config`` reads
    (cell types by name); ``simulation_config(config.preset, overrides=...)`` gives it back."""
    old, new = to_dict(preset(config.preset)), to_dict(config)
    out: dict[str, Any] = {"preset": config.preset}
    for key, value in new.items():
        if key == "cells":
            before = {c["name"]: c for c in old["cells"]}
            if [c["name"] for c in value] != list(before):
                out["cells"] = value  # other cell types than the preset's: all of them
                continue
            cells = {c["name"]: {k: v for k, v in c.items()
                                 if before[c["name"]].get(k, _ABSENT) != v}  # added options
                     for c in value}
            if any(cells.values()):
                out["cells"] = {name: diff for name, diff in cells.items() if diff}
        elif isinstance(value, dict):
            diff = {k: v for k, v in value.items() if old[key].get(k, _ABSENT) != v}
            if diff:
                out[key] = diff
        elif key != "preset" and value != old[key]:
            out[key] = value
    return out


_MOVED = ("at_limits", "format_fit", "write_fit")  # (to fit_report.py; loaded on first use)


def __getattr__(name: str) -> Any:
    """The fit's printout, preview and writer live in :mod:`cellsynth.simulate.fit_report`
    (which imports this module), re-exported here as before."""
    if name in _MOVED:
        from cellsynth.simulate import fit_report

        return getattr(fit_report, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
