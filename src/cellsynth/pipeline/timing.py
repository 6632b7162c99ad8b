"""The costs ``cellsynth run --estimate`` multiplies, measured on *this* machine: a few
steps of each network on synthetic inputs (a step's cost does not depend on what the pixels
show), one prediction's writes and test-time augmentation's merge of its views, one
detector's loading, a few of the simulator fit's images.
Each is measured once per shape and cached.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Timer", "blob_labels"]

_TILE = 512  # the forward pass is timed on such tiles (cost per megapixel)
# Prediction's contour decoding, refinement and NMS work on every pixel of the score map
# above the threshold; a fresh network scores none or all of them, so the timed pass is
# handed scores: cells of radius 10 px, one per _PROPOSAL_AREA px² of the score map (15 %
# of it, about the cores of densely packed nuclei)
_PROPOSAL_AREA = 2000
_CELL_AREA = 1000  # px² of an image per cell where a prediction's writes are timed
_WRITES_SIDE = 1024  # writes of larger images are timed at this side and scaled by pixels
_FIT_SCENES = 4  # scenes rendered and measured to time the simulator fit's images


def _timed_shape(height: int, width: int) -> tuple[int, int, float]:
    """(h, w, scale): an image over ``_WRITES_SIDE``² is timed at that side and its time
    scaled by its pixels; smaller ones as they are (scale 1)."""
    scale = max(1.0, height * width / _WRITES_SIDE ** 2)
    return ((height, width) if scale == 1.0 else (_WRITES_SIDE, _WRITES_SIDE)) + (scale,)


def _stand_in_outlines(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """(n, 64, 2) outlines (x, y) of round stand-in cells of radius 10 px, one per
    ``_CELL_AREA`` px² of an (h, w) image, at random centres."""
    n = max(1, h * w // _CELL_AREA)
    angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    centres = rng.uniform(0, (w, h), (n, 1, 2))
    return centres + 10 * np.stack([np.cos(angles), np.sin(angles)], -1)


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
        """Seconds per megapixel of a detector's prediction of a tile as predict runs it:
        the network, then the decoding of every proposal into a contour, its refinement and
        NMS (on stand-in cells: see ``_PROPOSAL_AREA``); ``config.precision`` may be int8
        (`predict --precision int8`: timed quantised)."""
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
            with torch.inference_mode():
                side = model.core(x)[0].shape[-1]  # of the score map
            rng = np.random.default_rng(0)
            cells = blob_labels(rng, 1, side, area_per_cell=_PROPOSAL_AREA)[:, None] > 0
            scores = torch.from_numpy(np.where(cells, rng.uniform(0.9, 1.0, cells.shape), 0.0)
                                      .astype(np.float32)).to(self.device)

            def step() -> None:
                with torch.inference_mode():
                    model(x, scores_lower_bound=scores, scores_upper_bound=scores)

            self._cache[key] = self._median(step) / (_TILE * _TILE / 1e6)
        return self._cache[key]

    def prediction_writes(self, height: int, width: int, channels: int) -> float:
        """Seconds to finish one predicted image of (height, width) after its tiles: the
        cells painted into labels, the label TIFF, the detections CSV and the overlay PNG
        written (stand-in cells, one per ``_CELL_AREA`` px²). Images over
        ``_WRITES_SIDE``² are timed at that size and scaled by their pixels."""
        h, w, scale = _timed_shape(height, width)
        key = ("writes", h, w, channels)
        if key not in self._cache:
            from cellsynth.io.images import write_image, write_labels
            from cellsynth.segment.folders import detections_table
            from cellsynth.segment.tiles import contours_to_labels
            from cellsynth.viz import contour_overlay

            rng = np.random.default_rng(0)
            image = rng.integers(0, 256, (h, w) if channels == 1 else (h, w, channels),
                                 dtype=np.uint8)
            contours = _stand_in_outlines(rng, h, w)
            scores = rng.uniform(0.9, 1.0, len(contours))
            with tempfile.TemporaryDirectory() as tmp:
                def step() -> None:
                    labels, id_scores = contours_to_labels(contours, scores, (h, w),
                                                           score_thresh=0.9,
                                                           return_scores=True)
                    write_labels(Path(tmp) / "labels.tif", labels)
                    (Path(tmp) / "detections.csv").write_text(
                        detections_table(labels, id_scores))
                    write_image(Path(tmp) / "overlay.png", contour_overlay(image, labels))

                self._cache[key] = self._median(step)
        return self._cache[key] * scale

    def tta_merge(self, height: int, width: int) -> float:
        """Seconds to merge the 8 views of test-time augmentation into the cells of one
        predicted image of (height, width) model pixels (:func:`cellsynth.segment.tta.
        merge_views`): stand-in cells, one per ``_CELL_AREA`` px², each seen by every view
        a little moved. Images over ``_WRITES_SIDE``² are timed at that size and scaled by
        their pixels (the merge's cost grows with the cells it groups)."""
        h, w, scale = _timed_shape(height, width)
        key = ("tta merge", h, w)
        if key not in self._cache:
            from cellsynth.segment.tta import VIEWS, merge_views

            rng = np.random.default_rng(0)
            outlines = _stand_in_outlines(rng, h, w)
            n = len(outlines)
            views = [((outlines + rng.uniform(-1, 1, (n, 1, 2))).astype(np.float32),
                      rng.uniform(0.9, 1.0, n).astype(np.float32)) for _ in VIEWS]
            self._cache[key] = self._median(lambda: merge_views(views))
        return self._cache[key] * scale

    def detector_load(self, config: Any, channels: int) -> float:
        """Seconds to load a detector with this TrainConfig for prediction (read, build,
        BatchNorm folded: :func:`cellsynth.segment.predict.load_detector`)."""
        key = ("load", self._network_key(config, channels))
        if key not in self._cache:
            import torch

            from cellsynth.pipeline import layout
            from cellsynth.segment.predict import load_detector
            from cellsynth.segment.trainer import model_spec

            model = self._detector(config, channels)
            with tempfile.TemporaryDirectory() as tmp:
                path = layout.detector_checkpoint(tmp)
                torch.save({"model_spec": model_spec(config, channels),
                            "model": model.state_dict(), "step": 0, "config": {}}, path)
                started = time.perf_counter()
                load_detector(tmp, device=self.device, precision=config.precision,
                              say_precision=False)
                self._cache[key] = time.perf_counter() - started
        return self._cache[key]

    def fit_images(self, base: Any, side: int, radii: np.ndarray, seed: int = 0
                   ) -> tuple[float, float]:
        """(seconds to render, seconds to measure) one simulated image of ``side``² as the
        simulator fit does (:mod:`cellsynth.simulate.fit`), the mean over a few scenes (a
        base that varies between images draws each its own zoom and density); ``base`` at
        the real images' pixel size, ``radii`` the estimator's scales."""
        from cellsynth.config import to_dict

        key = ("fit", str(sorted(to_dict(base).items())), side, tuple(radii), seed)
        if key not in self._cache:
            from cellsynth.simulate.dataset import image_seeds
            from cellsynth.simulate.estimate import measure_image
            from cellsynth.simulate.scene import render_scene

            vectors = (base.staining.main_vector, base.staining.counter_vector)
            seeds = image_seeds(seed, _FIT_SCENES)
            render, measure = [], []
            for i, child in enumerate([seeds[0], *seeds]):  # the first call warms up
                started = time.perf_counter()
                image, labels = render_scene(base, (side, side), np.random.default_rng(child))
                rendered = time.perf_counter()
                measure_image(image.astype(np.float32) / 255.0, base.color, base.pixel_size_um,
                         radii, labels, vectors)
                if i:
                    render.append(rendered - started)
                    measure.append(time.perf_counter() - rendered)
            self._cache[key] = (float(np.mean(render)), float(np.mean(measure)))
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


def blob_labels(rng: np.random.Generator, n: int, size: int, *, area_per_cell: int = 600
                ) -> np.ndarray:
    """(n, size, size) int64 label maps of random round blobs (r 10 px, one per
    ``area_per_cell`` px²): stand-in cells for timing, where what the pixels show does not
    matter."""
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((n, size, size), np.int64)
    for i in range(n):
        for k in range(1, size * size // area_per_cell + 1):
            cy, cx = rng.integers(size, size=2)
            labels[i][(yy - cy) ** 2 + (xx - cx) ** 2 < 100] = k
    return labels
