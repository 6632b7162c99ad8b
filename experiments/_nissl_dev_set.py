"""The Nissl development set that the outline experiments share (half_pixel.py, tta_dev.py,
threshold_dev.py).

The 2 *training* images of nissl_rat_sscx that seed 0 of the k = 2 experiment did not
annotate, and the command-line options both scripts take. The test split is not opened.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cellsynth.io.datasets import load_dataset

DEV = ("SLD_0000404_20x_01_Region_1_t2", "SLD_0000406_20x_01_Region_1_t1")
DETECTORS = ("real_k2_s0", "simulated_k0_s0", "simulated_k2_s0", "refined_k2_s0")


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


def summary(items: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    return {"dev_images": list(DEV),
            "cells": int(sum(len(np.unique(g)) - 1 for _, g in items)), "detectors": {}}


def write(path: str | None, out: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(out, indent=1) + "\n")
