"""Staging of the user's real data into the run folder, and the way back.

Real images at another pixel size than the simulation's, reduced to ``real.channel`` or
narrowed by ``real.select`` are copied once into RUN/real (stage ``real``), and every stage
reads them there (:func:`real_folder`), except the prediction: it reads the user's own
files, which the detector resamples and picks the channel of itself (stage ``predict``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cellsynth.io.datasets import load_dataset
from cellsynth.io.resample import pixel_scale, rescale_image, rescale_labels
from cellsynth.pipeline import layout

if TYPE_CHECKING:
    from cellsynth.pipeline.config import PipelineConfig

__all__ = ["real_folder", "real_samples", "SECTION_WINDOW", "SECTION_WINDOWS"]

# An unlabeled whole section at another pixel size than the run's is represented in RUN/real
# by its SECTION_WINDOWS most textured windows, each SECTION_WINDOW px a side once rescaled
# (what fit-simulator and the refiner would sample from it anyway).
SECTION_WINDOW = 1024
SECTION_WINDOWS = 16


def _sim_config(config: PipelineConfig, out: Path | None = None):
    """The simulation's config: the preset with ``overrides``; with ``simulate.fit_from`` and
    ``out``, the preset fitted to the real images first (``FIT/fitted.yaml``). The working
    pixel size is always the base's (``simulate.pixel_size_um`` or the preset's): the fit
    measures in micrometres, so it carries over."""
    # (here, not in stages.py, which imports it: the real data is staged at its pixel size)
    from cellsynth.simulate import preset, simulation_config

    s = config.simulate
    fitted = out / layout.FIT / layout.FITTED if s.fit_from and out is not None else None
    return simulation_config(s.preset, config_file=fitted, overrides=s.overrides or None,
                             pixel_size_um=s.pixel_size_um or (
                                 preset(s.preset).pixel_size_um if fitted else None),
                             color=s.color)


def _real_scale(config: PipelineConfig) -> float:
    """Factor from the real images' pixels to the working (simulation) pixels (1.0: none)."""
    if config.real.pixel_size_um is None:
        return 1.0
    return pixel_scale(config.real.pixel_size_um, _sim_config(config).pixel_size_um)


def _staged_roles(config: PipelineConfig) -> tuple[str, ...]:
    """Real-data roles read from a copy under RUN/real: all if the images are rescaled or
    reduced to ``real.channel``, else those with a ``real.select`` (only the chosen images
    are copied)."""
    roles = tuple(r for r in ("unlabeled", "train", "val", "test") if getattr(config.real, r))
    if _real_scale(config) != 1.0 or config.real.channel is not None:
        return roles
    return tuple(r for r in roles if r in config.real.select)


def _copied_as(config: PipelineConfig, role: str) -> str:
    """The staged role whose copy ``role`` reads: the first that names the same folder with
    the same ``real.select`` (val and train are often one folder; copied once), else itself."""
    folder, chosen = getattr(config.real, role), config.real.select.get(role)
    return next(r for r in _staged_roles(config)
                if getattr(config.real, r) == folder and config.real.select.get(r) == chosen)


def real_folder(config: PipelineConfig, out: Path, role: str) -> str | None:
    """The folder a stage should read for a real-data role (a rescaled or selected copy
    if needed)."""
    folder = getattr(config.real, role)
    if folder is None or role not in _staged_roles(config):
        return folder
    return str(out / layout.REAL / _copied_as(config, role))


def real_samples(config: PipelineConfig, role: str) -> list:
    """The samples of a real-data role in its original folder, as ``real.select`` chooses."""
    chosen = config.real.select.get(role)
    return [s for s in load_dataset(getattr(config.real, role))
            if chosen is None or s.id in {str(i) for i in chosen}]


