"""A finished `cellsynth run` fine-tuned again with other annotated images (e.g. all 4
Nissl training images instead of the recipe's 2), its simulation and pretraining reused.

`cellsynth run` with another ``real.select`` would pretrain again (the pretraining's
fingerprint includes the annotated images it could validate on, even where
``pretrain_val: synthetic`` never reads them). This copies RUN's simulation and pretraining to
OUT and runs every later stage of the run's own plan (staging the selected images, the
fine-tunings, the soup, predict, evaluate) with ``real.select`` replaced, so the new
fine-tunings start from the very checkpoint the recipe's started from. Pair OUT with RUN by
``experiments/compare_runs.py --a OUT... --b RUN...``. The test split is read only by the
final predict / evaluate stages, as in `cellsynth run`.

    python experiments/other_k.py configs/nissl-k2.yaml runs/nissl-k2-s0 --seed 0 \\
        --out runs/nissl-k4-s0 --select all
"""

from __future__ import annotations

import dataclasses
import shutil
import time

from soup_more import run_arguments  # noqa: E402  (same folder)

from cellsynth.config import save_yaml
from cellsynth.pipeline import layout, stages

REUSED = (layout.FIT, layout.SIMULATE, layout.SIMULATE_VAL, layout.PRETRAIN)
SKIPPED = (layout.REALISM, layout.REPORT_STAGE)


def main() -> None:
    args, config = run_arguments(__doc__, lambda ap: ap.add_argument(
        "--select", nargs="+", required=True,
        help="the annotated training images to fine-tune on (ids), or 'all'"))
    select = {} if args.select == ["all"] else {"train": args.select, "val": args.select}
    config = dataclasses.replace(config, real=dataclasses.replace(config.real, select=select))
    if args.out.exists():
        raise SystemExit(f"{args.out}: exists; remove it or choose another --out")
    args.out.mkdir(parents=True)
    for name in REUSED:
        if (args.run / name).exists():
            shutil.copytree(args.run / name, args.out / name)
    save_yaml(args.out / layout.CONFIG, config)
    for stage in stages.plan(config):
        if stage.name in REUSED or stage.name in SKIPPED:
            continue
        started = time.perf_counter()
        summary = stage.run(config, args.out, resume=False, progress=False)
        print(f"[{stage.name}] {time.perf_counter() - started:.0f} s", flush=True)
    print({k: v for k, v in summary.items() if not isinstance(v, (list, dict))})


if __name__ == "__main__":
    main()
