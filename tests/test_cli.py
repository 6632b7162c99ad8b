"""The command line: every option explained, defaults shown, shared flags spelled once."""

import argparse
import os

import numpy as np
import pytest
import yaml

from cellsynth.cli import _build_parser, main


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = _build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_option_of_every_command_has_a_help_line():
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}"
               for name, command in _commands().items() for a in command._actions
               if a.help in (None, "") and not isinstance(a, argparse._HelpAction)]
    assert not missing, missing


def test_help_shows_defaults(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["predict", "--help"])
    assert stop.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "tile overlap in pixels (default: 96)" in text
    assert "(default: cpu)" in text


def test_shared_flags_mean_the_same_everywhere():
    texts = {}
    for command in _commands().values():
        for action in command._actions:
            if action.option_strings and action.option_strings[0] in ("--force", "--quiet",
                                                                      "--resume"):
                texts.setdefault(action.option_strings[0], set()).add(action.help)
    assert set(texts) == {"--force", "--quiet", "--resume"}
    # export's --force replaces a plain output folder, fit-simulator's a file, evaluate's its
    # --json file; every other command shares one text
    plain = {"replace a non-empty --out folder", "replace an existing --out file",
             "replace an existing --json file"}
    assert all(len(helps - plain) == 1 for helps in texts.values())
    # every command that writes takes --quiet (export refused it: "unrecognized arguments")
    writes = [name for name, command in _commands().items()
              if any(a.option_strings[:1] == ["--out"] for a in command._actions)]
    assert "export" in writes
    for name in set(writes) - {"init"}:  # (init's printout is what it chose)
        assert any(a.option_strings[:1] == ["--quiet"] for a in _commands()[name]._actions), name


def _tiny_run_yaml(tmp_path, real) -> str:
    return f"""name: tiny
seed: 0
simulate: {{preset: fluo, n: 4, size: 64, workers: 1}}
real: {{unlabeled: {real}}}
refine: {{steps: 2, crop: 32, batch: 2, width: 8, blocks: 1, spade_hidden: 8, d_width: 8,
          d_layers: 2, d_scales: 1, sample_every: 1, checkpoint_every: 1, log_every: 1}}
pretrain: {{steps: 2, crop: 64, batch: 1, samples: 32, order: 4, refinement_iterations: 1,
            checkpoint_every: 1}}
predict: {{tile: 64, overlap: 16}}
realism: {{enabled: false}}
"""


