"""Training steps on a busy machine: torch's default threads vs cellsynth's thread policy.

    python benchmarks/threads.py [--steps 8]

For a refiner step (128², batch 4) and a detector step (CpnSlimU22, 128², batch 2) it measures
the median step time on the quiet machine with cellsynth's policy (the baseline), then with
one competing busy process twice: with torch's default threads (one per core, what every run
used before) and with cellsynth's policy (:func:`cellsynth.hardware.choose_threads`, which
counts the cores the other process takes). Two competitors: a pure-Python spin loop (one
core) and another torch job with torch's default threads (matrix products). It prints the
slowdowns against the baseline; the target is <= 2.5x under contention.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np
import torch

warnings.simplefilter("ignore")


COMPETITORS = {
    "a busy Python process": "while True: pass",
    "a torch job with default threads": (
        "import torch\nx = torch.randn(512, 512)\nwhile True: x = (x @ x).tanh()"),
}


def _refiner_step():
    from cellsynth.refine.config import RefineConfig
    from cellsynth.refine.trainer import new_state, train_step

    config = RefineConfig(crop=128, batch=4, precision="fp32")
    state = new_state(config, 3, "cpu", bf16=False)
    rng = np.random.default_rng(0)
    sim = torch.rand(4, 3, 128, 128) * 2 - 1
    real = torch.rand(4, 3, 128, 128) * 2 - 1
    labels = torch.from_numpy(rng.integers(0, 6, (4, 128, 128)))
    return lambda: train_step(state, sim, labels, real)


def _detector_step():
    from cellsynth.segment import cpn
    from cellsynth.simulate import simulate

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = cpn.build_model(in_channels=3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    items = []
    for image, labels in simulate("nissl", 2, 128, seed=0):
        item = cpn.training_targets(labels, samples=model.samples, order=model.order, rng=rng)
        item["inputs"] = image.astype(np.float32) / 255
        items.append(item)
    batch = cpn.collate(items)
    model.train()

    def step():
        loss = model(batch["inputs"], targets=batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return step


def _median_step(step, steps: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    from cellsynth.hardware import choose_threads, usable_cores

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    cores = usable_cores()
    print(f"{cores} usable cores, torch {torch.__version__}, precision fp32")
    for name, make in (("refiner", _refiner_step), ("detector", _detector_step)):
        step = make()
        quiet_threads = choose_threads()[0]
        torch.set_num_threads(quiet_threads)
        baseline = _median_step(step, args.steps)
        print(f"{name}: quiet {baseline:.3f} s/step ({quiet_threads} threads)")
        for what, code in COMPETITORS.items():
            competitor = subprocess.Popen([sys.executable, "-c", code])
            try:
                time.sleep(2.0)
                torch.set_num_threads(cores)  # torch's default: one thread per core
                default = _median_step(step, args.steps)
                policy_threads = choose_threads()[0]
                torch.set_num_threads(policy_threads)
                policy = _median_step(step, args.steps)
            finally:
                competitor.kill()
                competitor.wait()
            print(f"  + {what}: default {cores} threads {default:.3f} s/step "
                  f"({default / baseline:.1f}x slower), policy {policy_threads} thread(s) "
                  f"{policy:.3f} s/step ({policy / baseline:.2f}x slower; "
                  f"{default / policy:.1f}x faster than default)")


if __name__ == "__main__":
    main()
