"""Does preparing the next training batch in a thread while the step runs pay on this CPU?

    python benchmarks/prefetch.py [--precision bf16] [--blocks 4]

Times slim_u22 steps at 256^2 x 4 as the trainer takes them (crops, augmentation and CPN
targets, then the step), plain and with the next batch prepared in a thread, in interleaved
blocks of 5 steps in one run, and prints the ratio. On the 2-core AMX Xeon (2026-12-03):
0.679 vs 0.674 s, 1.01x (the targets take 0.075 s; the thread takes its compute from the
step's), so the trainer does not prefetch.
"""

from __future__ import annotations

import argparse
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

warnings.simplefilter("ignore")


def main() -> None:
    from cellsynth.segment import cpn
    from cellsynth.segment.batches import _batch
    from cellsynth.segment.data import Augment, CropSampler, LabeledImage
    from cellsynth.segment.trainer import TrainConfig
    from cellsynth.simulate import simulate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--blocks", type=int, default=4, help="blocks of 5 steps each way")
    args = parser.parse_args()
    torch.manual_seed(0)
    items = [LabeledImage(str(i), image.astype(np.float32) / 255, labels)
             for i, (image, labels) in enumerate(simulate("nissl", 6, 512, seed=0))]
    config = TrainConfig(crop=256, batch=4)
    model = cpn.build_model(in_channels=3, model="slim_u22")
    cpn.set_core_precision(model, args.precision)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sampler = CropSampler(items, config.crop, Augment(), np.random.default_rng(0))
    model.train()

    def make() -> dict[str, torch.Tensor]:
        return _batch(sampler, config, model.samples, model.order)

    def step(batch: dict[str, torch.Tensor]) -> None:
        loss = model(batch["inputs"], targets=batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    times: dict[str, list[float]] = {"plain": [], "prefetch": [], "batch": []}
    for _ in range(2):  # warm-up
        step(make())
    with ThreadPoolExecutor(1) as pool:
        for _ in range(args.blocks):
            for _ in range(5):
                t0 = time.perf_counter()
                batch = make()
                t1 = time.perf_counter()
                step(batch)
                times["plain"].append(time.perf_counter() - t0)
                times["batch"].append(t1 - t0)
            upcoming = pool.submit(make)
            for _ in range(5):
                t0 = time.perf_counter()
                batch = upcoming.result()
                upcoming = pool.submit(make)
                step(batch)
                times["prefetch"].append(time.perf_counter() - t0)
            upcoming.result()
    for name, values in times.items():
        print(f"{name}: median {np.median(values):.3f} s")
    print(f"prefetch vs plain ({args.precision}, {torch.get_num_threads()} threads): "
          f"{np.median(times['plain']) / np.median(times['prefetch']):.2f}x faster")


if __name__ == "__main__":
    main()
