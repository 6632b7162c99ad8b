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


# per-machine measurements (the bf16 timing) go to a folder of this test process, never to
# the user's cache
if "CELLSYNTH_CACHE_DIR" not in os.environ or os.environ.get("_CELLSYNTH_SUITE_CACHE"):
    import atexit
    import shutil
    import tempfile

    os.environ.update(CELLSYNTH_CACHE_DIR=tempfile.mkdtemp(prefix="cellsynth-cache-"),
                      _CELLSYNTH_SUITE_CACHE="1")
    atexit.register(shutil.rmtree, os.environ["CELLSYNTH_CACHE_DIR"], ignore_errors=True)


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


@pytest.fixture(scope="session")
def trained_detector(tmp_path_factory) -> tuple[Path, Path]:
    """(run folder, simulated dataset) of a tiny CPN that finds some cells: 30 steps on 4
    simulated 96 px fluorescence images (once per test process). It records no pixel size:
    trained on a copy of them whose meta.json states none (tests of a detector that records
    one give it one, e.g. test_predict._recorded)."""
    import json
    import shutil

    from cellsynth.segment.data import Augment
    from cellsynth.segment.trainer import TrainConfig, train
    from cellsynth.simulate import preset, write_simulation

    root = tmp_path_factory.mktemp("detector")
    sim = root / "sim"
    write_simulation(preset("fluo"), n=4, size=96, seed=0, out=sim, progress=False)
    plain = shutil.copytree(sim, root / "plain")
    meta = json.loads((plain / "meta.json").read_text())
    (plain / "meta.json").write_text(json.dumps({k: v for k, v in meta.items()
                                                 if k != "pixel_size_um"}))
    config = TrainConfig(steps=30, lr=4e-3, warmup=1, crop=64, batch=2, samples=32, order=4,
                         refinement_iterations=1, val_every=1000, precision="fp32",
                         augment=Augment(enabled=False))
    train(config, [plain], root / "run", progress=False)
    return root / "run", sim


class ScriptedThreads:
    """A ThreadGovernor whose count follows ``plan``: {steps done: threads from then on}."""

    plan: dict[int, int] = {}

    def __init__(self, *args, **kwargs):
        self.threads, self.done = self.plan[0], 0

    def tick(self) -> int:
        self.threads = self.plan.get(self.done, self.threads)
        self.done += 1
        return self.threads
