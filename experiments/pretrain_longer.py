"""Does longer pretraining on the simulation still pay under the recipe's soup? A finished
`cellsynth run`'s pretraining continued to N steps, then its fine-tunings, soup, test
prediction and scores redone, paired with the run it came from.

Copies RUN to OUT without its fine-tunings and what follows them, resumes the pretraining
from its last checkpoint with ``steps: N`` (the cosine schedule is recomputed for N steps,
so the learning rate rises again to its value at the old end's share of N and decays to
zero at N: a warm restart, not the same as N steps from scratch; the checkpoint is again
chosen on held-out simulated images), then runs the fine-tuning stages exactly as `run`
does (same seeds, same members). The run itself is not touched; OUT holds no state.json
(a `cellsynth run` on it would start over). Pair with
``experiments/compare_runs.py --a OUT... --b RUN...``.

    OMP_NUM_THREADS=1 python experiments/pretrain_longer.py configs/nissl-k2.yaml \\
        runs/nissl-k2-s5x240-s0 --seed 0 --steps 5000 --out runs/nissl-k2-pre5k-s0
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path

from soup_more import run_arguments

from cellsynth.pipeline import layout, stages

# what the continued pretraining makes stale
_REDONE = (layout.FINETUNE, layout.FINETUNE_RUNS, layout.SOUP, layout.PREDICT,
           layout.EVALUATE, "report.html", "state.json", "state.json.lock")


def main() -> None:
    args, config = run_arguments(__doc__, lambda ap: ap.add_argument(
        "--steps", type=int, required=True, help="pretraining steps in all"))
    if args.steps <= config.pretrain.steps:
        raise SystemExit(f"{args.run}: pretrained {config.pretrain.steps} steps already")
    if not args.out.exists():
        tmp = args.out.with_name(args.out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(args.run, tmp, ignore=lambda d, names: [
            n for n in names if Path(d) == args.run and n in _REDONE])
        tmp.rename(args.out)
    config = dataclasses.replace(
        config, pretrain=dataclasses.replace(config.pretrain, steps=args.steps))
    started = time.perf_counter()
    stages._train(layout.PRETRAIN, stages._synthetic, None)(
        config, args.out, resume=True, progress=False)  # resumes to the end if done
    print(f"pretraining continued to {args.steps} in {time.perf_counter() - started:.0f} s",
          flush=True)
    finetune = stages._train(layout.FINETUNE, lambda c, out: [stages.real_folder(c, out, "train")],
                             layout.PRETRAIN)
    finetune(config, args.out, resume=layout.has_checkpoint(args.out / layout.FINETUNE),
             progress=False)
    stages._finetune_runs(config, args.out, resume=True, progress=False)
    print(f"fine-tunings done at {time.perf_counter() - started:.0f} s", flush=True)
    stages._soup(config, args.out)
    stages._predict(config, args.out, resume=False, progress=False)
    summary = stages._evaluate(config, args.out, resume=False, progress=False)
    print({k: v for k, v in summary.items() if not isinstance(v, (list, dict))})


if __name__ == "__main__":
    main()
