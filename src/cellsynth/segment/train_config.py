"""The detector's training options (:class:`TrainConfig`, a dataclass a YAML file or the CLI
fills), what of them a resumed run may change, and the network they build (:func:`model_spec`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from cellsynth.config import ADDED, from_dict
from cellsynth.io.normalize import Normalization
from cellsynth.segment.data import Augment

__all__ = ["TrainConfig", "LossWeights", "THRESHOLD_GRID", "ARCHITECTURE", "RESUMABLE",
           "network_differences", "model_spec", "load_train_config"]

# options that may change when a run is resumed (how long, how often to validate or save);
# anything else would change what the run computes
# (data_pixel_size_um: a run interrupted before cellsynth run set it continues with it)
RESUMABLE = frozenset({"steps", "val_every", "checkpoint_every", "patience",
                       "data_pixel_size_um"})

# the options that make a detector's network: fine-tuning takes them from the detector it
# starts from (train --init, a run's or experiment's pretrain: section) unless given again
ARCHITECTURE = ("model", "order", "samples", "refinement_iterations", "head_kernel")


def network_differences(start: TrainConfig, then: TrainConfig) -> list[str]:
    """How the network of ``then`` (a fine-tuning) differs from that of ``start`` (what it
    starts from), "model tiny_u22 vs slim_u22" per option of :data:`ARCHITECTURE`."""
    return [f"{k} {getattr(start, k)} vs {getattr(then, k)}" for k in ARCHITECTURE
            if getattr(start, k) != getattr(then, k)]

# Score thresholds tried on the validation images (scores bunch up near 1 after training).
THRESHOLD_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.96, 0.97, 0.98, 0.99)


@dataclass(frozen=True)
class LossWeights:
    """Weights of the CPN's loss terms; the defaults are celldetection's (``CPN.weights``).
    ``score_fg`` / ``score_bg``: the score map on cell / background pixels; ``fourier``,
    ``location``, ``contour``: the proposed outline (coefficients, centre, sampled points);
    ``refinement``: each refinement iteration's outline; ``iou``: the proposal's box."""

    score_fg: float = 1.0
    score_bg: float = 1.0
    fourier: float = 1.0
    location: float = 1.0
    contour: float = 3.0
    refinement: float = 1.0
    iou: float = 1.0

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not value >= 0:
                raise ValueError(f"loss_weights.{name} must be >= 0, got {value}")


@dataclass(frozen=True)
class TrainConfig:
    model: str = "slim_u22"          # see cellsynth.segment.cpn.MODELS
    order: int = 8                   # Fourier order of the contours
    samples: int = 64                # contour points
    refinement_iterations: int = 4
    # kernel of the CPN heads' first convolutions (celldetection's 7; half the arithmetic)
    head_kernel: int = field(default=7, metadata=ADDED)
    steps: int = 1000
    crop: int = 256
    batch: int = 4
    lr: float = 1e-3                 # Adam(W), cosine decay after a linear warm-up
    warmup: int = 20
    weight_decay: float = 1e-4
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # bf16 autocast of the CPN core;
    # auto: where the hardware computes bf16 natively (cellsynth.hardware.choose_precision)
    device: str = "cpu"
    val_every: int = 100
    checkpoint_every: int = 50
    pixel_size_um: float | None = None  # working resolution; data with another is rescaled
    augment: Augment = field(default_factory=Augment)
    # intensities -> [0, 1] by image content; recorded, so predict applies the same
    normalization: Normalization = field(default_factory=Normalization)
    channel: int | None = None  # use only this channel (0-based) of multi-channel images
    # stop at a plateau: after this many validations in a row without a better F1@0.5 than the
    # best so far (None: train all steps; best.pt is the best validated step either way)
    patience: int | None = field(default=None, metadata=ADDED)
    # fine-tuning on few images: this fraction of each batch's crops comes from the
    # ``replay`` data (the synthetic images it was pretrained on), so the few real images
    # cannot pull the detector far from what it learned there (0: real images only)
    replay: float = field(default=0.0, metadata=ADDED)
    # weights of the CPN's loss terms (celldetection's by default)
    loss_weights: LossWeights = field(default_factory=LossWeights, metadata=ADDED)
    # exponential moving average of the weights with this decay per step (0: off): validation,
    # best.pt and last.pt's "model" are the averaged weights; last.pt keeps the trained ones too
    ema: float = field(default=0.0, metadata=ADDED)
    # fine-tuning on few images: "encoder" keeps the backbone's encoder (the U-Net's
    # downward path: its weights and its BatchNorm statistics) as the detector it starts
    # from and trains the decoder and the heads only
    freeze: Literal["none", "encoder"] = field(default="none", metadata=ADDED)
    # prepare batches (crops, augmentation, CPN targets) in this many background processes;
    # 0: in the training loop. On a GPU those take about half of a step in the loop (0.07 of
    # 0.13 s, H200, slim_u22, 192² x 4); on a CPU whose cores all train they gain nothing.
    # With workers, batch k is drawn from its own random stream (seed, rank, k): the same run
    # for any number of workers, resumed exactly; 0 keeps the one stream of earlier runs.
    workers: int = field(default=0, metadata=ADDED)
    # the pixel size of the training and validation images, over what their folders and files
    # state (cellsynth run: its real.pixel_size_um, where the real images are not rescaled)
    data_pixel_size_um: float | None = field(default=None, metadata=ADDED)
    # the channel of the user's multi-channel images that the (gray) training images hold
    # (cellsynth run's real.channel stages it): where ``channel`` is unset, training and
    # predict pick it from multi-channel images and take gray ones as they are
    source_channel: int | None = field(default=None, metadata=ADDED)
    # the score map's targets: a cell's pixels farther from its border than this fraction of
    # its largest such distance are foreground (its centre; they also learn its outline);
    # celldetection's default is 0.75, ours since the first session 0.85: about 2 % of a
    # round cell's area is foreground, against 6 %
    core: float = field(default=0.85, metadata=ADDED)
    # a cell's pixels nearer its border than this fraction are background of the score map,
    # the band up to ``core`` ignored (celldetection's default 0.5)
    rim: float = field(default=0.8, metadata=ADDED)
    # the score loss on cell pixels: a pixel of a cell with n foreground pixels in the batch
    # weighs n^-score_balance (rescaled to a mean of 1 over the batch's cell pixels); 0: every
    # pixel the same (celldetection's), 1: every cell the same, however small
    score_balance: float = field(default=0.0, metadata=ADDED)

    def __post_init__(self) -> None:
        from cellsynth.segment.cpn import MODELS

        if self.model not in MODELS:  # (a traceback once training began: a run's stages in)
            raise ValueError(f"unknown model {self.model!r}; choose one of "
                             f"{', '.join(MODELS)}")
        for name in ("order", "samples", "steps", "crop", "batch", "val_every",
                     "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.head_kernel < 1 or self.head_kernel % 2 == 0:
            raise ValueError(f"head_kernel must be an odd number >= 1, got {self.head_kernel}")
        if self.crop % 32:
            raise ValueError(f"crop must be a multiple of 32, got {self.crop}")
        if not 0.0 <= self.replay < 1.0:
            raise ValueError(f"replay must be in [0, 1), got {self.replay}")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.rim <= self.core < 1.0:
            raise ValueError(f"core and rim must satisfy 0 <= rim <= core < 1, got core "
                             f"{self.core}, rim {self.rim}")
        for name in ("pixel_size_um", "data_pixel_size_um"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("channel", "source_channel"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.score_balance <= 1.0:
            raise ValueError(f"score_balance must be in [0, 1], got {self.score_balance}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")


def model_spec(config: TrainConfig, channels: int) -> dict[str, Any]:
    """The keyword arguments of :func:`cellsynth.segment.cpn.build_model` for this config (as
    stored in checkpoints)."""
    spec = dict(in_channels=channels, model=config.model, order=config.order,
                samples=config.samples, refinement_iterations=config.refinement_iterations)
    if config.head_kernel != 7:  # (checkpoints from before the option have no such key)
        spec["head_kernel"] = config.head_kernel
    return spec


def load_train_config(path: str | os.PathLike | None, overrides: dict[str, Any]) -> TrainConfig:
    """TrainConfig from an optional YAML file plus CLI overrides (None values ignored)."""
    from cellsynth.config import load_yaml

    data = load_yaml(path) if path else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return from_dict(TrainConfig, data, where=str(path) if path else "options")
