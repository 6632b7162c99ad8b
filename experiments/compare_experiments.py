"""Paired comparison of the same settings in two experiments that differ in one thing that a
setting cannot express (e.g. the detector: configs/experiment-nissl-k2-tiny.yaml against
configs/experiment-nissl-k2.yaml). Both must share test split, tiles, seeds and image
draws; each seed pairs detector with detector, unit (test tile) with unit.

Nothing is predicted or trained: the per-unit matchings come from each experiment's
``state.json`` (its phase-2 evaluations), so run both experiments first.

    python experiments/compare_experiments.py \\
        --a configs/experiment-nissl-k2-tiny.yaml runs/exp-nissl-k2-tiny \\
        --b configs/experiment-nissl-k2.yaml runs/exp-nissl-k2 \\
        --settings real_k2 sim_only sim_ft_k2 --seeds 0 1 2 \\
        --json docs/results/tiny_vs_slim/results.json

Printed per setting: mean +- std over seeds of F1@0.5 and F1avg for a and b, and the paired
bootstrap of a - b (95 % interval over the test units, seeds averaged).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

from cellsynth.evaluate.stats import paired_bootstrap, summarize
from cellsynth.io.files import write_json
from cellsynth.pipeline.experiment import (
    _matching,
    _plan,
    evaluation_of,
    load_experiment_config,
    select_settings,
)


def per_seed_units(config_path: Path, out: Path, settings: list[str], seeds: list[int]
                   ) -> tuple[dict[str, list], dict]:
    """{setting: [[Matching per unit] per seed]} and the experiment's config, from state.json."""
    config = select_settings(load_experiment_config(config_path), settings)
    config = replace(config, seeds=tuple(seeds))
    _, detector_of = _plan(config, out)
    state = json.loads((out / "state.json").read_text())
    tta = {s.name: s.tta for s in config.settings}
    found: dict[str, list] = {}
    for name in settings:
        found[name] = []
        for seed in seeds:
            runs = []  # a setting with runs: N has N detectors per seed
            for detector in detector_of[name, seed]:
                unit = evaluation_of(detector) + ("_tta" if tta[name] else "")
                entry = state.get(unit)
                if not entry or not entry.get("done"):
                    raise SystemExit(f"{out}: {unit} is not evaluated yet (run the experiment "
                                     f"with --seeds {seed} --settings {name})")
                runs.append([_matching(u) for u in entry["summary"]["units"]])
            found[name].append(runs)
    return found, config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", nargs=2, type=Path, required=True, metavar=("CONFIG", "OUT"))
    parser.add_argument("--b", nargs=2, type=Path, required=True, metavar=("CONFIG", "OUT"))
    parser.add_argument("--settings", nargs="+", required=True)
    parser.add_argument("--seeds", nargs="+", type=int, required=True)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    a, config_a = per_seed_units(*args.a, args.settings, args.seeds)
    b, config_b = per_seed_units(*args.b, args.settings, args.seeds)
    for field in ("test", "tiles", "train", "val"):
        if getattr(config_a, field) != getattr(config_b, field):
            raise SystemExit(f"the experiments differ in {field}: not a paired comparison")
    results = {"a": str(args.a[1]), "b": str(args.b[1]), "seeds": args.seeds,
               "test": config_a.test, "tiles": config_a.tiles, "settings": {}}
    print(f"a = {args.a[1]}, b = {args.b[1]}; seeds {args.seeds}; test {config_a.test}")
    for name in args.settings:
        sa, sb = summarize(a[name]), summarize(b[name])
        diff = paired_bootstrap(a[name], b[name], n=2000, seed=0)
        results["settings"][name] = {"a": sa, "b": sb, "a_minus_b": diff}
        print(f"{name:12s} F1@0.5 a {sa['f1_50']['mean']:.3f} ± {sa['f1_50']['std']:.3f}, "
              f"b {sb['f1_50']['mean']:.3f} ± {sb['f1_50']['std']:.3f}, a - b "
              f"{diff['f1_50']['diff']:+.3f} [{diff['f1_50']['ci95'][0]:+.3f}, "
              f"{diff['f1_50']['ci95'][1]:+.3f}] | F1avg a {sa['f1_avg']['mean']:.3f}, b "
              f"{sb['f1_avg']['mean']:.3f}, a - b {diff['f1_avg']['diff']:+.3f} "
              f"[{diff['f1_avg']['ci95'][0]:+.3f}, {diff['f1_avg']['ci95'][1]:+.3f}]")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, results)


if __name__ == "__main__":
    main()
