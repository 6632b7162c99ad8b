"""How should the 8 TTA views' outlines of one cell be combined? The recipe takes the
angle-by-angle *median* radius around the members' mean centre (``tta._median_outline``);
with 8 views of one network a mean, a trimmed mean or a score-free union/intersection may
place the border better. F1 on the Nissl development images (the 2 training images the
recipe does not annotate; the test split is not opened), each soup predicting as the recipe
does (8-view TTA, its own threshold, the faint cut from the recipe's 2 annotated images,
NMS 0.5), only the combination changed.

    OMP_NUM_THREADS=2 python experiments/tta_outline_dev.py \\
        --detectors runs/nissl-k2-s0/soup runs/nissl-k2-s1/soup runs/nissl-k2-s2/soup \\
        --json docs/results/tta_outline_dev/results.json

Each rule is paired with the median over the development images cut into 2 x 2 tiles (the
paired bootstrap of compare_dev.py, seeds averaged).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
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

from cellsynth.segment import tta
from cellsynth.segment.predict import load_detector, set_nms

NMS = 0.5  # the recipe's
BASE = "median"


def _trimmed(radii: np.ndarray) -> np.ndarray:
    r = np.sort(radii, axis=0)
    return r[1:-1].mean(axis=0) if len(r) > 2 else r.mean(axis=0)


RULES = {"median": lambda r: np.median(r, axis=0), "mean": lambda r: np.mean(r, axis=0),
         "trimmed": _trimmed, "q40": lambda r: np.quantile(r, 0.4, axis=0),
         "q60": lambda r: np.quantile(r, 0.6, axis=0)}


def outline_by(rule):
    def combine(members: list[np.ndarray], samples: int) -> np.ndarray:
        centre = np.mean([m.mean(axis=0) for m in members], axis=0)
        angles = np.linspace(-np.pi, np.pi, samples, endpoint=False)
        radii = []
        for m in members:
            d = m - centre
            theta = np.arctan2(d[:, 1], d[:, 0])
            order = np.argsort(theta)
            radii.append(np.interp(angles, theta[order], np.hypot(d[:, 0], d[:, 1])[order],
                                   period=2 * np.pi))
        r = rule(np.asarray(radii))
        return np.stack([centre[0] + r * np.cos(angles), centre[1] + r * np.sin(angles)],
                        axis=-1).astype(np.float32)
    return combine


def main() -> None:
    args = arguments(__doc__)
    items = dev_items(args.data)
    cut = recipe_faint_cut(args.data)
    out = summary(items) | {"annotated_images": list(ANNOTATED), "nms": NMS,
                            "paired_with": BASE}
    units: dict[str, list] = {}
    median = tta._median_outline
    for name in args.detectors:
        path = detector_path(args.run, name)
        det = load_detector(path, say_precision=False)
        set_nms(det, NMS)
        res = {}
        t0 = time.time()
        for rule, fn in RULES.items():
            tta._median_outline = median if rule == BASE else outline_by(fn)
            try:
                # the median shares nms_dev.py's cache entries (the same predictions)
                preds = recipe_predictions(det, path, items, cut, Path("/tmp/nms_dev_cache"),
                                           tag=f"_{NMS:g}" if rule == BASE
                                           else f"_{NMS:g}_tta-{rule}")
            finally:
                tta._median_outline = median
            res[rule] = m = scores(preds, items)
            units.setdefault(rule, []).append(
                tile_matchings(items, preds))
            print(f"{name} {rule}: F1@0.5 {m['f1_50']:.3f} F1avg {m['f1_avg']:.3f} "
                  f"F1@0.75 {m['f1_75']:.3f} P {m['precision_50']:.2f} "
                  f"R {m['recall_50']:.2f} n {m['detected']}", flush=True)
        out["detectors"][name] = {"by_rule": res, "seconds": round(time.time() - t0, 1)}
        write(args.json, out)
    out["paired"] = {}
    for rule in RULES:
        if rule != BASE:
            print(f"{rule} - {BASE}:")
            _, _, diff = compare(units[rule], units[BASE])
            out["paired"][rule] = diff
    write(args.json, out)


if __name__ == "__main__":
    main()
