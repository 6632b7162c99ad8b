"""OME-Zarr (NGFF 0.4) label images: chunked, with a multiscale pyramid and the pixel size
(NGFF 0.5 groups and bioformats2raw containers are read too: :func:`ngff_group`).

What whole-section predictions are written as: napari (napari-ome-zarr), QuPath, Fiji (MoBIE/
n5-viewer) and ``ome-zarr-py`` open them, and so does cellsynth itself (``open_large_image``,
``read_labels_zarr``). Level 0 is the full-resolution label image; each further level halves
both axes by taking every second pixel (nearest neighbour: ids stay ids), down to about one
chunk. The group is written beside its final path and renamed into place, so a reader never
sees half a pyramid.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.errors import ImageReadError

__all__ = ["write_labels_zarr", "read_labels_zarr", "open_labels_zarr", "is_ome_zarr",
           "is_label_zarr", "ngff_group", "OME_ZARR_SUFFIX"]

OME_ZARR_SUFFIX = ".ome.zarr"


def write_labels_zarr(path: str | os.PathLike, labels: Any, *,
                      pixel_size_um: float | None = None, chunk: int = 1024,
                      name: str = "cells", source: str | os.PathLike | None = None) -> Path:
    """Write an (H, W) label image (numpy or lazy array) as an OME-Zarr multiscale group.

    A lazy ``labels`` (e.g. :class:`~cellsynth.segment.tiles.PaintedLabels`) is read once,
    in rows of ``chunk`` pixels. ``source``: the image the labels are of; where it is an
    OME-Zarr image, the NGFF ``image-label.source.image`` names it, relative to ``path``
    (written beside an image that is a TIFF or such, the labels name none: NGFF's source
    is an OME-Zarr group, and ``"../../"`` there would name the prediction folder)."""
    import zarr

    path = Path(path)
    height, width = int(labels.shape[0]), int(labels.shape[1])
    dtype = np.dtype(labels.dtype)
    if dtype.kind not in "iu":
        raise ValueError(f"{path}: labels must be integers, got {dtype}")
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
    scale = float(pixel_size_um) if pixel_size_um else 1.0
    datasets = []
    level, step, finer = 0, 1, labels
    while True:
        shape = (-(-height // step), -(-width // step))
        array = root.create_array(str(level), shape=shape, chunks=(min(chunk, shape[0]),
                                                                   min(chunk, shape[1])),
                                  dtype=dtype, fill_value=0,
                                  chunk_key_encoding={"name": "v2", "separator": "/"})
        # rows of chunks: bounded memory for lazy inputs; each level from the one above it
        # (every second pixel of every second row), so the input is read only once
        stride = 1 if level == 0 else 2
        for y in range(0, shape[0], chunk):
            rows = np.asarray(finer[y * stride:(y + chunk) * stride:stride, ::stride])
            array[y:y + rows.shape[0], :] = rows
        finer = array
        datasets.append({"path": str(level), "coordinateTransformations": [
            {"type": "scale", "scale": [scale * step, scale * step]}]})
        if max(shape) <= chunk:
            break
        level, step = level + 1, step * 2
    unit = {"unit": "micrometer"} if pixel_size_um else {}
    root.attrs["multiscales"] = [{
        "version": "0.4", "name": name, "datasets": datasets,
        "axes": [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}],
    }]
    image_label: dict[str, Any] = {"version": "0.4"}
    if source is not None and is_ome_zarr(source):
        image_label["source"] = {"image": Path(os.path.relpath(Path(source).resolve(),
                                                               path.resolve())).as_posix()}
    root.attrs["image-label"] = image_label
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


def ngff_group(group: Any) -> tuple[Any, dict[str, Any]]:
    """(the group that holds the image, its NGFF metadata) of an opened Zarr group: NGFF
    0.5 (Zarr v3) keeps the metadata under ``"ome"``, 0.4 at the top; a bioformats2raw
    container (``bioformats2raw.layout``, what the usual converter from vendor formats
    writes) holds the image as its series ``0``, as napari-ome-zarr and QuPath open it."""
    attrs = dict(group.attrs)
    meta = attrs["ome"] if isinstance(attrs.get("ome"), dict) else attrs
    if "multiscales" not in meta and "bioformats2raw.layout" in meta and "0" in group:
        series = group["0"]
        if not hasattr(series, "shape"):  # a group, not an array
            return ngff_group(series)
    return group, meta


def is_ome_zarr(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and (path.name.lower().endswith(".zarr")) and (
        (path / ".zattrs").is_file() or (path / "zarr.json").is_file())


def is_label_zarr(path: str | os.PathLike) -> bool:
    """An OME-Zarr group that holds labels (NGFF ``image-label`` metadata, as
    :func:`write_labels_zarr` writes), not an image."""
    if not is_ome_zarr(path):
        return False
    import zarr

    try:
        return "image-label" in ngff_group(zarr.open_group(str(path), mode="r"))[1]
    except Exception:  # noqa: BLE001  (unreadable: not ours to claim)
        return False


def read_labels_zarr(path: str | os.PathLike, *, level: int = 0
                     ) -> tuple[np.ndarray, float | None]:
    """(labels of one pyramid level, pixel size in um or None) of an OME-Zarr label group."""
    labels, pixel = open_labels_zarr(path, level=level)
    return np.asarray(labels), pixel


def open_labels_zarr(path: str | os.PathLike, *, level: int = 0) -> tuple[Any, float | None]:
    """:func:`read_labels_zarr` with the labels not decoded: the level's Zarr array, which
    reads the chunks a slice touches."""
    import zarr

    path = Path(path)
    try:
        root, meta = ngff_group(zarr.open_group(str(path), mode="r"))
        multiscale = meta["multiscales"][0]
        dataset = multiscale["datasets"][level]
        labels = root[dataset["path"]]
        if not hasattr(labels, "shape"):
            raise ValueError(f"{dataset['path']} is a group, not an array")
    except (KeyError, IndexError, ValueError, FileNotFoundError) as err:
        raise ImageReadError(f"{path}: not an OME-Zarr label image ({err})") from err
    units = {a.get("unit") for a in multiscale.get("axes", [])}
    scale = dataset["coordinateTransformations"][0]["scale"][-1]
    pixel = float(scale) if units & {"micrometer"} else None  # this level's pixel size
    return labels, pixel
