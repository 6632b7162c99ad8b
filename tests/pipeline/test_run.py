"""cellsynth run: stages skip when done, resume when interrupted, redo when changed."""

import json
import os
import re
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cellsynth.errors import ConfigError, DatasetError, ImageReadError
from cellsynth.io.images import read_image, write_image
from cellsynth.pipeline import stages, staging
from cellsynth.pipeline.config import (
    PipelineConfig,
    PredictOptions,
    RealData,
    RealismOptions,
    SimulateOptions,
    load_pipeline_config,
)
from cellsynth.pipeline.run import content_fingerprint, run
from cellsynth.refine.config import RefineConfig
from cellsynth.segment.trainer import TrainConfig


def _real(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(2):
        write_image(folder / f"r{i}.png", rng.integers(0, 255, (64, 64), dtype=np.uint8))
    return folder


def _config(real: Path) -> PipelineConfig:
    return PipelineConfig(
        simulate=SimulateOptions(preset="fluo", n=4, size=64, workers=1),
        real=RealData(unlabeled=str(real)),
        refine=RefineConfig(steps=2, crop=32, batch=2, width=8, blocks=1, spade_hidden=8,
                            d_width=8, d_layers=2, d_scales=1, sample_every=1,
                            checkpoint_every=1, log_every=1),
        pretrain=TrainConfig(steps=2, crop=64, batch=1, samples=32, order=4,
                             refinement_iterations=1, checkpoint_every=1),
        # (fine-tuning starts from the pretrained network: the same one)
        finetune=TrainConfig(steps=300, lr=3e-4, samples=32, order=4, refinement_iterations=1),
        predict=PredictOptions(tile=64, overlap=16),
        realism=RealismOptions(enabled=False),
    )


def _mtimes(run_dir: Path, stage: str) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in (run_dir / stage).rglob("*") if p.is_file()}


def test_rerun_skips_done_stages_and_redoes_changed_ones(tmp_path):
    config = _config(_real(tmp_path / "real"))
    out = tmp_path / "run"
    run(config, out, progress=False, log=lambda _: None)
    page = (out / "report.html").read_text()
    for section in ("Samples", "Refiner losses", "Detector training",
                    "Predictions on real images", "Configuration"):
        assert f"{section}</h2>" in page
    assert page.count("data:image/png;base64,") >= 5  # self-contained pictures
    # a stage's own seed in the resolved config is not what it trained with: said
    assert "  seed: 0   # not used: every stage takes the run&#x27;s seed (0)" in page
    # no annotated real.val: pretraining is validated on held-out refined images, simulated
    # from another seed than the training images (threshold and checkpoint come from them)
    info = json.loads((out / "pretrain" / "run.json").read_text())
    assert info["val"] == str(out / "refined_val") and info["n_val_images"] == 16
    val_images = sorted((out / "simulate_val" / "images").iterdir())
    assert len(val_images) == 16
    first_train = sorted((out / "simulate" / "images").iterdir())[0]
    assert val_images[0].read_bytes() != first_train.read_bytes()
    logged = [json.loads(line) for line in (out / "pretrain" / "log.jsonl").open()]
    assert any("val_f1" in entry for entry in logged)
    before = {s: _mtimes(out, s) for s in ("simulate", "refiner", "refined", "pretrain")}
    said: list[str] = []
    run(config, out, progress=False, log=said.append)
    assert all("skipped" in line for line in said), said
    assert {s: _mtimes(out, s) for s in before} == before
    # A changed detector config redoes pretraining and what follows, nothing upstream.
    said.clear()
    run(replace(config, pretrain=replace(config.pretrain, steps=3)), out, progress=False,
        log=said.append)
    ran = [line.split("]")[0][1:] for line in said
             if "skipped" not in line and " done in " not in line]
    assert ran == ["pretrain", "predict", "report"]
    assert _mtimes(out, "refiner") == before["refiner"]


def test_fingerprints_follow_contents_and_the_one_seed(tmp_path):
    real = _real(tmp_path / "real")
    config = _config(real)
    out = tmp_path / "run"
    run(config, out, progress=False, log=lambda _: None)
    # the same images somewhere else: nothing to redo
    moved = real.rename(tmp_path / "moved")
    said: list[str] = []
    run(replace(config, real=RealData(unlabeled=str(moved))), out, progress=False,
        log=said.append)
    assert all("skipped" in line for line in said), said
    # one real image edited: the refiner and everything after it run again
    write_image(moved / "r0.png", np.full((64, 64), 7, np.uint8))
    said.clear()
    run(replace(config, real=RealData(unlabeled=str(moved))), out, progress=False,
        log=said.append)
    ran = [line.split("]")[0][1:] for line in said
             if "skipped" not in line and " done in " not in line]
    assert ran == ["refiner", "refined", "refined_val", "pretrain", "predict", "report"]
    # another run seed: every stage, the simulation included
    said.clear()
    run(replace(config, seed=1, real=RealData(unlabeled=str(moved))), out, progress=False,
        log=said.append)
    assert not [line for line in said if "skipped" in line]


def _plan_of_no_work(monkeypatch) -> None:
    """Every stage of the real plan, with its real fingerprint, doing nothing when run."""
    plan = stages.plan
    monkeypatch.setattr(stages, "plan", lambda cfg: [replace(s, run=lambda *a, **kw: {})
                                                     for s in plan(cfg)])


def test_a_rerun_names_the_setting_or_the_input_that_changed(tmp_path, monkeypatch):
    _plan_of_no_work(monkeypatch)
    real = _real(tmp_path / "real")
    config, out, said = _config(real), tmp_path / "run", []
    run(config, out, progress=False, log=lambda _: None)
    run(replace(config, pretrain=replace(config.pretrain, steps=3)), out, progress=False,
        log=said.append)
    assert "[pretrain] running again: pretrain.steps 2 -> 3 changed" in said
    assert "[predict] running again: what it reads (pretrain) changed" in said
    said.clear()  # (an option at its default was "unset" in the line, however it was set)
    run(replace(config, pretrain=replace(config.pretrain, steps=3),
                predict=replace(config.predict, tta=True)), out, progress=False,
        log=said.append)
    assert "[predict] running again: predict.tta (default) -> true changed" in said
    said.clear()
    write_image(real / "r0.png", np.full((64, 64), 7, np.uint8))
    run(replace(config, pretrain=replace(config.pretrain, steps=3)), out, progress=False,
        log=said.append)
    assert "[refiner] running again: what it reads (real.unlabeled) changed" in said
    # a state.json written before the records were kept: the general words
    state = json.loads((out / "state.json").read_text())
    (out / "state.json").write_text(json.dumps(
        {name: {k: v for k, v in entry.items() if k != "hashed"}
         for name, entry in state.items()}))
    said.clear()
    run(config, out, progress=False, log=said.append)
    assert ("[pretrain] running again: its settings or what it reads changed since it last "
            "ran") in said


def test_stages_done_for_an_earlier_config_are_not_shown_done_while_it_reruns(tmp_path,
                                                                             monkeypatch):
    """pretrain.steps changed, the rerun stopped in pretrain: the report said predict and
    evaluate "done" and showed the old detector's metrics under the new config (audit).
    They are marked done for an earlier configuration at the rerun's start."""
    from cellsynth.pipeline.report import write_report

    plan, stop = stages.plan, []

    def pretrain(*args, **kwargs):
        if stop:
            raise KeyboardInterrupt
        return {}

    monkeypatch.setattr(stages, "plan", lambda cfg: [
        replace(s, run=pretrain if s.name == "pretrain" else lambda *a, **kw: {})
        for s in plan(cfg)])
    config, out = _config(_real(tmp_path / "real")), tmp_path / "run"
    run(config, out, progress=False, log=lambda _: None)
    assert "<td>predict</td><td>done</td>" in write_report(out).read_text()
    changed = replace(config, pretrain=replace(config.pretrain, steps=3))
    stop.append(1)
    with pytest.raises(KeyboardInterrupt):
        run(changed, out, progress=False, log=lambda _: None)
    state = json.loads((out / "state.json").read_text())
    assert state["predict"]["done"] is False and state["predict"]["outdated"] is True
    assert state["simulate"]["done"] is True  # (unchanged: still this config's)
    page = write_report(out).read_text()
    assert ("<td>predict</td><td>done for an earlier configuration; runs again</td>"
            in page)
    stop.clear()
    said: list[str] = []
    run(changed, out, progress=False, log=said.append)
    assert "[predict] running again: what it reads (pretrain) changed" in said
    state = json.loads((out / "state.json").read_text())
    assert state["predict"]["done"] is True and "outdated" not in state["predict"]
    from cellsynth.pipeline.report import _earlier  # (the warning above the test metrics)

    assert "evaluate stage is done for an earlier configuration" in _earlier(
        {"evaluate": {"done": False, "outdated": True}}, "evaluate")
    assert _earlier({"evaluate": {"done": True}}, "evaluate") == ""


def test_simulating_in_more_processes_redoes_nothing(tmp_path, monkeypatch):
    """simulate.workers draws the same images (seeded per image) in more processes, yet
    changing it redid every stage (audit): a record that differs only in it is kept (and
    fingerprints of new runs stay what they were)."""
    _plan_of_no_work(monkeypatch)
    config, out, said = _config(_real(tmp_path / "real")), tmp_path / "run", []
    one = replace(config, simulate=replace(config.simulate, workers=1))
    run(one, out, progress=False, log=lambda _: None)
    run(replace(config, simulate=replace(config.simulate, workers=3)), out, progress=False,
        log=said.append)
    assert said and all("skipped" in line for line in said), said
    said.clear()  # (anything else changed still redoes the stage)
    run(replace(config, simulate=replace(config.simulate, workers=3, n=5)), out,
        progress=False, log=said.append)
    assert any(line.startswith("[simulate] running again: ") and "simulate.n 4 -> 5" in line
               for line in said), said


def test_a_stage_whose_output_was_deleted_runs_again(tmp_path, monkeypatch):
    """predict/ deleted by hand (or a detector's best.pt) was "up to date, skipped" and the
    report named a detector that was gone (audit); what a finished stage wrote is recorded
    and a stage missing it runs again."""
    plan = stages.plan

    def writes(name):
        def work(config, out, **kw):
            (out / name).mkdir(exist_ok=True)
            (out / name / "made.txt").write_text(name)
            (out / name / "best.pt").write_text("weights")
            return {}
        return work

    monkeypatch.setattr(stages, "plan", lambda cfg: [replace(s, run=writes(s.name))
                                                     for s in plan(cfg)])
    config, out = _config(_real(tmp_path / "real")), tmp_path / "run"
    run(config, out, progress=False, log=lambda _: None)
    state = json.loads((out / "state.json").read_text())
    assert state["pretrain"]["output"] == ["best.pt", "made.txt"]
    import shutil

    shutil.rmtree(out / "predict")
    (out / "pretrain" / "best.pt").unlink()
    said: list[str] = []
    run(config, out, progress=False, log=said.append)
    ran = [line for line in said if "skipped" not in line and " done in " not in line]
    assert ran == ["[pretrain] running again: what it wrote is gone (pretrain/best.pt)",
                   "[predict] running again: what it wrote is gone (predict/)"], said
    assert (out / "predict" / "made.txt").is_file() and (out / "pretrain" / "best.pt").is_file()


