"""The refiner's one config: model sizes, loss weights, optimiser and schedule, validated once."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from cellsynth.config import ADDED, from_dict, load_yaml
from cellsynth.io.normalize import DTYPE_SCALING, Normalization

__all__ = ["RefineConfig", "refine_config", "config_from_checkpoint"]


@dataclass(frozen=True)
class RefineConfig:
    """Everything that defines a refiner run (paths and device are arguments of ``fit``)."""

    # data
    crop: int = 128  # training crop side; the generator is fully convolutional
    batch: int = 4
    real_pixel_size_um: float | None = None  # overrides the real images' meta.json
    # the one channel (0-based) of multi-channel real images the simulation draws (None: gray
    # and RGB as they are, channel 0 of any other number of channels)
    channel: int | None = field(default=None, metadata=ADDED)
    # generator (SPADE, Park et al. 2019)
    width: int = 48  # channels of the SPADE ResBlocks (at half resolution)
    blocks: int = 3  # SPADE ResBlocks
    spade_hidden: int = 32  # hidden channels of each SPADE's shared conv
    boundary_width: int = 2  # inner-boundary thickness of the semantic map, pixels
    # condition also on the simulation's class map (classes/: unlabelled cells, vessels,
    # fibres), so the refiner knows which dark blobs must not become cells
    class_map: bool = field(default=False, metadata=ADDED)
    noise: bool = True  # one extra input channel of N(0, 1) noise
    # sim is clamped to +-(1 - margin) before the refiner's atanh residual; larger lets it dim
    # saturated nuclei smoothly (1e-3 left speckles in dimmed bright nuclei)
    saturation_margin: float = 1e-3
    # discriminator (multi-scale PatchGAN with spectral norm)
    d_width: int = 32
    d_layers: int = 3  # stride-2 convs per scale; receptive field ~ 2**(layers+2) pixels
    d_scales: int = 2
    d_steps: int = 1  # discriminator updates per refiner step, each on its own real crops
    # standardise D's input with the real crops' per-channel mean/std (measured once at the
    # start): the spectral-norm D then sees dim images (fluorescence) at full contrast
    d_input_norm: bool = True
    # losses (S+U, Shrivastava et al. 2017): hinge GAN + lambda * self-regularisation
    self_reg: float = 1.0  # weight of the L1 between refined and simulated images
    self_reg_downsample: int = 2  # average-pool factor before the L1 (1 = full resolution)
    # standardise each crop (per channel: minus mean, over std) before the L1, so the refiner may
    # change global brightness and contrast freely (the adversarial loss sets them) but not layout
    self_reg_normalize: bool = False
    # weight of the L1 between batch-mean D features of real and refined crops: a low-variance
    # pull towards real colour/texture statistics while D is still weak (0 disables)
    feature_matching: float = 10.0
    # weight of the semantic consistency loss (refine/consistency.py): a frozen judge trained
    # on the simulation must see the same background / interior / boundary map in the
    # refined image as in the simulated one (0 disables)
    consistency: float = field(default=0.0, metadata=ADDED)
    consistency_steps: int = field(default=300, metadata=ADDED)  # judge training steps
    # history buffer of refined images (SimGAN Sec. 2.3)
    buffer_size: int = 256
    # optimisation (SPADE's TTUR: G at half, D at twice the base 2e-4)
    steps: int = 3000
    lr_g: float = 1e-4
    lr_d: float = 4e-4
    beta1: float = 0.0
    beta2: float = 0.9
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # bf16 autocast where native
    seed: int = 0
    # intensities of simulated and real images -> [0, 1] by image content (io.normalize)
    normalization: Normalization = field(default_factory=Normalization)
    # bookkeeping
    log_every: int = 10
    sample_every: int = 250
    checkpoint_every: int = 250

    def __post_init__(self) -> None:
        positive = ("crop", "batch", "width", "blocks", "spade_hidden", "boundary_width",
                    "d_width", "d_layers", "d_scales", "d_steps", "self_reg_downsample",
                    "buffer_size", "steps", "log_every", "sample_every", "checkpoint_every",
                    "consistency_steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.crop < 32 or self.crop % 4:
            raise ValueError(f"crop must be a multiple of 4 and >= 32, got {self.crop}")
        if self.crop < 2 ** (self.d_layers + self.d_scales - 1):
            raise ValueError(f"crop {self.crop} is too small for d_layers={self.d_layers} and "
                             f"d_scales={self.d_scales}")
        if self.crop % self.self_reg_downsample:
            raise ValueError(f"crop {self.crop} is not divisible by self_reg_downsample "
                             f"{self.self_reg_downsample}")
        for name in ("self_reg", "feature_matching", "consistency"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr_g", "lr_d"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"betas must be in [0, 1), got ({self.beta1}, {self.beta2})")
        if not 0 < self.saturation_margin < 0.5:
            raise ValueError(f"saturation_margin must be in (0, 0.5), got "
                             f"{self.saturation_margin}")
        if self.real_pixel_size_um is not None and not self.real_pixel_size_um > 0:
            raise ValueError(f"real_pixel_size_um must be > 0, got {self.real_pixel_size_um}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.channel is not None and self.channel < 0:
            raise ValueError(f"channel must be >= 0, got {self.channel}")
        if self.batch < 2:
            raise ValueError(f"batch must be >= 2 (half fresh, half history), got {self.batch}")


def refine_config(config_file: str | os.PathLike | None = None,
                  overrides: dict[str, Any] | None = None) -> RefineConfig:
    """Defaults, then a YAML file, then ``overrides`` (None values are skipped).

    Unknown keys or invalid values raise :class:`cellsynth.errors.ConfigError`.
    """
    data: dict[str, Any] = dict(load_yaml(config_file)) if config_file else {}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    where = str(config_file) if config_file else "refine config"
    return from_dict(RefineConfig, data, where=where)


def config_from_checkpoint(data: dict[str, Any], *, where: str) -> RefineConfig:
    """The config a checkpoint was trained with; runs from before content normalisation
    (no ``normalization`` key) keep the dtype scaling they trained with."""
    config = from_dict(RefineConfig, data, where=where)
    if "normalization" not in data:
        config = replace(config, normalization=DTYPE_SCALING)
    return config
