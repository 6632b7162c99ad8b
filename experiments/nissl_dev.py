"""Development runs for the Nissl accuracy issue, on the TRAINING split only.

Two of the four nissl_rat_sscx training images are "the k = 2 annotated images"; the other
two are a development set that stands in for unseen tissue. Nothing here opens the test
split. Every run validates on the development images every ``val_every`` steps and logs the
F1 for each score threshold, which shows

- how many steps a detector needs before validation F1 stops rising (plateau), and
- whether a score threshold chosen on the k training images themselves (all the k = 2
  recipe may use) transfers to unseen images, or is biased towards over-confident values.

    OMP_NUM_THREADS=1 python experiments/nissl_dev.py --out runs/nissl-dev \
        --json docs/results/nissl_dev/results.json

Resumable: a finished run is skipped, a killed one resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from cellsynth.config import from_dict
from cellsynth.io.datasets import load_dataset
from cellsynth.io.files import write_json
from cellsynth.segment.trainer import TrainConfig

TRAIN = "../shared/data/nissl_rat_sscx/train"
# the data's pixel size (its SOURCE.md; the PNGs carry none): written into k2/ and dev/ so a
# run with another working pixel_size_um really is rescaled (before 2026-12-02 it was not:
# real_k2_coarse trained at 0.346 um/px on 128^2 crops)
PIXEL_SIZE_UM = 0.346

# name -> (data, init, config overrides); "k2" and "dev" are folders made from TRAIN
RUNS = {
    "real_k2": (["k2"], None, dict(steps=600, crop=192, val_every=100)),
    "sim": (["sim"], None, dict(steps=600, crop=192, val_every=100)),
    "sim_ft_k2": (["k2"], "sim", dict(steps=300, crop=192, lr=3e-4, warmup=5, val_every=50)),
    "real_k2_coarse": (["k2"], None, dict(steps=600, crop=128, val_every=100,
                                           pixel_size_um=0.5)),
    # detector capacity (2026-12-02): a ResNet-18 U-Net CPN (1.5x slim's arithmetic, no
    # pretrained weights), a 1.38x finer working scale (0.25 um/px; 256^2 crops hold the
    # same field as 192^2 at 0.346), and finer outlines (Fourier order 12, 8 refinements)
    "real_k2_r18": (["k2"], None, dict(steps=600, crop=192, val_every=100,
                                        model="resnet18_unet")),
    "real_k2_fine": (["k2"], None, dict(steps=600, crop=256, val_every=100,
                                         pixel_size_um=0.25)),
    "real_k2_o12": (["k2"], None, dict(steps=600, crop=192, val_every=100, order=12,
                                        refinement_iterations=8)),
    # the CPN heads' 7x7 convolutions are half the arithmetic: 3x3 heads (1.6-1.7x faster
    # steps) against the default, on tiny_u22 (what the demo and the fluo/H&E experiments
    # train; ~2.4 s per step on one AVX2 core)
    "real_k2_tiny": (["k2"], None, dict(steps=600, crop=192, val_every=100,
                                         model="tiny_u22")),
    "real_k2_tiny_k3": (["k2"], None, dict(steps=600, crop=192, val_every=100,
                                            model="tiny_u22", head_kernel=3)),
    "real_k2_k3": (["k2"], None, dict(steps=600, crop=192, val_every=100, head_kernel=3)),
    # the same pair at 128^2 crops (2.25x cheaper; a slim step at 192^2 is ~9 s on one AVX2
    # core)
    "real_k2_c128": (["k2"], None, dict(steps=600, crop=128, val_every=100)),
    "real_k2_k3_c128": (["k2"], None, dict(steps=600, crop=128, val_every=100,
                                            head_kernel=3)),
    # detector capacity at the cheaper 128^2 crops, against real_k2_c128 (2026-12-02, later)
    "real_k2_r18_c128": (["k2"], None, dict(steps=600, crop=128, val_every=100,
                                             model="resnet18_unet")),
    "real_k2_o12_c128": (["k2"], None, dict(steps=600, crop=128, val_every=100, order=12,
                                             refinement_iterations=8)),
    # is 600 steps a plateau for 2 images? (2026-12-02, a CPU with AMX, where bf16 steps are
    # 3.5x cheaper than fp32 ones)
    "real_k2_long": (["k2"], None, dict(steps=1500, crop=192, val_every=100)),
    # the same levers after simulated pretraining: finer outlines in both stages, and a
    # longer fine-tuning (sim_ft_k2 was still moving at 300 steps)
    "sim_o12": (["sim"], None, dict(steps=600, crop=192, val_every=100, order=12,
                                    refinement_iterations=8)),
    "sim_o12_ft_k2": (["k2"], "sim_o12", dict(steps=300, crop=192, lr=3e-4, warmup=5,
                                                val_every=50, order=12,
                                                refinement_iterations=8)),
    "sim_ft_k2_long": (["k2"], "sim", dict(steps=900, crop=192, lr=3e-4, warmup=5,
                                            val_every=50)),
    # glia-sized objects the annotators leave out (2026-12-07): most of the recipe's excess
    # false positives over the peer are glia-sized and dark, among them thin dark rods
    # (microglia, capillary endothelium; docs/results.md, twenty-fourth session). The
    # "sim_rods" simulation draws such rods, unannotated, and leaves the capillaries' wall
    # nuclei out of the labels, against the plain preset ("sim"); tiny_u22 both (~2.4 s a
    # step on one AVX2 core, where slim takes ~9 s)
    "sim_tiny": (["sim"], None, dict(steps=600, crop=192, val_every=100, model="tiny_u22")),
    "sim_tiny_ft_k2": (["k2"], "sim_tiny", dict(steps=300, crop=192, lr=3e-4, warmup=5,
                                                val_every=50, model="tiny_u22")),
    "sim_rods_tiny": (["sim_rods"], None, dict(steps=600, crop=192, val_every=100,
                                               model="tiny_u22")),
    "sim_rods_tiny_ft_k2": (["k2"], "sim_rods_tiny", dict(steps=300, crop=192, lr=3e-4,
                                                          warmup=5, val_every=50,
                                                          model="tiny_u22")),
    # the score loss on small annotated somata (2026-12-08): celldetection's mean over cell
    # pixels lets a large soma outweigh a small one several times (its core holds more of
    # the score map's foreground); score_balance 1 weighs every annotated cell the same
    # during the fine-tuning, against sim_tiny_ft_k2
    "sim_tiny_ft_k2_bal": (["k2"], "sim_tiny", dict(steps=300, crop=192, lr=3e-4, warmup=5,
                                                    val_every=50, model="tiny_u22",
                                                    score_balance=1.0)),
    "sim_tiny_ft_k2_bal05": (["k2"], "sim_tiny", dict(steps=300, crop=192, lr=3e-4, warmup=5,
                                                      val_every=50, model="tiny_u22",
                                                      score_balance=0.5)),
}


def rods_preset():
    """The ``nissl`` preset plus unannotated dark rods (microglia) and unannotated capillary
    wall nuclei: objects of a glial nucleus's size and stain that annotators of somata skip."""
    from dataclasses import replace

    from cellsynth.simulate import preset
    from cellsynth.simulate.presets import CellType

    base = preset("nissl")
    rod = CellType("rod", density=4.0, diameter_um=(3.5, 6.0), shape="elongated",
                   elongation=(2.0, 3.5), irregularity=0.08, stain=(0.6, 1.1), texture=0.12,
                   edge_um=0.4, layer_phase=0.25, annotated=False)
    return replace(base, cells=base.cells + (rod,),
                   vessels=replace(base.vessels, endothelial_annotated=False))


