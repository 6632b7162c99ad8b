"""Paired comparison of two sets of `cellsynth run` folders, seed by seed (e.g. the recipe
before and after a change: runs/nissl-k2 vs runs/nissl-k2-replay-s0).

Each run's predictions of the test split (RUN/predict/labels/<id>.tif) are matched against
the test labels in ``--tiles`` x ``--tiles`` units per image; runs at the same position in
``--a`` and ``--b`` form a pair (the same seed), and the paired bootstrap over units (seeds
averaged) gives a - b with a 95 % interval, as `cellsynth experiment` does. Several training
runs of one seed go in one argument, comma-separated (``EVAL_s0,EVAL_rep-1_s0``): that seed
scores their mean and the bootstrap resamples them too (as ``runs:`` in an experiment).

    python experiments/compare_runs.py --test ../shared/data/nissl_rat_sscx/test \\
        --a runs/nissl-k2-replay-s0 runs/nissl-k2-replay-s1 runs/nissl-k2-replay-s2 \\
        --b runs/nissl-k2 runs/nissl-k2-s1 runs/nissl-k2-s2 \\
        --json docs/results/nissl_k2_recipe_replay/results.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _paired import compare  # noqa: E402  (same folder)

from cellsynth.evaluate.matching import matching_tiles
from cellsynth.io.datasets import load_dataset
from cellsynth.io.files import write_json
from cellsynth.io.images import read_labels
from cellsynth.pipeline import layout


def units(run: Path, test: str, tiles: int) -> list:
    found = []
    for sample in load_dataset(test, require_labels=True):
        path = run / layout.PREDICT / layout.LABELS / f"{sample.id}.tif"
        if not path.is_file():
            raise SystemExit(f"{path}: missing (has the run predicted {test}?)")
        truth, predicted = sample.read_labels(), read_labels(path)
        found += matching_tiles(truth, predicted, tiles)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--test", required=True, help="the labelled test split")
    parser.add_argument("--a", nargs="+", required=True,
                        help="one run folder per seed, or several comma-separated (its runs)")
    parser.add_argument("--b", nargs="+", required=True)
    parser.add_argument("--tiles", type=int, default=2)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--json")
    args = parser.parse_args()
    if len(args.a) != len(args.b):
        raise SystemExit("--a and --b need the same number of runs (one per seed)")
    # [seed][run][unit]; one run per seed is the plain unit bootstrap
    a = [[units(Path(r), args.test, args.tiles) for r in seed.split(",")] for seed in args.a]
    b = [[units(Path(r), args.test, args.tiles) for r in seed.split(",")] for seed in args.b]
    sa, sb, diff = compare(a, b, n=args.bootstrap)
    if args.json:
        write_json(Path(args.json), {"test": args.test, "tiles": args.tiles,
                                     "a": [str(r) for r in args.a], "b": [str(r) for r in args.b],
                                     "summary_a": sa, "summary_b": sb, "a_minus_b": diff})


if __name__ == "__main__":
    main()
