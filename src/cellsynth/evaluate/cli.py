"""The ``cellsynth evaluate`` and ``cellsynth realism`` commands: load folders, call the
library, print a compact report and write the JSON report atomically."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from cellsynth.errors import ConfigError, DatasetError
from cellsynth.evaluate.folders import evaluate_folders
from cellsynth.evaluate.matching import Matching
from cellsynth.evaluate.realism import RealismResult, realism
from cellsynth.io.datasets import load_dataset
from cellsynth.io.files import check_output_file, write_json

__all__ = ["run_evaluate", "run_realism", "format_matching", "format_realism"]

_SWD_MIN_SIDE = 16  # the coarsest SWD pyramid level


def format_matching(result: Matching) -> str:
    """A table with one row per IoU threshold, then F1avg and the object counts."""
    lines = [f"{'IoU':>4} {'TP':>7} {'FP':>7} {'FN':>7} {'precision':>9} {'recall':>7} "
             f"{'F1':>6} {'AP':>6} {'mean_IoU':>8} {'PQ':>6}"]
    for i, t in enumerate(result.thresholds):
        lines.append(
            f"{t:4.2f} {result.tp[i]:7d} {result.fp[i]:7d} {result.fn[i]:7d} "
            f"{result.precision[i]:9.3f} {result.recall[i]:7.3f} {result.f1[i]:6.3f} "
            f"{result.ap[i]:6.3f} {result.mean_iou[i]:8.3f} {result.pq[i]:6.3f}"
        )
    lines.append(f"F1avg {result.f1_avg:.4f}  ({result.n_images} images, "
                 f"{result.n_gt} ground-truth and {result.n_pred} predicted objects)")
    return "\n".join(lines)


def run_evaluate(args: argparse.Namespace) -> int:
    """``cellsynth evaluate --pred DIR --gt DIR [--json FILE [--force]]``."""
    if args.json is not None:  # before the work, not after it
        check_output_file(args.json, force=args.force, inputs=(args.gt, args.pred))
    evaluation = evaluate_folders(args.gt, args.pred, progress=not args.quiet)
    print(format_matching(evaluation.total))
    if evaluation.unscored:
        n = len(evaluation.unscored)
        print(f"not scored: {n} predicted image(s) without ground truth in {args.gt}, e.g. "
              f"{evaluation.unscored[0]}")
    if args.json is not None:
        write_json(args.json, evaluation.to_json())
        print(f"wrote {args.json}")
    return 0


def _load_images(root: Path, min_side: int, channel: int | None = None) -> list[np.ndarray]:
    """The images of a folder (whole sections: windows of their tissue, not decoded);
    ``channel``: that channel of its multi-channel images (gray and RGB ones as they are, so
    a gray simulation compares with one channel of the real images)."""
    from cellsynth.io.sections import image_or_windows
    from cellsynth.pipeline.stain import channel_count

    dataset = load_dataset(root)
    images = []
    for sample in dataset:
        picked = channel if channel is not None and channel_count(sample.image_path) > 1 \
            else None
        for image in image_or_windows(sample.image_path, channel=picked):
            if min(image.shape[:2]) < min_side:
                raise DatasetError(f"{sample.image_path}: image {image.shape[0]}x"
                                   f"{image.shape[1]} is smaller than the {min_side} px crops "
                                   f"(use a smaller --crop)")
            images.append(image)
    return images


def format_realism(result: RealismResult) -> str:
    """Human-readable summary of the realism metrics."""
    c, s = result.c2st, result.swd
    channels = "gray" if result.channels == 1 else "RGB"
    gray_note = ", RGB converted to gray" if result.converted_to_gray else ""
    split = f"split by {c.split}"
    if c.split == "image":
        split += f", >= {c.held_out_images} image(s)/set held out"
    if c.repeats > 1:
        split += (f"; mean of {c.repeats} repeats: "
                  f"{' '.join(f'{v:.3f}' for v in c.repeat_accuracies)}")
    return "\n".join([
        f"images: A {result.n_a}, B {result.n_b} ({channels}{gray_note})",
        f"C2ST accuracy  {c.accuracy:.3f} +- {c.sem:.3f}  (0.5 = indistinguishable; "
        f"{len(c.fold_accuracies) // c.repeats} folds {split}; {c.crops_per_set} crops/set of "
        f"{c.crop_size} px, {c.epochs} epochs)",
        f"SWD x1e3       {s.mean_x1e3:.2f}  (per level, finest first: "
        f"{' '.join(f'{v:.2f}' for v in s.per_level_x1e3)})",
        f"histogram W1   {result.histogram_w1:.4f}  (per channel: "
        f"{' '.join(f'{v:.4f}' for v in result.histogram_w1_per_channel)})",
        f"spectrum RMS   {result.spectrum_rms_log10:.3f} log10 power",
    ])


def run_realism(args: argparse.Namespace) -> int:
    """``cellsynth realism --a DIR --b DIR [--json FILE] [--seed N] [--folds K] ...``."""
    folds = getattr(args, "folds", 5)
    crop = getattr(args, "crop", 64)
    crops = getattr(args, "crops", 512)
    epochs = getattr(args, "epochs", 12)
    threads = getattr(args, "threads", None)
    repeats = getattr(args, "repeats", 1)
    if folds < 2:
        raise ConfigError(f"--folds must be at least 2, got {folds}")
    if crop < 8:
        raise ConfigError(f"--crop must be at least 8 px, got {crop}")
    if crops < folds:
        raise ConfigError(f"--crops must be at least --folds ({folds}), got {crops}")
    if args.json is not None:  # before the minutes of work (it replaced any file, even an
        # input image, without a word; audit)
        check_output_file(args.json, force=getattr(args, "force", False),
                          inputs=(args.a, args.b))
    start = time.perf_counter()
    min_side = max(crop, _SWD_MIN_SIDE)
    channel = getattr(args, "channel", None)
    a_images = _load_images(args.a, min_side, channel)
    b_images = _load_images(args.b, min_side, channel)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = realism(a_images, b_images, seed=args.seed, folds=folds, crop_size=crop,
                         n_crops=crops, epochs=epochs, threads=threads, progress=True,
                         repeats=repeats)
    for warning in caught:
        print(f"cellsynth realism: warning: {warning.message}", file=sys.stderr)
    seconds = time.perf_counter() - start
    print(format_realism(result))
    print(f"took {seconds:.0f} s")
    if args.json is not None:
        write_json(args.json, {"a": str(args.a), "b": str(args.b), **result.to_dict(),
                               "seconds": round(seconds, 1)})
        print(f"wrote {args.json}")
    return 0
