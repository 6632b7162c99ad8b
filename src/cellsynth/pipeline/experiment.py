"""``cellsynth experiment``: settings x seeds of detectors, compared with paired statistics.

An experiment asks how much each kind of training data is worth on one real dataset:

    real        k real annotated images (``k: null``: all of the training split)
    simulated   the simulation; with k > 0 fine-tuned on k real images afterwards
    refined     the refined simulation (refiner fit on real images *without* labels); with
                k > 0 fine-tuned likewise

A setting with ``pseudo: F`` (k >= 1, fewer than all) then self-trains: its detector labels
the training images that were not drawn (their annotations unused; 8-view test-time
augmentation, the threshold it chose on its k images) and a second fine-tuning starts from
it on the k images, with a fraction F of the batches from the pseudo-labelled ones.

Every setting runs once per seed. The seed draws the k images, the simulation, the refiner
and the detector, so the spread over seeds includes which images were annotated. Work units
(simulations, refiners, detector runs, evaluations) are tracked in ``OUT/state.json`` with
fingerprints, exactly like ``cellsynth run``: a re-run skips what is done, resumes what was
interrupted and redoes what changed.

Two phases keep the test split out of every choice: phase 1 trains every detector and picks
its checkpoint and score threshold on validation data only (the k annotated images, the
training images not drawn, or held-out synthetic images for zero-label settings); phase 2
then predicts the test split once per detector. ``OUT/results.json`` holds per setting the
mean +- std over seeds and, for each ``compare`` pair, the paired bootstrap over test units
(images, or tiles of them); ``results.md`` and ``learning_curve.png`` show the same
(:mod:`cellsynth.pipeline.experiment_results`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.config import override, save_yaml, to_dict
from cellsynth.errors import CellsynthError
from cellsynth.io.datasets import load_dataset
from cellsynth.io.files import write_json
from cellsynth.pipeline import layout
from cellsynth.pipeline.experiment_config import (  # (re-exported: split from here)
    _REFINED,
    _SYNTHETIC,
    ExperimentConfig,
    Setting,
    _changed,
    _suffix,
    check_experiment,
    load_experiment_config,
    reproducibility_notes,
    select_settings,
    subset_tag,
)
from cellsynth.pipeline.experiment_results import _log_k_axis as _log_k_axis  # (re-exported)
from cellsynth.pipeline.experiment_results import _plot, _write_table
from cellsynth.pipeline.experiment_results import k_position as k_position  # (re-exported)
from cellsynth.pipeline.run import RunState, claim, content_fingerprint, fingerprint, timed
from cellsynth.segment.parallel import parallel_plan
from cellsynth.segment.tiles import HALF_PIXEL
from cellsynth.segment.trainer import TrainConfig

__all__ = ["Setting", "ExperimentConfig", "load_experiment_config", "select_settings",
           "run_experiment", "subset_tag"]

_POLL_SECONDS = 2.0  # how often the side-by-side scheduler looks at its processes


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


def _plan(config: ExperimentConfig, out: Path
          ) -> tuple[list[_Unit], dict[tuple[str, int], tuple[str, ...]]]:
    """Phase-1 units (data, refiners, detectors) and the detector unit of each training run
    of every cell (setting, seed): one, or ``runs`` of them."""
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
    real_contents = content_fingerprint(real) if kinds & set(_REFINED) else None
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


def _evaluate(detector: Path, test: str, folder: Path, tiles: int, device: str,
              tta: bool = False, nms: float | None = None,
              faint: tuple[Path, float] | None = None) -> list[Any]:
    """Predict the test split with a detector (phase 2) and match it unit by unit;
    ``faint``: (annotated folder, percentile) of the faint cut."""
    from cellsynth.evaluate import matching_tiles
    from cellsynth.io.images import read_labels
    from cellsynth.segment import folders

    folders.predict_folder(detector, test, folder / layout.PREDICT, device=device, force=True,
                           tta=tta, progress=False, nms_thresh=nms,
                           **({"faint_from": faint[0], "faint_percentile": faint[1]}
                              if faint else {}))
    units = []
    for sample in load_dataset(test, require_labels=True):
        truth = sample.read_labels()
        predicted = read_labels(folder / layout.PREDICT / layout.LABELS / f"{sample.id}.tif")
        # cells outlined in regions of the image: scored inside them, as evaluate does
        # (matching_tiles keeps cells on a tile border whole)
        for box in sample.annotated_boxes(truth.shape) or [(slice(None), slice(None))]:
            units += matching_tiles(truth[box], predicted[box], tiles)
    return units


def _outputs(subset: str | None) -> tuple[str, str, str]:
    """results.json, results.md and learning_curve.png, or a part's own names for them."""
    if subset is None:
        return layout.RESULTS, "results.md", "learning_curve.png"
    return f"results.{subset}.json", f"results.{subset}.md", f"learning_curve.{subset}.png"


