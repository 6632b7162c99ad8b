"""Evaluating folders: predicted label maps against ground truth, matched by id (file stem).

Ground truth is a dataset folder (images/ + labels/, in any of the names datasets read), a
folder of label maps, or Cellpose's x + x_masks; QuPath GeoJSON outlines are drawn at their
partner's size, and where they were annotated in regions only those are scored. Per-image
matching is :func:`cellsynth.evaluate.matching.matching`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.errors import DatasetError, ImageReadError
from cellsynth.evaluate.matching import (
    THRESHOLDS,
    Matching,
    _check_thresholds,
    aggregate,
    matching,
)
from cellsynth.io.datasets import IMAGE_FOLDERS, LABEL_FOLDERS, load_dataset, sub_folder
from cellsynth.io.geojson import read_geojson_regions
from cellsynth.io.images import GEOJSON_SUFFIX, read_labels

__all__ = ["DatasetEvaluation", "evaluate_folders"]


@dataclass(frozen=True)
class DatasetEvaluation:
    """Result of :func:`evaluate_folders`: the dataset-level total and each image's result."""

    gt_root: Path
    pred_root: Path
    total: Matching
    per_image: Mapping[str, Matching] = field(default_factory=dict)
    unscored: tuple[str, ...] = ()  # predicted ids without ground truth, not scored

    def to_json(self) -> dict[str, Any]:
        """The stable JSON report: dataset-level metrics plus ``per_image`` (keyed by id)."""
        report = self.total.to_dict()
        report["unscored"] = list(self.unscored)
        report["per_image"] = {}
        for image_id, result in self.per_image.items():
            entry = result.to_dict()
            del entry["thresholds"], entry["n_images"]
            report["per_image"][image_id] = entry
        return report


def _label_files(root: Path, role: str) -> tuple[Path, dict[str, Path], str]:
    """Label files by id of a dataset folder, a ``labels/``-only folder or a folder of labels,
    and which outline of a QuPath cell their .geojson files draw (a dataset folder's
    meta.json says; "cell" elsewhere)."""
    if sub_folder(root, IMAGE_FOLDERS) is not None:
        dataset = load_dataset(root)
        label_dir = sub_folder(root, LABEL_FOLDERS) or root / "labels"
        missing = [s.image_path.name for s in dataset if s.label_path is None]
        if missing:
            raise DatasetError(f"{root}: {len(missing)} {role} image(s) without a label file in "
                               f"{label_dir}, e.g. {missing[0]}")
        return (label_dir, {s.id: s.label_path for s in dataset}, dataset.geojson_geometry)
    root = sub_folder(root, LABEL_FOLDERS) or root
    beside = sub_folder(root.parent, LABEL_FOLDERS)
    if (root.name.lower() in IMAGE_FOLDERS + ("overlays",) and beside is not None
            and beside != root):
        # (intensities read as label maps would score, wrongly, as a few huge cells)
        raise DatasetError(f"{root}: the {role} {root.name}, not their labels; give "
                           f"{root.parent} or {beside}")
    dataset = load_dataset(root)
    if any(s.label_path is not None for s in dataset):  # Cellpose's x.png + x_masks.png
        missing = [s.image_path.name for s in dataset if s.label_path is None]
        if missing:
            raise DatasetError(f"{root}: {len(missing)} {role} image(s) without a mask file, "
                               f"e.g. {missing[0]}")
        return root, {s.id: s.label_path for s in dataset}, dataset.geojson_geometry
    return root, {s.id: s.image_path for s in dataset}, "cell"  # the files are label maps


def _read_pair(gt: Path, pred: Path, geometry: tuple[str, str] = ("cell", "cell")
               ) -> tuple[np.ndarray, np.ndarray]:
    """Both label maps; QuPath outlines (.geojson) on one side are drawn at the other's size
    (two GeoJSON files give no size: a one-line error), with ``geometry`` (ground truth's,
    prediction's) choosing which outline of a QuPath cell."""
    if gt.suffix.lower() == GEOJSON_SUFFIX and pred.suffix.lower() != GEOJSON_SUFFIX:
        pred_labels = read_labels(pred)
        return (read_labels(gt, shape=pred_labels.shape, geojson_geometry=geometry[0]),
                pred_labels)
    gt_labels = read_labels(gt, geojson_geometry=geometry[0])
    return gt_labels, read_labels(pred, shape=gt_labels.shape, geojson_geometry=geometry[1])


