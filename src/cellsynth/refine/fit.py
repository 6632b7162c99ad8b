"""Train a refiner into a run folder, resumable exactly after a kill.

::

    RUN/config.yaml          resolved RefineConfig
    RUN/run.json             data folders, device, precision, notes (rescaling, channels)
    RUN/last.pt              latest checkpoint (atomic), see trainer.save_checkpoint
    RUN/log.jsonl            one JSON object of losses per logged step
    RUN/samples/step_XXXXXX.png   simulated | refined | refined + label contours | real
    RUN/snapshots/step_XXXXXX.pt  the generator every checkpoint_every steps and at the end
                             (trainer.save_snapshot; loads with load_refiner)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellsynth.config import save_yaml, to_dict
from cellsynth.errors import ConfigError
from cellsynth.hardware import ThreadGovernor, ThreadHistory, resolve_device
from cellsynth.io.files import (
    JsonLog,
    check_resume_config,
    check_run_dir,
    discard_replaced_run,
    prepare_run_dir,
    restore_replaced_run,
    versions,
    write_json,
)
from cellsynth.io.images import to_uint8, write_image
from cellsynth.pipeline import layout
from cellsynth.refine.config import RefineConfig
from cellsynth.refine.consistency import train_judge
from cellsynth.refine.data import RealCrops, SimulatedCrops
from cellsynth.refine.spade import semantic_map
from cellsynth.refine.trainer import (
    RefinerState,
    load_checkpoint,
    new_state,
    read_checkpoint,
    save_checkpoint,
    save_snapshot,
    train_step,
)
from cellsynth.signals import stop_between_steps
from cellsynth.viz import contour_overlay, image_grid

__all__ = ["fit", "CHECKPOINT", "LOG"]

CHECKPOINT = layout.LAST
LOG = layout.LOG
logger = logging.getLogger(__name__)
_SAMPLE_ROWS = 4
# options that may change when a run is resumed; anything else would change the experiment
RESUMABLE = frozenset({"steps", "log_every", "sample_every", "checkpoint_every"})


CHECKPOINT_SECONDS = 600.0  # also checkpoint when the last one is this old
_STATS_CROPS = 64  # real crops that set the discriminator's input standardisation


def _to_image(tensor: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [-1, 1] -> (H, W) or (H, W, 3) uint8."""
    array = ((tensor.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()
    return to_uint8(array[..., 0] if array.shape[-1] == 1 else array)


class _Samples:
    """Fixed simulated and real crops (own RNG, so training randomness is untouched)."""

    def __init__(self, sim: SimulatedCrops, real: RealCrops, seed: int) -> None:
        rng = np.random.default_rng([seed, 1])
        self.sim, self.labels = sim.sample(_SAMPLE_ROWS, rng)
        self.real = real.sample(_SAMPLE_ROWS, rng)
        self.seed = seed

    def write(self, path: Path, state: RefinerState) -> None:
        segmap = semantic_map(self.labels, boundary_width=state.config.boundary_width,
                              class_map=state.config.class_map)
        noise = torch.Generator(state.device).manual_seed(self.seed)
        with torch.no_grad(), state.autocast():
            refined = state.generator(self.sim.to(state.device), segmap.to(state.device),
                                      generator=noise)
        tiles = []
        for i in range(_SAMPLE_ROWS):
            ref = _to_image(refined[i])
            cells = self.labels[i].clamp(min=0).numpy()  # a scene layout's classes are < 0
            tiles += [_to_image(self.sim[i]), ref, contour_overlay(ref, cells),
                      _to_image(self.real[i])]
        path.parent.mkdir(exist_ok=True)
        write_image(path, image_grid(tiles, columns=4))


def fit(config: RefineConfig, sim_dir: str | os.PathLike, real_dir: str | os.PathLike,
        out_dir: str | os.PathLike, *, resume: bool = False, force: bool = False,
        device: str = "cpu", max_minutes: float | None = None,
        progress: bool = True) -> dict[str, Any]:
    """Train a SPADE refiner on simulated (labelled) and real (unlabeled) images.

    Parameters
    ----------
    config : the run's settings; on ``resume`` only ``steps`` and the logging intervals may
        differ from the saved config (:class:`ConfigError` otherwise).
    sim_dir : simulated dataset folder (images/, labels/, meta.json with pixel_size_um).
    real_dir : folder of real images, any size, RGB or gray, 8/16-bit; labels are ignored.
    out_dir : run folder; must be empty unless ``resume`` or ``force``.
    device : ``"cpu"`` or ``"cuda"``.
    max_minutes : stop (with a checkpoint) once the training steps have taken this much
        wall time in all, counting the runs this one resumes (a run killed and resumed
        gets no more time than one left alone).

    Returns
    -------
    summary : dict with ``step``, ``seconds``, ``steps_per_s`` and the last ``losses``.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    # every input is checked before the run folder is touched (a --force run that cannot
    # start must leave the old run as it was)
    resume = check_run_dir(out, resume=resume, force=force, checkpoint=CHECKPOINT,
                           inputs=(sim_dir, real_dir))
    resolve_device(device)
    if resume:
        saved = read_checkpoint(out / CHECKPOINT)
        check_resume_config(saved["config"], to_dict(config), to_dict(RefineConfig()),
                            RESUMABLE, out / CHECKPOINT)
    sim = SimulatedCrops(sim_dir, config.crop, normalization=config.normalization,
                         class_map=config.class_map)
    real = RealCrops(real_dir, config.crop, sim.channels, sim_pixel_size_um=sim.pixel_size_um,
                     real_pixel_size_um=config.real_pixel_size_um,
                     normalization=config.normalization, channel=config.channel)
    for note in real.notes:
        warnings.warn(note, stacklevel=2)
    if resume:
        state = load_checkpoint(out / CHECKPOINT, device)
        if state.channels != sim.channels:
            raise ConfigError(f"{out / CHECKPOINT}: refiner has {state.channels} channel(s), "
                              f"the simulation {sim_dir} has {sim.channels}")
        state.config = config
    else:
        state = new_state(config, sim.channels, device)
        if config.d_input_norm:  # own RNG: the training draws stay as they were
            stats_rng = np.random.default_rng([config.seed, 2])
            state.discriminator.set_input_stats(real.sample(_STATS_CROPS, stats_rng))
        if config.consistency > 0:  # own RNGs too; saved with every checkpoint
            judge_started = time.perf_counter()
            state.judge = train_judge(sim.sample, sim.channels, steps=config.consistency_steps,
                                      boundary_width=config.boundary_width, seed=config.seed,
                                      device=state.device)
            logger.info("semantic judge trained in %.0f s",
                        time.perf_counter() - judge_started)
    prepare_run_dir(out, resume=resume, force=force, checkpoint=CHECKPOINT)
    threads = ThreadGovernor()
    save_yaml(out / layout.CONFIG, config)
    info_path = out / layout.RUN_INFO
    first = json.loads(info_path.read_text()) if resume and info_path.is_file() else {}
    history = ThreadHistory(first.get("torch_threads"), state.step, threads.threads)
    info = {
        **versions(), "stage": "fit-refiner",
        "sim": str(Path(sim_dir).resolve()), "real": str(Path(real_dir).resolve()),
        "device": str(state.device), "precision": "bf16" if state.bf16 else "fp32",
        "channels": sim.channels, "sim_pixel_size_um": sim.pixel_size_um,
        "n_sim": len(sim.images), "n_real": len(real.images), "notes": real.notes,
        "torch_threads": history.entries,  # a list that grows as the count changes
        # True once it ends (its steps, or its time budget): a refiner used while this is
        # False was stopped part-way (load_refiner says so)
        "finished": False,
    }
    write_json(info_path, info)
    samples = _Samples(sim, real, config.seed)
    started = time.perf_counter()
    first_step, losses, trained_before = state.step, {}, state.seconds
    budget = None if max_minutes is None else 60.0 * max_minutes
    bar = tqdm(total=config.steps, initial=state.step, desc="fit-refiner", unit="step",
               disable=not progress)
    saved_at = time.monotonic()

    def save() -> None:
        nonlocal saved_at
        save_checkpoint(out / CHECKPOINT, state)
        saved_at = time.monotonic()
        discard_replaced_run(out)  # the new run has something to keep now

    try:
        log = JsonLog(out / LOG, keep_until=state.step if resume else None)
        with bar, contextlib.closing(log), stop_between_steps() as stop:
            while state.step < config.steps and (budget is None or state.seconds <= budget):
                if history.update(state.step, threads.tick()):
                    write_json(info_path, info)  # results depend on the thread count
                sim_crops, labels = sim.sample(config.batch, state.crop_rng)
                real_crops = real.sample(config.batch * config.d_steps, state.crop_rng)
                losses = train_step(state, sim_crops, labels, real_crops)
                step = state.step
                elapsed = time.perf_counter() - started
                state.seconds = trained_before + elapsed
                if step % config.log_every == 0 or step == config.steps:
                    log.write(step=step, **{k: round(v, 6) for k, v in losses.items()},
                              seconds=round(state.seconds, 2))
                    bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()}, refresh=False)
                bar.update(1)
                out_of_time = budget is not None and state.seconds > budget
                if step % config.sample_every == 0 or step == config.steps or out_of_time:
                    samples.write(out / layout.SAMPLES / f"step_{step:06d}.png", state)
                overdue = time.monotonic() - saved_at > CHECKPOINT_SECONDS
                scheduled = step % config.checkpoint_every == 0 or step == config.steps
                if scheduled:
                    save_snapshot(out / layout.SNAPSHOTS / f"step_{step:06d}.pt", state)
                if scheduled or out_of_time or overdue or stop:
                    save()
                if stop:
                    logger.warning("stopped by %s at step %d; checkpoint saved",
                                   stop.name, step)
                    raise KeyboardInterrupt
                if out_of_time:
                    break
    except BaseException:
        restore_replaced_run(out)  # if the new run has nothing to keep
        raise
    seconds = time.perf_counter() - started
    done = state.step - first_step
    write_json(info_path, {**info, "finished": True, "steps_done": state.step})
    return {"step": state.step, "seconds": seconds, "steps_per_s": done / max(seconds, 1e-9),
            "losses": losses, "bf16": state.bf16}
