"""What the faint cut costs a whole-section prediction: measuring every painted proposal.

    python benchmarks/faint.py [--size 4096] [--detector RUN --image FILE --annotated DIR]
                               [--percentile 5] [--threads N]

A section-like image (a mosaic, see predict_blank.py) is predicted twice in the same run:
baseline `predict_image` without a cut, then with the cut (``faint=``) measured on
``--annotated`` (default: the simulated images the tiny detector was trained on). Printed:
seconds of each, the ratio (with / without), the time of the measurement alone
(:func:`cellsynth.segment.faint.drop_faint` on the proposals), cells kept and dropped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    from predict_blank import _fluo_section, _image_section

    from cellsynth.hardware import configure_threads
    from cellsynth.segment import faint as faint_module
    from cellsynth.segment.predict import faint_cut, load_detector, predict_image
    from cellsynth.segment.tiles import TileCount

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--detector", type=Path, help="a `cellsynth train` run")
    parser.add_argument("--image", type=Path, help="a real image to make the section of")
    parser.add_argument("--annotated", type=Path, help="annotated dataset folder for the cut")
    parser.add_argument("--percentile", type=float, default=5.0)
    parser.add_argument("--work", type=Path, default=Path("runs/bench-faint"))
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    threads = configure_threads(args.threads)
    if args.image is not None:
        if args.detector is None or args.annotated is None:
            parser.error("--image needs --detector and --annotated")
        section = _image_section(args.image, args.size, 1.0)
    else:
        section = _fluo_section(args.size, 1.0)
    if args.detector is None:
        from predict_wsi import _tiny_detector

        args.detector = _tiny_detector(args.work)
        args.annotated = args.annotated or args.work / "sim"
    detector = load_detector(args.detector, precision="fp32")
    cut = faint_cut(args.annotated, args.percentile, detector)
    print(f"{section.shape} section, detector {args.detector}, {threads} threads, fp32; cut "
          f"{cut.cut:.3f} ({'stain' if cut.dark else 'intensity'}, {cut.n_objects} cells)")
    timed = {"drop_faint": 0.0}
    measure = faint_module.drop_faint

    def timed_drop(*a, **k):
        started = time.perf_counter()
        out = measure(*a, **k)
        timed["drop_faint"] += time.perf_counter() - started
        return out

    results = {}
    for name, use in (("without the cut (baseline)", None), ("with the cut", cut)):
        count = TileCount()
        started = time.perf_counter()
        if use is not None:
            import cellsynth.segment.predict as predict

            predict.drop_faint = timed_drop
        labels = predict_image(detector, section, faint=use, count=count)
        seconds = time.perf_counter() - started
        results[name] = (seconds, labels)
        print(f"{name:28s} {seconds:7.1f} s  cells {len(np.unique(labels)) - 1}, dropped "
              f"{count.faint}")
    (t0, l0), (t1, l1) = results.values()
    print(f"ratio {t1 / t0:.3f}x the baseline's time; measuring the proposals alone "
          f"{timed['drop_faint']:.2f} s")
    kept = np.unique(l1[l1 > 0])
    print(f"cells kept {len(kept)} of {len(np.unique(l0)) - 1}")


if __name__ == "__main__":
    main()
