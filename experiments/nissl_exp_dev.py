"""Fine-tuning variants of a `cellsynth experiment` setting, screened on development images.

For each seed, the experiment annotated k of the training images (``EXP/data/k2_sS``); the
training images it did not draw stand in for unseen tissue here (their labels score, nothing
trains or chooses on them). A variant re-runs the fine-tuning of ``--base`` (its config, init,
data, replay and validation images, read from the base detector's folder) with some options
changed, into ``OUT/VARIANT_sS``; every detector then predicts the development images with
``best.pt`` at the score threshold chosen on the k annotated images (``last`` scores the
base's ``last.pt`` at the same threshold), each image cut into 2 x 2 units, and each variant
is paired with the base (bootstrap over units, seeds averaged). The test split is not opened.

    OMP_NUM_THREADS=1 python experiments/nissl_exp_dev.py --seeds 0 --variants ema \\
        --train-only    # one process per seed trains; then, with all seeds trained:
    python experiments/nissl_exp_dev.py --seeds 0 1 2 --variants ema refine3 last \\
        --json docs/results/nissl_k2_dev_ft/results.json

Resumable: a trained variant is kept, a killed one resumes from its last checkpoint.

``--ensemble base ema ...`` instead scores a vote of those detectors of each seed (all
trained on that seed's 2 annotated images only): each keeps its proposals at or above its
own threshold, they are grouped like TTA views (``tta.merge_views``: mask IoU > 0.5, at most
one per detector, outline = angle-wise median) and a group is a cell when a strict majority
found it. ``--split test`` scores the test split instead of the development images (for a
vote chosen on them first).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import yaml
from _paired import compare  # noqa: E402  (same folder)

from cellsynth.config import from_dict
from cellsynth.evaluate.matching import matching_tiles
from cellsynth.io.datasets import load_dataset
from cellsynth.io.files import write_json
from cellsynth.segment.predict import load_detector
from cellsynth.segment.trainer import TrainConfig, train

BASE = "simulated_k2_replay-0.5_steps-2500_ft-lr-0.001_ft-steps-400"
TRAIN = "../shared/data/nissl_rat_sscx/train"
TEST = "../shared/data/nissl_rat_sscx/test"  # only for --split test

# name -> changes to the base's fine-tuning config (None: the base's own last.pt)
VARIANTS = {
    # Polyak averaging of the weights while fine-tuning (window ~100 of the 400 steps): the
    # base's validation F1 on the 2 images jumps 0.74 -> 0.80 between checkpoints 50 apart
    "ema": {"ema": 0.99},
    # the outline terms: each refinement iteration's L1 to the annotated outline x3
    "refine3": {"loss_weights": {"refinement": 3.0}},
    # background pixels of the score map x2: fewer detections where nobody annotated one
    "bg2": {"loss_weights": {"score_bg": 2.0}},
    # all three together (screened after the three alone each gained +0.01-0.02 on dev)
    "combo": {"ema": 0.99, "loss_weights": {"refinement": 3.0, "score_bg": 2.0}},
    "last": None,
}


def _fine_tune(base: Path, changes: dict, out: Path) -> float:
    """Re-run the base's fine-tuning with ``changes`` into ``out``; minutes taken."""
    info = json.loads((base / "run.json").read_text())
    data = {**yaml.safe_load((base / "config.yaml").read_text()), **changes}
    config = from_dict(TrainConfig, data, where=str(base / "config.yaml"))
    started = time.perf_counter()
    resume = (out / "last.pt").is_file()
    train(config, info["data"], out, init=info["init"], val=info["val"],
          replay=info.get("replay"), resume=resume, force=not resume, progress=False)
    minutes = (time.perf_counter() - started) / 60
    write_json(out / "done.json", {"minutes": minutes})
    return minutes


def _trained(out: Path) -> bool:
    return (out / "done.json").is_file()


def _dev(exp: Path, seed: int) -> list:
    drawn = {s.id for s in load_dataset(exp / "data" / f"k2_s{seed}", require_labels=True)}
    return [s for s in load_dataset(TRAIN, require_labels=True) if s.id not in drawn]


def _detector_of(name: str, seed: int, args) -> Path:
    if name in ("base", "last"):
        return args.exp / "detectors" / f"{args.base}_s{seed}" / (
            "last.pt" if name == "last" else "best.pt")
    return args.out / f"{name}_s{seed}" / "best.pt"


