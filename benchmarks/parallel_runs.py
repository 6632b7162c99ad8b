"""A soup's fine-tunings one after the other (with all threads) against side by side (a process
and a share of the cores each), through the real trainer, in one run.

    python benchmarks/parallel_runs.py [--runs 2] [--steps 40] [--repeats 2] [--json OUT]

The runs are the recipe's fine-tunings (configs/nissl-k2.yaml: CpnSlimU22, 192² crops x 4,
half of each batch replayed) on simulated Nissl images, each from the same freshly
initialised detector with its own seed. The two ways alternate ``--repeats`` times (the
machine's speed swings) and the script prints each one's wall time, validations included,
and the ratio of the medians. The baseline is what `cellsynth run` did before: the runs in
turn with the threads the thread policy gives one process.

2026-12-05, a slower 2-core AMX Xeon (its speed swings 2x from minute to minute): bf16
(``auto``), 2 x 120 steps, 2 repeats: 1.17x (215 s in turn, 184 s side by side); fp32
(``CELLSYNTH_PRECISION=fp32``), 2 x 40 steps: 1.33x (docs/results/parallel_runs/).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

warnings.simplefilter("ignore")


def main() -> None:
    from cellsynth.hardware import choose_precision, configure_threads
    from cellsynth.segment.parallel import parallel_plan, train_side_by_side
    from cellsynth.segment.trainer import TrainConfig, train
    from cellsynth.simulate import preset, write_simulation

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2, help="fine-tunings (default 2)")
    parser.add_argument("--steps", type=int, default=40, help="steps of each (default 40)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="write the timings here")
    args = parser.parse_args()
    threads = configure_threads()
    processes, each = parallel_plan(args.runs, "cpu")
    precision = choose_precision("auto", "cpu")
    print(f"{args.runs} runs of {args.steps} steps; {precision}; one after the other with "
          f"{threads} thread(s), or {processes} at a time with {each} each", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, val = tmp / "sim", tmp / "val"
        write_simulation(preset("nissl"), n=16, size=256, seed=0, out=data, progress=False)
        write_simulation(preset("nissl"), n=2, size=256, seed=1, out=val, progress=False)
        base = TrainConfig(steps=1, crop=192, batch=4, val_every=10**6)
        train(base, [data], tmp / "init", progress=False)  # the detector they all start from
        config = replace(base, steps=args.steps, lr=1e-3, warmup=5, replay=0.5,
                         val_every=max(1, args.steps // 4))

        def jobs(tag: str) -> dict:
            return {f"r{r}": dict(config=replace(config, seed=1000 * r), data=[val],
                                  out=tmp / tag / f"r{r}", init=tmp / "init", val=val,
                                  replay=[data], force=True)
                    for r in range(1, args.runs + 1)}

        def step_seconds(tag: str) -> float:
            """The median step of the runs' logs (validations excluded)."""
            return statistics.median(
                e["seconds"] for r in range(1, args.runs + 1)
                for e in map(json.loads, (tmp / tag / f"r{r}" / "log.jsonl").open())
                if "seconds" in e and e["step"] > 2)

        times: dict[str, list[float]] = {"in turn": [], "side by side": []}
        steps: dict[str, list[float]] = {"in turn": [], "side by side": []}
        for k in range(args.repeats):
            started = time.perf_counter()
            for job in jobs("turn").values():  # (each on the threads the policy gives it)
                train(**job, progress=False)
            times["in turn"].append(time.perf_counter() - started)
            steps["in turn"].append(step_seconds("turn"))
            started = time.perf_counter()
            train_side_by_side(jobs("side"), processes=processes, threads=each,
                               progress=False)
            times["side by side"].append(time.perf_counter() - started)
            steps["side by side"].append(step_seconds("side"))
            print(f"repeat {k + 1}: in turn {times['in turn'][-1]:.1f} s "
                  f"({steps['in turn'][-1]:.2f} s/step), side by side "
                  f"{times['side by side'][-1]:.1f} s ({steps['side by side'][-1]:.2f} s/step "
                  f"in each run)", flush=True)
    turn, side = (statistics.median(t) for t in times.values())
    print(f"side by side vs in turn ({args.runs} runs x {args.steps} steps, {precision.name}): "
          f"{turn / side:.2f}x faster (medians {side:.1f} s vs {turn:.1f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "runs": args.runs, "steps": args.steps, "precision": precision.name,
            "threads_in_turn": threads, "processes": processes, "threads_each": each,
            "seconds": times, "step_seconds": steps, "speedup": turn / side}, indent=1) + "\n")


if __name__ == "__main__":
    main()