def _same_dtype(image: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A resampled (float) image back in the dtype it was read in: integers rounded, floats
    as they are (rounding would turn an image in [0, 1] into zeros and ones)."""
    if np.issubdtype(dtype, np.integer):
        return image.round().astype(dtype)
    return image.astype(dtype)


def _rescale_real(config: PipelineConfig, out: Path, **kw: Any) -> dict[str, Any]:
    """RUN/real/<role>: the real images at the working pixel size and as ``real.channel``
    alone, or only the selected ones."""

    from cellsynth.io.files import staged_output_dir, write_json
    from cellsynth.io.images import write_image, write_labels
    from cellsynth.io.sections import open_image, reads_lazily, stage_channels, tissue_windows

    factor, channel = _real_scale(config), config.real.channel
    with staged_output_dir(out / layout.REAL, force=True) as root:
        for role in _staged_roles(config):
            if _copied_as(config, role) != role:
                continue  # read from the copy of the same images made for another role
            folder = getattr(config.real, role)
            (root / role / "images").mkdir(parents=True)
            windowed = []
            for sample in real_samples(config, role):
                if (factor != 1.0 or channel is not None) and reads_lazily(sample.image_path):
                    # an unlabeled whole section (check_inputs refuses annotated ones): its
                    # most textured windows, each rescaled; it is never decoded whole
                    side = max(1, round(SECTION_WINDOW / factor))
                    section = open_image(sample.image_path, channel=channel)
                    for y, x, pixels in tissue_windows(section, side, SECTION_WINDOWS,
                                                       seed=config.seed):
                        pixels = stage_channels(pixels)
                        scaled = _same_dtype(rescale_image(pixels, factor), pixels.dtype)
                        write_image(root / role / "images" / f"{sample.id}_y{y}_x{x}.tif",
                                    scaled)
                    windowed.append(str(sample.image_path))
                    continue
                if factor == 1.0 and channel is None:  # selected: the files as they are
                    shutil.copy2(sample.image_path, root / role / "images"
                                 / sample.image_path.name)
                    if sample.label_path is not None:
                        (root / role / "labels").mkdir(exist_ok=True)
                        shutil.copy2(sample.label_path, root / role / "labels"
                                     / sample.label_path.name)
                    continue
                image = (sample.read_image() if channel is None
                         else open_image(sample.image_path, channel=channel))
                labels = (sample.read_labels(shape=image.shape[:2]).astype(np.uint32)
                          if sample.label_path is not None else None)
                # cells outlined in regions of the image (QuPath): each region's box as an
                # image of its own (the rasterised labels would lose where they were drawn);
                # for every role, as train and val often read unlabeled's copy of one folder
                regions = (sample.annotated_boxes(image.shape[:2]) if labels is not None
                           else [])
                parts = ([(f"{sample.id}@{k}", box) for k, box in enumerate(regions)]
                         or [(sample.id, (slice(None), slice(None)))])
                for name, box in parts:
                    scaled = _same_dtype(rescale_image(image[box], factor), image.dtype)
                    suffix = ".png" if scaled.dtype in (np.uint8, np.uint16) else ".tif"
                    write_image(root / role / "images" / f"{name}{suffix}", scaled)
                    if labels is not None:
                        (root / role / "labels").mkdir(exist_ok=True)
                        write_labels(root / role / "labels" / f"{name}.tif",
                                     rescale_labels(labels[box], factor))
            # (not rescaled: the pixel size the config states, as the refiner and the
            # prediction take it, else the folder's; a file stating another is overruled)
            pixel_size = (_sim_config(config).pixel_size_um if factor != 1.0
                          else config.real.pixel_size_um or load_dataset(folder).pixel_size_um)
            write_json(root / role / layout.META, {
                "source": folder, "pixel_size_um": pixel_size, "rescaled_by": factor,
                "selected": config.real.select.get(role),
                **({"channel": channel} if channel is not None else {}),
                # sections represented by windows <id>_y<Y>_x<X> (their own pixels)
                **({"windows_of": windowed, "window_side_px": SECTION_WINDOW}
                   if windowed else {})})
    return {"factor": factor}