def _units(checkpoints: list[Path], samples: list, tiles: int) -> list:
    """Matchings of the strict-majority vote of ``checkpoints`` (each at its own threshold;
    one checkpoint: its own predictions)."""
    from cellsynth.segment.predict import image_proposals
    from cellsynth.segment.tiles import contours_to_labels, offset_contours
    from cellsynth.segment.tta import merge_views

    kept = []
    for checkpoint in checkpoints:
        detector = load_detector(checkpoint, say_precision=False)
        views = []
        for sample in samples:
            c, sc, offset = image_proposals(detector, sample.read_image(),
                                            where=str(sample.id))
            keep = sc >= detector.score_thresh
            c = offset_contours(c[keep], offset) if offset else c[keep]
            views.append((c, np.ones(int(keep.sum()), np.float32)))
        kept.append(views)
    n, found = len(checkpoints), []
    for i, sample in enumerate(samples):
        contours, votes = merge_views([k[i] for k in kept])
        truth = sample.read_labels()
        painted = contours_to_labels(contours, votes * n, truth.shape,
                                     score_thresh=n // 2 + 1 - 1e-6, offset=0.0)
        found += matching_tiles(truth, painted, tiles)
    return found


def _ensemble(args) -> None:
    """The vote of ``args.ensemble`` against the base alone, per seed, on dev or test."""
    found: dict[str, list] = {"vote": [], "base": []}
    for seed in args.seeds:
        samples = (_dev(args.exp, seed) if args.split == "dev"
                   else list(load_dataset(TEST, require_labels=True)))
        found["vote"].append(_units([_detector_of(n, seed, args) for n in args.ensemble],
                                    samples, args.tiles))
        found["base"].append(_units([_detector_of("base", seed, args)], samples, args.tiles))
    print(f"== vote of {args.ensemble} - base ({args.split}, seeds {args.seeds})")
    sa, sb, diff = compare(found["vote"], found["base"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, {"base": args.base, "experiment": str(args.exp),
                               "seeds": args.seeds, "split": args.split,
                               "members": args.ensemble, "tiles": args.tiles,
                               "variants": {n: VARIANTS.get(n) for n in args.ensemble},
                               "vote": sa, "base_alone": sb, "vote_minus_base": diff})


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exp", type=Path, default=Path("runs/exp-nissl-k2"))
    parser.add_argument("--base", default=BASE, help="the setting's detector name, no _sS")
    parser.add_argument("--out", type=Path, default=Path("runs/exp-dev"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--train-only", action="store_true")
    parser.add_argument("--tiles", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--ensemble", nargs="+", choices=["base", *VARIANTS],
                        help="score the majority vote of these detectors instead")
    parser.add_argument("--split", choices=["dev", "test"], default="dev",
                        help="what --ensemble scores")
    args = parser.parse_args()
    if args.ensemble:
        _ensemble(args)
        return
    for seed in args.seeds:
        for name in args.variants:
            out = args.out / f"{name}_s{seed}"
            if VARIANTS[name] is not None and not _trained(out):
                print(f"[{name} s{seed}] fine-tuning ...", flush=True)
                minutes = _fine_tune(args.exp / "detectors" / f"{args.base}_s{seed}",
                                     VARIANTS[name], out)
                print(f"[{name} s{seed}] {minutes:.1f} min", flush=True)
    if args.train_only:
        return
    found = {"base": []} | {name: [] for name in args.variants}
    thresholds = {name: [] for name in found}
    for seed in args.seeds:
        dev = _dev(args.exp, seed)
        for name in found:
            # (the base's last.pt holds the threshold its best.pt was chosen with)
            checkpoint = _detector_of(name, seed, args)
            found[name].append(_units([checkpoint], dev, args.tiles))
            thresholds[name].append(
                float(torch.load(checkpoint, weights_only=False)["score_thresh"]))
    result = {"base": args.base, "experiment": str(args.exp), "seeds": args.seeds,
              "dev_images": {s: [x.id for x in _dev(args.exp, s)] for s in args.seeds},
              "tiles": args.tiles, "variants": {n: VARIANTS[n] for n in args.variants},
              "thresholds": thresholds, "vs_base": {}}
    for name in args.variants:
        print(f"== {name} - base (dev, seeds {args.seeds})")
        sa, sb, diff = compare(found[name], found["base"])
        result["vs_base"][name] = {"a": sa, "b": sb, "a_minus_b": diff}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, result)


if __name__ == "__main__":
    main()
