"""Do unlabelled cell bodies and clearings in the simulation help a zero-label H&E detector?

tcga_lgg's zero-label detectors outline pink glioma cell bodies and neuropil compartments as
nuclei (docs/results.md, "Zero-label H&E"). This diagnoses on the *training* split (labels
used only to score; the test split is never opened): the detector of issue 12's experiment
(`experiments/fit_detectors.py`: tiny_u22, 192² crops, threshold from 16 held-out simulated
images), 300 steps, seed 0, on four simulations: the ``--spread floor`` fit and the base
``he`` preset, each with and without the structures of ``BODIES``.

    python experiments/he_bodies.py --out runs/tcga-abl           # configs + commands
    python experiments/he_bodies.py --out runs/tcga-abl --run     # also run, 2 at a time

Each writes ``OUT/<kind>/results.json`` (F1 on the training images).
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # fit_detectors, a sibling script
from fit_detectors import DATA, SETS, experiment  # noqa: E402

# What "with distractors" adds to the simulation (background keys of the he preset).
BODIES = {"bodies": 0.6, "free_bodies": 15, "membrane": 0.08, "clearing": 0.4,
          "clearing_um": [0.3, 1.5], "vacuoles": 10, "vacuole_um": [1.0, 4.0]}


def configs(name: str, fits: Path, steps: int) -> dict[str, dict]:
    preset, px = next((p, x) for n, p, x in SETS if n == name)
    fitted = yaml.safe_load((fits / f"{name}.yaml").read_text())
    fitted.pop("preset", None)
    out = {}
    for kind, overrides in (("floor", fitted), ("base", None)):
        plain = experiment(name, preset, px, overrides)
        plain.update(test=str(DATA / name / "train"), seeds=[0],
                     name=f"{name} on its TRAIN split: {kind}")
        plain["pretrain"]["steps"] = steps
        out[kind] = plain
        bodies = copy.deepcopy(plain)
        background = bodies["simulate"].setdefault("overrides", {}).setdefault("background", {})
        background.update(BODIES)
        bodies["name"] += " + bodies and clearings"
        out[f"{kind}_dis"] = bodies
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--set", default="tcga_lgg_brain_he")
    parser.add_argument("--fits", type=Path,
                        default=HERE.parent / "docs" / "results" / "fit_simulator" / "floor")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--run", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    commands = []
    for kind, config in configs(args.set, args.fits, args.steps).items():
        path = args.out / f"{kind}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        commands.append(["cellsynth", "experiment", str(path), "--out", str(args.out / kind)])
        print(" ".join(commands[-1]))
    if args.run:  # two 1-thread jobs at a time on 2 cores
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CELLSYNTH_THREADS": "1"}
        for pair in (commands[:2], commands[2:]):
            jobs = [subprocess.Popen(c, env=env, stdout=open(f"{c[-1]}.log", "a"),  # noqa: SIM115
                                     stderr=subprocess.STDOUT) for c in pair]
            if any(j.wait() for j in jobs):
                raise SystemExit("a run failed; see its .log")


if __name__ == "__main__":
    main()
