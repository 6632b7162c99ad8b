"""Refiner speed: seconds per training step (fp32 vs bf16, same run) and refined images/s.

    python benchmarks/refine.py [--crop 128] [--batch 4] [--steps 10] [--gen-size 256] [--threads N]

Targets on 2 CPU cores: <= 0.6 s/step with bf16 at 128 x 128, batch 4; >= 8 images/s when
refining 256 x 256 images. Inputs are synthetic (random images, blob labels): speed does not
depend on content.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from cellsynth.pipeline.estimate import blob_labels
from cellsynth.refine.config import RefineConfig
from cellsynth.refine.generate import Refiner, refine_images
from cellsynth.refine.trainer import new_state, resolve_precision, train_step


def _seconds_per_step(config: RefineConfig, bf16: bool, steps: int, warmup: int = 3) -> float:
    rng = np.random.default_rng(0)
    state = new_state(config, 3, "cpu", bf16=bf16)
    c, b = config.crop, config.batch
    sim = torch.from_numpy(rng.uniform(-1, 1, (b, 3, c, c)).astype(np.float32))
    real = torch.from_numpy(rng.uniform(-1, 1, (b, 3, c, c)).astype(np.float32))
    labels = torch.from_numpy(blob_labels(rng, b, c))
    for _ in range(warmup):  # oneDNN builds its kernels on the first calls
        train_step(state, sim, labels, real)
    started = time.perf_counter()
    for _ in range(steps):
        train_step(state, sim, labels, real)
    return (time.perf_counter() - started) / steps


def _images_per_s(config: RefineConfig, bf16: bool, size: int, n: int, batch: int) -> float:
    rng = np.random.default_rng(1)
    state = new_state(config, 3, "cpu", bf16=bf16)
    refiner = Refiner(state.generator, config, step=0, checkpoint=None, device=state.device,
                      bf16=bf16)
    images = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]
    labels = list(blob_labels(rng, n, size))
    refine_images(refiner, images[:batch], labels[:batch], batch=batch)  # warm-up
    started = time.perf_counter()
    refine_images(refiner, images, labels, batch=batch)
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crop", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--gen-size", type=int, default=256)
    parser.add_argument("--gen-n", type=int, default=32)
    parser.add_argument("--gen-batch", type=int, default=8)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        # on a shared 2-core machine one thread can beat two: OpenMP barriers stall when
        # another process holds a core
        torch.set_num_threads(args.threads)
    config = RefineConfig(crop=args.crop, batch=args.batch)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 supported: "
          f"{resolve_precision('auto', torch.device('cpu'))}")
    print(f"model: width {config.width}, {config.blocks} SPADE ResBlocks, hidden "
          f"{config.spade_hidden}; D {config.d_scales} scales x {config.d_layers} layers")
    fp32 = _seconds_per_step(config, False, args.steps)
    bf16 = _seconds_per_step(config, True, args.steps)
    print(f"train step {args.crop}x{args.crop} batch {args.batch}: fp32 {fp32:.3f} s/step, "
          f"bf16 {bf16:.3f} s/step (bf16 is {fp32 / bf16:.2f}x faster; target <= 0.6)")
    for name, flag in (("fp32", False), ("bf16", True)):
        rate = _images_per_s(config, flag, args.gen_size, args.gen_n, args.gen_batch)
        print(f"generate {args.gen_size}x{args.gen_size} batch {args.gen_batch} {name}: "
              f"{rate:.1f} images/s (target >= 8)")


if __name__ == "__main__":
    main()
