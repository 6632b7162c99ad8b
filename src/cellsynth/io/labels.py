"""Read and validate instance label maps: an image file (TIFF, PNG, ...), Cellpose's GUI
file ``x_seg.npy``, or QuPath's outlines (``.geojson``, drawn at the image's size). A map is
an ``(H, W)`` integer array, 0 = background; a float map of whole numbers (Fiji's 32-bit
label images) is taken as ids. What is not a label map is said in one line naming the file:
negative or fractional values, a foreground mask (a warning: its blobs are one "cell"), an
image of intensities (refused: it scored every grey value as a cell).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from cellsynth.errors import ImageReadError

__all__ = ["CELLPOSE_SEG_SUFFIX", "GEOJSON_SUFFIX", "read_labels"]

GEOJSON_SUFFIX = ".geojson"  # QuPath's exported outlines (cellsynth.io.geojson)

CELLPOSE_SEG_SUFFIX = "_seg.npy"  # what Cellpose's GUI saves beside x.png: a dict with "masks"


def _read_cellpose_seg(path: Path) -> np.ndarray:
    """The masks of a Cellpose GUI file (a pickled dict; only read files you trust)."""
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    try:
        data = np.load(path, allow_pickle=True)
        data = data.item() if data.dtype == object and data.shape == () else data
    except Exception as err:  # numpy/pickle raise many types for damaged files
        raise ImageReadError(f"{path}: cannot read Cellpose file (corrupt or truncated?): "
                             f"{str(err).strip() or type(err).__name__}") from err
    if not isinstance(data, dict) or "masks" not in data:
        raise ImageReadError(f"{path}: not a Cellpose _seg.npy file (no 'masks' in it)")
    return np.asarray(data["masks"])


def read_labels(path: str | os.PathLike, *, shape: tuple[int, int] | None = None,
                geojson_geometry: str = "cell") -> np.ndarray:
    """Read and validate an instance label map (an image file, Cellpose's ``x_seg.npy``, an
    OME-Zarr label group's finest level, or QuPath's polygons as ``.geojson``, drawn at
    ``shape``, the image's (H, W), which a GeoJSON file does not state;
    ``geojson_geometry``: which outline of a QuPath cell, "cell" or "nucleus", see
    :mod:`cellsynth.io.geojson`).

    Returns
    -------
    labels : (H, W) integer array, 0 = background, ids >= 1 (not necessarily contiguous).
    """
    path = Path(path)
    if path.suffix.lower() == GEOJSON_SUFFIX:
        if shape is None:
            raise ImageReadError(f"{path}: GeoJSON outlines need their image's size; keep "
                                 f"the file in labels/ beside its image in images/")
        from cellsynth.io.geojson import read_geojson_labels

        return read_geojson_labels(path, shape, geometry=geojson_geometry)
    from cellsynth.io.images import _read_array
    from cellsynth.io.ome_zarr import is_ome_zarr, read_labels_zarr

    if path.is_dir() and is_ome_zarr(path):  # (predict writes a large section's labels so)
        labels = read_labels_zarr(path)[0]
    else:
        labels = (_read_cellpose_seg(path) if path.name.endswith(CELLPOSE_SEG_SUFFIX)
                  else _read_array(path))
    if labels.ndim == 3 and labels.shape[-1] == 1:
        labels = labels[..., 0]
    if labels.ndim != 2:
        raise ImageReadError(f"{path}: expected 2-D label image (H x W), got shape {labels.shape}")
    if np.issubdtype(labels.dtype, np.floating) and _whole(labels):
        labels = labels.astype(np.uint32)  # (Fiji saves label images as 32-bit float)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ImageReadError(
            f"{path}: labels must be an integer image (uint16/uint32), got dtype {labels.dtype}"
            + (" with values that are not whole numbers >= 0"
               if np.issubdtype(labels.dtype, np.floating) else ""))
    if np.issubdtype(labels.dtype, np.signedinteger) and labels.size and labels.min() < 0:
        raise ImageReadError(f"{path}: labels contain negative values (min {labels.min()})")
    _say_if_binary(labels, path)
    _refuse_intensities(labels, path)
    return labels


def _refuse_intensities(labels: np.ndarray, path: Path) -> None:
    """Refuse an image of intensities given as labels (a folder of raw images as
    ``evaluate --gt``, images copied into labels/): it scored every grey value as a "cell",
    F1 0 without a word. Neighbouring pixels inside a label map's cells share their id and
    each id is one patch; in an image most neighbours differ and each grey value is
    scattered over many patches. Looks at a central window of at most 1024 x 1024."""
    h, w = labels.shape
    y, x = max(0, (h - 1024) // 2), max(0, (w - 1024) // 2)
    window = labels[y:y + 1024, x:x + 1024]
    a, b = window[:, 1:], window[:, :-1]
    inside = (a > 0) & (b > 0)
    n = int(np.count_nonzero(inside))
    if n < 1000 or np.count_nonzero((a != b) & inside) < _INTENSITY_NEIGHBOURS * n:
        return
    from skimage.measure import label

    patches = int(label(window, background=0, connectivity=1).max())
    values = int(np.unique(window[window > 0]).size)
    if patches >= _INTENSITY_PATCHES * values:
        raise ImageReadError(
            f"{path}: an image of intensities, not an instance label map ({values} grey values "
            f"in {patches} separate patches; a label map gives each cell one id and 0 to the "
            f"background); give the label files (a dataset's labels/ or masks/, x_masks.tif)")


# an image, not labels: over a quarter of neighbouring labelled pixels differ, and its values
# fall into 20 times as many patches (a label map: each id one patch, a few where occluded;
# a uint8 map that reuses ids past 255 needs 5000 cells to reach 20)
_INTENSITY_NEIGHBOURS = 0.25
_INTENSITY_PATCHES = 20


def _whole(labels: np.ndarray) -> bool:
    """Whether a float label image holds only ids: finite whole numbers >= 0 below 2**32
    (as Fiji's 32-bit label images do)."""
    return bool(labels.size and np.isfinite(labels).all() and labels.min() >= 0
                and labels.max() < 2.0 ** 32 and (labels == np.floor(labels)).all())


def _say_if_binary(labels: np.ndarray, path: Path) -> None:
    """Warn where every labelled pixel has one value and they form several separate blobs:
    a foreground mask (0/255 from a threshold, 0/1), which an instance map would give an id
    per cell; read as it is, all of them are one "cell"."""
    top = labels.max() if labels.size else 0
    if not top or not np.all((labels == 0) | (labels == top)):
        return
    from scipy import ndimage

    # 8-connected: one cell whose pixel touches the rest only at a corner (an outline may
    # have one, predictions too) is one blob, not a "mask" of two
    _, blobs = ndimage.label(labels == top, structure=np.ones((3, 3), bool))
    if blobs > 1:
        warnings.warn(f"{path}: every labelled pixel is {top}, in {blobs} separate blobs: a "
                      f"foreground mask, not instance labels (one id per cell), so they are "
                      f"one cell here; number the blobs first, e.g. "
                      f"skimage.measure.label(mask > 0)", stacklevel=3)
