"""The dataset folder layout that connects every stage.

::

    DIR/images/<id>.tif|.png     (H, W) or (H, W, 3) images; <id>.zarr: an OME-Zarr section
                                 (read window by window where the images are unlabeled)
    DIR/labels/<id>.tif|.png     optional (H, W) uint16/uint32 instance labels, 0 = background,
                                 or <id>.geojson: cell polygons exported from QuPath
    DIR/meta.json                optional provenance (parameters, seed, pixel size)

A plain folder of images (no ``images/`` sub-folder) is accepted as an unlabeled dataset.
Cellpose training folders (``x.tif`` beside ``x_masks.tif`` or ``x_mask.tif``, or beside the
GUI's ``x_seg.npy``) and StarDist folders (``images/`` + ``masks/``) are recognised and read as
they are, with a one-line note. The two sub-folders may be named in any case and in the
singular (``Images/`` + ``Labels/``, ``image/`` + ``label/``, ``img/`` + ``mask/``).
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.errors import DatasetError, ImageReadError
from cellsynth.io.files import IMAGE_FOLDERS, LABEL_FOLDERS, names_in, write_json
from cellsynth.io.geojson import GEOMETRIES
from cellsynth.io.images import (
    CELLPOSE_SEG_SUFFIX,
    CONVERT_HINT,
    FOREIGN_FORMATS,
    GEOJSON_SUFFIX,
    IMAGE_SUFFIXES,
    LABEL_SUFFIXES,
    foreign_files,
    read_image,
    read_labels,
    unread_format,
)
from cellsynth.io.resample import RELATIVE_TOLERANCE, read_pixel_size
from cellsynth.pipeline import layout

__all__ = ["Sample", "Dataset", "load_dataset", "check_label_sizes", "write_dataset_meta",
           "CELLPOSE_SUFFIX", "file_id", "plain_id", "IMAGE_FOLDERS", "LABEL_FOLDERS",
           "sub_folder", "meta_pixel_size", "is_one_image"]

CELLPOSE_SUFFIX = "_masks"  # Cellpose's training folders pair x.tif with x_masks.tif
MASK_SUFFIXES = (CELLPOSE_SUFFIX, "_mask")  # x_mask.tif beside x.tif: the same pairing
CELLPOSE_PREDICTED_SUFFIX = "_cp_masks"  # `cellpose --save_png/--save_tif`: x_cp_masks.png
CELLPOSE_FLOWS = "_flows"  # Cellpose's training writes x_flows.tif beside x.tif: not an image


def sub_folder(root: Path, names: tuple[str, ...]) -> Path | None:
    """The sub-folder of ``root`` with the first of ``names`` (exactly, else in any case:
    ``Images/``), or None. Lists ``root`` once."""
    present = names_in(root)
    for name in names:
        if name in present and (root / name).is_dir():
            return root / name
    lower = {n.lower(): n for n in reversed(present)}
    for name in names:
        if name in lower and (root / lower[name]).is_dir():
            return root / lower[name]
    return None


@dataclass(frozen=True)
class Sample:
    """One image of a dataset and, if present, its label map."""

    id: str
    image_path: Path
    label_path: Path | None = None
    geojson_geometry: str = "cell"  # which outline of a QuPath cell a .geojson label draws

    def read_image(self, *, all_channels: bool = False) -> np.ndarray:
        """The image (see :func:`cellsynth.io.images.read_image`; ``all_channels`` keeps
        every channel of a multi-channel image for ``select_channel``)."""
        if self.image_path.is_dir():  # <id>.zarr
            raise ImageReadError(f"{self.image_path}: a Zarr section is read window by window "
                                 f"(cellsynth predict, fit-simulator, the refiner's unlabeled "
                                 f"images), not whole; save a training image as TIFF or PNG")
        return read_image(self.image_path, all_channels=all_channels)

    def read_labels(self, *, shape: tuple[int, int] | None = None) -> np.ndarray:
        """The label map; QuPath outlines (``.geojson``) are drawn at ``shape`` or, without
        it, at the image's size (which then reads the image)."""
        if self.label_path is None:
            raise DatasetError(f"{self.image_path}: image has no label file")
        if shape is None and self.label_path.suffix.lower() == GEOJSON_SUFFIX:
            from cellsynth.io.sections import open_image

            shape = tuple(open_image(self.image_path).shape[:2])
        return read_labels(self.label_path, shape=shape,
                           geojson_geometry=self.geojson_geometry)

    def annotated_boxes(self, shape: tuple[int, int]) -> list[tuple[slice, slice]]:
        """Where this image's cells were annotated, if only in parts of it: the boxes of the
        regions in its QuPath GeoJSON (:func:`cellsynth.io.geojson.read_geojson_regions`);
        [] for a label map or GeoJSON without regions (the whole image annotated)."""
        if self.label_path is None or self.label_path.suffix.lower() != GEOJSON_SUFFIX:
            return []
        from cellsynth.io.geojson import read_geojson_regions

        return read_geojson_regions(self.label_path, shape)

    @property
    def stated_pixel_size_um(self) -> float | None:
        """The pixel size (um) the image file states about itself (OME-TIFF, ImageJ or
        resolution tags, OME-Zarr scale; see :func:`~cellsynth.io.resample.read_pixel_size`),
        else None. Reads the file's header only."""
        return read_pixel_size(self.image_path)

    def read(self, *, all_channels: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Read image and labels, checking that their sizes agree."""
        image = self.read_image(all_channels=all_channels)
        labels = self.read_labels(shape=image.shape[:2])
        if image.shape[:2] != labels.shape:
            raise ImageReadError(
                f"{self.label_path}: label size {labels.shape[0]}x{labels.shape[1]} does not match "
                f"image {self.image_path.name} size {image.shape[0]}x{image.shape[1]}"
            )
        return image, labels


@dataclass(frozen=True)
class Dataset:
    """A validated dataset folder: its samples (sorted by id) and its meta.json."""

    root: Path
    samples: tuple[Sample, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]

    @property
    def geojson_geometry(self) -> str:
        """Which outline of a QuPath cell the folder's .geojson labels draw (meta.json's
        ``geojson_geometry``, checked by :func:`load_dataset`; "cell" without one)."""
        return self.meta.get("geojson_geometry", "cell")

    @property
    def has_labels(self) -> bool:
        return all(s.label_path is not None for s in self.samples)

    @cached_property
    def pixel_size_um(self) -> float | None:
        """meta.json's ``pixel_size_um``; without one, the pixel size every image states
        about itself (TIFF / OME-Zarr metadata) where they all state one and agree; else
        None. Per image: :meth:`pixel_size_of`."""
        value = self.meta.get("pixel_size_um")
        if value is not None:
            return float(value)
        common: float | None = None
        for sample in self.samples:
            size = sample.stated_pixel_size_um
            if size is None or (common is not None
                                and abs(size / common - 1.0) > RELATIVE_TOLERANCE):
                return None
            common = common or size
        return common

    def pixel_size_of(self, sample: Sample) -> float | None:
        """``sample``'s pixel size: meta.json's for the whole folder, else what its file
        states, else None (a folder of images from several microscopes keeps each one's)."""
        value = self.meta.get("pixel_size_um")
        return float(value) if value is not None else sample.stated_pixel_size_um


def plain_id(name: str) -> str:
    """A file name without its extension as an id: less a trailing ``.ome`` (OME-TIFF's
    x.ome.tif, OME-Zarr's x.ome.zarr) and an image extension left in it (QuPath scripts
    name outlines after the image: x.tif.geojson), so image and labels pair as ``x``."""
    while True:
        lower = name.lower()
        ext = next((e for e in (".ome", *IMAGE_SUFFIXES)
                    if lower.endswith(e) and len(name) > len(e)), None)
        if ext is None:
            return name
        name = name[:-len(ext)]


def file_id(path: Path) -> str:
    """The id of an image or label file (or .zarr folder): x.tif, x.ome.tif, x.ome.zarr,
    x.tif.geojson -> x (:func:`plain_id`)."""
    return plain_id(path.name[:-len(path.suffix)] if path.suffix else path.name)


def files_by_id(folder: Path, *, zarr_sections: bool = False,
                 suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> dict[str, Path]:
    """Image (or label) files by id; with ``zarr_sections`` also ``<id>.zarr`` folders."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        zarr = zarr_sections and path.is_dir() and path.suffix.lower() == ".zarr"
        if not zarr and (not path.is_file() or path.suffix.lower() not in suffixes):
            continue
        key = file_id(path)
        if key in found:
            raise DatasetError(f"{folder}: two files share the id {key!r}: "
                               f"{found[key].name} and {path.name}")
        found[key] = path
    return found


def announce_skipped(folder: Path, files: list[Path]) -> None:
    """Warn once (even with --quiet: they are the user's images) that ``files`` (of
    :func:`foreign_files`) in ``folder`` are not read."""
    if files:
        warnings.warn(f"{folder}: {describe_foreign(files)} skipped (not read; "
                      f"{CONVERT_HINT})", stacklevel=2)


def _without_flows(images: dict[str, Path]) -> tuple[dict[str, Path], list[Path]]:
    """``images`` less Cellpose's flow files (``x_flows.tif`` beside the image ``x``, a
    4-channel float map its training writes), and those files."""
    flows = [i for i in images if i.endswith(CELLPOSE_FLOWS)
             and plain_id(i[:-len(CELLPOSE_FLOWS)]) in images]
    return {i: p for i, p in images.items() if i not in flows}, [images[i] for i in flows]


def _cellpose_masks(images: dict[str, Path]) -> tuple[dict[str, Path], str, str]:
    """The label files among a flat folder's ``images`` by the id of their image: Cellpose's
    ``x_masks`` (its training folders; named after the file less its last extension:
    ``x.ome_masks.tif``), ``x_cp_masks`` (what ``cellpose --save_png`` predicts) or
    ``x_mask`` (only where ``x`` is an image: else it may be an image of that name); the
    image may be ``x_img`` (Cellpose's own datasets: ``000_img.png`` + ``000_masks.png``).
    Returns (masks, their suffix, "_img" or "")."""
    for suffix in (CELLPOSE_PREDICTED_SUFFIX, CELLPOSE_SUFFIX, MASK_SUFFIXES[1]):
        bases = {i: plain_id(i[:-len(suffix)]) for i in images if i.endswith(suffix)}
        img = ("_img" if bases and all(b not in images and b + "_img" in images
                                       for b in bases.values()) else "")
        masks = {bases[i] + img: images[i] for i in bases
                 if suffix != MASK_SUFFIXES[1] or bases[i] + img in images}
        if masks:
            return masks, suffix, img
    return {}, CELLPOSE_SUFFIX, ""


def describe_foreign(files: list[Path]) -> str:
    """'3 Zeiss CZI file(s) (a.czi, ...)' for the files of formats that are not read."""
    kinds = sorted({FOREIGN_FORMATS[p.suffix.lower()] for p in files})
    more = ", ..." if len(files) > 2 else ""
    return (f"{len(files)} {' / '.join(kinds)} file(s) "
            f"({', '.join(p.name for p in files[:2])}{more})")


def check_label_sizes(dataset: Dataset) -> None:
    """Raise :class:`ImageReadError` naming the first label map whose size differs from its
    image's, from the two files' headers (no pixel decoded): a run found it when fine-tuning
    began, after its pretraining. QuPath outlines and Cellpose ``_seg.npy`` files state no
    size of their own (drawn at the image's, or read whole) and are checked when read."""
    from cellsynth.io.sections import image_shape

    for sample in dataset:
        label = sample.label_path
        if label is None or label.suffix.lower() == GEOJSON_SUFFIX or label.name.endswith(
                CELLPOSE_SEG_SUFFIX):
            continue
        (h, w), (lh, lw) = image_shape(sample.image_path), image_shape(label)
        if (h, w) != (lh, lw):
            raise ImageReadError(f"{label}: label size {lh}x{lw} does not match image "
                                 f"{sample.image_path.name} size {h}x{w}")


def _what_it_is(root: Path) -> str:
    """Why a folder without images may have been given, for the error that says so: a
    cellsynth run (its predictions are in predict/), a training run (a detector), or a
    project whose sub-folders hold the images (named otherwise than images/)."""
    if (root / layout.STATE).is_file() and (root / layout.CONFIG).is_file():
        return (f"; it is a cellsynth run folder: its predicted labels are in "
                f"{root / layout.PREDICT}, its detector is given as --detector {root}")
    if (root / layout.RUN_INFO).is_file():
        return "; it is a training run (a detector): give it to --detector"
    if any(root.glob(f"*{GEOJSON_SUFFIX}")):  # (an `export --to geojson`, QuPath's export)
        return ("; it holds QuPath GeoJSON outlines: put them in labels/ beside their images "
                "in images/ (labels/<id>.geojson, images/<id>.tif), and give that folder")
    if (root / "annotations.json").is_file():
        return ("; it holds a COCO annotations.json, which cellsynth does not read: export "
                "the dataset to cellpose, stardist or geojson instead")
    labels = sub_folder(root, LABEL_FOLDERS)
    if labels is not None:  # (the hint below named labels/ as where the images were)
        return (f"; it has {labels.name}/ (label maps) but no images/ beside it: put the "
                f"images there as images/<id>.tif|.png, one per label file")
    try:
        holders = sorted(d.name for d in root.iterdir() if d.is_dir()
                         and not d.name.startswith(".") and any(
                             f.suffix.lower() in IMAGE_SUFFIXES for f in d.iterdir()))
    except OSError:
        return ""
    if not holders:
        return ""
    return (f"; image files are in its sub-folder(s) {', '.join(holders[:6])}: give one of "
            f"them, or name them images/ and labels/ (cellsynth init reads a project of "
            f"train/, val/, test/ and unlabeled/ folders)")


def load_dataset(root: str | os.PathLike, *, require_labels: bool = False) -> Dataset:
    """List and validate a dataset folder (files are read lazily, per sample).

    Raises :class:`DatasetError` for a missing or empty folder, label files without images,
    images without labels when ``require_labels``, or an unreadable meta.json.
    """
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: no such folder")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    image_dir = sub_folder(root, IMAGE_FOLDERS) or root  # or a plain folder of images
    label_dir = sub_folder(root, LABEL_FOLDERS) or root / "labels"
    kind = "cellsynth"
    if image_dir.name.lower() == "images" and label_dir.name.lower() == "masks":
        kind = "StarDist (images/ + masks/)"
    elif ((image_dir != root and image_dir.name != "images")
          or (label_dir.is_dir() and label_dir.name != "labels")):
        kind = f"dataset ({(image_dir if image_dir != root else root).name}/ + {label_dir.name}/)"
    images = files_by_id(image_dir, zarr_sections=True)
    labels = files_by_id(label_dir, suffixes=LABEL_SUFFIXES) if label_dir.is_dir() else {}
    images, flows = _without_flows(images)
    if flows:
        from cellsynth.hardware import announce

        announce(f"{image_dir}: {len(flows)} Cellpose flow file(s) ({flows[0].name}"
                 f"{', ...' if len(flows) > 1 else ''}) skipped: written by Cellpose's "
                 f"training, not images")
    if image_dir == root and not labels:
        masks, suffix, img = _cellpose_masks(images)
        segs = {plain_id(p.name[:-len(CELLPOSE_SEG_SUFFIX)]): p
                for p in sorted(root.glob(f"*{CELLPOSE_SEG_SUFFIX}")) if p.is_file()}
        if masks:  # Cellpose: x.tif beside x_masks.tif (x_img.png beside x_masks.png)
            images = {i: p for i, p in images.items() if not i.endswith(suffix)}
            labels, label_dir = masks, root
            kind = f"Cellpose (x{img} + x{suffix})"
            if segs:  # (the GUI's files beside them may hold other, corrected cells)
                from cellsynth.hardware import announce

                first = next(iter(segs.values())).name
                announce(f"{root}: {len(segs)} Cellpose GUI file(s) ({first}"
                         f"{', ...' if len(segs) > 1 else ''}) not read: the x{suffix} "
                         f"files beside them are the labels; move one kind away to use the "
                         f"other")
        elif segs:  # Cellpose's GUI: x.png beside x_seg.npy
            labels, label_dir, kind = segs, root, "Cellpose GUI (x + x_seg.npy)"
    if label_dir != root:  # Cellpose's masks copied into labels/: x_masks.tif is x's
        def paired(i: str) -> str:
            base = plain_id(i[:-len(CELLPOSE_SUFFIX)])
            return (base if i.endswith(CELLPOSE_SUFFIX) and i not in images
                    and base in images and base not in labels else i)

        labels = {paired(i): p for i, p in labels.items()}
    if kind != "cellsynth":
        from cellsynth.hardware import announce

        announce(f"{root.resolve()}: read as a {kind} folder")  # (once, however it is named)
    foreign = foreign_files(image_dir)
    if not images:
        where = image_dir if image_dir != root else root
        if foreign:
            raise DatasetError(f"{where}: no images found, only {describe_foreign(foreign)}, "
                               f"which cellsynth does not read; {CONVERT_HINT}")
        raise DatasetError(
            f"{where}: no images found "
            f"(expected {root}/images/<id>.tif|.png or image files in {root})"
            + _what_it_is(root))
    announce_skipped(image_dir, foreign)
    if not labels and (root / "annotations.json").is_file():
        from cellsynth.hardware import announce

        announce(f"{root / 'annotations.json'}: COCO annotations are not read (its images are, "
                 f"unlabeled); for labels export the dataset to cellpose, stardist or geojson")
    orphans = sorted(set(labels) - set(images))
    if orphans:
        raise DatasetError(
            f"{label_dir}: {len(orphans)} label file(s) without an image, "
            f"e.g. {labels[orphans[0]].name}"
        )
    if require_labels:
        missing = sorted(set(images) - set(labels))
        if missing:
            raise DatasetError(
                f"{root}: {len(missing)} image(s) without a label file in {label_dir}, "
                f"e.g. {images[missing[0]].name}"
            )
    meta: dict[str, Any] = {}
    meta_path = root / layout.META
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as err:
            raise DatasetError(f"{meta_path}: cannot parse JSON: {err}") from err
        if not isinstance(meta, dict):
            raise DatasetError(f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    stated = meta.get("pixel_size_um")
    if stated is not None and (isinstance(stated, bool) or not isinstance(stated, (int, float))
                               or not math.isfinite(stated) or stated <= 0):
        raise DatasetError(f"{meta_path}: pixel_size_um must be a number of micrometres > 0 "
                           f"(null where unknown), got {stated!r}")
    geometry = meta.get("geojson_geometry", "cell")
    if geometry not in GEOMETRIES:
        raise DatasetError(f"{meta_path}: geojson_geometry must be one of "
                           f"{', '.join(map(repr, GEOMETRIES))}, not {geometry!r}")
    samples = tuple(Sample(i, images[i], labels.get(i), geometry) for i in sorted(images))
    return Dataset(root=root, samples=samples, meta=meta)


def is_one_image(path: Path) -> bool:
    """Whether ``path`` is one image (a file, or an OME-Zarr section) rather than a folder of
    them, as predict and inspect take it; a file that is not an image is one line."""
    if path.is_dir():
        return path.suffix.lower() == ".zarr"
    if not path.is_file():
        return False  # (load_dataset says "no such folder")
    if unread_format(path):
        raise DatasetError(unread_format(path))
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise DatasetError(f"{path}: not an image file (expected one of "
                           f"{', '.join(IMAGE_SUFFIXES)}) or a folder of images")
    return True


def meta_pixel_size(images: Path) -> float | None:
    """The pixel size a dataset folder's meta.json states (None for plain folders and a
    meta.json without one); for one file, that of the dataset it is in (``DATA/images/x``
    or ``DATA/x``: predicting one image of a simulation said its pixel size was unknown);
    for a dataset's ``images/`` folder without a meta.json of its own, the dataset's
    (``predict --images DATA/images`` took DATA's 0.25 um/px images to be at the model's).
    Only meta.json's: what the files state is read per image at the pyramid level predicted
    (``Dataset.pixel_size_um`` falls back to their level 0)."""
    if images.is_file():
        parent = images.parent
        folder = parent.parent if parent.name == "images" else parent
        return meta_pixel_size(folder) if (folder / layout.META).is_file() else None
    if (images.is_dir() and images.name == "images" and not (images / layout.META).is_file()
            and (images.parent / layout.META).is_file()):
        return meta_pixel_size(images.parent)
    if images.is_dir() and images.suffix.lower() != ".zarr" and (images / layout.META).is_file():
        value = load_dataset(images).meta.get("pixel_size_um")
        return float(value) if value is not None else None
    return None


def write_dataset_meta(root: str | os.PathLike, meta: dict[str, Any]) -> None:
    """Write ``root/meta.json`` atomically."""
    write_json(Path(root) / layout.META, meta)
