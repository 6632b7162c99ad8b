import json

import numpy as np

from cellsynth.cli import main
from cellsynth.io.datasets import load_dataset
from tests.conftest import make_dataset


def test_cli_fit_and_generate(sim_dir, real_dir, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["fit-refiner", "--sim", str(sim_dir), "--real", str(real_dir), "--out", str(run),
            "--steps", "2", "--crop", "32", "--batch", "2", "--precision", "fp32", "--quiet"]
    assert main(args) == 0
    assert "refiner at step 2" in capsys.readouterr().out
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    resumed = list(args) + ["--resume"]
    resumed[resumed.index("--steps") + 1] = "3"
    assert main(resumed) == 0
    assert "refiner at step 3" in capsys.readouterr().out
    out = tmp_path / "refined"
    assert main(["generate", "--refiner", str(run), "--sim", str(sim_dir), "--out", str(out),
                 "--quiet"]) == 0
    refined, simulated = load_dataset(out), load_dataset(sim_dir)
    assert [s.id for s in refined] == [s.id for s in simulated]
    assert all(np.array_equal(r.read_labels(), s.read_labels())
               for r, s in zip(refined, simulated))  # the labels are the simulation's
    assert json.loads((out / "meta.json").read_text())["refiner"]["step"] == 3


def test_cli_errors_are_one_line(sim_dir, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["fit-refiner", "--sim", str(sim_dir), "--real", str(tmp_path / "empty"),
                 "--out", str(tmp_path / "run"), "--crop", "32", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "no images found" in err and len(err.strip().splitlines()) == 1
    nolab = make_dataset(tmp_path / "nolab", labels=False)
    code = main(["fit-refiner", "--sim", str(nolab), "--real", str(sim_dir),
                 "--out", str(tmp_path / "run2"), "--crop", "32", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "needs labels" in err


def test_generate_with_what_is_no_refiner_says_so_in_one_line(sim_dir, tmp_path, capsys):
    """`generate --refiner config.yaml` printed torch's paragraph on weights_only; a
    detector given as the refiner was "missing step, channels, ..." (audit 6)."""
    import torch

    (tmp_path / "config.yaml").write_text("preset: fluo\n")
    torch.save({"model_spec": {"name": "tiny_u22"}, "model": {}}, tmp_path / "detector.pt")
    for given, said in (("config.yaml", "cannot read checkpoint (truncated, or not a torch"),
                        ("detector.pt", "a detector (use it with predict)")):
        code = main(["generate", "--refiner", str(tmp_path / given), "--sim", str(sim_dir),
                     "--out", str(tmp_path / f"out-{given}"), "--quiet"])
        err = capsys.readouterr().err
        assert code != 0 and said in err and len(err.strip().splitlines()) == 1, err
        assert "weights_only" not in err and not (tmp_path / f"out-{given}").exists()
