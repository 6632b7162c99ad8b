"""The config of ``cellsynth experiment`` (its settings, what they may change, and the
checks made before any work), and parts of it run apart (``--seeds``, ``--settings``):
split from :mod:`cellsynth.pipeline.experiment`, which re-exports every name."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from cellsynth.config import ADDED, errors_name, from_dict, load_yaml, override
from cellsynth.errors import ConfigError
from cellsynth.io.datasets import check_label_sizes, load_dataset
from cellsynth.pipeline.config import (
    SimulateOptions,
    check_held_out,
    inherit_architecture,
    read_overrides_file,
)
from cellsynth.pipeline.run import fingerprint
from cellsynth.refine.config import RefineConfig
from cellsynth.segment.trainer import TrainConfig, network_differences

_SYNTHETIC = ("simulated", "refined", "mixed")
_REFINED = ("refined", "mixed")  # settings that need a refiner


def _changed(base: TrainConfig, changes: dict[str, Any]) -> TrainConfig:
    """A setting's detector options: ``base`` itself without changes."""
    return override(base, changes) if changes else base


def _suffix(changes: dict[str, Any]) -> str:
    """Folder suffix of a variant: its changed options ("" without changes); nested options
    ({augment: {blur: 1.5}}) by their dotted path (``_augment.blur-1.5``)."""
    def flat(items: dict[str, Any], prefix: str = ""):
        for k, v in sorted(items.items()):
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            else:
                yield f"{prefix}{k}", v

    return "".join(f"_{k}-{str(v).lower()}" for k, v in flat(changes))


