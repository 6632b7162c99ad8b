"""napari plugin (npe2; manifest ``cellsynth/napari.yaml``): open our folders, save labels,
segment the current image with a trained detector.

- Reader: a dataset folder (``images/`` + ``labels/``, Cellpose/StarDist folders, or a plain
  folder of images) opens as Image layers with their Labels layers (a whole section: every
  pyramid level, lazily); a
  ``cellsynth predict`` output or an OME-Zarr label group (``*.ome.zarr``) opens as Labels
  layers, multiscale where it is a pyramid. Layers get the pixel size as their scale (um)
  when it is known, so images and labels line up.
- Writer: a Labels layer saved as ``.tif`` is a cellsynth label TIFF (uint16/uint32, with the
  layer's scale as pixel size).
- Widget: "Segment cells (cellsynth)" runs a trained detector (a ``cellsynth train`` run
  folder) on the chosen Image layer and adds the cells as a Labels layer; in a napari window
  it predicts in a background worker (the window stays live; a new click stops the one still
  running) and keeps the detector loaded.

Nothing here imports napari at import time: the functions take and return plain data
(napari's LayerData tuples), so they work, and are tested, without it; only the widget,
inside a running Qt application, hands napari a worker.
"""

# (no ``from __future__ import annotations``: magicgui builds the widget from the annotations
# at run time, and the text "Path" it would get cannot be imported, so napari failed to open
# the widget)
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["get_reader", "read_layers", "write_labels_layer", "predict_widget"]

_MAX_IMAGES = 64  # a dataset folder opens at most this many samples
_MAX_WIDGET_PIXELS = 8192 * 8192  # larger images: `cellsynth predict`, tile by tile


def get_reader(path: str | list[str]) -> Callable[[Any], list[tuple]] | None:
    """napari reader hook: a function for paths we understand, else None (napari asks the
    next plugin)."""
    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    return read_layers if paths and all(_kind(Path(p)) for p in paths) else None


def _kind(path: Path) -> str | None:
    from cellsynth.io.export import is_prediction_folder
    from cellsynth.io.ome_zarr import is_label_zarr, is_ome_zarr

    if is_ome_zarr(path):  # an image's OME-Zarr is for napari's own readers (ome-zarr)
        return "ome-zarr" if is_label_zarr(path) else None
    if not path.is_dir():
        from cellsynth.io.sections import reads_lazily

        # a whole section by itself (a pyramidal or large TIFF): lazily, every level, at its
        # pixel size (napari's own reader decodes level 0 whole); other files are napari's
        return "section" if path.is_file() and reads_lazily(path) else None
    if is_prediction_folder(path):
        return "predictions"
    from cellsynth.io.datasets import IMAGE_FOLDERS, LABEL_FOLDERS, sub_folder

    if sub_folder(path, IMAGE_FOLDERS) is not None:
        return "dataset"
    if path.name.lower() in LABEL_FOLDERS:  # a dataset's or a prediction's labels/ alone
        return "labels"
    from cellsynth.io.images import IMAGE_SUFFIXES

    # a plain folder of images, or Cellpose's (x.tif beside x_masks.tif): its own image
    # files, looked at by name only (napari asks every reader of every folder opened)
    if any(f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")
           for f in path.iterdir() if f.is_file()):
        return "dataset"
    return None


def _pixel_size(scale: Any, metadata: Any = None, units: Any = None) -> float | None:
    """A layer's pixel size: what this reader recorded in its metadata, else its scale
    where its units are micrometres or the scale is not napari's default 1 (which means
    "unknown"; 1 um/px, BigBrain's, is kept through the metadata or the units)."""
    if isinstance(metadata, dict) and metadata.get("pixel_size_um"):
        return float(metadata["pixel_size_um"])
    if scale is None:
        return None
    in_um = units is not None and str(list(units)[-1]) in ("um", "µm", "micrometer", "micron")
    return float(scale[-1]) if in_um or float(scale[-1]) != 1.0 else None


def _folder_pixel_size(folder: Path) -> float | None:
    """The pixel size a folder's meta.json states (a dataset's or a prediction's), else
    None."""
    import json

    from cellsynth.pipeline import layout

    try:
        stated = json.loads((folder / layout.META).read_text()).get("pixel_size_um")
    except (OSError, ValueError, AttributeError):
        return None
    return float(stated) if isinstance(stated, (int, float)) and stated > 0 else None