def evaluate_folders(gt: str | os.PathLike, pred: str | os.PathLike, *,
                     thresholds: Sequence[float] = THRESHOLDS,
                     progress: bool = False) -> DatasetEvaluation:
    """Evaluate predicted label maps against ground truth, matched by id (file stem).

    Parameters
    ----------
    gt : path
        Ground-truth dataset folder (``images/`` + ``labels/``), or a folder of label images.
    pred : path
        Predicted dataset folder, a folder with only ``labels/``, or a folder of label images.
    thresholds : sequence of float in (0, 1]
    progress : bool
        Show a progress bar on stderr.

    Raises
    ------
    DatasetError
        A folder is missing or empty, a ground-truth id has no prediction, or no predicted
        id has ground truth (predicted ids without ground truth are otherwise left unscored
        and named in ``unscored``).
    ImageReadError
        A label file is unreadable, not an integer image, or its size differs from its partner.
    """
    thresholds = _check_thresholds(thresholds)
    from cellsynth.io.export import is_prediction_folder

    if Path(gt).is_dir() and is_prediction_folder(Path(gt)):
        # (precision and recall change places, and the table reads as plausible)
        warnings.warn(f"{gt}: the ground truth given is a cellsynth predict output; are "
                      f"--gt and --pred swapped?", stacklevel=2)
    gt_root, gt_files, gt_geometry = _label_files(Path(gt), "ground-truth")
    pred_root, pred_files, pred_geometry = _label_files(Path(pred), "predicted")
    # a whole folder predicted and a few of its images annotated: those are scored, the rest
    # named in `unscored` (a prediction is no mistake; a missing one is, below)
    only_pred = sorted(set(pred_files) - set(gt_files))
    if only_pred and not set(gt_files) & set(pred_files):
        raise DatasetError(f"{gt_root}: no ground truth for any predicted id of {pred_root} "
                           f"(e.g. {pred_files[only_pred[0]].name}); images and labels are "
                           "matched by file name")
    only_gt = sorted(set(gt_files) - set(pred_files))
    if only_gt:
        raise DatasetError(f"{pred_root}: no prediction for {len(only_gt)} ground-truth id(s) of "
                           f"{gt_root}, e.g. {gt_files[only_gt[0]].name}")
    ids = sorted(gt_files)
    if progress:
        from tqdm import tqdm

        ids = tqdm(ids, desc="evaluate", unit="image", leave=False)
    per_image: dict[str, Matching] = {}
    for image_id in ids:
        gt_labels, pred_labels = _read_pair(gt_files[image_id], pred_files[image_id],
                                            (gt_geometry, pred_geometry))
        if gt_labels.shape != pred_labels.shape:
            raise ImageReadError(
                f"{pred_files[image_id]}: size {pred_labels.shape[0]}x{pred_labels.shape[1]} "
                f"does not match ground truth {gt_files[image_id]} "
                f"({gt_labels.shape[0]}x{gt_labels.shape[1]})"
            )
        # ground truth outlined in regions of the image (QuPath): scored inside them only,
        # where every cell was outlined (a right detection elsewhere is no false positive)
        boxes = (read_geojson_regions(gt_files[image_id], gt_labels.shape)
                 if gt_files[image_id].suffix.lower() == GEOJSON_SUFFIX else [])
        per_image[image_id] = replace(aggregate(  # (one image, however many regions)
            matching(gt_labels[box], pred_labels[box], thresholds)
            for box in boxes or [(slice(None), slice(None))]), n_images=1)
    return DatasetEvaluation(gt_root=gt_root, pred_root=pred_root,
                             total=aggregate(per_image.values()), per_image=per_image,
                             unscored=tuple(only_pred))

