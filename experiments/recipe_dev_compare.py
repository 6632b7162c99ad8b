"""Two sets of Nissl recipe runs compared on the development images (the 2 training images
the recipe does not annotate; never the test split): each run's soup predicted as the recipe
predicts (8-view TTA, the faint cut, NMS 0.5), paired seed by seed over 2 x 2 tiles, with
the misses split as ``shared_errors.miss_kinds`` does (merged / outline / unseen).
Secondary: each run's pretrained detector alone (zero labels, its own threshold, no TTA).

    python experiments/recipe_dev_compare.py --a runs/variant-s0 runs/variant-s1 \\
        --b runs/nissl-k2-s0 runs/nissl-k2-s1 --json docs/results/X/dev.json

``--a`` and ``--b`` pair in order (the same seed at the same place). ``--split test`` scores
the test split instead, the same way (only after the development images decided).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from _nissl_dev_set import (
    RECIPE_NMS,
    arguments,
    recipe_faint_cut,
    recipe_run_predictions,
    scores,
    split_items,
    tile_matchings,
    write,
)
from _paired import compare
from shared_errors import miss_kinds

from cellsynth.segment.predict import load_detector, predict_image


def main() -> None:
    args = arguments(__doc__, extra=lambda ap: (
        ap.add_argument("--a", nargs="+", required=True),
        ap.add_argument("--b", nargs="+", required=True),
        ap.add_argument("--cache", type=Path, default=Path("runs/recipe-dev-cache")),
        ap.add_argument("--split", choices=("dev", "test"), default="dev"),
        ap.add_argument("--test", default="../shared/data/nissl_rat_sscx/test")))
    if len(args.a) != len(args.b):
        raise SystemExit("--a and --b pair in order: give as many runs to each")
    items, out = split_items(args)
    if args.split == "test":
        args.cache = args.cache.with_name(args.cache.name + "-test")
    cut = recipe_faint_cut(args.data)
    out |= {"split": args.split, "nms": RECIPE_NMS, "a": args.a, "b": args.b, "zero_label": {}}
    units: dict[str, list] = {"a": [], "b": [], "a_zero": [], "b_zero": []}
    for side in ("a", "b"):
        for run in map(Path, getattr(args, side)):
            preds = recipe_run_predictions(run, items, cut, args.cache)
            kinds = [miss_kinds(gt, p) for p, (_, gt) in zip(preds, items)]
            m = scores(preds, items) | {"missed_kinds": {k: sum(d[k] for d in kinds)
                                                          for k in kinds[0]}}
            out["detectors"][str(run)] = m
            units[side].append(tile_matchings(items, preds))
            zero = load_detector(run / "pretrain" / "best.pt", say_precision=False)
            zpreds = [np.asarray(predict_image(zero, image)) for image, _ in items]
            out["zero_label"][str(run)] = z = scores(zpreds, items)
            units[f"{side}_zero"].append(tile_matchings(items, zpreds))
            print(f"{side} {run}: F1@0.5 {m['f1_50']:.3f} F1avg {m['f1_avg']:.3f} "
                  f"P {m['precision_50']:.2f} R {m['recall_50']:.2f} n {m['detected']} "
                  f"misses {m['missed_kinds']}; zero labels {z['f1_50']:.3f} / "
                  f"{z['f1_avg']:.3f}", flush=True)
            write(args.json, out)
    print("recipe, a - b:")
    out["paired"] = compare(units["a"], units["b"])[2]
    print("zero labels (the pretrained detectors), a - b:")
    out["paired_zero_label"] = compare(units["a_zero"], units["b_zero"])[2]
    write(args.json, out)


if __name__ == "__main__":
    main()