def _images_beside(labels_folder: Path) -> dict[str, Path]:
    """The images of the dataset a ``labels/`` folder is in, by id (listed once per folder)."""
    from cellsynth.io.datasets import IMAGE_FOLDERS, files_by_id, sub_folder

    images = sub_folder(labels_folder.parent, IMAGE_FOLDERS)
    return files_by_id(images) if images is not None else {}


def _outline_shape(images: dict[str, Path], image_id: str,
                   file: Path) -> tuple[int, int] | None:
    """The size to draw a QuPath outline file of a ``labels/`` folder opened alone at: its
    image's (``images``: those beside the folder, :func:`_images_beside`), else what holds
    every outline; None for a label image, which has its own."""
    from cellsynth.io.images import GEOJSON_SUFFIX

    if file.suffix.lower() != GEOJSON_SUFFIX:
        return None
    from cellsynth.errors import CellsynthError
    from cellsynth.io.geojson import geojson_extent
    from cellsynth.io.sections import open_image

    image = images.get(image_id)
    if image is not None:
        try:
            return tuple(int(n) for n in open_image(image).shape[:2])
        except (OSError, ValueError, CellsynthError):
            pass  # (an unreadable image: the outlines still show)
    return geojson_extent(file)


def _scale(pixel_size_um: float | None) -> dict[str, Any]:
    """A layer's scale and the metadata that keeps its pixel size (napari's scale 1 says
    nothing)."""
    return ({"scale": (pixel_size_um, pixel_size_um),
             "metadata": {"pixel_size_um": pixel_size_um}} if pixel_size_um else {})


def _zarr_labels(path: Path, name: str) -> tuple:
    """A Labels layer of an OME-Zarr label group: every pyramid level, lazily."""
    import zarr

    from cellsynth.io.ome_zarr import ngff_group

    root, meta = ngff_group(zarr.open_group(str(path), mode="r"))
    multiscale = meta["multiscales"][0]
    levels = [root[d["path"]] for d in multiscale["datasets"]]
    in_um = any(a.get("unit") == "micrometer" for a in multiscale.get("axes", []))
    base = multiscale["datasets"][0]["coordinateTransformations"][0]["scale"][-1]
    data = levels if len(levels) > 1 else levels[0]
    return (data, {"name": name, "multiscale": len(levels) > 1,
                   **_scale(float(base) if in_um else None)}, "labels")


def _section_layer(path: Path, name: str, scale: dict[str, Any]) -> tuple:
    """An Image layer of a whole section: every pyramid level, lazily."""
    from cellsynth.io.sections import pyramid_levels

    levels = pyramid_levels(path)
    first = levels[0]
    rgb = len(first.shape) == 3 and first.shape[-1] in (3, 4)
    return (levels if len(levels) > 1 else first,
            {"name": name, "rgb": rgb, "multiscale": len(levels) > 1, **scale}, "image")