def test_a_resumed_stage_counts_the_time_of_every_run_that_worked_on_it(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from cellsynth.pipeline import run as run_module
    from cellsynth.pipeline.report import write_report

    clock, calls = [0.0], []
    monkeypatch.setattr(run_module, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    plan = stages.plan

    def pretrain(*args, **kwargs):  # 100 s, then killed; 40 s more when resumed
        calls.append(kwargs["resume"])
        clock[0] += 100.0 if len(calls) == 1 else 40.0
        if len(calls) == 1:
            raise KeyboardInterrupt
        return {}

    monkeypatch.setattr(stages, "plan", lambda cfg: [
        replace(s, run=pretrain if s.name == "pretrain" else lambda *a, **kw: {})
        for s in plan(cfg)])
    config, out, said = _config(_real(tmp_path / "real")), tmp_path / "run", []
    with pytest.raises(KeyboardInterrupt):
        run(config, out, progress=False, log=lambda _: None)
    run(config, out, progress=False, log=said.append)
    assert calls == [False, True]
    entry = json.loads((out / "state.json").read_text())["pretrain"]
    assert (entry["seconds"], entry["runs"]) == (140.0, 2)
    assert [line for line in said if line.startswith("[pretrain] done")][0].startswith(
        "[pretrain] done in 2.3 min in all (40 s this time); ")
    assert "<td>pretrain</td><td>done</td><td>2.3 min (2 runs)</td>" in (
        write_report(out).read_text())
    # redone from scratch (new settings): its time starts again
    run(replace(config, pretrain=replace(config.pretrain, steps=3)), out, progress=False,
        log=lambda _: None)
    entry = json.loads((out / "state.json").read_text())["pretrain"]
    assert (entry["seconds"], entry["runs"]) == (40.0, 1)


def test_a_stage_killed_outright_keeps_the_time_its_heartbeat_recorded(tmp_path, monkeypatch):
    """kill -9 (or a machine lost) leaves no chance to record a step's time: its resume
    started from 0 s. A heartbeat records the seconds so far while it runs; state.json as
    the kill leaves it (copied at that moment here) gives the resume its earlier time."""
    import shutil
    import threading
    from types import SimpleNamespace

    from cellsynth.pipeline import run as run_module

    clock, calls = [0.0], []
    monkeypatch.setattr(run_module, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    monkeypatch.setattr(run_module, "HEARTBEAT_SECONDS", 0.01)
    plan = stages.plan
    out = tmp_path / "run"

    def pretrain(*args, **kwargs):  # 100 s, then killed outright; 40 s more when resumed
        calls.append(kwargs["resume"])
        if len(calls) > 1:
            clock[0] += 40.0
            return {}
        clock[0] += 100.0
        for _ in range(1000):  # (real time: until the heartbeat has written it)
            entry = json.loads((out / "state.json").read_text())["pretrain"]
            if entry["seconds"] == 100.0:
                break
            threading.Event().wait(0.01)
        shutil.copy(out / "state.json", tmp_path / "as-killed.json")
        raise KeyboardInterrupt

    monkeypatch.setattr(stages, "plan", lambda cfg: [
        replace(s, run=pretrain if s.name == "pretrain" else lambda *a, **kw: {})
        for s in plan(cfg)])
    config = _config(_real(tmp_path / "real"))
    with pytest.raises(KeyboardInterrupt):
        run(config, out, progress=False, log=lambda _: None)
    killed = json.loads((tmp_path / "as-killed.json").read_text())["pretrain"]
    assert (killed["done"], killed["seconds"], killed["runs"]) == (False, 100.0, 1)
    shutil.copy(tmp_path / "as-killed.json", out / "state.json")  # what kill -9 left
    run(config, out, progress=False, log=lambda _: None)
    assert calls == [False, True]
    entry = json.loads((out / "state.json").read_text())["pretrain"]
    assert (entry["done"], entry["seconds"], entry["runs"]) == (True, 140.0, 2)
    # no heartbeat outlives its step to overwrite the done entry
    assert not [t for t in threading.enumerate() if t.name.startswith("cellsynth-heartbeat")]


def test_content_fingerprint_ignores_place_and_hidden_files(tmp_path):
    a = _real(tmp_path / "a")
    before = content_fingerprint(a)
    (a / ".DS_Store").write_text("x")
    assert content_fingerprint(a) == before
    assert content_fingerprint(a.rename(tmp_path / "b")) == before
    (tmp_path / "b" / "r1.png").rename(tmp_path / "b" / "r2.png")  # same bytes, other name
    assert content_fingerprint(tmp_path / "b") != before


def test_content_fingerprint_leaves_out_run_folders_inside_the_data(tmp_path):
    """`cellsynth init .` in a project folder suggests --out runs/NAME inside it: the run
    hashed its own growing folder as its real data, so every resume redid the stages that
    read it. A folder holding a state.json (a run, an experiment) is not data."""
    a = _real(tmp_path / "a")
    before = content_fingerprint(a)
    run = a / "runs" / "x"
    (run / "pretrain").mkdir(parents=True)
    (run / "state.json").write_text("{}")
    (run / "pretrain" / "log.jsonl").write_text("step 1")
    assert content_fingerprint(a) == before
    (run / "pretrain" / "log.jsonl").write_text("step 2")
    assert content_fingerprint(a) == before
    write_image(a / "runs" / "r9.png", np.zeros((8, 8), np.uint8))  # not a run's: data
    assert content_fingerprint(a) != before


def test_stage_seeds_are_refused(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("seed: 3\nsimulate: {preset: fluo, seed: 1}\n")
    with pytest.raises(ConfigError, match="simulate.seed: a run has one seed"):
        load_pipeline_config(path)
    path.write_text("seed: 3\nsimulate: {preset: fluo}\n")
    assert load_pipeline_config(path).seed == 3


def test_killed_run_keeps_finished_stages(tmp_path, monkeypatch):
    config = _config(_real(tmp_path / "real"))
    out = tmp_path / "run"
    plan = stages.plan

    def plan_killed_in_pretrain(cfg):
        result = plan(cfg)
        for i, stage in enumerate(result):
            if stage.name == "pretrain":
                def killed(*args, **kwargs):
                    raise KeyboardInterrupt
                result[i] = replace(stage, run=killed)
        return result

    monkeypatch.setattr(stages, "plan", plan_killed_in_pretrain)
    with pytest.raises(KeyboardInterrupt):
        run(config, out, progress=False, log=lambda _: None)
    done = ("simulate", "simulate_val", "refiner", "refined", "refined_val")
    finished = {s: _mtimes(out, s) for s in done}
    monkeypatch.setattr(stages, "plan", plan)
    said: list[str] = []
    run(config, out, progress=False, log=said.append)
    assert said[:5] == [f"[{s}] up to date, skipped" for s in done]
    assert said[5] == "[pretrain] resuming"
    # each stage says when it is done and how many are left; the last one only its time
    stages_done = [line for line in said if " done in " in line]
    names = [stage.name for stage in plan(config)]
    assert [line.split("]")[0][1:] for line in stages_done] == names[5:]
    assert stages_done[0].endswith(f"; {len(names) - 6} stages to go")
    assert stages_done[-1].endswith((" s", " min")) and "to go" not in stages_done[-1]
    assert {s: _mtimes(out, s) for s in finished} == finished
    assert (out / "pretrain" / "last.pt").exists()


def test_demo_data_ships_with_the_package(tmp_path):
    from cellsynth.io.datasets import load_dataset
    from cellsynth.pipeline.demo import demo_config, write_demo_data

    folders = write_demo_data(tmp_path / "data")
    annotated = load_dataset(folders["annotated"], require_labels=True)
    heldout = load_dataset(folders["heldout"], require_labels=True)
    assert len(annotated) == 2 and len(heldout) == 2
    assert sum(int(s.read_labels().max()) for s in heldout) == 297
    assert not {s.id for s in annotated} & {s.id for s in heldout}
    pool = {s.id for s in load_dataset(folders["unlabeled"])}
    assert {s.id for s in annotated} < pool and not pool & {s.id for s in heldout}
    config = demo_config(folders)
    assert config.test == str(folders["heldout"]) and config.unlabeled == str(folders["unlabeled"])


def test_config_errors_before_any_work(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("simulate:\n  preset: fluo\n  nn: 3\n")
    with pytest.raises(ConfigError, match="unknown key.*'nn'"):
        load_pipeline_config(bad)
    missing = tmp_path / "missing.yaml"
    missing.write_text("real:\n  unlabeled: nowhere\n")
    with pytest.raises(DatasetError, match="nowhere: no such folder"):
        load_pipeline_config(missing)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("simulate,real,said", [
    ("{preset: hne}", "", "run.yaml: simulate: unknown preset 'hne'; choose one of "),
    ("{preset: he, pixel_size_um: -1}", "",
     "run.yaml: simulate: pixel size must be a number > 0, got -1"),
    ("{preset: he, color: blue}", "", "run.yaml: simulate: preset 'he' has no colour variant"),
    ("{preset: he, overrides: {bogus: 1}}", "",
     "run.yaml: simulate: overrides: unknown key(s) 'bogus'"),
    ("{preset: he}", ", pixel_size_um: 0",
     "run.yaml: real: pixel_size_um must be a number > 0, got 0"),
])
def test_a_config_error_names_the_file_and_the_section(tmp_path, simulate, real, said):
    """Some config errors named neither file nor key ("unknown preset 'hne'"), and a
    real.pixel_size_um of 0 was read as not stated (fresh-user audit)."""
    from tests.conftest import make_dataset

    data = make_dataset(tmp_path / "d", n=1, size=64)
    path = tmp_path / "run.yaml"
    path.write_text(f"simulate: {simulate}\nreal: {{train: {data}{real}}}\n")
    with pytest.raises(ConfigError) as caught:
        load_pipeline_config(path)
    assert str(caught.value).startswith(said.replace("run.yaml", str(path), 1))
    # experiments name them alike
    from cellsynth.pipeline.experiment import load_experiment_config

    if not real:
        test = make_dataset(tmp_path / "t", n=1, size=64, seed=5)
        exp = tmp_path / "exp.yaml"
        exp.write_text(f"simulate: {simulate}\ntrain: {data}\ntest: {test}\n")
        with pytest.raises(ConfigError, match=rf"^{re.escape(str(exp))}: simulate: "):
            load_experiment_config(exp)


def test_simulate_overrides_may_name_the_file_fit_simulator_wrote(tmp_path):
    """README: use fit-simulator's output "under simulate: overrides: of a run config";
    naming the file there was a traceback (README audit)."""
    from tests.conftest import make_dataset

    data = make_dataset(tmp_path / "d", n=1, size=64)
    (tmp_path / "fits").mkdir()
    (tmp_path / "fits" / "fitted.yaml").write_text("preset: fluo\nmax_occlusion: 0.123\n")
    path = tmp_path / "run.yaml"

    def config(overrides, preset="fluo"):
        path.write_text(f"simulate: {{preset: {preset}, overrides: {overrides}}}\n"
                        f"real: {{train: {data}}}\n")
        return load_pipeline_config(path)

    named, pasted = config("fits/fitted.yaml"), config("{max_occlusion: 0.123}")
    assert named.simulate.overrides == {"preset": "fluo", "max_occlusion": 0.123}
    assert named.simulate.simulation() == pasted.simulate.simulation()
    assert named.simulate.simulation().max_occlusion == 0.123
    with pytest.raises(ConfigError, match=r"run.yaml: simulate.overrides: .*fitted.yaml is for "
                                          r"preset 'fluo', not simulate.preset 'he'"):
        config("fits/fitted.yaml", preset="he")
    with pytest.raises(ConfigError, match=r"run.yaml: simulate.overrides: .*nowhere.yaml: no "
                                          r"such file"):
        config("nowhere.yaml")
    with pytest.raises(ConfigError, match=r"run.yaml: simulate.overrides: expected a mapping, "
                                          r"got \[1, 2\]"):
        config("[1, 2]")


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[2].glob("configs/*.yaml")))
def test_example_configs_are_valid(path):
    from cellsynth.config import from_dict, load_yaml
    from cellsynth.refine.config import refine_config

    data = load_yaml(path)
    if path.name.startswith("refine-"):
        refine_config(path)
    elif path.name.startswith("experiment-"):
        from cellsynth.pipeline.experiment import ExperimentConfig

        config = from_dict(ExperimentConfig, data, where=str(path))  # the data may be absent
        assert len(config.seeds) >= 3 and config.compare
    else:
        from_dict(PipelineConfig, data, where=str(path))


def test_labeled_run_finetunes_evaluates_and_maps_back_to_the_real_pixels(tmp_path):
    """Real images at twice the simulation's pixel size: the run works on rescaled copies
    and writes predictions at the original images' size; fine-tune, evaluate and realism
    stages run and the report shows their sections."""
    from tests.conftest import make_dataset

    train = make_dataset(tmp_path / "train", n=2, size=48, seed=1)
    test = make_dataset(tmp_path / "test", n=2, size=48, seed=2)
    config = replace(
        _config(train),
        real=RealData(unlabeled=str(train), train=str(train), val=str(train), test=str(test),
                      pixel_size_um=1.0),
        simulate=SimulateOptions(preset="fluo", n=4, size=64, workers=1, pixel_size_um=0.5),
        finetune=TrainConfig(steps=2, crop=64, batch=1, samples=32, order=4,
                             refinement_iterations=1, checkpoint_every=1, val_every=2),
        realism=RealismOptions(enabled=True, n_crops=8, epochs=1, folds=2))
    out = tmp_path / "run"
    said: list[str] = []
    summaries = run(config, out, progress=False, log=said.append)
    ran = [line.split("]")[0][1:] for line in said if " done in " not in line]
    assert ran == ["simulate", "real", "refiner", "refined", "pretrain", "finetune", "predict",
                   "evaluate", "realism", "report"]
    from cellsynth.io.images import read_image, read_labels

    assert read_image(out / "real" / "test" / "images" / "img0.png").shape[:2] == (96, 96)
    import yaml

    # the detectors record the working pixel size, so `cellsynth predict` resamples the
    # original images (at 1.0 um/px) by itself
    for stage in ("pretrain", "finetune"):
        assert yaml.safe_load((out / stage / "config.yaml").read_text())[
            "pixel_size_um"] == 0.5
    import csv

    for i in range(2):
        predicted = read_labels(out / "predict" / "labels" / f"img{i}.tif")
        assert predicted.shape == (48, 48)  # back at the original pixels
        # and so are its cells' table and what meta.json says of it: export pairs the
        # labels with the user's image (it paired them with the staged copy, twice the size)
        with open(out / "predict" / "detections" / f"img{i}.csv") as f:
            rows = list(csv.DictReader(f))
        areas = np.bincount(predicted.ravel())
        assert [int(r["area_px"]) for r in rows] == [areas[int(r["id"])] for r in rows]
        assert all(r["pixel_size_um"] == "1" and r["pixel_size"] == "stated" for r in rows)
    meta = json.loads((out / "predict" / "meta.json").read_text())
    assert meta["images"] == str(test.resolve()) and meta["pixel_size_um"] == 1.0
    from cellsynth.io.export import export

    export(out / "predict", "stardist", tmp_path / "sd")
    for i in range(2):
        np.testing.assert_array_equal(read_image(tmp_path / "sd" / "images" / f"img{i}.tif"),
                                      read_image(test / "images" / f"img{i}.png"))
        np.testing.assert_array_equal(read_labels(tmp_path / "sd" / "masks" / f"img{i}.tif"),
                                      read_labels(out / "predict" / "labels" / f"img{i}.tif"))
    assert 0.0 <= summaries["evaluate"]["f1_50"] <= 1.0
    assert set(summaries["realism"]) == {"simulate_vs_real", "refined_vs_real"}
    page = (out / "report.html").read_text()
    for section in ("Realism", "Instance metrics on the test images", "Detector training"):
        assert f"{section}</h2>" in page
    training = page.split("Detector training</h2>")[1].split("<h2>")[0]
    assert training.count("<img") == 4  # losses and validation F1 of pretrain and finetune
    # the test images drawn by outcome, counted as the evaluation counts them; the command
    # for new images states the real images' pixel size (files that state none would be
    # taken at the detector's 0.5 um/px)
    import re

    metrics = json.loads((out / "evaluate" / "metrics.json").read_text())
    shown = page.split("Predictions on real images</h2>")[1].split("<h2>")[0]
    found = [int(n) for n in re.findall(r"(\d+) found", shown)]
    missed = [int(n) for n in re.findall(r"(\d+) missed", shown)]
    assert len(found) == len(missed) == 2 and shown.count("<img") == 2
    assert sum(found) + sum(missed) == metrics["n_gt"]
    assert sum(found) == round(metrics["recall"][0] * metrics["n_gt"])
    assert "--pixel-size 1</code>" in shown


def test_a_run_can_fit_the_simulator_to_its_real_images_first(tmp_path):
    from cellsynth.simulate import preset, simulate, simulation_config
    from cellsynth.simulate.fit import median_diameter_um

    base = preset("fluo")
    bigger = simulation_config("fluo", overrides={"cells": {
        c.name: {"diameter_um": [d * 1.4 for d in c.diameter_um]} for c in base.cells}})
    real = tmp_path / "real"
    real.mkdir()
    # six images: on three of 128 px the fluo preset's per-image zoom (0.4-3x) hides a 1.4x
    # size (the fit judged by 48 simulated images answers with the base; by 8, 1.24x)
    for i, (image, _) in enumerate(simulate(bigger, 6, 128, seed=5)):
        write_image(real / f"r{i}.png", image)  # images only: the run never sees labels
    config = replace(_config(real), simulate=replace(_config(real).simulate,
                                                     fit_from="real.unlabeled"))
    out = tmp_path / "run"
    said: list[str] = []
    run(config, out, progress=False, log=said.append)
    assert said[0].startswith("[fit]") and said[1].startswith("[fit] done in ")
    assert said[2].startswith("[simulate]")
    fitted = stages._sim_config(config, out)
    assert fitted.pixel_size_um == base.pixel_size_um  # the working resolution stays
    assert median_diameter_um(fitted) > 1.2 * median_diameter_um(base)
    # spread "floor" (the default): the training set keeps at least the preset's variety
    assert fitted.staining.cell_variation >= base.staining.cell_variation
    assert fitted.optics.shot_noise >= base.optics.shot_noise
    assert (out / "fit" / "fitted-preview.png").is_file()
    # the report shows what was fitted: the preview and the numbers beside the base's
    fitted_section = (out / "report.html").read_text().split(
        "Simulator fitted to the real images</h2>")[1].split("<h2>")[0]
    assert fitted_section.count("<img") == 1
    diameter = next(line for line in (out / "fit" / "fit.txt").read_text().splitlines()
                    if line.startswith("median cell diameter (um)"))
    assert float(diameter.split()[-1]) == pytest.approx(median_diameter_um(fitted), rel=5e-3)
    assert diameter in fitted_section
    said.clear()
    run(config, out, progress=False, log=said.append)
    assert all("skipped" in line for line in said), said
    # other real images redo the fit and what follows (contents are fingerprinted as tested
    # above for the refiner)
    plan = {stage.name: stage for stage in stages.plan(config)}
    assert plan["fit"].reads == ("unlabeled",) and plan["simulate"].inputs == ("fit",)
    # the spread is part of what the fit depends on: changing it redoes the fit
    measured = replace(config, simulate=replace(config.simulate, fit_spread="fitted"))
    other = {stage.name: stage for stage in stages.plan(measured)}
    assert other["fit"].config(measured) != plan["fit"].config(config)
    with pytest.raises(ValueError, match="^fit_spread must be one of floor, fitted"):
        SimulateOptions(fit_spread="wide")
    # read from a config file, said once as simulate: ... (it was "simulate: simulate: ...")
    from cellsynth.errors import ConfigError
    from cellsynth.pipeline.config import load_pipeline_config

    path = tmp_path / "bad.yaml"
    path.write_text(f"name: x\nsimulate: {{preset: fluo, workers: 0}}\nreal: {{unlabeled: "
                    f"{config.real.unlabeled}}}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: simulate: n >= 1, size >= 16, workers"):
        load_pipeline_config(path)


def test_fit_from_must_name_real_images_that_are_set(tmp_path):
    with pytest.raises(ValueError, match="test images are never fitted to"):
        SimulateOptions(fit_from="real.test")
    config = replace(_config(_real(tmp_path / "real")),
                     simulate=SimulateOptions(preset="fluo", fit_from="train"))
    from cellsynth.pipeline.config import check_inputs

    with pytest.raises(ConfigError, match="real.train is not set"):
        check_inputs(config)


def test_two_processes_sharing_a_run_folder_keep_each_others_entries(tmp_path):
    # An experiment's --settings evaluation runs while the rest trains: each process holds
    # its own RunState, read when it started.
    from cellsynth.pipeline.run import RunState

    trainer, evaluator = RunState(tmp_path), RunState(tmp_path)
    evaluator.mark("evaluations/a", "f1", done=True, summary={"units": [1]})
    trainer.mark("detectors/b", "f2", done=False)
    on_disk = RunState(tmp_path)
    assert on_disk.status("evaluations/a", "f1") == "done"
    assert on_disk.status("detectors/b", "f2") == "interrupted"
    assert on_disk.data["evaluations/a"]["summary"] == {"units": [1]}


def test_a_second_run_in_a_busy_folder_is_refused_in_one_line(tmp_path, monkeypatch):
    # two `cellsynth run` in one folder would train the same stage into the same files
    import threading

    from cellsynth.errors import FolderBusyError
    from cellsynth.pipeline.run import claim

    config = _config(_real(tmp_path / "real"))
    out = tmp_path / "run"
    out.mkdir()
    monkeypatch.setattr(stages, "plan", lambda cfg: [])  # nothing to do once allowed in
    raised: list[BaseException] = []

    def second() -> None:
        try:
            run(config, out, progress=False, log=lambda _: None)
        except BaseException as e:  # noqa: BLE001  (its type is asserted below)
            raised.append(e)

    with claim(out, "run"):  # what the other process holds while it works
        t = threading.Thread(target=second, daemon=True)
        t.start()
        t.join(timeout=30)
        assert not t.is_alive(), "the second run waited instead of refusing"
        assert len(raised) == 1 and isinstance(raised[0], FolderBusyError), raised
        message = str(raised[0])
        assert "another cellsynth run is working" in message and str(out) in message
        assert "\n" not in message
        assert not (out / "state.json").exists()  # refused before writing anything
    assert run(config, out, progress=False, log=lambda _: None) == {}  # free again


def test_select_trains_and_validates_on_the_chosen_annotated_images_only(tmp_path):
    from cellsynth.errors import ConfigError
    from cellsynth.pipeline.config import check_inputs
    from tests.conftest import make_dataset

    train = make_dataset(tmp_path / "train", n=3, size=64, seed=1)
    finetune = TrainConfig(steps=2, crop=64, batch=1, samples=32, order=4,
                           refinement_iterations=1, checkpoint_every=1, val_every=2)
    config = replace(_config(train), finetune=finetune, real=RealData(
        unlabeled=str(train), train=str(train), val=str(train),
        select={"train": ["img1"], "val": ["img1", "img2"]}))
    out = tmp_path / "run"
    said: list[str] = []
    run(config, out, progress=False, log=said.append)
    started = [line.split("]")[0][1:] for line in said if " done in " not in line]
    assert started[:2] == ["simulate", "real"]
    for role, ids in (("train", ["img1"]), ("val", ["img1", "img2"])):
        for kind in ("images", "labels"):
            assert sorted(p.stem for p in (out / "real" / role / kind).iterdir()) == ids
    assert not (out / "real" / "unlabeled").exists()  # the refiner reads every image
    info = json.loads((out / "finetune" / "run.json").read_text())
    assert info["data"] == [str(out / "real" / "train")]
    assert info["val"] == str(out / "real" / "val") and info["n_val_images"] == 2
    # another choice of images redoes the copy and what trained on it
    other = replace(config, real=replace(config.real, select={"train": ["img0"]}))
    said.clear()
    run(other, out, progress=False, log=said.append)
    redone = [line.split("]")[0][1:] for line in said
             if "skipped" not in line and " done in " not in line]
    assert "real" in redone and "finetune" in redone and "refiner" not in redone
    assert [p.stem for p in (out / "real" / "train" / "images").iterdir()] == ["img0"]

    for select, message in (({"train": ["img9"]}, "has no image img9"),
                            ({"test": ["img0"]}, "only train and val"),
                            ({"train": "img0"}, "a list of image ids")):
        with pytest.raises(ConfigError, match=message):
            check_inputs(replace(config, real=replace(config.real, select=select)))


def test_a_test_split_copied_from_the_annotated_images_is_refused_before_any_work(tmp_path):
    """A test/ that is train/ (or val/, unlabeled/), or holds byte-identical copies of its
    images, was predicted and scored as held out (only `experiment` refused it; audit)."""
    import shutil

    from cellsynth.errors import ConfigError
    from cellsynth.pipeline.config import check_inputs
    from tests.conftest import make_dataset

    train = make_dataset(tmp_path / "train", n=2, size=64, seed=1)
    copied = shutil.copytree(train, tmp_path / "test")
    other = make_dataset(tmp_path / "other", n=2, size=64, seed=2)
    config = _config(train)
    for real, message in ((RealData(unlabeled=str(train), train=str(train), test=str(copied)),
                           r"test: 2 test image\(s\) also in .*train"),
                          (RealData(unlabeled=str(train), val=str(copied), test=str(copied)),
                           "test: is the val: folder"),
                          (RealData(unlabeled=str(copied), train=str(other), test=str(copied)),
                           "test: is the unlabeled: folder")):
        with pytest.raises(ConfigError, match=message):
            check_inputs(replace(config, real=real))
    check_inputs(replace(config, real=RealData(unlabeled=str(train), train=str(train),
                                               test=str(other))))
    # a training image copied into the test split under another name
    renamed = make_dataset(tmp_path / "renamed", n=2, size=64, seed=2)
    shutil.copy(train / "images" / "img1.png", renamed / "images" / "img0.png")
    with pytest.raises(ConfigError, match=r"1 test image\(s\) also in .*img0.png = img1.png"):
        check_inputs(replace(config, real=RealData(unlabeled=str(train), train=str(train),
                                                   test=str(renamed))))


def _two_channel(root: Path, seed: int) -> tuple[Path, dict[str, np.ndarray]]:
    """An annotated dataset of 2-channel ImageJ TIFFs whose channel 1 holds make_dataset's
    images and channel 0 another stain; (root, {id: channel 1})."""
    import tifffile

    from tests.conftest import make_dataset

    gray = make_dataset(root.with_name(root.name + "-gray"), n=2, size=64, seed=seed)
    (root / "images").mkdir(parents=True)
    shutil.copytree(gray / "labels", root / "labels")
    wanted = {}
    for path in sorted((gray / "images").iterdir()):
        image = read_image(path)
        tifffile.imwrite(root / "images" / f"{path.stem}.tif", np.stack([255 - image, image]),
                         imagej=True, metadata={"axes": "CYX"})
        wanted[path.stem] = image
    return root, wanted


def test_real_channel_stages_that_channel_and_the_detector_records_it(tmp_path):
    """real.channel 1 with 2-channel images: every real folder is staged as channel 1
    alone (so the refiner, fine-tuning, validation and prediction read it, not channel 0),
    the detectors record it for cellsynth predict, the predictions keep the images' ids
    and size, and a channel the images lack stops the run before any work."""
    import yaml

    from cellsynth.pipeline.config import check_inputs

    train, wanted = _two_channel(tmp_path / "train", 1)
    test, wanted_test = _two_channel(tmp_path / "test", 2)
    finetune = TrainConfig(steps=2, crop=64, batch=1, samples=32, order=4,
                           refinement_iterations=1, checkpoint_every=1, val_every=2)
    config = replace(_config(train), finetune=finetune, real=RealData(
        unlabeled=str(train), train=str(train), val=str(train), test=str(test), channel=1))
    out = tmp_path / "fluo-run"
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*using channel 0")
        summaries = run(config, out, progress=False, log=lambda _: None)
    for role, want in (("unlabeled", wanted), ("train", wanted), ("val", wanted),
                       ("test", wanted_test)):
        staged = Path(stages.real_folder(config, out, role))
        for name, image in want.items():
            np.testing.assert_array_equal(read_image(staged / "images" / f"{name}.png"), image)
        meta = json.loads((staged / "meta.json").read_text())
        assert meta["channel"] == 1 and meta["source"] == str(train if role != "test"
                                                               else test)
    # one folder named as unlabeled, train and val is copied once, and read by all three
    assert sorted(p.name for p in (out / "real").iterdir()) == ["test", "unlabeled"]
    info = json.loads((out / "finetune" / "run.json").read_text())
    assert info["data"] == [str(out / "real" / "unlabeled")]
    assert info["val"] == str(out / "real" / "unlabeled")
    for stage in ("pretrain", "finetune"):
        recorded = yaml.safe_load((out / stage / "config.yaml").read_text())
        assert recorded["source_channel"] == 1 and recorded["channel"] is None
    from cellsynth.io.images import read_labels

    for name in wanted_test:
        assert read_labels(out / "predict" / "labels" / f"{name}.tif").shape == (64, 64)
    # the predictions name the user's 2-channel images and the channel read from them
    meta = json.loads((out / "predict" / "meta.json").read_text())
    assert meta["images"] == str(test.resolve()) and meta["channel"] == 1
    page = (out / "report.html").read_text()
    assert "Every stage read channel 1 of the multi-channel images (real.channel)" in page
    assert "<h1>cellsynth report: fluo-run</h1>" in page  # (no name given: the folder's)
    assert 0.0 <= summaries["evaluate"]["f1_50"] <= 1.0
    with pytest.raises(ImageReadError, match=r"img0\.tif: real\.channel 2, but the image has "
                                             r"2 channel\(s\) \(0-1\)"):
        check_inputs(replace(config, real=replace(config.real, channel=2)))


def test_real_channel_takes_gray_images_as_they_are_and_checks_every_image(tmp_path):
    """With real.channel 1, a gray image among 2-channel ones is that channel saved alone
    (staged as it is, as the detectors take it; it stopped the run at staging); an image
    lacking the channel is named before any work, wherever it is in the folder; a colour
    simulation cannot take one channel."""
    import tifffile

    from cellsynth.pipeline.config import check_inputs

    train, wanted = _two_channel(tmp_path / "train", 1)
    write_image(train / "images" / "gray.png", wanted["img0"])
    shutil.copy(train / "labels" / "img0.tif", train / "labels" / "gray.tif")
    config = replace(_config(train), real=RealData(unlabeled=str(train), train=str(train),
                                                   channel=1))
    check_inputs(config)
    out = tmp_path / "run"
    out.mkdir()
    stages._rescale_real(config, out)
    staged = Path(stages.real_folder(config, out, "train")) / "images"
    for name in ("img0", "gray"):
        np.testing.assert_array_equal(read_image(staged / f"{name}.png"), wanted["img0"])
    for name, image in wanted.items():  # 3 channels now, and a last image with 2
        tifffile.imwrite(train / "images" / f"{name}.tif", np.stack([image] * 3),
                         imagej=True, metadata={"axes": "CYX"})
    tifffile.imwrite(train / "images" / "zz.tif", np.zeros((2, 64, 64), np.uint8),
                     imagej=True, metadata={"axes": "CYX"})
    shutil.copy(train / "labels" / "img0.tif", train / "labels" / "zz.tif")
    with pytest.raises(ImageReadError, match=r"zz\.tif: real\.channel 2, but the image has 2 "
                                             r"channel\(s\) \(0-1\)"):
        check_inputs(replace(config, real=replace(config.real, channel=2)))
    nissl = replace(config, simulate=SimulateOptions(preset="nissl", n=4, size=64, workers=1))
    with pytest.raises(ConfigError, match="real.channel 1 takes one channel of your images, "
                                          "but the simulation draws 3"):
        check_inputs(nissl)


def test_a_z_stack_among_the_real_images_stops_the_run_before_any_work(tmp_path):
    """A z-stack in real.unlabeled was refused only when the run reached it (after the
    simulation); its header is read with the folders, before any stage."""
    import tifffile

    real = _real(tmp_path / "real")
    tifffile.imwrite(real / "z.tif", np.zeros((3, 64, 64), np.uint8), imagej=True,
                     metadata={"axes": "ZYX"})
    said: list[str] = []
    with pytest.raises(ImageReadError, match=r"z\.tif: 3 z-planes"):
        run(_config(real), tmp_path / "run", progress=False, log=said.append)
    assert said == [] and not (tmp_path / "run" / "simulate").exists()


def test_select_with_rescaling_copies_only_the_chosen_images_rescaled(tmp_path):
    from cellsynth.io.images import read_image
    from tests.conftest import make_dataset

    train = make_dataset(tmp_path / "train", n=3, size=48, seed=1)
    config = replace(_config(train), real=RealData(
        unlabeled=str(train), train=str(train), pixel_size_um=1.0, select={"train": ["img2"]}),
        simulate=SimulateOptions(preset="fluo", n=4, size=64, workers=1, pixel_size_um=0.5))
    out = tmp_path / "run"
    out.mkdir()
    stages._rescale_real(config, out)
    assert [p.stem for p in (out / "real" / "train" / "images").iterdir()] == ["img2"]
    assert len(list((out / "real" / "unlabeled" / "images").iterdir())) == 3
    assert read_image(out / "real" / "train" / "images" / "img2.png").shape[:2] == (96, 96)
    assert stages.real_folder(config, out, "train") == str(out / "real" / "train")


def test_rescaled_staging_keeps_the_regions_cells_were_outlined_in(tmp_path):
    """Cells outlined in QuPath inside a region of a larger image: staged at another pixel
    size, the region's box becomes the staged image (the rasterised labels had lost where
    the cells were outlined, and the whole image trained, its other cells as background)."""
    from cellsynth.io.export import _geojson
    from cellsynth.io.images import read_image, read_labels, write_image

    labels = np.zeros((40, 60), np.uint16)
    for i, (y, x) in enumerate([(10, 8), (28, 18), (12, 45)], start=1):
        labels[y - 3:y + 3, x - 3:x + 3] = i  # the third lies outside the region
    data = tmp_path / "qupath"
    (data / "images").mkdir(parents=True)
    (data / "labels").mkdir()
    write_image(data / "images" / "a.png", np.where(labels > 0, 200, 30).astype(np.uint8))
    cells = _geojson(np.where(labels <= 2, labels, 0), "a")["features"]
    region = {"type": "Feature", "properties": {"objectType": "annotation"}, "geometry": {
        "type": "Polygon", "coordinates": [[[0, 0], [30, 0], [30, 40], [0, 40], [0, 0]]]}}
    (data / "labels" / "a.geojson").write_text(json.dumps(
        {"type": "FeatureCollection", "features": [region, *cells]}))
    config = replace(_config(data), real=RealData(unlabeled=str(data), train=str(data),
                                                  pixel_size_um=1.0),
                     simulate=SimulateOptions(preset="fluo", n=4, size=64, workers=1,
                                              pixel_size_um=0.5))
    out = tmp_path / "run"
    out.mkdir()
    stages._rescale_real(config, out)
    staged = Path(stages.real_folder(config, out, "train"))  # (unlabeled's copy: one folder)
    assert sorted(p.name for p in (staged / "images").iterdir()) == ["a@0.png"]
    assert read_image(staged / "images" / "a@0.png").shape[:2] == (80, 60)  # 40 x 30, x2
    assert len(np.unique(read_labels(staged / "labels" / "a@0.tif"))) == 3  # 2 cells + 0


def test_selected_images_at_the_working_size_state_the_configs_pixel_size(tmp_path):
    """real.select without rescaling copies the chosen files; their meta.json states the
    pixel size the config gives (the refiner and the prediction take that one), so the
    detector's training neither warns that they state none nor follows a file stating
    another."""
    import tifffile

    from cellsynth.segment.data import load_labeled
    from tests.conftest import make_dataset

    train = make_dataset(tmp_path / "train", n=2, size=48, seed=1)
    image = train / "images" / "img0.png"
    tifffile.imwrite(train / "images" / "img0.tif", read_image(image),
                     resolution=(1 / 0.9, 1 / 0.9), resolutionunit="MICROMETER")  # a wrong 0.9
    image.unlink()
    config = replace(_config(train), real=RealData(
        unlabeled=str(train), train=str(train), pixel_size_um=0.5,
        select={"train": ["img0", "img1"]}),
        simulate=SimulateOptions(preset="fluo", n=4, size=64, workers=1, pixel_size_um=0.5))
    out = tmp_path / "run"
    out.mkdir()
    stages._rescale_real(config, out)
    staged = out / "real" / "train"
    assert json.loads((staged / "meta.json").read_text())["pixel_size_um"] == 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        items = load_labeled([staged], pixel_size_um=0.5)
    assert [item.image.shape[:2] for item in items] == [(48, 48), (48, 48)]  # not rescaled


def test_a_run_into_its_data_folder_or_on_a_missing_gpu_stops_before_any_work(tmp_path):
    """--out that holds a real folder (its stages write real/, predict/, ... and replace
    them) and a config naming a GPU this machine lacks: one error each, nothing written."""
    import torch

    from cellsynth.errors import OutputExistsError

    data = tmp_path / "data"
    real = _real(data / "unlabeled")
    before = sorted(p.name for p in data.iterdir())
    with pytest.raises(OutputExistsError, match=r"data: is \(or holds\) the input .*unlabeled"):
        run(_config(real), data, progress=False, log=lambda line: None)
    assert sorted(p.name for p in data.iterdir()) == before
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="device 'cuda' requested but CUDA is not "
                                              "available"):
            run(replace(_config(real), device="cuda"), tmp_path / "gpu", progress=False,
                log=lambda line: None)
        assert not (tmp_path / "gpu").exists()


def test_real_images_read_as_they_are_take_the_configs_pixel_size_over_their_files(tmp_path):
    """real.pixel_size_um at the working pixel size: the real folders are read in place, and
    the detectors take them at the config's size: neither "state no pixel size" warnings
    (4 per stage) nor a file's own, different, size (which rescaled them)."""
    import tifffile

    from cellsynth.segment.data import load_labeled
    from tests.conftest import make_dataset

    train = make_dataset(tmp_path / "train", n=2, size=48, seed=1)
    image = train / "images" / "img0.png"
    tifffile.imwrite(train / "images" / "img0.tif", read_image(image),
                     resolution=(1 / 0.9, 1 / 0.9), resolutionunit="MICROMETER")  # a wrong 0.9
    image.unlink()
    config = replace(_config(train), real=RealData(unlabeled=str(train), train=str(train),
                                                   pixel_size_um=0.5),
                     simulate=SimulateOptions(preset="fluo", n=4, size=64, workers=1,
                                              pixel_size_um=0.5))
    assert stages.real_folder(config, tmp_path / "run", "train") == str(train)  # in place
    trained = stages.detector_config(config, tmp_path / "run", TrainConfig())
    assert trained.pixel_size_um == trained.data_pixel_size_um == 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        items = load_labeled([train], pixel_size_um=trained.pixel_size_um,
                             source_pixel_size_um=trained.data_pixel_size_um)
    assert [item.image.shape[:2] for item in items] == [(48, 48), (48, 48)]


def test_the_report_names_the_soups_seeds_as_numbers(tmp_path):
    """The report's soup line gives the fine-tunings' seeds (the run's seed + 1000 r), not
    the words "seeds seed, seed + 1000"."""
    from cellsynth.pipeline import layout
    from cellsynth.pipeline.report import _soup

    (tmp_path / layout.SOUP).mkdir()
    (tmp_path / layout.CONFIG).write_text("seed: 3\n")
    (tmp_path / layout.SOUP / layout.RUN_INFO).write_text(json.dumps(
        {"runs": ["finetune", "finetune_runs/r1", "finetune_runs/r2"], "score_thresh": 0.95}))
    assert "3 fine-tunings (seeds 3, 1003, 2003; <code>soup</code>)" in _soup(tmp_path)


def test_synthetic_validation_only_without_annotated_val(tmp_path):
    real = _real(tmp_path / "real")
    config = _config(real)
    names = [st.name for st in stages.plan(config)]
    assert names[:2] == ["simulate", "simulate_val"]
    assert names.index("refined_val") < names.index("pretrain")
    assert "refined_val" in next(st for st in stages.plan(config) if st.name == "pretrain").inputs
    # without a refiner the plain simulated validation images validate
    plain = replace(config, real=RealData())
    pretrain = next(st for st in stages.plan(plain) if st.name == "pretrain")
    assert pretrain.inputs == ("simulate", "simulate_val")
    # n_val 0 turns it off; so does an annotated real.val
    off = replace(config, simulate=replace(config.simulate, n_val=0))
    assert not {"simulate_val", "refined_val"} & {st.name for st in stages.plan(off)}
    annotated = replace(config, real=replace(config.real, val=str(real), train=str(real)))
    assert not {"simulate_val", "refined_val"} & {st.name for st in stages.plan(annotated)}
    # the number of validation images does not touch the training simulation's fingerprint
    more = replace(config, simulate=replace(config.simulate, n_val=8))
    key = {st.name: st.config for st in stages.plan(config)}
    assert key["simulate"](config) == key["simulate"](more)
    assert key["simulate_val"](config) != key["simulate_val"](more)
    with pytest.raises(ValueError, match="n_val"):
        SimulateOptions(n_val=-1)


def test_count_threshold_stage_sets_the_threshold_predict_uses(tmp_path, monkeypatch):
    real = _real(tmp_path / "real")
    config = _config(real)
    plain = [st.name for st in stages.plan(config)]
    assert "count_threshold" not in plain  # off by default
    counted = replace(config, predict=replace(config.predict, count_threshold=True))
    names = [st.name for st in stages.plan(counted)]
    assert names.index("pretrain") < names.index("count_threshold") < names.index("predict")
    predict = next(st for st in stages.plan(counted) if st.name == "predict")
    assert "count_threshold" in predict.inputs
    with pytest.raises(ConfigError, match="count_threshold needs real.unlabeled"):
        from cellsynth.pipeline.config import check_inputs
        check_inputs(replace(counted, real=RealData(test=None)))
    # the threshold the stage writes is the one predict applies
    import cellsynth.segment.calibrate as calibrate
    import cellsynth.segment.folders as folders

    monkeypatch.setattr(calibrate, "count_threshold",
                        lambda *a, **k: {"score_thresh": 0.777, "estimated_count": 5})
    used = []
    real_predict = folders.predict_folder

    def spy(*args, **kwargs):
        used.append(kwargs.get("score_thresh"))
        return real_predict(*args, **kwargs)
    monkeypatch.setattr(folders, "predict_folder", spy)
    out = tmp_path / "run"
    run(counted, out, progress=False, log=lambda _: None)
    assert json.loads((out / "count_threshold" / "threshold.json").read_text()) == {
        "score_thresh": 0.777, "estimated_count": 5}
    assert used == [0.777]


def _section(path: Path, size: int = 640) -> np.ndarray:
    """A small pyramidal OME-TIFF (read lazily, as a whole slide is): tissue texture in the
    top-left quarter, glass elsewhere."""
    import tifffile

    rng = np.random.default_rng(3)
    slide = np.full((size, size, 3), 240, np.uint8)
    half = size // 2
    slide[:half, :half] = rng.integers(40, 200, (half, half, 3), dtype=np.uint8)
    with tifffile.TiffWriter(path) as tif:
        tif.write(slide, subifds=1, tile=(128, 128), compression="zlib", photometric="rgb")
        tif.write(slide[::2, ::2], subfiletype=1, tile=(128, 128), compression="zlib",
                  photometric="rgb")
    return slide


def test_unlabeled_sections_at_another_pixel_size_become_rescaled_windows(tmp_path,
                                                                           monkeypatch):
    from cellsynth.io.images import read_image
    from cellsynth.io.sections import reads_lazily
    from cellsynth.pipeline.config import check_inputs

    (tmp_path / "sections").mkdir()
    slide = _section(tmp_path / "sections" / "s1.ome.tif")
    assert reads_lazily(tmp_path / "sections" / "s1.ome.tif")
    config = replace(_config(tmp_path / "sections"),
                     real=RealData(unlabeled=str(tmp_path / "sections"), pixel_size_um=0.25),
                     simulate=SimulateOptions(preset="fluo", n=4, size=64, workers=1,
                                              pixel_size_um=0.5))
    check_inputs(config)  # accepted: an unlabeled section is not decoded whole
    # (patched where _rescale_real looks them up: staging.py, not their re-export in stages)
    monkeypatch.setattr(staging, "SECTION_WINDOW", 64)  # 128 px of the section, halved
    monkeypatch.setattr(staging, "SECTION_WINDOWS", 4)
    out = tmp_path / "run"
    out.mkdir()
    staging._rescale_real(config, out)
    windows = sorted((out / "real" / "unlabeled" / "images").iterdir())
    assert 1 <= len(windows) <= 4
    for path in windows:
        y, x = (int(part[1:]) for part in path.stem.split("_")[1:])
        assert path.stem.startswith("s1_y") and y < 320 and x < 320  # on tissue, not glass
        pixels = read_image(path)
        assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
        # the section's own pixels, halved: the mean of each 2 x 2 block, near enough
        blocks = slide[y:y + 128, x:x + 128].astype(float).reshape(64, 2, 64, 2, 3)
        assert np.abs(pixels.astype(float) - blocks.mean(axis=(1, 3))).mean() < 25
    meta = json.loads((out / "real" / "unlabeled" / "meta.json").read_text())
    assert meta["pixel_size_um"] == 0.5 and meta["windows_of"] == [
        str(tmp_path / "sections" / "s1.ome.tif")]
    assert stages.real_folder(config, out, "unlabeled") == str(out / "real" / "unlabeled")


def test_annotated_sections_at_another_pixel_size_are_refused_in_one_line(tmp_path):
    from cellsynth.io.images import write_labels
    from cellsynth.pipeline.config import check_inputs

    (tmp_path / "test" / "images").mkdir(parents=True)
    (tmp_path / "test" / "labels").mkdir()
    _section(tmp_path / "test" / "images" / "s1.ome.tif")
    write_labels(tmp_path / "test" / "labels" / "s1.ome.tif", np.zeros((640, 640), np.uint16))
    config = replace(_config(_real(tmp_path / "u")),
                     real=RealData(unlabeled=str(tmp_path / "u"), test=str(tmp_path / "test"),
                                   pixel_size_um=0.25),
                     simulate=SimulateOptions(preset="fluo", n=4, size=64, workers=1,
                                              pixel_size_um=0.5))
    with pytest.raises(ConfigError, match=r"s1.ome.tif: an annotated whole section "
                                          r"\(real.test\) cannot be rescaled"):
        check_inputs(config)


def test_float_images_are_rescaled_as_floats_not_rounded(tmp_path):
    from cellsynth.io.images import read_image

    folder = tmp_path / "floats"
    folder.mkdir()
    ramp = np.tile(np.linspace(0.2, 0.8, 48, dtype=np.float32), (48, 1))
    write_image(folder / "f0.tif", ramp)
    config = replace(_config(folder), real=RealData(unlabeled=str(folder), pixel_size_um=1.0),
                     simulate=SimulateOptions(preset="fluo", n=4, size=64, workers=1,
                                              pixel_size_um=0.5))
    out = tmp_path / "run"
    out.mkdir()
    stages._rescale_real(config, out)
    [path] = (out / "real" / "unlabeled" / "images").iterdir()
    staged = read_image(path)
    assert staged.dtype == np.float32 and staged.shape == (96, 96)
    # the ramp survives (rounding would have made it 0s and 1s)
    assert 0.15 < staged.min() < 0.25 and 0.75 < staged.max() < 0.85
    assert len(np.unique(staged)) > 40


def test_self_training_labels_the_unannotated_images_and_predicts_with_the_student(tmp_path):
    """selftrain.pseudo: the fine-tuned detector labels the unlabeled images that are not
    annotated (at the working pixel size), a second fine-tuning starts from it, and that one
    predicts the test images."""
    from cellsynth.io.images import read_image, read_labels
    from cellsynth.pipeline.config import SelfTrainOptions
    from tests.conftest import make_dataset

    train = make_dataset(tmp_path / "train", n=3, size=48, seed=1)
    test = make_dataset(tmp_path / "test", n=1, size=48, seed=2)
    tiny = TrainConfig(steps=2, crop=64, batch=1, samples=32, order=4,
                       refinement_iterations=1, checkpoint_every=1, val_every=2)
    config = replace(
        _config(train),
        real=RealData(unlabeled=str(train), train=str(train), val=str(train), test=str(test),
                      pixel_size_um=1.0, select={"train": ["img1"], "val": ["img1"]}),
        simulate=SimulateOptions(preset="fluo", n=4, size=64, workers=1, pixel_size_um=0.5),
        finetune=tiny, selftrain=SelfTrainOptions(pseudo=0.5))
    out = tmp_path / "run"
    said: list[str] = []
    run(config, out, progress=False, log=said.append)
    ran = [line.split("]")[0][1:] for line in said if " done in " not in line]
    assert ran[ran.index("finetune"):] == ["finetune", "pseudo", "selftrain", "predict",
                                           "evaluate", "report"]
    pseudo = out / "pseudo"
    assert sorted(p.stem for p in (pseudo / "images").iterdir()) == ["img0", "img2"]
    for i in (0, 2):  # labels at the working pixel size (2x the images'), beside their images
        image = read_image(pseudo / "images" / f"img{i}.png")
        assert image.shape[:2] == (96, 96)
        assert read_labels(pseudo / "labels" / f"img{i}.tif").shape == (96, 96)
    assert json.loads((pseudo / "meta.json").read_text())["pixel_size_um"] == 0.5
    student = json.loads((out / "selftrain" / "run.json").read_text())
    assert Path(student["init"]).resolve().parent == (out / "finetune").resolve()
    predicted_by = json.loads((out / "predict" / "meta.json").read_text())["model"]
    assert Path(predicted_by).resolve().parent == (out / "selftrain").resolve()
    # the report shows the pseudo labels with their count, and the student's training
    page = (out / "report.html").read_text()
    cells = sum(len(np.unique(read_labels(f))) - 1 for f in (pseudo / "labels").iterdir())
    assert f"labelled 2 unannotated images ({cells} cells)" in page
    assert page.split("Detector training</h2>")[1].split("<h2>")[0].count("<img") == 6
    # it is keyed like every stage: changing the fraction redoes it and what follows
    said.clear()
    run(replace(config, selftrain=SelfTrainOptions(pseudo=0.25)), out, progress=False,
        log=said.append)
    redone = [line.split("]")[0][1:] for line in said if "running" in line]
    assert redone == ["pseudo", "selftrain", "predict", "evaluate", "report"]
    # (and says why: the setting where it changed, then what each reads that changed)
    assert [line for line in said if "running" in line] == [
        "[pseudo] running again: selftrain.pseudo 0.5 -> 0.25 changed",
        "[selftrain] running again: selftrain.pseudo 0.5 -> 0.25; what it reads (pseudo) "
        "changed",
        "[predict] running again: what it reads (selftrain) changed",
        "[evaluate] running again: what it reads (predict) changed",
        "[report] running again: what it reads (pseudo, selftrain, predict, evaluate) "
        "changed"]
    from cellsynth.pipeline.config import check_inputs

    with pytest.raises(ConfigError, match="selftrain.pseudo needs real.train"):
        check_inputs(replace(config, real=RealData(unlabeled=str(train))))


def test_soup_fine_tunes_several_times_and_predicts_with_their_average(tmp_path):
    """soup: N fine-tunings (the finetune stage's and N - 1 more with other seeds), their
    weights averaged into the detector that predicts; more runs later train only those."""
    import torch
    import yaml

    from tests.conftest import make_dataset

    train = make_dataset(tmp_path / "train", n=2, size=48, seed=1)
    test = make_dataset(tmp_path / "test", n=1, size=48, seed=2)
    tiny = TrainConfig(steps=2, crop=64, batch=1, samples=32, order=4,
                       refinement_iterations=1, checkpoint_every=1, val_every=2)
    config = replace(_config(train), real=RealData(unlabeled=str(train), train=str(train),
                                                   val=str(train), test=str(test)),
                     finetune=tiny, soup=2)
    out = tmp_path / "run"
    said: list[str] = []
    summaries = run(config, out, progress=False, log=said.append)
    ran = [line.split("]")[0][1:] for line in said if " done in " not in line]
    assert ran[ran.index("finetune"):] == ["finetune", "finetune_runs", "soup", "predict",
                                           "evaluate", "report"]
    assert yaml.safe_load((out / "finetune_runs" / "r1" / "config.yaml").read_text())[
        "seed"] == 1000  # the other crops and augmentations of run 1
    weights = [torch.load(out / f / "best.pt", weights_only=True)["model"]
               for f in ("finetune", "finetune_runs/r1", "soup")]
    floats = [k for k in weights[0] if weights[0][k].is_floating_point()]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in floats)
    assert all(torch.allclose(weights[2][k], (weights[0][k] + weights[1][k]) / 2, atol=1e-6)
               for k in floats)
    assert summaries["soup"]["n_val_images"] == 2  # its threshold from real.val
    predicted_by = json.loads((out / "predict" / "meta.json").read_text())["model"]
    assert Path(predicted_by).resolve().parent == (out / "soup").resolve()
    assert torch.load(out / "soup" / "best.pt", weights_only=False)["config"][
        "pixel_size_um"] == 0.5  # the fluo preset's, which the run works at
    page = (out / "report.html").read_text()
    assert "the average of the weights of 2 fine-tunings" in page
    # a third run later: the first two fine-tunings are kept, one more trains, the soup is
    # redone
    said.clear()
    r1 = (out / "finetune_runs" / "r1" / "best.pt").read_bytes()
    r1_log = (out / "finetune_runs" / "r1" / "log.jsonl").read_text()
    run(replace(config, soup=3), out, progress=False, log=said.append)
    redone = [line.split("]")[0][1:] for line in said if "running" in line]
    assert redone == ["finetune_runs", "soup", "predict", "evaluate", "report"]
    assert len(json.loads((out / "soup" / "run.json").read_text())["runs"]) == 3
    assert (out / "finetune_runs" / "r1" / "best.pt").read_bytes() == r1  # not retrained
    assert (out / "finetune_runs" / "r1" / "log.jsonl").read_text() == r1_log
    assert (out / "finetune_runs" / "r2" / "best.pt").is_file()
    # a kept run needs its options, its starting checkpoint's bytes and data older than it
    import os

    from cellsynth.pipeline.stages import _same_fine_tuning
    member = replace(tiny, seed=1000, pixel_size_um=0.5)  # (at the run's pixel size)
    r1 = out / "finetune_runs" / "r1"
    assert _same_fine_tuning(r1, member, out / "pretrain", [str(train)])
    assert not _same_fine_tuning(r1, replace(member, lr=2e-3), out / "pretrain", [str(train)])
    assert not _same_fine_tuning(r1, member, out / "finetune", [str(train)])  # other start
    edited = sorted((train / "labels").iterdir())[0]
    later = (r1 / "last.pt").stat().st_mtime + 10
    os.utime(edited, (later, later))  # an annotation edited after the run trained
    assert not _same_fine_tuning(r1, member, out / "pretrain", [str(train)])
    # other fine-tuning options: every run trains anew
    said.clear()
    run(replace(config, soup=3, finetune=replace(tiny, lr=2e-3)), out, progress=False,
        log=said.append)
    assert json.loads((out / "finetune_runs" / "r1" / "run.json").read_text())[
        "resumed_at_steps"] == []
    assert yaml.safe_load((out / "finetune_runs" / "r1" / "config.yaml").read_text())[
        "lr"] == 2e-3
    with pytest.raises(ValueError, match="soup must be >= 1"):
        replace(config, soup=0)
    with pytest.raises(ValueError, match="needs annotated real.train"):
        replace(config, real=RealData(unlabeled=str(train)))
    bad = tmp_path / "bad.yaml"  # from a YAML: one ConfigError
    bad.write_text("simulate: {preset: fluo}\nsoup: 0\n")
    with pytest.raises(ConfigError, match="soup must be >= 1"):
        load_pipeline_config(bad)


def test_a_soups_runs_train_side_by_side_on_their_share_of_the_threads(tmp_path, monkeypatch):
    """soup 3 on 2 threads: the finetune_runs stage trains r1 and r2 at once, 1 thread each
    (their run.json says so), and the soup averages all three."""
    import torch

    from tests.conftest import make_dataset

    train = make_dataset(tmp_path / "train", n=2, size=48, seed=1)
    tiny = TrainConfig(steps=2, crop=64, batch=1, samples=32, order=4,
                       refinement_iterations=1, checkpoint_every=1, val_every=2)
    config = replace(_config(train), real=RealData(unlabeled=str(train), train=str(train),
                                                   val=str(train)),
                     finetune=tiny, soup=3)
    monkeypatch.setenv("CELLSYNTH_THREADS", "2")
    before = torch.get_num_threads()
    try:
        summaries = run(config, tmp_path / "run", progress=False)
    finally:
        torch.set_num_threads(before)
    assert sorted(summaries["finetune_runs"]) == ["r1", "r2"]
    assert all(summaries["finetune_runs"][r]["steps"] == 2 for r in ("r1", "r2"))
    threads = {f: json.loads((tmp_path / "run" / f / "run.json").read_text())["torch_threads"]
               for f in ("finetune", "finetune_runs/r1", "finetune_runs/r2")}
    assert threads == {"finetune": [[0, 2]], "finetune_runs/r1": [[0, 1]],
                       "finetune_runs/r2": [[0, 1]]}
    assert len(json.loads((tmp_path / "run" / "soup" / "run.json").read_text())["runs"]) == 3


def test_fine_tuning_without_a_refiner_and_pretraining_validated_on_the_simulation(tmp_path):
    """real.train without real.unlabeled pretrains on the plain simulation (no refiner);
    pretrain_val: synthetic validates pretraining on held-out simulated images even where
    annotated real.val images exist (they still validate the fine-tuning)."""
    from cellsynth.config import to_dict
    from tests.conftest import make_dataset

    train = make_dataset(tmp_path / "train", n=2, size=48, seed=1)
    test = make_dataset(tmp_path / "test", n=1, size=48, seed=2)
    tiny = TrainConfig(steps=2, crop=64, batch=1, samples=32, order=4,
                       refinement_iterations=1, checkpoint_every=1, val_every=2)
    config = replace(_config(train), real=RealData(train=str(train), val=str(train),
                                                   test=str(test)),
                     simulate=replace(_config(train).simulate, n_val=2),
                     finetune=tiny, pretrain_val="synthetic")
    out = tmp_path / "run"
    said: list[str] = []
    run(config, out, progress=False, log=said.append)
    ran = [line.split("]")[0][1:] for line in said if " done in " not in line]
    assert ran[:5] == ["simulate", "simulate_val", "pretrain", "finetune", "predict"]
    info = {name: json.loads((out / name / "run.json").read_text())
            for name in ("pretrain", "finetune")}
    assert Path(info["pretrain"]["val"]) == (out / "simulate_val").resolve()
    assert info["pretrain"]["data"] == [str((out / "simulate").resolve())]
    assert Path(info["finetune"]["val"]) == train.resolve()
    assert info["finetune"]["n_val_images"] == 2
    # the default keeps validating pretraining on real.val, with the key old runs have
    default = replace(config, pretrain_val="real")
    names = [st.name for st in stages.plan(default)]
    assert "simulate_val" not in names
    key = {st.name: st.config for st in stages.plan(default)}["pretrain"]
    assert list(key(default).values()) == [to_dict(default.pretrain), default.seed]
    assert key(config) != key(default)
    with pytest.raises(ValueError, match="pretrain_val: synthetic needs"):
        replace(config, simulate=replace(config.simulate, n_val=0))
    bad = tmp_path / "bad.yaml"
    bad.write_text("simulate: {preset: fluo}\npretrain_val: test\n")
    with pytest.raises(ConfigError, match="pretrain_val"):
        load_pipeline_config(bad)


def test_predict_precision_reaches_the_prediction_and_is_checked(tmp_path, monkeypatch):
    """predict: {precision: int8} in a run config is what the predict stage asks for; a
    precision that does not exist is one line naming the option."""
    import cellsynth.segment.folders as folders
    from cellsynth.config import from_dict

    real = _real(tmp_path / "real")
    config = _config(real)
    assert config.predict.precision == "auto"
    asked = []
    monkeypatch.setattr(folders, "predict_folder",
                        lambda *a, **k: asked.append(k["precision"]) or {})
    int8 = replace(config, predict=replace(config.predict, precision="int8"))
    stages._predict(int8, tmp_path / "run", progress=False)
    stages._predict(config, tmp_path / "run", progress=False)
    assert asked == ["int8", "auto"]
    with pytest.raises(ConfigError, match="predict.precision must be auto, bf16, fp32 or int8, "
                                          "got 'int9'"):
        from_dict(PipelineConfig, {"predict": {"precision": "int9"}}, where="run.yaml")


def test_stage_durations_read_as_seconds_minutes_or_hours():
    from cellsynth.pipeline.run import duration

    assert [duration(t) for t in (42.4, 90, 2140.5, 3599, 3600, 3959, 7199)] == [
        "42 s", "1.5 min", "35.7 min", "1 h 00 min", "1 h 00 min", "1 h 06 min", "2 h 00 min"]
    # the report's column: a stage just begun has no time yet (it showed "0 s")
    from cellsynth.pipeline.report import _stage_time

    assert _stage_time({"done": False, "seconds": 0.0, "runs": 1}) == ""
    assert _stage_time({"done": False, "seconds": 95.0, "runs": 2}) == "1.6 min (2 runs)"
    assert _stage_time({"done": True, "seconds": 0.2}) == "0 s"


def test_the_reports_title_is_the_configs_name_beside_the_run_folders(tmp_path):
    from cellsynth.pipeline.report import write_report

    for name, title in (("cortex", "cortex (r1)"), ("run", "r1"), ("r1", "r1")):
        (tmp_path / "r1").mkdir(exist_ok=True)
        (tmp_path / "r1" / "state.json").write_text("{}")
        (tmp_path / "r1" / "config.yaml").write_text(f"name: {name}\nseed: 0\n")
        page = write_report(tmp_path / "r1").read_text()
        assert f"<h1>cellsynth report: {title}</h1>" in page, name


@pytest.mark.parametrize("role", ["train", "test"])
def test_a_label_of_another_size_stops_the_run_before_any_work(tmp_path, role):
    """A label map of another size than its image passed the run's input check (headers of
    the images only) and stopped it when fine-tuning (or scoring) reached it: after the
    whole pretraining. Its header is now compared with the image's first."""
    from cellsynth.io.images import write_labels
    from tests.conftest import make_dataset

    folders = {r: make_dataset(tmp_path / r, n=2, size=48, seed=i)
               for i, r in enumerate(("train", "test"))}
    write_labels(folders[role] / "labels" / "img1.tif", np.zeros((40, 48), np.uint16))
    config = replace(_config(folders["train"]),
                     real=RealData(unlabeled=str(folders["train"]), train=str(folders["train"]),
                                   test=str(folders["test"])))
    out = tmp_path / "run"
    with pytest.raises(ImageReadError, match=r"img1\.tif: label size 40x48 does not match "
                                             r"image img1\.png size 48x48"):
        run(config, out, progress=False, log=lambda _: None)
    assert not (out / "simulate").exists() and not (out / "state.json").exists()


def test_the_pixel_size_the_config_states_reaches_the_predictions(tmp_path):
    """real.pixel_size_um equal to the simulation's (nothing rescaled): the predict stage
    was not given it, so it warned that the test images' pixel size was unknown, wrote null
    in meta.json and "assumed" in every cell table row."""
    import csv

    from tests.conftest import make_dataset

    train = make_dataset(tmp_path / "train", n=2, size=48, seed=1)
    test = make_dataset(tmp_path / "test", n=2, size=48, seed=2)
    config = replace(_config(train), real=RealData(unlabeled=str(train), test=str(test),
                                                   pixel_size_um=0.5),
                     simulate=SimulateOptions(preset="fluo", n=4, size=64, workers=1,
                                              pixel_size_um=0.5))
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(config, out, progress=False, log=lambda _: None)
    assert not [w for w in caught if "pixel size" in str(w.message)], \
        [str(w.message) for w in caught]
    meta = json.loads((out / "predict" / "meta.json").read_text())
    assert meta["pixel_size_um"] == 0.5
    with open(out / "predict" / "detections" / "img0.csv") as f:
        rows = list(csv.DictReader(f))
    assert all(r["pixel_size"] == "stated" for r in rows)


def test_report_of_a_folder_that_is_no_run_is_one_line_and_writes_nothing(tmp_path, capsys):
    """`cellsynth report IMAGES` wrote an empty report.html into the image folder and said
    it had; a folder that does not exist got a line about report.html's folder."""
    from cellsynth.cli import main

    images = _real(tmp_path / "images")
    before = sorted(p.name for p in images.rglob("*"))
    assert main(["report", str(images)]) != 0
    err = capsys.readouterr().err
    assert f"{images}: not a `cellsynth run` folder (no state.json)" in err
    assert "Traceback" not in err and sorted(p.name for p in images.rglob("*")) == before
    assert main(["report", str(tmp_path / "nowhere")]) != 0
    assert "nowhere: not a `cellsynth run` folder (no state.json); report writes the page " \
           "of a run (no such folder)" in capsys.readouterr().err


def test_the_reports_predict_command_pastes_into_a_shell_with_spaces_in_paths(tmp_path):
    """The command the report suggests for new images named the detector and the faint
    cut's folder unquoted: a run folder like `my run (1)` made it a shell syntax error."""
    import shlex

    from cellsynth.pipeline.report import _prediction_note

    run = tmp_path / "my run (1)"
    (run / "predict").mkdir(parents=True)
    (run / "config.yaml").write_text("name: x\nseed: 0\n")
    model, faint_from = str(run / "finetune" / "best.pt"), str(tmp_path / "my slides (copy)")
    (run / "predict" / "meta.json").write_text(json.dumps({
        "model": model, "tta": True, "nms_thresh": 0.5, "faint_from": faint_from,
        "n_faint_dropped": 3, "faint": {"percentile": 5.0, "n_objects": 40, "dark": True,
                                        "cut": 0.25}}))
    note = _prediction_note(run)
    command = note.split("<code>")[1].split("</code>")[0]
    import html

    words = shlex.split(html.unescape(command))
    assert words[words.index("--detector") + 1] == model
    assert words[words.index("--faint-from") + 1] == faint_from
    assert "--score-thresh" not in words and "--tile" not in words
    # the threshold counted on the unlabeled images and the run's tiling and precision go
    # with it (the command predicted at the detector's own threshold; audit)
    (run / "config.yaml").write_text("name: x\nseed: 0\npredict: {count_threshold: true, "
                                     "tile: 512, overlap: 32, empty_contrast: 0.05, "
                                     "precision: fp32, tta: true}\n")
    meta = json.loads((run / "predict" / "meta.json").read_text())
    (run / "predict" / "meta.json").write_text(json.dumps({**meta, "score_thresh": 0.87}))
    words = shlex.split(html.unescape(_prediction_note(run).split("<code>")[1].split(
        "</code>")[0]))
    assert [words[words.index(flag) + 1] for flag in (
        "--score-thresh", "--tile", "--overlap", "--empty-contrast", "--precision")] == [
        "0.87", "512", "32", "0.05", "fp32"]
    (run / "predict" / "meta.json").write_text(json.dumps(
        {**meta, "score_thresh": 0.87, "precision": "fp32", "precision_asked": "int8"}))
    assert ("Predicted at score threshold 0.87 in fp32 (int8 was asked and fell back). "
            in _prediction_note(run))
    # with a channel the run read, both are said (the channel's sentence replaced it)
    (run / "config.yaml").write_text("name: x\nseed: 0\nreal: {channel: 1}\n")
    note = _prediction_note(run)
    assert "Predicted at score threshold 0.87" in note and "read channel 1" in note


def test_a_run_on_unlabeled_sections_at_another_pixel_size_predicts_them_whole(tmp_path,
                                                                                monkeypatch):
    """Unlabeled whole sections at another pixel size and no test split: the run trained on
    rescaled windows of them, then its predict stage looked for labels of the staged copies
    under the sections' names and failed at the very end ("labels/s1.tif: no such file").
    The prediction now reads the user's section itself, resampled by the detector window by
    window, and draws the labels at the section's own pixels."""
    from cellsynth.io.images import read_labels

    (tmp_path / "sections").mkdir()
    _section(tmp_path / "sections" / "s1.ome.tif")
    config = replace(_config(tmp_path / "sections"),
                     real=RealData(unlabeled=str(tmp_path / "sections"), pixel_size_um=0.25),
                     simulate=SimulateOptions(preset="he", n=4, size=64, workers=1,
                                              pixel_size_um=0.5))
    monkeypatch.setattr(staging, "SECTION_WINDOW", 64)
    out = tmp_path / "run"
    run(config, out, progress=False, log=lambda _: None)
    assert read_labels(out / "predict" / "labels" / "s1.tif").shape == (640, 640)
    meta = json.loads((out / "predict" / "meta.json").read_text())
    assert meta["images"] == str((tmp_path / "sections").resolve())
    entry = meta["images_pixel_size_um"]["s1"]
    assert entry["file"] == "s1.ome.tif" and entry["pixel_size_um"] == 0.25
    assert entry["resampled_by"] == 0.5
    # the tissue quarter predicted, the glass around it not: the whole section was seen
    assert entry["tiles"]["predicted"] >= 1 and entry["tiles"]["blank"] >= 3
    assert meta["pixel_size_um"] == 0.25


def test_finetune_takes_the_network_pretrain_names_and_a_clash_is_said_before_work(tmp_path):
    """A tiny_u22 named under pretrain: alone stopped a run after pretraining ("--init model
    does not match"; README audit): fine-tuning takes pretrain:'s network, as train --init
    takes its detector's, and two different ones are refused at load."""
    from tests.conftest import make_dataset

    data = make_dataset(tmp_path / "d", n=1, size=64)
    path = tmp_path / "run.yaml"

    def config(pretrain, finetune):
        path.write_text(f"simulate: {{preset: fluo}}\nreal: {{train: {data}}}\n"
                        f"pretrain: {pretrain}\nfinetune: {finetune}\n")
        return load_pipeline_config(path)

    taken = config("{model: tiny_u22, order: 6}", "{steps: 3}")
    assert (taken.finetune.model, taken.finetune.order, taken.finetune.steps) == \
        ("tiny_u22", 6, 3)
    assert taken.pretrain.model == "tiny_u22"
    with pytest.raises(ConfigError, match=r"run.yaml: finetune: starts from the pretrained "
                                          r"detector, so its network must be pretrain:'s "
                                          r"\(model tiny_u22 vs slim_u22\)"):
        config("{model: tiny_u22}", "{model: slim_u22}")
    with pytest.raises(ConfigError, match=r"\(order 8 vs 6\)"):
        config("{steps: 5}", "{order: 6}")


def test_the_reports_config_marks_each_stages_seed_as_the_runs():
    """A run at seed 1 showed its refiner and detectors at "seed: 0" (each stage takes the
    run's seed; the config's own stage seeds are never used)."""
    from cellsynth.pipeline.report import _stage_seeds_said

    text = "name: x\nseed: 7\nrefine:\n  steps: 3\n  seed: 0\npretrain:\n  seed: 0\n"
    assert _stage_seeds_said(text).splitlines() == [
        "name: x", "seed: 7", "refine:", "  steps: 3",
        "  seed: 0   # not used: every stage takes the run's seed (7)", "pretrain:",
        "  seed: 0   # not used: every stage takes the run's seed (7)"]
    assert _stage_seeds_said("refine:\n  seed: 0\n") == "refine:\n  seed: 0\n"


def test_the_reports_realism_says_which_real_images_it_compared_with(tmp_path):
    """The realism table said "vs real" under a strip of the unlabeled images while the stage
    compared with the test images (audit)."""
    from cellsynth.pipeline.report import _realism

    run = tmp_path / "run"
    (run / "realism").mkdir(parents=True)
    result = {"c2st": {"accuracy": 0.7, "sem": 0.01}, "swd": {"mean_x1e3": 3.0},
              "histogram_w1": 0.02, "spectrum_rms_log10": 0.1}
    (run / "realism" / "realism.json").write_text(json.dumps({"simulate_vs_real": result}))
    (run / "config.yaml").write_text("name: x\nreal: {unlabeled: u, test: t}\n")
    assert '"real" here is the held-out test images (real.test)' in _realism(run)
    (run / "config.yaml").write_text("name: x\nreal: {unlabeled: u}\n")
    assert '"real" here is the unlabeled images (real.unlabeled)' in _realism(run)


def test_content_fingerprint_takes_the_data_files_and_not_when_they_were_copied(
        tmp_path, monkeypatch):
    """It hashed every file, and files over 1 MiB by size and modification time: a notes.txt
    beside the images, or a plain `cp` of a folder of large TIFFs, redid every stage."""
    from cellsynth.io import files

    monkeypatch.setattr(files, "DIGEST_WHOLE_UP_TO", 1000)  # (a "large" file: > 1000 B)
    monkeypatch.setattr(files, "SAMPLE_BLOCKS", 4)
    monkeypatch.setattr(files, "SAMPLE_BYTES", 16)
    a = _real(tmp_path / "a")
    big = a / "section.tif"
    big.write_bytes(np.random.default_rng(1).integers(0, 255, 9000, np.uint8).tobytes())
    before = content_fingerprint(a)
    (a / "notes.txt").write_text("stained 2026-11-30")
    (a / "counts.csv").write_text("id,n\n")
    assert content_fingerprint(a) == before
    copy = Path(shutil.copytree(a, tmp_path / "copy", copy_function=shutil.copy))  # new mtimes
    os.utime(copy / "section.tif", ns=(1, 1))
    assert content_fingerprint(copy) == before
    data = bytearray(big.read_bytes())
    data[0] ^= 1  # a sampled block of the large file
    (copy / "section.tif").write_bytes(bytes(data))
    assert content_fingerprint(copy) != before
    (copy / "section.tif").write_bytes(bytes(data[:-1]))  # its size
    assert content_fingerprint(copy) != content_fingerprint(a)
    # what the readers take besides images: meta.json, QuPath outlines, an OME-Zarr's files
    for name, text in (("meta.json", '{"pixel_size_um": 0.5}'), ("r0.geojson", "{}")):
        (a / name).write_text(text)
        assert content_fingerprint(a) != before
        before = content_fingerprint(a)
    zarr = a / "slide.zarr"
    (zarr / "0").mkdir(parents=True)
    (zarr / ".zattrs").write_text('{"multiscales": []}')
    (zarr / "0" / "0.0").write_bytes(b"chunk")
    with_zarr = content_fingerprint(a)
    assert with_zarr != before
    (zarr / ".zattrs").write_text('{"multiscales": [{}]}')
    assert content_fingerprint(a) != with_zarr


def test_a_run_recorded_when_contents_were_hashed_the_older_way_is_kept(tmp_path,
                                                                        monkeypatch):
    """Runs recorded before the data fingerprint took only the data files are not redone
    for it: their records match the older way's fingerprint of the same data."""
    from cellsynth.pipeline import run as run_module

    _plan_of_no_work(monkeypatch)
    real = _real(tmp_path / "real")
    (real / "notes.txt").write_text("mine")
    config, out = _config(real), tmp_path / "run"
    now = run_module.content_fingerprint
    with monkeypatch.context() as older:
        older.setattr(run_module, "content_fingerprint",
                      lambda path, legacy=False: now(path, legacy=True))
        run(config, out, progress=False, log=lambda _: None)
    recorded = json.loads((out / "state.json").read_text())
    assert recorded["refiner"]["hashed"]["reads"]["unlabeled"] == now(real, legacy=True) \
        != now(real)
    said: list[str] = []
    run(config, out, progress=False, log=said.append)
    assert said and all("skipped" in line for line in said), said
    # an image edited since: the older way sees it too, and the stages that read it rerun
    write_image(real / "r0.png", np.full((64, 64), 7, np.uint8))
    said.clear()
    run(config, out, progress=False, log=said.append)
    ran = [line.split("]")[0][1:] for line in said
           if "skipped" not in line and " done in " not in line]
    assert ran == ["refiner", "refined", "refined_val", "pretrain", "predict", "report"]
    # recorded now the new way: the notes no longer count
    (real / "notes.txt").write_text("changed")
    said.clear()
    run(config, out, progress=False, log=said.append)
    assert all("skipped" in line for line in said), said


def test_a_stage_folder_of_many_entries_missing_one_runs_again(tmp_path, monkeypatch):
    """A stage folder of more than the 64 entries state.json names was not recorded at all:
    one of its files deleted by hand went unseen. Now the count of its entries is kept."""
    plan = stages.plan

    def writes(name):
        def work(config, out, **kw):
            (out / name).mkdir(exist_ok=True)
            for k in range(100):
                (out / name / f"tile{k:03d}.tif").write_text(name)
            return {}
        return work

    monkeypatch.setattr(stages, "plan", lambda cfg: [replace(s, run=writes(s.name))
                                                     for s in plan(cfg)])
    config, out = _config(_real(tmp_path / "real")), tmp_path / "run"
    run(config, out, progress=False, log=lambda _: None)
    state = json.loads((out / "state.json").read_text())
    assert len(state["predict"]["output"]) == 64 and state["predict"]["output_count"] == 100
    said: list[str] = []
    run(config, out, progress=False, log=said.append)
    assert all("skipped" in line for line in said), said
    (out / "predict" / "tile099.tif").unlink()  # not among the 64 names recorded
    said = []
    run(config, out, progress=False, log=said.append)
    ran = [line for line in said if "skipped" not in line and " done in " not in line]
    assert ran[0] == ("[predict] running again: what it wrote is gone (predict/: 1 of its 100 "
                      "entries)"), said
    assert (out / "predict" / "tile099.tif").is_file()
