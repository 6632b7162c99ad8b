"""Training crops: simulated (image, labels) pairs and unlabeled real images, as tensors.

Both sets are decoded once and kept in memory, except whole sections (real TIFFs larger than
``LAZY_PIXELS``, pyramidal TIFFs, Zarr), which are memory-mapped where uncompressed and
otherwise read window by window, cropped on demand from their 16 windows of 1024² with the
most tissue (empty glass is not a real image the refiner should imitate). Real images are
brought to the simulation's channel count (RGB -> gray or gray -> RGB, with a note) and,
when both pixel sizes are known, rescaled once to the simulation's pixel size. Intensities
are normalised by each whole image's content (:func:`cellsynth.io.normalize.normalize`), so
8-, 12- and 16-bit images agree, and then mapped to [-1, 1]. Every crop gets a random
flip/rotation (the dihedral group of the square).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellsynth.errors import DatasetError, ImageReadError
from cellsynth.io.datasets import Dataset, load_dataset
from cellsynth.io.images import match_channels, read_image, select_channel
from cellsynth.io.normalize import DEFAULT, Normalization, apply_range, intensity_range, normalize
from cellsynth.io.resample import pixel_scale, rescale_image
from cellsynth.io.sections import open_image, open_large_image, reads_lazily, stage_channels

__all__ = ["SimulatedCrops", "RealCrops", "LAZY_PIXELS", "load_simulated", "read_layout"]

LAZY_PIXELS = 8192 * 8192  # larger TIFFs are memory-mapped or read by windows, not decoded
TISSUE_WINDOW, TISSUE_WINDOWS = 1024, 16  # crops of a section come from its most textured windows


def _channels(image: np.ndarray) -> int:
    return 3 if len(image.shape) == 3 and image.shape[2] == 3 else 1


def load_simulated(root: str | os.PathLike) -> Dataset:
    """A simulated dataset; every image needs its labels (the refiner is conditioned on them
    and generate copies them)."""
    dataset = load_dataset(root)
    if not dataset.has_labels:
        missing = [s.image_path.name for s in dataset if s.label_path is None]
        raise DatasetError(f"{dataset.root}: simulated dataset needs labels, but "
                           f"{len(missing)} image(s) have no label file (e.g. {missing[0]}); "
                           f"expected {dataset.root}/labels/<id>.tif")
    return dataset


def read_layout(sample, labels: np.ndarray) -> np.ndarray:
    """The :func:`~cellsynth.refine.spade.scene_layout` of a simulated sample: its labels with
    the class map that ``cellsynth simulate`` writes beside them (classes/<id>.png)."""
    from cellsynth.refine.spade import scene_layout
    from cellsynth.simulate.dataset import CLASS_DIR, CLASS_SUFFIX

    path = sample.image_path.parent.parent / CLASS_DIR / (sample.id + CLASS_SUFFIX)
    if not path.is_file():
        raise DatasetError(f"{path}: missing; class_map: true needs the class maps that "
                           f"cellsynth simulate writes (simulate again, or set class_map: "
                           f"false)")
    classes = read_image(path)
    if classes.shape != labels.shape:
        raise DatasetError(f"{path}: class map {classes.shape[0]}x{classes.shape[1]} does not "
                           f"match its labels {labels.shape[0]}x{labels.shape[1]}")
    return scene_layout(labels, classes)


def _dihedral(array: np.ndarray, k: int, flip: bool) -> np.ndarray:
    """Rotate an (H, W, ...) array by k * 90 degrees and optionally flip it."""
    array = np.rot90(array, k, axes=(0, 1))
    return array[:, ::-1] if flip else array


def _check_size(shape: tuple[int, ...], crop: int, path: Path) -> None:
    if min(shape[:2]) < crop:
        raise DatasetError(f"{path}: image is {shape[0]}x{shape[1]}, smaller than the "
                           f"training crop {crop}x{crop} (use a smaller --crop)")


class SimulatedCrops:
    """Random crops of a simulated dataset with labels.

    Parameters
    ----------
    root : dataset folder with images/ and labels/.
    crop : crop side in pixels.
    class_map : keep :func:`read_layout` maps (labels plus unlabelled classes) as the labels.
    """

    def __init__(self, root: str | os.PathLike, crop: int, *,
                 normalization: Normalization = DEFAULT, class_map: bool = False) -> None:
        dataset = load_simulated(root)
        self.root = dataset.root
        self.pixel_size_um = dataset.pixel_size_um
        self.crop = crop
        self.images: list[np.ndarray] = []  # (H, W, C) float32 in [-1, 1]
        self.labels: list[np.ndarray] = []  # (H, W) int32
        for sample in dataset:
            image, labels = sample.read()
            _check_size(image.shape, crop, sample.image_path)
            if self.images and _channels(image) != self.channels:
                raise DatasetError(f"{sample.image_path}: has {_channels(image)} channel(s), "
                                   f"the first image has {self.channels}")
            image = normalize(image, normalization, where=str(sample.image_path))
            self.images.append(match_channels(image, _channels(image)) * 2 - 1)
            self.labels.append(read_layout(sample, labels) if class_map
                               else labels.astype(np.int32))

    @property
    def channels(self) -> int:
        return self.images[0].shape[-1]

    def sample(self, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` random crops: images (n, C, crop, crop) float32, labels (n, crop, crop) int64."""
        c = self.crop
        images = np.empty((n, c, c, self.channels), np.float32)
        labels = np.empty((n, c, c), np.int64)
        for i in range(n):
            j = int(rng.integers(len(self.images)))
            h, w = self.labels[j].shape
            y, x = int(rng.integers(h - c + 1)), int(rng.integers(w - c + 1))
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            images[i] = _dihedral(self.images[j][y:y + c, x:x + c], k, flip)
            labels[i] = _dihedral(self.labels[j][y:y + c, x:x + c], k, flip)
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


