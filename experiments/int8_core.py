"""int8 for the CPN's core on a CPU without bf16: how much faster, how different the cells?

    python experiments/int8_core.py --detector RUN --calibrate DIR --images DIR [--threads N]
                                    [--json OUT]

torch.ao FX post-training static quantisation (x86 qconfig: int8 activations per tensor,
weights per channel) cannot trace a whole celldetection CPN (an assert on the input range in
its Normalize, shape checks in CPNCore.forward), so each traceable part is quantised on its
own: the U-Net backbone (its Normalize replaced by the same arithmetic without the assert,
its OrderedDict output restored) and the four heads; CPNCore's glue (feature selection,
resizing, the contour sampling) stays fp32. Observers are calibrated on the images of
``--calibrate`` (e.g. the k annotated training images), then ``--images`` (others, not the
calibration ones; never a test split for a decision) are predicted with `predict_image` by
the fp32 detector and by the int8 one. Printed: seconds per image and their ratio; cells;
F1@0.5 and F1avg of the int8 labels against the fp32 labels (agreement), and of each against
the annotations where ``--images`` has them.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore")
PARTS = ("backbone", "score_head", "location_head", "fourier_head", "refinement_head")


class _Normalize(torch.nn.Module):
    """celldetection's Normalize without its range assert (FX cannot trace the assert)."""

    def __init__(self, mean, std) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class _AsDict(torch.nn.Module):
    """A traced backbone returns its features as a tuple; CPNCore looks them up by name."""

    def __init__(self, inner, keys) -> None:
        super().__init__()
        self.inner, self.keys = inner, keys

    def forward(self, x):
        out = self.inner(x)
        return OrderedDict(zip(self.keys, out)) if not isinstance(out, dict) else out


def quantize_core(model: torch.nn.Module, calibration: list[np.ndarray]) -> torch.nn.Module:
    """A copy of ``model`` (a CPN) whose core's backbone and heads run in int8."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    model = copy.deepcopy(model).eval()
    core = model.core
    norm = core.backbone.normalize.transform.transforms[0]
    core.backbone.normalize = _Normalize(norm.mean, norm.std)
    example = torch.from_numpy(calibration[0][:256, :256].transpose(2, 0, 1).copy())[None]
    seen = {}
    hooks = [getattr(core, n).register_forward_hook(
        lambda mod, inp, out, n=n: seen.setdefault(n, (inp, out)) and None) for n in PARTS]
    with torch.no_grad():
        core(example)
    for h in hooks:
        h.remove()
    keys = list(seen["backbone"][1].keys())
    mapping = get_default_qconfig_mapping("x86")
    prepared = {n: prepare_fx(getattr(core, n), mapping, example_inputs=seen[n][0])
                for n in PARTS}
    for n in PARTS[1:]:
        setattr(core, n, prepared[n])
    core.backbone = _AsDict(prepared["backbone"], keys)
    with torch.no_grad():
        for image in calibration:
            core(torch.from_numpy(image.transpose(2, 0, 1).copy())[None])
    for n in PARTS[1:]:
        setattr(core, n, convert_fx(prepared[n]))
    core.backbone = _AsDict(convert_fx(prepared["backbone"]), keys)
    return model


def main() -> None:
    from cellsynth.evaluate import matching
    from cellsynth.hardware import configure_threads
    from cellsynth.io.datasets import load_dataset
    from cellsynth.io.normalize import apply_range, intensity_range
    from cellsynth.segment.predict import Detector, load_detector, predict_image

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--detector", type=Path, required=True)
    parser.add_argument("--calibrate", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    threads = configure_threads(args.threads)
    fp32 = load_detector(args.detector, precision="fp32")

    def scaled(image):
        low, high = intensity_range(image, fp32.normalization)
        return apply_range(image, low, high)

    calibration = [scaled(s.read_image()) for s in load_dataset(args.calibrate)]
    int8 = Detector(**{**fp32.__dict__, "model": quantize_core(fp32.model, calibration)})
    rows = []
    for sample in load_dataset(args.images):
        image = sample.read_image()
        times, labels = {}, {}
        for name, det in (("fp32", fp32), ("int8", int8)):
            predict_image(det, image[:256, :256])  # warm-up: kernels built on first use
            started = time.perf_counter()
            labels[name] = predict_image(det, image)
            times[name] = time.perf_counter() - started
        m = matching(labels["fp32"], labels["int8"])
        truth = {}
        if sample.label_path is not None:  # accuracy of each against the annotation
            gt = sample.read_labels()
            for name in labels:
                g = matching(gt, labels[name])
                truth[f"{name}_f1_50"] = round(float(g.f1[0]), 3)
                truth[f"{name}_f1_avg"] = round(float(np.mean(g.f1)), 3)
        rows.append({"image": sample.id, "fp32_s": round(times["fp32"], 2),
                     "int8_s": round(times["int8"], 2),
                     "ratio": round(times["fp32"] / times["int8"], 2),
                     "cells_fp32": int(labels["fp32"].max()),
                     "cells_int8": int(labels["int8"].max()),
                     "f1_50_vs_fp32": round(float(m.f1[0]), 3),
                     "f1_avg_vs_fp32": round(float(np.mean(m.f1)), 3), **truth})
        print(json.dumps(rows[-1]), flush=True)
    total = sum(r["fp32_s"] for r in rows) / sum(r["int8_s"] for r in rows)
    print(f"{threads} thread(s): int8 core {total:.2f}x the fp32 path")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"threads": threads, "ratio": round(total, 2),
                                         "images": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
