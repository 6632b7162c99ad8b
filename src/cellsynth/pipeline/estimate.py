"""``cellsynth run CONFIG --out RUN --estimate``: how long a run will take on *this* machine,
before it starts.

A run's time is its networks' training and prediction, and a step's cost differs ~12x between
CPUs: a CpnSlimU22 step at 256², batch 4 takes 0.64 s on a Xeon with AMX (bf16) and 7.75 s
on an AVX2-only EPYC (fp32). So the estimate does not quote a table; it times a few steps of
each network the config trains, with its crop, batch and the precision ``auto`` picks here, on
synthetic inputs (a step's cost does not depend on what the pixels show), and multiplies:

- the refiner's steps (and its semantic judge's, with ``consistency``), then the refining of
  every simulated image;
- each detector's steps (pretraining, fine-tuning, self-training) plus its validations, a
  forward pass over the validation images' tiles every ``val_every`` steps;
- prediction: loading the detector, then a forward pass over the tiles `predict` cuts from
  the predicted images at the working pixel size (``predict.tile`` or its default, balanced),
  8 times with ``tta``, and 8 times over the unannotated images for pseudo labels; a forward
  pass is the network and the decoding, refinement and NMS of its proposals, on stand-in
  cells. The 8 views of an image are merged into its cells (stand-in cells again), and each
  predicted image is then painted and written at its own pixels (labels, detections CSV,
  overlay). Blank tiles of glass are counted as predicted (an upper bound
  for sections);
- the simulator fit (``simulate.fit_from``): its batches of simulated images
  (:func:`cellsynth.simulate.fit.search_plan`), each rendered and measured, the real images
  measured once and the preview's renders, from a few images rendered and measured here.

Not timed (seconds to a few minutes each): simulation, copying and rescaling, choosing a
refiner step, the count threshold, evaluation, realism and the report; neither are
measuring the faint cut, a fit's extra batch where its search runs
away, or writing pseudo labels. A stage that RUN holds already, done with an unchanged
fingerprint, counts 0. Nothing is written.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cellsynth.pipeline import layout
from cellsynth.pipeline.config import PipelineConfig
from cellsynth.pipeline.timing import Timer, blob_labels

__all__ = ["StageEstimate", "estimate", "format_estimate", "Timer", "blob_labels",
           "tiled_pixels"]

_VAL_TILE = 512  # validation tiles (trainer.validate)


@dataclass(frozen=True)
class StageEstimate:
    stage: str
    seconds: float | None  # None: not timed (cheap); 0 for a stage RUN holds already
    detail: str


def tiled_pixels(height: int, width: int, tile: int, overlap: int, *,
                 balance: bool = False) -> int:
    """Pixels a tiled forward pass computes over an image (tiles overlap; small images are
    one tile of their own size). ``balance``: tiles shrunk as prediction shrinks them
    (:func:`cellsynth.segment.tiles.balanced_tile`)."""
    from cellsynth.segment.tiles import balanced_tile, tile_origins

    if balance:
        tile = max(balanced_tile(height, tile, overlap), balanced_tile(width, tile, overlap))
    ys, xs = tile_origins(height, tile, overlap), tile_origins(width, tile, overlap)
    return len(ys) * min(tile, height) * len(xs) * min(tile, width)


def _image_shapes(folder: str | os.PathLike | None, chosen: list | None = None, *,
                  require_labels: bool = False) -> list[tuple[int, int]]:
    """(height, width) of every image of a folder (headers only where the format allows), in
    the folder's order; ``chosen``: only these ids."""
    from cellsynth.io.datasets import load_dataset
    from cellsynth.io.sections import image_shape

    if folder is None:
        return []
    ids = {str(i) for i in chosen} if chosen is not None else None
    return [image_shape(s.image_path)
            for s in load_dataset(folder, require_labels=require_labels)
            if ids is None or s.id in ids]


