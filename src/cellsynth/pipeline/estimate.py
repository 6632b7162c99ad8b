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
- prediction: a forward pass over the tiles `predict` cuts from the predicted images at the
  working pixel size (``predict.tile`` or its default, balanced), 8 times with ``tta``, and
  8 times over the unannotated images for pseudo labels. Blank tiles of glass are counted
  as predicted (an upper bound for sections).

Not timed (seconds to a few minutes each): simulation, copying and rescaling, choosing a
refiner step, the count threshold, evaluation, realism and the
report; the painting of cells after a forward pass is not counted either. A stage that RUN
holds already, done with an unchanged fingerprint, counts 0. Nothing is written.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.pipeline import layout
from cellsynth.pipeline.config import PipelineConfig

__all__ = ["StageEstimate", "estimate", "format_estimate", "Timer", "blob_labels",
           "tiled_pixels"]

_VAL_TILE = 512  # validation tiles (trainer.validate)
_TILE = 512  # the forward pass is timed on such tiles (cost per megapixel)


@dataclass(frozen=True)
class StageEstimate:
    stage: str
    seconds: float | None  # None: not timed (cheap); 0 for a stage RUN holds already
    detail: str


class Timer:
    """Measures the per-step and per-pixel costs the estimate multiplies (cached per shape).

    Each measurement runs ``warmup`` steps (oneDNN builds its kernels on the first calls)
    and reports the median of ``steps`` more.
    """

    def __init__(self, device: str = "cpu", *, warmup: int = 1, steps: int = 3) -> None:
        self.device, self.warmup, self.steps = device, warmup, steps
        self._cache: dict[Any, float] = {}

    def _median(self, step: Callable[[], None]) -> float:
        for _ in range(self.warmup):
            step()
        times = []
        for _ in range(self.steps):
            started = time.perf_counter()
            step()
            if str(self.device).startswith("cuda"):  # (the GPU's work is asynchronous)
                import torch

                torch.cuda.synchronize(self.device)
            times.append(time.perf_counter() - started)
        return float(np.median(times))

    @staticmethod
    def _network_key(config: Any, channels: int) -> tuple:
        from cellsynth.segment.trainer import model_spec

        return tuple(sorted(model_spec(config, channels).items())) + (config.precision,)

    def _detector(self, config: Any, channels: int) -> Any:
        """A freshly initialised CPN as the trainer builds it, in the precision it would use."""
        import torch

        from cellsynth.hardware import choose_precision
        from cellsynth.segment import cpn
        from cellsynth.segment.trainer import model_spec

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = cpn.build_model(**model_spec(config, channels)).to(self.device)
        cpn.set_core_precision(model, choose_precision(config.precision, self.device).name)
        return model

    def detector_step(self, config: Any, channels: int) -> float:
        """Seconds per training step of a detector with this TrainConfig: the network's step
        plus the batch's crops and targets, or, with ``config.workers``, the slower of the
        network and the workers (each preparing one batch in the time of ``workers`` steps,
        on cores of their own)."""
        import torch

        key = ("detector", self._network_key(config, channels), config.crop, config.batch,
               torch.get_num_threads())
        if key not in self._cache:
            self._cache[key] = self._detector_step(config, channels)
        network, batch = self._cache[key]
        workers = getattr(config, "workers", 0)
        return max(network, batch / workers) if workers else network + batch

    def _detector_step(self, config: Any, channels: int) -> tuple[float, float]:
        """(seconds of the network's step on a prepared batch, seconds to prepare one)"""
        import torch

        from cellsynth.segment import cpn
        from cellsynth.simulate import simulate

        rng = np.random.default_rng(0)
        model = self._detector(config, channels)
        crops = []
        for image, labels in simulate("nissl", config.batch, config.crop, seed=0):
            image = image.astype(np.float32) / 255
            crops.append(((image if image.ndim == 3 else image[..., None])[..., :1].repeat(
                channels, axis=-1), labels))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        model.train()

        def prepare() -> dict[str, torch.Tensor]:
            # training makes every crop's targets anew each step: time that too
            items = []
            for image, labels in crops:
                item = cpn.training_targets(labels, samples=model.samples, order=model.order,
                                            rng=rng)
                item["inputs"] = image
                items.append(item)
            return cpn.collate(items)

        prepared = prepare()

        def step() -> None:
            batch = {k: v.to(self.device) for k, v in prepared.items()}
            loss = model(batch["inputs"], targets=batch)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        return self._median(step), self._median(prepare)

    def detector_forward_per_mpx(self, config: Any, channels: int) -> float:
        """Seconds per megapixel of a detector's forward pass (prediction's network part);
        ``config.precision`` may be int8 (`predict --precision int8`: timed quantised)."""
        key = ("forward", self._network_key(config, channels))
        if key not in self._cache:
            import torch

            from cellsynth.segment import cpn

            int8 = config.precision == "int8"
            model = self._detector(replace(config, precision="fp32") if int8 else config,
                                   channels)
            cpn.prepare_for_inference(model)
            x = torch.rand(1, channels, _TILE, _TILE, device=self.device)
            if int8:
                from cellsynth.segment.quantize import quantize_core

                model = quantize_core(model, [x[0].permute(1, 2, 0).cpu().numpy()])
            else:
                x = x.contiguous(memory_format=torch.channels_last)

            def step() -> None:
                with torch.no_grad():
                    model.core(x)

            self._cache[key] = self._median(step) / (_TILE * _TILE / 1e6)
        return self._cache[key]

    def refiner_step(self, config: Any, channels: int) -> float:
        """Seconds per refiner training step (with the judge's loss where it has one)."""
        from cellsynth.config import to_dict

        key = ("refiner", str(sorted(to_dict(config).items())), channels)
        if key not in self._cache:
            import torch

            from cellsynth.refine.consistency import SemanticJudge
            from cellsynth.refine.trainer import new_state, train_step

            rng = np.random.default_rng(0)
            state = new_state(replace(config, seed=0), channels, self.device)
            if config.consistency > 0:  # the loss costs the same with untrained weights
                state.judge = SemanticJudge(channels).to(state.device).eval()
                state.judge.requires_grad_(False)
            c, b = config.crop, config.batch
            sim = torch.from_numpy(rng.uniform(-1, 1, (b, channels, c, c)).astype(np.float32))
            real = torch.from_numpy(rng.uniform(-1, 1, (b, channels, c, c)).astype(np.float32))
            labels = torch.from_numpy(blob_labels(rng, b, c))
            self._cache[key] = self._median(lambda: train_step(state, sim, labels, real))
        return self._cache[key]

    def refiner_images(self, config: Any, channels: int, size: int) -> float:
        """Seconds to refine one simulated image of ``size``² (generation, in batches of 8)."""
        from cellsynth.config import to_dict

        key = ("generate", str(sorted(to_dict(config).items())), channels, size)
        if key not in self._cache:
            from cellsynth.refine.generate import Refiner, refine_images
            from cellsynth.refine.trainer import new_state

            rng = np.random.default_rng(0)
            state = new_state(replace(config, seed=0), channels, self.device)
            refiner = Refiner(state.generator, config, step=0, checkpoint=None,
                              device=state.device, bf16=state.bf16)
            shape = (size, size) if channels == 1 else (size, size, channels)
            images = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(8)]
            labels = list(blob_labels(rng, 8, size))
            self._cache[key] = self._median(
                lambda: refine_images(refiner, images, labels, batch=8)) / 8
        return self._cache[key]

    def judge_training(self, config: Any, channels: int) -> float:
        """Seconds to train the refiner's semantic judge (``consistency_steps`` steps)."""
        key = ("judge", config.crop, config.consistency_steps, channels)
        if key not in self._cache:
            import torch

            from cellsynth.refine.consistency import train_judge

            c = config.crop

            def sample(n: int, rng: np.random.Generator) -> tuple[Any, Any]:
                images = rng.uniform(-1, 1, (n, channels, c, c)).astype(np.float32)
                return torch.from_numpy(images), torch.from_numpy(blob_labels(rng, n, c))

            steps = 3
            started = time.perf_counter()
            train_judge(sample, channels, steps=steps, device=self.device)
            self._cache[key] = (time.perf_counter() - started) / steps * config.consistency_steps
        return self._cache[key]


