"""Issue 12's detector test: does a zero-label detector trained on the simulation fitted by
`cellsynth fit-simulator` (from unlabeled train images) do as well as one trained on the
preset (hand-calibrated for nissl and fluo, uncalibrated for H&E)?

Writes, per dataset, two experiment configs that differ only in the simulation: the base
preset, and the preset with the fitted override of docs/results/fit_simulator/<set>.yaml
inlined. Each trains the zero-label setting ``sim_only`` (tiny_u22, 1000 steps of 192²
crops as the accuracy experiment's pretraining, thresholds from 16 held-out simulated images)
for seeds 0, 1, 2 and predicts the test split once. Then the printed
``experiments/compare_experiments.py`` commands pair fitted with base.

    python experiments/fit_detectors.py --out runs/fit-detectors         # configs + commands
    python experiments/fit_detectors.py --out runs/fit-detectors --run   # also run them, in
                                                                         # order, resumably

``--fits DIR --kind NAME`` takes the fitted YAMLs from DIR instead and names that kind NAME
(configs ``<set>-NAME.yaml``), so fits can be compared with each other on the same base
runs; e.g. the ``--spread floor`` fits, both cores busy, seeds 1 and 2 only:

    python experiments/fit_detectors.py --out runs/fit-detectors \
        --fits docs/results/fit_simulator/floor --kind floor --seeds 1 2 --jobs 2 --run
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
FITS = HERE.parent / "docs" / "results" / "fit_simulator"
DATA = HERE.parents[1] / "shared" / "data"
SETS = [("nissl_rat_sscx", "nissl", 0.346), ("dsb2018_fluo", "fluo", 0.5),
        ("gbm40_brain_he", "he", 0.25), ("tcga_lgg_brain_he", "he", 0.25)]


def experiment(name: str, preset: str, px: float, overrides: dict | None) -> dict:
    simulate = {"preset": preset, "pixel_size_um": px, "n": 400, "size": 256, "workers": 1}
    if overrides:
        simulate["overrides"] = overrides
    return {
        "name": f"{name}: zero labels, {'fitted' if overrides else 'base'} simulation",
        "train": str(DATA / name / "train"), "test": str(DATA / name / "test"),
        "seeds": [0, 1, 2],
        "settings": [{"name": "sim_only", "data": "simulated", "k": 0}],
        "simulate": simulate, "n_val": 16, "tiles": 2,
        "pretrain": {"model": "tiny_u22", "steps": 1000, "crop": 192, "batch": 4,
                     "lr": 0.001, "val_every": 100},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--run", action="store_true", help="run the experiments in order")
    parser.add_argument("--fits", type=Path, default=FITS,
                        help="folder of the fitted <set>.yaml files (default: %(default)s)")
    parser.add_argument("--kind", default="fitted", help="name of the fitted kind")
    parser.add_argument("--sets", nargs="+", default=[name for name, _, _ in SETS],
                        help="datasets (default: all four)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2],
                        help="seeds --run trains (default: 0 1 2; done ones are skipped)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="experiments --run runs at once, one thread each (2 on 2 cores)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    runs = []
    sets = [s for s in SETS if s[0] in args.sets]
    for name, preset, px in sets:
        fitted = yaml.safe_load((args.fits / f"{name}.yaml").read_text())
        fitted.pop("preset", None)
        for kind, overrides in (("base", None), (args.kind, fitted)):
            path = args.out / f"{name}-{kind}.yaml"
            path.write_text(yaml.safe_dump(experiment(name, preset, px, overrides),
                                           sort_keys=False))
            runs.append((path, args.out / f"{name}-{kind}"))
    for config, out in runs:
        print(f"cellsynth experiment {config} --out {out}")
    for name, _, _ in sets:
        a, b = args.out / f"{name}-{args.kind}", args.out / f"{name}-base"
        print(f"python {HERE / 'compare_experiments.py'} --a {a}.yaml {a} --b {b}.yaml {b} "
              f"--settings sim_only --seeds 0 1 2 --json "
              f"{FITS.parent / 'fit_detectors' / name / f'{args.kind}_results.json'}")
    if args.run:  # one thread per job: two 1-thread jobs on 2 cores never oversubscribe
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CELLSYNTH_THREADS": "1"}
        todo = [(config, out, seed) for seed in args.seeds for config, out in runs]
        running: list[subprocess.Popen] = []
        while todo or running:
            while todo and len(running) < args.jobs:
                config, out, seed = todo.pop(0)
                log = open(out.with_suffix(f".s{seed}.log"), "a")  # noqa: SIM115
                running.append(subprocess.Popen(
                    ["cellsynth", "experiment", str(config), "--out", str(out), "--seeds",
                     str(seed)], env=env, stdout=log, stderr=subprocess.STDOUT))
            time.sleep(5)
            for job in [j for j in running if j.poll() is not None]:
                running.remove(job)
                if job.returncode:
                    for other in running:
                        other.wait()
                    sys.exit(f"{job.args[2]}: failed ({job.returncode}); see its .log")


if __name__ == "__main__":
    main()