def _open_lazy(path: Path, channel: int | None = None) -> Any:
    """A whole section opened lazily (:mod:`cellsynth.io.sections`: a memory map of a large
    uncompressed TIFF, else tile by tile), or None for an image small enough to decode.
    ``channel``: only that channel of a multi-channel section (still lazy)."""
    if not reads_lazily(path, LAZY_PIXELS):
        return None
    import tifffile

    try:
        array = tifffile.memmap(path, mode="r")
        if channel is not None and array.ndim == 3 and array.shape[-1] <= 4:
            return select_channel(array, channel, where=str(path))
        if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4)):
            return array
    except (ValueError, OSError, tifffile.TiffFileError, IndexError):
        pass  # compressed, tiled, pyramidal or Zarr: read window by window
    try:
        array = open_large_image(path)
    except ImageReadError:
        return None  # decoding the whole file says what is wrong with it
    if channel is not None and array.ndim == 3:
        return select_channel(array, channel, where=str(path))
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4)):
        return array
    return None


def _tissue_regions(image: Any, need: int) -> list[tuple[int, int, int, int]]:
    """Where the crops of a whole section come from: its ``TISSUE_WINDOWS`` windows of
    ``TISSUE_WINDOW`` px with the most tissue (:func:`cellsynth.io.sections.tissue_windows`),
    so that empty glass, which may be most of a slide, does not teach the discriminator
    what real tissue looks like. An image of at most 2 such windows a side is used whole."""
    from cellsynth.io.sections import tissue_windows

    h, w = int(image.shape[0]), int(image.shape[1])
    side = max(TISSUE_WINDOW, need)
    if h <= 2 * side and w <= 2 * side:
        return [(0, 0, h, w)]
    return [(y, x, p.shape[0], p.shape[1])
            for y, x, p in tissue_windows(image, side, TISSUE_WINDOWS,
                                          candidates=max(64, 4 * TISSUE_WINDOWS))]


