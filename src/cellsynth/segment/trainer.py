"""Train (or fine-tune) a CPN on dataset folders: resumable, validated, DDP-ready.

The loop reads top to bottom: sample augmented crops -> CPN targets -> loss -> Adam step;
every ``val_every`` steps predict the validation images, pick the score threshold with the
best F1@0.5 there, and keep the best checkpoint. Checkpoints are atomic. last.pt holds the
model, optimizer, scheduler, step, numpy and torch RNG states and the config, so ``resume``
continues exactly; best.pt holds what predicting and fine-tuning need (weights, config,
threshold), not the optimizer's state, which is twice the size of the weights. Under
``torchrun --nproc_per_node=N`` the same code trains with DDP (gloo on CPU, nccl on GPU);
rank 0 validates and writes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellsynth.config import save_yaml, to_dict
from cellsynth.errors import CellsynthError, ConfigError
from cellsynth.hardware import (
    ThreadGovernor,
    ThreadHistory,
    announce,
    choose_precision,
    resolve_device,
)
from cellsynth.io.files import (
    JsonLog,
    check_resume_config,
    check_run_dir,
    discard_replaced_run,
    prepare_run_dir,
    restore_replaced_run,
    run_info,
    versions,
    write_json,
    write_with,
)
from cellsynth.pipeline import layout
from cellsynth.segment.batches import _batches
from cellsynth.segment.data import CropSampler, LabeledImage, load_labeled
from cellsynth.segment.train_config import (
    ARCHITECTURE,
    RESUMABLE,
    THRESHOLD_GRID,
    LossWeights,
    TrainConfig,
    load_train_config,
    model_spec,
    network_differences,
)
from cellsynth.signals import stop_between_steps

logger = logging.getLogger(__name__)

# (the options and the batches have modules of their own; their names stay importable here)
__all__ = ["TrainConfig", "LossWeights", "train", "THRESHOLD_GRID", "ARCHITECTURE",
           "RESUMABLE", "network_differences", "model_spec", "load_train_config", "validate",
           "file_sha256"]

CHECKPOINT_SECONDS = 600.0  # also checkpoint when the last one is this old (single process)
def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (a checkpoint's identity)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _dist() -> tuple[int, int]:
    """(rank, world size); initialises torch.distributed under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    return (torch.distributed.get_rank() if world > 1 else 0), world


def _save(path: Path, state: dict[str, Any]) -> None:
    write_with(path, lambda tmp: torch.save(state, tmp))


class _Average:
    """Exponential moving average of a model's weights and BatchNorm statistics (Polyak
    averaging): ``model`` is a second CPN of the same spec and precision that trails the
    trained one (``decay`` per step; integer buffers are copied)."""

    def __init__(self, spec: dict[str, Any], source: torch.nn.Module, decay: float,
                 precision: str) -> None:
        from cellsynth.segment.cpn import build_model, set_core_precision

        self.decay = decay
        with torch.random.fork_rng(devices=[]):  # (its random init must not shift training's)
            self.model = build_model(**spec).to(next(source.parameters()).device)
        self.model.load_state_dict(source.state_dict())
        set_core_precision(self.model, precision)
        self.model.eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, source: torch.nn.Module) -> None:
        mine = self.model.state_dict()
        for name, value in source.state_dict().items():
            if value.is_floating_point():
                mine[name].lerp_(value, 1.0 - self.decay)
            else:
                mine[name].copy_(value)


def _train_step(net, optimizer, scheduler, batches: Iterator[dict[str, torch.Tensor]],
                model: torch.nn.Module, config: TrainConfig, step: int, log: JsonLog | None,
                bar, average: _Average | None = None) -> tuple[int, float]:
    """One optimiser step on the next batch; returns (step, loss)."""
    started = time.perf_counter()
    batch = {k: v.to(config.device, non_blocking=True) for k, v in next(batches).items()}
    outputs = net(batch["inputs"], targets=batch)
    optimizer.zero_grad(set_to_none=True)
    outputs["loss"].backward()
    optimizer.step()
    scheduler.step()
    if average is not None:
        average.update(model)
    step += 1
    loss_value = float(outputs["loss"].detach())
    if log is not None:
        parts = {k: float(v.detach()) for k, v in outputs["losses"].items() if v is not None}
        log.write(step=step, loss=loss_value, lr=scheduler.get_last_lr()[0],
                  seconds=time.perf_counter() - started, **parts)
    bar.set_postfix(loss=f"{loss_value:.3f}")
    bar.update(1)
    return step, loss_value


