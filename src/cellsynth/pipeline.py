"""``cellsynth run``: simulate -> fit refiner -> generate -> pretrain -> fine-tune -> predict
-> evaluate -> realism -> report, each stage in its own folder of the run.

A stage's *fingerprint* hashes its config and the fingerprints of the stages it reads, and
is stored in ``RUN/state.json`` when the stage starts and again (``done``) when it ends.
Re-running skips stages that are done with an unchanged fingerprint, resumes a training
stage that was interrupted (same fingerprint, checkpoint present) and redoes a stage whose
config or inputs changed, together with everything downstream of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellsynth.config import from_dict, load_yaml, save_yaml, to_dict
from cellsynth.errors import ConfigError
from cellsynth.io.datasets import load_dataset
from cellsynth.io.files import write_json
from cellsynth.refine.config import RefineConfig
from cellsynth.segment.trainer import TrainConfig

__all__ = ["SimulateStage", "RealData", "PipelineConfig", "load_pipeline_config", "run"]


@dataclass(frozen=True)
class SimulateStage:
    preset: str = "merker"
    n: int = 200
    size: int = 256
    seed: int = 0
    workers: int = 2
    pixel_size_um: float | None = None   # default: the preset's
    color: str | None = None             # default: the preset's
    overrides: dict = field(default_factory=dict)  # preset parameters, as in --config

    def __post_init__(self) -> None:
        if self.n < 1 or self.size < 16 or self.workers < 1:
            raise ValueError("simulate: n >= 1, size >= 16 and workers >= 1 required")


@dataclass(frozen=True)
class RealData:
    """Where the real images are. Only ``unlabeled`` is needed for refinement."""

    unlabeled: str | None = None   # real images, labels ignored (refiner's target domain)
    train: str | None = None       # a few labeled real images: fine-tuning
    val: str | None = None         # labeled images for choosing the score threshold
    test: str | None = None        # labeled held-out images: predicted and evaluated
    pixel_size_um: float | None = None  # of the real images, if not in their meta.json


@dataclass(frozen=True)
class RealismStage:
    enabled: bool = True
    n_crops: int = 256
    epochs: int = 8
    folds: int = 5


@dataclass(frozen=True)
class PredictStage:
    tile: int | None = None
    overlap: int = 96


@dataclass(frozen=True)
class PipelineConfig:
    name: str = "run"
    device: str = "cpu"
    simulate: SimulateStage = field(default_factory=SimulateStage)
    real: RealData = field(default_factory=RealData)
    refine: RefineConfig = field(default_factory=RefineConfig)
    pretrain: TrainConfig = field(default_factory=TrainConfig)
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(steps=300, lr=3e-4))
    predict: PredictStage = field(default_factory=PredictStage)
    realism: RealismStage = field(default_factory=RealismStage)


def load_pipeline_config(path: str | os.PathLike) -> PipelineConfig:
    """Read and validate a pipeline YAML; paths are resolved against the YAML's folder."""
    path = Path(path)
    data = load_yaml(path)
    if not data:
        raise ConfigError(f"{path}: empty pipeline config; start from one of configs/*.yaml "
                          f"(at least simulate: preset and real: folders)")
    config = from_dict(PipelineConfig, data, where=str(path))
    real = {k: (str((path.parent / v).resolve()) if isinstance(v, str) else v)
            for k, v in to_dict(config.real).items()}
    config = from_dict(PipelineConfig, {**to_dict(config), "real": real}, where=str(path))
    _check_inputs(config)
    return config


def _check_inputs(config: PipelineConfig) -> None:
    """Fail before any work starts if a named folder is missing or malformed."""
    from cellsynth.simulate import simulation_config

    simulation_config(config.simulate.preset, overrides=config.simulate.overrides or None,
                      pixel_size_um=config.simulate.pixel_size_um, color=config.simulate.color)
    for role in ("unlabeled", "train", "val", "test"):
        folder = getattr(config.real, role)
        if folder is not None:
            load_dataset(folder, require_labels=role != "unlabeled")
    if config.real.train and not config.real.unlabeled:
        raise ConfigError("real.train is set but real.unlabeled is not: the refiner needs "
                          "unlabeled real images (the train images may be reused)")


def _fingerprint(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class _State:
    """RUN/state.json: per stage its fingerprint and whether it finished."""

    def __init__(self, root: Path):
        self.path = root / "state.json"
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {}

    def status(self, stage: str, fingerprint: str) -> str:
        entry = self.data.get(stage)
        if entry is None or entry["fingerprint"] != fingerprint:
            return "new"
        return "done" if entry["done"] else "interrupted"

    def mark(self, stage: str, fingerprint: str, done: bool, **info: Any) -> None:
        self.data[stage] = {"fingerprint": fingerprint, "done": done, **info}
        write_json(self.path, self.data)


def run(config: PipelineConfig, out: str | os.PathLike, *, progress: bool = True,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or continue) the whole pipeline into ``out``; returns the stages' summaries."""
    from cellsynth import stages

    out = Path(out)
    _check_inputs(config)
    out.mkdir(parents=True, exist_ok=True)
    save_yaml(out / "config.yaml", config)
    state = _State(out)
    plan = stages.plan(config)
    fingerprints: dict[str, str] = {}
    summaries: dict[str, Any] = {}
    for stage in plan:
        fingerprint = _fingerprint(stage.name, stage.config(config),
                                   [fingerprints[d] for d in stage.inputs])
        fingerprints[stage.name] = fingerprint
        status = state.status(stage.name, fingerprint)
        if status == "done":
            log(f"[{stage.name}] up to date, skipped")
            summaries[stage.name] = state.data[stage.name].get("summary", {})
            continue
        log(f"[{stage.name}] {'resuming' if status == 'interrupted' else 'running'}")
        state.mark(stage.name, fingerprint, done=False)
        started = time.perf_counter()
        summary = stage.run(config, out, resume=status == "interrupted", progress=progress)
        state.mark(stage.name, fingerprint, done=True, summary=summary,
                   seconds=round(time.perf_counter() - started, 1))
        summaries[stage.name] = summary
    return summaries
