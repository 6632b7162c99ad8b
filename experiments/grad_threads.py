"""bf16 gradients at 1 and 2 torch threads against fp32 on the same batches: is a 2-thread
bf16 training step less accurate (every recipe run trained at 2 threads so far scored below
its seed's 1-thread run)? Uses a recipe run's pretrained detector and its simulated images.

    python experiments/grad_threads.py runs/nissl-k2      # a `cellsynth run` folder
"""

import sys

import numpy as np
import torch

from cellsynth.config import from_dict
from cellsynth.segment.batches import _batch
from cellsynth.segment.cpn import build_model, set_core_precision
from cellsynth.segment.data import CropSampler, load_labeled
from cellsynth.segment.predict import read_detector_checkpoint
from cellsynth.segment.trainer import TrainConfig

run = sys.argv[1]
_, ckpt = read_detector_checkpoint(f"{run}/pretrain", needed_by="grad_threads")
config = from_dict(TrainConfig, {**ckpt["config"], "device": "cpu"}, where="pretrain")
sim = load_labeled([f"{run}/simulate"], pixel_size_um=config.pixel_size_um,
                   normalization=config.normalization)
sampler = CropSampler(sim, config.crop, config.augment, np.random.default_rng(0))
spec = ckpt["model_spec"]
batches = [_batch(sampler, config, spec["samples"], spec["order"]) for _ in range(3)]


def grads(precision: str, threads: int, batch: dict) -> tuple[torch.Tensor, float]:
    """All parameter gradients of one training step on ``batch``, and its loss."""
    torch.set_num_threads(threads)
    model = build_model(**ckpt["model_spec"])
    model.load_state_dict(ckpt["model"])
    if precision != "fp32":
        set_core_precision(model, precision)
    model.train()
    torch.manual_seed(0)
    targets = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in batch.items()}
    out = model(batch["inputs"], targets=targets)
    out["loss"].backward()
    flat = torch.cat([p.grad.detach().float().ravel() for p in model.parameters()
                      if p.grad is not None])
    return flat, float(out["loss"].detach())


def error(g: torch.Tensor, ref: torch.Tensor) -> float:
    return float((g - ref).norm() / ref.norm())


for b, batch in enumerate(batches):
    ref, loss = grads("fp32", 1, batch)
    row = [f"batch {b}: loss fp32 {loss:.4f}",
           f"fp32 2 threads vs 1: rel err {error(grads('fp32', 2, batch)[0], ref):.2e}"]
    for t in (1, 2):
        g, loss = grads("bf16", t, batch)
        cos = float(torch.nn.functional.cosine_similarity(g, ref, dim=0))
        row.append(f"bf16 {t} thread(s): loss {loss:.4f} rel err {error(g, ref):.3e} cos {cos:.5f}")
    twice = error(grads("bf16", 1, batch)[0], grads("bf16", 1, batch)[0])
    row.append(f"bf16 1 thread twice: {twice:.1e}")
    print(" | ".join(row), flush=True)