def _split(out: Path, seed: int) -> tuple[Path, Path]:
    """k2/ and dev/: two training images each, drawn with default_rng(seed)."""
    samples = sorted(load_dataset(TRAIN, require_labels=True), key=lambda s: s.id)
    chosen = set(np.random.default_rng(seed).choice(len(samples), size=2, replace=False))
    for name, keep in (("k2", True), ("dev", False)):
        folder = out / "data" / name
        if folder.exists():
            if not (folder / "meta.json").exists():  # made before the pixel size was written
                write_json(folder / "meta.json", {"pixel_size_um": PIXEL_SIZE_UM})
            continue
        tmp = folder.with_name(name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for sub in ("images", "labels"):
            (tmp / sub).mkdir(parents=True)
        for i, s in enumerate(samples):
            if (i in chosen) == keep:
                shutil.copyfile(s.image_path, tmp / "images" / s.image_path.name)
                shutil.copyfile(s.label_path, tmp / "labels" / s.label_path.name)
        write_json(tmp / "meta.json", {"pixel_size_um": PIXEL_SIZE_UM})
        tmp.rename(folder)
    return out / "data" / "k2", out / "data" / "dev"


def _threshold_transfer(run: Path, k2: Path, dev: Path, crop: int, pixel_size_um) -> dict:
    """Dev F1 of the final model at the threshold chosen on k2 vs the best threshold on dev."""
    from cellsynth.segment.cpn import build_model
    from cellsynth.segment.data import load_labeled
    from cellsynth.segment.predict import read_detector_checkpoint
    from cellsynth.segment.trainer import validate

    ckpt = read_detector_checkpoint(run / "last.pt", needed_by="dev")[1]
    model = build_model(**ckpt["model_spec"])
    model.load_state_dict(ckpt["model"])
    model.eval()
    config = from_dict(TrainConfig, ckpt["config"])
    channels = ckpt["model_spec"]["in_channels"]
    items = {name: load_labeled([folder], channels=channels, pixel_size_um=pixel_size_um,
                                normalization=config.normalization)
             for name, folder in (("k2", k2), ("dev", dev))}
    on = {name: validate(model, these, config) for name, these in items.items()}
    chosen = on["k2"]["score_thresh"]
    return {"thresh_on_k2": chosen, "dev_f1_at_k2_thresh": on["dev"]["f1_by_threshold"][chosen],
            "dev_f1_avg_at_k2_thresh": on["dev"]["f1_avg_by_threshold"][chosen],
            "thresh_on_dev": on["dev"]["score_thresh"], "dev_f1_best": on["dev"]["f1_50"],
            "k2_f1": on["k2"]["f1_50"], "dev_f1_by_threshold": on["dev"]["f1_by_threshold"]}


def main() -> None:
    from cellsynth.segment.trainer import train
    from cellsynth.simulate import preset, write_simulation

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--seed", type=int, default=0, help="training (and, without "
                        "--split-seed, which 2 images are annotated)")
    parser.add_argument("--split-seed", type=int, help="which 2 images are annotated")
    parser.add_argument("--runs", nargs="*", default=list(RUNS))
    parser.add_argument("--smoke", action="store_true", help="4 steps per run, 8 sim images")
    parser.add_argument("--precision", choices=["fp32", "bf16", "auto"], default="fp32",
                        help="of every run (fp32: what the runs before 2026-12-02 used; use "
                        "another --out for another precision)")
    args = parser.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    split_seed = args.seed if args.split_seed is None else args.split_seed
    stamp = out / "precision.txt"  # one precision per folder: runs are compared in it
    if stamp.exists() and stamp.read_text().strip() != args.precision:
        raise SystemExit(f"nissl_dev: {out} holds {stamp.read_text().strip()} runs; "
                         f"use another --out for --precision {args.precision}")
    stamp.write_text(args.precision + "\n")
    k2, dev = _split(out, split_seed)
    sims = {"sim": ("sim_data", lambda: preset("nissl")), "sim_rods": ("sim_rods", rods_preset)}
    for key, (folder, make) in sims.items():
        if any(key in RUNS[name][0] for name in args.runs) and \
                not (out / folder / "meta.json").exists():
            write_simulation(make(), n=8 if args.smoke else 400, size=256,
                             seed=args.seed, out=out / folder, workers=1, force=True)
    results = {}
    for name in args.runs:
        data, init, overrides = RUNS[name]
        if args.smoke:
            overrides = {**overrides, "steps": 4, "val_every": 2}
        config = from_dict(TrainConfig, {**overrides, "seed": args.seed,
                                             "precision": args.precision})
        folders = {"k2": k2, "sim": out / "sim_data", "sim_rods": out / "sim_rods"}
        run = out / name
        done = run / "dev.json"
        if not done.exists():
            started = time.perf_counter()
            resume = (run / "last.pt").exists()
            train(config, [folders[d] for d in data], run, val=dev, resume=resume,
                  force=not resume, init=(out / init) if init else None, progress=False)
            result = {"run": name, "config": overrides, "minutes":
                      (time.perf_counter() - started) / 60,
                      "curve": [json.loads(line) for line in
                                (run / "log.jsonl").read_text().splitlines()
                                if "val_f1" in line],
                      **_threshold_transfer(run, k2, dev, config.crop, config.pixel_size_um)}
            write_json(done, result)
        result = json.loads(done.read_text())
        results[name] = result
        curve = " ".join(f"{c['step']}:{c['val_f1']:.3f}" for c in result["curve"])
        print(f"[{name}] dev F1 by step {curve}; final model: thresh on k2 "
              f"{result['thresh_on_k2']} -> dev F1 {result['dev_f1_at_k2_thresh']:.3f}, best "
              f"on dev {result['thresh_on_dev']} -> {result['dev_f1_best']:.3f}; "
              f"{result['minutes']:.1f} min", flush=True)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            write_json(args.json, {"train": TRAIN, "k2": sorted(p.name for p in
                                                                (k2 / "images").iterdir()),
                                   "dev": sorted(p.name for p in (dev / "images").iterdir()),
                                   "seed": args.seed, "split_seed": split_seed,
                                   "precision": args.precision,
                                   "runs": results})


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: training saved a checkpoint first
        raise SystemExit("nissl_dev: interrupted; the same command resumes") from None