def validate(model: torch.nn.Module, items: list[LabeledImage], config: TrainConfig
             ) -> dict[str, Any]:
    """F1@0.5 and F1avg on validation images for every threshold of THRESHOLD_GRID; the
    threshold with the best F1@0.5."""
    from cellsynth.evaluate import matching_by_score
    from cellsynth.segment.predict import Detector, make_predictor
    from cellsynth.segment.tiles import contours_to_labels, tiled_proposals

    detector = Detector(model, items[0].image.shape[-1], 0.9, config.crop, None, 0, "")
    predictor = make_predictor(detector, device=config.device)
    proposals = [tiled_proposals(it.image, predictor, tile=max(config.crop, 512), overlap=96)
                 for it in items]
    painted = [contours_to_labels(c, s, it.labels.shape, score_thresh=THRESHOLD_GRID[0],
                                  return_scores=True) for it, (c, s) in zip(items, proposals)]
    per_threshold = matching_by_score([it.labels for it in items], painted, THRESHOLD_GRID)
    f1 = [float(r.f1[0]) for r in per_threshold]
    best = int(np.argmax(f1))
    _train_mode(model)
    return {"score_thresh": THRESHOLD_GRID[best], "f1_50": f1[best],
            "f1_avg": per_threshold[best].f1_avg, "f1_by_threshold": dict(zip(THRESHOLD_GRID, f1)),
            "f1_avg_by_threshold": {t: r.f1_avg for t, r in zip(THRESHOLD_GRID, per_threshold)}}


def _frozen_part(model: torch.nn.Module, freeze: str) -> torch.nn.Module | None:
    """Freeze the named part of the CPN (weights and BatchNorm statistics) and return it."""
    if freeze == "none":
        return None
    try:
        part = model.core.backbone.body
    except AttributeError:
        raise ValueError(f"freeze: {freeze}: this model ({type(model).__name__}) has no "
                         f"core.backbone.body encoder") from None
    part.requires_grad_(False)
    part._cellsynth_frozen = True
    return part


def _train_mode(model: torch.nn.Module) -> None:
    """model.train(), except frozen parts, whose BatchNorm layers keep their statistics."""
    model.train()
    for module in model.modules():
        if getattr(module, "_cellsynth_frozen", False):
            module.eval()


