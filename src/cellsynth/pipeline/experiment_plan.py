"""The work units of ``cellsynth experiment``: what each (setting, seed) cell needs trained,
in the order it is needed (data subsets, simulations, refiners, refined data, detectors,
soups, pseudo-labels), each with its inputs and the options its fingerprint hashes.

:func:`_plan` builds them; :mod:`cellsynth.pipeline.experiment` runs them (and keeps the
test split for its phase 2).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.config import override, to_dict
from cellsynth.io.datasets import load_dataset
from cellsynth.io.files import write_json
from cellsynth.pipeline import layout
from cellsynth.pipeline.experiment_config import (
    _REFINED,
    _SYNTHETIC,
    ExperimentConfig,
    _changed,
    _suffix,
)
from cellsynth.pipeline.run import content_fingerprint
from cellsynth.segment.trainer import TrainConfig

# --- units of work ---------------------------------------------------------------------------

@dataclass(frozen=True)
class _Unit:
    name: str                         # also its folder below OUT
    inputs: tuple[str, ...]           # units it reads
    options: Any                      # what it depends on besides its inputs
    run: Callable[[Path, bool], dict[str, Any]]   # (folder, resume) -> summary
    # what `experiment --estimate` prices (not part of the fingerprint): ("detector",
    # TrainConfig, val unit), ("refiner", RefineConfig), ("refine", RefineConfig, source unit),
    # ("pseudo", n images), ("soup",) (one validation, predicts as its first run);
    # None: not timed (simulation, copying)
    cost: tuple | None = None


def _refiner_unit(variant: str, seed: int) -> str:
    """The unit (and folder) of the refiner of a refine variant at a seed."""
    return f"refiner{variant}/s{seed}"


def _draw(train: str, k: int | None, seed: int) -> tuple[list[int], list[int]]:
    """Indices of the k drawn training images and of the rest (numpy default_rng(seed))."""
    n = len(load_dataset(train, require_labels=True))
    if k is None or k >= n:
        return list(range(n)), []
    chosen = sorted(int(i) for i in np.random.default_rng(seed).choice(n, k, replace=False))
    return chosen, [i for i in range(n) if i not in chosen]


def _subset_name(k: int | None, seed: int, rest: bool = False) -> str:
    """The unit (and folder) of the k images seed draws from the training images, or of the
    rest of them."""
    return f"data/{'rest' if rest else 'k'}{'all' if k is None else k}_s{seed}"


def _copy_subset(train: str, indices: list[int], folder: Path) -> dict[str, Any]:
    from cellsynth.io.files import staged_output_dir

    samples = list(load_dataset(train, require_labels=True))
    with staged_output_dir(folder, force=True) as root:
        for sub in ("images", "labels"):
            (root / sub).mkdir()
        for i in indices:
            s = samples[i]
            shutil.copyfile(s.image_path, root / "images" / s.image_path.name)
            shutil.copyfile(s.label_path, root / "labels" / s.label_path.name)
        meta = load_dataset(train).meta
        if meta:
            write_json(root / layout.META, {**meta, "subset_of": train})
    return {"images": [samples[i].id for i in indices]}


def _pseudo_label(teacher: Path, train: str, indices: list[int], folder: Path, device: str
                  ) -> dict[str, Any]:
    """The training images ``indices`` (their annotations never read) labelled by ``teacher``
    (:func:`cellsynth.pipeline.stages.write_pseudo_labels`)."""
    from cellsynth.pipeline.stages import write_pseudo_labels

    dataset = load_dataset(train)
    samples = list(dataset)
    return write_pseudo_labels(teacher, [samples[i].image_path for i in indices], folder,
                               meta={**dataset.meta, "images_of": train}, device=device)


def _plan(config: ExperimentConfig, out: Path, legacy: bool = False
          ) -> tuple[list[_Unit], dict[tuple[str, int], tuple[str, ...]]]:
    """Phase-1 units (data, refiners, detectors) and the detector unit of each training run
    of every cell (setting, seed): one, or ``runs`` of them. ``legacy``: with the real
    data's contents hashed the older way (``content_fingerprint(legacy=True)``), as earlier
    versions keyed the units."""
    from cellsynth import refine
    from cellsynth.segment import trainer
    from cellsynth.simulate import write_simulation
    from cellsynth.simulate.dataset import add_class_maps

    s = config.simulate
    sim_config = s.simulation()
    units: dict[str, _Unit] = {}
    detector_of: dict[tuple[str, int], tuple[str, ...]] = {}

    def add(unit: _Unit) -> str:
        units.setdefault(unit.name, unit)
        return unit.name

    def simulation(name: str, n: int, seed: int) -> str:
        return add(_Unit(name, (), [to_dict(s), n, seed], lambda folder, resume: {
            k: v for k, v in write_simulation(sim_config, n=n, size=s.size, seed=seed,
                                              out=folder, workers=s.workers, force=True,
                                              progress=False).items()
            if isinstance(v, (int, float, str))}))

    def subset(k: int | None, seed: int, rest: bool) -> str:
        chosen, others = _draw(config.train, k, seed)
        indices = others if rest else chosen
        name = _subset_name(k, seed, rest)
        return add(_Unit(name, (), ["subset", indices],
                         lambda folder, resume: _copy_subset(config.train, indices, folder)))

    def detector(name: str, train_config: TrainConfig, data: list[str], val: str,
                 init: str | None, seed: int, replay: tuple[str, ...] | list[str] = (),
                 replicate: int = 0) -> str:
        train_config = replace(train_config, seed=seed + 1000 * replicate,
                               device=config.device)
        replay = list(replay) if train_config.replay > 0 else []

        def run(folder: Path, resume: bool) -> dict[str, Any]:
            resume = resume and layout.has_checkpoint(folder)
            summary = trainer.train(train_config, [out / d for d in data], folder,
                                     replay=[out / d for d in replay] or None,
                                     val=out / val, init=out / init if init else None,
                                     resume=resume, force=not resume, progress=False)
            return {k: v for k, v in summary.items() if k != "run"}
        return add(_Unit(name, tuple(data) + (val,) + ((init,) if init else ())
                         + tuple(replay), to_dict(train_config), run,
                         ("detector", train_config, val)))

    def soup(name: str, runs: tuple[str, ...], val: str) -> str:
        def run(folder: Path, resume: bool) -> dict[str, Any]:
            from cellsynth.segment.soup import soup as average

            summary = average([out / r for r in runs], folder, val=out / val, force=True,
                              device=config.device)
            return {"score_thresh": summary["score_thresh"],
                    "best_val_f1": summary.get("val_f1"), "detectors": list(runs)}
        return add(_Unit(name, runs + (val,), ["soup"], run, ("soup",)))

    kinds = {st.data for st in config.settings if st.data in _SYNTHETIC}
    real = config.unlabeled or config.train  # the refiner's images, hashed once for all seeds
    real_contents = content_fingerprint(real, legacy=legacy) if kinds & set(_REFINED) else None
    for seed in config.seeds:
        synthetic = {}
        if kinds:
            synthetic["simulated"] = (simulation(f"sim/s{seed}", s.n, seed),
                                      simulation(f"sim_val/s{seed}", config.n_val,
                                                 seed + 10_000))
        variants = {st.variant: st.refine for st in config.settings if st.data in _REFINED}
        for variant, changes in variants.items():
            sim, sim_val = synthetic["simulated"]
            refine_config = replace(override(config.refine, changes), seed=seed)

            def fit(folder: Path, resume: bool, sim: str = sim, cfg=refine_config,
                    real: str = real) -> dict[str, Any]:
                resume = resume and layout.has_checkpoint(folder)
                if cfg.class_map:  # a simulation from before class maps gets them now
                    add_class_maps(out / sim)
                summary = refine.fit(cfg, out / sim, real, folder, resume=resume,
                                     force=not resume, device=config.device,
                                     max_minutes=config.refine_minutes, progress=False)
                return {"step": summary["step"], "steps_per_s": summary["steps_per_s"]}
            refiner = add(_Unit(_refiner_unit(variant, seed), (sim,),
                                [to_dict(refine_config), real_contents,
                                 config.refine_minutes], fit, ("refiner", refine_config)))

            def generate(source: str, seed: int = seed, refiner: str = refiner,
                         variant: str = variant, cfg=refine_config):
                def run(folder: Path, resume: bool) -> dict[str, Any]:
                    if cfg.class_map:
                        add_class_maps(out / source)
                    summary = refine.refine_dataset(out / refiner, out / source, folder,
                                                    device=config.device, force=True,
                                                    seed=seed, precision=cfg.precision,
                                                    progress=False)
                    return {k: v for k, v in summary.items() if isinstance(v, (int, float))}
                return add(_Unit(f"refined{variant}{'_val' if 'val' in source else ''}"
                                 f"/s{seed}", (refiner, source), [seed], run,
                                 ("refine", cfg, source)))
            synthetic[f"refined{variant}"] = (generate(sim), generate(sim_val))
        for st in config.settings:
            # a setting's detector changes; replay (of the pretraining data) is a
            # fine-tuning option only, so a replay setting shares the zero-label detector
            tuned = st.detector
            trained = {key: v for key, v in tuned.items() if key != "replay"}
            k = "all" if st.k is None else st.k
            if st.data == "real":
                data = subset(st.k, seed, rest=False)
                val = data if config.val == "k" or st.k is None else subset(st.k, seed, True)
                detector_of[st.name, seed] = tuple(detector(
                    f"detectors/real_k{k}{_suffix(trained)}{st.run_variant(r)}_s{seed}",
                    _changed(config.supervised, trained), [data], val, None, seed,
                    replicate=r) for r in st.replicates)
                continue
            kind = st.data + st.variant
            if st.data == "mixed":
                refined, val_data = synthetic[f"refined{st.variant}"]
                train_data = [synthetic["simulated"][0], refined]
            else:
                one, val_data = synthetic[kind]
                train_data = [one]
            zero = detector(f"detectors/{kind}_k0{_suffix(trained)}_s{seed}",
                            _changed(config.pretrain, trained), train_data, val_data, None,
                            seed)
            if st.k == 0:
                # run 0 is the detector every fine-tuning of this kind starts from
                detector_of[st.name, seed] = tuple(zero if r == 0 else detector(
                    f"detectors/{kind}_k0{_suffix(trained)}{st.run_variant(r)}_s{seed}",
                    _changed(config.pretrain, trained), train_data, val_data, None, seed,
                    replicate=r) for r in st.replicates)
                continue
            data = subset(st.k, seed, rest=False)
            val = data if config.val == "k" or st.k is None else subset(st.k, seed, True)
            detector_of[st.name, seed] = tuple(detector(
                f"detectors/{kind}_k{k}{_suffix(tuned)}{st.run_variant(r)}_s{seed}",
                _changed(config.finetune, {**tuned, **st.finetune}), [data], val, zero, seed,
                replay=train_data, replicate=r) for r in st.replicates)
            if st.soup:
                detector_of[st.name, seed] = (soup(
                    f"detectors/{kind}_k{k}{_suffix(tuned)}{st.run_variant(0)}"
                    f"_soup{st.runs}_s{seed}", detector_of[st.name, seed], val),)
        # before self-training: the teachers (their first runs; a pseudo setting has one)
        trained_by = {cell: runs[0] for cell, runs in detector_of.items()}
        for st in config.settings:
            if not st.pseudo:
                continue
            # self-training: the setting's detector (or its teacher's) labels the images
            # that were not drawn, then the setting's detector fine-tunes once more from
            # itself on its k images + those
            student = trained_by[st.name, seed]
            teacher = trained_by[st.teacher or st.name, seed]
            chosen, others = _draw(config.train, st.k, seed)
            pseudo = add(_Unit(
                teacher.replace("detectors/", "pseudo/", 1), (teacher,), ["pseudo", others],
                lambda folder, resume, teacher=teacher, others=others: _pseudo_label(
                    out / teacher, config.train, others, folder, config.device),
                ("pseudo", others)))
            data = subset(st.k, seed, rest=False)
            changes = {**st.detector, **st.finetune, "replay": st.pseudo}
            by = "" if st.teacher is None else (
                f"_by-{teacher.removeprefix('detectors/').removesuffix(f'_s{seed}')}")
            detector_of[st.name, seed] = (detector(
                f"{student.removesuffix(f'_s{seed}')}_pseudo-{st.pseudo}{by}_s{seed}",
                _changed(config.finetune, changes), [data], data, student, seed,
                replay=[pseudo]),)
    return list(units.values()), detector_of
