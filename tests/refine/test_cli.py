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
    # a channel that gray real images lack was ignored without a word (audit 6; train
    # refused it)
    gray = make_dataset(tmp_path / "gray", n=2, size=32, rgb=False)
    code = main(["fit-refiner", "--sim", str(sim_dir), "--real", str(gray), "--channel", "2",
                 "--out", str(tmp_path / "run3"), "--crop", "32", "--steps", "1", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "channel 2 requested, but the image has 1 channel(s)" in err and str(gray) in err
    assert not (tmp_path / "run3").exists()


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


def test_generate_says_when_the_simulation_is_not_the_refiners_kind(sim_dir, real_dir,
                                                                     tmp_path, capsys):
    """A fluorescence refiner (0.5 um/px) refined a bright-field simulation at 1 um/px
    without a word, painting blotches over its cells (audit 6)."""
    import shutil

    from cellsynth.io import write_dataset_meta

    write_dataset_meta(sim_dir, {"pixel_size_um": 0.5, "preset": "he"})
    run = tmp_path / "run"
    assert main(["fit-refiner", "--sim", str(sim_dir), "--real", str(real_dir), "--out",
                 str(run), "--steps", "2", "--crop", "32", "--batch", "2", "--precision",
                 "fp32", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["generate", "--refiner", str(run), "--sim", str(sim_dir), "--out",
                 str(tmp_path / "same"), "--quiet"]) == 0
    assert "warning" not in capsys.readouterr().err
    other = shutil.copytree(sim_dir, tmp_path / "other")
    write_dataset_meta(other, {"pixel_size_um": 1.0, "preset": "nissl"})
    assert main(["generate", "--refiner", str(run), "--sim", str(other), "--out",
                 str(tmp_path / "refined"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "simulated at 1 um/px, but the refiner" in err and "at 0.5 um/px" in err, err
    assert "a 'nissl' simulation, but the refiner" in err and "'he' one" in err, err
    # real annotated images (no simulation's meta.json) and a set refined already were
    # refined without a word (audit 6)
    annotated = shutil.copytree(sim_dir, tmp_path / "annotated")
    write_dataset_meta(annotated, {"pixel_size_um": 0.5})
    for given, said in ((annotated, "annotated: not a cellsynth simulation (its meta.json "
                                    "records no preset)"),
                        (tmp_path / "same", "same: already refined (by ")):
        assert main(["generate", "--refiner", str(run), "--sim", str(given), "--out",
                     str(tmp_path / f"again-{given.name}"), "--quiet"]) == 0
        err = capsys.readouterr().err
        assert said in err and "not a cellsynth" not in err.replace(said, ""), err


def test_a_refiner_stopped_part_way_is_named_so_when_used(sim_dir, real_dir, tmp_path,
                                                          capsys, monkeypatch):
    """A fit-refiner stopped at step 20 of 3000 refined images with no word (audit 6):
    run.json says whether it finished, and generate warns on one that did not."""
    import importlib

    fit_module = importlib.import_module("cellsynth.refine.fit")  # (the package's fit: a
    real_step, calls = fit_module.train_step, {"n": 0}            # function of that name)

    def step(*args, **kwargs):  # the process is killed during its 3rd step
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    run = tmp_path / "run"
    (tmp_path / "refine.yaml").write_text("checkpoint_every: 1\n")
    args = ["fit-refiner", "--sim", str(sim_dir), "--real", str(real_dir), "--out", str(run),
            "--steps", "4", "--crop", "32", "--batch", "2", "--config",
            str(tmp_path / "refine.yaml"), "--precision", "fp32", "--quiet"]
    monkeypatch.setattr(fit_module, "train_step", step)
    assert main(args) != 0
    monkeypatch.setattr(fit_module, "train_step", real_step)
    assert json.loads((run / "run.json").read_text())["finished"] is False
    capsys.readouterr()
    assert main(["generate", "--refiner", str(run), "--sim", str(sim_dir), "--out",
                 str(tmp_path / "early"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "its training stopped at step 2 of 4 and did not finish" in err, err
    assert main(args + ["--resume"]) == 0
    info = json.loads((run / "run.json").read_text())
    assert (info["finished"], info["steps_done"]) == (True, 4)
    capsys.readouterr()
    assert main(["generate", "--refiner", str(run), "--sim", str(sim_dir), "--out",
                 str(tmp_path / "done"), "--quiet"]) == 0
    assert "did not finish" not in capsys.readouterr().err