def _lr_factor(step: int, config: TrainConfig) -> float:
    if step < config.warmup:
        return (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def _init_weights(model: torch.nn.Module, spec: dict[str, Any], path: Path,
                  ckpt: dict[str, Any]) -> None:
    """Start from the weights of another run (fine-tuning); the architectures must match."""
    source_spec = ckpt["model_spec"]
    if source_spec != spec:
        differ = {k: (source_spec.get(k), v) for k, v in spec.items() if source_spec.get(k) != v}
        raise ConfigError(f"{path}: --init model does not match this one: "
                          + ", ".join(f"{k} {a} vs {b}" for k, (a, b) in differ.items()))
    model.load_state_dict(ckpt["model"])


def _check_resumed_inputs(out: Path, data: list, val: Any) -> None:
    """Refuse to resume ``out`` on other training or validation data than it started with
    (its run.json's): the run then mixed two trainings, its run.json named only the new data
    and its best.pt stayed the one chosen on the old validation. A folder that is only
    elsewhere now (the old path gone) or a copy of the same files is the same data."""
    from cellsynth.pipeline.run import content_fingerprint

    first = run_info(out)
    now = {"--data": [str(Path(d).resolve()) for d in data],
           "--val": [str(Path(val).resolve())] if val is not None else []}
    for option, paths in now.items():
        key = option[2:]
        if key not in first:
            continue
        before = first[key] if isinstance(first[key], list) else (
            [first[key]] if first[key] is not None else [])
        if before == paths or (before and not all(Path(p).exists() for p in before)):
            continue
        if len(before) == len(paths) and all(
                content_fingerprint(a) == content_fingerprint(b) for a, b in zip(before, paths)):
            continue
        raise ConfigError(
            f"{out}: --resume with other {option} than the run started with "
            f"({', '.join(before) or 'none'} -> {', '.join(paths) or 'none'}); resume with the "
            f"same, or train into a new --out (--init {out} starts from its weights)")


def train(config: TrainConfig, data: str | os.PathLike | list[str | os.PathLike],
          out: str | os.PathLike, *,
          init: str | os.PathLike | None = None, val: str | os.PathLike | None = None,
          resume: bool = False, force: bool = False, progress: bool = True,
          replay: str | os.PathLike | list[str | os.PathLike] | None = None
          ) -> dict[str, Any]:
    """Train a CPN on the labeled dataset folders ``data`` (one folder or a list of them);
    write the run folder ``out``.

    ``init`` (a run folder or checkpoint) starts from trained weights: fine-tuning.
    ``replay``: labeled folders (the pretraining data) that ``config.replay`` of the crops
    come from; needed when ``config.replay > 0``, ignored otherwise. On
    ``resume`` only the options in :data:`RESUMABLE` may differ from the run's. The caller's
    torch random state is left as it was (the run seeds its own from ``config.seed``).
    Returns a summary (steps, final loss, best validation F1 and score threshold).
    """
    if isinstance(data, (str, os.PathLike)):  # one folder (a string's letters are not folders)
        data = [data]
    if isinstance(replay, (str, os.PathLike)):
        replay = [replay]
    cuda = config.device.startswith("cuda") and torch.cuda.is_available()
    devices = [torch.device(config.device).index or 0] if cuda else []
    with torch.random.fork_rng(devices=devices):
        return _train(config, data, out, init=init, val=val, resume=resume, force=force,
                      progress=progress, replay=replay)


def _working_pixel_size(out: Path, data: list[str | os.PathLike],
                        start: tuple[Any, dict[str, Any]] | None, resume: bool) -> float | None:
    """The pixel size a detector trained without one named works at: a resumed run's own
    (its config.yaml), a fine-tuning's pretrained detector's, else the one its data folders
    state (a detector trained on a simulation recorded none, and predict then read images at
    any other pixel size as they were)."""
    from cellsynth.config import load_yaml
    from cellsynth.segment.data import stated_pixel_size

    if resume and (out / layout.CONFIG).is_file():
        return load_yaml(out / layout.CONFIG).get("pixel_size_um")
    if start is not None and start[1].get("config", {}).get("pixel_size_um"):
        return float(start[1]["config"]["pixel_size_um"])
    return stated_pixel_size(data)


def _train(config: TrainConfig, data: list[str | os.PathLike], out: str | os.PathLike, *,
           init: str | os.PathLike | None, val: str | os.PathLike | None, resume: bool,
           force: bool, progress: bool, replay: list[str | os.PathLike] | None
           ) -> dict[str, Any]:
    from torch.nn.parallel import DistributedDataParallel
    from tqdm.auto import tqdm

    from cellsynth.segment.cpn import (
        balance_score_loss,
        build_model,
        celldetection_format,
        set_core_precision,
    )
    from cellsynth.segment.predict import read_detector_checkpoint

    out = Path(out)
    rank, world = _dist()
    # every input is checked before the run folder is touched (a --force run that cannot
    # start must leave the old run as it was)
    if config.replay > 0 and not replay:
        raise ConfigError(f"{out}: replay {config.replay} needs replay data (the folders "
                          f"pretraining used)")
    replay = list(replay or []) if config.replay > 0 else []
    resume = check_run_dir(out, resume=resume, force=force,
                           inputs=tuple(data) + tuple(replay)
                           + tuple(p for p in (val, init) if p is not None))
    resolve_device(config.device)
    start = (read_detector_checkpoint(init, needed_by="--init", whole_runs=False)
             if init is not None and not resume else None)
    if config.pixel_size_um is None:  # recorded, so that predict rescales other images
        config = replace(config, pixel_size_um=_working_pixel_size(out, data, start, resume))
    # fine-tuning: the images take the pretrained model's channels (gray <-> RGB, with a note)
    channels = start[1]["model_spec"]["in_channels"] if start else None
    items = load_labeled(data, pixel_size_um=config.pixel_size_um, channels=channels,
                         normalization=config.normalization, channel=config.channel,
                         source_pixel_size_um=config.data_pixel_size_um,
                         source_channel=config.source_channel)
    channels = items[0].image.shape[-1]
    val_items = (load_labeled([val], channels=channels, pixel_size_um=config.pixel_size_um,
                              normalization=config.normalization, channel=config.channel,
                              source_pixel_size_um=config.data_pixel_size_um,
                              source_channel=config.source_channel)
                 if val is not None else [])
    # (the simulation: already in the model's channels, so no channel of it is chosen)
    replay_items = (load_labeled(replay, channels=channels, pixel_size_um=config.pixel_size_um,
                                 normalization=config.normalization)
                    if replay else [])
    torch.manual_seed(config.seed + rank)
    spec = model_spec(config, channels)
    model = build_model(**spec).to(config.device)
    if start is not None:
        _init_weights(model, spec, *start)
    model.weights.update(vars(config.loss_weights))  # celldetection's weights of its losses
    if config.score_balance:
        balance_score_loss(model, config.score_balance)
    precision = choose_precision(config.precision, config.device)
    if rank == 0:
        announce(str(precision))
        if config.device.startswith("cuda") and config.workers == 0:
            announce("batches are prepared in the training loop, about half of each step on a "
                     "GPU: `workers: 4` makes steps ~3.5x faster (benchmarks/loader.py)")
    set_core_precision(model, precision.name)
    _frozen_part(model, config.freeze)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, config))
    rng = np.random.default_rng([config.seed, rank])
    step, best_f1, score_thresh, since_best = 0, -1.0, 0.9, 0
    if resume:
        try:
            ckpt = torch.load(out / layout.LAST, map_location=config.device,
                              weights_only=True)
        except Exception as err:  # truncated or not a checkpoint: torch's text is cryptic
            raise CellsynthError(f"{out / layout.LAST}: cannot load checkpoint (truncated or "
                                 f"corrupt?); start again with --force") from err
        check_resume_config(ckpt["config"], to_dict(config), to_dict(TrainConfig()), RESUMABLE,
                            out / layout.LAST)
        _check_resumed_inputs(out, data, val)
        # with ema, "model" holds the averaged weights and "trained_model" the trained ones
        model.load_state_dict(ckpt["trained_model"] if config.ema else ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        rng.bit_generator.state = ckpt["rng"]["numpy"][rank]
        torch.set_rng_state(ckpt["rng"]["torch"])
        step, best_f1, score_thresh = ckpt["step"], ckpt["best_f1"], ckpt["score_thresh"]
        since_best = ckpt.get("since_best", 0)  # absent in runs from before patience
    if rank == 0:
        prepare_run_dir(out, resume=resume, force=force)
    if world > 1:
        torch.distributed.barrier()
    threads = ThreadGovernor(workers=world if world > 1 else None)
    info_path = out / layout.RUN_INFO
    info: dict[str, Any] = {}
    history: ThreadHistory | None = None
    if rank == 0:  # a resumed run may have changed steps: record what it runs with now
        save_yaml(out / layout.CONFIG, config)
        first = json.loads(info_path.read_text()) if resume and info_path.is_file() else {}
        history = ThreadHistory(first.get("torch_threads"), step, threads.threads)
        info = {
            **versions(), "stage": "train",
            "data": [str(Path(d).resolve()) for d in data],
            **({"replay": [str(Path(d).resolve()) for d in replay],
                "replay_fraction": config.replay} if replay else {}),
            "val": str(Path(val).resolve()) if val is not None else None,
            "init": first.get("init", str(start[0].resolve()) if start is not None else None),
            # (what the detector started from, even if that file is later replaced)
            "init_sha256": first.get("init_sha256",
                                     file_sha256(start[0]) if start is not None else None),
            "resumed_at_steps": first.get("resumed_at_steps", []) + ([step] if resume else []),
            "device": config.device, "precision": precision.name, "world_size": world,
            "workers": config.workers,  # (which random stream the batches came from)
            "torch_threads": history.entries,  # a list that grows as the count changes
            "n_images": len(items), "n_val_images": len(val_items),
            # True once it ends (its steps done, or a plateau): a detector used while this is
            # False was stopped part-way (read_detector_checkpoint says so)
            "finished": False}
        write_json(info_path, info)
    average = _Average(spec, model, config.ema, precision.name) if config.ema else None
    if average is not None and resume:
        average.model.load_state_dict(ckpt["model"])
    scored = average.model if average is not None else model  # what validates and is saved
    if world > 1:
        # oneDNN hands the refinement head's last 1x1 conv its gradient with channels-last
        # strides; for a 1x1 kernel that is the same memory as the bucket's, so DDP's
        # "Grad strides do not match bucket view strides ... may impair performance" (printed
        # by every rank, 5 lines each) is noise here
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view")
    net = DistributedDataParallel(model) if world > 1 else model
    sampler = CropSampler(items, config.crop, config.augment, rng)
    replayed = CropSampler(replay_items, config.crop, config.augment, rng) if replay else None
    batches = _batches(sampler, replayed, config, model.samples, model.order, start=step,
                       rank=rank)
    log = JsonLog(out / layout.LOG, keep_until=step if resume else None) if rank == 0 else None

    def checkpoint(path: Path, *, collective: bool = True) -> None:
        """Save (rank 0). ``collective``: every rank calls it, so all RNG states are kept."""
        states = [rng.bit_generator.state]
        if world > 1 and collective:
            states = [None] * world
            torch.distributed.all_gather_object(states, rng.bit_generator.state)
        if rank == 0:
            weights = scored.state_dict()
            trained = ({"trained_model": model.state_dict()}
                       if average is not None and path.name == layout.LAST else {})
            # only last.pt resumes: best.pt leaves out the optimizer's moments, which are
            # twice the weights (a 95 MB best.pt of CpnSlimU22 becomes 32 MB)
            resumable = ({"optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(),
                          "rng": {"numpy": states, "torch": torch.get_rng_state()}}
                         if path.name == layout.LAST else {})
            _save(path, {"model": weights, **trained, **resumable, "step": step,
                         "config": to_dict(config), "model_spec": spec, "best_f1": best_f1,
                         "since_best": since_best, "precision": precision.name,
                         "score_thresh": score_thresh,
                         # plain celldetection users: cd.load_model(RUN/best.pt)
                         **celldetection_format(scored, weights, score_thresh=score_thresh)})

    _train_mode(model)
    bar = tqdm(total=config.steps, initial=step, desc="train", unit="step",
               disable=not progress or rank != 0)
    loss_value = float("nan")
    saved_at = time.monotonic()

    def save_last() -> None:
        nonlocal saved_at
        checkpoint(out / layout.LAST)
        saved_at = time.monotonic()
        if rank == 0:
            discard_replaced_run(out)  # the new run has something to keep now

    def plateau() -> bool:
        return bool(val_items) and config.patience is not None and since_best >= config.patience

    try:
        with stop_between_steps() as stop:
            while step < config.steps and not plateau():
                n = threads.tick()
                if history is not None and history.update(step, n):
                    write_json(info_path, info)  # results depend on the thread count
                step, loss_value = _train_step(net, optimizer, scheduler, batches, model,
                                               config, step, log, bar, average)
                if val_items and (step % config.val_every == 0 or step == config.steps):
                    if rank == 0:
                        result = validate(scored, val_items, config)
                        log.write(step=step, val_f1=result["f1_50"],
                                  val_f1_avg=result["f1_avg"],
                                  val_score_thresh=result["score_thresh"],
                                  val_f1_by_threshold=result["f1_by_threshold"])
                        if result["f1_50"] > best_f1:
                            best_f1, score_thresh = result["f1_50"], result["score_thresh"]
                            since_best = 0
                            checkpoint(out / layout.BEST, collective=False)
                        else:
                            since_best += 1
                        logger.info("%s step %d/%d: validation F1@0.5 %.3f, F1avg %.3f "
                                    "(threshold %.2f; best %.3f)", out.name, step,
                                    config.steps, result["f1_50"], result["f1_avg"],
                                    result["score_thresh"], best_f1)
                    if world > 1:  # share rank 0's choice so every rank saves the same state
                        shared = [best_f1, score_thresh, since_best]
                        torch.distributed.broadcast_object_list(shared, src=0)
                        best_f1, score_thresh, since_best = shared
                overdue = world == 1 and time.monotonic() - saved_at > CHECKPOINT_SECONDS
                if (step % config.checkpoint_every == 0 or step == config.steps or overdue
                        or plateau()):
                    save_last()
                if plateau() and rank == 0:
                    logger.info("%s: validation F1 has not improved in %d validations: "
                                "plateau, stopping at step %d of %d (best %.3f)", out.name,
                                config.patience, step, config.steps, best_f1)
                if stop and world == 1:
                    save_last()
                    logger.warning("stopped by %s at step %d; checkpoint saved",
                                   stop.name, step)
                    raise KeyboardInterrupt
    except BaseException:
        if rank == 0:
            restore_replaced_run(out)  # if the new run has nothing to keep
        raise
    finally:
        batches.close()  # (ends the batch workers)
        if log is not None:
            log.close()
    bar.close()
    if rank == 0:
        write_json(info_path, {**info, "finished": True, "steps_done": step})
    if world > 1:
        torch.distributed.barrier()
    return {"steps": step, "loss": loss_value, "best_val_f1": best_f1,
            "score_thresh": score_thresh, "plateau": plateau(), "run": str(out)}