@dataclass(frozen=True)
class Setting:
    name: str
    # mixed: the simulated and the refined images together (the same cells twice, in both
    # looks), thresholds from the refined validation images
    data: Literal["real", "simulated", "refined", "mixed"]  # what its detectors train on
    k: int | None = 0    # annotated real images; None: all training images
    # refined only: changes to the experiment's refine: options for this setting (e.g.
    # {class_map: true}); settings with the same changes share their refiner
    refine: dict[str, Any] = field(default_factory=dict)
    # predict the test split with test-time augmentation (8 flips/transposes vote); the
    # detector is the one of the same setting without it, so a pair measures TTA alone
    tta: bool = False
    # the box-NMS threshold of the test predictions (`cellsynth predict --nms`; None: the
    # detector's, celldetection's 0.2); the detector is the one of the same setting without
    # it, so a pair measures the NMS alone (0.5 kept packed Nissl somata apart, +0.008 F1@0.5)
    nms: float | None = field(default=None, metadata=ADDED)
    # the faint cut of the test predictions (`cellsynth predict --faint-from`, the recipe's
    # predict: faint_percentile): detections paler than this percentile of the annotated
    # cells of the seed's k drawn images are dropped (None: none dropped); the detector is
    # the one of the same setting without it (q = 5 gave +0.011 F1@0.5 on Nissl)
    faint_percentile: float | None = field(default=None, metadata=ADDED)
    # changes to the experiment's supervised / pretrain / finetune options for this
    # setting's detectors (e.g. {model: tiny_u22}); settings with the same changes share them
    detector: dict[str, Any] = field(default_factory=dict)
    # changes to the fine-tuning options only (e.g. {steps: 1200}): the zero-label detector it
    # starts from is the plain one, shared with the settings without them
    finetune: dict[str, Any] = field(default_factory=dict, metadata=ADDED)
    # self-training: > 0 fine-tunes the setting's detector once more on its k images plus the
    # other training images labelled by that detector (annotations unused), this fraction of
    # the batches from the pseudo-labelled ones
    pseudo: float = field(default=0.0, metadata=ADDED)
    # distillation: with pseudo > 0, the images not drawn are labelled by this other
    # setting's detector (same seed, same k, so the same images are drawn and it never saw
    # their annotations) instead of by this setting's own, e.g. a slim teacher for a
    # tiny_u22 student that predicts ~4x faster on a CPU without bf16
    teacher: str | None = field(default=None, metadata=ADDED)
    # a second (third, ...) training run of the setting's detector: N > 0 trains it with
    # seed + 1000 N instead of the seed (other random crops and augmentations) on the same
    # data: a fine-tuning from the same pretrained detector on the same drawn images, a
    # zero-label detector on the same synthetic (refined) images, a real-data detector on
    # the same drawn images. Paired with the setting itself it measures how much another
    # training run moves the scores: the floor a lever must clear
    replicate: int = field(default=0, metadata=ADDED)
    # training runs per seed: run r > 0 is the detector `replicate: r` trains (shared with
    # such a setting). The setting's scores are the mean over its runs, and the bootstrap of
    # a comparison resamples the runs as well as the test units, so a difference has to
    # clear the noise of training again, not only that of the test images. (A fine-tuning's
    # runs share one pretrained detector, a refined setting's one refiner: their own
    # training noise is not in it.)
    runs: int = field(default=1, metadata=ADDED)
    # a fine-tuning setting with runs >= 2: its detector per seed is the average of the
    # weights of its runs (cellsynth.segment.soup), threshold chosen on its validation
    # images; the setting scores that one detector (no training noise of its own to resample)
    soup: bool = field(default=False, metadata=ADDED)

    @property
    def variant(self) -> str:
        """Suffix of the refiner, refined data and detector folders of a refine variant."""
        return _suffix(self.refine)

    @property
    def ft_variant(self) -> str:
        """Suffix of its fine-tuning-only changes, marked "ft-": {steps: 1200} of detector:
        (both stages) and of finetune: are different detectors."""
        return self.run_variant(self.replicate)

    def run_variant(self, run: int) -> str:
        """:attr:`ft_variant` of training run ``run`` (0: the setting's own seed)."""
        return _suffix({f"ft-{key}": v for key, v in self.finetune.items()}
                       | ({"rep": run} if run else {}))

    @property
    def replicates(self) -> tuple[int, ...]:
        """The replicate number of each of its training runs."""
        return (self.replicate,) if self.runs == 1 else tuple(range(self.runs))

    def __post_init__(self) -> None:
        if self.data not in ("real", *_SYNTHETIC):
            raise ValueError(f"setting {self.name}: data must be real, simulated, refined "
                             f"or mixed")
        if self.k is not None and self.k < 0:
            raise ValueError(f"setting {self.name}: k must be >= 0 or null (all)")
        if self.data == "real" and self.k == 0:
            raise ValueError(f"setting {self.name}: a real-data setting needs k >= 1")
        if self.refine and self.data not in _REFINED:
            raise ValueError(f"setting {self.name}: refine: changes need data: refined or "
                             f"mixed")
        if self.finetune and (self.data == "real" or self.k == 0):
            raise ValueError(f"setting {self.name}: finetune: changes need synthetic "
                             f"pretraining and k >= 1 or null (a setting that fine-tunes)")
        if not 0.0 <= self.pseudo < 1.0:
            raise ValueError(f"setting {self.name}: pseudo must be in [0, 1), got "
                             f"{self.pseudo}")
        if self.pseudo and (self.k is None or self.k == 0):
            raise ValueError(f"setting {self.name}: pseudo needs k >= 1 annotated images and "
                             f"unannotated ones to label (k: null leaves none)")
        if self.replicate < 0:
            raise ValueError(f"setting {self.name}: replicate must be >= 0, got "
                             f"{self.replicate}")
        if self.runs < 1:
            raise ValueError(f"setting {self.name}: runs must be >= 1, got {self.runs}")
        if self.nms is not None and not 0.0 < self.nms <= 1.0:
            raise ValueError(f"setting {self.name}: nms must be a box IoU in (0, 1], got "
                             f"{self.nms}")
        if self.faint_percentile is not None and not 0.0 < self.faint_percentile < 100.0:
            raise ValueError(f"setting {self.name}: faint_percentile must be in (0, 100), "
                             f"got {self.faint_percentile}")
        if self.faint_percentile is not None and self.k == 0:
            raise ValueError(f"setting {self.name}: faint_percentile is measured on the "
                             f"setting's annotated images; it needs k >= 1 or null")
        if (self.replicate or self.runs > 1) and self.pseudo:
            raise ValueError(f"setting {self.name}: replicate and runs retrain a detector, "
                             f"not a self-training (pseudo)")
        if self.runs > 1 and self.replicate:
            raise ValueError(f"setting {self.name}: runs and replicate exclude each other "
                             f"(runs: {self.runs} trains replicates 0 to {self.runs - 1})")
        if self.soup and self.runs < 2:
            raise ValueError(f"setting {self.name}: soup averages the setting's runs; it needs "
                             f"runs >= 2, got {self.runs}")
        if self.soup and (self.data == "real" or self.k == 0):
            raise ValueError(f"setting {self.name}: soup averages fine-tunings of one "
                             f"pretrained detector; it needs synthetic pretraining and k >= 1 "
                             f"or null")
        if self.teacher is not None and not self.pseudo:
            raise ValueError(f"setting {self.name}: teacher needs pseudo > 0 (the share of "
                             f"batches from the images the teacher labels)")
        if self.teacher == self.name:
            raise ValueError(f"setting {self.name}: teacher must be another setting (its own "
                             f"detector teaches it without teacher:)")


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "experiment"
    train: str = ""                  # labeled real training split (the k images come from it)
    test: str = ""                   # labeled held-out split: evaluated in phase 2 only
    unlabeled: str | None = None     # the refiner's real images (default: train, labels unused)
    seeds: tuple[int, ...] = (0, 1, 2)
    settings: tuple[Setting, ...] = ()
    compare: tuple[tuple[str, str], ...] = ()   # (a, b): paired bootstrap of a - b
    simulate: SimulateOptions = field(default_factory=SimulateOptions)
    n_val: int = 16                  # held-out synthetic images: zero-label thresholds
    refine: RefineConfig = field(default_factory=RefineConfig)
    refine_minutes: float | None = None   # training-time cap per refiner, over its resumes
    pretrain: TrainConfig = field(default_factory=TrainConfig)     # on synthetic data
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(steps=300, lr=3e-4))
    supervised: TrainConfig = field(default_factory=TrainConfig)   # real data only
    # threshold and checkpoint choice for settings with real labels: "k" = the k annotated
    # images themselves (all a k-image user has), "rest" = the training images not drawn
    val: Literal["k", "rest"] = "k"
    tiles: int = 1                   # test images split into tiles x tiles bootstrap units
    bootstrap: int = 2000
    device: str = "cpu"

    def __post_init__(self) -> None:
        names = [s.name for s in self.settings]
        if len(set(names)) != len(names):
            raise ValueError("settings: names must be unique")
        for a, b in self.compare:
            if a not in names or b not in names:
                raise ValueError(f"compare: {a!r} and {b!r} must both be settings")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds: at least one, no repeats")
        if self.val not in ("k", "rest"):
            raise ValueError("val must be 'k' or 'rest'")
        by_name = {s.name: s for s in self.settings}
        for s in self.settings:
            if s.teacher is None:
                continue
            teacher = by_name.get(s.teacher)
            if teacher is None:
                raise ValueError(f"setting {s.name}: teacher {s.teacher!r} is not a setting")
            if teacher.k != s.k or teacher.pseudo or teacher.tta:
                raise ValueError(f"setting {s.name}: teacher {s.teacher!r} must have the same "
                                 f"k ({s.k}) and neither pseudo nor tta of its own")


