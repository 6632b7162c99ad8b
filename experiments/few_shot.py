"""The headline experiment: how close do synthetic pretraining + a few real labels get to
full supervision? Runs every setting with one seed and one held-out test split, resumably.

    python experiments/few_shot.py configs/experiment-nissl.yaml --out runs/exp-nissl

Settings (each a CPN trained with cellsynth.segment, evaluated on the test split):
  full             all real training images
  few_k{k}         k real training images only
  sim_only         simulated images only (no refinement), zero real labels
  sim_ft_k{k}      sim_only, then fine-tuned on the same k real images
  refined_only     refined images only (refiner fit on the real training images WITHOUT
                   labels), zero real labels
  refined_ft_k{k}  refined_only, then fine-tuned on the same k real images
Writes OUT/results.json, OUT/results.md (table) and OUT/learning_curve.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cellsynth.config import from_dict, load_yaml, to_dict
from cellsynth.io.datasets import load_dataset
from cellsynth.io.files import write_json
from cellsynth.segment.trainer import TrainConfig


@dataclass(frozen=True)
class ExperimentConfig:
    train: str                     # real labeled training split
    test: str                      # real held-out test split (evaluation only)
    preset: str = "nissl"
    n_sim: int = 400               # simulated training images
    n_sim_val: int = 16            # simulated validation images (threshold for zero-label)
    size: int = 256
    refiner: str | None = None     # an existing refiner run; else one is fit
    refine_minutes: float = 15.0
    ks: tuple[int, ...] = (1, 2)
    ft_ks: tuple[int, ...] = (1, 2, 4)
    seed: int = 0
    pretrain: TrainConfig = field(default_factory=lambda: TrainConfig(steps=300))
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(steps=150, lr=3e-4,
                                                                       warmup=5))
    supervised: TrainConfig = field(default_factory=lambda: TrainConfig(steps=300))


def _subset(train: str, k: int, seed: int, out: Path) -> Path:
    """A dataset folder with k images of ``train`` drawn with numpy default_rng(seed)."""
    folder = out / "data" / f"k{k}"
    if folder.exists():
        return folder
    samples = list(load_dataset(train, require_labels=True))
    chosen = sorted(np.random.default_rng(seed).choice(len(samples), size=k, replace=False))
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("images", "labels"):
        (tmp / sub).mkdir(parents=True)
    for i in chosen:
        s = samples[i]
        shutil.copyfile(s.image_path, tmp / "images" / s.image_path.name)
        shutil.copyfile(s.label_path, tmp / "labels" / s.label_path.name)
    tmp.rename(folder)
    return folder


def _train_eval(name: str, config: TrainConfig, data: list, val, test: str, out: Path,
                init=None) -> dict:
    from cellsynth.evaluate import evaluate_folders
    from cellsynth.segment.predict import predict_folder
    from cellsynth.segment.trainer import train

    result_path = out / name / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    run = out / name / "model"
    started = time.perf_counter()
    resume = (run / "last.pt").exists()
    summary = train(config, data, run, init=init, val=val, resume=resume, force=not resume)
    predict_folder(run, test, out / name / "predict", force=True, progress=False)
    metrics = evaluate_folders(test, out / name / "predict").to_json()
    result = {"setting": name, "f1_50": metrics["f1"][0], "f1_avg": metrics["f1_avg"],
              "ap_50": metrics["ap"][0], "pq_50": metrics["pq"][0],
              "tp_50": metrics["tp"][0], "fp_50": metrics["fp"][0], "fn_50": metrics["fn"][0],
              "score_thresh": summary["score_thresh"], "val_f1": summary["best_val_f1"],
              "steps": summary["steps"], "minutes": (time.perf_counter() - started) / 60,
              "data": [str(d) for d in data], "init": str(init) if init else None}
    write_json(result_path, result)
    print(f"[{name}] F1@0.5 {result['f1_50']:.3f}  F1avg {result['f1_avg']:.3f}", flush=True)
    return result


def main() -> None:
    from cellsynth import refine
    from cellsynth.simulate import preset, write_simulation

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--skip-refined", action="store_true",
                        help="only the settings that need no refiner")
    parser.add_argument("--refiner", help="use this refiner run instead of fitting one")
    args = parser.parse_args()
    data = load_yaml(args.config)
    if args.refiner:
        data["refiner"] = args.refiner
    cfg = from_dict(ExperimentConfig, data, where=str(args.config))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", to_dict(cfg))
    sim_config = preset(cfg.preset)
    for name, n, seed in (("sim", cfg.n_sim, cfg.seed), ("sim_val", cfg.n_sim_val, cfg.seed + 1)):
        if not (out / name / "meta.json").exists():
            write_simulation(sim_config, n=n, size=cfg.size, seed=seed, out=out / name,
                             workers=2, force=True)
    results = [_train_eval("full", cfg.supervised, [cfg.train], cfg.train, cfg.test, out)]
    for k in cfg.ks:
        subset = _subset(cfg.train, k, cfg.seed, out)
        results.append(_train_eval(f"few_k{k}", cfg.supervised, [subset], subset, cfg.test, out))
    results.append(_train_eval("sim_only", cfg.pretrain, [out / "sim"], out / "sim_val",
                               cfg.test, out))
    for k in cfg.ft_ks:  # separates the effect of pretraining from that of refinement
        subset = _subset(cfg.train, k, cfg.seed, out)
        results.append(_train_eval(f"sim_ft_k{k}", cfg.finetune, [subset], subset, cfg.test,
                                   out, init=out / "sim_only" / "model"))
    if args.skip_refined:
        _table(results, out)
        return

    refiner = Path(cfg.refiner) if cfg.refiner else out / "refiner"
    if not cfg.refiner and not (refiner / "done").exists():
        resume = (refiner / "last.pt").exists()
        refine.fit(refine.RefineConfig(steps=100000), out / "sim", cfg.train, refiner,
                   resume=resume, force=not resume, max_minutes=cfg.refine_minutes)
        (refiner / "done").write_text("")
    for name in ("refined", "refined_val"):
        source = "sim" if name == "refined" else "sim_val"
        if not (out / name / "meta.json").exists():
            refine.refine_dataset(refiner, out / source, out / name, force=True)
    results.append(_train_eval("refined_only", cfg.pretrain, [out / "refined"],
                               out / "refined_val", cfg.test, out))
    for k in cfg.ft_ks:
        subset = _subset(cfg.train, k, cfg.seed, out)
        results.append(_train_eval(f"refined_ft_k{k}", cfg.finetune, [subset], subset,
                                   cfg.test, out, init=out / "refined_only" / "model"))
    write_json(out / "results.json", results)
    _table(results, out)
    _plot(results, cfg, out)


def _table(results: list[dict], out: Path) -> None:
    lines = ["| setting | real labeled images | F1@0.5 | F1avg | AP@0.5 | PQ@0.5 | TP/FP/FN |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        k = r["setting"].rsplit("_k", 1)[-1] if "_k" in r["setting"] else (
            "all" if r["setting"] == "full" else "0")
        lines.append(f"| {r['setting']} | {k} | {r['f1_50']:.3f} | {r['f1_avg']:.3f} | "
                     f"{r['ap_50']:.3f} | {r['pq_50']:.3f} | "
                     f"{r['tp_50']}/{r['fp_50']}/{r['fn_50']} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _plot(results: list[dict], cfg: ExperimentConfig, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = {r["setting"]: r for r in results}
    n_train = len(load_dataset(cfg.train))
    fig, ax = plt.subplots(figsize=(6, 4))
    ks = [k for k in cfg.ks if f"few_k{k}" in by]
    ax.plot(ks + [n_train], [by[f"few_k{k}"]["f1_50"] for k in ks] + [by["full"]["f1_50"]],
            "o-", label="real labels only")
    for prefix, label in (("refined_ft", "refined pretraining + fine-tuning"),
                          ("sim_ft", "simulated pretraining + fine-tuning")):
        fks = [k for k in cfg.ft_ks if f"{prefix}_k{k}" in by]
        ax.plot(fks, [by[f"{prefix}_k{k}"]["f1_50"] for k in fks], "s-" if prefix ==
                "refined_ft" else "^-", label=label)
    for name, style in (("sim_only", ":"), ("refined_only", "--")):
        ax.axhline(by[name]["f1_50"], ls=style, color="gray", label=f"{name} (0 labels)")
    ax.set_xlabel("real annotated training images")
    ax.set_ylabel("F1 @ IoU 0.5 (test)")
    ax.set_xscale("log", base=2)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.savefig(out / "learning_curve.png", dpi=120, bbox_inches="tight")


if __name__ == "__main__":
    main()
