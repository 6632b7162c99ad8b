"""Pretraining validated on the simulation is kept when the annotated images change, and
`run --reuse` copies an earlier run's finished stages where they would be the same work."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from cellsynth.errors import ConfigError
from cellsynth.io.files import write_with
from cellsynth.pipeline import stages
from cellsynth.pipeline.config import PipelineConfig, PredictOptions, RealData, SimulateOptions
from cellsynth.pipeline.run import fingerprint, run, stage_fingerprints
from cellsynth.segment.trainer import TrainConfig
from tests.conftest import make_dataset

_TINY = dict(crop=64, batch=1, samples=32, order=4, refinement_iterations=1,
             checkpoint_every=1, val_every=2)


def _recipe(train: Path, test: Path, select: list[str]) -> PipelineConfig:
    """The accurate recipe's shape, tiny: plain simulation, pretraining validated on held-out
    simulated images, fine-tuning on the selected annotated images."""
    return PipelineConfig(
        simulate=SimulateOptions(preset="fluo", n=4, size=64, workers=1, n_val=2),
        real=RealData(train=str(train), val=str(train), test=str(test),
                      select={"train": select, "val": select}),
        pretrain=TrainConfig(steps=2, **_TINY), finetune=TrainConfig(steps=2, **_TINY),
        pretrain_val="synthetic", predict=PredictOptions(tile=64, overlap=16))


def _ran(said: list[str]) -> list[str]:
    """The stages a run worked on (not skipped, not reused)."""
    return [line.split("]")[0][1:] for line in said
            if line.endswith("] running") or "] running again" in line
            or line.endswith("] resuming")]


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns
            for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, Path]:
    return (make_dataset(tmp_path / "train", n=3, size=64, seed=1),
            make_dataset(tmp_path / "test", n=1, size=64, seed=2))


def test_other_annotated_images_keep_the_pretraining_on_the_simulation(tmp_path, data):
    """Pretraining validated on simulated images reads no real image: choosing other
    annotated images redoes their copy and the fine-tuning, not the pretraining (which it
    did before: RUN/real was among its inputs)."""
    config = _recipe(*data, ["img0"])
    out = tmp_path / "run"
    run(config, out, progress=False, log=lambda line: None)
    pretrained = _mtimes(out / "pretrain")
    said: list[str] = []
    run(replace(config, real=replace(config.real, select={"train": ["img1"], "val": ["img1"]})),
        out, progress=False, log=said.append)
    assert _ran(said)[:2] == ["real", "finetune"]
    assert "pretrain" not in _ran(said) and "simulate" not in _ran(said)
    assert _mtimes(out / "pretrain") == pretrained


def test_a_run_that_keyed_its_pretraining_with_the_real_images_keeps_it(tmp_path, data):
    """A run folder from before: its pretraining's record names RUN/real among the inputs
    (and its fingerprint hashed it). Choosing other annotated images there keeps that
    pretraining too; what the record says otherwise must match."""
    config = _recipe(*data, ["img0"])
    out = tmp_path / "run"
    run(config, out, progress=False, log=lambda line: None)
    state = json.loads((out / "state.json").read_text())
    entry = state["pretrain"]
    entry["hashed"]["inputs"]["real"] = state["real"]["fingerprint"]
    entry["fingerprint"] = fingerprint("as an older version keyed it")
    (out / "state.json").write_text(json.dumps(state))
    pretrained = _mtimes(out / "pretrain")
    other = replace(config, real=replace(config.real, select={"train": ["img2"],
                                                              "val": ["img2"]}))
    said: list[str] = []
    run(other, out, progress=False, log=said.append)
    assert "pretrain" not in _ran(said) and "finetune" in _ran(said)
    assert _mtimes(out / "pretrain") == pretrained
    # the record must agree in everything else: other pretraining options redo it
    state = json.loads((out / "state.json").read_text())
    state["pretrain"]["hashed"]["settings"]["pretrain.steps"] = 5
    (out / "state.json").write_text(json.dumps(state))
    said.clear()
    run(other, out, progress=False, log=said.append)
    assert "pretrain" in _ran(said)


def test_stage_fingerprints_an_older_run_recorded_are_kept(tmp_path):
    """The fingerprints f3494ed computed for this zero-label config (its real images are
    rescaled, so RUN/real was an input of the pretraining, which now validates on the
    simulation and no longer hashes it): a run folder holding them redoes nothing."""
    from cellsynth.refine.config import RefineConfig

    (tmp_path / "u").mkdir()
    config = PipelineConfig(simulate=SimulateOptions(preset="fluo", n=4, size=64, workers=1),
                            real=RealData(unlabeled=str(tmp_path / "u"), pixel_size_um=1.0),
                            refine=RefineConfig(steps=2), pretrain=TrainConfig(steps=2))
    older = {
        "simulate": "4aa93337c4b176ff", "simulate_val": "57d7d93e46dcb4a1",
        "real": "eac22396e38cd18b", "refiner": "8c7ad6de22b27358",
        "refined": "e404a3058d2fc2ba", "refined_val": "1282d963bd78ebfd",
        "pretrain": "0b008ff735d4b758", "predict": "2c9be45db2af9352",
        "realism": "f45f0eca2d3c3ac0", "report": "30035c677ac4a634"}
    plan = stages.plan(config)
    recorded = {name: {"fingerprint": print_, "done": True} for name, print_ in older.items()}
    assert stage_fingerprints(config, plan, recorded) == older
    new = stage_fingerprints(config, plan)
    assert new["pretrain"] != older["pretrain"]  # (a new run keys it without RUN/real)
    assert {k: new[k] for k in ("simulate", "real", "refiner", "refined")} == {
        k: older[k] for k in ("simulate", "real", "refiner", "refined")}


def test_reuse_copies_an_earlier_runs_pretraining_for_another_dataset(tmp_path, data):
    """The same recipe on another annotated dataset: the simulation and the pretraining are
    copied from the earlier run (the same bytes, not links), the rest runs; the report and
    state.json say where they came from. Another seed takes nothing."""
    from cellsynth.pipeline.estimate import estimate

    first = tmp_path / "first"
    run(_recipe(*data, ["img0"]), first, progress=False, log=lambda line: None)
    other = make_dataset(tmp_path / "other", n=2, size=64, seed=7)
    config = _recipe(other, data[1], ["img1"])
    second = tmp_path / "second"
    planned = {e.stage: e for e in estimate(config, second, reuse=[first])}
    assert planned["pretrain"].seconds == 0 and "reused from" in planned["pretrain"].detail
    assert planned["finetune"].seconds > 0
    said: list[str] = []
    run(config, second, progress=False, log=said.append, reuse=[first])
    reused = [line.split("]")[0][1:] for line in said if "] reused from " in line]
    assert reused == ["simulate", "simulate_val", "pretrain"]
    assert _ran(said)[:2] == ["real", "finetune"]
    # checkpoints are links (written only by replacing them whole), the rest copies
    for name in ("best.pt", "last.pt", "log.jsonl"):
        mine, theirs = second / "pretrain" / name, first / "pretrain" / name
        assert mine.read_bytes() == theirs.read_bytes()
        assert (mine.stat().st_ino == theirs.stat().st_ino) == name.endswith(".pt")
    theirs = (first / "pretrain" / "best.pt").read_bytes()
    write_with(second / "pretrain" / "best.pt", lambda tmp: tmp.write_bytes(b"new"))
    assert (first / "pretrain" / "best.pt").read_bytes() == theirs != b"new"
    state = json.loads((second / "state.json").read_text())
    assert state["pretrain"]["reused_from"] == str(first) and state["pretrain"]["done"]
    assert f"reused from {first}" in (second / "report.html").read_text()
    # run again: the copied stages are this run's own now, done
    said.clear()
    run(config, second, progress=False, log=said.append, reuse=[first])
    assert _ran(said) == [] and not any("reused" in line for line in said)
    said.clear()
    run(replace(config, seed=1), tmp_path / "third", progress=False, log=said.append,
        reuse=[first])
    assert not any("reused" in line for line in said) and "pretrain" in _ran(said)


def test_reuse_never_replaces_what_the_run_holds_and_names_a_bad_folder(tmp_path, data):
    first = tmp_path / "first"
    config = _recipe(*data, ["img0"])
    run(config, first, progress=False, log=lambda line: None)
    second = tmp_path / "second"  # (a run folder: one of the user's is refused as --out)
    (second / "pretrain").mkdir(parents=True)
    (second / "pretrain" / "mine.txt").write_text("a user's file")
    (second / "state.json").write_text("{}")
    said: list[str] = []
    run(config, second, progress=False, log=said.append, reuse=[first])
    assert "simulate" not in _ran(said) and "pretrain" in _ran(said)
    with pytest.raises(ConfigError, match=r"--reuse .*nowhere: not a cellsynth run folder"):
        run(config, tmp_path / "x", progress=False, reuse=[tmp_path / "nowhere"])
    with pytest.raises(ConfigError, match="that is --out itself"):
        run(config, first, progress=False, reuse=[first])
    assert not (tmp_path / "x").exists()


def test_the_run_command_says_a_bad_reuse_folder_in_one_line(tmp_path, data, capsys):
    from cellsynth.cli import main

    path = tmp_path / "recipe.yaml"
    path.write_text(f"simulate: {{preset: fluo, n: 4, size: 64}}\n"
                    f"real: {{train: {data[0]}, test: {data[1]}}}\n")
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--reuse",
                 str(data[0])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cellsynth run: error: --reuse {data[0]}: not a cellsynth run folder (no "
                   "state.json); name the --out of an earlier run"]
    assert not (tmp_path / "run").exists()
