"""Apply a trained detector: load it from a run, predict label maps for folders of images.

Images up to ``LAZY_PIXELS`` are read whole (and validated); larger TIFFs and Zarr arrays
are read tile by tile and their labels painted and written chunk by chunk, so a whole
section is never in memory: neither its pixels nor its labels (what is held is the cells'
outlines, ~1 byte per cell pixel).
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellsynth import __version__
from cellsynth.config import from_dict
from cellsynth.errors import CellsynthError, ConfigError, DatasetError, ImageReadError
from cellsynth.hardware import announce, choose_precision, configure_threads, resolve_device
from cellsynth.io.datasets import announce_skipped, file_id, files_by_id, load_dataset
from cellsynth.io.files import atomic_path, staged_output_dir, write_json
from cellsynth.io.headers import check_header
from cellsynth.io.images import (
    IMAGE_SUFFIXES,
    colour_of,
    foreign_files,
    match_channels,
    read_image,
    select_channel,
    unread_format,
    write_image,
    write_labels,
)
from cellsynth.io.normalize import DTYPE_SCALING, Normalization, apply_range, intensity_range
from cellsynth.io.ome_zarr import OME_ZARR_SUFFIX, write_labels_zarr
from cellsynth.io.resample import Rescaled, pixel_scale, read_pixel_size
from cellsynth.io.sections import check_level, reads_lazily
from cellsynth.pipeline import layout
from cellsynth.segment.faint import FAINT_PERCENTILE, FaintCut, calibrate_faint, drop_faint
from cellsynth.segment.tiles import (
    EMPTY_CONTRAST,
    HALF_PIXEL,
    PaintedLabels,
    Predictor,
    ProposalStore,
    TileCount,
    balanced_tile,
    contours_to_labels,
    offset_contours,
    open_large_image,
    tile_origins,
    tiled_proposals,
)
from cellsynth.segment.tta import VIEWS, Dihedral, merge_views, to_image_coordinates
from cellsynth.viz import contour_overlay

__all__ = ["Detector", "checkpoint_path", "read_detector_checkpoint", "load_detector",
           "set_nms", "CPN_NMS", "make_predictor", "image_proposals", "predict_image",
           "predict_folder", "detections_table", "tiling"]

LAZY_PIXELS = 8192 * 8192
_MULTIPLE = 32       # the U-Net backbones need sizes divisible by this
_SCORE_FLOOR = 0.5   # proposals below this are never useful (thresholds are chosen above)

ZARR_ABOVE_PIXELS = 8192 * 8192  # labels_as="auto": larger label images go to OME-Zarr
# Tiles of 1024 with 96 px overlap compute a section's pixels 1.22x over, tiles of 512 1.51x;
# one 1024 tile per forward pass holds as much as four of 512 (~1 GB of activations). Tiles
# shrink to the balanced size (tiles.balanced_tile): a 2048 mosaic of Nissl images at
# 0.222 MP/s vs 0.180 with balanced 512 x 4 and 0.121 before (benchmarks/predict.py, 2 cores).
DEFAULT_TILE = 1024
_PIXELS_PER_PASS = 1 << 20


def tiling(detector: Detector, tile: int | None = None, batch: int | None = None
           ) -> tuple[int, int]:
    """(tile, batch) as used: the tile defaults to max(DEFAULT_TILE, the training crop), the
    batch to as many tiles as make ~1 megapixel per forward pass."""
    tile = tile or max(detector.crop, DEFAULT_TILE)
    return tile, batch or max(1, _PIXELS_PER_PASS // (tile * tile))


@dataclass
class Detector:
    """A CPN ready for inference, with what is needed to apply it as it was trained."""

    model: torch.nn.Module
    in_channels: int
    score_thresh: float
    crop: int
    pixel_size_um: float | None
    step: int
    source: str
    normalization: Normalization = Normalization()  # as the model was trained
    channel: int | None = None  # the one channel of multi-channel images it was trained on
    precision: str = "fp32"  # what its core runs in here (set_core_precision)
    # the channel of multi-channel images that its (gray) training images were taken from
    # (cellsynth run's real.channel): picked from such images, gray ones used as they are
    source_channel: int | None = None


def checkpoint_path(run: str | os.PathLike) -> Path:
    """``RUN/best.pt`` (else ``RUN/last.pt``), or ``run`` itself if it is a file; of a
    `cellsynth run` folder, the detector it predicted with (its predict/meta.json says)."""
    path = layout.detector_checkpoint(run)
    ran = Path(run) / layout.PREDICT / layout.META
    if not path.is_file() and ran.is_file():
        import json

        used = Path(json.loads(ran.read_text()).get("model") or "")
        if not used.is_absolute():  # (older runs: relative to where the run was started)
            used = Path(run) / used.parent.name / used.name
        if used.is_file():
            announce(f"{run}: a `cellsynth run` folder; predicting with the detector it "
                     f"predicted with, {used}")
            return used
    if not path.is_file():
        inside = [d.name for d in (Path(run) / n for n in ("soup", "finetune", "pretrain"))
                  if layout.detector_checkpoint(d).is_file()] if Path(run).is_dir() else []
        if inside:  # a `cellsynth run` folder: its detectors are in stage folders
            raise CellsynthError(f"{run}: a `cellsynth run` folder, not a detector; give its "
                                 f"{' or '.join(f'{run}/{n}' for n in inside)} (the first "
                                 f"is what the run predicts with)")
        raise CellsynthError(f"{path}: no checkpoint (train a model with `cellsynth train`)")
    return path


def read_detector_checkpoint(run: str | os.PathLike, *, device: str = "cpu",
                             needed_by: str = "predict") -> tuple[Path, dict[str, Any]]:
    """(path, checkpoint dict) of a `cellsynth train` run or checkpoint file; a truncated
    file or another kind of checkpoint is one :class:`CellsynthError` naming it."""
    path = checkpoint_path(run)
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch's zip-reader text says little
        raise CellsynthError(f"{path}: cannot load checkpoint (truncated or not a torch "
                             f"file?)") from err
    if not isinstance(ckpt, dict) or "model_spec" not in ckpt:
        kind = "a refiner run (use it with generate)" if isinstance(ckpt, dict) and \
            "generator" in ckpt else "not a detector checkpoint"
        raise CellsynthError(f"{path}: {kind}; {needed_by} needs a `cellsynth train` run")
    return path, ckpt


def load_detector(run: str | os.PathLike, *, device: str = "cpu",
                  precision: str = "auto", say_precision: bool = True) -> Detector:
    """Load a trained CPN from a run folder or checkpoint file (see :func:`checkpoint_path`).

    ``precision`` ("auto"/"bf16"/"fp32"): ``auto`` asks *this* machine's hardware, whatever
    the model trained in (bf16 is ~10x slower where the CPU emulates it), and says in one
    line what it chose (``say_precision``: False where the caller says it, e.g. int8).
    """
    from cellsynth.segment.cpn import build_model, prepare_for_inference, set_core_precision

    resolve_device(device)
    path, ckpt = read_detector_checkpoint(run, device=device, needed_by="predict")
    spec = ckpt["model_spec"]
    model = build_model(**spec).to(device)
    model.load_state_dict(ckpt["model"])
    prepare_for_inference(model)  # BatchNorm folded, channels-last: ~1.5x faster on CPU
    config = ckpt.get("config", {})
    chosen = choose_precision(precision, device)
    if say_precision:
        announce(str(chosen))
    set_core_precision(model, chosen.name)
    if "normalization" in config:
        normalization = from_dict(Normalization, config["normalization"],
                                  where=f"{path}: normalization")
    else:  # trained before content normalisation: apply it as it was trained
        normalization = DTYPE_SCALING
    return Detector(model, spec["in_channels"], float(ckpt.get("score_thresh", 0.9)),
                    int(config.get("crop", 256)), config.get("pixel_size_um"),
                    int(ckpt["step"]), str(path), normalization, config.get("channel"),
                    chosen.name, config.get("source_channel"))


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
INT8_WINDOWS = 4  # tissue windows that calibrate int8 and check its agreement
INT8_SIDE = 512  # px, their side at the model's pixel size


def quantize_detector(detector: Detector, inputs: list[tuple[str, Path]], *,
                      channel: int | None = None, level: int = 0,
                      pixel_size_um: float | None = None, windows: int = INT8_WINDOWS,
                      side: int = INT8_SIDE) -> Detector:
    """``detector`` with its core in int8 (:mod:`cellsynth.segment.quantize`), calibrated on
    up to ``windows`` tissue windows of ``side`` px of the first images of ``inputs`` (id,
    path), scaled and resampled as prediction will see them. The int8 detector must then
    find the fp32 detector's cells on those windows (F1@0.5 >= ``INT8_AGREEMENT``);
    otherwise, or where torch cannot quantise, the fp32 detector is returned, and said."""
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
        px = pixel_size_um or read_pixel_size(path, level=level)
        factor = pixel_scale(px, detector.pixel_size_um)
        read = _reader(detector.in_channels, low, high, str(path))  # as prediction reads tiles
        for _, _, window in tissue_windows(image, round(side / factor), windows - len(tiles)):
            window = read(window, slice(None), slice(None))
            tiles.append(rescale_image(window, factor) if factor != 1.0 else window)
    try:
        int8 = replace(detector, model=quantize_core(detector.model, tiles), precision="int8")
    except Exception as err:  # torch.ao.quantization is deprecated: it may go or refuse
        announce(f"precision fp32: int8 quantisation failed here ({type(err).__name__}: "
                 f"{err})")
        return detector

    def labels(det: Detector, tile: np.ndarray) -> np.ndarray:
        found = make_predictor(det, floor=score_floor(det, None, False))(tile[None])[0]
        return contours_to_labels(*found, tile.shape[:2], score_thresh=det.score_thresh)

    agreement = aggregate(matching(labels(detector, t), labels(int8, t), thresholds=(0.5,))
                          for t in tiles)
    f1 = float(agreement.f1[0])  # 1 where neither finds a cell
    if f1 < INT8_AGREEMENT:
        announce(f"precision fp32: int8 changed the cells on the {len(tiles)} calibration "
                 f"window(s) (F1@0.5 {f1:.2f} against fp32, below {INT8_AGREEMENT})")
        return detector
    announce(f"precision int8 (the detector's backbone and heads, calibrated on {len(tiles)} "
             f"window(s) of the images: F1@0.5 {f1:.3f} against fp32 there; outlines differ "
             f"slightly)")
    return int8


def score_floor(detector: Detector, score_thresh: float | None, tta: bool) -> float:
    """The lowest score a prediction needs proposals for. Without TTA that is the threshold
    itself: greedy NMS and painting give a proposal the same fate whatever lower-scored ones
    exist, so the labels are identical, and the network's contour and refinement work for the
    proposals between 0.5 and the threshold (~30 % of a prediction with tiny_u22) is saved.
    TTA sums scores over views, so a view's low scores count there."""
    thresh = detector.score_thresh if score_thresh is None else score_thresh
    # a hair below: the CPN keeps scores strictly above its floor, painting keeps >= thresh
    return _SCORE_FLOOR if tta else max(_SCORE_FLOOR, float(thresh) - 1e-6)


