"""Tiny refiner settings and data folders for fast tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cellsynth.io.datasets import write_dataset_meta
from cellsynth.io.images import write_image
from cellsynth.refine.config import RefineConfig
from tests.conftest import make_dataset

TINY = dict(crop=32, batch=2, width=6, blocks=1, spade_hidden=4, d_width=4, d_layers=2,
            d_scales=2, buffer_size=8, precision="fp32", log_every=1, sample_every=2,
            checkpoint_every=2, steps=4)


@pytest.fixture
def tiny() -> RefineConfig:
    return RefineConfig(**TINY)


@pytest.fixture
def sim_dir(tmp_path: Path) -> Path:
    root = make_dataset(tmp_path / "sim", n=3, size=32, rgb=True)
    write_dataset_meta(root, {"pixel_size_um": 0.5, "preset": "he", "stage": "simulate"})
    return root


@pytest.fixture
def real_dir(tmp_path: Path) -> Path:
    """Two unlabeled RGB images of different sizes in a plain folder; pixels 100 + 154 u^3
    (u uniform): after normalisation mostly dark, mean ~0.25 and std ~0.28 in [0, 1]."""
    rng = np.random.default_rng(1)
    root = tmp_path / "real"
    root.mkdir()
    for name, shape in (("a.png", (40, 48, 3)), ("b.png", (64, 36, 3))):
        write_image(root / name, (100 + 154 * rng.random(shape) ** 3).astype(np.uint8))
    return root
