"""F1 of recipe soups on the Nissl development images against the score threshold: is the
threshold each soup chose on its 2 annotated images the one unseen tissue wants? Each soup
predicts as the recipe does (8-view TTA, the faint cut from the recipe's 2 annotated images,
NMS 0.5) once, then is painted at every threshold of the trainer's grid from 0.85 up. The 2
training images the recipe does not annotate; the test split is not opened.

    OMP_NUM_THREADS=2 python experiments/recipe_threshold_dev.py \\
        --detectors runs/nissl-k2-s0 runs/nissl-k2-t2-s0 \\
        --json docs/results/recipe_threads/dev_threshold_sweep.json

(--detectors names `cellsynth run` folders of the recipe; their ``soup`` is scored.)
"""

from __future__ import annotations

from pathlib import Path

from _nissl_dev_set import arguments, dev_items, recipe_faint_cut, summary, write

from cellsynth.evaluate.matching import matching_by_score
from cellsynth.segment.predict import image_proposals, load_detector, set_nms
from cellsynth.segment.tiles import contours_to_labels
from cellsynth.segment.trainer import THRESHOLD_GRID

NMS = 0.5  # the recipe's
GRID = tuple(t for t in THRESHOLD_GRID if t >= 0.85)


def main() -> None:
    args = arguments(__doc__)
    items = dev_items(args.data)
    cut = recipe_faint_cut(args.data)
    out = summary(items) | {"nms": NMS, "grid": list(GRID)}
    for run in args.detectors:
        det = load_detector(Path(run) / "soup", say_precision=False)
        set_nms(det, NMS)
        painted = []
        for image, gt in items:
            # the faint cut judged at the lowest threshold: what is painted there and faint
            # is dropped, as predict does at any threshold
            c, s, off = image_proposals(det, image, tta=True, faint=cut, score_thresh=GRID[0])
            painted.append(contours_to_labels(c, s, gt.shape, score_thresh=GRID[0],
                                              offset=off, return_scores=True))
        per = matching_by_score([gt for _, gt in items], painted, GRID)
        out["detectors"][run] = {
            "validated_threshold": det.score_thresh,
            "f1_50": {f"{t:g}": float(r.f1[0]) for t, r in zip(GRID, per)},
            "f1_avg": {f"{t:g}": float(r.f1_avg) for t, r in zip(GRID, per)}}
        print(f"{run} (validated {det.score_thresh:g}): " + " ".join(
            f"{t:g}: {r.f1[0]:.3f}/{r.f1_avg:.3f}" for t, r in zip(GRID, per)), flush=True)
        write(args.json, out)


if __name__ == "__main__":
    main()
