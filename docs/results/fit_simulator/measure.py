"""Fitted presets vs base presets vs annotations: median cell area (um^2) and cells per mm^2.

    python docs/results/fit_simulator/measure.py

The fits (``cellsynth fit-simulator``, the YAML files beside this script) read only
``<set>/train/images``; this script is the only code that opens ``train/labels``. Base and
fitted configs are measured on the labels of 16 simulated 512^2 images (seed 123).
"""

from pathlib import Path

import numpy as np

from cellsynth.io.images import read_labels
from cellsynth.simulate import simulate, simulation_config
from cellsynth.simulate.fit import median_diameter_um

HERE = Path(__file__).parent
DATA = HERE.parents[3] / "shared" / "data"
SETS = [("nissl_rat_sscx", "nissl", 0.346), ("dsb2018_fluo", "fluo", 0.5),
        ("gbm40_brain_he", "he", 0.25), ("tcga_lgg_brain_he", "he", 0.25)]


def _stats(label_maps, px):
    areas, pixels = [], 0
    for labels in label_maps:
        counts = np.bincount(labels.ravel().astype(np.int64))[1:]
        areas.append(counts[counts > 0])
        pixels += labels.size
    areas = np.concatenate(areas)
    return np.median(areas) * px * px, areas.size / (pixels * px * px) * 1e6


def truth(name, px):
    files = sorted((DATA / name / "train" / "labels").iterdir())
    return _stats((read_labels(f) for f in files), px)


def simulated(config, n=16, size=512, seed=123):
    return _stats((labels for _, labels in simulate(config, n, size, seed=seed)),
                  config.pixel_size_um)


def main():
    print("| dataset | base area | base /mm^2 | fitted area | fitted /mm^2 | truth area | "
          "truth /mm^2 | base vs truth | fitted vs truth | median diameter um |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, base_name, px in SETS:
        base = simulation_config(base_name, pixel_size_um=px)
        fitted = simulation_config(base_name, config_file=HERE / f"{name}.yaml")
        (ba, bd), (fa, fd), (ta, td) = simulated(base), simulated(fitted), truth(name, px)
        print(f"| {name} ({base_name}, {px} um/px) | {ba:.1f} | {bd:.0f} | {fa:.1f} | "
              f"{fd:.0f} | {ta:.1f} | {td:.0f} | {100 * (ba / ta - 1):+.0f} % / "
              f"{100 * (bd / td - 1):+.0f} % | {100 * (fa / ta - 1):+.0f} % / "
              f"{100 * (fd / td - 1):+.0f} % | {median_diameter_um(base):.2f} -> "
              f"{median_diameter_um(fitted):.2f} |")


if __name__ == "__main__":
    main()