def read_layers(path: str | list[str]) -> list[tuple]:
    """LayerData tuples (data, kwargs, layer type) for every path."""
    from cellsynth.io.datasets import load_dataset
    from cellsynth.io.export import prediction_labels
    from cellsynth.io.images import read_labels
    from cellsynth.io.ome_zarr import OME_ZARR_SUFFIX, is_ome_zarr
    from cellsynth.io.sections import reads_lazily
    from cellsynth.pipeline import layout

    paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    layers: list[tuple] = []
    for p in map(Path, paths):
        kind = _kind(p)
        if kind == "section":
            from cellsynth.io.datasets import plain_id
            from cellsynth.io.resample import read_pixel_size

            layers.append(_section_layer(p, plain_id(p.name), _scale(read_pixel_size(p))))
        elif kind == "ome-zarr":
            name = (p.name[:-len(OME_ZARR_SUFFIX)] if p.name.lower().endswith(OME_ZARR_SUFFIX)
                    else p.stem)  # (a plain x.zarr is "x", not "x" less 9 letters)
            layers.append(_zarr_labels(p, name))
        elif kind == "predictions":
            import json

            meta = json.loads((p / layout.META).read_text())
            each = meta.get("images_pixel_size_um") or {}
            for image_id, file in prediction_labels(p):
                # each image's own (the folder's is null where they differ)
                pixel = (each.get(image_id) or {}).get("pixel_size_um") or \
                    meta.get("pixel_size_um")
                # (named apart from the images they outline, opened beside them)
                layers.append(_zarr_labels(file, f"{image_id} cells") if is_ome_zarr(file)
                              else (read_labels(file), {"name": f"{image_id} cells",
                                                        **_scale(pixel)}, "labels"))
        elif kind == "labels":  # label maps, not images (they opened as Image layers)
            from cellsynth.io.datasets import files_by_id
            from cellsynth.io.images import GEOJSON_SUFFIX, LABEL_SUFFIXES

            files = files_by_id(p, suffixes=LABEL_SUFFIXES)
            scale = _scale(_folder_pixel_size(p.parent))  # (its dataset's or prediction's)
            images = (_images_beside(p) if any(f.suffix.lower() == GEOJSON_SUFFIX
                                               for f in files.values()) else {})
            for image_id, file in list(files.items())[:_MAX_IMAGES]:
                layers.append((read_labels(file, shape=_outline_shape(images, image_id, file)),
                               {"name": f"{image_id} labels", **scale}, "labels"))
        elif kind == "dataset":
            from cellsynth.io.datasets import check_label_sizes

            dataset = load_dataset(p)
            check_label_sizes(dataset)  # (a label map of another size opened misaligned)
            if len(dataset) > _MAX_IMAGES:
                import warnings

                warnings.warn(f"{p}: opening the first {_MAX_IMAGES} of its {len(dataset)} "
                              f"images", stacklevel=2)
            for sample in list(dataset)[:_MAX_IMAGES]:
                # the image's own pixel size (meta.json, else its file's): a folder of
                # images at different ones opened them all at scale 1
                scale = _scale(dataset.pixel_size_of(sample))
                if reads_lazily(sample.image_path):  # a whole section: its pyramid, lazily
                    layers.append(_section_layer(sample.image_path, sample.id, scale))
                else:
                    image = sample.read_image()
                    rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
                    layers.append((image, {"name": sample.id, "rgb": rgb, **scale}, "image"))
                if sample.label_path is not None:
                    layers.append((sample.read_labels(), {"name": f"{sample.id} labels",
                                                          **scale}, "labels"))
    return layers


