"""``cellsynth demo``: the whole pipeline on data that ships with scikit-image, in minutes.

The unlabeled "real" images are tiles of scikit-image's bundled immunohistochemistry image
(``skimage.data.immunohistochemistry``: hematoxylin nuclei, DAB membranes); the simulator's
H&E preset at 0.8 um/px stands in for the nuclei. No labels exist, so the report shows
samples, losses, realism and predictions, but no accuracy.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cellsynth.errors import OutputExistsError
from cellsynth.io.images import write_image
from cellsynth.pipeline import layout
from cellsynth.pipeline.config import (
    PipelineConfig,
    PredictOptions,
    RealData,
    RealismOptions,
    SimulateOptions,
)
from cellsynth.pipeline.run import run
from cellsynth.refine.config import RefineConfig
from cellsynth.segment.trainer import TrainConfig

__all__ = ["demo_config", "write_demo_data", "demo"]


def write_demo_data(folder: Path, *, tile: int = 256) -> Path:
    """Cut the bundled IHC image into tiles (plus their mirror images) as unlabeled data."""
    from skimage.data import immunohistochemistry

    image = immunohistochemistry()
    folder.mkdir(parents=True, exist_ok=True)
    k = 0
    for y in range(0, image.shape[0] - tile + 1, tile // 2):
        for x in range(0, image.shape[1] - tile + 1, tile // 2):
            write_image(folder / f"ihc_{k:02d}.png", np.ascontiguousarray(
                image[y:y + tile, x:x + tile]))
            k += 1
    return folder


def demo_config(data: Path) -> PipelineConfig:
    """A small but complete configuration (about 5 minutes on 2 CPU cores)."""
    return PipelineConfig(
        name="demo",
        seed=0,
        simulate=SimulateOptions(preset="he", n=48, size=128, pixel_size_um=0.8),
        real=RealData(unlabeled=str(data)),
        refine=RefineConfig(steps=150, crop=64, batch=4, sample_every=50, checkpoint_every=50,
                            log_every=5),
        pretrain=TrainConfig(steps=120, crop=128, batch=4, lr=2e-3, val_every=10**6,
                             checkpoint_every=40),
        predict=PredictOptions(tile=256, overlap=64),
        realism=RealismOptions(n_crops=128, epochs=4, folds=3),
    )


def demo(out: str | os.PathLike, *, force: bool = False, progress: bool = True) -> Path:
    """Run the demo into ``out`` (continuing an interrupted demo there); return the report."""
    import shutil

    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not (out / layout.STATE).exists():
        if not force:
            raise OutputExistsError(f"{out}: folder exists and is not a cellsynth run "
                                    f"(use --force to replace it)")
        shutil.rmtree(out)
    data = write_demo_data(out / "data" / "ihc")
    run(demo_config(data), out, progress=progress)
    return out / layout.REPORT