def test_run_and_report_commands(tmp_path, capsys):
    from tests.conftest import make_dataset

    real = make_dataset(tmp_path / "real", n=2, size=64, labels=False)
    config = tmp_path / "run.yaml"
    config.write_text(_tiny_run_yaml(tmp_path, real))
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--quiet"]) == 0
    said = capsys.readouterr().out
    assert "[pretrain] running" in said and f"open {out / 'report.html'}" in said
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    assert "Predictions on real images</h2>" in (out / "report.html").read_text()
    assert main(["run", str(config), "--out", str(out), "--quiet"]) == 0
    assert "[pretrain] up to date, skipped" in capsys.readouterr().out
    assert main(["run", str(config), "--out", str(out), "--quiet", "--seed", "5"]) == 0
    said = capsys.readouterr().out
    assert "[simulate] running" in said and "[pretrain] running" in said  # another seed
    assert yaml.safe_load((out / "config.yaml").read_text())["seed"] == 5
    config.write_text("simulate: {preset: fluo, seed: 2}\n")
    assert main(["run", str(config), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cellsynth run: error:") and "simulate.seed" in err
    assert len(err.splitlines()) == 1


def test_run_ends_with_the_test_score_where_it_evaluated(tmp_path, capsys, monkeypatch):
    """The last line of a run that scored real.test names F1@0.5 and F1avg (they were only
    in the report); one without a test split says none."""
    from cellsynth.pipeline import run as run_module
    from tests.conftest import make_dataset

    real = make_dataset(tmp_path / "real", n=2, size=64, labels=False)
    config = tmp_path / "run.yaml"
    config.write_text(_tiny_run_yaml(tmp_path, real))
    scored = {"simulate": {}, "evaluate": {"f1_50": 0.5423, "f1_avg": 0.4031}}
    monkeypatch.setattr(run_module, "run", lambda *a, **k: scored)
    assert main(["run", str(config), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last == (f"run finished (simulate, evaluate); test F1@0.5 0.542, F1avg 0.403: "
                    f"open {tmp_path / 'r' / 'report.html'}")
    monkeypatch.setattr(run_module, "run", lambda *a, **k: {"simulate": {}})
    assert main(["run", str(config), "--out", str(tmp_path / "r"), "--quiet"]) == 0
    assert "F1" not in capsys.readouterr().out


def test_demo_command_writes_its_data_and_report(tmp_path, capsys, monkeypatch):
    from dataclasses import replace

    from cellsynth.io.datasets import load_dataset
    from cellsynth.pipeline import demo
    from cellsynth.pipeline.config import RealismOptions, SimulateOptions
    from cellsynth.refine.config import RefineConfig
    from cellsynth.segment.trainer import TrainConfig

    full = demo.demo_config
    detector = TrainConfig(steps=2, crop=64, batch=1, samples=32, order=4,
                           refinement_iterations=1, checkpoint_every=1, val_every=2)

    def tiny(data):  # the demo's wiring with a budget of seconds
        return replace(full(data),
                       simulate=SimulateOptions(preset="fluo", n=3, size=64, workers=1),
                       n_val=2, bootstrap=50,
                       refine=RefineConfig(steps=2, crop=32, batch=2, width=8, blocks=1,
                                           spade_hidden=8, d_width=8, d_layers=2, d_scales=1,
                                           sample_every=1, checkpoint_every=1, log_every=1),
                       pretrain=detector, finetune=detector, supervised=detector)

    write = demo.write_demo_data

    def small_data(folder):  # the shipped images cut to 96 x 128: seconds, not minutes
        from cellsynth.io.images import read_image, read_labels, write_image, write_labels

        folders = write(folder)
        for path in folder.rglob("*.png"):
            write_image(path, read_image(path)[:96, :128])
        for path in folder.rglob("*.tif"):
            write_labels(path, read_labels(path)[:96, :128])
        return folders

    monkeypatch.setattr(demo, "demo_config", tiny)
    monkeypatch.setattr(demo, "write_demo_data", small_data)
    monkeypatch.setattr(demo, "REALISM", RealismOptions(n_crops=8, epochs=1, folds=2))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    assert f"demo finished: open {out / 'report.html'}" in capsys.readouterr().out
    assert len(load_dataset(out / "data" / "unlabeled")) == 4  # 2 annotated + 2 unlabeled
    page = (out / "report.html").read_text()
    for name in ("real_k2", "sim_only", "refined_only", "sim_ft_k2", "refined_ft_k2"):
        assert f"<td>{name}</td>" in page
    for section in ("Which differences are real?", "Where the detectors are right and wrong",
                    "How realistic are the synthetic images?", "Next steps"):
        assert section in page
    heldout = load_dataset(out / "data" / "heldout")
    n_cells = sum(len(np.unique(s.read_labels())) - 1 for s in heldout)
    assert f"({n_cells} cells)" in page  # the held-out images' annotations
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(tmp_path / "other"), "--quiet"]) == 2
    assert "not a cellsynth run" in capsys.readouterr().err
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_experiment_command_refuses_a_bad_config_in_one_line(tmp_path, capsys):
    from tests.conftest import make_dataset

    make_dataset(tmp_path / "train", n=2)
    make_dataset(tmp_path / "test", n=1, seed=1)
    config = tmp_path / "exp.yaml"
    config.write_text("train: train\ntest: test\nsettings:\n  - {name: a, data: real, k: 5}\n")
    assert main(["experiment", str(config), "--out", str(tmp_path / "exp")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "setting a: k = 5 but" in err[0]
    assert not (tmp_path / "exp").exists()


def test_predict_takes_its_detector_by_the_old_name_too_and_needs_one(tmp_path, capsys):
    old = _build_parser().parse_args(["predict", "--model", "r", "--images", "i", "--out", "o"])
    assert str(old.detector) == "r"
    assert main(["predict", "--images", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["cellsynth predict: error: --detector is required: a train run folder or "
                   "its checkpoint file, or a `cellsynth run` folder"]
    assert not (tmp_path / "o").exists()


def test_predict_usage_names_the_detector_as_required(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    usage = " ".join(capsys.readouterr().out.split())
    assert usage.startswith("usage: cellsynth predict --detector DETECTOR --images")
    assert "[--detector" not in usage


def test_a_second_command_in_the_same_process_says_its_warnings_again(tmp_path, capsys):
    import imageio.v3 as iio
    import numpy as np

    from cellsynth.cli import main

    (tmp_path / "images").mkdir()
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., 3] = 255
    iio.imwrite(tmp_path / "images" / "a.png", rgba)
    for _ in range(2):  # Python shows a warning once per place unless the filters change
        assert main(["inspect", str(tmp_path)]) == 0
        assert "a.png: dropping alpha channel" in capsys.readouterr().err


def test_a_command_says_each_warning_once_wherever_it_comes_from(monkeypatch, capsys):
    """The stages of a run warned the same note about the same folder from several places
    (up to 8 times); a command now says each text once, and different texts each."""
    import warnings

    from cellsynth import cli

    def noisy(args):
        for where in ("a", "b", "a", "c", "a"):  # (distinct lines: Python would say each)
            if where == "a":
                warnings.warn("folder x: states no pixel size", stacklevel=1)
            elif where == "b":
                warnings.warn("folder x: states no pixel size", stacklevel=1)
            else:
                warnings.warn("folder y: states no pixel size", stacklevel=1)
        return 0

    def parser():
        p = argparse.ArgumentParser()
        p.set_defaults(command="probe", func=noisy)
        return p
    monkeypatch.setattr(cli, "_build_parser", parser)
    assert cli.main([]) == 0
    assert capsys.readouterr().err.splitlines() == [
        "cellsynth probe: warning: folder x: states no pixel size",
        "cellsynth probe: warning: folder y: states no pixel size"]


def test_progress_bars_into_a_log_file_update_every_30_s(monkeypatch, capsys):
    """stderr not a terminal (a background run's log): tqdm's bars update every 30 s instead
    of every step; a terminal, or the user's own TQDM_MININTERVAL, is left alone."""
    from cellsynth import cli

    seen = []

    def parser():
        p = argparse.ArgumentParser()
        p.set_defaults(command="probe",
                       func=lambda args: seen.append(os.environ.get("TQDM_MININTERVAL")))
        return p
    monkeypatch.setattr(cli, "_build_parser", parser)
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    assert cli.main([]) == 0
    assert seen == [str(cli.LOG_BAR_INTERVAL_S)]
    assert "TQDM_MININTERVAL" not in os.environ  # restored after the command
    monkeypatch.setenv("TQDM_MININTERVAL", "5")
    cli.main([])
    assert seen[-1] == "5"
    monkeypatch.delenv("TQDM_MININTERVAL")
    monkeypatch.setattr(cli.sys.stderr, "isatty", lambda: True, raising=False)
    cli.main([])
    assert seen[-1] is None


def test_train_takes_its_batch_workers_from_the_command_line(tmp_path, monkeypatch):
    from cellsynth.segment import trainer

    seen = {}
    monkeypatch.setattr(trainer, "train", lambda config, *a, **k: seen.setdefault(
        "config", config) and {"steps": 0, "loss": 0.0, "best_val_f1": -1})
    args = ["train", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--quiet"]
    assert main(args + ["--workers", "3"]) == 0
    assert seen.pop("config").workers == 3
    assert main(args) == 0
    assert seen.pop("config").workers == 0
    with pytest.raises(SystemExit) as refused:  # argparse's one-line refusal
        main(args + ["--workers", "-1"])
    assert refused.value.code == 2 and "config" not in seen


def test_a_file_no_reader_recognises_gets_one_line_and_no_reader_chatter(tmp_path, capsys):
    # imageio tries every plugin on such a file; some warn on the way (a deprecated DICOM
    # reader, files they left open): the user should see the file and the problem only
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "scan.png").write_text("not an image\n")
    assert main(["inspect", str(tmp_path)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("cellsynth inspect: error:") and "scan.png" in err
    assert "not a PNG image" in err


def test_notes_start_a_line_of_their_own_under_a_progress_bar(capsys):
    """A warning or a log line while a bar is drawn: written above the bar, not glued to its
    end (where the bar's next redraw overwrote it)."""
    import logging
    import sys
    import warnings

    from tqdm import tqdm

    from cellsynth.cli import _output

    with _output("predict", quiet=True), tqdm(total=3, file=sys.stderr) as bar:
        bar.update(1)
        warnings.warn("pixel size unknown", stacklevel=1)
        logging.getLogger("cellsynth").warning("1 Zeiss CZI file(s) skipped")
        bar.update(1)
    err = capsys.readouterr().err
    for note in ("cellsynth predict: warning: pixel size unknown\n",
                 "cellsynth predict: 1 Zeiss CZI file(s) skipped\n"):
        at = err.index(note)
        assert at == 0 or err[at - 1] in "\r\n", repr(err[max(0, at - 40):at + 10])


def test_help_shows_a_default_once_and_only_where_there_is_one():
    """argparse's "(default: None)" after an option without a default, or after a help that
    already names its default in words, is left out; real defaults are still shown."""
    import argparse

    from cellsynth.cli import _build_parser

    parser = _build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in commands.choices.items():
        text = " ".join(command.format_help().split())
        assert "(default: None)" not in text, name
        assert "(default: False)" not in text, name
    predict = " ".join(commands.choices["predict"].format_help().split())
    assert "(default: 96)" in predict  # --overlap's, which its help does not name
    assert "packed cells) (default" not in predict  # --nms names its own default


def test_output_piped_into_head_ends_quietly(tmp_path, capsys, monkeypatch):
    """`cellsynth inspect DIR | head -2` ended with "cellsynth inspect: error: Broken
    pipe" on stderr: the reader that went away is no error of the command."""
    import io
    import sys

    from tests.conftest import make_dataset

    class Gone(io.StringIO):  # a pipe whose reader has exited
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self):
            raise io.UnsupportedOperation("no file")

    data = make_dataset(tmp_path / "ds", n=2, size=32)
    monkeypatch.setattr(sys, "stdout", Gone())
    assert main(["inspect", str(data)]) == 141
    err = capsys.readouterr().err
    assert "Broken pipe" not in err and "error" not in err, err


def test_an_interrupted_training_names_resume_only_once_it_has_a_checkpoint(tmp_path, capsys,
                                                                            monkeypatch):
    """Stopped while starting (before the first checkpoint), train said "the same command
    with --resume continues", and --resume then found nothing to resume (fourth audit)."""
    from cellsynth.segment import trainer
    from tests.conftest import make_dataset

    data = make_dataset(tmp_path / "d", n=1, size=64)

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", stopped)
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--quiet"]
    assert main(argv) == 130
    assert capsys.readouterr().err.strip() == (
        "cellsynth train: interrupted; nothing was trained yet: the same command starts again")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "last.pt").write_bytes(b"checkpoint")
    assert main(argv) == 130
    assert capsys.readouterr().err.strip() == (
        "cellsynth train: interrupted; the same command with --resume continues")


def test_experiment_quiet_keeps_its_unit_lines_back(tmp_path, capsys, monkeypatch):
    from cellsynth.pipeline import experiment
    from tests.pipeline.test_experiment import _config

    config = _config(tmp_path)
    from cellsynth.config import save_yaml

    save_yaml(tmp_path / "exp.yaml", config)
    monkeypatch.setattr(experiment, "run_experiment",
                        lambda config, out, log, **kw: log("[1/9] detectors/x: running"))
    argv = ["experiment", str(tmp_path / "exp.yaml"), "--out", str(tmp_path / "e")]
    assert main(argv) == 0
    assert "[1/9] detectors/x: running" in capsys.readouterr().out
    assert main([*argv, "--quiet"]) == 0
    assert "detectors/x" not in capsys.readouterr().out


def test_run_takes_its_config_from_after_reuse_and_checks_out_before_estimating(
        tmp_path, capsys, monkeypatch):
    """`run --reuse A CONFIG --out X` (--reuse takes several folders, and took the config
    too: "the following arguments are required: config"); `run --estimate` timed the
    networks for a minute before an --out that is a file was ever looked at."""
    from cellsynth.pipeline import estimate as estimate_module
    from cellsynth.pipeline import run as run_module
    from tests.conftest import make_dataset

    real = make_dataset(tmp_path / "real", n=2, size=64, labels=False)
    config = tmp_path / "run.yaml"
    config.write_text(_tiny_run_yaml(tmp_path, real))
    earlier = [tmp_path / "a", tmp_path / "b"]
    seen = {}
    monkeypatch.setattr(run_module, "run", lambda cfg, out, **k: seen.update(
        seed=cfg.seed, out=out, reuse=list(k["reuse"])) or {"simulate": {}})
    assert main(["run", "--reuse", *map(str, earlier), str(config), "--out",
                 str(tmp_path / "r"), "--quiet"]) == 0
    assert seen == {"seed": 0, "out": tmp_path / "r", "reuse": earlier}
    assert main(["run", "--reuse", *map(str, earlier), "--out", str(tmp_path / "r")]) == 2
    assert "the pipeline YAML is missing" in capsys.readouterr().err

    monkeypatch.setattr(estimate_module, "estimate", lambda *a, **k: pytest.fail("timed"))
    (tmp_path / "afile").write_text("x")
    assert main(["run", str(config), "--out", str(tmp_path / "afile"), "--estimate"]) == 2
    assert "afile: exists and is not a folder" in capsys.readouterr().err
    assert main(["run", str(config), "--out", str(real / "images" / "x"), "--estimate"]) == 2
    assert "lies in the images/ folder of the input" in capsys.readouterr().err
    # a folder of the user's that is not a run: its predict/ and report.html were replaced
    # without a word (audit); a run folder (state.json, or config.yaml of a run stopped
    # before its state) continues as before
    mine = tmp_path / "mine"
    (mine / "predict").mkdir(parents=True)
    (mine / "predict" / "mine.txt").write_text("my earlier predictions")
    assert main(["run", str(config), "--out", str(mine), "--estimate"]) == 2
    err = capsys.readouterr().err
    assert "mine: not empty and not a cellsynth run folder (it holds predict)" in err, err
    assert (mine / "predict" / "mine.txt").read_text() == "my earlier predictions"
    from cellsynth.pipeline.config import load_pipeline_config
    from cellsynth.pipeline.run import check_out

    (mine / "config.yaml").write_text("name: x\n")
    check_out(load_pipeline_config(config), mine)  # (refuses nothing: no error)


def test_cellsynth_alone_prints_its_commands(capsys):
    """`cellsynth` without a command said only "the following arguments are required"."""
    from cellsynth import cli

    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: cellsynth")
    import re

    assert re.search(r"^ +init +write a pipeline config", err, re.M)
    assert re.search(r"^ +run +run the whole pipeline from a YAML config", err, re.M)


def test_out_dot_writes_or_is_refused_up_front_never_a_traceback(tmp_path, capsys,
                                                                  monkeypatch):
    """`--out .` failed after the work with a traceback ('PosixPath('.') has an empty name'):
    a run folder now fills the folder one is in; a command that swaps its folder in whole
    (or --force, which moves a run aside) is refused before any work, naming the folder."""
    from cellsynth.io.datasets import load_dataset

    sim = tmp_path / "sim"
    assert main(["simulate", "--preset", "fluo", "--n", "2", "--size", "64", "--out",
                 str(sim), "--quiet"]) == 0
    here = tmp_path / "project"
    (here / "sub").mkdir(parents=True)
    monkeypatch.chdir(here)
    for out in (".", ".."):
        capsys.readouterr()
        monkeypatch.chdir(here / "sub" if out == ".." else here)
        assert main(["simulate", "--preset", "fluo", "--n", "1", "--size", "48", "--out",
                     out, "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"cellsynth simulate: error: --out {out}: is the folder you are "
                              f"in") and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["project", "sim"]  # nothing staged
    assert [p.name for p in here.iterdir()] == ["sub"]
    monkeypatch.chdir(here / "sub")
    assert main(["train", "--data", str(sim), "--out", ".", "--steps", "1", "--crop", "32",
                 "--batch", "1", "--model", "tiny_u22", "--quiet"]) == 0
    assert (here / "sub" / "last.pt").is_file() and (here / "sub" / "run.json").is_file()
    assert main(["train", "--data", str(sim), "--out", ".", "--steps", "1", "--crop", "32",
                 "--batch", "1", "--model", "tiny_u22", "--quiet", "--force"]) == 2
    assert "is moved aside by --force" in capsys.readouterr().err
    assert (here / "sub" / "last.pt").is_file()
    assert len(load_dataset(sim)) == 2
