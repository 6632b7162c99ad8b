"""Issue 17 acceptance: one detector, the same real images stored six ways, same predictions.

Trains a CPN on a labeled folder (or takes ``--model``), writes every test image as uint8,
uint16 (same values), uint16 x 256, 12-bit (x 16), float32 in [0, 1] and float32 x 1000,
predicts each copy and compares: cell count, matching against the uint8 prediction at IoU 0.98,
and F1@0.5 / F1avg against the ground truth. Thresholds come from the training folder.

    OMP_NUM_THREADS=1 python experiments/bit_depth.py \
        --train ../shared/data/dsb2018_fluo/train --test ../shared/data/dsb2018_fluo/test \
        --out runs/bit_depth --json docs/results/bit_depth/results.json
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np

from cellsynth.evaluate import aggregate, matching
from cellsynth.io.datasets import load_dataset
from cellsynth.io.files import write_json
from cellsynth.io.images import read_labels, write_image
from cellsynth.segment.predict import predict_folder
from cellsynth.segment.trainer import TrainConfig, train

VARIANTS = {
    "uint8": lambda x: x,
    "uint16": lambda x: x.astype(np.uint16),
    "uint16x256": lambda x: x.astype(np.uint16) * 256,
    "uint12": lambda x: x.astype(np.uint16) * 16,
    "float01": lambda x: x.astype(np.float32) / 255,
    "floatx1000": lambda x: x.astype(np.float32) * 1000,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", type=Path, help="a trained run instead of training one")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    model = args.model
    if model is None:
        model = args.out / "model"
        config = TrainConfig(steps=args.steps, crop=256, batch=4, val_every=args.steps, seed=0)
        train(config, [args.train], model, val=args.train, resume=(model / "last.pt").exists(),
              force=not (model / "last.pt").exists())
    test = load_dataset(args.test, require_labels=True)
    gt = {s.id: read_labels(s.label_path) for s in test}
    predicted: dict[str, dict[str, np.ndarray]] = {}
    for name, convert in VARIANTS.items():
        folder = args.out / "images" / name
        folder.mkdir(parents=True, exist_ok=True)
        for sample in test:
            write_image(folder / f"{sample.id}.tif", convert(sample.read_image()))
        pred_dir = args.out / "pred" / name
        predict_folder(model, folder, pred_dir, force=True, progress=False)
        predicted[name] = {s.id: read_labels(pred_dir / "labels" / f"{s.id}.tif") for s in test}
    reference = predicted["uint8"]
    rows = {}
    for name, labels in predicted.items():
        n = sum(int(len(np.unique(v)) - 1) for v in labels.values())
        same = aggregate([matching(reference[i], labels[i], thresholds=(0.98,)) for i in gt])
        vs_gt = aggregate([matching(gt[i], labels[i]) for i in gt])
        rows[name] = {"n_cells": n, "f1_vs_uint8_at_iou_0.98": float(same.f1[0]),
                      "f1_50": float(vs_gt.f1[0]), "f1_avg": float(vs_gt.f1_avg)}
        print(f"{name:>11}: {n:5d} cells, agreement with uint8 F1@0.98 {same.f1[0]:.4f}, "
              f"F1@0.5 {vs_gt.f1[0]:.3f}, F1avg {vs_gt.f1_avg:.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, {"experiment": "bit_depth (issue 17)", "train": str(args.train),
                               "test": str(args.test), "n_test_images": len(test),
                               "model": str(model), "machine": platform.processor() or
                               platform.machine(), "variants": rows})
    print(json.dumps(rows["uint8"]))


if __name__ == "__main__":
    main()