def load_experiment_config(path: str | os.PathLike) -> ExperimentConfig:
    """Read an experiment YAML; folders are resolved against the YAML's folder."""
    path = Path(path)
    data = load_yaml(path)
    if not data:
        raise ConfigError(f"{path}: empty experiment config; see configs/experiment-*.yaml")
    config = from_dict(ExperimentConfig, inherit_architecture(read_overrides_file(data, path)),
                       where=str(path))
    folders = {k: str((path.parent / v).resolve()) for k in ("train", "test", "unlabeled")
               if isinstance(v := getattr(config, k), str) and v}
    config = replace(config, **folders)
    with errors_name(path):
        check_experiment(config)
    return config


def _check_pixel_sizes(config: ExperimentConfig, folders: list) -> None:
    """Refuse in one line a folder that states another pixel size than the simulation's:
    an experiment trains its detectors on real and simulated images as they are (a run
    rescales them; here every image must already be at the simulation's pixel size), and
    said so only when the test split was predicted, after all training."""
    from cellsynth.io.resample import RELATIVE_TOLERANCE

    s = config.simulate
    sim_px = s.simulation().pixel_size_um
    for dataset in folders:
        px = dataset.pixel_size_um  # (meta.json, else what all its files state alike)
        if px is not None and abs(px / sim_px - 1.0) > RELATIVE_TOLERANCE:
            raise ConfigError(f"{dataset.root}: images at {px:g} um/px, the simulation at "
                              f"{sim_px:g} (preset {s.preset}); an experiment uses every "
                              f"image as it is: set simulate.pixel_size_um: {px:g}, or bring "
                              f"the images to {sim_px:g} um/px first")