CPN_NMS = 0.2  # celldetection's box-NMS threshold, every cellsynth detector's own


def set_nms(detector: Detector, nms_thresh: float | None) -> None:
    """Proposals whose boxes overlap a better-scoring one by IoU above ``nms_thresh`` are
    dropped as the same cell (celldetection's NMS; None keeps the detector's, ``CPN_NMS``).
    Somata packed in clusters have boxes that overlap more than 0.2: on Nissl the recipe found
    more of them at 0.5 (docs/results.md, "NMS")."""
    if nms_thresh is None:
        return
    if not 0.0 < nms_thresh <= 1.0:
        raise ConfigError(f"the NMS threshold must be in (0, 1], got {nms_thresh}")
    detector.model.nms_thresh = float(nms_thresh)


def make_predictor(detector: Detector, *, device: str = "cpu",
                   floor: float = _SCORE_FLOOR) -> Predictor:
    """A tile predictor: pads to a multiple of 32, returns (contours, scores) per tile
    (proposals scoring at least ``floor``)."""
    from cellsynth.segment.cpn import raw_predict, score_threshold

    def predictor(tiles: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        b, h, w, _ = tiles.shape
        ph, pw = -h % _MULTIPLE, -w % _MULTIPLE
        if ph or pw:
            tiles = np.pad(tiles, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect")
        inputs = torch.from_numpy(np.ascontiguousarray(tiles.transpose(0, 3, 1, 2))).to(device)
        with score_threshold(detector.model, floor):
            out = raw_predict(detector.model, inputs)
        result = []
        for contours, scores in out:
            centre = contours.mean(axis=1) if len(contours) else np.zeros((0, 2))
            inside = (centre[:, 0] < w) & (centre[:, 1] < h)  # drop cells of the padding
            result.append((contours[inside], scores[inside]))
        return result

    return predictor


def _reader(channels: int, low: np.ndarray, high: np.ndarray, where: str):
    """Tiles normalised with the whole image's range, so tiles keep one brightness."""
    def read(image: Any, ys: slice, xs: slice) -> np.ndarray:
        return match_channels(apply_range(np.asarray(image[ys, xs]), low, high), channels,
                              where=where)
    return read


def predict_image(detector: Detector, image: Any, *, tile: int | None = None,
                  overlap: int = 96, batch: int | None = None,
                  score_thresh: float | None = None,
                  device: str = "cpu", where: str = "image", channel: int | None = None,
                  pixel_size_um: float | None = None, progress: Any = None,
                  return_scores: bool = False, store: ProposalStore | None = None,
                  in_memory: bool = True, balance: bool = True, tta: bool = False,
                  empty_contrast: float = EMPTY_CONTRAST, count: TileCount | None = None,
                  faint: FaintCut | None = None) -> Any:
    """(H, W) uint32 instance labels for an (H, W[, C]) image or lazy array of any size.

    ``channel`` (default: the one the model was trained on, if any) keeps only that channel.
    ``pixel_size_um``: the image's; if it and the model's are known and differ, the image is
    resampled to the model's resolution (window by window) and the cells are drawn back at
    the image's own, so the labels always have the image's shape. ``progress``: a tqdm bar
    counting tiles (its total grows by this image's tiles). ``return_scores``: also return
    each id's score ((N + 1,), index 0 = background). ``store``: keeps finished rows of tiles
    (see :class:`~cellsynth.segment.tiles.ProposalStore`); rows it holds are not predicted.
    ``tile`` is the largest tile; with ``balance`` tiles shrink to the smallest size that
    needs no more of them (:func:`~cellsynth.segment.tiles.balanced_tile`).
    ``in_memory=False`` returns the labels as a :class:`~cellsynth.segment.tiles.PaintedLabels`
    (the same pixels, painted window by window when read) for sections whose labels do not fit
    in memory. ``tta``: predict the 8 flips/transposes and let them vote
    (:mod:`cellsynth.segment.tta`; 8x the time). ``empty_contrast``: tiles with no contrast
    above this share of the intensity range are not predicted (empty glass;
    :func:`~cellsynth.segment.tiles.blank_tile`; 0 predicts every tile); ``count`` counts them.
    ``faint``: drop the detections fainter than this cut, measured on annotated images
    (:mod:`cellsynth.segment.faint`; ``count.faint`` counts them).
    """
    contours, scores, offset = image_proposals(
        detector, image, tile=tile, overlap=overlap, batch=batch, score_thresh=score_thresh,
        device=device, where=where, channel=channel, pixel_size_um=pixel_size_um,
        progress=progress, store=store, balance=balance, tta=tta,
        empty_contrast=empty_contrast, count=count, faint=faint)
    thresh = detector.score_thresh if score_thresh is None else score_thresh
    shape = (int(image.shape[0]), int(image.shape[1]))
    if in_memory:
        labels, id_scores = contours_to_labels(contours, scores, shape, score_thresh=thresh,
                                               offset=offset, return_scores=True)
    else:
        labels = PaintedLabels(contours, scores, shape, score_thresh=thresh, offset=offset)
        id_scores = labels.id_scores
    return (labels, id_scores) if return_scores else labels


def image_proposals(detector: Detector, image: Any, *, tile: int | None = None,
                    overlap: int = 96, batch: int | None = None,
                    score_thresh: float | None = None, device: str = "cpu",
                    where: str = "image", channel: int | None = None,
                    pixel_size_um: float | None = None, progress: Any = None,
                    store: ProposalStore | None = None, balance: bool = True,
                    tta: bool = False,
                    value_range: tuple[np.ndarray, np.ndarray] | None = None,
                    empty_contrast: float = EMPTY_CONTRAST, count: TileCount | None = None,
                    faint: FaintCut | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """What :func:`predict_image` paints: (contours (K, S, 2) as (x, y) in the image's own
    pixels, scores (K,), offset), all proposals scoring at least the floor that
    ``score_thresh`` (default: the detector's) needs. A cell is painted as the pixels whose
    centres lie in its contour moved ``offset`` px outward (:func:`tiles.offset_contours`;
    0 where the offset was applied before scaling back to the image's pixel size).

    ``value_range``: the (low, high) intensities to scale by (of the channel used), e.g. of
    the whole section ``image`` is a window of; default the image's own. ``empty_contrast``,
    ``count``: see :func:`predict_image`. ``faint``: proposals that would be painted but are
    fainter than this cut get score -1 (see :func:`predict_image`)."""
    image = _select(image, detector, channel, where)
    tile, batch = tiling(detector, tile, batch)
    low, high = value_range if value_range is not None else \
        intensity_range(image, detector.normalization, where=where)
    factor = pixel_scale(pixel_size_um, detector.pixel_size_um)
    view = image if factor == 1.0 else Rescaled(image, factor)
    if balance:  # no larger than needed for as few tiles as `tile` needs
        tile = max(balanced_tile(int(view.shape[0]), tile, overlap),
                   balanced_tile(int(view.shape[1]), tile, overlap))
    views = VIEWS if tta else VIEWS[:1]
    if progress is not None:
        tiles = (len(tile_origins(int(view.shape[0]), tile, overlap))
                 * len(tile_origins(int(view.shape[1]), tile, overlap)))
        progress.total = (progress.total or 0) + tiles * len(views)
        progress.refresh()
    predictor = make_predictor(detector, device=device,
                               floor=score_floor(detector, score_thresh, tta))
    read = _reader(detector.in_channels, low, high, where)
    passes = []
    for i, v in enumerate(views):
        c, s = tiled_proposals(
            Dihedral(view, v) if tta else view, predictor, tile=tile, overlap=overlap,
            batch=batch, read=read, progress=progress.update if progress is not None else None,
            store=store.variant(f"tta{i}") if tta and store is not None else store,
            empty_contrast=empty_contrast, count=count)
        passes.append((to_image_coordinates(c, v, view.shape[:2]), s))
    contours, scores = merge_views(passes) if tta else passes[0]
    offset = HALF_PIXEL
    if factor != 1.0:  # pixel centres: model pixel i sits at image pixel (i + 0.5) / f - 0.5
        # The half-pixel outline offset belongs to the model's pixels, before scaling back.
        contours = (offset_contours(contours, HALF_PIXEL) + 0.5) / factor - 0.5
        offset = 0.0
    if faint is not None:
        thresh = detector.score_thresh if score_thresh is None else score_thresh
        scores, dropped = drop_faint(contours, scores, (int(image.shape[0]),
                                                        int(image.shape[1])),
                                     lambda ys, xs: read(image, ys, xs), faint, thresh)
        if count is not None:
            count.faint += dropped
    return contours, scores, offset


def detections_table(labels: Any, id_scores: np.ndarray,
                     pixel_size_um: float | None = None, *, band: int = 1024,
                     assumed: bool = False) -> str:
    """CSV of the cells of a label map: id, centroid, area, score, bounding box (pixels; area
    also in um² at ``pixel_size_um``), and the pixel size the um² are at: stated (by the
    user, meta.json or the file), or ``assumed`` (none stated: the detector's, at which the
    image was predicted; not a measured size).

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
    px = f"{pixel_size_um:g},{'assumed' if assumed else 'stated'}" if pixel_size_um else ","
    lines = [header]
    for i in np.flatnonzero(area[1:]) + 1:
        a = int(area[i])
        area_um2 = f"{a * pixel_size_um ** 2:.3f}" if pixel_size_um else ""
        lines.append(f"{i},{sum_y[i] / a:.2f},{sum_x[i] / a:.2f},{a},{area_um2},"
                     f"{float(id_scores[i]):.4f},{y0s[i]},{x0s[i]},{y1s[i]},{x1s[i]},{px}")
    return "\n".join(lines) + "\n"


def _folder_pixel_size(images: Path) -> float | None:
    """The pixel size a dataset folder's meta.json states (None for files, plain folders and
    a meta.json without one). Only meta.json's: what the files state is read per image at
    the pyramid level predicted (``Dataset.pixel_size_um`` falls back to their level 0)."""
    if images.is_dir() and images.suffix.lower() != ".zarr" and (images / layout.META).is_file():
        value = load_dataset(images).meta.get("pixel_size_um")
        return float(value) if value is not None else None
    return None


def _read_lazily(path: Path) -> bool:
    """Zarr, pyramidal TIFFs, TIFFs with axes beyond y, x and channels, and TIFFs over
    LAZY_PIXELS pixels are read tile by tile (:func:`cellsynth.io.sections.reads_lazily`)."""
    return reads_lazily(path, LAZY_PIXELS)


def _channel(detector: Detector, channel: int | None) -> int | None:
    """The channel of multi-channel images to predict: ``channel``, else the detector's,
    else the one its training images were taken from (:attr:`Detector.source_channel`)."""
    if channel is not None:
        return channel
    return detector.channel if detector.channel is not None else detector.source_channel


def _select(image: Any, detector: Detector, channel: int | None, where: str) -> Any:
    """The channel :func:`_channel` names of ``image`` (see :func:`select_channel`); where
    it is the detector's and the image lacks it, the error says so and how to choose. A
    gray image is used as it is by a detector whose gray training images were one channel
    taken from multi-channel ones (``source_channel``): it is that channel already."""
    count = int(image.shape[2]) if len(image.shape) == 3 else 1
    recorded = _channel(detector, None)
    if channel is None and recorded is not None:
        if detector.channel is None and count == 1:
            return image
        if recorded >= count:
            raise ImageReadError(f"{where}: the detector was trained on channel {recorded} "
                                 f"of multi-channel images, but this image has {count} "
                                 f"channel(s); choose "
                                 + ("it with --channel 0" if count == 1
                                    else f"one with --channel (0-{count - 1})"))
    return select_channel(image, _channel(detector, channel), where=where)


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
    folder = images / "images" if (images / "images").is_dir() else images
    # (as a dataset reads them: a.png beside a.tif would write one a.tif of labels)
    found = list(files_by_id(folder, zarr_sections=True).items())
    if not found:
        load_dataset(images)  # raises the standard "no images found" error (naming CZI etc.)
    announce_skipped(folder, foreign_files(folder))
    return found


def predict_folder(run: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike,
                   *, tile: int | None = None, overlap: int = 96, batch: int | None = None,
                   score_thresh: float | None = None, device: str = "cpu", force: bool = False,
                   precision: str = "auto", channel: int | None = None, level: int = 0,
                   pixel_size_um: float | None = None, labels_as: str = "auto",
                   tta: bool = False, progress: bool = True,
                   empty_contrast: float = EMPTY_CONTRAST,
                   faint_from: str | os.PathLike | None = None,
                   faint_percentile: float = FAINT_PERCENTILE,
                   nms_thresh: float | None = None) -> dict[str, Any]:
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
    """
    from tqdm.auto import tqdm

    if labels_as not in ("auto", "tiff", "ome-zarr"):
        raise ConfigError(f"labels_as must be auto, tiff or ome-zarr, got {labels_as!r}")
    inputs = _inputs(Path(images))
    for _, path in inputs:  # a bad file found hours in wastes them: every header first
        if path.is_file():  # (a .zarr section: its metadata is read as it is opened)
            count = check_header(path)
            if channel is not None and count is not None and channel >= count:
                raise ImageReadError(f"{path}: channel {channel} requested, but the image has "
                                     f"{count} channel(s) (0-{count - 1})")
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
    configure_threads()
    cut = (faint_cut(faint_from, faint_percentile, detector) if faint_from is not None
           else None)
    folder_px = _folder_pixel_size(Path(images))
    if precision == "int8":
        detector = quantize_detector(detector, inputs, channel=channel, level=level,
                                     pixel_size_um=pixel_size_um or folder_px)
    started = time.perf_counter()
    n_cells, n_faint, megapixels = 0, 0, 0.0
    multi = False  # whether any image had channels to pick from
    per_image: dict[str, dict[str, Any]] = {}
    # finished rows of tiles of every image, kept until the output is published: a killed
    # prediction (a whole section takes hours) resumes there when run again
    cache = Path(out).parent / f".{Path(out).name}.proposals"
    with staged_output_dir(out, force=force, inputs=(images, run, faint_from)) as root:
        (root / layout.LABELS).mkdir()
        (root / layout.OVERLAYS).mkdir()
        (root / layout.DETECTIONS).mkdir()
        rows_done = len(list(cache.glob("*/row*.npz")))
        if rows_done:
            announce(f"{out}: continuing a prediction that was stopped "
                     f"({rows_done} rows of tiles done)")
        said: set[str] = set()  # the pixel-size warnings: once per command, not per image
        with tqdm(total=0, desc="predict", unit="tile", disable=not progress) as bar:
            for n_done, (image_id, path) in enumerate(inputs):
                bar.set_postfix_str(f"image {n_done + 1}/{len(inputs)}")
                image, lazy = _open(path, level, _channel(detector, channel))
                multi |= len(image.shape) == 3 and int(image.shape[2]) > 1
                px = pixel_size_um or folder_px or read_pixel_size(path, level=level)
                if px is None and detector.pixel_size_um is not None and "px" not in said:
                    said.add("px")
                    warnings.warn(f"{images}: pixel size of some images unknown (no "
                                  f"--pixel-size, meta.json or file metadata); taken to be "
                                  f"the model's {detector.pixel_size_um} um/px", stacklevel=1)
                elif (px is not None and detector.pixel_size_um is None
                      and "detector" not in said):
                    said.add("detector")
                    warnings.warn(f"{run}: the detector does not record the pixel size it was "
                                  f"trained at, so the images' {px:g} um/px cannot be matched "
                                  f"to it and they are predicted as they are (a detector "
                                  f"trained with pixel_size_um, as `cellsynth run` trains "
                                  f"them, resamples)", stacklevel=1)
                stat = path.stat()
                store = ProposalStore(cache / image_id, {
                    "detector": detector.source, "step": detector.step,
                    "precision": detector.precision,
                    "image": str(path.resolve()), "bytes": stat.st_size,
                    "mtime_ns": stat.st_mtime_ns, "level": level, "tile": tile,
                    "overlap": overlap, "channel": channel, "pixel_size_um": px,
                    "score_floor": score_floor(detector, score_thresh, tta),
                    "empty_contrast": empty_contrast, **({"tta": True} if tta else {}),
                    **({"nms_thresh": nms_thresh} if nms_thresh is not None else {})})
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
                per_image[image_id] = {"file": path.name, "pixel_size_um": px,
                    "resampled_by": pixel_scale(px, detector.pixel_size_um), "tiles": tiles,
                    **({"n_faint_dropped": faint_dropped} if cut is not None else {}),
                    # labels/ and detections/ are in this level's pixels; export scales the
                    # outlines to level 0's, where QuPath and napari place the image
                    **({"level": level, "level0_shape": [
                        int(n) for n in open_large_image(path, level=0).shape[:2]]}
                       if level else {})}
                if count.blank:
                    total = count.predicted + count.blank + count.stored
                    announce(f"{path}: {count.blank} of {total} tiles blank (no contrast "
                              f"above {empty_contrast:g} of the intensity range), not "
                              f"predicted")
                if labels_as == "ome-zarr" or (labels_as == "auto"
                                               and pixels > ZARR_ABOVE_PIXELS):
                    write_labels_zarr(root / layout.LABELS / f"{image_id}{OME_ZARR_SUFFIX}",
                                      labels, pixel_size_um=px)
                else:
                    write_labels(root / layout.LABELS / f"{image_id}.tif", np.asarray(labels),
                                 pixel_size_um=px)
                with atomic_path(root / layout.DETECTIONS / f"{image_id}.csv") as tmp:
                    # (an unknown size was taken to be the model's: areas in um² at it,
                    # and said so in each row)
                    tmp.write_text(detections_table(labels, id_scores,
                                                    px or detector.pixel_size_um,
                                                    assumed=px is None))
                if not lazy:
                    write_image(root / layout.OVERLAYS / f"{image_id}.png",
                                contour_overlay(_shown(image, _channel(detector, channel)),
                                                labels))
                else:  # a picture of a whole section would be the section again
                    announce(f"{path}: no overlay for a whole section; open its labels with "
                             f"the image in napari or QuPath (cellsynth export --to geojson)")
                n_cells += len(id_scores) - 1
                n_faint += count.faint
                megapixels += pixels / 1e6
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
            "empty_contrast": empty_contrast,
            "nms_thresh": float(detector.model.nms_thresh),
            "faint": cut.to_dict() if cut is not None else None,
            "faint_from": str(Path(faint_from).resolve()) if cut is not None else None,
            "n_faint_dropped": n_faint})
    shutil.rmtree(cache, ignore_errors=True)  # published: nothing left to resume
    return {"n_images": len(inputs), "n_instances": n_cells, "faint": n_faint,
            "seconds": elapsed, "megapixels_per_s": megapixels / max(elapsed, 1e-9),
            "channel": used,
            "channel_from": ("--channel" if channel is not None else "the detector's")}
