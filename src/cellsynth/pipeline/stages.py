"""The stages of ``cellsynth run``: what each reads, what config it depends on, how it runs.

Every stage writes one folder inside the run (names in :mod:`cellsynth.pipeline.layout`);
see :mod:`cellsynth.pipeline.run` for skipping and resuming. Every stage takes its seed from
the run's ``seed``. Real images given at another pixel size than the simulation's are rescaled
once (stage ``real``) and predictions are rescaled back to the original images (both in
:mod:`cellsynth.pipeline.staging`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cellsynth.config import to_dict
from cellsynth.io.datasets import file_id, load_dataset
from cellsynth.pipeline import layout
from cellsynth.pipeline.run import Parts
from cellsynth.pipeline.staging import (
    SECTION_WINDOW,
    SECTION_WINDOWS,
    _real_scale,
    _rescale_real,
    _sim_config,
    _staged_roles,
    real_folder,
    real_samples,
)

if TYPE_CHECKING:
    from cellsynth.pipeline.config import PipelineConfig

# (SECTION_WINDOW and SECTION_WINDOWS live in staging.py; still importable from here)
__all__ = ["Stage", "plan", "write_pseudo_labels", "SECTION_WINDOW", "SECTION_WINDOWS"]


@dataclass(frozen=True)
class Stage:
    name: str                                        # also its folder in the run
    inputs: tuple[str, ...]                          # stages whose output it reads
    # the parts of the config it depends on, by name (``finetune``, ``seed``): the fingerprint
    # hashes their values in this order; the names say which one changed
    config: Callable[[PipelineConfig], dict[str, Any]]
    run: Callable[..., dict[str, Any]]               # (config, out, resume=, progress=)
    reads: tuple[str, ...] = ()                      # real-data roles whose contents it reads
    # stages that earlier versions hashed among its inputs though it never reads them: kept
    # out of its fingerprint, and a run folder that recorded them is not redone for them
    unread: tuple[str, ...] = ()


def _fit_simulator(config: PipelineConfig, out: Path, **kw: Any) -> dict[str, Any]:
    from cellsynth.io.files import staged_output_dir
    from cellsynth.simulate.fit import median_diameter_um
    from cellsynth.simulate.fit_report import write_fit

    folder = getattr(config.real, config.simulate.fit_role)
    with staged_output_dir(out / layout.FIT, force=True) as root:
        result = write_fit(folder, _sim_config(config), root / layout.FITTED,
                           pixel_size_um=config.real.pixel_size_um, seed=config.seed,
                           spread=config.simulate.fit_spread,
                           stains=config.simulate.fit_stains, channel=config.real.channel)
        (root / layout.FIT_TABLE).write_text(result["table"] + "\n")
    fit = result["fit"]
    return {"fitted_from": folder,
            "median_diameter_um": round(median_diameter_um(fit.config), 3),
            "base_median_diameter_um": round(median_diameter_um(fit.base), 3)}


def _simulate(target: str, count: Callable[[PipelineConfig], int], seed_offset: int = 0
              ) -> Callable[..., dict[str, Any]]:
    """A stage writing ``count(config)`` simulated images to ``target``; the validation
    images draw another stream (``seed_offset``, as in experiments)."""
    def run(config: PipelineConfig, out: Path, **kw: Any) -> dict[str, Any]:
        from cellsynth.simulate import write_simulation

        s = config.simulate
        return write_simulation(_sim_config(config, out), n=count(config), size=s.size,
                                seed=config.seed + seed_offset, out=out / target,
                                workers=s.workers, force=True, progress=kw["progress"])
    return run


def _synthetic_val(config: PipelineConfig) -> str | None:
    """The held-out synthetic images that validate pretraining: when real.val is unset, or
    always with ``pretrain_val: synthetic``."""
    if config.simulate.n_val < 1 or (config.real.val and config.pretrain_val == "real"):
        return None
    return layout.REFINED_VAL if config.refines else layout.SIMULATE_VAL


def _fit_refiner(config: PipelineConfig, out: Path, **kw: Any) -> dict[str, Any]:
    from cellsynth import refine

    resume = kw["resume"] and layout.has_checkpoint(out / layout.REFINER)
    refine_config = replace(config.refine, seed=config.seed)
    if config.real.pixel_size_um is not None and _real_scale(config) == 1.0:
        refine_config = replace(refine_config, real_pixel_size_um=config.real.pixel_size_um)
    return refine.fit(refine_config, out / layout.SIMULATE,
                      real_folder(config, out, "unlabeled"), out / layout.REFINER,
                      resume=resume, force=not resume, device=config.device,
                      progress=kw["progress"])


def _choose_refiner(config: PipelineConfig, out: Path, **kw: Any) -> dict[str, Any]:
    from cellsynth.pipeline.choose_refiner import choose_refiner

    choice = choose_refiner(out / layout.REFINER, out / layout.SIMULATE,
                            real_folder(config, out, "val"), out / layout.REFINER_CHOICE,
                            config.choose_refiner, seed=config.seed, device=config.device,
                            precision=config.refine.precision, progress=kw["progress"])
    return {"chosen_step": choice["chosen_step"], "refiner_helped": choice["refiner_helped"],
            "simulation_val_f1": choice["simulation_val_f1"],
            "val_f1": {c["step"]: c["val_f1"] for c in choice["candidates"]}}


def _generate(source: str, target: str) -> Callable[..., dict[str, Any]]:
    def run(config: PipelineConfig, out: Path, **kw: Any) -> dict[str, Any]:
        from cellsynth import refine
        from cellsynth.pipeline.choose_refiner import chosen_snapshot

        refiner = (chosen_snapshot(out / layout.REFINER_CHOICE, out / layout.REFINER)
                   if config.choose_refiner.enabled else out / layout.REFINER)
        summary = refine.refine_dataset(refiner, out / source, out / target,
                                        device=config.device, force=True, seed=config.seed,
                                        precision=config.refine.precision,
                                        progress=kw["progress"])
        return {k: v for k, v in summary.items() if isinstance(v, (int, float, str))}
    return run


def detector_config(config: PipelineConfig, out: Path, base: Any, **changes: Any) -> Any:
    """A stage's TrainConfig: ``base`` on the run's device, with ``changes``, at the run's
    working pixel size (the simulation's) unless ``base`` names one. The checkpoint then
    records it, so `cellsynth predict` resamples images stated at another pixel size (without
    it, every pixel size was ignored); the run's own folders are at it already."""
    if base.pixel_size_um is None:
        changes.setdefault("pixel_size_um", _sim_config(config, out).pixel_size_um)
    if config.real.pixel_size_um is not None and _real_scale(config) == 1.0:
        # the real folders are read as they are: at the pixel size the config states (a
        # rescaled copy's meta.json states the working one), not at a file's, nor warned
        # about as stating none
        changes.setdefault("data_pixel_size_um", config.real.pixel_size_um)
    if config.real.channel is not None:  # (RUN/real holds it alone; predict picks it)
        changes.setdefault("source_channel", config.real.channel)
    return replace(base, device=config.device, **changes)


def _train(name: str, data: Callable[[PipelineConfig, Path], list[str]],
           init: str | None) -> Callable[..., dict[str, Any]]:
    def run(config: PipelineConfig, out: Path, **kw: Any) -> dict[str, Any]:
        from cellsynth.segment.trainer import train

        resume = kw["resume"] and layout.has_checkpoint(out / name)
        train_config = detector_config(config, out, getattr(config, name), seed=config.seed)
        replay = _synthetic(config, out) if init and train_config.replay > 0 else None
        val, synthetic_val = real_folder(config, out, "val"), _synthetic_val(config)
        if name == layout.PRETRAIN and synthetic_val:
            val = str(out / synthetic_val)
        return train(train_config, data(config, out), out / name,
                     init=out / init if init else None, val=val,
                     resume=resume, force=not resume, progress=kw["progress"], replay=replay)
    return run


def write_pseudo_labels(teacher: Path, images: list[Path], folder: Path, *, meta: dict,
                        device: str = "cpu", pixel_size_um: float | None = None,
                        progress: bool = False) -> dict[str, Any]:
    """A labeled dataset folder of ``images`` (copied; any annotations they have are never
    read) with the labels ``teacher`` predicts for them: 8-view test-time augmentation at the
    threshold it chose. ``meta`` goes to its meta.json (the pixel size, where it came from).
    Returns the image ids and the number of cells labelled."""
    from cellsynth.io.files import staged_output_dir, write_json
    from cellsynth.segment.folders import predict_folder

    with staged_output_dir(folder, force=True) as root:
        (root / "images").mkdir()
        for path in images:
            shutil.copyfile(path, root / "images" / path.name)
        write_json(root / layout.META, {**meta, "pseudo_labels_by": str(teacher)})
        summary = predict_folder(teacher, root, root / "predicted", device=device, force=True,
                                 tta=True, pixel_size_um=pixel_size_um, progress=progress)
        (root / "predicted" / layout.LABELS).rename(root / layout.LABELS)
        shutil.rmtree(root / "predicted")
    return {"images": [file_id(path) for path in images],
            "cells": summary["n_instances"]}


def _pseudo_label(config: PipelineConfig, out: Path, **kw: Any) -> dict[str, Any]:
    from cellsynth.errors import ConfigError
    from cellsynth.io.sections import reads_lazily

    folder = real_folder(config, out, "unlabeled")
    annotated = {s.id for s in real_samples(config, "train")}
    candidates = [s for s in load_dataset(folder) if s.id not in annotated]
    # whole sections (unrescaled, so not staged as windows) would be labelled and trained on
    # whole: left out
    usable = [s for s in candidates if not reads_lazily(s.image_path)]
    if not usable:
        raise ConfigError(f"selftrain: {folder} has no image to pseudo-label besides the "
                          f"annotated ones" + (" (whole sections are left out: give "
                                               "real.pixel_size_um to use their windows)"
                                               if candidates else ""))
    chosen = usable[:config.selftrain.max_images]
    working_px = _sim_config(config).pixel_size_um if _real_scale(config) != 1.0 else (
        config.real.pixel_size_um)
    meta = {"pixel_size_um": working_px} if working_px else {}
    summary = write_pseudo_labels(out / _fine_tuned(config), [s.image_path for s in chosen],
                                  out / layout.PSEUDO, meta={**meta, "images_of": folder},
                                  device=config.device, pixel_size_um=working_px,
                                  progress=kw["progress"])
    return {"images": len(chosen), "cells": summary["cells"],
            "left_out": len(candidates) - len(chosen)}


def _selftrain(config: PipelineConfig, out: Path, **kw: Any) -> dict[str, Any]:
    from cellsynth.segment.trainer import train

    resume = kw["resume"] and layout.has_checkpoint(out / layout.SELFTRAIN)
    train_config = detector_config(config, out, config.finetune,
                                   replay=config.selftrain.pseudo, seed=config.seed)
    return train(train_config, [real_folder(config, out, "train")], out / layout.SELFTRAIN,
                 init=out / _fine_tuned(config), val=real_folder(config, out, "val"),
                 resume=resume, force=not resume, progress=kw["progress"],
                 replay=[out / layout.PSEUDO])


def _finetune_runs(config: PipelineConfig, out: Path, **kw: Any) -> dict[str, Any]:
    """soup > 1: fine-tunings 1, 2, ... (seed + 1000 r), as the finetune stage trains run 0;
    on a CPU side by side, each with its share of the cores (cellsynth.segment.parallel)."""
    from cellsynth.segment.parallel import parallel_plan, train_side_by_side
    from cellsynth.segment.trainer import train

    jobs = {}
    train_data, val_data = real_folder(config, out, "train"), real_folder(config, out, "val")
    for r in range(1, config.soup):
        folder = out / layout.FINETUNE_RUNS / f"r{r}"
        member = detector_config(config, out, config.finetune, seed=config.seed + 1000 * r)
        # an interrupted stage's runs, and a finished run's when `soup` grows, resume (the
        # finished ones to their end at once): kept where they started from this pretrained
        # detector with these options
        resume = layout.has_checkpoint(folder) and (
            kw["resume"] or _same_fine_tuning(folder, member, out / layout.PRETRAIN,
                                              [train_data, val_data]))
        jobs[f"r{r}"] = dict(
            config=member, data=[train_data], out=folder, init=out / layout.PRETRAIN,
            val=val_data, resume=resume, force=not resume,
            replay=_synthetic(config, out) if config.finetune.replay > 0 else None)
    processes, threads = parallel_plan(len(jobs), config.device)
    if processes > 1:
        summaries = train_side_by_side(jobs, processes=processes, threads=threads,
                                       progress=kw["progress"])
    else:
        summaries = {name: train(**job, progress=kw["progress"]) for name, job in jobs.items()}
    return {name: {k: v for k, v in summaries[name].items() if k != "run"} for name in jobs}


def _same_fine_tuning(folder: Path, config: Any, init: Path, data: list[str | None]) -> bool:
    """Whether the run in ``folder`` fine-tuned the detector of run folder ``init`` (the same
    bytes) with ``config``, after the last change to the files of the ``data`` folders."""
    from cellsynth.config import from_dict, load_yaml
    from cellsynth.errors import CellsynthError
    from cellsynth.segment.predict import read_detector_checkpoint
    from cellsynth.segment.trainer import TrainConfig, file_sha256

    try:
        info = json.loads((folder / layout.RUN_INFO).read_text())
        same_options = from_dict(TrainConfig, load_yaml(folder / layout.CONFIG),
                                 where=str(folder)) == config
        checkpoint = read_detector_checkpoint(init, needed_by="soup")[0]
        trained = (folder / layout.LAST).stat().st_mtime
        changed = max((f.stat().st_mtime for d in data if d for f in Path(d).rglob("*")
                       if f.is_file()), default=0.0)
    except (OSError, ValueError, CellsynthError):
        return False
    return (same_options and changed < trained
            and info.get("init_sha256") == file_sha256(checkpoint))


def _soup(config: PipelineConfig, out: Path, **kw: Any) -> dict[str, Any]:
    from cellsynth.segment.soup import soup

    runs = [out / layout.FINETUNE] + [out / layout.FINETUNE_RUNS / f"r{r}"
                                      for r in range(1, config.soup)]
    val = real_folder(config, out, "val")
    summary = soup(runs, out / layout.SOUP, val=val, force=True, device=config.device)
    return {k: v for k, v in summary.items() if isinstance(v, (int, float, str, type(None)))}


def _fine_tuned(config: PipelineConfig) -> str:
    """The fine-tuned detector: the soup of the fine-tunings, or the one fine-tuning."""
    return layout.SOUP if config.soup > 1 else layout.FINETUNE


def _synthetic(config: PipelineConfig, out: Path) -> list[str]:
    return [str(out / (layout.REFINED if config.refines else layout.SIMULATE))]


def _model(config: PipelineConfig) -> str:
    """The detector that predicts: the last one trained."""
    if not config.real.train:
        return layout.PRETRAIN
    return layout.SELFTRAIN if config.selftrain.enabled else _fine_tuned(config)


def _predict_images(config: PipelineConfig) -> str:
    return "test" if config.real.test else "unlabeled"


def _faint_images(config: PipelineConfig) -> tuple[str, ...]:
    """The annotated role the faint cut is measured on (real.val, else real.train), if any."""
    if config.predict.faint_percentile <= 0:
        return ()
    return ("val",) if config.real.val else ("train",)


def _count_threshold(config: PipelineConfig, out: Path, **kw: Any) -> dict[str, Any]:
    from cellsynth.io.files import write_json
    from cellsynth.segment.calibrate import count_threshold

    result = count_threshold(out / _model(config), real_folder(config, out, "unlabeled"),
                             _sim_config(config, out), device=config.device,
                             progress=kw["progress"])
    (out / layout.COUNT_THRESHOLD).mkdir(exist_ok=True)
    write_json(out / layout.COUNT_THRESHOLD / layout.THRESHOLD, result)
    return result


def _predict(config: PipelineConfig, out: Path, **kw: Any) -> dict[str, Any]:
    """The detector's labels of the test images (else the unlabeled ones), from the user's
    own files: where the run works on rescaled copies or on one channel alone, the detector
    (which records the working pixel size and that channel) resamples each image and takes
    the channel itself, and draws its cells back at the image's own pixels. A whole section
    is so predicted whole, window by window (its copy in RUN/real is a few windows), and
    labels, overlays, cell tables and meta.json name the user's files at their pixels."""
    from cellsynth.segment.folders import predict_folder

    role = _predict_images(config)
    thresh = None
    if config.predict.count_threshold:
        thresh = json.loads((out / layout.COUNT_THRESHOLD / layout.THRESHOLD).read_text()
                            )["score_thresh"]
    faint = _faint_images(config)
    return predict_folder(out / _model(config), getattr(config.real, role),
                          out / layout.PREDICT, tile=config.predict.tile, score_thresh=thresh,
                          pixel_size_um=config.real.pixel_size_um,
                          **({"faint_from": real_folder(config, out, faint[0]),
                              "faint_percentile": config.predict.faint_percentile}
                             if faint else {}),
                          overlap=config.predict.overlap, tta=config.predict.tta,
                          device=config.device, force=True,
                          progress=kw["progress"],
                          empty_contrast=config.predict.empty_contrast,
                          precision=config.predict.precision,
                          nms_thresh=config.predict.nms)


def _evaluate(config: PipelineConfig, out: Path, **kw: Any) -> dict[str, Any]:
    from cellsynth.evaluate import evaluate_folders
    from cellsynth.io.files import write_json

    result = evaluate_folders(config.real.test, out / layout.PREDICT).to_json()
    (out / layout.EVALUATE).mkdir(exist_ok=True)
    write_json(out / layout.EVALUATE / layout.METRICS, result)
    return {"f1_50": result["f1"][0], "f1_avg": result["f1_avg"], "ap_50": result["ap"][0],
            "pq_50": result["pq"][0]}


def _images(folder: str | Path, limit: int = 32) -> list[np.ndarray]:
    """Up to ``limit`` images of a folder; a whole section gives windows of its tissue."""
    from cellsynth.io.sections import image_or_windows

    found: list[np.ndarray] = []
    for s in load_dataset(folder):
        if len(found) >= limit:
            break
        found.extend(image_or_windows(s.image_path))
    return found[:limit]


def _realism(config: PipelineConfig, out: Path, **kw: Any) -> dict[str, Any]:
    from cellsynth.evaluate import realism
    from cellsynth.io.files import write_json

    r = config.realism
    real = _images(real_folder(config, out, "test" if config.real.test else "unlabeled"))
    results = {}
    for name in (layout.SIMULATE, layout.REFINED):
        result = realism(real, _images(out / name), n_crops=r.n_crops, epochs=r.epochs,
                         folds=r.folds, seed=config.seed, progress=kw["progress"])
        results[f"{name}_vs_real"] = result.to_dict()
    (out / layout.REALISM).mkdir(exist_ok=True)
    write_json(out / layout.REALISM / layout.REALISM_METRICS, results)
    return {k: {"c2st": v["c2st"]["accuracy"], "swd_x1e3": v["swd"]["mean_x1e3"]}
            for k, v in results.items()}


def _report(config: PipelineConfig, out: Path, **kw: Any) -> dict[str, Any]:
    from cellsynth.pipeline.report import write_report

    return {"report": str(write_report(out))}


def plan(config: PipelineConfig) -> list[Stage]:
    """The stages this config needs, in order."""
    real = config.real
    # (n_val only sizes the validation images: changing it keeps the training simulation;
    # workers, which change nothing drawn, are hashed but a change of them alone keeps a
    # recorded fingerprint: run._SAME_OUTPUT)
    sim = lambda c: Parts(simulate={k: v for k, v in to_dict(c.simulate).items()  # noqa: E731
                                    if k != "n_val"}, seed=c.seed)
    stages = []
    if config.simulate.fit_from:
        stages.append(Stage(layout.FIT, (), lambda c: {"simulate": to_dict(c.simulate),
                                                       "real.pixel_size_um": c.real.pixel_size_um,
                                                       "seed": c.seed}
                            | ({"real.channel": c.real.channel}
                               if c.real.channel is not None else {}),
                            _fit_simulator, reads=(config.simulate.fit_role,)))
    fitted = (layout.FIT,) if config.simulate.fit_from else ()
    stages.append(Stage(layout.SIMULATE, fitted, sim,
                        _simulate(layout.SIMULATE, lambda c: c.simulate.n)))
    synthetic_val = _synthetic_val(config)
    if synthetic_val:
        stages.append(Stage(layout.SIMULATE_VAL, fitted,
                            lambda c: sim(c) | {"simulate.n_val": c.simulate.n_val},
                            _simulate(layout.SIMULATE_VAL, lambda c: c.simulate.n_val, 10_000)))
    rescaled = _real_scale(config) != 1.0
    staged = _staged_roles(config)  # rescaled, or narrowed by real.select
    if staged:
        # (the select is keyed only when set, so runs from before it keep their fingerprint)
        key = lambda c: ({"real.pixel_size_um": c.real.pixel_size_um,  # noqa: E731
                          "simulation": sim(c)}
                         | ({"real.select": {r: [str(i) for i in v]
                                             for r, v in sorted(c.real.select.items())}}
                            if c.real.select else {})
                         | ({"real.channel": c.real.channel}
                            if c.real.channel is not None else {}))
        stages.append(Stage(layout.REAL, (), key, _rescale_real, reads=staged))

    def data_inputs(*roles: str) -> tuple[str, ...]:
        """RUN/real if the stage reads it: rescaled images (every stage, as before select
        existed), or a selection of the roles it reads."""
        return (layout.REAL,) if rescaled or set(roles) & set(staged) else ()

    if config.refines:
        stages.append(Stage(layout.REFINER, (layout.SIMULATE,) + data_inputs("unlabeled"),
                            lambda c: {"refine": to_dict(c.refine),
                                       "real.pixel_size_um": c.real.pixel_size_um, "seed": c.seed},
                            _fit_refiner, reads=("unlabeled",)))
        choose = config.choose_refiner.enabled
        if choose:
            stages.append(Stage(layout.REFINER_CHOICE,
                                (layout.REFINER, layout.SIMULATE) + data_inputs("val"),
                                lambda c: {"choose_refiner": to_dict(c.choose_refiner),
                                           "seed": c.seed},
                                _choose_refiner, reads=("val",)))
        stages.append(Stage(layout.REFINED, (layout.REFINER, layout.SIMULATE)
                            + ((layout.REFINER_CHOICE,) if choose else ()),
                            lambda c: {"seed": c.seed}, _generate(layout.SIMULATE, layout.REFINED)))
        if synthetic_val:  # the same refiner (choose_refiner needs real.val: never here)
            stages.append(Stage(layout.REFINED_VAL, (layout.REFINER, layout.SIMULATE_VAL),
                                lambda c: {"seed": c.seed},
                                _generate(layout.SIMULATE_VAL, layout.REFINED_VAL)))
    synthetic = layout.REFINED if config.refines else layout.SIMULATE
    val = ("val",) if real.val else ()
    # (pretrain_val joins the key only where it is not the default: old runs keep theirs)
    # Validated on held-out synthetic images, pretraining reads no real image: RUN/real (the
    # annotated images chosen, rescaled) is no input of it then, so that choosing other
    # annotated images, or another dataset of the same stain (run --reuse), keeps it. Except
    # with real.channel, which its checkpoint records for predict (RUN/real's key holds it).
    real_val = data_inputs("val")
    unread = real_val if synthetic_val and config.real.channel is None else ()
    stages.append(Stage(layout.PRETRAIN, (synthetic,) + ((synthetic_val,) if synthetic_val
                                                         else ())
                        + tuple(d for d in real_val if d not in unread),
                        lambda c: {"pretrain": to_dict(c.pretrain), "seed": c.seed}
                        | ({"pretrain_val": c.pretrain_val} if c.pretrain_val != "real" else {}),
                        _train(layout.PRETRAIN, _synthetic, None),
                        reads=() if synthetic_val else val, unread=unread))
    if real.train:
        replayed = (synthetic,) if config.finetune.replay > 0 else ()
        stages.append(Stage(layout.FINETUNE, (layout.PRETRAIN,) + replayed
                            + data_inputs("train", "val"),
                            lambda c: {"finetune": to_dict(c.finetune), "seed": c.seed},
                            _train(layout.FINETUNE,
                                   lambda c, out: [real_folder(c, out, "train")],
                                   layout.PRETRAIN), reads=("train",) + val))
        if config.soup > 1:
            stages.append(Stage(layout.FINETUNE_RUNS, (layout.PRETRAIN,) + replayed
                                + data_inputs("train", "val"),
                                lambda c: {"finetune": to_dict(c.finetune), "seed": c.seed,
                                           "soup": c.soup},
                                _finetune_runs, reads=("train",) + val))
            stages.append(Stage(layout.SOUP, (layout.FINETUNE, layout.FINETUNE_RUNS)
                                + data_inputs("val"), lambda c: {"soup": c.soup}, _soup, reads=val))
        tuned = _fine_tuned(config)
        if config.selftrain.enabled:
            stages.append(Stage(layout.PSEUDO, (tuned,) + data_inputs("unlabeled"),
                                lambda c: {"selftrain": to_dict(c.selftrain),
                                           "real.select.train": c.real.select.get("train")},
                                _pseudo_label, reads=("unlabeled",)))
            stages.append(Stage(layout.SELFTRAIN, (tuned, layout.PSEUDO)
                                + data_inputs("train", "val"),
                                lambda c: {"finetune": to_dict(c.finetune),
                                           "selftrain": to_dict(c.selftrain), "seed": c.seed},
                                _selftrain, reads=("train",) + val))
    counted = ()
    if config.predict.count_threshold:  # (config checks: needs real.unlabeled)
        stages.append(Stage(layout.COUNT_THRESHOLD, (_model(config),) + fitted
                            + data_inputs("unlabeled"), lambda c: {"seed": c.seed},
                            _count_threshold, reads=("unlabeled",)))
        counted = (layout.COUNT_THRESHOLD,)
    if real.test or real.unlabeled:
        stages.append(Stage(layout.PREDICT, (_model(config),) + counted
                            + data_inputs(_predict_images(config), *_faint_images(config)),
                            lambda c: {"predict": to_dict(c.predict)}, _predict,
                            reads=(_predict_images(config),) + _faint_images(config)))
    if real.test:
        stages.append(Stage(layout.EVALUATE, (layout.PREDICT,), lambda c: {}, _evaluate,
                            reads=("test",)))
    if config.refines and config.realism.enabled:
        stages.append(Stage(layout.REALISM, (layout.SIMULATE, layout.REFINED),
                            lambda c: {"realism": to_dict(c.realism), "seed": c.seed},
                            _realism,
                            reads=("test" if real.test else "unlabeled",)))
    upstream = tuple(s.name for s in stages)
    stages.append(Stage(layout.REPORT_STAGE, upstream, lambda c: {}, _report))
    return stages
