"""Two changes to how the recipe makes its soup, tried on finished recipe runs without
training again: which checkpoint of each fine-tuning goes in, and the soup's BatchNorm
statistics.

- ``last``: the recipe averages each fine-tuning's best.pt, the checkpoint of best F1 on the
  2 annotated images, which are also the images it trains on (so "best" is chosen on
  training images, at one of 5 validations). The uniform soups of Wortsman et al. (2022)
  average the final weights; ``last`` averages each fine-tuning's last.pt (step 240).
- ``bn``: a soup averages the members' BatchNorm running statistics along with their
  weights, but the averaged network's activations are not the average of theirs. SWA
  (Izmailov et al. 2018) recomputes them (torch's ``update_bn``) with the averaged weights:
  here on batches drawn as the fine-tuning drew them (crops of the 2 annotated images, half
  of each batch replayed from the simulation, the same augmentation), cumulative mean over
  ``BN_BATCHES`` batches, no gradient.

Each variant's score threshold is chosen on the 2 annotated images as the soup's is
(``trainer.validate``); it then predicts as the recipe does (8-view TTA, the faint cut,
NMS 0.5). ``--split dev`` (the default) scores the 2 training images the recipe does not
annotate; ``--split test`` opens the test split and is run only for the variant the
development images chose, by the rule written in docs/results/soup_posthoc/PLAN.md before.

    OMP_NUM_THREADS=2 python experiments/soup_posthoc_dev.py \\
        --detectors runs/nissl-k2-s0 runs/nissl-k2-s1 runs/nissl-k2-s2 \\
        --json docs/results/soup_posthoc/dev.json

(--detectors names the recipe's run folders.) Each variant is paired with the recipe's soup
over the images cut into 2 x 2 tiles, seeds averaged.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
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

from cellsynth.config import from_dict
from cellsynth.hardware import choose_precision
from cellsynth.segment.batches import _batch
from cellsynth.segment.cpn import build_model, set_core_precision
from cellsynth.segment.data import CropSampler, load_labeled
from cellsynth.segment.predict import load_detector, read_detector_checkpoint, set_nms
from cellsynth.segment.soup import soup
from cellsynth.segment.trainer import TrainConfig, validate

NMS = 0.5  # the recipe's
VARIANTS = ("best", "last", "best_bn", "last_bn")  # "best": the recipe's own soup
BN_BATCHES = 100
WORK = Path("/work/exp/soup_posthoc")


def members(run: Path) -> list[Path]:
    return [run / "finetune", *sorted((run / "finetune_runs").glob("r*"))]


def annotated(run: Path) -> Path:
    """The run's copy of its annotated images (``val`` shares ``train``'s where they agree)."""
    return run / "real" / "val" if (run / "real" / "val").is_dir() else run / "real" / "train"


def _threshold(model, spec, config: TrainConfig, run: Path) -> dict:
    items = load_labeled([annotated(run)], channels=spec["in_channels"],
                         pixel_size_um=config.pixel_size_um,
                         normalization=config.normalization, channel=config.channel)
    return validate(model, items, config)


@torch.no_grad()
def recompute_bn(model, config: TrainConfig, run: Path, seed: int) -> None:
    """BatchNorm running statistics of ``model`` recomputed on fine-tuning-like batches."""
    info = json.loads((run / "finetune" / "run.json").read_text())
    real = load_labeled([annotated(run)], pixel_size_um=config.pixel_size_um,
                        normalization=config.normalization, channel=config.channel)
    channels = real[0].image.shape[-1]
    sim = load_labeled(info["replay"], channels=channels, pixel_size_um=config.pixel_size_um,
                       normalization=config.normalization)
    rng = np.random.default_rng([seed, 77])
    sampler = CropSampler(real, config.crop, config.augment, rng)
    replay = CropSampler(sim, config.crop, config.augment, rng)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative mean over the batches
    model.train()
    for _ in range(BN_BATCHES):
        batch = _batch(sampler, config, model.samples, model.order, replay)
        model(batch["inputs"], targets=batch)
    for m in norms:
        m.momentum = 0.1
    model.eval()


def variant(run: Path, name: str) -> Path:
    """The checkpoint of ``name`` for the recipe run ``run`` (made once, kept in WORK)."""
    if name == "best":
        return run / "soup"
    out = WORK / run.resolve().name / name
    if (out / "best.pt").is_file():
        return out / "best.pt"
    base, bn = name.split("_")[0], name.endswith("_bn")
    if base == "last":
        source = out.parent / "last"
        if not (source / "best.pt").is_file():
            soup([m / "last.pt" for m in members(run)], source, val=annotated(run),
                 force=True)
        if not bn:
            return source / "best.pt"
        path = source / "best.pt"
    else:
        path = run / "soup" / "best.pt"
    _, ckpt = read_detector_checkpoint(path, needed_by="soup_posthoc_dev")
    config = from_dict(TrainConfig, {**ckpt["config"], "device": "cpu"}, where=str(path))
    model = build_model(**ckpt["model_spec"])
    model.load_state_dict(ckpt["model"])
    recompute_bn(model, config, run, config.seed)
    weights = model.state_dict()
    set_core_precision(model, choose_precision(config.precision, "cpu").name)  # as soup()
    result = _threshold(model, ckpt["model_spec"], config, run)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({**{k: v for k, v in ckpt.items() if k != "model"}, "model": weights,
                "score_thresh": float(result["score_thresh"]),
                "best_f1": float(result["f1_50"])}, out / "best.pt")
    return out / "best.pt"


def main() -> None:
    args = arguments(__doc__, extra=lambda ap: (
        ap.add_argument("--split", choices=("dev", "test"), default="dev"),
        ap.add_argument("--test", default="../shared/data/nissl_rat_sscx/test"),
        ap.add_argument("--variants", nargs="+", default=list(VARIANTS))))
    names = ["best", *[v for v in args.variants if v != "best"]]
    items, out = split_items(args)  # (test: only after the development images chose)
    cut = recipe_faint_cut(args.data)
    out |= {"split": args.split, "annotated_images": list(ANNOTATED), "nms": NMS,
            "bn_batches": BN_BATCHES, "paired_with": "best"}
    units: dict[str, list] = {}
    for name in args.detectors:
        run = Path(name)
        res, thresholds = {}, {}
        t0 = time.time()
        for v in names:
            path = variant(run, v)
            det = load_detector(path, say_precision=False)
            set_nms(det, NMS)
            thresholds[v] = det.score_thresh
            preds = recipe_predictions(det, path, items, cut, WORK / f"cache_{args.split}",
                                       tag=f"_{NMS:g}")
            res[v] = m = scores(preds, items)
            units.setdefault(v, []).append(tile_matchings(items, preds))
            print(f"{name} {v} (thresh {det.score_thresh:g}): F1@0.5 {m['f1_50']:.3f} "
                  f"F1avg {m['f1_avg']:.3f} F1@0.75 {m['f1_75']:.3f} "
                  f"P {m['precision_50']:.2f} R {m['recall_50']:.2f} n {m['detected']}",
                  flush=True)
        out["detectors"][name] = {"by_variant": res, "thresholds": thresholds,
                                  "seconds": round(time.time() - t0, 1)}
        write(args.json, out)
    out["paired"] = {}
    for v in names[1:]:
        print(f"{v} - best:")
        _, _, diff = compare(units[v], units["best"])
        out["paired"][v] = diff
    write(args.json, out)


if __name__ == "__main__":
    main()
