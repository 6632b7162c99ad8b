"""Training crops for the detector: load dataset folders once, sample augmented crops.

Augmentation (on by default): flips, 90-degree rotations, scale (zoom 1/1.25 .. 1.25),
brightness / contrast / gamma jitter; opt-in: focus (a Gaussian blur of random width, as
between slides scanned a little out of focus) and stain strength per colour channel (each
channel raised to its own power near 1: a denser or paler stain in one dye) and rotation by
any angle and a smooth elastic bend (a window wide enough for the warped crop is cut and
resampled, so no corner is padded and no cell is mirrored into two). All randomness
comes from one numpy Generator, so a run (and its resume) is reproducible; an option left at
0 draws nothing, so the crops of a seed stay what they were before the option existed.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates
from skimage.transform import resize

from cellsynth.config import ADDED
from cellsynth.errors import DatasetError
from cellsynth.hardware import announce
from cellsynth.io.datasets import load_dataset
from cellsynth.io.images import colour_of, match_channels, select_channel
from cellsynth.io.normalize import DEFAULT, Normalization, normalize
from cellsynth.io.resample import pixel_scale, rescale_image, rescale_labels

__all__ = ["Augment", "LabeledImage", "load_labeled", "CropSampler"]

# how smooth the elastic displacement is (px of the crop before zoom): a field that bends a
# soma of ~30 px as a whole and its outline locally, not pixel by pixel
ELASTIC_SMOOTH_PX = 8.0


@dataclass(frozen=True)
class Augment:
    """Augmentation strengths; ``enabled=False`` turns all of them off."""

    enabled: bool = True
    scale: tuple[float, float] = (0.8, 1.25)   # zoom factor range
    brightness: float = 0.08                   # +- additive shift
    contrast: float = 0.15                     # +- relative contrast change
    gamma: float = 0.15                        # gamma in 1 +- this
    # half of the crops blurred by a Gaussian of sigma uniform in [0, blur] px (0: off)
    blur: float = field(default=0.0, metadata=ADDED)
    # each colour channel raised to its own power in 1 +- this (stain density per dye; 0: off,
    # no effect on one-channel images)
    stain: float = field(default=0.0, metadata=ADDED)
    # each crop turned by an angle uniform in +- this many degrees (0: off; 180: any angle),
    # on top of the 90-degree turns and flips
    rotate: float = field(default=0.0, metadata=ADDED)
    # each crop bent by a smooth random displacement (Gaussian noise smoothed over
    # ELASTIC_SMOOTH_PX) of this RMS in px, as cells of other shapes (0: off)
    elastic: float = field(default=0.0, metadata=ADDED)
    # the 90-degree turns and flips (False: crops keep the image's orientation, as where the
    # tissue's own orientation, e.g. the pia's side of a cortex, is the same in every image)
    turns: bool = field(default=True, metadata=ADDED)

    def __post_init__(self) -> None:
        if not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"augment.scale must be an increasing positive range, got "
                             f"{list(self.scale)}")
        if min(self.brightness, self.contrast, self.gamma) < 0 or self.gamma >= 1:
            raise ValueError("augment: brightness, contrast >= 0 and 0 <= gamma < 1 required")
        if self.blur < 0 or not 0 <= self.stain < 1:
            raise ValueError("augment: blur >= 0 and 0 <= stain < 1 required")
        if not 0 <= self.rotate <= 180:
            raise ValueError(f"augment: rotate must be in [0, 180] degrees, got {self.rotate}")
        if not 0 <= self.elastic <= ELASTIC_SMOOTH_PX:
            raise ValueError(f"augment: elastic must be in [0, {ELASTIC_SMOOTH_PX:g}] px, got "
                             f"{self.elastic}")


@dataclass(frozen=True)
class LabeledImage:
    id: str
    image: np.ndarray   # (H, W, C) float32 in [0, 1]
    labels: np.ndarray  # (H, W) int32


def load_labeled(roots: Sequence[str | os.PathLike], *, channels: int | None = None,
                 pixel_size_um: float | None = None,
                 normalization: Normalization = DEFAULT,
                 channel: int | None = None,
                 source_pixel_size_um: float | None = None,
                 source_channel: int | None = None) -> list[LabeledImage]:
    """Read every (image, labels) pair of the given dataset folders into memory.

    ``channels`` defaults to the first image's; others are converted. If ``pixel_size_um``
    is given, images whose dataset (meta.json) or own file (TIFF / OME metadata) states another
    pixel size are rescaled to it.
    Intensities are mapped to [0, 1] per image by ``normalization``; ``channel`` keeps only
    that channel of multi-channel images (see :func:`cellsynth.io.images.select_channel`).
    ``source_pixel_size_um``: the images' pixel size, over what their folders and files say.
    ``source_channel`` (without ``channel``): that channel of multi-channel images, gray ones
    as they are (a detector trained on one channel staged gray, fine-tuned on either).
    """
    out: list[LabeledImage] = []
    for root in roots:
        dataset = load_dataset(root, require_labels=True)
        unknown = 0
        first_of: Counter[int] = Counter()  # images of n channels given their channel 0
        for sample in dataset:
            image, labels = sample.read(all_channels=True)
            count = image.shape[2] if image.ndim == 3 else 1
            if channel is None and source_channel is not None and count > 1:
                image = select_channel(image, source_channel, where=str(sample.image_path))
            elif channel is None and (count != 1 and not (count == 3 and colour_of(
                    image, sample.image_path))):
                first_of[count] += 1
                image = image[..., 0]  # (said once for the folder below, not per image)
            image = select_channel(image, channel, where=str(sample.image_path))
            image = normalize(image, normalization, where=str(sample.image_path))
            channels = channels or (1 if image.ndim == 2 else 3)
            image = match_channels(image, channels, where=str(sample.image_path))
            labels = labels.astype(np.int32)
            source_um = (source_pixel_size_um or dataset.pixel_size_of(sample)
                         if pixel_size_um is not None else None)
            unknown += pixel_size_um is not None and source_um is None
            factor = pixel_scale(source_um, pixel_size_um)
            name = f"{dataset.root.name}/{sample.id}"
            # cells annotated in regions of the image (QuPath): only those parts, where
            # every cell was outlined (elsewhere unannotated cells would teach background)
            boxes = sample.annotated_boxes(labels.shape)
            if boxes:
                announce(f"{sample.label_path}: cells annotated in {len(boxes)} region(s); "
                         f"trained and validated inside them only")
            for k, box in enumerate(boxes or [(slice(None), slice(None))]):
                out.append(LabeledImage(f"{name}@{k}" if boxes else name,
                                        rescale_image(image[box], factor),
                                        rescale_labels(labels[box], factor)))
        for count, n in sorted(first_of.items()):
            warnings.warn(f"{dataset.root}: {n} image(s) with {count} channels"
                          f"{', not RGB' if count == 3 else ''}; using channel 0 (choose "
                          f"another with --channel, 0-{count - 1})", stacklevel=2)
        if unknown:  # nothing to rescale from: say so, or a working resolution is ignored
            warnings.warn(f"{dataset.root}: {unknown} of {len(dataset)} image(s) state no pixel "
                          f"size (meta.json pixel_size_um, or the TIFF's own metadata); used "
                          f"as they are, as if at the working {pixel_size_um:g} um/px",
                          stacklevel=2)
    if not out:
        raise DatasetError(f"no labeled images in {', '.join(map(str, roots))}")
    return out


def stated_pixel_size(roots: Sequence[str | os.PathLike]) -> float | None:
    """The one pixel size the dataset folders ``roots`` state (meta.json, else what all of
    a folder's files state alike), folders stating none aside; None where none states one,
    or, with a warning, where they state different ones (then nothing is rescaled)."""
    from cellsynth.io.resample import RELATIVE_TOLERANCE

    stated = [(root, px) for root in roots
              if (px := load_dataset(root, require_labels=True).pixel_size_um) is not None]
    if any(abs(px / stated[0][1] - 1.0) > RELATIVE_TOLERANCE for _, px in stated):
        warnings.warn("folders at different pixel sizes ("
                      + ", ".join(f"{root}: {px:g} um" for root, px in stated)
                      + "); trained on as they are (--pixel-size rescales them to one)",
                      stacklevel=2)
        return None
    return stated[0][1] if stated else None


class CropSampler:
    """Random (augmented) crops of fixed size from a list of labeled images.

    Images smaller than the crop are padded with their median colour and label 0. Images
    are drawn with probability proportional to their area.
    """

    def __init__(self, items: list[LabeledImage], crop: int, augment: Augment,
                 rng: np.random.Generator):
        self.items = items
        self.crop = crop
        self.augment = augment
        self.rng = rng
        areas = np.array([i.labels.size for i in items], np.float64)
        self.weights = areas / areas.sum()

    def _window(self, item: LabeledImage, size: int) -> tuple[np.ndarray, np.ndarray]:
        h, w = item.labels.shape
        ph, pw = max(size - h, 0), max(size - w, 0)
        image, labels = item.image, item.labels
        if ph or pw:
            fill = np.median(image.reshape(-1, image.shape[-1]), axis=0)
            padded = np.empty((h + ph, w + pw, image.shape[-1]), np.float32)
            padded[...] = fill
            padded[:h, :w] = image
            image = padded
            labels = np.pad(labels, ((0, ph), (0, pw)))
        y = int(self.rng.integers(0, image.shape[0] - size + 1))
        x = int(self.rng.integers(0, image.shape[1] - size + 1))
        return image[y:y + size, x:x + size], labels[y:y + size, x:x + size]

    def _warped(self, item: LabeledImage, size: int, angle: float,
                elastic: float) -> tuple[np.ndarray, np.ndarray]:
        """A size x size crop turned by ``angle`` degrees about its centre and bent by a smooth
        random displacement of RMS ``elastic`` px: the window it is cut from is wide enough
        that every output pixel has an image pixel behind it (no padding, no mirrored cell)."""
        turn = np.deg2rad(angle)
        margin = int(np.ceil(3 * elastic))
        wide = int(np.ceil(size * (abs(np.cos(turn)) + abs(np.sin(turn))))) + 2 + 2 * margin
        image, labels = self._window(item, wide)
        centre_in, centre_out = (wide - 1) / 2, (size - 1) / 2
        rows, cols = np.mgrid[:size, :size].astype(np.float32) - centre_out
        cos, sin = np.cos(turn), np.sin(turn)
        # (as skimage's AffineTransform(rotation=turn) maps output (x, y) into the window)
        where = np.stack([centre_in + sin * cols + cos * rows,
                          centre_in + cos * cols - sin * rows])
        if elastic > 0:
            field = gaussian_filter(self.rng.standard_normal((2, size, size)),
                                    (0, ELASTIC_SMOOTH_PX, ELASTIC_SMOOTH_PX))
            field *= elastic / max(float(np.sqrt(np.mean(field ** 2))), 1e-12)
            where += np.clip(field, -margin, margin)
        warped = np.stack([map_coordinates(image[..., c], where, order=1, mode="nearest")
                           for c in range(image.shape[-1])], axis=-1).astype(np.float32)
        warped_labels = map_coordinates(labels, where, order=0, mode="nearest")
        return warped, warped_labels.astype(np.int32)

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """One crop: image (crop, crop, C) float32 in [0, 1], labels (crop, crop) int32."""
        rng, aug = self.rng, self.augment
        item = self.items[int(rng.choice(len(self.items), p=self.weights))]
        zoom = float(np.exp(rng.uniform(*np.log(aug.scale)))) if aug.enabled else 1.0
        size = max(8, int(round(self.crop / zoom)))
        if aug.enabled and (aug.rotate > 0 or aug.elastic > 0):
            angle = float(rng.uniform(-aug.rotate, aug.rotate)) if aug.rotate > 0 else 0.0
            image, labels = self._warped(item, size, angle, aug.elastic)
        else:
            image, labels = self._window(item, size)
        if size != self.crop:
            image = resize(image, (self.crop, self.crop), order=1, anti_aliasing=size > self.crop,
                           preserve_range=True).astype(np.float32)
            labels = resize(labels, (self.crop, self.crop), order=0, anti_aliasing=False,
                            preserve_range=True).astype(np.int32)
        if aug.enabled:
            if aug.turns:
                k = int(rng.integers(4))
                image, labels = np.rot90(image, k), np.rot90(labels, k)
                if rng.random() < 0.5:
                    image, labels = image[:, ::-1], labels[:, ::-1]
            mean = image.mean()
            contrast = 1 + rng.uniform(-aug.contrast, aug.contrast)
            image = (image - mean) * contrast + mean + rng.uniform(-aug.brightness, aug.brightness)
            image = np.clip(image, 0, 1) ** (1 + rng.uniform(-aug.gamma, aug.gamma))
            if aug.stain > 0 and image.shape[-1] > 1:
                image = image ** (1 + rng.uniform(-aug.stain, aug.stain, image.shape[-1]))
            if aug.blur > 0 and rng.random() < 0.5:
                sigma = float(rng.uniform(0, aug.blur))
                image = gaussian_filter(np.asarray(image, np.float32), (sigma, sigma, 0),
                                        mode="reflect")
        return (np.ascontiguousarray(image, dtype=np.float32),
                np.ascontiguousarray(labels, dtype=np.int32))
