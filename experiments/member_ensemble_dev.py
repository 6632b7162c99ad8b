"""The recipe averages the *weights* of its 5 fine-tunings (the soup). Would letting the 5
fine-tuned detectors *vote* instead do better? Each member predicts as the recipe does
(8-view TTA, NMS 0.5), the members' cells are grouped like TTA views
(``tta.merge_views``: mask IoU > 0.5, at most one per member, outline = angle-wise median,
score = the members' scores summed / 5), then the faint cut from the recipe's 2 annotated
images and the threshold. F1 on the Nissl development images (the 2 training images the
recipe does not annotate; the test split is not opened).

Two thresholds, fixed before this ran: "soup" (primary) paints the ensemble at the soup's
own threshold, so the pair with the soup differs only in voting vs averaging; "calibrated"
chooses it on the 2 annotated images from the ensemble's own predictions over the
trainer's grid (the validation rule), a prediction 5x the soup's cost.

    OMP_NUM_THREADS=2 python experiments/member_ensemble_dev.py \\
        --detectors runs/nissl-k2-s0 runs/nissl-k2-s1 runs/nissl-k2-s2 \\
        --json docs/results/member_ensemble_dev/results.json

(--detectors names the recipe's run folders: ``finetune`` and ``finetune_runs/r*`` are the
members, ``soup`` the recipe's detector.) Paired with the soup's cached predictions of
nms_dev.py over the development images cut into 2 x 2 tiles, seeds averaged.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from _nissl_dev_set import (
    ANNOTATED,
    arguments,
    dev_items,
    recipe_faint_cut,
    recipe_predictions,
    scores,
    summary,
    tile_matchings,
    write,
)
from _paired import compare

from cellsynth.evaluate.matching import matching_by_score
from cellsynth.io.datasets import load_dataset
from cellsynth.io.normalize import intensity_range
from cellsynth.segment.faint import drop_faint
from cellsynth.segment.predict import _reader, image_proposals, load_detector, set_nms
from cellsynth.segment.tiles import contours_to_labels
from cellsynth.segment.trainer import THRESHOLD_GRID
from cellsynth.segment.tta import merge_views

NMS = 0.5  # the recipe's


def members(run: Path) -> list[Path]:
    return [run / "finetune"] + sorted((run / "finetune_runs").iterdir())


def ensemble(dets, image):
    """(contours, scores, offset) of the members' vote on ``image``."""
    passes, offset = [], 0.0
    for det in dets:
        c, s, offset = image_proposals(det, image, tta=True)
        passes.append((c, s))
    contours, votes = merge_views(passes)
    return contours, votes, offset


def without_faint(det, image, contours, votes, cut, thresh: float):
    """``votes`` with the cells fainter than ``cut`` that ``thresh`` would paint at -1."""
    low, high = intensity_range(image, det.normalization, where="image")
    read = _reader(det.in_channels, low, high, "image")
    return drop_faint(contours, votes, image.shape[:2], lambda ys, xs: read(image, ys, xs),
                      cut, thresh)[0]


def main() -> None:
    args = arguments(__doc__)
    items = dev_items(args.data)
    annotated = [(s.read_image(), s.read_labels())
                 for s in load_dataset(args.data, require_labels=True) if s.id in ANNOTATED]
    cut = recipe_faint_cut(args.data)
    out = summary(items) | {"annotated_images": list(ANNOTATED), "nms": NMS}
    units: dict[str, list] = {}
    for name in args.detectors:
        run = Path(name)
        t0 = time.time()
        soup = load_detector(run / "soup", say_precision=False)
        set_nms(soup, NMS)
        res = {"soup": scores(soup_preds := recipe_predictions(
            soup, run / "soup", items, cut, Path("/tmp/nms_dev_cache"), tag=f"_{NMS:g}"),
            items)}
        preds = {"soup": soup_preds}
        dets = [load_detector(m, say_precision=False) for m in members(run)]
        for det in dets:
            set_nms(det, NMS)
        # the calibrated threshold: the ensemble on the annotated images, no faint cut
        # (the soup's validation has none either), F1@0.5 over the trainer's grid
        painted = []
        for image, gt in annotated:
            c, v, off = ensemble(dets, image)
            painted.append(contours_to_labels(c, v, gt.shape, score_thresh=THRESHOLD_GRID[0],
                                              offset=off, return_scores=True))
        per = matching_by_score([gt for _, gt in annotated], painted, THRESHOLD_GRID)
        f1 = [float(r.f1[0]) for r in per]
        calibrated = THRESHOLD_GRID[int(np.argmax(f1))]
        thresholds = {"soup": soup.score_thresh, "calibrated": calibrated}
        for image, gt in items:
            c, votes, off = ensemble(dets, image)
            for rule, thresh in thresholds.items():
                v = without_faint(dets[0], image, c, votes, cut, thresh)
                preds.setdefault(f"vote_{rule}", []).append(
                    contours_to_labels(c, v, gt.shape, score_thresh=thresh, offset=off))
        for key, p in preds.items():
            res.setdefault(key, scores(p, items))
            units.setdefault(key, []).append(
                tile_matchings(items, p))
            m = res[key]
            print(f"{name} {key}: F1@0.5 {m['f1_50']:.3f} F1avg {m['f1_avg']:.3f} "
                  f"F1@0.75 {m['f1_75']:.3f} P {m['precision_50']:.2f} "
                  f"R {m['recall_50']:.2f} n {m['detected']}", flush=True)
        out["detectors"][name] = {"scores": res, "thresholds": thresholds,
                                  "members": [str(m) for m in members(run)],
                                  "annotated_f1_by_threshold": dict(zip(THRESHOLD_GRID, f1)),
                                  "seconds": round(time.time() - t0, 1)}
        write(args.json, out)
    out["paired"] = {}
    for key in ("vote_soup", "vote_calibrated"):
        print(f"{key} - soup:")
        _, _, diff = compare(units[key], units["soup"])
        out["paired"][key] = diff
    write(args.json, out)


if __name__ == "__main__":
    main()