def check_experiment(config: ExperimentConfig) -> None:
    """Fail before any work if a folder is missing or a setting cannot be run."""
    if not config.train or not config.test:
        raise ConfigError("an experiment needs train: and test: folders")
    train = load_dataset(config.train, require_labels=True)
    check_label_sizes(train)  # (headers; the test split is not opened before its evaluation)
    n_train = len(train)
    test = load_dataset(config.test, require_labels=True)
    check_held_out(train, test)
    folders = [train, test] + ([load_dataset(config.unlabeled)] if config.unlabeled else [])
    _check_pixel_sizes(config, folders)
    for s in config.settings:
        if s.k is not None and s.k > n_train:
            raise ConfigError(f"setting {s.name}: k = {s.k} but {config.train} has only "
                              f"{n_train} images")
        if config.val == "rest" and s.k is not None and s.k >= n_train:
            raise ConfigError(f"setting {s.name}: val: rest needs k < {n_train}")
        if s.pseudo and s.k is not None and s.k >= n_train:
            raise ConfigError(f"setting {s.name}: pseudo needs k < {n_train}: with all "
                              f"images annotated there is none left to pseudo-label")
    if any(s.data in _REFINED for s in config.settings) and not config.train:
        raise ConfigError("refined settings need real images for the refiner")
    differ = network_differences(config.pretrain, config.finetune)
    if differ:  # (found when a fine-tuning began, after its pretraining)
        raise ConfigError(f"finetune: starts from the pretrained detectors, so its network "
                          f"must be pretrain:'s ({', '.join(differ)}); set it under pretrain: "
                          f"alone, or for all parts with a setting's detector:")
    for s in config.settings:
        override(config.refine, s.refine, where=f"setting {s.name}: refine")
        for part in ("supervised", "pretrain", "finetune"):
            override(getattr(config, part), s.detector, where=f"setting {s.name}: detector")
        override(override(config.finetune, s.detector), s.finetune,
                 where=f"setting {s.name}: finetune")


def select_settings(config: ExperimentConfig, names: list[str]) -> ExperimentConfig:
    """Only the named settings, and the comparisons between them: to evaluate what has
    finished while the rest still trains, or to run the settings one cares about first.
    Finished units are shared with the whole experiment (same folder, same fingerprints)."""
    known = [s.name for s in config.settings]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; the config has "
                          f"{', '.join(known)}")
    # a distilled setting needs its teacher's detectors: they come along
    names = names + [s.teacher for s in config.settings
                     if s.name in names and s.teacher and s.teacher not in names]
    return replace(config, settings=tuple(s for s in config.settings if s.name in names),
                   compare=tuple((a, b) for a, b in config.compare
                                 if a in names and b in names))


def reproducibility_notes(config: ExperimentConfig) -> list[str]:
    """What makes this experiment's numbers depend on the machine that runs it, one line each
    (printed when it starts): today, a refiner capped by wall time (``refine_minutes``)."""
    if config.refine_minutes is None or not any(s.data in _REFINED for s in config.settings):
        return []
    return [f"note: refine_minutes: {config.refine_minutes:g} stops each refiner after that much "
            "training time, so the steps it reaches (results.json: refiner_steps), and every "
            "detector trained after it, depend on this machine and its load; for numbers "
            "another machine reproduces, drop it and fix refine: {steps: N}"]


def subset_tag(full: ExperimentConfig, config: ExperimentConfig) -> str | None:
    """None if ``config`` runs all of ``full`` (its settings and at least its seeds), else a
    short name for the part it runs: ``seeds-1``, ``settings-a+b`` (the settings' names, or
    a hash of them where they are long or hold other characters) or both joined by ``_``.
    A part writes its summary beside the whole experiment's, never over it."""
    parts = []
    if not set(config.seeds) >= set(full.seeds):
        parts.append("seeds-" + "-".join(str(s) for s in config.seeds))
    names = [s.name for s in config.settings]
    if names != [s.name for s in full.settings]:
        joined = "+".join(names)  # (a hash alone said nothing of what the file holds)
        readable = len(joined) <= 48 and re.fullmatch(r"[A-Za-z0-9._+-]+", joined)
        parts.append("settings-" + (joined if readable else fingerprint(*names)[:8]))
    return "_".join(parts) or None