def blob_labels(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """(n, size, size) int64 label maps of random round blobs (r 10 px, one per 600 px²):
    stand-in cells for timing, where what the pixels show does not matter."""
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((n, size, size), np.int64)
    for i in range(n):
        for k in range(1, size * size // 600 + 1):
            cy, cx = rng.integers(size, size=2)
            labels[i][(yy - cy) ** 2 + (xx - cx) ** 2 < 100] = k
    return labels


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
    from cellsynth.io.sections import open_image

    if folder is None:
        return []
    ids = {str(i) for i in chosen} if chosen is not None else None
    return [tuple(int(n) for n in open_image(s.image_path).shape[:2])
            for s in load_dataset(folder, require_labels=require_labels)
            if ids is None or s.id in ids]


def _megapixels(config: PipelineConfig, role: str, tile: int, overlap: int, *,
                balance: bool = False) -> float:
    """Tiled megapixels of a real-data role at the working pixel size."""
    from cellsynth.pipeline.stages import _real_scale

    scale = _real_scale(config)
    shapes = _image_shapes(getattr(config.real, role), config.real.select.get(role))
    return sum(tiled_pixels(max(1, round(h * scale)), max(1, round(w * scale)), tile, overlap,
                            balance=balance) for h, w in shapes) / 1e6


def _synthetic_val_megapixels(config: PipelineConfig) -> float:
    size = config.simulate.size
    return config.simulate.n_val * tiled_pixels(size, size, _VAL_TILE, 96) / 1e6


def _channels(config: PipelineConfig) -> int:
    from cellsynth.pipeline.stages import _sim_config

    return _sim_config(config).channels


def _minutes(seconds: float) -> str:
    if seconds >= 3 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def estimate(config: PipelineConfig, out: str | os.PathLike | None = None, *,
             timer: Timer | None = None, channels: int | None = None) -> list[StageEstimate]:
    """Per stage of ``config``'s plan, the seconds it is expected to take here (see the
    module's docstring for what is timed and what is not)."""
    from cellsynth.pipeline import stages as st

    timer = timer or Timer(config.device)
    channels = channels or _channels(config)
    plan = st.plan(config)
    done = _done_stages(config, out, plan)

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

    def predict(role: str, views: int, precision: str = "auto") -> tuple[float, str]:
        train = config.finetune if config.real.train else config.pretrain
        from cellsynth.segment.predict import DEFAULT_TILE, INT8_SIDE, INT8_WINDOWS

        # the tiles `predict` cuts: predict.tile or its default, shrunk to balanced ones
        tile = config.predict.tile or max(train.crop, DEFAULT_TILE)
        mpx = _megapixels(config, role, tile, config.predict.overlap, balance=True)
        net = replace(train, precision=precision)
        seconds = mpx * views * timer.detector_forward_per_mpx(net, channels)
        detail = f"{mpx:.2f} MP of {role} images x {views} view(s)"
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
                                      8 if config.predict.tta else 1, config.predict.precision)
        results.append(StageEstimate(name, seconds, detail))
    return results


def _done_stages(config: PipelineConfig, out: str | os.PathLike | None, plan: list
                 ) -> set[str]:
    """Stages ``out`` holds done with the fingerprint this config gives them (as run skips)."""
    from cellsynth.pipeline.run import RunState, stage_fingerprints

    if out is None or not (Path(out) / layout.STATE).is_file():
        return set()
    state = RunState(Path(out))
    return {name for name, print_ in stage_fingerprints(config, plan).items()
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
