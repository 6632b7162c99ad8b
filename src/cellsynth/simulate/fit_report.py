"""The printout, preview and YAML of `cellsynth fit-simulator` (split from
:mod:`cellsynth.simulate.fit`, whose search and names it reads through that module at call
time, so what a test patches there takes effect here)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from cellsynth.errors import ConfigError
from cellsynth.simulate import fit as _f
from cellsynth.simulate.dataset import image_seeds
from cellsynth.simulate.optics import stain_vectors
from cellsynth.simulate.presets import SimulationConfig, preset
from cellsynth.simulate.scene import render_scene

__all__ = ["at_limits", "format_fit", "write_fit"]


def _cells(config: SimulationConfig, what: str) -> str:
    lab = [c for c in config.cells if c.labeled]
    if what in ("stain", "elongation"):
        return ", ".join(f"{a:.3g}-{b:.3g}" for a, b in sorted({getattr(c, what) for c in lab}))
    if what == "dome":
        return ", ".join(f"{d:.3g}" for d in sorted({c.dome for c in lab}))
    return f"{sum(c.density for c in lab):.3g}"


# statistics of the printout: label, key, format, factor
_STAT_ROWS = (("cells found: diameter, geom. mean (um)", "diameter_um", "{:.3g}"),
              ("cells found: median diameter (um)", "median_diameter_um", "{:.3g}"),
              ("cells found per mm^2", "density", "{:.0f}", 100.0),
              ("cells found: area fraction", "coverage", "{:.2f}"),
              ("cells found: median axis ratio - 1", "elongation", "{:.3f}"),
              ("cells found: orientation coherence (not fitted)", "coherence", "{:.3f}"),
              ("cell stain (median)", "cell_stain", "{:.3g}"),
              ("background stain (median)", "background_stain", "{:.3g}"),
              ("cells found: middle / mean stain", "dome", "{:.3f}"),
              ("cells found: glow 1-3 um outside / mean stain", "halo", "{:.3f}"),
              ("noise std (0-1)", "noise", "{:.4f}"), ("sharpness", "sharpness", "{:.3g}"),
              ("noise between images (log std)", "noise_spread", "{:.3f}"),
              ("sharpness between images (log std)", "sharpness_spread", "{:.3f}"),
              ("background sharpness", "background_sharpness", "{:.3g}"),
              ("background texture (relative)", "background_texture", "{:.3g}"),
              ("cell colour (RGB)", "cell_rgb", None),
              ("background colour (RGB)", "background_rgb", None),
              ("simulated labels: median area (um^2)", "label_median_area_um2", "{:.3g}"),
              ("simulated labels per mm^2", "label_per_mm2", "{:.0f}"))
_KNOB_NAMES = {"size": "cell size", "density": "density", "cell_stain": "cell stain",
               "background": "background stain", "counterstain": "counterstain",
               "noise": "noise", "blur": "blur", "elongation": "elongation",
               "grain": "background grain", "texture": "background texture"}
_AT_LIMIT = math.log(1.1)  # a parameter this close to a limit of the search is at it


def at_limits(fit: _f.SimulatorFit) -> list[tuple[str, str, float]]:
    """Knobs whose fitted value ended at a limit of the search: (knob, "lower" or "upper",
    log(real / fitted simulation) of its statistic). The statistic may be unmatched there
    (a limit the simulator cannot pass) or matched only at the edge."""
    if not fit.history:
        return []
    last, px = fit.history[-1], fit.base.pixel_size_um
    out = []
    for knob in _f._KNOBS:
        if f"log_error_{knob}" not in last:
            continue  # not fitted
        low, high = _f._bounds(knob, px)
        value = last[knob]
        side = ("lower" if value <= low * math.exp(_AT_LIMIT) else
                "upper" if value >= high * math.exp(-_AT_LIMIT) else None)
        bg = fit.base.background
        if knob == "texture" and fit.config.background.texture > bg.texture and \
                fit.config.background.texture >= max(bg.texture, _f._MAX_TEXTURE) - 1e-9:
            side = "upper"  # capped in fit._apply
        if side:
            out.append((knob, side, float(last[f"log_error_{knob}"])))
    return out


def format_fit(fit: _f.SimulatorFit) -> str:
    """Two small tables: parameters (base vs fitted) and statistics (real vs simulations)."""
    b, f = fit.base, fit.config
    rows = [
        ("pixel size (um)", f"{b.pixel_size_um:g}", f"{f.pixel_size_um:g}"),
        ("median cell diameter (um)", f"{_f.median_diameter_um(b):.3g}",
         f"{_f.median_diameter_um(f):.3g}"),
        ("labelled cells per 100x100 um^2", _cells(b, "density"), _cells(f, "density")),
        ("cell stain", _cells(b, "stain"), _cells(f, "stain")),
        ("background stain", "{:.3g}-{:.3g}".format(*b.background.stain),
         "{:.3g}-{:.3g}".format(*f.background.stain)),
        ("stain variation between cells", f"{b.staining.cell_variation:.3g}",
         f"{f.staining.cell_variation:.3g}"),
        ("blur sigma (um)", f"{b.optics.blur_um:.3g}", f"{f.optics.blur_um:.3g}"),
        ("background grain (um) / texture", f"{b.background.grain_um:.3g} / "
         f"{b.background.texture:.3g}", f"{f.background.grain_um:.3g} / "
         f"{f.background.texture:.3g}"),
        ("cell elongation (axis ratio)", _cells(b, "elongation"), _cells(f, "elongation")),
        ("shot / read noise", f"{b.optics.shot_noise:.3g} / {b.optics.read_noise:.3g}",
         f"{f.optics.shot_noise:.3g} / {f.optics.read_noise:.3g}"),
    ]
    if b.color in _f._VARIED:
        rows += [("cell dome (middle brighter than rim)", _cells(b, "dome"), _cells(f, "dome")),
                 ("out-of-focus halo: light / sigma (um)",
                  f"{b.optics.halo:.3g} / {b.optics.halo_um:.3g}",
                  f"{f.optics.halo:.3g} / {f.optics.halo_um:.3g}"),
                 ("noise / blur factor per image", "{:.3g}-{:.3g} / {:.3g}-{:.3g}".format(
                     *b.variation.noise, *b.variation.blur), "{:.3g}-{:.3g} / {:.3g}-{:.3g}"
                  .format(*f.variation.noise, *f.variation.blur))]
    if b.color == "he":
        rows.insert(5, ("counterstain (eosin)", "{:.3g}-{:.3g}".format(*b.background.counterstain),
                        "{:.3g}-{:.3g}".format(*f.background.counterstain)))
        for i, name in enumerate(("hematoxylin", "eosin")):
            vector = [stain_vectors(c.color, *_f._vectors(c))[i] for c in (b, f)]
            rows.insert(6 + i, (f"{name} vector (R, G, B absorbance)",
                                *(" ".join(f"{x:.2f}" for x in v) for v in vector)))
    table = [("parameter", f"base ({b.preset})", "fitted"), *rows, ("", "", ""),
             ("statistic (same estimator)", "real", "base sim", "fitted sim")]
    for label, key, fmt, *factor in _STAT_ROWS:
        cells = []
        for s in (fit.real, fit.base_sim, fit.fitted_sim):
            value = s.get(key)
            if value is None or (np.isscalar(value) and not np.isfinite(value)):
                cells.append("-")
            elif fmt is None:
                cells.append("/".join(f"{v:.0f}" for v in np.atleast_1d(value)))
            else:
                cells.append(fmt.format(value * (factor[0] if factor else 1)))
        table.append((label, *cells))
    widths = [max(len(r[i]) for r in table if len(r) > i) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in table]
    if fit.floored:
        lines.append("kept at the base's for a varied training set (--spread floor; measured "
                     "-> used): " + ", ".join(f"{name} {a:.3g} -> {b:.3g}"
                                              for name, (a, b) in fit.floored.items()))
    labels = {key: label for label, key, *_ in _STAT_ROWS}
    limits = at_limits(fit)
    if limits:
        named = [f"{_KNOB_NAMES[k]} at its {side} limit ({labels.get(_f._KNOBS[k][0], k)} "
                 f"{100 * (math.exp(-e) - 1):+.0f} % against the real images)"
                 for k, side, e in limits]
        lines.append("searched to a limit (the statistic may stay unmatched; check the "
                     "preview): " + ", ".join(named))
    if fit.fallback is not None:
        # on few images the statistics answer against the parameters; on many, a statistic
        # that swings between rounds (fluo's dark background) is the likelier cause
        hint = (" (too few or too small images?)"
                if fit.real.get("n_images", 0) < _f._MIN_VARIED_IMAGES else "")
        which = f"round {fit.fallback}" + (" (the base preset)" if fit.fallback == 0 else "")
        lines.append(f"the search ran away (the mean of its last rounds, or its cells' size "
                     f"and number, matched the real images far worse than round "
                     f"{fit.fallback}): {which} is the answer; check the preview{hint}")
    per_image = fit.real.get("per_image", [])
    sizes = [s["median_diameter_um"] for s in per_image if s["median_diameter_um"]]
    if sizes:
        counts = [1e6 * s["n_cells"] / s["area_um2"] for s in per_image]
        lines.append(f"real images one by one ({len(per_image)}): median diameter "
                     f"{min(sizes):.3g}-{max(sizes):.3g} um, {min(counts):.0f}-{max(counts):.0f} "
                     f"cells found per mm^2")
    return "\n".join(lines)


def _preview(real: _f._Real, fit: _f.SimulatorFit, seed: int) -> np.ndarray:
    """Rows of real | fitted simulation | base simulation (same size, same pixel size)."""
    from cellsynth.io.images import to_uint8
    from cellsynth.viz import image_grid

    picks = np.unique(np.linspace(0, len(real.images) - 1, min(3, len(real.images)))
                      .astype(int))
    side = int(min(256, *(min(real.images[i].shape[:2]) for i in picks)))
    tiles = []
    for row, child in zip(picks, image_seeds(seed + 1, len(picks))):
        image = real.images[row]
        y, x = (image.shape[0] - side) // 2, (image.shape[1] - side) // 2
        tiles.append(to_uint8(image[y:y + side, x:x + side]))
        for config in (fit.config, fit.base):
            tiles.append(render_scene(config, (side, side), np.random.default_rng(child))[0])
    return image_grid(tiles, columns=3)


def write_fit(real: str | os.PathLike, base: str | SimulationConfig, out: str | os.PathLike,
              *, pixel_size_um: float | None = None, seed: int = 0,
              spread: str = "floor", stains: str = "preset", force: bool = False,
              channel: int | None = None) -> dict[str, Any]:
    """Fit ``base`` to the images in folder ``real`` (or the one image file); write the
    override YAML to ``out`` and ``<out stem>-preview.png`` (real | fitted | base) beside
    it. An existing ``out`` is replaced only with ``force`` (checked before any work).

    Returns ``{"fit": SimulatorFit, "table": str, "yaml": Path, "preview": Path}``.
    """
    from cellsynth.io.files import atomic_path
    from cellsynth.io.images import write_image

    out = Path(out)
    if out.suffix.lower() not in (".yaml", ".yml"):
        raise ConfigError(f"{out}: the fitted preset is written as YAML; name it *.yaml")
    _f._check_choices(spread, stains)
    preview = out.with_name(out.stem + "-preview.png")
    if not isinstance(real, (list, tuple)):
        from cellsynth.io.files import check_output_file

        # (a preview in a folder of images was read as one more real image by every later
        # command: refused there, as predict and evaluate refuse their outputs)
        for path in (out, preview):
            check_output_file(path, force=force, inputs=(real,))
    elif out.exists() and not force:
        from cellsynth.errors import OutputExistsError

        raise OutputExistsError(f"{out}: exists (use --force to replace it)")
    base = preset(base) if isinstance(base, str) else base
    loaded = _f._load(real, base, pixel_size_um, channel)
    if pixel_size_um is None and not isinstance(real, (list, tuple)):
        if not loaded.stated:  # (fit-refiner, inspect, predict say so)
            import warnings

            warnings.warn(f"{real}: pixel size unknown (no --pixel-size, meta.json or file "
                          f"metadata); taken to be the preset's {base.pixel_size_um:g} um/px, "
                          f"so the fitted sizes are in its micrometres", stacklevel=2)
    fit = _f._fit(loaded, base, seed, spread, stains)
    of = "" if channel is None else f"channel {channel} of "
    header = (f"# {fit.config.preset} preset fitted by `cellsynth fit-simulator` to "
              f"{of}{len(loaded.images)} image(s) of {loaded.where}\n# (pixel size "
              f"{loaded.pixel_size_um:g} um, seed {seed}, spread {spread}, stains {stains}); "
              f"use: cellsynth "
              f"simulate --preset {fit.config.preset} --config {out.name} ...\n")
    with atomic_path(out) as tmp:
        tmp.write_text(header + yaml.safe_dump(_f.config_override(fit.config),
                                               sort_keys=False))
    write_image(preview, _preview(loaded, fit, seed))
    return {"fit": fit, "table": format_fit(fit), "yaml": out, "preview": preview}