def _execute(unit: _Unit, fingerprints: dict[str, str], out: Path, state: RunState,
             train_contents: str, log: Callable[[str], None], index: int, total: int
             ) -> None:
    """Run ``unit`` unless state.json has it done (with its fingerprint, added to
    ``fingerprints``), holding its claim; a unit interrupted before resumes."""
    unit_fingerprint = fingerprint(unit.name, unit.options, train_contents,
                                   [fingerprints[i] for i in unit.inputs])
    fingerprints[unit.name] = unit_fingerprint
    if state.status(unit.name, unit_fingerprint) == "done":
        return
    with claim(out, unit.name, on_wait=lambda: log(
            f"[{index}/{total}] {unit.name}: another process is running it; waiting")):
        state.reload()  # what the process that held it recorded
        status = state.status(unit.name, unit_fingerprint)
        if status == "done":
            return
        resume = status == "interrupted"
        log(f"[{index}/{total}] {unit.name}: {'resuming' if resume else 'running'}")
        # (its time: that of every run that worked on it, a resumed one's included)
        _, seconds, _ = timed(state, unit.name, unit_fingerprint, resume,
                              lambda: unit.run(out / unit.name, resume))
    log(f"[{index}/{total}] {unit.name}: done in {seconds / 60:.1f} min")


# a pool process's plan of the experiment it serves: (units by name, fingerprints, contents)
_WORKER_PLAN: dict[str, tuple[dict[str, _Unit], dict[str, str], str]] = {}


def _unit_in_worker(config: ExperimentConfig, out: str, name: str) -> None:
    """Run one phase-1 unit in a pool process of :func:`_side_by_side` (its work is a
    closure of the plan, so the process plans the experiment again, once)."""
    if out not in _WORKER_PLAN:
        units, _ = _plan(config, Path(out))
        contents = content_fingerprint(config.train)
        _WORKER_PLAN[out] = ({u.name: u for u in units}, _fingerprints(units, contents),
                             contents)
    units, fingerprints, contents = _WORKER_PLAN[out]
    _execute(units[name], dict(fingerprints), Path(out), RunState(Path(out)), contents,
             lambda _: None, 0, 0)


