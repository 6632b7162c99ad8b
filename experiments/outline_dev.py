"""Can the recipe's outlines be sharpened at prediction time, without retraining? Two of the
CPN's settings act only when it draws a contour: ``refinement_iterations`` (how many times
each contour point moves by the refinement head's offset, at most ``refinement_margin`` px
per move; trained with 4) and ``samples`` (points per contour; trained with 64). F1 on the
Nissl development images (the 2 training images the recipe does not annotate; the test
split is not opened), each soup predicting as the recipe does (8-view TTA, its own
threshold, the faint cut from the recipe's 2 annotated images, NMS 0.5) with each setting.

    OMP_NUM_THREADS=2 python experiments/outline_dev.py \\
        --detectors runs/nissl-k2-s0/soup runs/nissl-k2-s1/soup runs/nissl-k2-s2/soup \\
        --json docs/results/outline_dev/results.json

Each setting is paired with the recipe's (4 iterations, 64 samples) over the development
images cut into 2 x 2 tiles (the paired bootstrap of compare_dev.py, seeds averaged).
"""

from __future__ import annotations

import time
from pathlib import Path

from _nissl_dev_set import (
    ANNOTATED,
    arguments,
    detector_path,
    dev_items,
    recipe_faint_cut,
    recipe_predictions,
    scores,
    summary,
    tile_matchings,
    write,
)
from _paired import compare

from cellsynth.segment.predict import load_detector, set_nms

NMS = 0.5  # the recipe's
BASE = (4, 64)  # (refinement iterations, samples) as trained
SETTINGS = ((0, 64), (2, 64), (4, 64), (6, 64), (8, 64), (4, 128))


def tag(setting: tuple[int, int]) -> str:
    # the recipe's own setting shares nms_dev.py's cache entries (same predictions)
    return f"_{NMS:g}" if setting == BASE else f"_{NMS:g}_r{setting[0]}_s{setting[1]}"


def main() -> None:
    args = arguments(__doc__)
    items = dev_items(args.data)
    cut = recipe_faint_cut(args.data)
    out = summary(items) | {"annotated_images": list(ANNOTATED), "nms": NMS,
                            "paired_with": {"refinement_iterations": BASE[0],
                                            "samples": BASE[1]}}
    units: dict[tuple[int, int], list] = {}
    for name in args.detectors:
        path = detector_path(args.run, name)
        res = {}
        t0 = time.time()
        for setting in SETTINGS:
            det = load_detector(path, say_precision=False)  # fresh: the CPN caches samplings
            set_nms(det, NMS)
            det.model.refinement_iterations, det.model.samples = setting
            preds = recipe_predictions(det, path, items, cut, Path("/tmp/nms_dev_cache"),
                                       tag=tag(setting))
            key = f"r{setting[0]}_s{setting[1]}"
            res[key] = m = scores(preds, items)
            units.setdefault(setting, []).append(
                tile_matchings(items, preds))
            print(f"{name} {key}: F1@0.5 {m['f1_50']:.3f} F1avg {m['f1_avg']:.3f} "
                  f"F1@0.75 {m['f1_75']:.3f} P {m['precision_50']:.2f} "
                  f"R {m['recall_50']:.2f} n {m['detected']}", flush=True)
        out["detectors"][name] = {"by_setting": res, "seconds": round(time.time() - t0, 1)}
        write(args.json, out)
    out["paired"] = {}
    for setting in SETTINGS:
        if setting != BASE:
            key = f"r{setting[0]}_s{setting[1]}"
            print(f"{key} - r{BASE[0]}_s{BASE[1]}:")
            _, _, diff = compare(units[setting], units[BASE])
            out["paired"][key] = diff
    write(args.json, out)


if __name__ == "__main__":
    main()
