"""Apply a trained detector: load it from a run, predict the label map of one image.

An image of any size is predicted tile by tile, at the detector's pixel size, optionally
with test-time augmentation. Folders of images (read whole or lazily, int8, the faint cut,
labels, overlays and cell tables written) are :mod:`cellsynth.segment.folders`.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellsynth.config import from_dict
from cellsynth.errors import CellsynthError, ConfigError, ImageReadError
from cellsynth.hardware import announce, choose_precision, resolve_device
from cellsynth.io.files import say_if_unfinished
from cellsynth.io.images import (
    NAN_HINT,
    channels_last,
    guess_axes,
    match_channels,
    select_channel,
)
from cellsynth.io.normalize import DTYPE_SCALING, Normalization, apply_range, intensity_range
from cellsynth.io.resample import Rescaled, pixel_scale
from cellsynth.pipeline import layout
from cellsynth.segment.faint import FaintCut, drop_faint
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
    tile_origins,
    tiled_proposals,
)
from cellsynth.segment.tta import VIEWS, Dihedral, merge_views, to_image_coordinates

# (predict_folder and detections_table are in folders.__all__; see _IN_FOLDERS below)
__all__ = ["Detector", "checkpoint_path", "read_detector_checkpoint", "load_detector",
           "set_nms", "CPN_NMS", "make_predictor", "image_proposals", "predict_image",
           "tiling"]

_MULTIPLE = 32       # the U-Net backbones need sizes divisible by this
_SCORE_FLOOR = 0.5   # proposals below this are never useful (thresholds are chosen above)

# Tiles of 1024 with 96 px overlap compute a section's pixels 1.22x over, tiles of 512 1.51x;
# one 1024 tile per forward pass holds as much as four of 512 (~1 GB of activations). Tiles
# shrink to the balanced size (tiles.balanced_tile): a 2048 mosaic of Nissl images at
# 0.222 MP/s vs 0.180 with balanced 512 x 4 and 0.121 before (benchmarks/predict.py, 2 cores).
DEFAULT_TILE = 1024
_PIXELS_PER_PASS = 1 << 20

# Moved to cellsynth.segment.folders, which imports this module: still importable from here,
# loaded on first use. Patch them there, where predict_folder looks them up.
_IN_FOLDERS = ("predict_folder", "detections_table", "faint_cut", "quantize_detector",
               "LAZY_PIXELS", "ZARR_ABOVE_PIXELS", "INT8_AGREEMENT", "INT8_WINDOWS",
               "INT8_SIDE")


def __getattr__(name: str) -> Any:
    if name in _IN_FOLDERS:
        from cellsynth.segment import folders

        return getattr(folders, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


def checkpoint_path(run: str | os.PathLike, *, whole_runs: bool = True) -> Path:
    """``RUN/best.pt`` (else ``RUN/last.pt``), or ``run`` itself if it is a file; of a
    `cellsynth run` folder, the detector it predicted with (its predict/meta.json says), or
    without ``whole_runs`` (fine-tuning: which detector to start from is the user's choice)
    a one-line refusal naming the detectors it holds."""
    path = layout.detector_checkpoint(run)
    ran = Path(run) / layout.PREDICT / layout.META
    if not path.is_file() and ran.is_file() and whole_runs:
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
                             needed_by: str = "predict", whole_runs: bool = True
                             ) -> tuple[Path, dict[str, Any]]:
    """(path, checkpoint dict) of a `cellsynth train` run or checkpoint file; a truncated
    file or another kind of checkpoint is one :class:`CellsynthError` naming it;
    ``whole_runs``: see :func:`checkpoint_path`."""
    path = checkpoint_path(run, whole_runs=whole_runs)
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch's zip-reader text says little
        raise CellsynthError(f"{path}: cannot load checkpoint (truncated or not a torch "
                             f"file?)") from err
    if not isinstance(ckpt, dict) or "model_spec" not in ckpt:
        kind = "a refiner run (use it with generate)" if isinstance(ckpt, dict) and \
            "generator" in ckpt else "not a detector checkpoint"
        raise CellsynthError(f"{path}: {kind}; {needed_by} needs a `cellsynth train` run")
    say_if_unfinished(path, ckpt, "cellsynth train")
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
        window = np.asarray(image[ys, xs])
        if window.dtype.kind == "f" and not np.isfinite(window).all():
            # a section read lazily is never checked whole (an image file is, on reading):
            # its NaN reached the network (celldetection's assertion, a traceback)
            raise ImageReadError(f"{where}: NaN/inf values in rows {ys.start}-{ys.stop}, "
                                 f"columns {xs.start}-{xs.stop} ({NAN_HINT})")
        return match_channels(apply_range(window, low, high), channels, where=where)
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
    image = _as_image(image, where)
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
                    faint: FaintCut | None = None,
                    part: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """What :func:`predict_image` paints: (contours (K, S, 2) as (x, y) in the image's own
    pixels, scores (K,), offset), all proposals scoring at least the floor that
    ``score_thresh`` (default: the detector's) needs. A cell is painted as the pixels whose
    centres lie in its contour moved ``offset`` px outward (:func:`tiles.offset_contours`;
    0 where the offset was applied before scaling back to the image's pixel size).

    ``value_range``: the (low, high) intensities to scale by (of the channel used), e.g. of
    the whole section ``image`` is a window of; default the image's own. ``empty_contrast``,
    ``count``: see :func:`predict_image`. ``faint``: proposals that would be painted but are
    fainter than this cut get score -1 (see :func:`predict_image`). ``part``: (i, n), only
    fill ``store`` with this process's rows of tiles (:func:`tiles.tiled_proposals`) and
    return no proposals: another call, without ``part``, then finds them all there."""
    if part is not None and store is None:
        raise ValueError("part needs a store: the rows it predicts are kept there")
    image = _as_image(image, where)
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
        rows = len(tile_origins(int(view.shape[0]), tile, overlap))
        if part is not None:
            rows = len(range(part[0], rows, part[1]))
        tiles = rows * len(tile_origins(int(view.shape[1]), tile, overlap))
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
            empty_contrast=empty_contrast, count=count, part=part)
        passes.append((to_image_coordinates(c, v, view.shape[:2]), s))
    if part is not None:
        return np.zeros((0, 1, 2), np.float32), np.zeros(0, np.float32), HALF_PIXEL
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


def _as_image(image: Any, where: str) -> Any:
    """``image`` as (H, W) or (H, W, C), checked as the file readers check what they read,
    for arrays handed to the API: more or fewer than 2-3 axes and NaN/inf values are one
    :class:`ImageReadError`; a 3-D numpy array whose last axis is longer than 4, such as
    (3, H, W) in ImageJ's/OME's or torch's order, is taken as channels first and moved
    last, with a warning (:func:`~cellsynth.io.images.guess_axes`, the rule the
    readers use for files that name no axes). A lazy array (zarr, dask, a section reader)
    is taken as it is: its values are read tile by tile."""
    if len(image.shape) not in (2, 3):
        raise ImageReadError(f"{where}: expected an image of shape (H, W) or (H, W, C), "
                             f"got shape {tuple(image.shape)}")
    if not isinstance(image, np.ndarray):
        return image
    if image.ndim == 3 and guess_axes(image.shape) == "cyx":
        warnings.warn(f"{where}: shape {image.shape} taken as channels first (C, H, W); "
                      f"predicting it as {image.shape[1:] + image.shape[:1]}", stacklevel=3)
        image = channels_last(image, "CYX", where=where)
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        bad = int((~np.isfinite(image)).sum())
        raise ImageReadError(f"{where}: image contains {bad} NaN/inf values (fill them with "
                             f"the background's value, e.g. numpy.nan_to_num(image, nan=...))")
    return image


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


