"""`cellsynth experiment` with its independent units side by side (``--processes 2``) against
one at a time with all threads, through the real experiment runner, in one run.

    python benchmarks/experiment_side_by_side.py [--seeds 2] [--repeats 2] [--json OUT]

The experiment is a small one of the accuracy issue's kind on simulated fluorescence nuclei
(written here, so no data is needed): per seed a detector on the k = 2 annotated images
alone, and one pretrained on the simulation then fine-tuned on them (CpnSlimU22, 128² x 4;
steps kept short so a repeat takes minutes). The two ways alternate ``--repeats`` times (the
machine's speed swings; each repeat swaps which goes first); the script prints each one's
wall time, phase 2 (the test split's predictions, in the calling process either way)
included, and the ratio of the medians. Run it on a quiet machine: with a core busy, the
thread policy leaves 1 thread and 1 process, and both ways are the same.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

warnings.simplefilter("ignore")


def main() -> None:
    from cellsynth.hardware import choose_precision, configure_threads
    from cellsynth.pipeline.config import SimulateOptions
    from cellsynth.pipeline.experiment import ExperimentConfig, Setting, run_experiment
    from cellsynth.segment.parallel import parallel_plan
    from cellsynth.segment.trainer import TrainConfig
    from cellsynth.simulate import preset, write_simulation

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=80, help="pretraining and supervised "
                        "steps (fine-tuning: half)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="write the timings here")
    args = parser.parse_args()
    threads = configure_threads()
    processes, each = parallel_plan(2, "cpu")
    precision = choose_precision("auto", "cpu")
    print(f"{args.seeds} seeds x 2 settings; {precision}; in turn with {threads} thread(s), "
          f"or {processes} processes with {each} each", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_simulation(preset("fluo"), n=8, size=256, seed=100, out=tmp / "train",
                         progress=False)
        write_simulation(preset("fluo"), n=2, size=256, seed=200, out=tmp / "test",
                         progress=False)
        train = dict(crop=128, batch=4, val_every=max(1, args.steps // 4))
        config = ExperimentConfig(
            name="bench", train=str(tmp / "train"), test=str(tmp / "test"),
            seeds=tuple(range(args.seeds)),
            settings=(Setting("real_k2", "real", 2), Setting("sim_ft_k2", "simulated", 2)),
            compare=(("sim_ft_k2", "real_k2"),),
            simulate=SimulateOptions(preset="fluo", n=32, size=256, workers=1), n_val=4,
            pretrain=TrainConfig(steps=args.steps, **train),
            finetune=TrainConfig(steps=args.steps // 2, lr=1e-3, replay=0.5, **train),
            supervised=TrainConfig(steps=args.steps, **train), tiles=1, bootstrap=100)
        times: dict[str, list[float]] = {"in turn": [], "side by side": []}
        for k in range(args.repeats):
            ways = (("in turn", 1), ("side by side", 2))
            for way, n in ways if k % 2 == 0 else ways[::-1]:  # (first one pays warm-up)
                started = time.perf_counter()
                run_experiment(config, tmp / f"{way.replace(' ', '_')}{k}",
                               log=lambda _: None, processes=n)
                times[way].append(time.perf_counter() - started)
            print(f"repeat {k + 1}: in turn {times['in turn'][-1]:.1f} s, side by side "
                  f"{times['side by side'][-1]:.1f} s", flush=True)
    turn, side = (statistics.median(t) for t in times.values())
    print(f"side by side vs in turn ({precision.name}): {turn / side:.2f}x faster "
          f"(medians {side:.1f} s vs {turn:.1f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "seeds": args.seeds, "steps": args.steps, "precision": precision.name,
            "threads_in_turn": threads, "processes": processes, "threads_each": each,
            "seconds": times, "speedup": turn / side}, indent=1) + "\n")


if __name__ == "__main__":
    main()
