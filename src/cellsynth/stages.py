"""The stages of ``cellsynth run``: what each reads, what config it depends on, how it runs.

Every stage writes one folder inside the run; see :mod:`cellsynth.pipeline` for skipping
and resuming. Real images given at another pixel size than the simulation's are rescaled
once (stage ``real``) and predictions are rescaled back to the original images.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cellsynth.config import to_dict
from cellsynth.io.datasets import load_dataset

if TYPE_CHECKING:
    from cellsynth.pipeline import PipelineConfig

__all__ = ["Stage", "plan"]


@dataclass(frozen=True)
class Stage:
    name: str
    inputs: tuple[str, ...]
    config: Callable[[PipelineConfig], Any]          # the part of the config it depends on
    run: Callable[..., dict[str, Any]]               # (config, out, resume=, progress=)


def _sim_config(config: PipelineConfig):
    from cellsynth.simulate import simulation_config

    s = config.simulate
    return simulation_config(s.preset, overrides=s.overrides or None,
                             pixel_size_um=s.pixel_size_um, color=s.color)


def _simulate(config: PipelineConfig, out: Path, **kw: Any) -> dict[str, Any]:
    from cellsynth.simulate import write_simulation

    s = config.simulate
    return write_simulation(_sim_config(config), n=s.n, size=s.size, seed=s.seed,
                            out=out / "simulate", workers=s.workers, force=True,
                            progress=kw["progress"])


def _real_scale(config: PipelineConfig) -> float:
    """Factor from the real images' pixels to the working (simulation) pixels."""
    if config.real.pixel_size_um is None:
        return 1.0
    return config.real.pixel_size_um / _sim_config(config).pixel_size_um


def real_folder(config: PipelineConfig, out: Path, role: str) -> str | None:
    """The folder a stage should read for a real-data role (rescaled copy if needed)."""
    folder = getattr(config.real, role)
    if folder is None or abs(_real_scale(config) - 1.0) < 1e-3:
        return folder
    return str(out / "real" / role)


def _rescale_real(config: PipelineConfig, out: Path, **kw: Any) -> dict[str, Any]:
    from skimage.transform import rescale

    from cellsynth.io.files import staged_output_dir, write_json
    from cellsynth.io.images import write_image, write_labels

    factor = _real_scale(config)
    with staged_output_dir(out / "real", force=True) as root:
        for role in ("unlabeled", "train", "val", "test"):
            folder = getattr(config.real, role)
            if folder is None:
                continue
            (root / role / "images").mkdir(parents=True)
            dataset = load_dataset(folder)
            for sample in dataset:
                image = sample.read_image()
                scaled = rescale(image, factor, order=1, anti_aliasing=factor < 1,
                                 channel_axis=-1 if image.ndim == 3 else None,
                                 preserve_range=True).round().astype(image.dtype)
                write_image(root / role / "images" / f"{sample.id}.png", scaled)
                if sample.label_path is not None:
                    (root / role / "labels").mkdir(exist_ok=True)
                    labels = rescale(sample.read_labels(), factor, order=0, anti_aliasing=False,
                                     preserve_range=True).astype(np.uint32)
                    write_labels(root / role / "labels" / f"{sample.id}.tif", labels)
            write_json(root / role / "meta.json", {
                "source": folder, "pixel_size_um": _sim_config(config).pixel_size_um,
                "rescaled_by": factor})
    return {"factor": factor}


def _fit_refiner(config: PipelineConfig, out: Path, **kw: Any) -> dict[str, Any]:
    from cellsynth import refine

    resume = kw["resume"] and (out / "refiner" / "last.pt").exists()
    refine_config = config.refine
    if config.real.pixel_size_um is not None and _real_scale(config) == 1.0:
        refine_config = replace(refine_config, real_pixel_size_um=config.real.pixel_size_um)
    return refine.fit(refine_config, out / "simulate", real_folder(config, out, "unlabeled"),
                      out / "refiner", resume=resume, force=not resume, device=config.device,
                      progress=kw["progress"])


def _generate(config: PipelineConfig, out: Path, **kw: Any) -> dict[str, Any]:
    from cellsynth import refine

    summary = refine.refine_dataset(out / "refiner", out / "simulate", out / "refined",
                                    device=config.device, force=True, progress=kw["progress"])
    return {k: v for k, v in summary.items() if isinstance(v, (int, float, str))}


def _train(name: str, data: Callable[[PipelineConfig, Path], list[str]],
           init: str | None) -> Callable[..., dict[str, Any]]:
    def run(config: PipelineConfig, out: Path, **kw: Any) -> dict[str, Any]:
        from cellsynth.segment.trainer import train

        resume = kw["resume"] and (out / name / "last.pt").exists()
        train_config = replace(getattr(config, name), device=config.device)
        return train(train_config, data(config, out), out / name,
                     init=out / init if init else None, val=real_folder(config, out, "val"),
                     resume=resume, force=not resume, progress=kw["progress"])
    return run


def _synthetic(config: PipelineConfig, out: Path) -> list[str]:
    return [str(out / ("refined" if config.real.unlabeled else "simulate"))]