def _side_by_side(config: ExperimentConfig, out: Path, units: list[_Unit],
                  fingerprints: dict[str, str], state: RunState, processes: int,
                  threads: int, log: Callable[[str], None]) -> None:
    """Phase 1 in ``processes`` pool processes of ``threads`` threads each: every unit whose
    inputs are done goes to a free process, in the plan's order (a seed's pretraining beside
    another seed's, a setting's fine-tunings beside each other). Progress is logged here as
    in turn. A failing unit, or SIGINT/SIGTERM here, asks the running units to stop (a
    training checkpoints between steps), starts no more, and raises its error (or
    :class:`KeyboardInterrupt`); a rerun resumes."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from cellsynth.segment.parallel import ask_to_stop, start_worker
    from cellsynth.signals import stop_between_steps

    position = {u.name: i for i, u in enumerate(units, 1)}
    done = {u.name for u in units if state.status(u.name, fingerprints[u.name]) == "done"}
    waiting = [u for u in units if u.name not in done]
    running: dict[Any, _Unit] = {}
    failure: BaseException | None = None

    def said(unit: _Unit, what: str) -> None:
        log(f"[{position[unit.name]}/{len(units)}] {unit.name}: {what}")

    context = multiprocessing.get_context("spawn")  # (see cellsynth.segment.parallel)
    with stop_between_steps() as stop, ProcessPoolExecutor(
            processes, mp_context=context, initializer=start_worker,
            initargs=(os.getpid(), threads, "the experiment's units side by side")) as pool:
        asked = False
        while waiting or running:
            if not stop and failure is None:
                for unit in [u for u in waiting if all(i in done for i in u.inputs)]:
                    if len(running) >= processes:
                        break
                    waiting.remove(unit)
                    interrupted = state.status(unit.name, fingerprints[unit.name])
                    said(unit, f"{'resuming' if interrupted == 'interrupted' else 'running'}"
                               f" (side by side, {threads} thread(s))")
                    running[pool.submit(_unit_in_worker, config, str(out), unit.name)] = unit
            if not running:
                break
            finished, _ = wait(running, timeout=_POLL_SECONDS, return_when=FIRST_COMPLETED)
            for future in finished:
                unit = running.pop(future)
                error = None if future.cancelled() else future.exception()
                if error is None and not future.cancelled():
                    done.add(unit.name)
                    state.reload()
                    seconds = state.data.get(unit.name, {}).get("seconds", 0.0)
                    said(unit, f"done in {seconds / 60:.1f} min")
                elif failure is None and isinstance(error, BrokenProcessPool) and not stop:
                    failure = CellsynthError(
                        f"{out / unit.name}: the process running it died (out of memory?); "
                        f"rerun to resume, with fewer --processes if it happens again")
                elif failure is None and error is not None and not isinstance(
                        error, (KeyboardInterrupt, BrokenProcessPool)):
                    failure = error
            if (stop or failure is not None) and not asked:
                asked = True
                ask_to_stop(pool, running)
    state.reload()
    if failure is not None:
        raise failure
    if stop or waiting:
        raise KeyboardInterrupt


def run_experiment(config: ExperimentConfig, out: str | os.PathLike, *,
                   log: Callable[[str], None] = print, subset: str | None = None,
                   processes: int = 1) -> dict[str, Any]:
    """Run (or continue) an experiment into ``out``; returns the summary in results.json.

    ``processes`` > 1 (a CPU): phase 1's units that do not depend on each other run side by
    side, each process on its share of the threads (:func:`_side_by_side`,
    :func:`cellsynth.segment.parallel.parallel_plan`); the test split is still predicted
    only after all of them, in this process.

    ``subset`` (see :func:`subset_tag`): this process runs only part of the experiment (some
    seeds or settings, e.g. one seed per process side by side); its summary goes to
    ``results.<subset>.json`` / ``.md`` / ``learning_curve.<subset>.png`` and the folder's
    config.yaml is left as the whole experiment's. Processes sharing ``out`` claim each
    unit while they run it (:func:`cellsynth.pipeline.run.claim`), so none is done twice."""
    from cellsynth.evaluate.matching import Matching

    out = Path(out)
    check_experiment(config)  # lists the test folder; its pixels are read in phase 2 only
    for line in reproducibility_notes(config):
        log(line)
    out.mkdir(parents=True, exist_ok=True)
    if subset is None or not (out / layout.CONFIG).exists():
        save_yaml(out / layout.CONFIG, config)
    state = RunState(out)
    units, detector_of = _plan(config, out)
    fingerprints: dict[str, str] = {}
    train_contents = content_fingerprint(config.train)

    def execute(unit: _Unit, index: int, total: int) -> None:
        _execute(unit, fingerprints, out, state, train_contents, log, index, total)

    # phase 1: everything that trains or chooses; the test split is not opened
    processes, threads = (1, None) if processes <= 1 else parallel_plan(
        processes, config.device)
    if processes > 1:
        fingerprints.update(_fingerprints(units, train_contents))
        _side_by_side(config, out, units, fingerprints, state, processes, threads, log)
    for i, unit in enumerate(units, 1):  # (side by side: all done already, nothing runs)
        execute(unit, i, len(units))
    # phase 2: every detector predicts the test split once
    test_contents = content_fingerprint(config.test)
    per_cell: dict[tuple[str, int], list[list[Matching]]] = {}  # [run][unit]
    # (detector, (tta, nms, faint percentile)) -> its matching per test unit
    evaluated: dict[tuple[str, tuple[bool, float | None, float | None]], list[Matching]] = {}
    how_of = _how_of(config)
    n_evaluations = len({(d, how_of[s]) for (s, _), runs in detector_of.items() for d in runs})
    k_of = {s.name: s.k for s in config.settings}
    for (setting, seed), detector in [(cell, d) for cell, runs in detector_of.items()
                                      for d in runs]:
        tta, nms, faint = how = how_of[setting]
        if (detector, how) not in evaluated:
            name, inputs = _evaluation_unit(detector, how, k_of[setting], seed)
            annotated = inputs[1] if len(inputs) > 1 else None

            def run(folder: Path, resume: bool, detector: str = detector, tta: bool = tta,
                    nms: float | None = nms, faint: float | None = faint,
                    annotated: str | None = annotated) -> dict[str, Any]:
                units = _evaluate(out / detector, config.test, folder, config.tiles,
                                  config.device, tta=tta, nms=nms,
                                  faint=(out / annotated, faint) if faint else None)
                return {"units": [_unit_record(u) for u in units]}
            execute(_Unit(name, inputs, _evaluation_options(config, how, test_contents), run),
                    len(evaluated) + 1, n_evaluations)
            evaluated[detector, how] = [_matching(u)
                                        for u in state.data[name]["summary"]["units"]]
        per_cell.setdefault((setting, seed), []).append(evaluated[detector, how])
    results = _summarize(config, per_cell, detector_of, state)
    if subset is not None:
        results["subset"] = subset
    json_name, table_name, plot_name = _outputs(subset)
    write_json(out / json_name, results)
    _write_table(config, results, out / table_name)
    _plot(config, results, out / plot_name)
    for name, r in results["settings"].items():
        log(f"{name}: F1@0.5 {r['f1_50']['mean']:.3f} +- {r['f1_50']['std']:.3f}, "
            f"F1avg {r['f1_avg']['mean']:.3f} +- {r['f1_avg']['std']:.3f}")
    return results


def _fingerprints(units: list[_Unit], train_contents: str) -> dict[str, str]:
    """Each unit's fingerprint, as :func:`run_experiment` computes them in order."""
    prints: dict[str, str] = {}
    for unit in units:
        prints[unit.name] = fingerprint(unit.name, unit.options, train_contents,
                                        [prints[i] for i in unit.inputs])
    return prints


