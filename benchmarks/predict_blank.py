"""Whole-section prediction with glass around the tissue: blank tiles skipped vs all predicted.

    python benchmarks/predict_blank.py [--size 4096] [--tissue 0.4] [--detector RUN]
                                       [--image FILE --pixel-size UM] [--threads N]

A section-like image: tissue inside an ellipse covering ``--tissue`` of the image, glass
around it. By default the tissue is a mosaic of simulated fluorescence nuclei (0.5 um/px) and
the glass the simulation's own background level with its camera noise (the standard
deviation of its darkest half), and the detector a tiny CPN trained for 30 steps (fine for
speed, not for accuracy). With ``--image`` the tissue repeats a real image (e.g. a Nissl test
image) on glass of its brightest 1 % colour with the same noise as its flattest 16 x 16 window,
predicted by ``--detector``.

Baseline: `predict_image` with ``empty_contrast=0`` (every tile predicted, what `predict` did
before), in the same run. Printed: seconds and MP/s of each, the blank tiles, the ratio, and
whether the labels are identical (they must be: a blank tile owns no visible cell).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def _ellipse(shape: tuple[int, int], fraction: float) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    # an ellipse of axes ratio 1.4 with the given share of the image's area
    b = np.sqrt(fraction * h * w / (np.pi * 1.4))
    a = 1.4 * b
    return ((yy - h / 2) / b) ** 2 + ((xx - w / 2) / a) ** 2 <= 1


def _fluo_section(size: int, fraction: float, seed: int = 0) -> np.ndarray:
    from predict_wsi import _mosaic

    tissue = _mosaic(size, seed)
    dark = tissue[tissue <= np.median(tissue)].astype(np.float32)
    rng = np.random.default_rng(seed)
    glass = rng.normal(float(np.median(dark)), float(dark.std()), tissue.shape)
    out = np.where(_ellipse(tissue.shape, fraction), tissue, np.clip(np.rint(glass), 0, 255))
    return out.astype(np.uint8)


def _image_section(path: Path, size: int, fraction: float, seed: int = 0) -> np.ndarray:
    from cellsynth.io.images import read_image

    image = read_image(path)
    image = image if image.ndim == 3 else image[..., None]
    reps = -(-size // min(image.shape[:2]))
    tissue = np.concatenate([np.concatenate([np.rot90(image, i + j) if image.shape[0] ==
                                             image.shape[1] else image for j in range(reps)],
                                            axis=1) for i in range(reps)], axis=0)
    tissue = tissue[:size, :size]
    gray = image.astype(np.float32).mean(-1)
    bright = image[gray >= np.percentile(gray, 99)].reshape(-1, image.shape[-1]).mean(0)
    h, w = image.shape[:2]
    windows = [image[y:y + 16, x:x + 16].astype(np.float32)
               for y in range(0, h - 16, 16) for x in range(0, w - 16, 16)]
    noise = min(windows, key=lambda w: w.std()).std((0, 1))
    rng = np.random.default_rng(seed)
    glass = rng.normal(bright, noise, tissue.shape)
    out = np.where(_ellipse(tissue.shape[:2], fraction)[..., None], tissue,
                   np.clip(np.rint(glass), 0, 255)).astype(np.uint8)
    return out if out.shape[-1] > 1 else out[..., 0]


def main() -> None:
    from cellsynth.hardware import configure_threads
    from cellsynth.segment.predict import load_detector, predict_image
    from cellsynth.segment.tiles import EMPTY_CONTRAST, TileCount

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--tissue", type=float, default=0.4, help="share of the image")
    parser.add_argument("--detector", type=Path, help="a `cellsynth train` run")
    parser.add_argument("--image", type=Path, help="a real image to make the tissue of")
    parser.add_argument("--pixel-size", type=float, help="--image's pixel size (um)")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-predict-blank"))
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    threads = configure_threads(args.threads)
    if args.image is not None:
        if args.detector is None:
            parser.error("--image needs --detector (a model for that kind of image)")
        section = _image_section(args.image, args.size, args.tissue)
    else:
        section = _fluo_section(args.size, args.tissue)
    if args.detector is None:
        from predict_wsi import _tiny_detector

        args.detector = _tiny_detector(args.work)
    detector = load_detector(args.detector, precision="fp32")
    px = args.pixel_size if args.image is not None else detector.pixel_size_um
    print(f"{section.shape} section, tissue {args.tissue:.0%}, detector {args.detector}, "
          f"{threads} threads, fp32")
    results = {}
    for name, contrast in (("every tile (before)", 0.0),
                           (f"blank tiles skipped (empty_contrast {EMPTY_CONTRAST})",
                            EMPTY_CONTRAST)):
        count = TileCount()
        started = time.perf_counter()
        labels = predict_image(detector, section, pixel_size_um=px, empty_contrast=contrast,
                               count=count)
        seconds = time.perf_counter() - started
        results[name] = (seconds, labels)
        megapixels = section.shape[0] * section.shape[1] / 1e6
        print(f"{name:48s} {seconds:7.1f} s  {megapixels / seconds:.3f} MP/s  "
              f"tiles predicted {count.predicted}, blank {count.blank}, cells "
              f"{int(labels.max())}")
    (t0, l0), (t1, l1) = results.values()
    same = np.array_equal(l0, l1)
    print(f"ratio {t0 / t1:.2f}x, labels identical: {same}")
    if not same:
        changed = int((l0 != l1).sum())
        print(f"  {changed} pixels differ ({changed / l0.size:.2e} of the image)")


if __name__ == "__main__":
    main()
