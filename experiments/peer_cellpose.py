"""The Cellpose peers of the Nissl accuracy issue, scored on every nissl_rat_sscx image.

The dataset's owners published, beside its 6 annotated images, the label images that three
Cellpose models predicted on them (jacquemi-bbp/rat_sscx_nissl_analysis,
``Notebooks/Cellpose_Quality_Control/QC/{cyto2,v1,v2}``): the generalist ``cyto2`` and their
two models fine-tuned on this tissue (V1, V2). This scores them with our evaluator on the
training split (4 images) as well as the test split (2 images), so that a detector can be
compared with the peer on *development* images without opening the test split.

    python experiments/peer_cellpose.py --repo CLONE_OF_THAT_REPO \
        --json docs/results/peer_cellpose/results.json

Nothing is downloaded: ``--repo`` is a local clone (or a bare git directory, read with
``git show``). ``--write DIR`` also keeps each model's label images as
``DIR/<model>/<split>/predict/labels/<id>.tif``, the shape of a run folder, so that
``compare_runs.py`` pairs a detector of ours with the peer on the same test units:

    python experiments/peer_cellpose.py --repo CLONE --write runs/peer
    python experiments/compare_runs.py --test ../shared/data/nissl_rat_sscx/test \\
        --a EXP/eval/..._s0 EXP/eval/..._s1 EXP/eval/..._s2 \\
        --b runs/peer/v1/test runs/peer/v1/test runs/peer/v1/test
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

from cellsynth.evaluate.matching import evaluate_folders
from cellsynth.io.files import write_json
from cellsynth.pipeline import layout

DATA = Path(__file__).resolve().parents[1] / "../shared/data/nissl_rat_sscx"
QC = "Notebooks/Cellpose_Quality_Control/QC"
MODELS = ("cyto2", "v1", "v2")  # folders under QC


def _our_name(original: str) -> str:
    """'SLD_0000404.vsi - 20x_01_Region_1_Labels_t2.tif' -> 'SLD_0000404_20x_01_Region_1_t2'
    (the dataset's SOURCE.md conversion)."""
    return original.replace(".vsi - ", "_").replace("_Labels", "").removesuffix(".tif")


def _read(repo: Path, path: str) -> bytes:
    if (repo / path).is_file():
        return (repo / path).read_bytes()
    return subprocess.run(["git", "-C", str(repo), "show", f"HEAD:{path}"], check=True,
                          capture_output=True).stdout


def _listing(repo: Path, folder: str) -> list[str]:
    if (repo / folder).is_dir():
        return sorted(p.name for p in (repo / folder).glob("*.tif"))
    out = subprocess.run(["git", "-C", str(repo), "ls-tree", "--name-only", f"HEAD:{folder}"],
                         check=True, capture_output=True, text=True).stdout
    return sorted(n for n in out.splitlines() if n.endswith(".tif"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--write", type=Path, help="keep the peers' label images here")
    args = parser.parse_args()
    results: dict = {"source": "github.com/jacquemi-bbp/rat_sscx_nissl_analysis " + QC,
                     "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for model in MODELS:
            names = {_our_name(n): n for n in _listing(args.repo, f"{QC}/{model}")}
            results["models"][model] = {}
            for split in ("train", "test"):
                gt = args.data / split
                pred = (args.write / model / split / layout.PREDICT / layout.LABELS
                        if args.write else Path(tmp) / model / split)
                pred.mkdir(parents=True, exist_ok=True)
                for label in sorted((gt / "labels").glob("*.tif")):
                    (pred / label.name).write_bytes(
                        _read(args.repo, f"{QC}/{model}/{names[label.stem]}"))
                evaluation = evaluate_folders(gt, pred).to_json()
                results["models"][model][split] = evaluation
                print(f"{model:6s} {split:5s} F1@0.5 {evaluation['f1'][0]:.3f}  F1avg "
                      f"{evaluation['f1_avg']:.3f}  precision {evaluation['precision'][0]:.2f} "
                      f"recall {evaluation['recall'][0]:.2f}  per image: " + ", ".join(
                          f"{name[4:11]}{name[-12:]} {r['f1'][0]:.3f}/{r['f1_avg']:.3f}"
                          for name, r in evaluation["per_image"].items()), flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, results)


if __name__ == "__main__":
    main()
