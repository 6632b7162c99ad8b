"""The configuration of ``cellsynth run``: one seed, the real data, and every stage's options.

Paths in a run YAML are resolved against the YAML's folder. Every stage derives its
randomness from the run's single ``seed`` (simulation, refiner training and generation,
detector training, realism), so two runs differ in exactly what their configs say.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cellsynth.config import ADDED, errors_name, from_dict, load_yaml, to_dict
from cellsynth.errors import ConfigError
from cellsynth.io.datasets import load_dataset
from cellsynth.pipeline.choose_refiner import ChooseRefinerOptions
from cellsynth.refine.config import RefineConfig
from cellsynth.segment.tiles import EMPTY_CONTRAST
from cellsynth.segment.trainer import ARCHITECTURE, TrainConfig, network_differences

__all__ = ["SimulateOptions", "RealData", "RealismOptions", "PredictOptions", "SelfTrainOptions",
           "PipelineConfig", "load_pipeline_config", "check_inputs", "SEEDED_STAGES"]

# stage sections that take their seed from the run's ``seed`` (never their own)
SEEDED_STAGES = ("simulate", "refine", "pretrain", "finetune")
FIT_ROLES = ("unlabeled", "train", "val")  # real images the simulator may be fitted to


@dataclass(frozen=True)
class SimulateOptions:
    preset: str = "merker"
    n: int = 200
    size: int = 256
    workers: int = 2
    pixel_size_um: float | None = None   # default: the preset's
    color: str | None = None             # default: the preset's
    overrides: dict = field(default_factory=dict)  # preset parameters, as in --config
    # fit the preset to these real images first (cellsynth fit-simulator): "unlabeled" or
    # "train" (their images only; never "test"); overrides still apply on top of the fit
    fit_from: str | None = field(default=None, metadata=ADDED)
    # the fit's stain variation between cells and camera noise: "floor" (at least the
    # preset's, for a varied training set) or "fitted" (as measured); fit-simulator --spread
    fit_spread: str = field(default="floor", metadata=ADDED)
    # the fit's stain vectors: "preset" or "measured" (H&E eosin); fit-simulator --stains
    fit_stains: str = field(default="preset", metadata=ADDED)
    # held-out simulated (and, with a refiner, refined) images that choose the pretrained
    # detector's score threshold and best checkpoint when real.val names no annotated images
    # (a zero-label run); 0: none (the detector keeps its last step and threshold 0.9)
    n_val: int = field(default=16, metadata=ADDED)

    def simulation(self) -> Any:
        """The :class:`~cellsynth.simulate.SimulationConfig` this section asks for (before
        any fit); a bad preset, colour, override or pixel size is said as ``simulate: ...``."""
        from cellsynth.simulate import simulation_config

        try:
            return simulation_config(self.preset, overrides=self.overrides or None,
                                     pixel_size_um=self.pixel_size_um, color=self.color)
        except ConfigError as err:
            raise ConfigError(f"simulate: {err}") from None

    def __post_init__(self) -> None:
        if self.n < 1 or self.size < 16 or self.workers < 1 or self.n_val < 0:
            raise ValueError("n >= 1, size >= 16, workers >= 1 and n_val >= 0 required")
        from cellsynth.simulate.fit import SPREADS, STAINS

        if self.fit_stains not in STAINS:
            raise ValueError(f"fit_stains must be one of {', '.join(STAINS)}, got "
                             f"{self.fit_stains!r}")
        if self.fit_spread not in SPREADS:
            raise ValueError(f"fit_spread must be one of {', '.join(SPREADS)}, got "
                             f"{self.fit_spread!r}")
        if self.fit_from is not None and self.fit_role not in FIT_ROLES:
            raise ValueError(f"fit_from must be one of "
                             f"{', '.join('real.' + r for r in FIT_ROLES)}, got "
                             f"{self.fit_from!r} (the test images are never fitted to)")

    @property
    def fit_role(self) -> str | None:
        """The real-data role fitted to ("real.unlabeled" and "unlabeled" alike)."""
        return None if self.fit_from is None else self.fit_from.removeprefix("real.")


@dataclass(frozen=True)
class RealData:
    """Where the real images are. Only ``unlabeled`` is needed for refinement."""

    unlabeled: str | None = None   # real images, labels ignored (refiner's target domain)
    train: str | None = None       # a few labeled real images: fine-tuning
    val: str | None = None         # labeled images for choosing the score threshold
    test: str | None = None        # labeled held-out images: predicted and evaluated
    pixel_size_um: float | None = None  # of the real images, if not in their meta.json
    # only these images of train / val, by id (file name without extension), e.g. the 2
    # annotated images of a training folder: {train: [a, b], val: [a, b]}
    select: dict = field(default_factory=dict, metadata=ADDED)
    # the one channel (0-based) of multi-channel images (fluorescence: the nuclear stain) that
    # every stage uses: the real folders are staged under RUN/real as that channel alone, and
    # the detectors record it for cellsynth predict. None: gray and RGB as they are, channel 0
    # of any other number of channels (with a warning)
    channel: int | None = field(default=None, metadata=ADDED)

    def __post_init__(self) -> None:
        if self.channel is not None and self.channel < 0:
            raise ValueError(f"channel must be >= 0, got {self.channel}")
        px = self.pixel_size_um
        if px is not None and not 0 < px < float("inf"):  # (0 read as "not stated")
            raise ValueError(f"pixel_size_um must be a number > 0, got {px}")


@dataclass(frozen=True)
class RealismOptions:
    enabled: bool = True
    # C2ST crops per image set; a run's check (256 crops, 8 epochs per fold) is quicker than
    # the `cellsynth realism` command's (512, 12): compare a run's C2ST with another run's,
    # or run the command on both image sets for its numbers
    n_crops: int = 256
    epochs: int = 8
    folds: int = 5


@dataclass(frozen=True)
class PredictOptions:
    tile: int | None = None
    overlap: int = 96
    tta: bool = field(default=False, metadata=ADDED)  # 8 flips/transposes vote (8x the time)
    # score threshold from the unlabeled images (needs real.unlabeled): where the detector
    # finds as many cells as fit-simulator's estimator counts there (segment/calibrate.py),
    # instead of the threshold validated on synthetic or annotated images
    count_threshold: bool = field(default=False, metadata=ADDED)
    # tiles with no contrast above this share of the intensity range (empty glass) are not
    # predicted; 0 predicts every tile (segment/tiles.py blank_tile)
    empty_contrast: float = field(default=EMPTY_CONTRAST, metadata=ADDED)
    # auto (bf16 where the CPU computes it natively), bf16, fp32, or int8 (the detector
    # quantised after training, kept only where it finds fp32's cells; ~1.5x on AVX2)
    precision: str = field(default="auto", metadata=ADDED)
    # drop detections fainter than this percentile of the annotated cells' mean stain (or
    # intensity, for bright cells) in real.val, else real.train (0: off; segment/faint.py).
    # 5 on Nissl with 2 images: +0.011 F1@0.5, +0.008 F1avg on the test split (3 seeds)
    faint_percentile: float = field(default=0.0, metadata=ADDED)
    # box IoU above which a proposal is dropped as the same cell as a better one (None: the
    # detector's, celldetection's 0.2; segment/predict.py set_nms)
    nms: float | None = field(default=None, metadata=ADDED)

    def __post_init__(self) -> None:
        if self.nms is not None and not 0.0 < self.nms <= 1.0:
            raise ValueError(f"predict.nms must be in (0, 1], got {self.nms}")
        if not 0.0 <= self.faint_percentile < 100.0:
            raise ValueError(f"predict.faint_percentile must be in [0, 100), got "
                             f"{self.faint_percentile}")
        if not 0.0 <= self.empty_contrast < 1.0:
            raise ValueError(f"predict.empty_contrast must be in [0, 1), got "
                             f"{self.empty_contrast}")
        if self.precision not in ("auto", "bf16", "fp32", "int8"):
            raise ValueError(f"predict.precision must be auto, bf16, fp32 or int8, got "
                             f"{self.precision!r}")


@dataclass(frozen=True)
class SelfTrainOptions:
    """Self-training after fine-tuning: the fine-tuned detector labels the unlabeled real
    images (those that are not annotated; 8-view test-time augmentation, its validated
    threshold), then fine-tunes once more from itself on the annotated images with a
    fraction ``pseudo`` of each batch from the pseudo-labelled ones (``finetune:`` options
    otherwise). Off by default (``pseudo: 0``)."""

    pseudo: float = 0.0
    max_images: int = 64   # unlabeled images labelled at most (the first, by name)

    def __post_init__(self) -> None:
        if not 0.0 <= self.pseudo < 1.0:
            raise ValueError(f"selftrain.pseudo must be in [0, 1), got {self.pseudo}")
        if self.max_images < 1:
            raise ValueError(f"selftrain.max_images must be >= 1, got {self.max_images}")

    @property
    def enabled(self) -> bool:
        return self.pseudo > 0


DEVICES = r"cpu|cuda(:\d+)?"  # the devices a config may name


@dataclass(frozen=True)
class PipelineConfig:
    name: str = "run"
    seed: int = 0                        # every stage's randomness derives from this
    device: str = "cpu"
    simulate: SimulateOptions = field(default_factory=SimulateOptions)
    real: RealData = field(default_factory=RealData)
    refine: RefineConfig = field(default_factory=RefineConfig)
    pretrain: TrainConfig = field(default_factory=TrainConfig)
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(steps=300, lr=3e-4))
    predict: PredictOptions = field(default_factory=PredictOptions)
    realism: RealismOptions = field(default_factory=RealismOptions)
    # pick the refiner step whose images teach a quick detector most on real.val
    choose_refiner: ChooseRefinerOptions = field(default_factory=ChooseRefinerOptions,
                                                 metadata=ADDED)
    selftrain: SelfTrainOptions = field(default_factory=SelfTrainOptions, metadata=ADDED)
    # fine-tune this many times from the pretrained detector (seeds seed, seed + 1000, ...:
    # other crops and augmentations of the same images) and predict with the average of
    # their weights (cellsynth soup); 1: one fine-tuning. Each run costs a fine-tuning
    soup: int = field(default=1, metadata=ADDED)
    # what chooses the pretrained detector's best checkpoint and threshold: "real" (real.val's
    # annotated images where named, else the held-out simulated ones) or "synthetic" (always
    # the held-out simulated/refined images). Where fine-tuning follows, the pretrained
    # detector is a starting point, not the answer: its F1 on real.val with zero labels peaks
    # early (~1000 steps on Nissl) while the fine-tuned detector gains from longer pretraining
    pretrain_val: Literal["real", "synthetic"] = field(default="real", metadata=ADDED)
    # train the S+U refiner on real.unlabeled and pretrain on its images (true), or pretrain
    # on the plain simulation although real.unlabeled is named (false: those images then
    # feed only the simulator's fit, the count threshold, self-training and the
    # predictions). Once real annotated images fine-tune the detector, refined and
    # simulated pretraining score alike on all three datasets measured (docs/results.md)
    refiner: bool = field(default=True, metadata=ADDED)

    @property
    def refines(self) -> bool:
        """Whether the run trains a refiner: real.unlabeled named and ``refiner`` on."""
        return bool(self.real.unlabeled) and self.refiner

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if not re.fullmatch(DEVICES, self.device):  # (whether it exists: at run time)
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")
        if self.soup < 1:
            raise ValueError(f"soup must be >= 1 (fine-tunings to average), got {self.soup}")
        if self.pretrain_val == "synthetic" and self.simulate.n_val < 1:
            raise ValueError("pretrain_val: synthetic needs held-out simulated images "
                             "(simulate.n_val >= 1)")
        if self.soup > 1 and not self.real.train:
            raise ValueError("soup averages fine-tunings: it needs annotated real.train images")
        differ = network_differences(self.pretrain, self.finetune)
        if differ and self.real.train:  # (found when fine-tuning began, after pretraining)
            raise ValueError(f"finetune: starts from the pretrained detector, so its network "
                             f"must be pretrain:'s ({', '.join(differ)}); set it under "
                             f"pretrain: alone")


def read_overrides_file(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """``data`` (a run's or experiment's YAML) with ``simulate: overrides:`` given as a file
    name (what ``fit-simulator --out`` wrote, resolved against the YAML's folder) replaced by
    the file's mapping, as if pasted in; its ``preset`` must be the section's."""
    sim = data.get("simulate")
    if not isinstance(sim, dict) or not isinstance(sim.get("overrides"), str):
        return data
    file = (path.parent / sim["overrides"]).resolve()
    if not file.is_file():
        raise ConfigError(f"{path}: simulate.overrides: {file}: no such file (give the file "
                          f"fit-simulator wrote, or its keys as a mapping)")
    loaded = load_yaml(file) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{file}: not a mapping of simulator keys")
    asked = sim.get("preset", SimulateOptions.preset)
    if loaded.get("preset", asked) != asked:
        raise ConfigError(f"{path}: simulate.overrides: {file} is for preset "
                          f"{loaded['preset']!r}, not simulate.preset {asked!r}")
    return {**data, "simulate": {**sim, "overrides": loaded}}


def inherit_architecture(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a run's or experiment's YAML) with the network options the ``pretrain:``
    section sets (model, contour order, ...) given to ``finetune:`` where it sets none, as
    ``train --init`` takes them from its detector: a tiny_u22 named only under pretrain:
    stopped a run after pretraining with "--init model does not match"."""
    pre = data.get("pretrain")
    if not isinstance(pre, dict) or not any(k in pre for k in ARCHITECTURE):
        return data
    fine = data.get("finetune") or {}
    if not isinstance(fine, dict):
        return data  # (said by from_dict)
    return {**data, "finetune": {**{k: pre[k] for k in ARCHITECTURE if k in pre}, **fine}}


def load_pipeline_config(path: str | os.PathLike) -> PipelineConfig:
    """Read and validate a pipeline YAML; paths are resolved against the YAML's folder."""
    path = Path(path)
    data = load_yaml(path)
    if not data:
        raise ConfigError(f"{path}: empty pipeline config; start from one of configs/*.yaml "
                          f"(at least simulate: preset and real: folders)")
    for stage in SEEDED_STAGES:
        if isinstance(data.get(stage), dict) and "seed" in data[stage]:
            raise ConfigError(f"{path}: {stage}.seed: a run has one seed that every stage "
                              f"derives from; set `seed: N` at the top level instead")
    data = inherit_architecture(read_overrides_file(data, path))
    config = from_dict(PipelineConfig, data, where=str(path))
    real = {k: (str((path.parent / v).resolve()) if isinstance(v, str) else v)
            for k, v in to_dict(config.real).items()}
    config = from_dict(PipelineConfig, {**to_dict(config), "real": real}, where=str(path))
    with errors_name(path):
        check_inputs(config)
    return config


def check_held_out(train: Any, test: Any, role: str = "train") -> None:
    """Refuse a test split that shares images with the training split: the same folder, or
    a byte-identical file under any name (a training image copied over, or renamed), which
    every score would count as held out. Files are compared only where their sizes agree
    (then by :func:`cellsynth.io.files.file_digest`, then byte by byte; no pixel decoded).
    ``role``: what ``train`` is called in the message (train, val)."""
    import filecmp
    from collections import defaultdict

    from cellsynth.io.files import file_digest

    if train.root.resolve() == test.root.resolve():
        raise ConfigError(f"{test.root}: test: is the {role}: folder; the test split must "
                          f"be images the detectors never train or choose on")

    def by_size(dataset: Any) -> dict[int, list[Path]]:
        files = defaultdict(list)
        for s in dataset:
            if s.image_path.is_file():  # (a .zarr section is a folder: not compared)
                files[s.image_path.stat().st_size].append(s.image_path)
        return files

    theirs, shared = by_size(train), []
    for size, paths in by_size(test).items():
        if size not in theirs:
            continue
        digests = defaultdict(list)
        for other in theirs[size]:
            digests[file_digest(other)].append(other)
        for path in paths:
            same = [o for o in digests.get(file_digest(path), [])
                    if filecmp.cmp(o, path, shallow=False)]
            shared += [(path, same[0])] if same else []
    if shared:
        path, other = sorted(shared)[0]
        same = path.name if path.name == other.name else f"{path.name} = {other.name}"
        raise ConfigError(f"{test.root}: {len(shared)} test image(s) also in {train.root} "
                          f"(the same file, e.g. {same}); the test split must be held out")


def check_splits_held_out(datasets: dict[str, Any]) -> None:
    """:func:`check_held_out` of the test split against every folder the run learns or
    chooses from: ``datasets`` by role (train, val, unlabeled, test; None or absent where
    not given). The unlabeled images fit the simulator and the refiner and are self-trained
    on, so they count as learned from."""
    test = datasets.get("test")
    if test is None:
        return
    for role in ("train", "val", "unlabeled"):
        if datasets.get(role) is not None:
            check_held_out(datasets[role], test, role)


def check_inputs(config: PipelineConfig) -> None:
    """Fail before any work starts if a named folder is missing or malformed."""
    from cellsynth.io.datasets import check_label_sizes
    from cellsynth.io.headers import check_headers
    from cellsynth.io.resample import pixel_scale
    from cellsynth.io.sections import open_image, reads_lazily

    sim = config.simulate.simulation()
    rescaled = (config.real.pixel_size_um is not None
                and pixel_scale(config.real.pixel_size_um, sim.pixel_size_um) != 1.0)
    if config.real.channel is not None and sim.channels != 1:
        raise ConfigError(f"real.channel {config.real.channel} takes one channel of your images, "
                          f"but the simulation draws {sim.channels} (preset "
                          f"{config.simulate.preset}, colour {sim.color}): simulate a gray "
                          f"colour or preset (fluo, merker), or leave real.channel out")
    datasets = {}
    for role in ("unlabeled", "train", "val", "test"):
        folder = getattr(config.real, role)
        if folder is not None:
            dataset = datasets[role] = load_dataset(folder, require_labels=role != "unlabeled")
            if role != "unlabeled":  # (found when fine-tuning or scoring began: hours in)
                check_label_sizes(dataset)
            channel = config.real.channel
            # a file cut short or a z-stack, or one lacking the channel, before any work on it
            counts = check_headers([s.image_path for s in dataset], channel=channel,
                                   gray_is_the_channel=True, asked=f"real.channel {channel}")
            for sample, count in zip(dataset, counts):
                if channel is not None and count is None:  # (a Zarr: opened lazily)
                    open_image(sample.image_path, channel=channel)
            # unlabeled sections are staged as rescaled windows of tissue; an annotated one
            # would have to be copied rescaled whole, i.e. decoded whole
            section = next((s for s in dataset if reads_lazily(s.image_path)),
                           None) if rescaled and role != "unlabeled" else None
            if section is not None:
                raise ConfigError(
                    f"{section.image_path}: an annotated whole section (real.{role}) cannot "
                    f"be rescaled from {config.real.pixel_size_um} to the simulation's "
                    f"{sim.pixel_size_um} um/px into the run folder; work at its resolution "
                    f"(simulate.pixel_size_um: {config.real.pixel_size_um}) or predict it "
                    f"apart with cellsynth predict --pixel-size {config.real.pixel_size_um}")
            if config.real.channel is not None and role != "unlabeled":
                # staged as that channel alone: an annotated section would be decoded whole
                section = next((s for s in dataset if reads_lazily(s.image_path)), None)
                if section is not None:
                    raise ConfigError(
                        f"{section.image_path}: an annotated whole section (real.{role}) "
                        f"cannot be copied as channel {config.real.channel} alone into the run "
                        f"folder; save that channel as its own image, or predict the section "
                        f"apart with cellsynth predict --channel {config.real.channel}")
    check_splits_held_out(datasets)  # (scored as held out: never trained or chosen on)
    for role, ids in config.real.select.items():
        if role not in ("train", "val"):
            raise ConfigError(f"real.select: {role!r}: only train and val (the annotated "
                              f"images) can be narrowed to some of their images")
        folder = getattr(config.real, role)
        if folder is None:
            raise ConfigError(f"real.select.{role} is set but real.{role} is not")
        if not isinstance(ids, (list, tuple)) or not ids:
            raise ConfigError(f"real.select.{role}: a list of image ids (file names without "
                              f"extension), got {ids!r}")
        known = {sample.id for sample in load_dataset(folder)}
        missing = sorted(str(i) for i in ids if str(i) not in known)
        if missing:
            raise ConfigError(f"real.select.{role}: {folder} has no image {', '.join(missing)}"
                              f" (it has {', '.join(sorted(known)[:6])}"
                              f"{', ...' if len(known) > 6 else ''})")
    role = config.simulate.fit_role
    if role is not None and getattr(config.real, role) is None:
        raise ConfigError(f"simulate.fit_from is {config.simulate.fit_from!r} but real.{role} "
                          f"is not set: name the real images to fit the simulator to")
    if config.refines and config.simulate.size < config.refine.crop:
        raise ConfigError(f"simulate.size {config.simulate.size} is smaller than refine.crop "
                          f"{config.refine.crop}: the refiner trains on crops of the "
                          f"simulated images (raise simulate.size or lower refine.crop)")
    if config.predict.faint_percentile > 0 and not (config.real.val or config.real.train):
        raise ConfigError("predict.faint_percentile needs annotated images (real.val or "
                          "real.train) to measure how faint an annotated cell can be")
    if config.predict.count_threshold and not config.real.unlabeled:
        raise ConfigError("predict.count_threshold needs real.unlabeled (the images whose "
                          "estimated cell count sets the threshold)")
    if config.choose_refiner.enabled and not (config.refines and config.real.val):
        raise ConfigError("choose_refiner.enabled needs a refiner (real.unlabeled, refiner: "
                          "true) and real.val (annotated images to score its steps on)")
    if config.selftrain.enabled and not (config.real.train and config.real.unlabeled):
        raise ConfigError("selftrain.pseudo needs real.train (the annotated images the "
                          "detector is fine-tuned on) and real.unlabeled (the images it labels)")
