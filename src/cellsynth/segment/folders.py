"""Predict folders of images with a trained detector: labels, overlays, cell tables, meta.json.

Images up to ``LAZY_PIXELS`` are read whole (and validated); larger TIFFs and Zarr arrays
are read tile by tile and their labels painted and written chunk by chunk, so a whole
section is never in memory: neither its pixels nor its labels (what is held is the cells'
outlines, ~1 byte per cell pixel). Loading a detector and predicting one image is
:mod:`cellsynth.segment.predict`.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth import __version__
from cellsynth.errors import ConfigError, DatasetError
from cellsynth.hardware import announce, choose_precision, configure_threads
from cellsynth.io.datasets import file_id, load_dataset, meta_pixel_size
from cellsynth.io.export import level0_factor
from cellsynth.io.files import (
    IMAGE_FOLDERS,
    LABEL_FOLDERS,
    atomic_path,
    check_output_dir,
    names_in,
    staged_output_dir,
    write_json,
)
from cellsynth.io.headers import check_headers
from cellsynth.io.images import (
    IMAGE_SUFFIXES,
    colour_of,
    read_image,
    select_channel,
    unread_format,
    write_image,
    write_labels,
)
from cellsynth.io.normalize import intensity_range
from cellsynth.io.ome_zarr import OME_ZARR_SUFFIX, write_labels_zarr
from cellsynth.io.resample import pixel_scale, read_pixel_size
from cellsynth.io.sections import check_level, reads_lazily
from cellsynth.pipeline import layout
from cellsynth.segment.faint import FAINT_PERCENTILE, FaintCut, calibrate_faint
from cellsynth.segment.predict import (
    Detector,
    _channel,
    _reader,
    _select,
    image_proposals,
    load_detector,
    make_predictor,
    predict_image,
    score_floor,
    set_nms,
    tiling,
)
from cellsynth.segment.tiles import (
    EMPTY_CONTRAST,
    ProposalStore,
    TileCount,
    contours_to_labels,
    open_large_image,
)
from cellsynth.segment.tta import VIEWS
from cellsynth.viz import contour_overlay

__all__ = ["predict_folder", "detections_table", "faint_cut", "quantize_detector"]

LAZY_PIXELS = 8192 * 8192  # larger images are read tile by tile (_read_lazily)
ZARR_ABOVE_PIXELS = 8192 * 8192  # labels_as="auto": larger label images go to OME-Zarr


def faint_cut(annotated: str | os.PathLike, percentile: float, detector: Detector) -> FaintCut:
    """The faint cut of an annotated dataset folder, its images normalised (and reduced to
    the detector's channel and channels) as ``detector`` was trained."""
    from cellsynth.segment.data import load_labeled

    items = load_labeled([annotated], channels=detector.in_channels,
                         normalization=detector.normalization, channel=detector.channel,
                         source_channel=detector.source_channel)
    cut = calibrate_faint([(i.image, i.labels) for i in items], percentile)
    if cut is None:
        raise DatasetError(f"{annotated}: no annotated cell to measure the faint cut on")
    return cut


# int8 is kept only if it finds the cells fp32 finds on the calibration windows
INT8_AGREEMENT = 0.95
INT8_MIN_CELLS = 10  # fp32 cells on the calibration windows that int8 is checked against
INT8_WINDOWS = 4  # tissue windows that calibrate int8 and check its agreement
INT8_SIDE = 512  # px, their side at the model's pixel size


def quantize_detector(detector: Detector, inputs: list[tuple[str, Path]], *,
                      channel: int | None = None, level: int = 0,
                      pixel_size_um: float | None = None, windows: int = INT8_WINDOWS,
                      side: int = INT8_SIDE, score_thresh: float | None = None) -> Detector:
    """``detector`` with its core in int8 (:mod:`cellsynth.segment.quantize`), calibrated on
    up to ``windows`` tissue windows of ``side`` px of the first images of ``inputs`` (id,
    path), scaled and resampled as prediction will see them. The int8 detector must then
    find the fp32 detector's cells on those windows (F1@0.5 >= ``INT8_AGREEMENT``) at the
    score threshold prediction uses (``score_thresh``, else the detector's); otherwise, where
    fp32 finds fewer than ``INT8_MIN_CELLS`` there (nothing to compare: 0 against 0 passed as
    F1 1.0), or where torch cannot quantise, the detector is returned at the precision
    ``auto`` picks here (bf16 where the CPU computes it natively, else fp32; it was always
    fp32, 2-5x slower than bf16 on AMX), and said."""
    from dataclasses import replace

    from cellsynth.evaluate.matching import aggregate, matching
    from cellsynth.io.resample import rescale_image
    from cellsynth.io.sections import tissue_windows
    from cellsynth.segment.quantize import quantize_core

    if next(detector.model.parameters()).device.type != "cpu":
        raise ConfigError("--precision int8 runs on the CPU only")
    tiles: list[np.ndarray] = []
    for _, path in inputs:
        if len(tiles) >= windows:
            break
        image, _ = _open(path, level, _channel(detector, channel))
        image = _select(image, detector, channel, str(path))
        low, high = intensity_range(image, detector.normalization, where=str(path))
        px = _at_level(pixel_size_um, path, image, level) or read_pixel_size(path, level=level)
        factor = pixel_scale(px, detector.pixel_size_um)
        read = _reader(detector.in_channels, low, high, str(path))  # as prediction reads tiles
        for _, _, window in tissue_windows(image, round(side / factor), windows - len(tiles)):
            window = read(window, slice(None), slice(None))
            tiles.append(rescale_image(window, factor) if factor != 1.0 else window)
    try:
        int8 = replace(detector, model=quantize_core(detector.model, tiles), precision="int8")
    except Exception as err:  # torch.ao.quantization is deprecated: it may go or refuse
        return _without_int8(detector, f"int8 quantisation failed here "
                                       f"({type(err).__name__}: {err})")

    thresh = detector.score_thresh if score_thresh is None else score_thresh

    def labels(det: Detector, tile: np.ndarray) -> np.ndarray:
        found = make_predictor(det, floor=score_floor(det, thresh, False))(tile[None])[0]
        return contours_to_labels(*found, tile.shape[:2], score_thresh=thresh)

    agreement = aggregate(matching(labels(detector, t), labels(int8, t), thresholds=(0.5,))
                          for t in tiles)
    if agreement.n_gt < INT8_MIN_CELLS:  # (the fp32 detector's cells are the reference)
        return _without_int8(detector, f"int8 not checked: fp32 finds {agreement.n_gt} "
                                       f"cell(s) on the {len(tiles)} calibration window(s) at "
                                       f"score threshold {thresh:g}, too few to tell whether "
                                       f"int8 finds the same")
    f1 = float(agreement.f1[0])
    if f1 < INT8_AGREEMENT:
        return _without_int8(detector, f"int8 changed the cells on the {len(tiles)} "
                                       f"calibration window(s) (F1@0.5 {f1:.2f} against fp32, "
                                       f"below {INT8_AGREEMENT})")
    announce(f"precision int8 (the detector's backbone and heads, calibrated on {len(tiles)} "
             f"window(s) of the images: F1@0.5 {f1:.3f} against fp32 there; outlines differ "
             f"slightly)")
    return int8


def _without_int8(detector: Detector, why: str) -> Detector:
    """``detector`` (fp32, the reference int8 was checked against) at the precision ``auto``
    picks on this machine, said in one line with ``why`` int8 was not kept."""
    from dataclasses import replace

    from cellsynth.segment.cpn import set_core_precision

    chosen = choose_precision("auto", "cpu")
    set_core_precision(detector.model, chosen.name)
    announce(f"{chosen}: {why}")
    return replace(detector, precision=chosen.name)


def detections_table(labels: Any, id_scores: np.ndarray,
                     pixel_size_um: float | None = None, *, band: int = 1024,
                     assumed: bool = False,
                     level0: tuple[float, float] | None = None) -> str:
    """CSV of the cells of a label map: id, centroid, area, score, bounding box (pixels; area
    also in um² at ``pixel_size_um``), and the pixel size the um² are at: stated (by the
    user, meta.json or the file), or ``assumed`` (none stated: the detector's, at which the
    image was predicted; not a measured size).

    ``level0``: (x, y) factor from these labels' pixels to the slide's level 0 where they
    are of a coarser pyramid level (``predict --level N``; as
    :func:`cellsynth.io.export.level0_factor` gives it); the centroid and bounding box
    are then given at level 0 as well (``*_level0`` columns; a centroid is a pixel's centre,
    a box's edges are pixel edges), where QuPath and the slide's other coordinates are.

    ``labels``: (H, W) numpy or lazy array (read in bands of ``band`` rows, so a whole
    section's labels need not be in memory); ids index ``id_scores``.
    """
    height, width = int(labels.shape[0]), int(labels.shape[1])
    n = len(id_scores)
    area = np.zeros(n, np.int64)
    sum_y, sum_x = np.zeros(n), np.zeros(n)
    y0s, x0s = np.full(n, height, np.int64), np.full(n, width, np.int64)
    y1s, x1s = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for top in range(0, height, band):
        block = np.asarray(labels[top:top + band, :])
        rows, cols = np.nonzero(block)
        ids = block[rows, cols].astype(np.int64)
        rows += top
        area += np.bincount(ids, minlength=n)
        sum_y += np.bincount(ids, weights=rows, minlength=n)
        sum_x += np.bincount(ids, weights=cols, minlength=n)
        np.minimum.at(y0s, ids, rows)
        np.minimum.at(x0s, ids, cols)
        np.maximum.at(y1s, ids, rows + 1)
        np.maximum.at(x1s, ids, cols + 1)
    header = ("id,centroid_y,centroid_x,area_px,area_um2,score,bbox_y0,bbox_x0,bbox_y1,"
              "bbox_x1,pixel_size_um,pixel_size")
    if level0 is not None:
        header += (",centroid_y_level0,centroid_x_level0,bbox_y0_level0,bbox_x0_level0,"
                   "bbox_y1_level0,bbox_x1_level0")
    px = f"{pixel_size_um:g},{'assumed' if assumed else 'stated'}" if pixel_size_um else ","
    lines = [header]
    for i in np.flatnonzero(area[1:]) + 1:
        a = int(area[i])
        cy, cx = sum_y[i] / a, sum_x[i] / a
        area_um2 = f"{a * pixel_size_um ** 2:.3f}" if pixel_size_um else ""
        row = (f"{i},{cy:.2f},{cx:.2f},{a},{area_um2},{float(id_scores[i]):.4f},"
               f"{y0s[i]},{x0s[i]},{y1s[i]},{x1s[i]},{px}")
        if level0 is not None:
            fx, fy = level0
            row += (f",{(cy + 0.5) * fy - 0.5:.2f},{(cx + 0.5) * fx - 0.5:.2f},"
                    f"{y0s[i] * fy:.1f},{x0s[i] * fx:.1f},{y1s[i] * fy:.1f},{x1s[i] * fx:.1f}")
        lines.append(row)
    return "\n".join(lines) + "\n"


def _at_level(pixel_size_um: float | None, path: Path, image: Any, level: int
              ) -> float | None:
    """A pixel size stated for a slide (--pixel-size, meta.json: level 0's) at the pyramid
    level ``image`` is of ``path``: larger by as much as the level is smaller (it was taken
    as the level's own, 4x too small at an SVS's level 1)."""
    if pixel_size_um is None or not level:
        return pixel_size_um
    return pixel_size_um * int(open_large_image(path, level=0).shape[1]) / int(image.shape[1])


def _read_lazily(path: Path) -> bool:
    """Zarr, pyramidal TIFFs, TIFFs with axes beyond y, x and channels, and TIFFs over
    LAZY_PIXELS pixels are read tile by tile (:func:`cellsynth.io.sections.reads_lazily`)."""
    return reads_lazily(path, LAZY_PIXELS)


def _shown(image: np.ndarray, channel: int | None) -> np.ndarray:
    """What an overlay draws the cells on: the image, or the channel that was predicted
    (chosen, or channel 0 of an image that is neither gray nor RGB)."""
    if image.ndim == 3 and (channel is not None or image.shape[2] != 3):
        return image[..., 0 if channel is None else channel]
    return image


def _open(path: Path, level: int = 0, channel: int | None = None) -> tuple[Any, bool]:
    """The image at ``path`` (a lazy array where :func:`_read_lazily`, else in memory) and
    whether it is lazy; in memory, with every channel where ``channel`` is to pick one, else
    as :func:`read_image` reads it for every stage (gray or RGB, said where it chose)."""
    lazy = _read_lazily(path)
    if not lazy:  # (a pyramid's levels are checked where it is opened)
        check_level(path, level, 1)
        return read_image(path, all_channels=channel is not None), lazy
    image = open_large_image(path, level=level)
    if channel is None:  # as read_image reads a smaller one
        image = select_channel(image, None, where=str(path), colour=colour_of(image, path))
    return image, lazy


def _inputs(images: Path) -> list[tuple[str, Path]]:
    """(id, path) of every image file or .zarr folder in a dataset or plain folder."""
    if images.is_dir() and images.suffix.lower() == ".zarr":
        return [(file_id(images), images)]
    if images.is_file():  # one image, e.g. a whole-section TIFF
        if unread_format(images):
            raise DatasetError(unread_format(images))
        if images.suffix.lower() not in IMAGE_SUFFIXES:
            raise DatasetError(f"{images}: not an image file (expected one of "
                               f"{', '.join(IMAGE_SUFFIXES)}) or a folder of images")
        return [(file_id(images), images)]
    if not images.exists():
        raise DatasetError(f"{images}: no such folder")
    if images.name.lower() in LABEL_FOLDERS and any(
            (images.parent / name).is_dir() for name in names_in(images.parent)
            if name.lower() in IMAGE_FOLDERS):  # (it predicted cells in the label maps)
        raise DatasetError(f"{images}: the label maps of the dataset {images.parent}; predict "
                           f"its images ({images.parent}, or its images/ folder)")
    # as every command reads a folder: images/ (Images/, img/, ...) or the folder itself,
    # a Cellpose folder's x_masks.tif beside x.tif as its labels, not one more image (and
    # a.png beside a.tif is an error: both would write one a.tif of labels)
    return [(sample.id, sample.image_path) for sample in load_dataset(images)]


def _relative(path: Path, images: str | os.PathLike) -> dict[str, str]:
    """``{"path": ...}``: where an image predicted from the folder ``images`` lies in it
    (``images/a.tif``, ``Images/a.tif``, ``a.tif``), for export to find it again; nothing
    for one image given alone."""
    try:
        return {"path": path.relative_to(Path(images)).as_posix()}
    except ValueError:
        return {}


def _file_identity(path: str | os.PathLike) -> list[int] | None:
    """(size, mtime in ns) of a file, None where it is not one."""
    try:
        stat = Path(path).stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


def predict_folder(run: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike,
                   *, tile: int | None = None, overlap: int = 96, batch: int | None = None,
                   score_thresh: float | None = None, device: str = "cpu", force: bool = False,
                   precision: str = "auto", channel: int | None = None, level: int = 0,
                   pixel_size_um: float | None = None, labels_as: str = "auto",
                   tta: bool = False, progress: bool = True,
                   empty_contrast: float = EMPTY_CONTRAST,
                   faint_from: str | os.PathLike | None = None,
                   faint_percentile: float = FAINT_PERCENTILE,
                   nms_thresh: float | None = None,
                   part: tuple[int, int] | None = None) -> dict[str, Any]:
    """Predict every image of a folder; write ``labels/``, ``overlays/``, ``detections/``
    (one CSV per image: id, centroid, area, score, bounding box) and meta.json.

    ``labels_as``: "tiff" (``labels/ID.tif``), "ome-zarr" (``labels/ID.ome.zarr``: chunked,
    a multiscale pyramid, the pixel size; what napari, QuPath and Fiji open for whole
    sections) or "auto" (OME-Zarr for images over 8192 x 8192 pixels, TIFF below).

    The images' pixel size is ``pixel_size_um``, else the dataset's meta.json, else what each
    file states (OME/ImageJ TIFF, OME-Zarr); where it and the model's differ, images are
    resampled to the model's resolution and the labels drawn back at the images' own.
    ``tta``: test-time augmentation, ``empty_contrast``: blank tiles not predicted, see
    :func:`predict_image`. ``faint_from``: an annotated dataset folder; detections fainter
    than the ``faint_percentile``-th percentile of its annotated cells' mean signal are
    dropped (:mod:`cellsynth.segment.faint`; the images normalised as the detector was
    trained). ``nms_thresh``: see :func:`set_nms`.

    ``part``: (i, n) with 0 <= i < n, one of n processes (jobs of a cluster array, machines
    sharing the folder above ``out``) that predict rows i, i + n, ... of tiles of every image
    into the cache beside ``out`` and write no output; the same call without ``part`` then
    predicts only the rows missing there and writes ``out``, the labels one process alone
    gives.
    """
    from tqdm.auto import tqdm

    if labels_as not in ("auto", "tiff", "ome-zarr"):
        raise ConfigError(f"labels_as must be auto, tiff or ome-zarr, got {labels_as!r}")
    if part is not None and not (len(part) == 2 and 0 <= part[0] < part[1]):
        raise ConfigError(f"part must be (i, n) with 0 <= i < n, got {part!r}")
    # (before the work: staged_output_dir checks again where it writes, after it)
    check_output_dir(out, force=force, inputs=(images, run, faint_from))
    inputs = _inputs(Path(images))
    # a bad file found hours in wastes them: every header first
    check_headers([path for _, path in inputs], channel=channel)
    for _, path in inputs:
        if level:  # and that each has the level asked for (opened lazily: headers only)
            if _read_lazily(path):
                open_large_image(path, level=level)
            else:
                check_level(path, level, 1)
    detector = load_detector(run, device=device,  # int8 starts from fp32, says its own line
                             precision="fp32" if precision == "int8" else precision,
                             say_precision=precision != "int8")
    recorded = _channel(detector, None)
    if channel is not None and recorded is not None and channel != recorded:
        warnings.warn(f"{run}: the detector was trained on channel {recorded} of multi-channel "
                      f"images; predicting channel {channel} as --channel asks", stacklevel=2)
    set_nms(detector, nms_thresh)
    tile, batch = tiling(detector, tile, batch)
    if overlap >= tile:  # the tile given, or the default one
        raise ConfigError(f"--overlap {overlap} must be smaller than --tile {tile}")
    if 2 * overlap > tile:  # (--tile 100 beside the default overlap: 48 min for 1 MP, not 4 s)
        warnings.warn(f"--tile {tile} with --overlap {overlap}: tiles step by "
                      f"{tile - overlap} px, so each pixel is predicted about "
                      f"{(tile / (tile - overlap)) ** 2:.0f} times; --tile {2 * overlap} or "
                      f"more (or a smaller --overlap) is about "
                      f"{(tile / (tile - overlap)) ** 2 / 4:.0f}x faster", stacklevel=2)
    configure_threads()
    cut = (faint_cut(faint_from, faint_percentile, detector)
           if faint_from is not None and part is None else None)  # (a part paints nothing)
    folder_px = meta_pixel_size(Path(images))
    if precision == "int8":
        detector = quantize_detector(detector, inputs, channel=channel, level=level,
                                     pixel_size_um=pixel_size_um or folder_px,
                                     score_thresh=score_thresh)
    started = time.perf_counter()
    n_cells, n_faint, megapixels, kept = 0, 0, 0.0, 0.0
    multi = False  # whether any image had channels to pick from
    per_image: dict[str, dict[str, Any]] = {}
    # finished rows of tiles of every image, kept until the output is published: a killed
    # prediction (a whole section takes hours) resumes there when run again, and `--part`
    # processes fill it for the one that writes the output
    cache = Path(out).parent / f".{Path(out).name}.proposals"
    said: set[str] = set()  # the pixel-size warnings: once per command, not per image

    def opened(image_id: str, path: Path) -> tuple[Any, bool, float | None, ProposalStore]:
        """An image (lazily where large), its pixel size and the store of its tile rows."""
        image, lazy = _open(path, level, _channel(detector, channel))
        px = (_at_level(pixel_size_um or folder_px, path, image, level)
              or read_pixel_size(path, level=level))
        if pixel_size_um and px and "given" not in said:
            own = read_pixel_size(path, level=level)
            if own and abs(own / px - 1.0) > 0.01:  # (a typo, or the file's metadata wrong)
                said.add("given")
                warnings.warn(f"{path.name}: states {own:g} um/px; --pixel-size "
                              f"{pixel_size_um:g} is used instead (the resampling to the "
                              f"model and the areas in um² follow it)", stacklevel=3)
        if px is None and detector.pixel_size_um is not None and "px" not in said:
            said.add("px")
            warnings.warn(f"{images}: pixel size of {path.name} unknown (no --pixel-size, "
                          f"meta.json or file metadata); it and any other image without one "
                          f"are taken to be at the model's {detector.pixel_size_um} um/px",
                          stacklevel=3)
        elif px is not None and detector.pixel_size_um is None and "detector" not in said:
            said.add("detector")
            warnings.warn(f"{run}: the detector does not record the pixel size it was trained "
                          f"at, so the images' {px:g} um/px cannot be matched to it and they "
                          f"are predicted as they are (a detector trained with pixel_size_um, "
                          f"as `cellsynth run` trains them, resamples)", stacklevel=3)
        stat = path.stat()
        store = ProposalStore(cache / image_id, {
            "detector": detector.source, "step": detector.step,
            # (which file: a detector trained again into the same folder, --force, has the
            # same path and maybe the same step, and its rows were mixed with the old ones')
            "checkpoint": _file_identity(detector.source),
            "precision": detector.precision,
            "image": str(path.resolve()), "bytes": stat.st_size,
            "mtime_ns": stat.st_mtime_ns, "level": level, "tile": tile,
            "overlap": overlap, "channel": channel, "pixel_size_um": px,
            "score_floor": score_floor(detector, score_thresh, tta),
            "empty_contrast": empty_contrast, **({"tta": True} if tta else {}),
            **({"nms_thresh": nms_thresh} if nms_thresh is not None else {})})
        return image, lazy, px, store

    if part is not None:
        return _predict_part(inputs, opened, part, detector, out, cache, tile=tile,
                             overlap=overlap, batch=batch, score_thresh=score_thresh,
                             device=device, channel=channel, tta=tta,
                             empty_contrast=empty_contrast, progress=progress)
    with staged_output_dir(out, force=force, inputs=(images, run, faint_from)) as root:
        (root / layout.LABELS).mkdir()
        (root / layout.DETECTIONS).mkdir()  # (overlays/: made with the first overlay, so
        # a prediction of whole sections alone, which get none, has no empty folder)
        with tqdm(total=0, desc="predict", unit="tile", disable=not progress) as bar:
            for n_done, (image_id, path) in enumerate(inputs):
                bar.set_postfix_str(f"image {n_done + 1}/{len(inputs)}")
                image, lazy, px, store = opened(image_id, path)
                multi |= len(image.shape) == 3 and int(image.shape[2]) > 1
                # (counted once the stores dropped rows made with another key; with TTA
                # each view has its store)
                views = ([store.variant(f"tta{i}") for i in range(len(VIEWS))] if tta
                         else [store])
                rows_done = sum(len(list(view.folder.glob("row*.npz"))) for view in views)
                if rows_done:
                    announce(f"{path.name}: {rows_done} rows of tiles already predicted (by a "
                             f"stopped run of this command, or by --part), not again")
                count = TileCount()
                labels, id_scores = predict_image(
                    detector, image, tile=tile, overlap=overlap, batch=batch,
                    score_thresh=score_thresh, device=device, where=str(path), channel=channel,
                    pixel_size_um=px, progress=bar, return_scores=True, store=store,
                    in_memory=not lazy, tta=tta,  # a section's labels: painted chunk by chunk
                    empty_contrast=empty_contrast, count=count, faint=cut)
                pixels = int(labels.shape[0]) * int(labels.shape[1])
                tiles = vars(count).copy()
                faint_dropped = tiles.pop("faint")  # detections, not tiles: listed beside
                per_image[image_id] = {"file": path.name, **_relative(path, images),
                    "pixel_size_um": px,
                    "resampled_by": pixel_scale(px, detector.pixel_size_um), "tiles": tiles,
                    **({"n_faint_dropped": faint_dropped} if cut is not None else {}),
                    # labels/ and detections/ are in this level's pixels; export scales the
                    # outlines to level 0's, where QuPath and napari place the image
                    **({"level": level, "level0_shape": [
                        int(n) for n in open_large_image(path, level=0).shape[:2]]}
                       if level else {})}
                if count.blank:
                    total = count.predicted + count.blank + count.stored
                    # every tile: likelier a range set by glass noise than an empty image
                    # (a little tissue where the sampled blocks did not look; audit 7)
                    hint = ("; if it holds cells, its intensity range may be the glass "
                            "noise's (a little tissue on a large slide): crop to the tissue"
                            if not count.predicted and not count.stored else "")
                    announce(f"{path}: {count.blank} of {total} tiles blank (no contrast "
                              f"above {empty_contrast:g} of the intensity range), not "
                              f"predicted{hint}")
                if labels_as == "ome-zarr" or (labels_as == "auto"
                                               and pixels > ZARR_ABOVE_PIXELS):
                    write_labels_zarr(root / layout.LABELS / f"{image_id}{OME_ZARR_SUFFIX}",
                                      labels, pixel_size_um=px, source=path)
                else:
                    write_labels(root / layout.LABELS / f"{image_id}.tif", np.asarray(labels),
                                 pixel_size_um=px)
                with atomic_path(root / layout.DETECTIONS / f"{image_id}.csv") as tmp:
                    # (an unknown size was taken to be the model's: areas in um² at it,
                    # and said so in each row)
                    tmp.write_text(detections_table(
                        labels, id_scores, px or detector.pixel_size_um, assumed=px is None,
                        level0=level0_factor(per_image[image_id], labels.shape)
                        if level else None))
                if not lazy:
                    (root / layout.OVERLAYS).mkdir(exist_ok=True)
                    write_image(root / layout.OVERLAYS / f"{image_id}.png",
                                contour_overlay(_shown(image, _channel(detector, channel)),
                                                labels))
                else:  # a picture of a whole section would be the section again
                    announce(f"{path}: no overlay for a whole section; open its labels with "
                             f"the image in napari or QuPath (cellsynth export --to geojson)")
                n_cells += len(id_scores) - 1
                n_faint += count.faint
                # (only what this call predicted counts towards its speed: rows of tiles
                # kept by --part or a stopped run were predicted then)
                covered = count.predicted + count.blank + count.stored
                share_kept = count.stored / covered if covered else 0.0
                megapixels += pixels / 1e6 * (1 - share_kept)
                kept += pixels / 1e6 * share_kept
        elapsed = time.perf_counter() - started
        sizes = {v["pixel_size_um"] for v in per_image.values()}
        shared_px = sizes.pop() if len(sizes) == 1 else None
        used = _channel(detector, channel) if channel is not None or multi else None
        write_json(root / layout.META, {
            "cellsynth_version": __version__, "stage": "predict",
            "model": str(Path(detector.source).resolve()),  # (found from anywhere)
            "model_step": detector.step, "score_thresh": detector.score_thresh
            if score_thresh is None else score_thresh,
            "images": str(Path(images).resolve()),  # where export finds them, from anywhere
            "pixel_size_um": shared_px,  # the labels are at the images' own pixels
            "model_pixel_size_um": detector.pixel_size_um, "images_pixel_size_um": per_image,
            "n_images": len(inputs), "n_instances": n_cells, "tta": tta,
            # of multi-channel images, the one predicted (--channel, else the detector's;
            # none where every image was gray and the detector's channel was not asked for)
            "channel": used,
            "precision": detector.precision,
            # what was asked, where it is not what ran (int8 refused: say so beside it)
            **({"precision_asked": precision} if precision not in ("auto",
                                                                   detector.precision) else {}),
            "empty_contrast": empty_contrast,
            "nms_thresh": float(detector.model.nms_thresh),
            "faint": cut.to_dict() if cut is not None else None,
            "faint_from": str(Path(faint_from).resolve()) if cut is not None else None,
            "n_faint_dropped": n_faint})
    shutil.rmtree(cache, ignore_errors=True)  # published: nothing left to resume
    return {"n_images": len(inputs), "n_instances": n_cells, "faint": n_faint,
            "seconds": elapsed, "megapixels_per_s": megapixels / max(elapsed, 1e-9),
            "megapixels": megapixels, "megapixels_kept": kept,
            "channel": used,
            "channel_from": ("--channel" if channel is not None else "the detector's")}


def _predict_part(inputs: list[tuple[str, Path]], opened: Callable, part: tuple[int, int],
                  detector: Detector, out: str | os.PathLike, cache: Path, *,
                  progress: bool, **options: Any) -> dict[str, Any]:
    """``predict_folder(part=...)``: this process's rows of tiles of every image into the
    stores in ``cache``; nothing else written."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    count = TileCount()
    with tqdm(total=0, desc=f"predict part {part[0] + 1}/{part[1]}", unit="tile",
              disable=not progress) as bar:
        for n_done, (image_id, path) in enumerate(inputs):
            bar.set_postfix_str(f"image {n_done + 1}/{len(inputs)}")
            image, _, px, store = opened(image_id, path)
            image_proposals(detector, image, where=str(path), pixel_size_um=px, progress=bar,
                            store=store, count=count, part=part, **options)
    announce(f"{out}: part {part[0] + 1} of {part[1]} done ({count.predicted} tiles "
             f"predicted, {count.blank} blank, {count.stored} kept from before) in {cache}; "
             f"once every part is done, the same command without --part writes {out}")
    return {"n_images": len(inputs), "part": [part[0] + 1, part[1]],
            "seconds": time.perf_counter() - started, **vars(count)}
