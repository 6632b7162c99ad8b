"""Paired comparison of `nissl_dev.py` runs on their development images (training split only).

Each run is a folder ``OUT/NAME`` made by ``experiments/nissl_dev.py``; its development images
are ``OUT/data/dev`` (the 2 training images its split did not annotate). Every run predicts
them with its last checkpoint at the score threshold chosen on its own 2 annotated images
(``dev.json``'s ``thresh_on_k2``; ``best.pt`` and the checkpoint's stored threshold were
chosen on the development images and are not used). Runs at the same position in ``--a`` and
``--b`` form a pair (one seed / split each); each dev image is cut into ``--tiles`` x
``--tiles`` units and the paired bootstrap over units (seeds averaged) gives a - b with a
95 % interval, as `cellsynth experiment` does.

    python experiments/compare_dev.py \\
        --a runs/nissl-dev-bf16-s0/real_k2_o12 runs/nissl-dev-bf16-s1/real_k2_o12 \\
        --b runs/nissl-dev-bf16-s0/real_k2 runs/nissl-dev-bf16-s1/real_k2 \\
        --json docs/results/nissl_dev_amx/o12_vs_base.json

Runs of one split seed share their development images, whichever folder they are in (the
check is by image name), so fp32 and bf16 runs of one seed can be paired.

Nothing here opens the test split.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _paired import compare  # noqa: E402  (same folder)

from cellsynth.evaluate.matching import matching_tiles
from cellsynth.io.datasets import load_dataset
from cellsynth.io.files import write_json
from cellsynth.segment.predict import load_detector, predict_image


def _dev_ids(run: Path) -> list[str]:
    return sorted(s.id for s in load_dataset(run.parent / "data" / "dev"))


def units(run: Path, tiles: int, precision: str) -> tuple[list, dict]:
    """Matchings of ``run``'s dev predictions, tile by tile, and what was predicted with."""
    done = json.loads((run / "dev.json").read_text())
    thresh = float(done["thresh_on_k2"])
    detector = load_detector(run / "last.pt", precision=precision)
    found = []
    dev = load_dataset(run.parent / "data" / "dev", require_labels=True)
    for sample in dev:
        predicted = predict_image(detector, sample.read_image(), score_thresh=thresh,
                                  pixel_size_um=dev.pixel_size_um, where=str(sample.id))
        truth = sample.read_labels()
        found += matching_tiles(truth, predicted, tiles)
    return found, {"run": str(run), "thresh_on_k2": thresh}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", nargs="+", type=Path, required=True)
    parser.add_argument("--b", nargs="+", type=Path, required=True)
    parser.add_argument("--tiles", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                        help="of the predictions (auto: what this CPU computes natively)")
    args = parser.parse_args()
    if len(args.a) != len(args.b):
        raise SystemExit(f"compare_dev: --a has {len(args.a)} runs, --b {len(args.b)}; "
                         f"they pair by position")
    for a, b in zip(args.a, args.b):
        if _dev_ids(a) != _dev_ids(b):
            raise SystemExit(f"compare_dev: {a} and {b} have different development images "
                             f"(another split seed?)")
        for run in (a, b):
            if not (run / "dev.json").is_file():
                raise SystemExit(f"compare_dev: {run / 'dev.json'}: missing (is the run "
                                 f"finished?)")
    found = {"a": [], "b": []}
    used = {"a": [], "b": []}
    for side in ("a", "b"):
        for run in getattr(args, side):
            u, info = units(run, args.tiles, args.precision)
            found[side].append(u)
            used[side].append(info)
    sa, sb, diff = compare(found["a"], found["b"])
    result = {"a": sa, "b": sb, "a_runs": used["a"], "b_runs": used["b"], "tiles": args.tiles,
              "n_units": len(found["a"][0]), "precision": args.precision, "a_minus_b": diff}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, result)


if __name__ == "__main__":
    main()