def evaluation_of(detector: str) -> str:
    """The unit (and folder) that holds a detector's predictions of the test split."""
    return detector.replace("detectors/", "evaluations/", 1)


def _how_of(config: ExperimentConfig) -> dict[str, tuple[bool, float | None, float | None]]:
    """How each setting predicts the test split: (tta, nms, faint_percentile)."""
    return {s.name: (s.tta, s.nms, s.faint_percentile) for s in config.settings}


def _evaluation_name(detector: str, tta: bool, nms: float | None,
                     faint: float | None = None) -> str:
    """:func:`evaluation_of` a detector predicting with TTA, another NMS threshold and/or a
    faint cut."""
    return (evaluation_of(detector) + ("_tta" if tta else "")
            + (f"_nms-{nms:g}" if nms is not None else "")
            + (f"_faint-{faint:g}" if faint else ""))


def _evaluation_unit(detector: str, how: tuple[bool, float | None, float | None], k: Any,
                     seed: int) -> tuple[str, tuple[str, ...]]:
    """The name and inputs of the unit in which ``detector`` (of a setting with ``k``
    annotated images, at ``seed``) predicts the test split ``how`` (tta, nms, faint): the
    detector, and for the faint cut the annotated images it was tuned on (where the cut is
    measured)."""
    tta, nms, faint = how
    return (_evaluation_name(detector, tta, nms, faint),
            (detector,) + ((_subset_name(k, seed),) if faint else ()))


