"""Does re-estimating BatchNorm statistics on real images (AdaBN) help the Nissl detectors?
Measured on the development images (training split only; the test split is not opened).

A detector pretrained on simulated images (and fine-tuned on 2 real ones with half of each
batch simulated: replay) keeps BatchNorm statistics of mostly simulated inputs. AdaBN
(Li et al. 2016) recomputes them, without labels, from real images: here from the seed's 2
annotated training images used as unlabeled inputs (the test protocol's analogue: the
adaptation images are never the ones scored). Each seed's other 2 training images are
scored, in 2 x 2 tiles, paired with the same detector unadapted; seeds averaged.

Score threshold: a zero-label detector keeps its own (chosen on held-out synthetic images);
a fine-tuned one has it re-chosen on its 2 annotated images, adapted and plain alike.

    OMP_NUM_THREADS=1 python experiments/adabn_dev.py --run runs/exp-nissl-k2 \\
        --detectors simulated_k0 simulated_k2_replay-0.5_ft-steps-1200 --seeds 0 1 2 \\
        --json docs/results/adabn_dev/results.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from _paired import compare  # noqa: E402  (same folder)

from cellsynth.evaluate.matching import matching_by_score, matching_tiles
from cellsynth.io.datasets import load_dataset
from cellsynth.io.files import write_json
from cellsynth.io.normalize import normalize
from cellsynth.segment.cpn import build_model
from cellsynth.segment.predict import load_detector, predict_image, read_detector_checkpoint
from cellsynth.segment.trainer import THRESHOLD_GRID


def adapted_checkpoint(run: Path, images: list[np.ndarray], out: Path) -> Path:
    """``run``'s checkpoint with every BatchNorm's running mean / variance recomputed from
    ``images`` (each a (H, W, C) float image in [0, 1]; cumulative average over them)."""
    path, ckpt = read_detector_checkpoint(run)
    model = build_model(**ckpt["model_spec"])
    model.load_state_dict(ckpt["model"])
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative: every image counts alike
    model.eval()
    for m in norms:
        m.train()
    with torch.no_grad():
        for image in images:
            x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]
            model.core(x)
    ckpt["model"] = model.state_dict()
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, out)
    return out


def _threshold(detector, items) -> float:
    """The grid threshold with the best F1@0.5 on ``items`` (cells painted once, kept by
    score)."""
    painted = [predict_image(detector, image, score_thresh=THRESHOLD_GRID[0],
                             return_scores=True) for image, _ in items]
    f1 = [m.f1[0] for m in matching_by_score([gt for _, gt in items], painted,
                                             THRESHOLD_GRID, thresholds=(0.5,))]
    return float(THRESHOLD_GRID[int(np.argmax(f1))])


def _units(detector, thresh, items, tiles) -> list:
    found = []
    for image, truth in items:
        predicted = predict_image(detector, image, score_thresh=thresh)
        found += matching_tiles(truth, predicted, tiles)
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=Path("runs/exp-nissl-k2"))
    ap.add_argument("--data", type=Path, default=Path("../shared/data/nissl_rat_sscx/train"))
    ap.add_argument("--detectors", nargs="+", required=True, help="names without _sSEED")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--tiles", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("runs/adabn"))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    train = load_dataset(args.data, require_labels=True)
    result = {"run": str(args.run), "seeds": args.seeds, "tiles": args.tiles, "detectors": {}}
    for name in args.detectors:
        found = {"adapted": [], "plain": []}
        info = []
        for seed in args.seeds:
            annotated = {p.stem for p in (args.run / "data" / f"k2_s{seed}" / "images").iterdir()}
            adapt = [s.read() for s in train if s.id in annotated]
            dev = [s.read() for s in train if s.id not in annotated]
            run = args.run / "detectors" / f"{name}_s{seed}"
            plain = load_detector(run)
            norm = plain.normalization
            inputs = [normalize(image, norm) for image, _ in adapt]
            adapted = load_detector(adapted_checkpoint(run, inputs,
                                                       args.work / f"{name}_s{seed}.pt"))
            zero_label = "_k0" in name
            row = {"seed": seed, "dev": sorted(s.id for s in train if s.id not in annotated)}
            for side, det in (("plain", plain), ("adapted", adapted)):
                thresh = det.score_thresh if zero_label else _threshold(det, adapt)
                found[side].append(_units(det, thresh, dev, args.tiles))
                row[f"thresh_{side}"] = thresh
            print(f"{name} s{seed}: thresholds {row['thresh_plain']} / {row['thresh_adapted']}",
                  flush=True)
            info.append(row)
        print(f"{name}: adapted (a) vs plain (b)")
        sa, sb, diff = compare(found["adapted"], found["plain"])
        result["detectors"][name] = {"adapted": sa, "plain": sb, "a_minus_b": diff,
                                     "per_seed": info, "n_units": len(found["plain"][0])}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, result)


if __name__ == "__main__":
    main()
