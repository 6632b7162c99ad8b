"""Do the accurate recipe's two prediction settings help the fast recipe too?

`configs/nissl-k2.yaml` predicts with a faint cut (detections paler than 95 % of the 2
annotated images' somata dropped, `faint_percentile: 5`) and box NMS at IoU 0.5; both were
chosen on the development images for its soup, then confirmed on the test split. The fast
recipe `configs/nissl-k2-fast.yaml` (what `cellsynth init` gives a CPU without native bf16)
predicts with neither. Each of its runs' detectors is predicted as the fast recipe predicts
(8-view TTA, its own threshold) under four settings: as it is (NMS 0.2, no cut), the cut,
NMS 0.5, both; each paired with "as it is" over the images cut into 2 x 2 tiles (seeds
averaged, the paired bootstrap of compare_dev.py).

    OMP_NUM_THREADS=2 python experiments/fast_predict_dev.py \\
        --detectors runs/fast-s0/finetune runs/fast-s1/finetune --split dev \\
        --json docs/results/fast_predict/dev.json

``--split dev`` (default): the 2 training images the recipes do not annotate; ``--split
test --test ../shared/data/nissl_rat_sscx/test``: the test split, only for the setting the
development images chose (docs/results/fast_predict/PLAN.md).
"""

from __future__ import annotations

import time
from pathlib import Path

from _nissl_dev_set import (
    ANNOTATED,
    arguments,
    recipe_faint_cut,
    recipe_predictions,
    scores,
    split_items,
    tile_matchings,
    write,
)
from _paired import compare

from cellsynth.segment.predict import load_detector, set_nms

# name: (faint cut, NMS box IoU)
SETTINGS = {"as_is": (False, 0.2), "faint": (True, 0.2), "nms05": (False, 0.5),
            "faint_nms05": (True, 0.5)}
BASE = "as_is"


def main() -> None:
    def extra(ap):
        ap.add_argument("--split", choices=("dev", "test"), default="dev")
        ap.add_argument("--test", default="../shared/data/nissl_rat_sscx/test")
        ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
        ap.add_argument("--cache", default="/tmp/fast_predict_cache")

    args = arguments(__doc__, extra)
    items, out = split_items(args)
    cut = recipe_faint_cut(args.data)
    out |= {"split": args.split, "annotated_images": list(ANNOTATED), "paired_with": BASE}
    names = sorted(set(args.settings) | {BASE}, key=list(SETTINGS).index)
    units: dict[str, list] = {name: [] for name in names}
    for path in map(Path, args.detectors):
        detector = load_detector(path, say_precision=False)
        res = {}
        t0 = time.time()
        for name in names:
            faint, nms = SETTINGS[name]
            set_nms(detector, nms)
            preds = recipe_predictions(detector, path, items, cut if faint else None,
                                       Path(args.cache), tag=f"_{args.split}_{name}")
            res[name] = m = scores(preds, items)
            units[name].append(tile_matchings(items, preds))
            print(f"{path} {name}: F1@0.5 {m['f1_50']:.3f} F1avg {m['f1_avg']:.3f} "
                  f"P {m['precision_50']:.2f} R {m['recall_50']:.2f} n {m['detected']}",
                  flush=True)
        out["detectors"][str(path)] = {"by_setting": res, "seconds": round(time.time() - t0, 1)}
        write(args.json, out)
    out["paired"] = {}
    for name in names:
        if name != BASE:
            print(f"{name} - {BASE}:")
            _, _, diff = compare(units[name], units[BASE])
            out["paired"][name] = diff
    write(args.json, out)


if __name__ == "__main__":
    main()
