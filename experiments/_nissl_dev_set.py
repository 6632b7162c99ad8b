"""The Nissl development set that the outline experiments share (half_pixel.py, tta_dev.py,
threshold_dev.py), and the recipe's predictions on it (stain_filter_dev.py,
boundary_snap_dev.py, nms_dev.py).

The 2 *training* images of nissl_rat_sscx that seed 0 of the k = 2 experiment did not
annotate, and the command-line options both scripts take. The test split is not opened.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from cellsynth.io.datasets import load_dataset

DEV = ("SLD_0000404_20x_01_Region_1_t2", "SLD_0000406_20x_01_Region_1_t1")
DETECTORS = ("real_k2_s0", "simulated_k0_s0", "simulated_k2_s0", "refined_k2_s0")
# the recipe's annotated images (configs/nissl-k2.yaml real.select.train)
ANNOTATED = ("SLD_0000406_20x_01_Region_1_t2", "SLD_0000563_20x_03_Region_1_t2")


def arguments(doc: str, extra=None) -> argparse.Namespace:
    """The shared options; ``extra(parser)`` adds a script's own."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    if extra is not None:
        extra(ap)
    ap.add_argument("--run", default="runs/exp-nissl-k2", help="experiment output folder")
    ap.add_argument("--data", default="../shared/data/nissl_rat_sscx/train")
    ap.add_argument("--detectors", nargs="+", default=list(DETECTORS))
    ap.add_argument("--json", default=None)
    return ap.parse_args()


def detector_path(run: str, name: str) -> Path:
    """A detector of the experiment ``run`` by name, or any train run folder by path."""
    return Path(name) if Path(name).is_dir() else Path(run) / "detectors" / name


def dev_items(data: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, labels) of the development images."""
    return [(s.read_image(), s.read_labels())
            for s in load_dataset(data, require_labels=True) if s.id in DEV]


def split_items(args: argparse.Namespace) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict]:
    """(image, labels) of ``args.split`` ("dev": the development images; "test": the test
    split at ``args.test``, only after the development images decided) and the summary a
    script's JSON starts from."""
    if args.split == "dev":
        items = dev_items(args.data)
        return items, summary(items)
    items = [(s.read_image(), s.read_labels())
             for s in load_dataset(args.test, require_labels=True)]
    return items, {"test_images": len(items),
                   "cells": int(sum(len(np.unique(g)) - 1 for _, g in items)),
                   "detectors": {}}


def summary(items: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    return {"dev_images": list(DEV),
            "cells": int(sum(len(np.unique(g)) - 1 for _, g in items)), "detectors": {}}


def write(path: str | None, out: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(out, indent=1) + "\n")


def recipe_faint_cut(data: str):
    """The recipe's faint cut (q = 5), measured on its 2 annotated images as `predict` does."""
    from cellsynth.io.normalize import normalize
    from cellsynth.segment.faint import FAINT_PERCENTILE, calibrate_faint

    return calibrate_faint([(normalize(s.read_image(), where=None), s.read_labels())
                            for s in load_dataset(data, require_labels=True)
                            if s.id in ANNOTATED], FAINT_PERCENTILE)


RECIPE_NMS = 0.5  # configs/nissl-k2.yaml predict.nms


def recipe_detector(run: str | Path):
    """A recipe run's detector as the recipe predicts with it: its soup, NMS 0.5."""
    from cellsynth.segment.predict import load_detector, set_nms

    detector = load_detector(Path(run) / "soup" / "best.pt", say_precision=False)
    set_nms(detector, RECIPE_NMS)
    return detector


def recipe_run_predictions(run: str | Path, items, cut, cache: Path) -> list[np.ndarray]:
    """:func:`recipe_predictions` of a recipe run's detector (:func:`recipe_detector`)."""
    return recipe_predictions(recipe_detector(run), Path(run) / "soup", items, cut, cache,
                              tag=f"_{RECIPE_NMS:g}")


def recipe_predictions(detector, path: Path, items, cut, cache: Path,
                       tag: str = "") -> list[np.ndarray]:
    """Labels of each development image as the recipe predicts (8-view TTA, ``cut``), kept in
    ``cache`` under the detector's path and ``tag`` (a setting the caller changed)."""
    from cellsynth.segment.predict import predict_image

    cache.mkdir(exist_ok=True)
    key = hashlib.md5(str(path.resolve()).encode()).hexdigest()[:8]
    preds = []
    for k, (image, _) in enumerate(items):
        f = cache / f"{key}{tag}_{k}.npy"
        if not f.exists():
            np.save(f, np.asarray(predict_image(detector, image, tta=True, faint=cut)))
        preds.append(np.load(f))
    return preds


def scores(preds, items) -> dict:
    """F1@0.5, F1avg, F1@0.75, precision and recall at 0.5, detections, all images pooled."""
    from cellsynth.evaluate.matching import aggregate, matching

    m = aggregate(matching(gt, p) for p, (_, gt) in zip(preds, items))
    return {"f1_50": float(m.f1[0]), "f1_avg": float(np.mean(m.f1)),
            "f1_75": float(m.f1[5]), "precision_50": float(m.precision[0]),
            "recall_50": float(m.recall[0]), "detected": int(m.n_pred)}


def tile_matchings(items, preds, tiles: int = 2) -> list:
    """Matchings of ``preds`` against the development images in ``tiles`` x ``tiles`` units
    (whole-image matching, each cell in the unit of its centroid): the units the paired
    bootstrap (``_paired.compare``) resamples."""
    from cellsynth.evaluate.matching import matching_tiles

    return [unit for (_, gt), pred in zip(items, preds)
            for unit in matching_tiles(gt, pred, tiles)]
