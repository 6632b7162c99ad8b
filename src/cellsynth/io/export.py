"""Convert a dataset or a prediction folder to what other tools open.

- ``cellpose``: one folder, ``<id>.tif`` beside ``<id>_masks.tif`` (Cellpose training layout);
- ``stardist``: ``images/<id>.tif`` + ``masks/<id>.tif`` (StarDist's data layout; other
  image formats are converted to TIFF, as its loading idiom globs ``*.tif`` in both);
- ``geojson``: ``<id>.geojson`` per image, a FeatureCollection of polygon Features with
  ``objectType: detection`` in pixel coordinates, as QuPath imports them (File > Import
  objects); ``objects="annotation"`` writes them as annotations, which QuPath lets one edit
  (move, brush, delete): the form for correcting predictions;
- ``coco``: ``annotations.json`` (one ``cell`` category, polygon segmentation (RLE for a
  cell with holes or several pieces), bbox, area, and a prediction's scores)
  beside ``images/``.

The source is a dataset folder (images/ + labels/) or a ``cellsynth predict`` output (labels/;
polygon formats need no images, the raster formats take each from where its meta.json says
it was predicted from, at the pyramid level predicted). An image is copied where the target
reads its file as it is, else written as TIFF (a Zarr section, an SVS, a pyramid's level;
channels first where they are not RGB, as ImageJ and OME store them). Outlines are the
boundaries of the label masks (marching squares at 0.5, i.e. through the pixel edges with
corners cut by half a pixel; collinear points dropped).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.errors import DatasetError, ImageReadError
from cellsynth.io.datasets import CELLPOSE_SUFFIX, file_id, load_dataset
from cellsynth.io.files import atomic_path, staged_output_dir, write_json
from cellsynth.io.geojson import read_geojson_regions
from cellsynth.io.images import (
    GEOJSON_SUFFIX,
    IMAGE_SUFFIXES,
    colour_of,
    read_image,
    read_labels,
    tiff_resolution,
    write_image,
    write_labels,
)
from cellsynth.io.ome_zarr import is_ome_zarr, open_labels_zarr
from cellsynth.io.resample import read_pixel_size
from cellsynth.io.sections import open_large_image, reads_lazily
from cellsynth.pipeline import layout

__all__ = ["FORMATS", "export", "label_polygons", "label_shapes", "predicted_image"]

FORMATS = ("cellpose", "stardist", "geojson", "coco")


def _corners(contour: np.ndarray) -> np.ndarray:
    """A closed contour (first point repeated last) without the points that lie on a straight
    line between their neighbours: the same outline, exactly (skimage's
    approximate_polygon at 0.1 px did nearly this, 7 ms a cell in Python: 90 % of a
    section's export)."""
    points = contour[:-1] if np.array_equal(contour[0], contour[-1]) else contour
    if len(points) < 3:
        return contour
    before = points - np.roll(points, 1, axis=0)
    after = np.roll(points, -1, axis=0) - points
    turn = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    kept = points[np.abs(turn) > 1e-9]
    if len(kept) < 3:
        return contour
    return np.vstack([kept, kept[:1]])


def label_polygons(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Outline of every label as a closed (K, 2) polygon of (x, y) pixel coordinates: of a
    cell in several pieces the largest by area, the outline :func:`label_shapes` puts first
    (COCO's polygons have no holes).

    Pixel (row r, column c) covers [c, c + 1) x [r, r + 1) in these coordinates, as in QuPath.
    """
    return {index: pieces[0][0] for index, pieces in label_shapes(labels).items()}


def _signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a (row, col) ring from ``find_contours``: < 0 around a piece, > 0
    around a hole (skimage winds around low values)."""
    x, y = ring[:, 1], ring[:, 0]
    return 0.5 * float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def label_shapes(labels: np.ndarray) -> dict[int, list[list[np.ndarray]]]:
    """Every label as the polygons of GeoJSON: a list of pieces, each [outline, *holes],
    closed (K, 2) rings of (x, y) pixel coordinates as in :func:`label_polygons`, the largest
    piece first. A cell with a hole, or with a pixel joined to it only at a corner (its own
    piece: QuPath's pixels are 4-connected), then reads back exactly."""
    return {index: pieces for index, pieces, _, _ in cell_shapes(labels)}


# pixels of a row band that :func:`cell_shapes` decodes at once (uint32 labels: 64 MB)
BAND_PIXELS = 1 << 24


def cell_shapes(labels: Any, band_pixels: int | None = None
                ) -> Iterator[tuple[int, list[list[np.ndarray]], np.ndarray, tuple[slice, slice]]]:
    """(id, pieces as :func:`label_shapes` gives them, its mask in its box, the box) of
    every cell of an (H, W) label image, by id (read in bands: band by band, by the band
    each cell's box starts in).

    ``labels`` may be lazy (an OME-Zarr level, a whole section's prediction): it is read in
    row bands of about ``band_pixels`` (:data:`BAND_PIXELS`) pixels, twice, never whole; the
    first pass finds where each cell ends, the second reads each band down to its cells'
    lowest row (a 16384^2 section decoded whole took 3.3 GB)."""
    height, width = int(labels.shape[0]), int(labels.shape[1])
    rows = max(1, (band_pixels or BAND_PIXELS) // max(width, 1))
    if height <= rows:  # one band: one read
        array = np.asarray(labels[:, :])
        base, boxes = _boxes(array)
        for index, box in enumerate(boxes, start=base + 1):
            if box is not None:
                yield from _one_cell(array, index, box)
        return
    # pass 1: the first and last row of every cell
    top = np.zeros(0, np.int64)
    bottom = np.zeros(0, np.int64)
    for r0 in range(0, height, rows):
        base, boxes = _boxes(np.asarray(labels[r0:r0 + rows, :]))
        if base + len(boxes) >= top.size:  # (ids grow: room for this band's largest)
            grow = base + len(boxes) + 1 - top.size
            top = np.concatenate([top, np.full(grow, height, np.int64)])
            bottom = np.concatenate([bottom, np.zeros(grow, np.int64)])
        for index, box in enumerate(boxes, start=base + 1):
            if box is not None:
                top[index] = min(top[index], r0 + box[0].start)
                bottom[index] = max(bottom[index], r0 + box[0].stop)
    # pass 2: each band with the rows its cells reach below it
    for r0 in range(0, height, rows):
        starting = np.flatnonzero((top >= r0) & (top < r0 + rows))
        if not starting.size:
            continue
        window = np.asarray(labels[r0:int(bottom[starting].max()), :])
        base, boxes = _boxes(window)
        for index in starting:
            yield from _one_cell(window, int(index), boxes[index - 1 - base], offset=r0)


def _boxes(array: np.ndarray) -> tuple[int, list]:
    """(base, ``ndi.find_objects`` of ``array``'s ids less base): the box of id ``base + k``
    is entry k - 1. The base is the smallest id less one, so a band of a section whose ids
    run to millions lists only the ids from its own (predict numbers cells as it goes)."""
    from scipy import ndimage as ndi

    cells = array > 0
    if not cells.any():
        return 0, []
    base = int(array[cells].min()) - 1
    return base, ndi.find_objects(np.where(cells, array - base, 0) if base else array)


def _one_cell(array: np.ndarray, index: int, box: tuple[slice, slice], offset: int = 0
              ) -> Iterator[tuple[int, list[list[np.ndarray]], np.ndarray, tuple[slice, slice]]]:
    """(id, pieces, mask, box in the image's rows) of the cell ``index`` of ``array``
    (rows ``offset`` on of the image), or nothing if it has no outline."""
    from matplotlib.path import Path as Ring
    from skimage.measure import find_contours

    mask = array[box] == index
    box = (slice(box[0].start + offset, box[0].stop + offset), box[1])
    contours = find_contours(np.pad(mask, 1).astype(np.float32), 0.5)
    # the pieces' outlines, the largest first
    outlines = sorted((c for c in contours if _signed_area(c) < 0), key=_signed_area)
    if not outlines:
        return
    pieces = [[c] for c in outlines]
    for hole in (c for c in contours if _signed_area(c) > 0):
        # (a hole's ring lies inside its cell's outline, apart from every other piece)
        inside = next((p for p in pieces if Ring(p[0]).contains_point(hole[0])), None)
        if inside is not None:
            inside.append(hole)
    yield index, [[_xy(_corners(ring), box) for ring in piece] for piece in pieces], mask, box


def _xy(contour: np.ndarray, box: tuple[slice, slice]) -> np.ndarray:
    """(row, col) of a contour of a cell's padded crop -> closed (x, y) pixel coordinates."""
    polygon = np.stack([contour[:, 1] - 1 + box[1].start + 0.5,
                        contour[:, 0] - 1 + box[0].start + 0.5], axis=1)
    if not np.array_equal(polygon[0], polygon[-1]):
        polygon = np.vstack([polygon, polygon[:1]])
    return polygon


def is_prediction_folder(root: Path) -> bool:
    """A ``cellsynth predict`` output: labels/ and a meta.json saying so, no images/."""
    return ((root / layout.LABELS).is_dir() and not (root / "images").is_dir()
            and (root / layout.META).is_file() and "predict" in (root / layout.META).read_text())


def prediction_labels(root: Path) -> list[tuple[str, Path]]:
    """(id, label file or OME-Zarr group) of every image of a prediction folder."""
    files = sorted(p for p in (root / layout.LABELS).iterdir()
                   if p.suffix.lower() in IMAGE_SUFFIXES or is_ome_zarr(p))
    if not files:
        raise DatasetError(f"{root / layout.LABELS}: no label files")
    return [(file_id(p), p) for p in files]


def predicted_image(meta: dict[str, Any], image_id: str) -> Path | None:
    """The image file (or .zarr section) that the labels of ``image_id`` of a prediction
    folder were predicted from, as its meta.json (``meta``) records it: the file or folder
    predict was given (absolute; relative in the folder of an older predict, then taken from
    the current folder) and the image's file name in it. None if it records none; the file
    may no longer be there."""
    entry = meta.get("images_pixel_size_um", {}).get(image_id, {})
    name = entry.get("file")
    if not meta.get("images") or not name:
        return None
    given = Path(meta["images"])
    if entry.get("path"):  # where in the folder it was (images/a.tif, Images/a.tif, a.tif)
        return given / entry["path"]
    if given.name == name or given.suffix.lower() == ".zarr":  # one image was predicted
        return given
    # (an older predict recorded the name only: a dataset's images are in its images/)
    return (given / "images" if (given / "images").is_dir() else given) / name


def _image_of(root: Path, meta: dict[str, Any], image_id: str) -> Path:
    """:func:`predicted_image`, which must be there: else one :class:`DatasetError`."""
    path = predicted_image(meta, image_id)
    if path is None:
        raise DatasetError(f"{root / layout.META}: records no image file for the labels of "
                           f"{image_id} (not written by cellsynth predict?)")
    if not path.exists():
        where = "" if path.is_absolute() else " (recorded relative to where predict ran)"
        raise DatasetError(f"{path}: no such file{where}; the labels in {root} were "
                           f"predicted from it (moved or deleted?)")
    return path


def _sources(root: Path, images: bool = True
             ) -> tuple[list[tuple[str, Path | None, Path]], str, float | None]:
    """(id, image or None, labels) of a dataset folder or a prediction folder (its images
    only if ``images``), which outline of a QuPath cell its .geojson labels draw, and the
    pixel size its meta.json states (a dataset's; a prediction states each image's)."""
    if is_prediction_folder(root):
        meta = json.loads((root / layout.META).read_text())
        return [(image_id, _image_of(root, meta, image_id) if images else None, path)
                for image_id, path in prediction_labels(root)], "cell", None
    dataset = load_dataset(root, require_labels=True)
    return ([(s.id, s.image_path, s.label_path) for s in dataset],
            dataset.geojson_geometry, dataset.pixel_size_um)


def _opened(path: Path, level: int) -> Any:
    """The image at ``path``, decoded (every channel) unless it is a whole section or a
    pyramid level (then lazily: its shape is read from the header)."""
    if level or reads_lazily(path):
        return open_large_image(path, level=level)
    return read_image(path, all_channels=True)


def _put_image(source: Path, image: Any, level: int, target: Path, kept: tuple[str, ...],
               pixel_size_um: float | None = None, planes: bool = True) -> Path:
    """``source`` as ``target`` plus a suffix: copied if its suffix is one of ``kept``
    (what the target tool reads as it is) and it is not a pyramid's level, else ``image``,
    decoded, as TIFF stating ``pixel_size_um`` (the level's: a level or an .svs written
    without it was later read at the model's pixel size). Channels that are not RGB are
    written as planes (C, Y, X), as ImageJ and OME store them, or with ``planes=False`` last
    (Y, X, C), as StarDist's loading takes every array (its notebooks read the channel count
    from the last axis: planes gave 320 channels). Returns the file written."""
    if not level and source.is_file() and source.suffix.lower() in kept:
        copy = target.parent / f"{target.name}{source.suffix}"
        shutil.copyfile(source, copy)
        return copy
    array = np.asarray(image[:, :])  # (H, W[, C])
    target = target.parent / f"{target.name}.tif"
    if array.ndim == 2 or (array.shape[2] == 3 and colour_of(array, source)):
        write_image(target, array, pixel_size_um=pixel_size_um)
    else:  # channels that are not RGB
        import tifffile

        with atomic_path(target) as tmp:
            if planes:
                tifffile.imwrite(tmp, np.moveaxis(array, -1, 0), photometric="minisblack",
                                 compression="zlib", metadata={"axes": "CYX"},
                                 **tiff_resolution(pixel_size_um))
            else:
                tifffile.imwrite(tmp, array, photometric="minisblack", planarconfig="contig",
                                 compression="zlib", metadata={"axes": "YXC"},
                                 **tiff_resolution(pixel_size_um))
    return target


def _coco_rle(mask: np.ndarray, box: tuple[slice, slice] | None = None,
              shape: tuple[int, int] | None = None) -> dict[str, Any]:
    """A mask as COCO's uncompressed run-length encoding (column-major runs, background
    first), which pycocotools decodes exactly, holes and separate pieces included. With
    ``box`` and ``shape``, ``mask`` is the crop ``box`` of an image of ``shape`` (a whole
    section's mask was never built: 268 MB for one cell of a 16384^2 one)."""
    if box is None:
        box, shape = (slice(0, mask.shape[0]), slice(0, mask.shape[1])), mask.shape
    height, width = int(shape[0]), int(shape[1])
    cols, rows = np.nonzero(mask.T)  # (column-major order)
    at = (cols + box[1].start).astype(np.int64) * height + rows + box[0].start
    if not at.size:
        return {"counts": [height * width], "size": [height, width]}
    breaks = np.flatnonzero(np.diff(at) > 1)
    starts = np.concatenate([at[:1], at[breaks + 1]])
    stops = np.concatenate([at[breaks] + 1, at[-1:] + 1])
    edges = np.empty(2 * starts.size + 2, np.int64)
    edges[0], edges[1:-1:2], edges[2:-1:2], edges[-1] = 0, starts, stops, height * width
    return {"counts": np.diff(edges).tolist(), "size": [height, width]}


def _scores(root: Path, image_id: str) -> dict[int, float]:
    """{cell id: score} of a prediction's cell table (detections/<id>.csv); {} elsewhere."""
    import csv

    path = root / layout.DETECTIONS / f"{image_id}.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {int(row["id"]): float(row["score"]) for row in csv.DictReader(f)
                if row.get("score") not in (None, "")}


GEOJSON_OBJECTS = ("detection", "annotation")  # QuPath objectType of exported cells


def level0_factor(predicted: dict[str, Any], shape: tuple[int, int]) -> tuple[float, float]:
    """(x, y) factor from a prediction's label pixels to its image's level-0 pixels: 1, 1
    unless it predicted a coarser pyramid level (``predict --level``; ``predicted``, the
    image's entry in the prediction's meta.json, says)."""
    full = predicted.get("level0_shape")
    if not full:
        return 1.0, 1.0
    return full[1] / shape[1], full[0] / shape[0]


def _predicted_images(root: Path) -> dict[str, dict[str, Any]]:
    """A prediction folder's meta.json entry of each image (file, level, ...; {} if none)."""
    path = root / layout.META
    meta = json.loads(path.read_text()) if path.is_file() else {}
    return meta.get("images_pixel_size_um", {}) if isinstance(meta, dict) else {}


def _geojson(labels: np.ndarray, image_id: str, objects: str = "detection",
             scale: tuple[float, float] = (1.0, 1.0), *, scores: dict[int, float] | None = None,
             pixel_size_um: float | None = None) -> dict[str, Any]:
    """The cells as QuPath objects, a FeatureCollection (see :func:`_features`)."""
    return {"type": "FeatureCollection",
            "features": list(_features(labels, objects, scale, scores=scores,
                                       pixel_size_um=pixel_size_um)),
            "properties": {"image": image_id}}


def _features(labels: Any, objects: str = "detection", scale: tuple[float, float] = (1.0, 1.0),
              *, scores: dict[int, float] | None = None, pixel_size_um: float | None = None
              ) -> Iterator[dict[str, Any]]:
    """Each cell as a QuPath object, one at a time; ``scale``: (x, y) factor to the image's
    level-0 pixels, where the outlines and ``area_px`` are (a level's pixel count was beside
    level-0 outlines, 4x too small at level 1; COCO's area was already level 0's). A
    prediction's cells carry their ``score`` (QuPath filters and colours by measurements)
    and, where the pixel size (of ``labels``' pixels) is known, their area in um²."""
    scores = scores or {}
    for index, pieces, mask, _ in cell_shapes(labels):  # (a lazy section: in row bands)
        area = int(np.count_nonzero(mask))
        rings = [[(ring * scale).round(2).tolist() for ring in piece] for piece in pieces]
        measurements: dict[str, Any] = {
            "label": index, "area_px": int(round(area * scale[0] * scale[1]))}
        if pixel_size_um is not None:
            measurements["area_um2"] = round(float(area) * pixel_size_um ** 2, 3)
        if index in scores:
            measurements["score"] = scores[index]
        yield {
            "type": "Feature",
            "geometry": ({"type": "Polygon", "coordinates": rings[0]} if len(rings) == 1
                         else {"type": "MultiPolygon", "coordinates": rings}),
            "properties": {"objectType": objects, "name": f"cell {index}",
                           "measurements": measurements},
        }


def _write_feature_collection(path: Path, features: Iterable[dict[str, Any]],
                              properties: dict[str, Any]) -> int:
    """A GeoJSON FeatureCollection written feature by feature, atomically, on one line
    (json's C encoder; a section's 102,400 cells held as one document took 1.4 GB). Returns
    how many features it holds."""
    count = 0
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write('{"type": "FeatureCollection", "features": [')
        for feature in features:
            f.write((", " if count else "") + json.dumps(feature))
            count += 1
        f.write('], "properties": ' + json.dumps(properties) + "}\n")
    return count


def export(source: str | os.PathLike, to: str, out: str | os.PathLike, *,
           force: bool = False, objects: str = "detection") -> dict[str, Any]:
    """Write ``source`` (a labeled dataset or a predict output) as ``to`` into ``out``;
    ``objects``: QuPath's objectType of GeoJSON cells (see the module)."""
    if to not in FORMATS:
        raise DatasetError(f"unknown export format {to!r}; choose one of {', '.join(FORMATS)}")
    if objects not in GEOJSON_OBJECTS:
        raise DatasetError(f"objects must be one of {', '.join(GEOJSON_OBJECTS)}, got "
                           f"{objects!r}")
    root = Path(source)
    # (polygons need no image: a prediction's may be a whole section, or elsewhere now)
    items, geometry, folder_px = _sources(root, images=to in ("cellpose", "stardist"))
    predicted = _predicted_images(root)  # (a dataset folder: none)
    coco = _Coco()
    n_cells = 0
    sizes: set[float | None] = set()  # each image's pixel size: one known -> meta.json
    with staged_output_dir(out, force=force, inputs=(root,)) as staging:
        if to == "stardist":
            (staging / "images").mkdir()
            (staging / "masks").mkdir()
        if to == "coco" and any(image is not None for _, image, _ in items):
            (staging / "images").mkdir()
        n_images = n_regions = 0
        for image_id, image_path, label_path in items:
            level = int(predicted.get(image_id, {}).get("level", 0))  # labels at its pixels
            image = _opened(image_path, level) if image_path is not None else None
            shape = tuple(int(n) for n in image.shape[:2]) if image is not None else None
            # (an OME-Zarr prediction of a whole section stays on disk: read in bands)
            labels = (open_labels_zarr(label_path)[0] if is_ome_zarr(label_path)
                      else read_labels(label_path, shape=shape,
                                       geojson_geometry=geometry))
            if shape is not None and shape != labels.shape:
                raise ImageReadError(
                    f"{label_path}: label size {labels.shape[0]}x{labels.shape[1]} does "
                    f"not match image {image_path.name} size {shape[0]}x{shape[1]}")
            # the labels' pixel size: predict's (the level's), a dataset's meta.json, the
            # file's (a dataset exported with none lost the meta.json's, 0.346 um/px)
            px = predicted.get(image_id, {}).get("pixel_size_um") or folder_px
            if px is None and image_path is not None:
                px = read_pixel_size(image_path, level=level)
            sizes.add(px)
            boxes = (read_geojson_regions(label_path, labels.shape)
                     if label_path.suffix.lower() == GEOJSON_SUFFIX else [])
            if boxes and to != "geojson":
                # annotated only inside QuPath regions: each region's box is an image of its
                # own, fully annotated (the whole image made every cell outside a region
                # background, and a detector's correct finds there false positives)
                n_regions += len(boxes)
                parts = [(f"{image_id}_region{r}", image[rows, cols], labels[rows, cols], box)
                         for r, box in enumerate(boxes, start=1) for rows, cols in [box]]
            else:
                parts = [(image_id, image, labels, None)]
            # (only GeoJSON and COCO carry a prediction's scores: read once per image)
            scores = _scores(root, image_id) if to in ("geojson", "coco") else {}
            for part_id, part_image, part_labels, box in parts:
                n_images += 1
                n_cells += _write_one(to, staging, coco, n_images, objects, _Part(
                    image_id, part_id, image_path, part_image, part_labels, level, px, box,
                    predicted.get(image_id, {}), scores, boxes if to == "geojson" else []))
        if to == "coco":
            coco.write(staging / "annotations.json")
        if to != "geojson" and len(sizes) == 1 and None not in sizes:
            # (cellsynth reads the folder back at it; the PNGs copied as they are state none)
            write_json(staging / layout.META, {"pixel_size_um": sizes.pop(),
                                               "exported_from": str(root.resolve())})
    if n_regions:
        from cellsynth.hardware import announce

        announce(f"{root}: the cells of {n_regions} QuPath region(s) written as images of "
                 f"their own (<id>_region<k>): only the regions were annotated")
    return {"format": to, "n_images": n_images, "n_instances": n_cells, "out": str(out)}


class _Coco:
    """A COCO document whose annotations wait on disk, one per line, until :meth:`write`
    streams them into ``annotations.json`` (a section's cells held as one document grew
    ~10 KB a cell). Key order and ids as ``json.dumps`` of the whole document gave."""

    def __init__(self) -> None:
        self.images: list[dict[str, Any]] = []
        self.count = 0
        self._lines: Any = None  # an unnamed temporary file, opened at the first annotation

    def annotate(self, annotation: dict[str, Any]) -> None:
        import tempfile

        if self._lines is None:
            self._lines = tempfile.TemporaryFile("w+")
        self.count += 1
        self._lines.write(json.dumps({"id": self.count, **annotation}) + "\n")

    def write(self, path: Path) -> None:
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            f.write('{"images": ' + json.dumps(self.images) + ', "annotations": [')
            if self._lines is not None:
                self._lines.seek(0)
                for k, line in enumerate(self._lines):
                    f.write((", " if k else "") + line.rstrip("\n"))
                self._lines.close()
                self._lines = None
            f.write('], "categories": [{"id": 1, "name": "cell"}]}')


@dataclass(frozen=True)
class _Part:
    """One image of an export, or one QuPath region of it (``box``), with what is known
    about it."""

    image_id: str
    part_id: str  # image_id, or <image_id>_region<k>
    image_path: Path | None
    image: Any  # its pixels (or a region's), None where the export needs no image
    labels: np.ndarray
    level: int  # the pyramid level the labels are at
    px: float | None  # the labels' pixel size
    box: tuple[slice, slice] | None  # the region's rows and columns, None: the whole image
    predicted: dict[str, Any]  # the image's entry in a prediction's meta.json ({} if none)
    scores: dict[int, float]  # {cell id: score} of a prediction, {} if none
    regions: list[tuple[slice, slice]]  # QuPath regions that a GeoJSON export keeps


def _write_one(to: str, staging: Path, coco: _Coco, k: int, objects: str,
               part: _Part) -> int:
    """One image (or one region of it) of :func:`export` into ``staging``; ``k``: its
    number (COCO's image id). Returns how many cells it holds."""
    kept_as_is = () if part.box is not None else None  # (a region's crop is written)
    if to in ("cellpose", "stardist"):  # (label images, written whole)
        labels = np.asarray(part.labels[:, :])
        part = replace(part, labels=labels)
        n_cells = int(np.count_nonzero(np.bincount(labels.ravel())[1:]))
    if to == "cellpose":  # (it reads these; not .svs, a .zarr, a pyramid's level)
        _put_image(part.image_path, part.image, part.level, staging / part.part_id,
                   kept_as_is if kept_as_is is not None
                   else (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp"), part.px)
        write_labels(staging / f"{part.part_id}{CELLPOSE_SUFFIX}.tif", part.labels,
                     pixel_size_um=part.px)
    elif to == "stardist":  # its idiom pairs images/*.tif with masks/*.tif by name
        _put_image(part.image_path, part.image, part.level, staging / "images" / part.part_id,
                   kept_as_is if kept_as_is is not None else (".tif", ".tiff"), part.px,
                   planes=False)
        write_labels(staging / "masks" / f"{part.part_id}.tif", part.labels,
                     pixel_size_um=part.px)
    elif to == "geojson":
        cells = _features(part.labels, objects, level0_factor(part.predicted, part.labels.shape),
                          scores=part.scores, pixel_size_um=part.px)
        regions = [_region_feature(rows, cols) for rows, cols in part.regions]
        n_cells = _write_feature_collection(staging / f"{part.image_id}.geojson",
                                            itertools.chain(cells, regions),
                                            {"image": part.image_id}) - len(regions)
    else:
        scale = level0_factor(part.predicted, part.labels.shape)
        if part.image_path is not None and part.box is not None:
            name = f"images/{part.part_id}.tif"
            write_image(staging / name, np.asarray(part.image), pixel_size_um=part.px)
        elif part.image_path is not None:
            name = f"images/{part.image_id}{part.image_path.suffix}"
            shutil.copyfile(part.image_path, staging / name)
        else:  # a prediction: the image it was made from (not copied)
            name = part.predicted.get("file")
        n_cells = 0
        coco.images.append({"id": k, "file_name": name or f"{part.image_id}.tif",
                               "height": round(part.labels.shape[0] * scale[1]),
                               "width": round(part.labels.shape[1] * scale[0])})
        for index, pieces, mask, box in cell_shapes(part.labels):
            area = int(np.count_nonzero(mask))
            # the box of every piece (of the largest alone, a cell in pieces lost the rest)
            outline = np.concatenate([piece[0] for piece in pieces]) * scale
            x0, y0 = outline.min(axis=0)
            x1, y1 = outline.max(axis=0)
            if (len(pieces) > 1 or len(pieces[0]) > 1) and scale == (1.0, 1.0):
                # holes or several pieces, which COCO's polygons cannot hold (the largest
                # piece, filled, was written): the cell's mask as RLE
                segmentation: Any = _coco_rle(mask, box, part.labels.shape)
            else:  # (at a coarser level's pixels scaled up: every piece, filled)
                segmentation = [(piece[0] * scale)[:-1].round(2).ravel().tolist()
                                for piece in pieces]
            coco.annotate({
                "image_id": k, "category_id": 1,
                "segmentation": segmentation,
                "area": float(area * scale[0] * scale[1]),
                "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                "iscrowd": 0,
                **({"score": part.scores[index]} if index in part.scores else {})})
            n_cells += 1
    return n_cells


def _region_feature(rows: slice, cols: slice) -> dict[str, Any]:
    """A QuPath region annotation (class ``Region*``) around the pixels of a box: QuPath
    shows where the cells were annotated, and cellsynth reads it back as that region."""
    x0, y0, x1, y1 = cols.start, rows.start, cols.stop, rows.stop
    return {"type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [
                [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]},
            "properties": {"objectType": "annotation", "name": "annotated region",
                           "classification": {"name": "Region*"}}}
