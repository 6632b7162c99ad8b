"""Fitted presets vs base presets vs annotations: median cell area (um^2), cells per mm^2 and
median elongation (axis ratio - 1 of each cell's second moments).

    python docs/results/fit_simulator/measure.py [--fit]

``--fit`` first refits the YAML files beside this script (``cellsynth fit-simulator``, which
reads only ``<set>/train/images``) and times them; this script is the only code that opens
``train/labels``. Base and fitted configs are measured on the labels of 16 simulated 512^2
images (seed 123; 256 for a config that varies between images). Prints a markdown table
and writes results.json beside this script.
"""

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np

from cellsynth.io.images import read_labels
from cellsynth.simulate import simulate, simulation_config
from cellsynth.simulate.estimate import _shapes
from cellsynth.simulate.fit import median_diameter_um

HERE = Path(__file__).parent
DATA = HERE.parents[3] / "shared" / "data"
SETS = [("nissl_rat_sscx", "nissl", 0.346), ("dsb2018_fluo", "fluo", 0.5),
        ("gbm40_brain_he", "he", 0.25), ("tcga_lgg_brain_he", "he", 0.25)]
COLUMNS = ["median_area_um2", "cells_per_mm2", "median_elongation"]


def _stats(label_maps, px):
    areas, ratios, pixels = [], [], 0
    for labels in label_maps:
        labels = labels.astype(np.int64)
        counts = np.bincount(labels.ravel())[1:]
        ratio, _ = _shapes(labels, counts.size)
        areas.append(counts[counts > 0])
        ratios.append(ratio[counts > 0])
        pixels += labels.size
    areas, ratios = np.concatenate(areas), np.concatenate(ratios)
    return [round(float(np.median(areas) * px * px), 1),
            round(float(areas.size / (pixels * px * px) * 1e6)),
            round(float(np.median(ratios) - 1), 3)]


def truth(name, px):
    files = sorted((DATA / name / "train" / "labels").iterdir())
    return _stats((read_labels(f) for f in files), px)


def simulated(config, n=None, size=512, seed=123):
    """Labels of ``n`` simulated images: 16, or 256 for a config that varies between images
    (fluo: zoom 0.4-3x, density 0.35-3x per image; 16 moved by +-20 % between seeds)."""
    n = n or (256 if config.variation.active else 16)
    return _stats((labels for _, labels in simulate(config, n, size, seed=seed)),
                  config.pixel_size_um)


def fit(name, base_name, px):
    started = time.perf_counter()
    subprocess.run(["cellsynth", "fit-simulator", "--real", str(DATA / name / "train"),
                    "--preset", base_name, "--pixel-size", str(px), "--force",
                    "--out", str(HERE / f"{name}.yaml")], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    return round(time.perf_counter() - started)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", action="store_true", help="refit the YAML files first")
    args = ap.parse_args()
    old = json.loads((HERE / "results.json").read_text())["datasets"]
    rows = {}
    print("| dataset | base area / mm^2 / elong. | fitted | truth | base vs truth | "
          "fitted vs truth | median diameter um |")
    print("|---|---|---|---|---|---|---|")
    for name, base_name, px in SETS:
        seconds = fit(name, base_name, px) if args.fit else old.get(name, {}).get("fit_seconds")
        base = simulation_config(base_name, pixel_size_um=px)
        fitted = simulation_config(base_name, config_file=HERE / f"{name}.yaml")
        b, f, t = simulated(base), simulated(fitted), truth(name, px)
        rel = [[round(x / y - 1, 3) for x, y in zip(s, t)] for s in (b, f)]
        rows[name] = {"preset": base_name, "pixel_size_um": px, "base": b, "fitted": f,
                      "truth": t, "fit_seconds": seconds, "base_vs_truth": rel[0],
                      "fitted_vs_truth": rel[1]}

        def cell(values):
            return " / ".join(f"{v:g}" for v in values)

        def pct(values):
            return " / ".join(f"{100 * v:+.0f} %" for v in values)

        print(f"| {name} ({base_name}, {px} um/px) | {cell(b)} | {cell(f)} | {cell(t)} | "
              f"{pct(rel[0])} | {pct(rel[1])} | {median_diameter_um(base):.2f} -> "
              f"{median_diameter_um(fitted):.2f} |")
    (HERE / "results.json").write_text(json.dumps({
        "what": "cellsynth fit-simulator fitted from <set>/train/images only; median cell "
                "area (um^2), cells per mm^2 and median elongation (axis ratio - 1) of 16 "
                "simulated 512^2 images (seed 123) of the base preset and of the fitted "
                "config, against the annotated truth of <set>/train/labels (measure.py is the "
                "only code that opens labels)",
        "date": time.strftime("%Y-%m-%d"),
        "commands": "python docs/results/fit_simulator/measure.py --fit  (each fit: "
                    "OMP_NUM_THREADS=1 cellsynth fit-simulator --real "
                    "../shared/data/<set>/train --preset <preset> --pixel-size UM --out "
                    "docs/results/fit_simulator/<set>.yaml)",
        "columns": COLUMNS, "datasets": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
