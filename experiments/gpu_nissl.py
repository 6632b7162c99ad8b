"""The Nissl 2-image recipe and two compute-hungry variants on one GPU, in one timed call.

Issue 11 asks for the converged version on a GPU when a session is lent one; a lease is
~15 minutes, so this script does what fits, in one command, and packs what the test split
needs for the paired comparison done afterwards on the CPU machine
(``experiments/compare_runs.py``):

1. a smoke run of every stage of ``cellsynth run`` on the GPU (tiny settings), which also
   measures one process's training steps per second;
2. 3 seeds each of, side by side on the one GPU (one process per run):
   ``base``  configs/nissl-k2.yaml unchanged (the control: the same recipe as on the CPUs);
   ``u22``   the same with celldetection's full CpnU22 (4x the arithmetic of slim_u22);
   ``long``  4x the simulated images and as many pretraining steps as fit the deadline
             (skipped below 4000 steps);
3. ``runs.tar.gz``: per run the config, stage times, validation logs, test predictions
   and metrics (no weights).

    python experiments/gpu_nissl.py --data .devdata/nissl_rat_sscx --out $OUT --budget 470

(the wheels: ``bash benchmarks/gpu.sh --fetch``; the data: copy ../shared/data/nissl_rat_sscx
to .devdata/, ignored in .git/info/exclude; carry both.) First run, 2026-12-04, H200, before
the trainer had batch workers: one process trained at 0.13 s per step, 3 side by side as
well (the loop's crops and targets, not the GPU, set the pace), so the 3 control runs reached
step 2070 of 2500 when the budget ran out (docs/results/gpu_h200/recipe_attempt_driver.log).
Every run now prepares its batches in ``--workers`` processes (4 alone: 0.035 s per step).

The test split is predicted and scored by each run's last stages only (never used to choose
anything), exactly as ``cellsynth run`` does on the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "nissl-k2.yaml"
T0 = time.monotonic()


def elapsed() -> float:
    return time.monotonic() - T0


WORKERS = 2


def recipe(data: Path, **changes) -> dict:
    config = yaml.safe_load(RECIPE.read_text())
    for section in ("pretrain", "finetune"):
        config[section]["workers"] = WORKERS
    real = config["real"]
    for key in ("train", "val"):
        real[key] = str(data / "train")
    real["test"] = str(data / "test")
    for section, values in changes.items():
        if isinstance(values, dict) and isinstance(config.get(section), dict):
            config[section] = {**config[section], **values}
        else:
            config[section] = values
    return config


DEVICE = "cuda"


def launch(name: str, config: dict, seed: int, work: Path, timeout: float) -> subprocess.Popen:
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**config, "device": DEVICE}, sort_keys=False))
    out = work / "runs" / f"{name}-s{seed}"
    log = open(work / "runs" / f"{name}-s{seed}.log", "w")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = ["timeout", "-s", "KILL", str(int(timeout)), sys.executable, "-m", "cellsynth", "run",
           str(path), "--out", str(out), "--seed", str(seed), "--threads", "1"]
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def stage_seconds(run: Path) -> dict:
    state = json.loads((run / "state.json").read_text())
    return {k: v.get("seconds") for k, v in state.items() if isinstance(v, dict)}


def metrics(run: Path) -> tuple[float, float] | None:
    path = run / "evaluate" / "metrics.json"
    if not path.is_file():
        return None
    m = json.loads(path.read_text())
    return m["f1"][0], m["f1_avg"]


def pack(work: Path, out: Path) -> None:
    keep = ("config.yaml", "state.json", "metrics.json", "log.jsonl", "run.json", "meta.json")
    with tarfile.open(out / "runs.tar.gz", "w:gz") as tar:
        for path in sorted((work / "runs").rglob("*")):
            rel = path.relative_to(work)
            if not path.is_file() or "simulate" in rel.parts:
                continue
            if (path.name in keep or path.suffix == ".log"
                    or ("labels" in rel.parts and "predict" in rel.parts)):
                tar.add(path, arcname=str(rel))
        for path in work.glob("*.yaml"):
            tar.add(path, arcname=path.name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("/tmp/gpu_nissl"))
    ap.add_argument("--budget", type=float, default=470.0, help="seconds for all of it")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workers", type=int, default=2, help="batch workers of each run")
    ap.add_argument("--smoke-only", action="store_true",
                    help="stop after the smoke run (a check of the script and the GPU path)")
    ap.add_argument("--tiny", action="store_true",
                    help="a check of this script on the CPU: every run a few steps")
    args = ap.parse_args()
    global DEVICE, WORKERS
    WORKERS = args.workers
    if args.tiny:
        DEVICE = "cpu"
    data, work = args.data.resolve(), args.work
    (work / "runs").mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    import torch
    name = "cpu" if args.tiny else torch.cuda.get_device_name(0)
    print(f"[{elapsed():.0f}s] torch {torch.__version__}, {name}, "
          f"{os.cpu_count()} CPUs", flush=True)

    # 1. smoke: every stage on the GPU, and one process's speed
    smoke = recipe(data, name="smoke",
                   simulate={"n": 24, "n_val": 4},
                   pretrain={"steps": 200, "val_every": 100},
                   finetune={"steps": 40, "val_every": 20}, soup=2)
    if args.tiny:
        smoke = recipe(data, name="smoke", simulate={"n": 4, "n_val": 2, "size": 128},
                       pretrain={"steps": 4, "val_every": 2, "crop": 64},
                       finetune={"steps": 2, "val_every": 1, "crop": 64}, soup=2,
                       predict={"overlap": 32, "tta": False})
    proc = launch("smoke", smoke, 0, work, timeout=150)
    rc = proc.wait()
    run = work / "runs" / "smoke-s0"
    if rc != 0:
        print((work / "runs" / "smoke-s0.log").read_text()[-6000:])
        pack(work, args.out)
        raise SystemExit(f"smoke run failed (rc {rc})")
    stages = stage_seconds(run)
    rate = smoke["pretrain"]["steps"] / stages["pretrain"]
    print(f"[{elapsed():.0f}s] smoke ok: stages {stages}; pretraining {rate:.1f} step/s "
          f"(one process, 2 validations included)", flush=True)

    if args.smoke_only:
        pack(work, args.out)
        return

    # 2. the settings side by side
    left = args.budget - elapsed() - 30
    parallel_rate = 0.5 * rate           # assumed share with 9 processes on 16 cores
    usable = left - 90                   # simulating 1600 images, soup, prediction
    long_steps = int((usable * parallel_rate - 3 * 400) // 500 * 500)
    settings = {
        "base": recipe(data, name="base"),
        "u22": recipe(data, name="u22", pretrain={"model": "u22"}, finetune={"model": "u22"}),
    }
    if (2500 + 3 * 400) / parallel_rate + 60 > left:  # not even the recipe fits: it alone
        settings = {"base": settings["base"]}
    elif long_steps >= 4000:
        long_steps = min(long_steps, 10000)
        settings["long"] = recipe(data, name="long", simulate={"n": 1600},
                                  pretrain={"steps": long_steps, "val_every": 250})
    if args.tiny:
        tiny = {"pretrain": {"steps": 3, "val_every": 3, "crop": 64},
                "finetune": {"steps": 2, "val_every": 2, "crop": 64},
                "simulate": {"n": 4, "n_val": 2, "size": 128}, "predict": {"tta": False}}
        for config in settings.values():
            for section, values in tiny.items():
                config[section] = {**config[section], **values}
    print(f"[{elapsed():.0f}s] {left:.0f} s left; settings {list(settings)}; long pretraining "
          f"{long_steps} steps (at an assumed {parallel_rate:.1f} step/s each)", flush=True)
    procs = {}
    for name, config in settings.items():
        for seed in args.seeds:
            procs[f"{name}-s{seed}"] = launch(name, config, seed, work, timeout=left)
    while any(p.poll() is None for p in procs.values()):
        time.sleep(5)
        done = [k for k, p in procs.items() if p.poll() is not None]
        if int(elapsed()) % 60 < 5:
            print(f"[{elapsed():.0f}s] finished: {done}", flush=True)

    # 3. what came out
    rows = []
    for key, p in procs.items():
        run = work / "runs" / key
        score = metrics(run)
        try:
            secs = stage_seconds(run)
        except (OSError, ValueError):
            secs = {}
        rows.append((key, p.returncode, score, secs.get("pretrain"), secs.get("finetune")))
    pack(work, args.out)
    print(f"[{elapsed():.0f}s] run            rc  F1@0.5 F1avg  pretrain_s finetune_s")
    for key, rc, score, pre, ft in rows:
        s = f"{score[0]:.3f}  {score[1]:.3f}" if score else "  -      -  "
        print(f"{key:14s} {rc:3d}  {s}  {pre or 0:8.0f} {ft or 0:8.0f}")
    for key in procs:
        if procs[key].returncode:
            print(f"--- {key} log tail ---")
            print((work / "runs" / f"{key}.log").read_text()[-1500:])
            break


if __name__ == "__main__":
    main()