def _model(config: PipelineConfig) -> str:
    return "finetune" if config.real.train else "pretrain"


def _predict_images(config: PipelineConfig) -> str:
    return "test" if config.real.test else "unlabeled"


def _predict(config: PipelineConfig, out: Path, **kw: Any) -> dict[str, Any]:
    from skimage.transform import resize

    from cellsynth.io.images import read_image, write_image, write_labels
    from cellsynth.io.images import read_labels as read_label_file
    from cellsynth.segment.predict import predict_folder
    from cellsynth.viz import contour_overlay

    role = _predict_images(config)
    summary = predict_folder(out / _model(config), real_folder(config, out, role),
                             out / "predict", tile=config.predict.tile,
                             overlap=config.predict.overlap, device=config.device, force=True,
                             progress=kw["progress"])
    if abs(_real_scale(config) - 1.0) >= 1e-3:  # back to the original images' pixels
        for sample in load_dataset(getattr(config.real, role)):
            path = out / "predict" / "labels" / f"{sample.id}.tif"
            image = read_image(sample.image_path)
            labels = resize(read_label_file(path), image.shape[:2], order=0,
                            anti_aliasing=False, preserve_range=True).astype(np.uint32)
            write_labels(path, labels)
            write_image(out / "predict" / "overlays" / f"{sample.id}.png",
                        contour_overlay(image, labels))
    return summary


def _evaluate(config: PipelineConfig, out: Path, **kw: Any) -> dict[str, Any]:
    from cellsynth.evaluate import evaluate_folders
    from cellsynth.io.files import write_json

    result = evaluate_folders(config.real.test, out / "predict").to_json()
    (out / "evaluate").mkdir(exist_ok=True)
    write_json(out / "evaluate" / "metrics.json", result)
    return {"f1_50": result["f1"][0], "f1_avg": result["f1_avg"], "ap_50": result["ap"][0],
            "pq_50": result["pq"][0]}


def _images(folder: str | Path, limit: int = 32) -> list[np.ndarray]:
    return [s.read_image() for s in list(load_dataset(folder))[:limit]]


def _realism(config: PipelineConfig, out: Path, **kw: Any) -> dict[str, Any]:
    from cellsynth.evaluate import realism
    from cellsynth.io.files import write_json

    r = config.realism
    real = _images(real_folder(config, out, "test" if config.real.test else "unlabeled"))
    results = {}
    for name in ("simulate", "refined"):
        result = realism(real, _images(out / name), n_crops=r.n_crops, epochs=r.epochs,
                         folds=r.folds, seed=0, progress=kw["progress"])
        results[f"{name}_vs_real"] = result.to_dict()
    (out / "realism").mkdir(exist_ok=True)
    write_json(out / "realism" / "realism.json", results)
    return {k: {"c2st": v["c2st"]["accuracy"], "swd_x1e3": v["swd"]["mean_x1e3"]}
            for k, v in results.items()}


def _report(config: PipelineConfig, out: Path, **kw: Any) -> dict[str, Any]:
    from cellsynth.evaluate.report import write_report

    return {"report": str(write_report(out))}


def plan(config: PipelineConfig) -> list[Stage]:
    """The stages this config needs, in order."""
    real = config.real
    sim = lambda c: to_dict(c.simulate)  # noqa: E731
    stages = [Stage("simulate", (), sim, _simulate)]
    if abs(_real_scale(config) - 1.0) >= 1e-3:
        stages.append(Stage("real", (), lambda c: [to_dict(c.real), sim(c)], _rescale_real))
    data_inputs = ("real",) if stages[-1].name == "real" else ()
    if real.unlabeled:
        stages += [
            Stage("refiner", ("simulate",) + data_inputs,
                  lambda c: [to_dict(c.refine), c.real.unlabeled, c.real.pixel_size_um],
                  _fit_refiner),
            Stage("refined", ("refiner", "simulate"), lambda c: [], _generate),
        ]
    synthetic = "refined" if real.unlabeled else "simulate"
    stages.append(Stage("pretrain", (synthetic,) + data_inputs,
                        lambda c: [to_dict(c.pretrain), c.real.val],
                        _train("pretrain", _synthetic, None)))
    if real.train:
        stages.append(Stage("finetune", ("pretrain",) + data_inputs,
                            lambda c: [to_dict(c.finetune), c.real.train, c.real.val],
                            _train("finetune", lambda c, out: [real_folder(c, out, "train")],
                                   "pretrain")))
    if real.test or real.unlabeled:
        stages.append(Stage("predict", (_model(config),) + data_inputs,
                            lambda c: [to_dict(c.predict), getattr(c.real, _predict_images(c))],
                            _predict))
    if real.test:
        stages.append(Stage("evaluate", ("predict",), lambda c: [c.real.test], _evaluate))
    if real.unlabeled and config.realism.enabled:
        stages.append(Stage("realism", ("simulate", "refined"),
                            lambda c: [to_dict(c.realism), c.real.test or c.real.unlabeled],
                            _realism))
    upstream = tuple(s.name for s in stages)
    stages.append(Stage("report", upstream, lambda c: [], _report))
    return stages
