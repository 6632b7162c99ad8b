"""More members for a finished `cellsynth run`'s soup, paired with the soup it has.

Copies RUN to OUT (weights and all), trains the fine-tunings ``soup``..``N-1`` that the run
lacks (the same stage code, so member r has seed + 1000 r exactly as `run` would give it; the
members the run has are reused, not retrained), averages all N, predicts and scores the test
split as the run's own stages do. The run itself is not touched. Pair the two with
``experiments/compare_runs.py --a OUT... --b RUN...``.

    python experiments/soup_more.py configs/nissl-k2.yaml runs/nissl-k2-sim-s0 --seed 0 \\
        --out runs/nissl-k2-soup5-s0 --soup 5
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import time
from pathlib import Path

from cellsynth.pipeline import layout, stages
from cellsynth.pipeline.config import load_pipeline_config


def _saved(config) -> str:
    import tempfile

    from cellsynth.config import save_yaml
    with tempfile.TemporaryDirectory() as tmp:
        save_yaml(Path(tmp) / "c.yaml", config)
        return (Path(tmp) / "c.yaml").read_text()


def run_arguments(doc: str, extra) -> tuple[argparse.Namespace, object]:
    """CONFIG RUN --seed --out plus ``extra(parser)``'s options, and the config at that seed,
    checked to be the one RUN was run with (the name aside: a label, not an option)."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("config", type=Path, help="the run's pipeline YAML")
    ap.add_argument("run", type=Path)
    ap.add_argument("--seed", type=int, required=True, help="the run's seed")
    ap.add_argument("--out", type=Path, required=True)
    extra(ap)
    args = ap.parse_args()
    config = dataclasses.replace(load_pipeline_config(args.config), seed=args.seed)

    def options(text: str) -> list[str]:
        return [line for line in text.splitlines() if not line.startswith("name:")]

    if options((args.run / layout.CONFIG).read_text()) != options(_saved(config)):
        raise SystemExit(f"{args.run}: was run with another config than {args.config}")
    return args, config


def main() -> None:
    args, config = run_arguments(__doc__, lambda ap: ap.add_argument(
        "--soup", type=int, required=True, help="members in all"))
    if args.soup <= config.soup:
        raise SystemExit(f"{args.run}: its soup has {config.soup} members already")
    if not args.out.exists():
        shutil.copytree(args.run, args.out.with_name(args.out.name + ".tmp"))
        args.out.with_name(args.out.name + ".tmp").rename(args.out)
    config = dataclasses.replace(config, soup=args.soup)
    started = time.perf_counter()
    # members 1 .. soup-1: those with a checkpoint resume to their end at once
    stages._finetune_runs(config, args.out, resume=True, progress=False)
    print(f"members trained in {time.perf_counter() - started:.0f} s", flush=True)
    stages._soup(config, args.out)
    stages._predict(config, args.out, resume=False, progress=False)
    summary = stages._evaluate(config, args.out, resume=False, progress=False)
    print({k: v for k, v in summary.items() if not isinstance(v, (list, dict))})


if __name__ == "__main__":
    main()
