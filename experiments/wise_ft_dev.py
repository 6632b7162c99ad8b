"""Does the recipe fine-tune too far from the simulation? With 2 annotated images the soup of
5 fine-tunings may overfit them; WiSE-FT (Wortsman et al. 2022) interpolates the weights
between the fine-tuned and the pretrained detector, theta = a * soup + (1 - a) * pretrained,
which keeps more of what the pretraining knew (a > 1 goes the other way: further from
the simulation than fine-tuning went). For each mix the score threshold is chosen
on the recipe's 2 annotated images as the soup's is (``trainer.validate``), then it predicts
the Nissl development images as the recipe does (8-view TTA, the faint cut, NMS 0.5; the 2
training images the recipe does not annotate; the test split is not opened).

    OMP_NUM_THREADS=2 python experiments/wise_ft_dev.py \\
        --detectors runs/nissl-k2-s0 runs/nissl-k2-s1 runs/nissl-k2-s2 \\
        --json docs/results/wise_ft_dev/results.json

(--detectors names the recipe's run folders: ``soup`` and ``pretrain`` are the two ends,
``real/val`` the annotated images.) Each mix is paired with the soup itself (a = 1) over
the development images cut into 2 x 2 tiles, seeds averaged.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
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

from cellsynth.config import from_dict
from cellsynth.hardware import choose_precision
from cellsynth.segment.cpn import build_model, set_core_precision
from cellsynth.segment.data import load_labeled
from cellsynth.segment.predict import load_detector, read_detector_checkpoint, set_nms
from cellsynth.segment.trainer import TrainConfig, validate

NMS = 0.5  # the recipe's
# share of the soup; 1.0 is the recipe, above 1 extrapolates past it (away from pretraining)
MIXES = (1.0, 0.9, 0.75, 0.5, 1.1, 1.25)
WORK = Path("/tmp/wise_ft_dev")


def mixed(run: Path, a: float) -> Path:
    """A checkpoint of a * soup + (1 - a) * pretrained, its threshold chosen on the
    annotated images; the soup's own for a = 1."""
    if a == 1.0:
        return run / "soup"
    out = WORK / f"{run.resolve().name}_a{a:g}" / "best.pt"
    if out.is_file():
        return out
    _, soup = read_detector_checkpoint(run / "soup", needed_by="wise_ft_dev")
    _, pre = read_detector_checkpoint(run / "pretrain", needed_by="wise_ft_dev")
    weights = type(soup["model"])()
    for key, w in soup["model"].items():
        weights[key] = ((a * w.double() + (1 - a) * pre["model"][key].double()).to(w.dtype)
                        if torch.is_floating_point(w) else w.clone())
    if getattr(soup["model"], "_metadata", None) is not None:
        weights._metadata = soup["model"]._metadata
    config = from_dict(TrainConfig, {**soup["config"], "device": "cpu"}, where="soup config")
    model = build_model(**soup["model_spec"])
    model.load_state_dict(weights)
    set_core_precision(model, choose_precision(config.precision, "cpu").name)  # as soup()
    items = load_labeled([run / "real" / "val"], channels=soup["model_spec"]["in_channels"],
                         pixel_size_um=config.pixel_size_um,
                         normalization=config.normalization, channel=config.channel)
    result = validate(model, items, config)
    out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in soup.items() if k in ("model_spec", "config", "step",
                                                    "precision")}
    torch.save({**state, "model": weights, "score_thresh": float(result["score_thresh"]),
                "best_f1": float(result["f1_50"])}, out)
    return out


def main() -> None:
    args = arguments(__doc__)
    items = dev_items(args.data)
    cut = recipe_faint_cut(args.data)
    out = summary(items) | {"annotated_images": list(ANNOTATED), "nms": NMS,
                            "paired_with": 1.0}
    units: dict[float, list] = {}
    for name in args.detectors:
        run = Path(name)
        res, thresholds = {}, {}
        t0 = time.time()
        for a in MIXES:
            path = mixed(run, a)
            det = load_detector(path, say_precision=False)
            set_nms(det, NMS)
            thresholds[f"{a:g}"] = det.score_thresh
            preds = recipe_predictions(det, path, items, cut, Path("/tmp/nms_dev_cache"),
                                       tag=f"_{NMS:g}")
            res[f"{a:g}"] = m = scores(preds, items)
            units.setdefault(a, []).append(
                tile_matchings(items, preds))
            print(f"{name} a {a:g} (thresh {det.score_thresh:g}): F1@0.5 {m['f1_50']:.3f} "
                  f"F1avg {m['f1_avg']:.3f} F1@0.75 {m['f1_75']:.3f} "
                  f"P {m['precision_50']:.2f} R {m['recall_50']:.2f} n {m['detected']}",
                  flush=True)
        out["detectors"][name] = {"by_mix": res, "thresholds": thresholds,
                                  "seconds": round(time.time() - t0, 1)}
        write(args.json, out)
    out["paired"] = {}
    for a in MIXES:
        if a != 1.0:
            print(f"a {a:g} - 1:")
            _, _, diff = compare(units[a], units[1.0])
            out["paired"][f"{a:g}"] = diff
    write(args.json, out)


if __name__ == "__main__":
    main()
