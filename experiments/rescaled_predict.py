"""A run's predictions of images at another pixel size: the way before b29b262 (rescaled
copies predicted, labels put back by nearest neighbour) against predict resampling the
image itself (bilinear, window by window) and drawing the outlines at its own pixels.

The annotated images of ``--data`` (the train split: nothing is tuned here) are upsampled
``--factor`` x and stated at ``pixel size / factor``; each detector of ``--detectors``
(e.g. a `cellsynth demo` folder's) predicts them both ways, and the paired bootstrap over
image tiles (detectors as seeds) gives new - old.

    python experiments/rescaled_predict.py --data ../shared/data/dsb2018_fluo/train \\
        --detectors /tmp/demo19/out --json docs/results/rescaled_predict/results.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from _paired import compare  # noqa: E402  (same folder)

from cellsynth.evaluate.matching import matching_tiles
from cellsynth.io.datasets import load_dataset
from cellsynth.io.files import write_json
from cellsynth.io.images import read_labels, write_image, write_labels
from cellsynth.io.resample import rescale_image, rescale_labels
from cellsynth.pipeline import layout
from cellsynth.pipeline.staging import _same_dtype
from cellsynth.segment.folders import predict_folder
from cellsynth.segment.predict import read_detector_checkpoint


def _at_pixel_size(detector: Path, px: float, out: Path) -> Path:
    """The detector's checkpoint, recording ``px`` as the pixel size it works at (an
    experiment's detectors record none: predict would not resample for them)."""
    import torch

    _, ckpt = read_detector_checkpoint(detector)
    ckpt.setdefault("config", {})["pixel_size_um"] = px
    torch.save(ckpt, out)
    return out


def _upsampled(data: str, factor: int, px: float, out: Path, upsample: bool) -> Path:
    """The annotated images stated at ``px / factor`` um/px: ``factor`` x larger
    (``upsample``; their labels by nearest neighbour, which favours the old way's
    nearest-neighbour labels), or as they are (the detector then sees the cells ``factor`` x
    smaller than it was trained on, but the truth is the annotators' own pixels)."""
    (out / "images").mkdir(parents=True)
    (out / "labels").mkdir()
    for s in load_dataset(data, require_labels=True):
        image = s.read_image()
        write_image(out / "images" / f"{s.id}.png", _same_dtype(
            rescale_image(image, factor), image.dtype) if upsample else image)
        labels = s.read_labels().astype(np.uint32)
        write_labels(out / "labels" / f"{s.id}.tif",
                     rescale_labels(labels, factor) if upsample else labels)
    (out / layout.META).write_text(json.dumps({"pixel_size_um": px / factor}))
    return out


def _old_way(detector: Path, big: Path, factor: int, px: float, out: Path) -> Path:
    """Rescaled copies (rounded to the image's dtype) predicted at the working pixels, the
    labels resized back to each image's shape by nearest neighbour."""
    copies = out / "copies"
    (copies / "images").mkdir(parents=True)
    for s in load_dataset(big):
        image = s.read_image()
        write_image(copies / "images" / f"{s.id}.png",
                    _same_dtype(rescale_image(image, 1 / factor), image.dtype))
    (copies / layout.META).write_text(json.dumps({"pixel_size_um": px}))
    predicted = out / "predicted"
    predict_folder(detector, copies, predicted, precision="fp32", progress=False)
    for s in load_dataset(big):
        path = predicted / layout.LABELS / f"{s.id}.tif"
        shape = s.read_image().shape[:2]
        write_labels(path, rescale_labels(read_labels(path).astype(np.uint32), 1.0,
                                          shape=shape))
    return predicted


def _units(predicted: Path, truth: Path, tiles: int) -> list:
    found = []
    for s in load_dataset(truth, require_labels=True):
        t, p = s.read_labels(), read_labels(predicted / layout.LABELS / f"{s.id}.tif")
        found += matching_tiles(t, p, tiles)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an annotated folder (not a test split)")
    parser.add_argument("--detectors", required=True,
                        help="a `cellsynth demo` folder (its detectors/<setting>/s0) or a "
                             "folder of detector run folders")
    parser.add_argument("--factor", type=int, default=2)
    parser.add_argument("--pixel-size", type=float, default=0.5,
                        help="the images' pixel size as the detectors take them")
    parser.add_argument("--tiles", type=int, default=2)
    parser.add_argument("--as-they-are", action="store_true",
                        help="state the images at pixel size / factor without upsampling them")
    parser.add_argument("--json")
    args = parser.parse_args()
    root = Path(args.detectors)
    detectors = sorted(p.parent for p in root.rglob(layout.LAST)
                       if (p.parent / "config.yaml").is_file())
    if not detectors:
        raise SystemExit(f"{root}: no detector run (last.pt beside config.yaml) below it")
    a, b = [], []
    with tempfile.TemporaryDirectory() as tmp:
        big = _upsampled(args.data, args.factor, args.pixel_size, Path(tmp) / "big",
                         not args.as_they_are)
        for i, run in enumerate(detectors):
            detector = _at_pixel_size(run, args.pixel_size, Path(tmp) / f"detector{i}.pt")
            new = Path(tmp) / f"new{i}"
            predict_folder(detector, big, new, precision="fp32", progress=False)
            old = _old_way(detector, big, args.factor, args.pixel_size, Path(tmp) / f"old{i}")
            a.append([_units(new, big, args.tiles)])
            b.append([_units(old, big, args.tiles)])
            print(f"{run}: done")
    sa, sb, diff = compare(a, b)
    if args.json:
        write_json(Path(args.json), {
            "data": args.data, "factor": args.factor, "pixel_size_um": args.pixel_size,
            "upsampled": not args.as_they_are,
            "tiles": args.tiles, "detectors": [str(d) for d in detectors],
            "a": "predict resamples the image (new)", "b": "rescaled copies, labels put back "
            "by nearest neighbour (old)", "summary_a": sa, "summary_b": sb, "a_minus_b": diff})


if __name__ == "__main__":
    main()
