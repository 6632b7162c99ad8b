"""``cellsynth demo``: what two annotated images are worth, with and without synthetic data.

The package ships six fluorescence nuclei images (CC0, ``cellsynth/data/demo_fluo``): two
annotated, two held out for scoring, two unlabeled. The demo is a one-seed experiment
(:mod:`cellsynth.pipeline.experiment`) on them, sized for minutes on 2 CPU cores:

    real_k2         a detector trained on the 2 annotated images alone (the baseline)
    sim_only        trained on the simulation only (zero labels)
    refined_only    trained on refined simulated images (zero labels; the refiner saw the
                    unlabeled real images, never their labels)
    sim_ft_k2       sim_only, fine-tuned on the 2 annotated images
    refined_ft_k2   refined_only, fine-tuned on the 2 annotated images

then measures how realistic simulated and refined images are, and writes ``report.html``:
a table and bar chart of F1 on the held-out images, overlays coloured by true positive /
false positive / missed, per-image counts, realism with a reading, and next steps.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from cellsynth.errors import OutputExistsError
from cellsynth.pipeline import layout
from cellsynth.pipeline.config import RealismOptions, SimulateOptions
from cellsynth.pipeline.experiment import ExperimentConfig, Setting, run_experiment
from cellsynth.refine.config import RefineConfig
from cellsynth.segment.trainer import TrainConfig

__all__ = ["demo_config", "write_demo_data", "demo", "REALISM"]

# the demo's C2ST budget; 2 folds hold out 2 of the 4 real images each
REALISM = RealismOptions(n_crops=96, epochs=4, folds=2)

def write_demo_data(folder: Path) -> dict[str, Path]:
    """Copy the shipped images into ``folder``: annotated/, heldout/ and unlabeled/ (the
    refiner's pool: every non-held-out image, labels left out)."""
    from cellsynth.data import DEMO_FLUO

    folders = {}
    for part in ("annotated", "heldout"):
        target = folder / part
        if not target.exists():
            shutil.copytree(DEMO_FLUO / part, target)
        folders[part] = target
    pool = folder / "unlabeled" / "images"
    pool.mkdir(parents=True, exist_ok=True)
    for part in ("annotated", "unlabeled"):
        for image in sorted((DEMO_FLUO / part / "images").glob("*.png")):
            if not (pool / image.name).exists():
                shutil.copyfile(image, pool / image.name)
    folders["unlabeled"] = folder / "unlabeled"
    return folders


def demo_config(data: dict[str, Path]) -> ExperimentConfig:
    """The demo's experiment (minutes on 2 CPU cores). Every detector gets the same 240
    steps, whether from scratch or fine-tuning a pretrained one."""
    detector = dict(model="tiny_u22", steps=240, crop=96, batch=4, checkpoint_every=80,
                    val_every=80)
    return ExperimentConfig(
        name="cellsynth demo: 2 annotated fluorescence images",
        train=str(data["annotated"]), test=str(data["heldout"]),
        unlabeled=str(data["unlabeled"]), seeds=(0,),
        settings=(Setting("real_k2", "real", None), Setting("sim_only", "simulated", 0),
                  Setting("refined_only", "refined", 0),
                  Setting("sim_ft_k2", "simulated", None),
                  Setting("refined_ft_k2", "refined", None)),
        compare=(("sim_ft_k2", "real_k2"), ("refined_ft_k2", "real_k2"),
                 ("refined_only", "sim_only")),
        simulate=SimulateOptions(preset="fluo", n=64, size=192, workers=2), n_val=8,
        # the source gives no pixel size: the images are taken at the simulation's 0.5 um/px
        # (the fluo preset varies its magnification per image around that)
        refine=RefineConfig(steps=240, crop=64, batch=4, sample_every=80,
                            checkpoint_every=80, log_every=5, real_pixel_size_um=0.5),
        pretrain=TrainConfig(lr=2e-3, warmup=10, **detector),
        finetune=TrainConfig(lr=1e-3, warmup=5, **detector),
        supervised=TrainConfig(lr=2e-3, warmup=10, **detector),
        tiles=2, bootstrap=2000)


def _realism(config: ExperimentConfig, out: Path, progress: bool) -> None:
    """C2ST and SWD of simulated and refined images against the unlabeled real ones."""
    from cellsynth.evaluate import realism
    from cellsynth.io.datasets import load_dataset
    from cellsynth.io.files import write_json

    path = out / layout.REALISM / layout.REALISM_METRICS
    if path.exists():
        return
    real = [s.read_image() for s in load_dataset(config.unlabeled)]
    seed = config.seeds[0]
    results = {}
    for name in ("sim", "refined"):
        images = [s.read_image() for s in list(load_dataset(out / name / f"s{seed}"))[:32]]
        results[f"{name}_vs_real"] = realism(real, images, n_crops=REALISM.n_crops,
                                             epochs=REALISM.epochs, folds=REALISM.folds,
                                             seed=seed, progress=progress).to_dict()
    path.parent.mkdir(exist_ok=True)
    write_json(path, results)


def demo(out: str | os.PathLike, *, force: bool = False, progress: bool = True) -> Path:
    """Run the demo into ``out`` (continuing an interrupted demo there); return the report."""
    from cellsynth.pipeline.experiment_report import write_experiment_report

    out = Path(out)
    if out.is_dir() and any(out.iterdir()) and not (out / layout.STATE).exists():
        if not force:
            raise OutputExistsError(f"{out}: folder exists and is not a cellsynth run "
                                    f"(use --force to replace it)")
        shutil.rmtree(out)
    config = demo_config(write_demo_data(out / "data"))
    if not (out / layout.CONFIG).exists():  # (an experiment folder now, with its data/ in
        from cellsynth.config import save_yaml  # it: run_experiment refuses other folders)

        save_yaml(out / layout.CONFIG, config)
    log = print if progress else (lambda _: None)
    run_experiment(config, out, log=log)
    log("[realism] simulated and refined vs real")
    _realism(config, out, progress)
    return write_experiment_report(out)
