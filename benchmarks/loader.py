"""Training steps with the batches prepared in the loop (workers: 0) against background
batch workers (TrainConfig.workers), through the real trainer, in one run.

    python benchmarks/loader.py [--device cuda] [--workers 4] [--model slim_u22] [--steps 40]

Trains the same config twice on simulated Nissl images (192² crops x 4, the recipe's
pretraining), plain and with workers, and prints each one's median seconds per step
(the trainer's own log: waiting for the batch included, validations excluded) and the ratio.
On a CPU whose cores all train the workers take their compute from the step's (compare
benchmarks/prefetch.py); on a GPU the loop's crops and targets are about half of a step.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

warnings.simplefilter("ignore")


def main() -> None:
    from cellsynth.segment.trainer import TrainConfig, train
    from cellsynth.simulate import preset, write_simulation

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--model", default="slim_u22")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--crop", type=int, default=192)
    parser.add_argument("--json", help="write the timings here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp, "sim")
        write_simulation(preset("nissl"), n=16, size=256, seed=0, out=data, progress=False)
        config = TrainConfig(model=args.model, steps=args.steps, crop=args.crop, batch=4,
                             device=args.device, val_every=10**6, checkpoint_every=10**6)
        times = {}
        for name, workers in (("loop", 0), (f"workers_{args.workers}", args.workers)):
            started = time.perf_counter()
            train(replace(config, workers=workers), [data], Path(tmp, name), progress=False)
            wall = time.perf_counter() - started
            log = [json.loads(line) for line in Path(tmp, name, "log.jsonl").open()]
            seconds = [e["seconds"] for e in log if "seconds" in e][5:]  # (warm-up)
            times[name] = {"median_s": float(np.median(seconds)), "wall_s": wall}
            print(f"{name}: {times[name]['median_s']:.4f} s/step (median of {len(seconds)}), "
                  f"{wall:.1f} s in all", flush=True)
    loop, work = times["loop"]["median_s"], times[f"workers_{args.workers}"]["median_s"]
    print(f"{args.workers} batch workers vs the loop ({args.model}, {args.device}): "
          f"{loop / work:.2f}x faster per step")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": args.device, "model": args.model,
                                               "crop": args.crop, "times": times,
                                               "ratio": loop / work}, indent=1))


if __name__ == "__main__":
    main()
