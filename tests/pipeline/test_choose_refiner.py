"""Choosing the refiner step by what its images teach a detector (validation images only)."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cellsynth import refine
from cellsynth.errors import CellsynthError, ConfigError
from cellsynth.pipeline import choose_refiner as chooser
from cellsynth.pipeline.choose_refiner import ChooseRefinerOptions, choose_refiner, snapshots
from cellsynth.pipeline.config import RealData, check_inputs
from cellsynth.pipeline.run import run
from cellsynth.refine.config import RefineConfig
from cellsynth.segment import trainer
from tests.conftest import make_dataset
from tests.pipeline.test_run import _config

_TINY_REFINER = RefineConfig(steps=4, crop=32, batch=2, width=8, blocks=1, spade_hidden=8,
                             d_width=8, d_layers=2, d_scales=1, sample_every=4,
                             checkpoint_every=2, log_every=1)


@pytest.fixture(scope="module")
def refiner_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("choose")
    sim = make_dataset(root / "sim", n=5, size=48, seed=3)
    (sim / "meta.json").write_text(json.dumps({"pixel_size_um": 0.5}))
    real = make_dataset(root / "real", n=2, size=48, seed=4, labels=False)
    out = root / "refiner"
    refine.fit(_TINY_REFINER, sim, real, out, progress=False)
    yield root, sim, out
    shutil.rmtree(root, ignore_errors=True)  # its checkpoints; CI disks can be small


def test_a_refiner_keeps_a_loadable_generator_every_checkpoint(refiner_run):
    _, _, out = refiner_run
    found = snapshots(out)
    assert [p.name for p in found] == ["step_000002.pt", "step_000004.pt"]
    early = refine.load_refiner(found[0], precision="fp32")
    assert early.step == 2
    last = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    final = torch.load(found[-1], map_location="cpu", weights_only=True)
    assert all(torch.equal(final["generator"][k], v) for k, v in last["generator"].items())
    assert not all(torch.equal(early.generator.state_dict()[k], v)
                   for k, v in last["generator"].items())  # step 2 is another generator


def _fake_training(monkeypatch, scores):
    """Quick detectors replaced by a score per candidate; records what each trained on."""
    calls = []

    def fake_train(config, data, out, *, val, force, progress):
        name = Path(out).parent.name
        images = sorted(p.name for p in (Path(data[0]) / "images").iterdir())
        calls.append({"name": name, "images": images, "val": val, "model": config.model,
                      "seed": config.seed, "steps": config.steps})
        return {"best_val_f1": scores[name]}
    monkeypatch.setattr(trainer, "train", fake_train)
    return calls


def test_the_best_validated_step_is_chosen_with_the_plain_simulation_as_reference(
        refiner_run, tmp_path, monkeypatch):
    root, sim, out = refiner_run
    val = make_dataset(tmp_path / "val", n=2, size=48, seed=5)
    calls = _fake_training(monkeypatch, {"simulation": 0.50, "step_000002": 0.70,
                                         "step_000004": 0.60})
    options = ChooseRefinerOptions(enabled=True, candidates=4, images=3, steps=7)
    choice = choose_refiner(out, sim, val, tmp_path / "choice", options, seed=11)
    assert choice["chosen"] == "step_000002.pt" and choice["chosen_step"] == 2
    assert choice["simulation_val_f1"] == 0.50 and choice["refiner_helped"] is True
    assert [c["val_f1"] for c in choice["candidates"]] == [0.70, 0.60]
    assert json.loads((tmp_path / "choice" / "choice.json").read_text()) == choice
    # every candidate: the same first 3 simulated images, the same seed, only val scored
    assert [c["name"] for c in calls] == ["simulation", "step_000002", "step_000004"]
    assert all(c["images"] == ["img0.png", "img1.png", "img2.png"] for c in calls)
    assert {(c["seed"], c["steps"], c["model"], str(c["val"])) for c in calls} == {
        (11, 7, "tiny_u22", str(val))}
    assert chooser.chosen_snapshot(tmp_path / "choice", out) == out / "snapshots" / \
        "step_000002.pt"
    # a refiner worse than its own simulation is said so; a tie goes to the later step
    _fake_training(monkeypatch, {"simulation": 0.9, "step_000002": 0.4, "step_000004": 0.4})
    worse = choose_refiner(out, sim, val, tmp_path / "choice2", options)
    assert worse["refiner_helped"] is False and worse["chosen_step"] == 4
    # only the last N snapshots compete
    _fake_training(monkeypatch, {"simulation": 0.1, "step_000004": 0.2})
    last_only = choose_refiner(out, sim, val, tmp_path / "choice3",
                               replace(options, candidates=1))
    assert [c["step"] for c in last_only["candidates"]] == [4]


def test_a_refiner_without_snapshots_is_one_clear_error(tmp_path):
    (tmp_path / "old_refiner").mkdir()
    with pytest.raises(CellsynthError, match="no refiner snapshots"):
        choose_refiner(tmp_path / "old_refiner", tmp_path, tmp_path, tmp_path / "c")


def test_a_run_refines_with_the_chosen_step(tmp_path, monkeypatch):
    train = make_dataset(tmp_path / "train", n=3, size=64, seed=1)
    base = _config(train)
    config = replace(base, refine=replace(base.refine, steps=4, checkpoint_every=2),
                     real=RealData(unlabeled=str(train), val=str(train)),
                     choose_refiner=ChooseRefinerOptions(enabled=True, images=2, steps=2,
                                                         crop=64))
    real_train = trainer.train
    scores = iter([0.3, 0.9, 0.2])  # simulation, step 2, step 4: step 2 must be used

    def scored_train(cfg, data, out, **kw):
        if Path(out).parent.parent.name != "refiner_choice":
            return real_train(cfg, data, out, **kw)
        real_train(cfg, data, out, **kw)  # the quick detector really trains
        return {"best_val_f1": next(scores)}
    monkeypatch.setattr(trainer, "train", scored_train)
    said: list[str] = []
    run(config, tmp_path / "run", progress=False, log=said.append)
    order = [line.split("]")[0][1:] for line in said if " done in " not in line]
    assert order.index("refiner") < order.index("refiner_choice") < order.index("refined")
    meta = json.loads((tmp_path / "run" / "refined" / "meta.json").read_text())
    assert meta["refiner"]["step"] == 2
    assert meta["refiner"]["checkpoint"].endswith("snapshots/step_000002.pt")
    page = (tmp_path / "run" / "report.html").read_text()
    assert "Refined with step 2" in page and "plain simulation 0.300" in page
    # the quick detectors keep their numbers, not their weights
    kept = list((tmp_path / "run" / "refiner_choice").rglob("*.pt"))
    assert kept == []
    with pytest.raises(ConfigError, match=r"needs a refiner \(real.unlabeled, refiner: true\) "
                                          r"and real.val"):
        check_inputs(replace(config, real=RealData(unlabeled=str(train))))
    with pytest.raises(ConfigError, match="needs a refiner"):  # no refiner to choose a step of
        check_inputs(replace(config, refiner=False))