def _evaluation_options(config: ExperimentConfig, how: tuple[bool, float | None, float | None],
                        test_contents: str | None) -> list[Any]:
    """What an evaluation unit's fingerprint holds besides its inputs. The painting of
    contours is part of what an evaluation means: evaluations made before cells were filled
    half a pixel outward are redone, as are those whose tiles cut the label maps (cells on a
    border scored as two pieces)."""
    tta, nms, faint = how
    painting = {"outline_offset": HALF_PIXEL, "tile_units": "matched whole",
                **({"tta": True} if tta else {}),
                **({"nms": float(nms)} if nms is not None else {}),
                **({"faint_percentile": float(faint)} if faint else {})}
    return [test_contents, config.tiles, painting]


def _unit_record(m) -> dict[str, Any]:
    return {"thresholds": list(m.thresholds), "n_gt": m.n_gt, "n_pred": m.n_pred,
            "tp": list(m.tp), "sum_iou": list(m.sum_iou), "n_images": m.n_images}


def _matching(d: dict[str, Any]):
    from cellsynth.evaluate.matching import Matching

    return Matching(tuple(d["thresholds"]), d["n_gt"], d["n_pred"], tuple(d["tp"]),
                    tuple(d["sum_iou"]), d["n_images"])


def _curve(setting: Setting) -> str:
    """The learning curve a setting is a point of: settings that differ only in k (data,
    refiner variant, detector changes and TTA alike) share one."""
    return (setting.data + setting.variant + _suffix(setting.detector) + setting.ft_variant
            + (f" pseudo {setting.pseudo}" if setting.pseudo else "")
            + (f" x{setting.runs} runs" if setting.runs > 1 else "")
            + (" soup" if setting.soup else "")
            + (" tta" if setting.tta else "")
            + (f" nms {setting.nms:g}" if setting.nms is not None else "")
            + (f" faint {setting.faint_percentile:g}" if setting.faint_percentile else ""))


def _summarize(config: ExperimentConfig, per_cell: dict, detector_of: dict, state: RunState
               ) -> dict[str, Any]:
    from cellsynth.evaluate.stats import paired_bootstrap, summarize

    settings = {}
    for st in config.settings:
        per_seed = [per_cell[st.name, seed] for seed in config.seeds]  # [seed][run][unit]
        summary = summarize(per_seed)
        # the first run's detector per seed (the setting's own seed); "runs" lists them all
        detectors = [state.data[detector_of[st.name, seed][0]]["summary"]
                     for seed in config.seeds]
        settings[st.name] = {
            "data": st.data, "k": st.k, "curve": _curve(st), **summary,
            "detectors": [detector_of[st.name, seed][0] for seed in config.seeds],
            "val_f1": [d.get("best_val_f1") for d in detectors],
            "score_thresh": [d.get("score_thresh") for d in detectors],
            "steps": [d.get("steps") for d in detectors]}
        if st.data in _REFINED:  # steps its refiner reached: refine_minutes caps them by
            # wall time, so they (and all after) vary with the machine and its load
            settings[st.name]["refiner_steps"] = [
                state.data[_refiner_unit(st.variant, seed)]["summary"]["step"]
                for seed in config.seeds]
        if st.soup:  # its detector per seed is the average of these runs
            settings[st.name] |= {"soup": True, "runs": [
                state.data[detector_of[st.name, seed][0]]["summary"]["detectors"]
                for seed in config.seeds]}
        elif st.runs > 1:
            settings[st.name]["runs"] = [list(detector_of[st.name, seed])
                                         for seed in config.seeds]
    comparisons = {f"{a} - {b}": paired_bootstrap(
        [per_cell[a, s] for s in config.seeds], [per_cell[b, s] for s in config.seeds],
        n=config.bootstrap, seed=0) for a, b in config.compare}
    n_units = len(next(iter(per_cell.values()))[0])
    return {"name": config.name, "train": config.train, "test": config.test,
            "seeds": list(config.seeds), "val": config.val, "tiles": config.tiles,
            "n_test_units": n_units, "settings": settings, "comparisons": comparisons,
            "config": to_dict(config)}


def __getattr__(name: str) -> Any:
    """``estimate_experiment`` lives in :mod:`cellsynth.pipeline.experiment_estimate` (which
    imports this module: loaded on first use, as before)."""
    if name == "estimate_experiment":
        from cellsynth.pipeline.experiment_estimate import estimate_experiment

        return estimate_experiment
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
