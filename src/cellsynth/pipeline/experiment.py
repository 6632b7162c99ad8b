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

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cellsynth.config import save_yaml, to_dict
from cellsynth.errors import CellsynthError
from cellsynth.io.datasets import load_dataset
from cellsynth.io.files import write_json
from cellsynth.pipeline import layout
from cellsynth.pipeline.experiment_config import (  # (re-exported: split from here)
    _REFINED,
    ExperimentConfig,
    Setting,
    _suffix,
    check_experiment,
    load_experiment_config,
    reproducibility_notes,
    select_settings,
    subset_tag,
)
from cellsynth.pipeline.experiment_plan import (  # _plan, _Unit: (re-exported: split from here)
    _plan,
    _refiner_unit,
    _subset_name,
    _Unit,
)
from cellsynth.pipeline.experiment_results import _log_k_axis as _log_k_axis  # (re-exported)
from cellsynth.pipeline.experiment_results import _plot, _write_table
from cellsynth.pipeline.experiment_results import k_position as k_position  # (re-exported)
from cellsynth.pipeline.run import (
    RunState,
    claim,
    content_fingerprint,
    fingerprint,
    refuse_foreign_folder,
    timed,
)
from cellsynth.segment.parallel import parallel_plan
from cellsynth.segment.tiles import HALF_PIXEL

__all__ = ["Setting", "ExperimentConfig", "load_experiment_config", "select_settings",
           "run_experiment", "subset_tag"]

_POLL_SECONDS = 2.0  # how often the side-by-side scheduler looks at its processes


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


class _Earlier:
    """The fingerprints versions before 2026-12 gave an experiment's units (the real data's
    contents hashed the older way: ``content_fingerprint(legacy=True)``), each computed when
    first asked: only a folder with records that do not match now needs them."""

    def __init__(self, config: ExperimentConfig, out: Path):
        self.config, self.out = config, out

    @functools.cached_property
    def train(self) -> str | None:
        return content_fingerprint(self.config.train, legacy=True)

    @functools.cached_property
    def prints(self) -> dict[str, str]:
        return _fingerprints(_plan(self.config, self.out, legacy=True)[0], self.train)

    @functools.cached_property
    def test(self) -> str | None:
        return content_fingerprint(self.config.test, legacy=True)

    def evaluation(self, name: str, how: tuple[bool, float | None, float | None],
                   inputs: tuple[str, ...]) -> str:
        """An evaluation unit's (:func:`_evaluation_print`)."""
        return _evaluation_print(self.config, name, how, inputs, self.test, self.train,
                                 self.prints)


def _evaluation_print(config: ExperimentConfig, name: str,
                      how: tuple[bool, float | None, float | None], inputs: tuple[str, ...],
                      test_contents: str | None, train_contents: str | None,
                      prints: dict[str, str]) -> str:
    """The fingerprint of the evaluation unit ``name`` (:func:`_evaluation_unit`) as
    :func:`_execute` takes it."""
    return fingerprint(name, _evaluation_options(config, how, test_contents), train_contents,
                       [prints[i] for i in inputs])


def _adopt(state: RunState, name: str, now: str, earlier: Callable[[], str | None]) -> None:
    """Re-key the state.json entry of ``name`` to ``now`` where it holds the fingerprint an
    earlier version gave it (``earlier()``): the data is still what that version hashed, so
    what it made stays, and from now on is keyed as this version keys it."""
    entry = state.data.get(name)
    if entry is not None and entry["fingerprint"] != now and entry["fingerprint"] == earlier():
        state.amend(name, fingerprint=now)


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
    refuse_foreign_folder(out, "experiment", "its own folders and results")
    check_experiment(config)  # lists the test folder; its pixels are read in phase 2 only
    for line in reproducibility_notes(config):
        log(line)
    out.mkdir(parents=True, exist_ok=True)
    if subset is None or not (out / layout.CONFIG).exists():
        save_yaml(out / layout.CONFIG, config)
    state = RunState(out)
    units, detector_of = _plan(config, out)
    train_contents = content_fingerprint(config.train)
    # (each unit's, as _execute takes it again when it reaches the unit)
    fingerprints = _fingerprints(units, train_contents)
    earlier = _Earlier(config, out)
    for name, print_ in fingerprints.items():
        _adopt(state, name, print_, lambda name=name: earlier.prints.get(name))

    def execute(unit: _Unit, index: int, total: int) -> None:
        _execute(unit, fingerprints, out, state, train_contents, log, index, total)

    # phase 1: everything that trains or chooses; the test split is not opened
    processes, threads = (1, None) if processes <= 1 else parallel_plan(
        processes, config.device)
    if processes > 1:
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
            _adopt(state, name, _evaluation_print(config, name, how, inputs, test_contents,
                                                  train_contents, fingerprints),
                   lambda name=name, how=how, inputs=inputs: earlier.evaluation(name, how,
                                                                                inputs))
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
    others = _other_seeds(state.data, config.seeds)
    if others and subset is None:  # (results.json had them from a --seeds run: now not)
        log(f"note: {out} also holds units of seed(s) {', '.join(map(str, others))}, not in "
            f"this run's seeds ({', '.join(map(str, config.seeds))}), so {json_name} leaves "
            f"them out; pool them with --seeds "
            f"{' '.join(map(str, sorted(set(config.seeds) | set(others))))}")
    return results


def _other_seeds(state: dict[str, Any], seeds: tuple[int, ...]) -> list[int]:
    """Seeds whose finished units a folder's state holds (names end in ``_s<seed>`` or
    ``/s<seed>``) outside ``seeds``."""
    import re

    found = {int(m.group(1)) for name, entry in state.items() if entry.get("done")
             and (m := re.search(r"[_/]s(\d+)$", name))}
    return sorted(found - set(seeds))


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
