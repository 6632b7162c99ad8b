"""``cellsynth experiment --estimate``: what an experiment's units still to run will cost on
this machine, priced from a few timed steps of each network (split from
:mod:`cellsynth.pipeline.experiment`, whose plan it reads; that module's names are looked
up there at call time, so what a test patches on it takes effect here)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from cellsynth.pipeline import experiment as _exp
from cellsynth.pipeline import layout
from cellsynth.pipeline.experiment import ExperimentConfig
from cellsynth.pipeline.run import RunState, content_fingerprint

__all__ = ["estimate_experiment"]


def estimate_experiment(config: ExperimentConfig, out: str | os.PathLike | None = None, *,
                        timer: Any = None, channels: int | None = None) -> list[Any]:
    """``cellsynth experiment --estimate``: the hours an experiment will take on this machine,
    per kind of work (refiners, refining, detectors, pseudo-labels, test predictions), from
    a few timed steps of each network (:class:`cellsynth.pipeline.estimate.Timer`) times the
    units still to run. Units ``out`` holds done with their fingerprint count 0 (for an
    evaluation recorded done, the test split's bytes are hashed for its fingerprint, as the
    experiment does; nothing else of the split is read but image sizes from headers). Real
    images are counted at their own pixel size. Nothing is written."""
    from cellsynth.pipeline.estimate import (
        _VAL_TILE,
        StageEstimate,
        Timer,
        _image_shapes,
        _minutes,
        tiled_pixels,
    )
    from cellsynth.segment.predict import DEFAULT_TILE

    timer = timer or Timer(config.device)
    s = config.simulate
    channels = channels or s.simulation().channels
    # the plan only names folders below out (nothing is written)
    units, detector_of = _exp._plan(config, Path(out) if out is not None else Path("."))
    by_name = {u.name: u for u in units}
    done: set[str] = set()
    state = RunState(Path(out)) if out is not None and (Path(out) / layout.STATE).is_file() \
        else None
    if state is not None:  # (the training split's bytes hashed only where work is recorded)
        train_contents = content_fingerprint(config.train)
        prints = _exp._fingerprints(units, train_contents)
        earlier = _exp._Earlier(config, Path(out))  # (what earlier versions recorded)
        done = {n for n, p in prints.items() if state.status(n, p) == "done"
                or (n in state.data and state.status(n, earlier.prints.get(n, "")) == "done")}
    train_shapes = _image_shapes(config.train, require_labels=True)  # as _draw indexes them

    def megapixels(shapes: list[tuple[int, int]], tile: int, balance: bool = False) -> float:
        return sum(tiled_pixels(h, w, tile, 96, balance=balance) for h, w in shapes) / 1e6

    def val_megapixels(val: str) -> float:
        unit = by_name[val]
        if unit.options and unit.options[0] == "subset":  # k (or the rest) real images
            return megapixels([train_shapes[i] for i in unit.options[1]], _VAL_TILE)
        return config.n_val * tiled_pixels(s.size, s.size, _VAL_TILE, 96) / 1e6

    kinds = {"refiner": "refiners", "refine": "refining", "detector": "detectors",
             "pseudo": "pseudo-labels"}
    def trained_as(detector: str):
        """The training config of a detector unit; a soup's is its first run's (its
        members share one architecture, and it predicts as fast as any of them)."""
        unit = by_name[detector]
        while unit.cost[0] == "soup":  # its inputs: its runs, then its val images
            unit = by_name[unit.inputs[0]]
        return unit.cost[1]

    # seconds, units to run, units done, units that may stop early (patience: a plateau)
    totals = {k: [0.0, 0, 0, 0] for k in kinds}
    for unit in units:
        if unit.cost is None:
            continue
        kind = unit.cost[0]
        if kind == "soup":  # averaging is free; choosing its threshold is one validation
            if unit.name not in done:
                totals["detector"][0] += val_megapixels(unit.inputs[-1]) * \
                    timer.detector_forward_per_mpx(trained_as(unit.name), channels)
            continue
        if unit.name in done:
            totals[kind][2] += 1
            continue
        if kind == "detector":
            train, val = unit.cost[1], unit.cost[2]
            mpx = val_megapixels(val)
            seconds = (train.steps * timer.detector_step(train, channels)
                       + math.ceil(train.steps / train.val_every) * mpx
                       * timer.detector_forward_per_mpx(train, channels))
            totals[kind][3] += train.patience is not None
        elif kind == "refiner":
            refine = unit.cost[1]
            seconds = refine.steps * timer.refiner_step(refine, channels)
            if config.refine_minutes is not None:  # training stops at the time cap
                seconds = min(seconds, 60.0 * config.refine_minutes)
            if refine.consistency > 0:
                seconds += timer.judge_training(refine, channels)
        elif kind == "refine":
            n = config.n_val if unit.cost[2].startswith("sim_val") else s.n
            seconds = n * timer.refiner_images(unit.cost[1], channels, s.size)
        else:  # pseudo: the training images not drawn, 8 views each
            shapes = [train_shapes[i] for i in unit.cost[1]]
            mpx = megapixels(shapes, DEFAULT_TILE, True)
            teacher = trained_as(unit.inputs[0])
            seconds = 8 * mpx * timer.detector_forward_per_mpx(teacher, channels) + sum(
                timer.tta_merge(h, w) for h, w in shapes)
        totals[kind][0] += seconds
        totals[kind][1] += 1
    test_shapes = _image_shapes(config.test)  # headers only: sizes, no pixels
    test_mpx = megapixels(test_shapes, DEFAULT_TILE, balance=True)
    how_of = _exp._how_of(config)
    k_of = {s.name: s.k for s in config.settings}
    evaluations = {}  # name -> (detector, tta, inputs), as the experiment names them
    for (setting, seed), runs in detector_of.items():
        for detector in runs:
            name, inputs = _exp._evaluation_unit(detector, how_of[setting], k_of[setting],
                                                 seed)
            evaluations[name] = (detector, how_of[setting], inputs)
    eval_seconds, eval_runs, eval_done = 0.0, 0, 0
    test_contents = None
    for name, (detector, how, inputs) in sorted(evaluations.items()):
        if state is not None and state.data.get(name, {}).get("done"):
            # done with the same options and detector (a changed tiles or a retrained
            # detector is run again); the fingerprint holds the test split's bytes, hashed
            # here only where an evaluation is recorded done
            if test_contents is None:
                test_contents = content_fingerprint(config.test)
            if "done" in (state.status(name, _exp._evaluation_print(
                    config, name, how, inputs, test_contents, train_contents, prints)),
                    state.status(name, earlier.evaluation(name, how, inputs))):
                eval_done += 1
                continue
        train = trained_as(detector)
        eval_seconds += (8 if how[0] else 1) * test_mpx * timer.detector_forward_per_mpx(
            train, channels)
        if how[0]:  # with tta, each test image's 8 views merged into its cells
            eval_seconds += sum(timer.tta_merge(h, w) for h, w in test_shapes)
        eval_runs += 1
    out_list = []
    for kind, label in kinds.items():
        seconds, runs, finished, early = totals[kind]
        if runs or finished:
            detail = f"{runs} to run" + (f", {finished} done" if finished else "")
            if runs:
                detail += f", {_minutes(seconds / runs)} each on average"
            if early:
                detail += (f"; {early} may stop earlier at a plateau (patience), counted "
                           f"with all their steps")
            out_list.append(StageEstimate(label, seconds, detail))
    out_list.append(StageEstimate(
        "test predictions", eval_seconds,
        f"{eval_runs} to run" + (f", {eval_done} done" if eval_done else "")
        + f", {test_mpx:.2f} MP of test images each (x8 with tta)"))
    out_list.append(StageEstimate("simulations, copies", None, "not timed"))
    return out_list
