"""The stain filter chosen on the development images (`stain_filter_dev.py`: q = 5, the
best mean dev F1@0.5 over seeds 0-2, fixed before this script opened the test split), applied
to finished runs' test predictions: every detection whose mean stain is below the q-th
percentile of the annotated somata's in the recipe's 2 annotated images is dropped.

Writes OUT/<run name>/predict/labels/<id>.tif for each run; pair them with the runs by
``compare_runs.py --a OUT/<run>... --b RUN...``.

    python experiments/stain_filter_test.py --q 5 --out runs/stain-filter \\
        runs/nissl-k2-s5x240-s0 runs/nissl-k2-s5x240-s1 runs/nissl-k2-s5x240-s2
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from stain_filter_dev import object_stain, reference, stain

from cellsynth.io.datasets import load_dataset
from cellsynth.io.images import read_labels, write_labels
from cellsynth.pipeline import layout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--q", type=float, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--train", default="../shared/data/nissl_rat_sscx/train")
    ap.add_argument("--test", default="../shared/data/nissl_rat_sscx/test")
    args = ap.parse_args()
    cut = float(np.percentile(reference(args.train), args.q))
    print(f"cut: mean stain >= {cut:.4f} (the {args.q:g}th percentile)")
    for run in args.runs:
        folder = args.out / run.name / layout.PREDICT / layout.LABELS
        folder.mkdir(parents=True, exist_ok=True)
        dropped = kept = 0
        for sample in load_dataset(args.test, require_labels=True):
            labels = read_labels(run / layout.PREDICT / layout.LABELS / f"{sample.id}.tif")
            stains = object_stain(labels, stain(sample.read_image()))
            keep = [i for i, v in stains.items() if v >= cut]
            dropped += len(stains) - len(keep)
            kept += len(keep)
            write_labels(folder / f"{sample.id}.tif", np.where(np.isin(labels, keep), labels, 0))
        print(f"{run}: kept {kept}, dropped {dropped}")


if __name__ == "__main__":
    main()
