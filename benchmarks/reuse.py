"""The Nissl recipe on other annotated images: a run from scratch against `run --reuse` of an
earlier run (its simulation and pretraining copied), in one script, results compared.

    python benchmarks/reuse.py [--data ../shared/data/nissl_rat_sscx] [--pretrain-steps 150]
                               [--finetune-steps 60] [--out DIR] [--json OUT]

configs/nissl-k2.yaml, shrunk to fit a few minutes (fewer simulated images, pretraining and
fine-tuning steps, one fine-tuning instead of a soup of 5, no TTA): run A on two annotated
training images; then, for two others, run B from scratch (the baseline: what a new
`--out` did before) and run C with ``--reuse A``. The script prints each run's wall time, the
ratio B / C, whether C's pretrained detector is A's byte for byte and whether C's predicted
labels equal B's (the pretraining is the same work: on one machine, precision and thread
count it gives the same bytes; the script pins the threads, CELLSYNTH_THREADS, for that).
Test images are predicted and scored as the recipe does; nothing here is tuned on them.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

warnings.simplefilter("ignore")


def main() -> None:
    from cellsynth.config import load_yaml, save_yaml
    from cellsynth.io.images import read_image
    from cellsynth.pipeline.config import load_pipeline_config
    from cellsynth.pipeline.run import run

    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=repo.parent / "shared/data/nissl_rat_sscx")
    parser.add_argument("--pretrain-steps", type=int, default=150)
    parser.add_argument("--finetune-steps", type=int, default=60)
    parser.add_argument("--out", type=Path, help="keep the three runs here (default: a "
                                                 "temporary folder)")
    parser.add_argument("--json", type=Path, help="write the timings and results here")
    args = parser.parse_args()
    # threads pinned (else the thread policy follows the machine's load, and runs trained at
    # other thread counts differ in their last bits: then B's labels cannot equal C's)
    os.environ.setdefault("CELLSYNTH_THREADS", str(os.cpu_count() or 1))

    train, test = str(args.data.resolve() / "train"), str(args.data.resolve() / "test")
    first = ["SLD_0000406_20x_01_Region_1_t2", "SLD_0000563_20x_03_Region_1_t2"]
    # the recipe with --data's folders (its own paths are relative to configs/)
    raw = load_yaml(repo / "configs/nissl-k2.yaml")
    raw["real"] = {**raw["real"], "train": train, "val": train, "test": test}
    with tempfile.TemporaryDirectory() as folder:
        save_yaml(Path(folder) / "recipe.yaml", raw)
        recipe = load_pipeline_config(Path(folder) / "recipe.yaml")
    other = ["SLD_0000404_20x_01_Region_1_t2", "SLD_0000406_20x_01_Region_1_t1"]

    def config(chosen: list[str]):
        return replace(
            recipe, simulate=replace(recipe.simulate, n=60, n_val=4),
            real=replace(recipe.real, train=train, val=train, test=test,
                         select={"train": chosen, "val": chosen}),
            pretrain=replace(recipe.pretrain, steps=args.pretrain_steps, val_every=100),
            finetune=replace(recipe.finetune, steps=args.finetune_steps, val_every=30),
            soup=1, predict=replace(recipe.predict, tta=False))

    with tempfile.TemporaryDirectory() as scratch:
        root = args.out or Path(scratch)
        seconds, scores = {}, {}
        for name, chosen, reuse in (("A", first, ()), ("B", other, ()),
                                    ("C", other, (root / "A",))):
            said: list[str] = []
            started = time.perf_counter()
            summaries = run(config(chosen), root / name, progress=False, log=said.append,
                            reuse=reuse)
            seconds[name] = time.perf_counter() - started
            scores[name] = {k: summaries["evaluate"][k] for k in ("f1_50", "f1_avg")}
            print(f"run {name} ({', '.join(chosen)}{'; --reuse A' if reuse else ''}): "
                  f"{seconds[name]:.1f} s, test F1@0.5 {scores[name]['f1_50']:.3f}, F1avg "
                  f"{scores[name]['f1_avg']:.3f}" + "".join(f"\n  {line}" for line in said
                                                              if "reused" in line))
        copied = ((root / "C" / "pretrain" / "best.pt").read_bytes()
                  == (root / "A" / "pretrain" / "best.pt").read_bytes())
        print(f"C's pretrained detector is A's, byte for byte: {copied}")
        labels = sorted((root / "B" / "predict" / "labels").iterdir())
        same = all(np.array_equal(read_image(path),
                                  read_image(root / "C" / "predict" / "labels" / path.name))
                   for path in labels)
        ratio = seconds["B"] / seconds["C"]
        print(f"from scratch (B) {seconds['B']:.1f} s, with --reuse A (C) {seconds['C']:.1f} s: "
              f"{ratio:.2f}x; C's labels {'equal' if same else 'DIFFER FROM'} B's "
              f"({len(labels)} test images)")
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(
                {"seconds": seconds, "ratio": ratio, "labels_equal": same, "scores": scores,
                 "pretrain_copied_exactly": copied,
                 "threads": os.environ["CELLSYNTH_THREADS"],
                 "pretrain_steps": args.pretrain_steps, "finetune_steps": args.finetune_steps,
                 "first": first, "other": other}, indent=1) + "\n")


if __name__ == "__main__":
    main()