class RealCrops:
    """Random crops of a folder of unlabeled real images (labels, if any, are ignored).

    Parameters
    ----------
    root : a dataset folder (images/ used) or a plain folder of images.
    crop : crop side in pixels (after rescaling).
    channels : channels of the simulation (1 or 3); real images are converted to it.
    sim_pixel_size_um, real_pixel_size_um : where both are known, real images are rescaled
        to the simulation's pixel size; ``real_pixel_size_um`` defaults to the folder's
        meta.json, else to what each image file states (images stating none: used as they
        are).
    normalization : intensity mapping to [0, 1], from each whole image (lazy ones sampled).
    channel : only this channel (0-based) of multi-channel images (default: gray and RGB as
        they are, channel 0 of any other number of channels, with a warning).
    """

    def __init__(self, root: str | os.PathLike, crop: int, channels: int, *,
                 sim_pixel_size_um: float | None = None,
                 real_pixel_size_um: float | None = None,
                 normalization: Normalization = DEFAULT, channel: int | None = None) -> None:
        dataset = load_dataset(root)
        self.normalization = normalization
        self.ranges: list[tuple[np.ndarray, np.ndarray] | None] = []  # of lazy images
        self.root = dataset.root
        self.crop = crop
        self.channels = channels
        self.notes: list[str] = []
        # each image's pixel size: the one given, else meta.json's, else what its file
        # states (as predict and the detector's training take them: a section stating
        # 0.25 um/px among crops stating none was taken at the simulation's)
        sizes = [real_pixel_size_um or dataset.pixel_size_of(s) for s in dataset]
        self.scales = [pixel_scale(px, sim_pixel_size_um) for px in sizes]
        known = sorted({px for px in sizes if px})
        unknown = sum(1 for px in sizes if not px)
        if any(scale != 1.0 for scale in self.scales):
            self.notes.append(
                f"real images rescaled x{self.scales[sizes.index(known[0])]:.3f} from "
                f"{known[0]} um/px to the simulation's {sim_pixel_size_um} um/px"
                if len(known) == 1 and not unknown else
                f"real images rescaled to the simulation's {sim_pixel_size_um} um/px from "
                f"what each states ({', '.join(f'{px:g}' for px in known)} um/px)"
                + (f"; {unknown} stating none taken to be at it" if unknown else ""))
        if sim_pixel_size_um and unknown == len(sizes):
            self.notes.append(f"{dataset.root}: pixel size unknown (no meta.json "
                              f"pixel_size_um, no --real-pixel-size); real images used as they "
                              f"are, i.e. taken to be at the simulation's {sim_pixel_size_um} "
                              f"um/px")
        self.images: list[np.ndarray] = []  # (H, W, C) float32 in [-1, 1], or raw memmaps
        self.lazy: list[bool] = []
        # of lazy images: the windows of tissue that crops are drawn from (y, x, h, w)
        self.regions: list[list[tuple[int, int, int, int]] | None] = []
        converted = set()
        for sample, scale in zip(dataset, self.scales):
            array = _open_lazy(sample.image_path, channel)
            if array is not None:
                need = int(np.ceil(crop / scale))
                _check_size(array.shape, need, sample.image_path)
                self.images.append(array)
                self.lazy.append(True)
                low, high = intensity_range(array, normalization, where=str(sample.image_path))
                # not gray or RGB (fluorescence channels): channel 0 is used (stage_channels)
                self.ranges.append((low, high) if low.size in (1, 3) else (low[:1], high[:1]))
                self.regions.append(_tissue_regions(array, need))
            else:
                image = (read_image(sample.image_path) if channel is None else
                         open_image(sample.image_path, channel=channel))
                self.images.append(self._prepare(image, sample.image_path, scale))
                self.lazy.append(False)
                self.ranges.append(None)
                self.regions.append(None)
            raw = array if array is not None else image
            if _channels(raw) != channels:
                converted.add(_channels(raw))
        if converted:
            what = "RGB -> gray" if channels == 1 else "gray -> RGB"
            self.notes.append(f"real images converted {what} to match the simulation")

    def _prepare(self, image: np.ndarray, path: Path, scale: float,
                 window_of: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Decoded image -> (H, W, C) float32 in [-1, 1] at the simulation's pixel size
        (``scale``: the factor to it).

        ``window_of``: the (low, high) range of the whole image this is a window of.
        """
        if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype,
                                                                         np.floating)):
            raise ImageReadError(f"{path}: unsupported dtype {image.dtype}")
        if window_of is None:
            image = normalize(image, self.normalization, where=str(path))
        else:
            image = apply_range(image, *window_of)
        image = match_channels(image, self.channels)
        image = rescale_image(image, scale)
        _check_size(image.shape, self.crop, path)
        return image * 2 - 1

    def _crop(self, j: int, rng: np.random.Generator) -> np.ndarray:
        c = self.crop
        image = self.images[j]
        if not self.lazy[j]:
            h, w = image.shape[:2]
            y, x = int(rng.integers(h - c + 1)), int(rng.integers(w - c + 1))
            return image[y:y + c, x:x + c]
        # lazy: read the window that covers the crop after rescaling, then prepare only it
        need = int(np.ceil(c / self.scales[j]))
        ry, rx, h, w = self.regions[j][int(rng.integers(len(self.regions[j])))]
        y, x = ry + int(rng.integers(h - need + 1)), rx + int(rng.integers(w - need + 1))
        window = np.asarray(image[y:y + need, x:x + need])
        window = stage_channels(window)
        window = self._prepare(window, self.root, self.scales[j],
                               window_of=self.ranges[j])
        return window[:c, :c]

    def sample(self, n: int, rng: np.random.Generator) -> torch.Tensor:
        """``n`` random crops, (n, C, crop, crop) float32 in [-1, 1]."""
        c = self.crop
        out = np.empty((n, c, c, self.channels), np.float32)
        for i in range(n):
            j = int(rng.integers(len(self.images)))
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            out[i] = _dihedral(self._crop(j, rng), k, flip)
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