def _working_shapes(config: PipelineConfig, role: str) -> list[tuple[int, int]]:
    """(height, width) of each image of a real-data role at the working pixel size."""
    from cellsynth.pipeline.staging import _real_scale

    scale = _real_scale(config)
    return [(max(1, round(h * scale)), max(1, round(w * scale)))
            for h, w in _image_shapes(getattr(config.real, role), config.real.select.get(role))]


def _megapixels(config: PipelineConfig, role: str, tile: int, overlap: int, *,
                balance: bool = False) -> float:
    """Tiled megapixels of a real-data role at the working pixel size."""
    return sum(tiled_pixels(h, w, tile, overlap, balance=balance)
               for h, w in _working_shapes(config, role)) / 1e6


def _synthetic_val_megapixels(config: PipelineConfig) -> float:
    size = config.simulate.size
    return config.simulate.n_val * tiled_pixels(size, size, _VAL_TILE, 96) / 1e6


def _channels(config: PipelineConfig) -> int:
    from cellsynth.pipeline.staging import _sim_config

    return _sim_config(config).channels


def _minutes(seconds: float) -> str:
    if seconds >= 3 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def estimate(config: PipelineConfig, out: str | os.PathLike | None = None, *,
             timer: Timer | None = None, channels: int | None = None,
             reuse: list[str | os.PathLike] | tuple = ()) -> list[StageEstimate]:
    """Per stage of ``config``'s plan, the seconds it is expected to take here (see the
    module's docstring for what is timed and what is not); ``reuse``: the earlier runs
    ``run --reuse`` takes finished stages from (they count 0)."""
    from cellsynth.pipeline import stages as st
    from cellsynth.pipeline.reuse import reuse_plan, reuse_sources
    from cellsynth.pipeline.run import RunState

    timer = timer or Timer(config.device)
    channels = channels or _channels(config)
    plan = st.plan(config)
    state = RunState(Path(out)) if out is not None else None  # (state.json read once)
    done = _done_stages(config, state, plan)
    steps_done = _steps_done(config, state, plan, Path(out) if out is not None else None)
    reused = (reuse_plan(config, plan, Path(out), reuse_sources(reuse, Path(out)), state.data)
              if reuse and state is not None else {})

    def val_mpx(pretraining: bool = False) -> float:
        """What a detector validates on: pretraining, the held-out synthetic images where
        the run gives it them (stages._train); the rest, the annotated real ones."""
        if pretraining and st._synthetic_val(config):
            return _synthetic_val_megapixels(config)
        return _megapixels(config, "val", _VAL_TILE, 96) if config.real.val else 0.0

    def detector(train: Any, val_megapixels: float) -> tuple[float, str]:
        step = timer.detector_step(train, channels)
        validations = math.ceil(train.steps / train.val_every) if val_megapixels else 0
        val = validations * val_megapixels * timer.detector_forward_per_mpx(train, channels)
        return (train.steps * step + val,
                f"{train.steps} steps x {step:.2f} s ({train.model}, {train.crop}² x "
                f"{train.batch})" + (f" + {validations} validations over "
                                     f"{val_megapixels:.2f} MP, {_minutes(val)}"
                                     if validations else ""))

    def predict(role: str, views: int, precision: str = "auto", *, writes: bool = False
                ) -> tuple[float, str]:
        train = config.finetune if config.real.train else config.pretrain
        from cellsynth.segment.folders import INT8_SIDE, INT8_WINDOWS
        from cellsynth.segment.predict import DEFAULT_TILE

        # the tiles `predict` cuts: predict.tile or its default, shrunk to balanced ones
        tile = config.predict.tile or max(train.crop, DEFAULT_TILE)
        mpx = _megapixels(config, role, tile, config.predict.overlap, balance=True)
        net = replace(train, precision=precision)
        load = timer.detector_load(train, channels)
        seconds = load + mpx * views * timer.detector_forward_per_mpx(net, channels)
        detail = f"{mpx:.2f} MP of {role} images x {views} view(s)"
        if views > 1:  # test-time augmentation: each image's views merged into its cells
            merge = sum(timer.tta_merge(h, w) for h, w in _working_shapes(config, role))
            seconds += merge
            detail += f", merged ({_minutes(merge)})"
        if writes:
            written, n = _prediction_writes(config, role, timer, channels)
            seconds += written
            detail += f" + {n} image(s) painted and written, {_minutes(written)}"
        if precision == "int8":
            # quantize_detector: its windows forwarded in fp32 twice (calibration,
            # agreement) and in int8 once
            windows = min(mpx, INT8_WINDOWS * INT8_SIDE ** 2 / 1e6)
            calibration = windows * (2 * timer.detector_forward_per_mpx(
                replace(train, precision="fp32"), channels)
                + timer.detector_forward_per_mpx(net, channels))
            seconds += calibration
            detail += f", int8 (+ its calibration, {_minutes(calibration)})"
        return seconds, detail

    results = []
    for stage in plan:
        name = stage.name
        if name in done:
            results.append(StageEstimate(name, 0.0, "done in RUN already"))
            continue
        if name in reused:
            results.append(StageEstimate(name, 0.0, f"reused from {reused[name][0]}"))
            continue
        seconds, detail = None, "not timed (seconds to minutes)"
        if name == layout.REFINER:
            refine = config.refine
            step = timer.refiner_step(refine, channels)
            seconds = refine.steps * step
            detail = f"{refine.steps} steps x {step:.2f} s ({refine.crop}² x {refine.batch})"
            if refine.consistency > 0:
                judge = timer.judge_training(refine, channels)
                seconds += judge
                detail += f" + its semantic judge, {_minutes(judge)}"
        elif name in (layout.REFINED, layout.REFINED_VAL):
            n = config.simulate.n if name == layout.REFINED else config.simulate.n_val
            each = timer.refiner_images(config.refine, channels, config.simulate.size)
            seconds = n * each
            detail = f"{n} images x {each:.2f} s ({config.simulate.size}²)"
        elif name == layout.PRETRAIN:
            seconds, detail = detector(config.pretrain, val_mpx(pretraining=True))
        elif name == layout.FINETUNE:
            seconds, detail = detector(config.finetune, val_mpx())
        elif name == layout.FINETUNE_RUNS:
            from cellsynth.hardware import torch_threads
            from cellsynth.segment.parallel import parallel_plan

            runs = config.soup - 1
            processes, each = parallel_plan(runs, config.device)
            with torch_threads(each):  # (side by side, each run has its share of the cores)
                seconds, detail = detector(config.finetune, val_mpx())
            seconds *= math.ceil(runs / processes)
            detail = f"{runs} x ({detail})" + (
                f", {processes} at a time on {each} thread(s) each" if processes > 1 else "")
        elif name == layout.SELFTRAIN:
            seconds, detail = detector(replace(config.finetune, replay=config.selftrain.pseudo),
                                       val_mpx())
        elif name == layout.PSEUDO:
            seconds, detail = predict("unlabeled", 8)
        elif name == layout.PREDICT:
            seconds, detail = predict(st._predict_images(config),
                                      8 if config.predict.tta else 1, config.predict.precision,
                                      writes=True)
        elif name == layout.FIT:
            seconds, detail = _fit_seconds(config, timer)
        total = {layout.REFINER: config.refine.steps, layout.PRETRAIN: config.pretrain.steps,
                 layout.FINETUNE: config.finetune.steps}.get(name)
        if seconds is not None and total and steps_done.get(name):
            left = max(0, total - steps_done[name]) / total  # (run resumes it there)
            seconds *= left
            detail += f"; resumed at step {steps_done[name]}, {left:.0%} left"
        results.append(StageEstimate(name, seconds, detail))
    return results


