"""int8 for the CPN's core on a CPU without bf16: how much faster, how different the cells?

    python experiments/int8_core.py --detector RUN --calibrate DIR --images DIR [--threads N]
                                    [--bf16] [--json OUT]

The core quantised as `predict --precision int8` does (cellsynth.segment.quantize: torch.ao
FX post-training static quantisation of the backbone and the four heads). Observers are
calibrated on the images of ``--calibrate`` (e.g. the k annotated training images), then
``--images`` (others, not the calibration ones; never a test split for a decision) are
predicted with `predict_image` by
the fp32 detector and by the int8 one. Printed: seconds per image and their ratio; cells;
F1@0.5 and F1avg of the int8 labels against the fp32 labels (agreement), and of each against
the annotations where ``--images`` has them.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

warnings.filterwarnings("ignore")


def main() -> None:
    from cellsynth.evaluate import matching
    from cellsynth.hardware import configure_threads
    from cellsynth.io.datasets import load_dataset
    from cellsynth.io.normalize import apply_range, intensity_range
    from cellsynth.segment.predict import Detector, load_detector, predict_image
    from cellsynth.segment.quantize import quantize_core

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--detector", type=Path, required=True)
    parser.add_argument("--calibrate", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--bf16", action="store_true",
                        help="also the bf16 core (what auto picks on a CPU with AMX)")
    args = parser.parse_args()
    threads = configure_threads(args.threads)
    fp32 = load_detector(args.detector, precision="fp32")

    def scaled(image):
        low, high = intensity_range(image, fp32.normalization)
        return apply_range(image, low, high)

    calibration = [scaled(s.read_image()) for s in load_dataset(args.calibrate)]
    int8 = Detector(**{**fp32.__dict__, "model": quantize_core(fp32.model, calibration)})
    variants = {"fp32": fp32, "int8": int8}
    if args.bf16:
        variants["bf16"] = load_detector(args.detector, precision="bf16")
    rows = []
    for sample in load_dataset(args.images):
        image = sample.read_image()
        times, labels = {}, {}
        for name, det in variants.items():
            predict_image(det, image[:256, :256])  # warm-up: kernels built on first use
            started = time.perf_counter()
            labels[name] = predict_image(det, image)
            times[name] = time.perf_counter() - started
        row = {"image": sample.id}
        gt = sample.read_labels() if sample.label_path is not None else None
        for name in variants:
            row[f"{name}_s"] = round(times[name], 2)
            row[f"cells_{name}"] = int(labels[name].max())
            if name != "fp32":
                m = matching(labels["fp32"], labels[name])
                row[f"ratio_{name}"] = round(times["fp32"] / times[name], 2)
                row[f"{name}_f1_50_vs_fp32"] = round(float(m.f1[0]), 3)
                row[f"{name}_f1_avg_vs_fp32"] = round(float(np.mean(m.f1)), 3)
            if gt is not None:  # accuracy of each against the annotation
                g = matching(gt, labels[name])
                row[f"{name}_f1_50"] = round(float(g.f1[0]), 3)
                row[f"{name}_f1_avg"] = round(float(np.mean(g.f1)), 3)
        rows.append(row)
        print(json.dumps(row), flush=True)
    ratios = {name: round(sum(r["fp32_s"] for r in rows) / sum(r[f"{name}_s"] for r in rows), 2)
              for name in variants if name != "fp32"}
    print(f"{threads} thread(s): against the fp32 path " +
          ", ".join(f"{n} {r:.2f}x" for n, r in ratios.items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"threads": threads, "ratios": ratios,
                                         "images": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
