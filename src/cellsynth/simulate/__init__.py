"""Stage 1: a fast procedural simulator of microscopy images with exact instance labels.

Pure numpy: ``(config, rng) -> (image, labels)``. Presets: ``merker`` (BigBrain-like human
cortex, 1 um/px), ``nissl`` (rodent cresyl-violet cortex, 0.346 um/px), ``he`` (H&E nuclei)
and ``fluo`` (fluorescence nuclei).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from cellsynth.config import from_dict, load_yaml, override, to_dict
from cellsynth.errors import ConfigError
from cellsynth.simulate.dataset import image_seeds, simulate_config, write_simulation
from cellsynth.simulate.fit import fit_simulator
from cellsynth.simulate.presets import PRESET_COLORS, PRESETS, SimulationConfig, preset
from cellsynth.simulate.scene import render_scene

__all__ = [
    "PRESETS", "PRESET_COLORS", "SimulationConfig", "fit_simulator", "image_seeds", "preset",
    "render_scene", "simulate", "simulation_config", "write_simulation",
]


def _merge_cells(config: SimulationConfig, cells: dict[str, Any], where: str) -> list[dict]:
    """YAML may tweak cell types by name: ``cells: {glia: {density: 5}}``."""
    current = {c.name: to_dict(c) for c in config.cells}
    for name, update in cells.items():
        if name not in current:
            raise ConfigError(f"{where}.cells: no cell type {name!r} in preset "
                              f"{config.preset!r} (has {', '.join(current)})")
        if not isinstance(update, dict):
            raise ConfigError(f"{where}.cells.{name}: expected a mapping, got {update!r}")
        current[name] = {**current[name], **update}
    return list(current.values())


def simulation_config(name: str, *, config_file: str | os.PathLike | None = None,
                      overrides: dict[str, Any] | None = None,
                      pixel_size_um: float | None = None, color: str | None = None
                      ) -> SimulationConfig:
    """A preset, with YAML-file and dict overrides, then pixel size and colour applied.

    Unknown keys or invalid values raise :class:`cellsynth.errors.ConfigError`.
    """
    config = preset(name)
    for source, data in ((str(config_file), load_yaml(config_file) if config_file else None),
                         ("overrides", overrides)):
        if not data:
            continue
        data = dict(data)
        if data.get("preset", name) != name:
            raise ConfigError(f"{source}: config is for preset {data['preset']!r}, not {name!r}")
        if isinstance(data.get("cells"), dict):
            data["cells"] = _merge_cells(config, data["cells"], source)
        config = override(config, data, where=source)
    if pixel_size_um is not None or color is not None:
        updates: dict[str, Any] = {}
        if color is not None:
            if color not in PRESET_COLORS[name]:
                raise ConfigError(f"preset {name!r} has no colour variant {color!r}; choose one "
                                  f"of {', '.join(PRESET_COLORS[name])}")
            updates["color"] = color
        if pixel_size_um is not None:
            if not (0 < pixel_size_um < float("inf")):
                raise ConfigError(f"pixel size must be a number > 0, got {pixel_size_um}")
            from cellsynth.io.resample import pixel_scale

            # (cells thousands of px across filled 22 GB; under a pixel, none was drawn)
            pixel_scale(config.pixel_size_um, pixel_size_um)  # beyond 32x: a unit typed wrong
            updates["pixel_size_um"] = pixel_size_um
        config = from_dict(SimulationConfig, {**to_dict(config), **updates}, where="options")
    return config


def simulate(preset_or_config: str | SimulationConfig, n: int, size: int | tuple[int, int] = 256,
             seed: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``n`` simulated (image, labels) pairs.

    Parameters
    ----------
    preset_or_config : a preset name ("merker", "nissl", "he", "fluo") or a SimulationConfig.
    n : number of images.
    size : side length, or (H, W).
    seed : run seed; image i uses the i-th child of ``SeedSequence(seed)``.

    Yields
    ------
    image : (H, W) or (H, W, 3) uint8.
    labels : (H, W) uint16 instance labels, 0 = background, ids 1..N.
    """
    config = (preset(preset_or_config) if isinstance(preset_or_config, str)
              else preset_or_config)
    return simulate_config(config, n, size, seed)
