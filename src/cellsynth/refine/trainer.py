"""One S+U training step and the exact-resume checkpoint of everything that step depends on.

A step (Shrivastava et al. 2017, Algorithm 1 with k_g = 1, k_d = ``d_steps``, hinge loss of
SPADE):

1. refine a batch of simulated crops, ``refined = G(sim, semantic_map(labels))``;
2. discriminator, ``d_steps`` times: hinge loss on a fresh chunk of real crops vs. the same
   half fresh / half history refined crops;
3. refiner: ``-D(refined) + self_reg * |pool(refined) - pool(sim)|_1 (+ feature matching)
   + consistency * KL(J(sim) || J(refined))`` with the frozen judge ``J`` of
   :mod:`cellsynth.refine.consistency`).

:class:`RefinerState` holds the models, optimisers, history buffer and every random generator,
so saving it and loading it back continues a run bit for bit (same device, threads, precision).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellsynth import __version__
from cellsynth.config import to_dict
from cellsynth.errors import ImageReadError
from cellsynth.hardware import announce, choose_precision, resolve_device
from cellsynth.io.files import write_with
from cellsynth.refine.buffer import HistoryBuffer
from cellsynth.refine.config import RefineConfig, config_from_checkpoint
from cellsynth.refine.consistency import SemanticJudge, consistency_loss
from cellsynth.refine.discriminator import MultiScaleDiscriminator
from cellsynth.refine.losses import (
    d_hinge_loss,
    feature_matching,
    g_hinge_loss,
    self_regularization,
)
from cellsynth.refine.spade import SPADEGenerator, label_channels, semantic_map

__all__ = ["RefinerState", "build_generator", "new_state", "train_step", "resolve_device",
           "resolve_precision", "save_checkpoint", "save_snapshot", "load_checkpoint",
           "read_checkpoint"]


def resolve_precision(precision: str, device: torch.device) -> bool:
    """True if forward passes run under bf16 autocast (``auto``: where the hardware has
    native bf16, see :func:`cellsynth.hardware.choose_precision`)."""
    chosen = choose_precision(precision, str(device))
    announce(str(chosen))
    return chosen.bf16


def build_generator(config: RefineConfig, channels: int) -> SPADEGenerator:
    return SPADEGenerator(channels, width=config.width, blocks=config.blocks,
                          hidden=config.spade_hidden, noise=config.noise,
                          margin=config.saturation_margin,
                          label_nc=label_channels(config.class_map))


@dataclass
class RefinerState:
    """Everything a training step reads or changes (mutable; ``step`` counts finished steps)."""

    config: RefineConfig
    channels: int
    device: torch.device
    bf16: bool
    generator: SPADEGenerator
    discriminator: MultiScaleDiscriminator
    opt_g: torch.optim.Adam
    opt_d: torch.optim.Adam
    buffer: HistoryBuffer
    noise_rng: torch.Generator  # noise channel of the refiner, on ``device``
    buffer_rng: torch.Generator  # history sampling, CPU
    crop_rng: np.random.Generator  # crop positions and flips
    step: int = 0
    # wall time of the training steps so far, over every run that resumed this one (the
    # time budget ``max_minutes`` counts it; checkpoints from before it say 0)
    seconds: float = 0.0
    # frozen semantic judge (config.consistency > 0); trained by fit before the first step
    judge: SemanticJudge | None = None

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)


def new_state(config: RefineConfig, channels: int, device: str | torch.device = "cpu",
              bf16: bool | None = None) -> RefinerState:
    """Freshly initialised models and optimisers, all randomness derived from ``config.seed``."""
    dev = resolve_device(device)
    seeds = np.random.SeedSequence(config.seed).generate_state(4)
    with torch.random.fork_rng(devices=[]):  # seeded weights; the caller's RNG untouched
        torch.manual_seed(int(seeds[0]))
        generator = build_generator(config, channels).to(dev)
        discriminator = MultiScaleDiscriminator(channels, width=config.d_width,
                                                layers=config.d_layers,
                                                scales=config.d_scales).to(dev)
    betas = (config.beta1, config.beta2)
    return RefinerState(
        config=config, channels=channels, device=dev,
        bf16=resolve_precision(config.precision, dev) if bf16 is None else bf16,
        generator=generator, discriminator=discriminator,
        opt_g=torch.optim.Adam(generator.parameters(), lr=config.lr_g, betas=betas),
        opt_d=torch.optim.Adam(discriminator.parameters(), lr=config.lr_d, betas=betas),
        buffer=HistoryBuffer(config.buffer_size, (channels, config.crop, config.crop)),
        noise_rng=torch.Generator(dev).manual_seed(int(seeds[1])),
        buffer_rng=torch.Generator().manual_seed(int(seeds[2])),
        crop_rng=np.random.default_rng(int(seeds[3])),
    )


def train_step(state: RefinerState, sim: torch.Tensor, labels: torch.Tensor,
               real: torch.Tensor) -> dict[str, float]:
    """``d_steps`` discriminator updates and one refiner update; returns the losses as floats.

    sim : (B, C, H, W) in [-1, 1]; labels : (B, H, W) int; real : (B', C, H, W) in [-1, 1],
    split into ``d_steps`` equal chunks, one per discriminator update (the last one also feeds
    the refiner's feature matching).
    """
    cfg = state.config
    G, D = state.generator, state.discriminator
    sim, labels, real = (t.to(state.device) for t in (sim, labels, real))
    segmap = semantic_map(labels, boundary_width=cfg.boundary_width,
                          class_map=cfg.class_map)  # (B, 3 or 6, H, W)
    G.train()
    D.train()
    with state.autocast():
        refined = G(sim, segmap, generator=state.noise_rng)  # (B, C, H, W)

    # discriminator: real vs. half fresh, half history
    if real.shape[0] % cfg.d_steps:
        raise ValueError(f"train_step: {real.shape[0]} real crops do not split into "
                         f"d_steps={cfg.d_steps} chunks")
    D.requires_grad_(True)
    fake = state.buffer.mix(refined.detach().float(), state.buffer_rng)  # (B, C, H, W)
    for real_chunk in real.chunk(cfg.d_steps):
        with state.autocast():
            d_real = D(real_chunk)
            d_fake = D(fake)
        loss_d = d_hinge_loss(d_real, d_fake)
        state.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        state.opt_d.step()

    # refiner: fool D, stay close to the simulation
    D.requires_grad_(False)
    with state.autocast():
        d_refined = D(refined)
    loss_adv = g_hinge_loss(d_refined)
    loss_reg = self_regularization(refined, sim, downsample=cfg.self_reg_downsample,
                                   normalize=cfg.self_reg_normalize)
    loss_g = loss_adv + cfg.self_reg * loss_reg
    losses = {"d": loss_d.item(), "g_adv": loss_adv.item(), "self_reg": loss_reg.item()}
    if cfg.feature_matching > 0:
        loss_fm = feature_matching(d_real, d_refined)
        loss_g = loss_g + cfg.feature_matching * loss_fm
        losses["feature_matching"] = loss_fm.item()
    if cfg.consistency > 0:
        if state.judge is None:
            raise ValueError("train_step: consistency > 0 needs a trained judge "
                             "(refine.consistency.train_judge)")
        loss_sem = consistency_loss(state.judge, refined, sim)
        loss_g = loss_g + cfg.consistency * loss_sem
        losses["consistency"] = loss_sem.item()
    state.opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    state.opt_g.step()
    D.requires_grad_(True)
    state.step += 1
    losses["g"] = loss_g.item()
    return losses


def _generator_entries(state: RefinerState) -> dict[str, Any]:
    """What a checkpoint needs to apply the generator (load_refiner): the snapshot's whole
    content and the first part of every full checkpoint."""
    return {"cellsynth_version": __version__, "step": state.step, "channels": state.channels,
            "bf16": state.bf16, "config": to_dict(state.config),
            "generator": state.generator.state_dict()}


def save_checkpoint(path: str | os.PathLike, state: RefinerState) -> None:
    """Write models, optimisers, buffer, step, every RNG state and the config, atomically."""
    checkpoint = {
        **_generator_entries(state),
        "discriminator": state.discriminator.state_dict(),
        "opt_g": state.opt_g.state_dict(),
        "opt_d": state.opt_d.state_dict(),
        "buffer": state.buffer.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "noise_rng": state.noise_rng.get_state(),
        "buffer_rng": state.buffer_rng.get_state(),
        "crop_rng": state.crop_rng.bit_generator.state,
        "seconds": state.seconds,
    }
    if state.judge is not None:
        checkpoint["judge"] = state.judge.state_dict()
    write_with(path, lambda tmp: torch.save(checkpoint, tmp))


def save_snapshot(path: str | os.PathLike, state: RefinerState) -> None:
    """Write the generator alone (what :func:`~cellsynth.refine.generate.load_refiner`
    needs; ~1.4 MB at the default size), atomically: the refiner as it was at this step,
    for choosing a step later by what its images teach a detector."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    snapshot = _generator_entries(state)
    write_with(path, lambda tmp: torch.save(snapshot, tmp))


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint dict (tensors on CPU), with a clear error for a bad file."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such checkpoint")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types (and its first line of a file that
        # is no torch file at all is a paragraph on weights_only)
        raise ImageReadError(f"{path}: cannot read checkpoint (truncated, or not a torch "
                             f"file?)") from err
    if isinstance(checkpoint, dict) and "model_spec" in checkpoint:
        raise ImageReadError(f"{path}: a detector (use it with predict); a refiner is the "
                             f"folder `cellsynth fit-refiner --out` wrote, or its last.pt")
    missing = {"step", "channels", "config", "generator"} - set(
        checkpoint if isinstance(checkpoint, dict) else ())
    if missing:
        raise ImageReadError(f"{path}: not a cellsynth refiner checkpoint "
                             f"(missing {', '.join(sorted(missing))})")
    return checkpoint


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"
                    ) -> RefinerState:
    """Rebuild the training state saved by :func:`save_checkpoint`."""
    checkpoint = read_checkpoint(path)
    config = config_from_checkpoint(checkpoint["config"], where=f"{path}: config")
    state = new_state(config, checkpoint["channels"], device, bf16=checkpoint["bf16"])
    state.generator.load_state_dict(checkpoint["generator"])
    # Checkpoints from before the input standardisation lack its buffers; the defaults
    # (shift 0, scale 1) are exactly what those runs trained with.
    missing, unexpected = state.discriminator.load_state_dict(checkpoint["discriminator"],
                                                              strict=False)
    if unexpected or set(missing) - {"input_shift", "input_scale"}:
        raise ImageReadError(f"{path}: discriminator weights do not fit its config "
                             f"(missing {missing}, unexpected {unexpected})")
    state.opt_g.load_state_dict(checkpoint["opt_g"])
    state.opt_d.load_state_dict(checkpoint["opt_d"])
    state.buffer.load_state_dict(checkpoint["buffer"])
    torch.set_rng_state(checkpoint["torch_rng"])
    state.noise_rng.set_state(checkpoint["noise_rng"])
    state.buffer_rng.set_state(checkpoint["buffer_rng"])
    state.crop_rng.bit_generator.state = checkpoint["crop_rng"]
    state.step = int(checkpoint["step"])
    state.seconds = float(checkpoint.get("seconds", 0.0))
    if config.consistency > 0:
        if "judge" not in checkpoint:
            raise ImageReadError(f"{path}: consistency > 0 but the checkpoint has no judge")
        state.judge = SemanticJudge(state.channels).to(state.device)
        state.judge.load_state_dict(checkpoint["judge"])
        state.judge.eval().requires_grad_(False)
    return state