def _prediction_writes(config: PipelineConfig, role: str, timer: Any, channels: int
                       ) -> tuple[float, int]:
    """(seconds to paint and write every predicted image of a real-data role, their number):
    at the images' own pixels (stages._predict has the detector draw its cells there, even
    where it works at another pixel size). Timed once, at the images' median size, and scaled
    by each image's pixels."""
    shapes = _image_shapes(getattr(config.real, role), config.real.select.get(role))
    if not shapes:
        return 0.0, 0
    h, w = sorted(shapes, key=lambda s: s[0] * s[1])[len(shapes) // 2]
    per_pixel = timer.prediction_writes(h, w, channels) / (h * w)
    return per_pixel * sum(a * b for a, b in shapes), len(shapes)


def _fit_seconds(config: PipelineConfig, timer: Any) -> tuple[float, str]:
    """The simulator fit: its batches of simulated images rendered and measured, the real
    images measured once, the preview's renders (fitted and base beside up to 3 real images,
    at most 256² each)."""
    from cellsynth.io.datasets import load_dataset
    from cellsynth.pipeline.staging import _sim_config
    from cellsynth.simulate.fit import measured_shapes, search_plan

    folder = getattr(config.real, config.simulate.fit_role)
    base = _sim_config(config)  # the preset the fit starts from, at the images' pixel size
    px = config.real.pixel_size_um or load_dataset(folder).pixel_size_um or base.pixel_size_um
    base = replace(base, pixel_size_um=px)
    shapes = measured_shapes(_image_shapes(folder))
    plan = search_plan(shapes, base)
    batches = plan.batches + (config.simulate.fit_stains == "measured")  # (+ the base's)
    render, measure = timer.fit_images(base, plan.side, plan.radii, seed=config.seed)
    pixels = plan.side ** 2
    real = sum(h * w for h, w in shapes) * measure / pixels
    preview = 2 * min(3, len(shapes)) * render * min(256, *(min(s) for s in shapes)) ** 2 \
        / pixels
    seconds = batches * plan.n_sim * (render + measure) + real + preview
    return seconds, (f"{batches} x {plan.n_sim} images of {plan.side}² simulated and measured "
                     f"x {render + measure:.2f} s + {len(shapes)} real image(s) measured, "
                     f"{_minutes(real)}")


def _steps_done(config: PipelineConfig, state: Any, plan: list, out: Path | None
                ) -> dict[str, int]:
    """Training stages the run folder holds interrupted with the fingerprint this config
    gives them (run resumes them from their last checkpoint): {name: the last step their
    log.jsonl records} (the checkpoint is at or a little before it)."""
    from cellsynth.pipeline.run import stage_fingerprints

    if state is None or not state.data or out is None:
        return {}
    found = {}
    for name, print_ in stage_fingerprints(config, plan, state.data).items():
        log = out / name / layout.LOG
        if state.status(name, print_) != "interrupted" or not log.is_file():
            continue
        steps = []
        for line in log.read_text().splitlines():
            try:
                steps.append(int(json.loads(line).get("step", 0)))
            except (ValueError, AttributeError, TypeError):
                continue  # (a line cut by the kill)
        if steps:
            found[name] = int(max(steps))
    return found


def _done_stages(config: PipelineConfig, state: Any, plan: list) -> set[str]:
    """Stages the run folder of ``state`` (a RunState, or None) holds done with the
    fingerprint this config gives them (as run skips)."""
    from cellsynth.pipeline.run import stage_fingerprints

    if state is None or not state.data:
        return set()
    return {name for name, print_ in stage_fingerprints(config, plan, state.data).items()
            if state.status(name, print_) == "done"}


def format_estimate(estimates: list[StageEstimate], *, machine: str) -> str:
    """The lines ``cellsynth run --estimate`` prints."""
    width = max(len(e.stage) for e in estimates)
    lines = [f"estimated on this machine ({machine}):"]
    for e in estimates:
        when = "-" if e.seconds is None else _minutes(e.seconds)
        lines.append(f"  {e.stage:<{width}}  {when:>9}  {e.detail}")
    total = sum(e.seconds for e in estimates if e.seconds is not None)
    lines.append(f"  {'total':<{width}}  {_minutes(total):>9}  of the timed stages; the others "
                 f"add seconds to minutes")
    return "\n".join(lines)
