"""Shared fixtures: small datasets written on the fly (tests never read ../shared/data)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cellsynth.hardware import usable_cores
from cellsynth.io.images import write_image, write_labels

# One thread count for the whole suite, so that a run and its resume (compared to 1e-5) never
# differ by the load-dependent thread policy; tests of the policy clear this themselves. With
# pytest-xdist (the default, `-n auto` in pyproject.toml) the cores are shared among the
# workers: two workers of two threads each on two cores run 10-35x slower (shared/notes).
# A worker inherits the controller's environment, so a value the suite set is set again here;
# OpenMP's own pool is sized too, before torch is imported.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if os.environ.get("_CELLSYNTH_SUITE_THREADS") or "CELLSYNTH_THREADS" not in os.environ:
    _threads = str(max(1, min(2, usable_cores() // _WORKERS)))
    os.environ.update(CELLSYNTH_THREADS=_threads, OMP_NUM_THREADS=_threads,
                      _CELLSYNTH_SUITE_THREADS="1")


def make_dataset(root: Path, n: int = 3, size: int = 32, *, rgb: bool = False,
                 labels: bool = True, seed: int = 0) -> Path:
    """Write ``n`` random images with blob labels in the dataset layout; return ``root``."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    if labels:
        (root / "labels").mkdir()
    for i in range(n):
        shape = (size, size, 3) if rgb else (size, size)
        write_image(root / "images" / f"img{i}.png", rng.integers(0, 255, shape, dtype=np.uint8))
        if labels:
            lab = np.zeros((size, size), np.uint16)
            lab[2:8, 2:8] = 1
            lab[12:20, 10:22] = 2
            lab[24:30, 4:9] = 5
            write_labels(root / "labels" / f"img{i}.tif", lab)
    return root


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "ds")