def write_labels_layer(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """napari writer hook for one Labels layer: a label TIFF with the layer's pixel size."""
    from cellsynth.io.images import write_labels

    labels = np.asarray(data[0] if isinstance(data, list) else data)  # level 0 of a pyramid
    write_labels(Path(path), labels, pixel_size_um=_pixel_size(
        meta.get("scale"), meta.get("metadata"), meta.get("units")))
    return [str(path)]


def predict_widget(image: "napari.layers.Image", detector: Path,  # noqa: F821, UP037
                   score_thresh: float = 0.0, tile: int = 1024,
                   ) -> "napari.qt.threading.FunctionWorker[napari.types.LayerDataTuple]":  # noqa: F821, UP037, E501
    """Segment the cells of an Image layer with a trained detector (a `cellsynth train`
    run folder or checkpoint); score_thresh 0 uses the one the detector validated.

    In napari the prediction runs in a background thread (a napari worker with a progress
    bar; the window stays live) and the cells are added when it ends; outside a Qt
    application (a script, the tests) it runs here and returns the layer tuple.
    A new click stops the prediction still running (after its current batch of tiles; it
    adds nothing) and then predicts with the new settings; so does napari's request to quit
    a worker (closing the window).
    What can be checked at once (the layer's shape, the detector) is checked before either,
    so a wrong choice is said in one line on the click. The detector is loaded once and
    kept while its checkpoint file is unchanged."""
    where = getattr(image, "name", "layer")
    data = _widget_plane(image, where)
    loaded = _widget_detector(detector)
    scale = getattr(image, "scale", None)
    translate = getattr(image, "translate", None)  # (where the image sits: the cells too)
    known = _pixel_size(scale, getattr(image, "metadata", None), getattr(image, "units", None))
    meta = {"name": f"{getattr(image, 'name', 'image')} cells",
            **({"scale": tuple(scale)[-2:]} if scale is not None else {}),
            **({"metadata": {"pixel_size_um": known}} if known else {}),
            **({"translate": tuple(translate)[-2:]} if translate is not None else {})}

    stop = _supersede()
    workers: list[Any] = []  # (the napari worker, once made: its quit() stops this too)

    def stopped() -> bool:
        return stop.is_set() or any(w.abort_requested for w in workers)

    def segment() -> tuple | None:
        from cellsynth.segment.predict import predict_image

        with _PREDICTING:  # (one at a time: they would share the same cores)
            if stopped():  # (superseded while it waited for the one before)
                return None
            try:
                labels = predict_image(loaded, np.asarray(data), tile=tile,
                                       score_thresh=score_thresh or None,
                                       pixel_size_um=known, where=where,
                                       progress=_StopCheck(stopped))
            except _Stopped:
                return None  # (napari adds no layer for None)
        return (labels, meta, "labels")

    if not _in_qt_app():  # a script or the tests: here and now
        return segment()
    from napari.qt.threading import create_worker
    from qtpy.QtCore import QTimer

    worker = create_worker(segment, _start_thread=False,
                           _progress={"desc": f"cellsynth: segmenting {where}"})
    workers.append(worker)
    # started from the event loop, after napari has connected the worker's result to the
    # viewer (a worker that finished first would have added nothing)
    QTimer.singleShot(0, worker.start)
    return worker


def _in_qt_app() -> bool:
    """Whether a Qt application (napari's window) is running in this process."""
    try:
        from qtpy.QtWidgets import QApplication
    except ImportError:  # (qtpy's "no Qt bindings" is one)
        return False
    return QApplication.instance() is not None


_PREDICTING = threading.Lock()
_CLICKS: list[threading.Event] = []  # the stop flag of the widget's latest prediction
_CLICKS_LOCK = threading.Lock()


class _Stopped(Exception):
    """The widget's prediction was stopped (a newer click, or napari quitting its worker)."""


class _StopCheck:
    """The tile counter ``predict_image`` updates after each batch of tiles, used to stop a
    prediction between batches once ``stopped()`` says so (a torch forward pass cannot be
    interrupted; a batch is ~1 megapixel)."""

    def __init__(self, stopped: Callable[[], bool]) -> None:
        self.total = 0
        self._stopped = stopped

    def refresh(self) -> None:
        if self._stopped():
            raise _Stopped

    def update(self, n: int = 1) -> None:
        self.refresh()


def _supersede() -> threading.Event:
    """A stop flag for a new prediction of the widget; the one before is told to stop."""
    stop = threading.Event()
    with _CLICKS_LOCK:
        for previous in _CLICKS:
            previous.set()
        _CLICKS[:] = [stop]
    return stop


_LOADED: dict[str, Any] = {}  # the widget's detector: {"key": (checkpoint, mtime), "detector"}


def _widget_plane(image: Any, where: str) -> Any:
    """The 2-D gray or RGB plane of an Image layer the widget segments (the finest level of
    a pyramid), or a one-line refusal."""
    from cellsynth.errors import CellsynthError

    data = image.data
    if getattr(image, "multiscale", False) or isinstance(data, (list, tuple)):
        data = data[0]  # the finest level (np.asarray of a pyramid gives napari's coarsest)
        if int(np.prod(data.shape[:2])) > _MAX_WIDGET_PIXELS:
            raise CellsynthError(f"{where}: a whole section ({data.shape[0]}x{data.shape[1]} "
                                 f"px at its finest level); segment it with `cellsynth "
                                 f"predict --images FILE` (tile by tile, --level N for a "
                                 f"coarser one) and open the result here")
    rgb = bool(getattr(image, "rgb", False))
    if len(data.shape) != (3 if rgb else 2):  # a z-stack, time series or (C, Y, X) channels
        raise CellsynthError(f"{where}: a layer of shape {tuple(data.shape)}; the widget "
                             f"segments one 2-D gray or RGB image: pick a plane or channel "
                             f"first (or use `cellsynth predict --channel`)")
    return data


def _widget_detector(detector: Path | str | None) -> Any:
    """The detector the widget names, loaded once: the same checkpoint file, unchanged since,
    is not read again on the next click (a retrained run's new best.pt is)."""
    from cellsynth.errors import CellsynthError
    from cellsynth.segment.predict import checkpoint_path, load_detector

    if detector is None or str(detector) in ("", "."):
        # (magicgui's untouched file field is "."; it said "last.pt: no checkpoint")
        raise CellsynthError("choose a detector: a `cellsynth train` run folder or its "
                             "best.pt (the widget's detector field)")
    path = checkpoint_path(detector)
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if _LOADED.get("key") != key:
        _LOADED.clear()  # (the old one's memory goes before the new one loads)
        _LOADED.update(key=key, detector=load_detector(path))
    return _LOADED["detector"]
