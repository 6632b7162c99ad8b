"""CPN training: loss goes down, resume continues exactly, DDP runs, bad input is explained."""

import contextlib
import json
import os
import subprocess
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cellsynth.errors import CellsynthError, DatasetError, OutputExistsError
from cellsynth.segment import batches, trainer
from cellsynth.segment.data import Augment
from cellsynth.segment.trainer import TrainConfig, train
from cellsynth.simulate import preset, write_simulation
from tests.conftest import ScriptedThreads, make_dataset

TINY = dict(crop=64, batch=2, samples=32, order=4, refinement_iterations=1, val_every=1000)


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seg") / "sim"
    write_simulation(preset("fluo"), n=3, size=64, seed=0, out=out, progress=False)
    return out


def _losses(run: Path) -> dict[int, float]:
    entries = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    return {e["step"]: e["loss"] for e in entries if "loss" in e}


def test_short_training_reduces_the_loss(sim, tmp_path):
    config = TrainConfig(steps=24, lr=2e-3, warmup=1, augment=Augment(enabled=False), **TINY)
    train(config, [sim], tmp_path / "run", progress=False)
    losses = _losses(tmp_path / "run")
    first = sum(losses[s] for s in range(1, 5)) / 4
    last = sum(losses[s] for s in range(21, 25)) / 4
    assert last < 0.8 * first, (first, last)
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert ckpt["step"] == 24 and ckpt["model_spec"]["in_channels"] == 1


@contextlib.contextmanager
def _at_batch(monkeypatch, n, action):
    """Within the block, call ``action()`` when the trainer draws its ``n``-th batch."""
    real_batch = batches._batch
    calls = {"n": 0}

    def batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            action()
        return real_batch(*args, **kwargs)

    monkeypatch.setattr(batches, "_batch", batch)
    try:
        yield
    finally:
        monkeypatch.setattr(batches, "_batch", real_batch)


def _die():
    raise KeyboardInterrupt  # the process is killed


def test_resume_continues_exactly(sim, tmp_path, monkeypatch):
    config = TrainConfig(steps=4, checkpoint_every=2, **TINY)
    train(config, [sim], tmp_path / "full", progress=False)

    with _at_batch(monkeypatch, 3, _die), pytest.raises(KeyboardInterrupt):
        train(config, [sim], tmp_path / "killed", progress=False)  # dies after step 2's save
    with pytest.raises(OutputExistsError, match="--resume"):
        train(config, [sim], tmp_path / "killed", progress=False)
    train(config, [sim], tmp_path / "killed", resume=True, progress=False)
    full, resumed = _losses(tmp_path / "full"), _losses(tmp_path / "killed")
    assert sorted(resumed) == [1, 2, 3, 4]  # no duplicated log lines
    for step in (3, 4):
        assert resumed[step] == pytest.approx(full[step], rel=1e-5, abs=1e-5)


def test_batch_workers_give_one_run_for_any_count_and_resume_exactly(sim, tmp_path,
                                                                      monkeypatch):
    """Batch k comes from its own random stream: 1 or 2 workers (each with its own copy of
    the sampler) train the same run, and one killed after step 2 resumes to it."""
    config = TrainConfig(steps=4, checkpoint_every=2, workers=1, **TINY)
    train(config, [sim], tmp_path / "one", progress=False)
    train(replace(config, workers=2), [sim], tmp_path / "two", progress=False)
    one, two = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(one) == sorted(two) == [1, 2, 3, 4]
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=1e-5)
    assert len({round(v, 4) for v in one.values()}) == 4  # 4 different batches, not one 4x

    real_step, calls = trainer._train_step, {"n": 0}

    def step(*args, **kwargs):  # the process is killed before its 3rd step
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer, "_train_step", step)
    with pytest.raises(KeyboardInterrupt):
        train(replace(config, workers=2), [sim], tmp_path / "killed", progress=False)
    monkeypatch.setattr(trainer, "_train_step", real_step)
    train(replace(config, workers=2), [sim], tmp_path / "killed", resume=True, progress=False)
    resumed = _losses(tmp_path / "killed")
    assert sorted(resumed) == [1, 2, 3, 4]
    for step_ in (3, 4):
        assert resumed[step_] == pytest.approx(one[step_], rel=1e-5, abs=1e-5)
    with pytest.raises(ValueError, match="workers must be >= 0"):
        TrainConfig(workers=-1)


def test_fine_tuning_needs_a_matching_model(sim, tmp_path):
    config = TrainConfig(steps=1, **TINY)
    train(config, [sim], tmp_path / "pre", progress=False)
    train(config, [sim], tmp_path / "ft", init=tmp_path / "pre", progress=False)
    other = TrainConfig(steps=1, **{**TINY, "order": 5})
    with pytest.raises(CellsynthError, match="does not match.*order 4 vs 5"):
        train(other, [sim], tmp_path / "ft2", init=tmp_path / "pre", progress=False)


def test_the_api_names_its_calls_and_takes_one_folder_as_a_string(sim, tmp_path):
    """``cellsynth.segment`` exports the calls the README shows without importing torch;
    ``train(config, "folder", ...)`` trains on that folder (it iterated the string's
    letters: "/: no images found")."""
    import cellsynth.segment as segment
    from cellsynth.pipeline import layout

    assert {"TrainConfig", "train", "load_detector", "predict_image", "predict_folder"} <= set(
        segment.__all__)
    assert all(getattr(segment, name) is not None for name in segment.__all__)
    assert segment.train is train
    code = "import sys, cellsynth.segment; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
    segment.train(TrainConfig(steps=1, **TINY), str(sim), tmp_path / "run", progress=False)
    info = json.loads((tmp_path / "run" / layout.RUN_INFO).read_text())
    assert info["data"] == [str(sim.resolve())]


def test_clear_errors(sim, tmp_path):
    config = TrainConfig(steps=1, **TINY)
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images found"):
        train(config, [tmp_path / "empty"], tmp_path / "r1", progress=False)
    with pytest.raises(CellsynthError, match="nothing to resume"):
        train(config, [sim], tmp_path / "r2", resume=True, progress=False)
    orphan = tmp_path / "orphan"
    (orphan / "images").mkdir(parents=True)
    (orphan / "labels").mkdir()
    (orphan / "labels" / "a.tif").write_bytes((sim / "labels" / "0000.tif").read_bytes())
    (orphan / "images" / "b.png").write_bytes((sim / "images" / "0000.png").read_bytes())
    with pytest.raises(DatasetError, match="without an image"):
        train(config, [orphan], tmp_path / "r3", progress=False)


def _square(x: int, y: int, size: int = 10) -> np.ndarray:
    return np.array([[x, y], [x + size, y], [x + size, y + size], [x, y + size]], float)


def test_validation_picks_the_threshold_with_the_best_f1(monkeypatch):
    from cellsynth.segment import tiles
    from cellsynth.segment.data import LabeledImage

    labels = np.zeros((64, 64), np.int32)
    labels[5:16, 5:16], labels[30:41, 30:41] = 1, 2
    # two true cells scored 0.95, three false ones 0.6: F1 is 1 only for 0.6 < t <= 0.95
    contours = np.stack([_square(5, 5), _square(30, 30), _square(50, 5), _square(5, 50),
                         _square(50, 50)])
    scores = np.array([0.95, 0.95, 0.6, 0.6, 0.6])
    monkeypatch.setattr(tiles, "tiled_proposals", lambda *a, **k: (contours, scores))
    item = LabeledImage("a", np.zeros((64, 64, 1), np.float32), labels)
    model = torch.nn.Conv2d(1, 1, 1)
    result = trainer.validate(model, [item], TrainConfig(crop=64))
    assert result["score_thresh"] == 0.7 and result["f1_50"] == pytest.approx(1.0)
    by_threshold = result["f1_by_threshold"]
    assert by_threshold[0.6] == pytest.approx(2 * 0.4 / 1.4)  # precision 2/5, recall 1
    assert by_threshold[0.96] == 0.0
    avg = result["f1_avg_by_threshold"]
    assert avg[0.7] == result["f1_avg"] > avg[0.6] > 0 and avg[0.96] == 0.0
    assert model.training  # validate leaves the model as training found it


def test_best_checkpoint_is_the_best_validated_step(sim, tmp_path, monkeypatch):
    f1s = iter([0.2, 0.7, 0.4])
    monkeypatch.setattr(trainer, "validate", lambda *a: {
        "score_thresh": 0.8, "f1_50": next(f1s), "f1_avg": 0.1, "f1_by_threshold": {}})
    config = TrainConfig(steps=3, **{**TINY, "val_every": 1})
    summary = train(config, [sim], tmp_path / "run", val=sim, progress=False)
    assert summary["best_val_f1"] == 0.7
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=False)
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert best["step"] == 2 and last["step"] == 3
    # best.pt is for predicting and fine-tuning: no optimizer moments (2x the weights)
    assert "optimizer" not in best and "rng" not in best and "optimizer" in last
    assert (tmp_path / "run" / "best.pt").stat().st_size < 0.5 * (
        tmp_path / "run" / "last.pt").stat().st_size
    assert best["model"].keys() == last["model"].keys()
    assert not all(torch.equal(best["model"][k], last["model"][k]) for k in best["model"])


def test_patience_stops_at_a_plateau_and_a_resume_does_not_train_on(sim, tmp_path,
                                                                     monkeypatch):
    f1s = iter([0.2, 0.7, 0.4, 0.7, 0.9, 0.5])
    monkeypatch.setattr(trainer, "validate", lambda *a: {
        "score_thresh": 0.8, "f1_50": next(f1s), "f1_avg": 0.1, "f1_by_threshold": {}})
    config = TrainConfig(steps=6, patience=2, **{**TINY, "val_every": 1})
    summary = train(config, [sim], tmp_path / "run", val=sim, progress=False)
    # 0.4 and 0.7 (not better than 0.7) are two validations without a gain: stop after step 4
    assert summary["steps"] == 4 and summary["plateau"] and summary["best_val_f1"] == 0.7
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=False)["step"] == 4
    assert torch.load(tmp_path / "run" / "best.pt", weights_only=False)["step"] == 2
    again = train(config, [sim], tmp_path / "run", val=sim, resume=True, progress=False)
    assert again["steps"] == 4 and again["plateau"]
    # more patience on resume: it trains on from step 4 and finds the better step 5
    more = train(replace(config, patience=3), [sim], tmp_path / "run", val=sim, resume=True,
                 progress=False)
    assert more["steps"] == 6 and not more["plateau"] and more["best_val_f1"] == 0.9


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_ddp_two_cpu_processes(sim, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CELLSYNTH_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           f"--master_port={_free_port()}", "-m", "cellsynth", "train", "--data", str(sim),
           "--out", str(tmp_path / "ddp"), "--steps", "2", "--crop", "64", "--batch", "1",
           "--quiet"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    ckpt = torch.load(tmp_path / "ddp" / "last.pt", weights_only=False)
    assert ckpt["step"] == 2 and len(ckpt["rng"]["numpy"]) == 2
    # one summary (rank 0's), and not DDP's stride warning about the 1x1 head, 5 lines a rank
    assert result.stdout.count("trained 2 steps") == 1, result.stdout
    assert "Grad strides" not in result.stderr, result.stderr[-2000:]


def test_cli_says_which_precision_and_threads_it_chose(sim, tmp_path, capsys, monkeypatch):
    from cellsynth import hardware
    from cellsynth.cli import main

    monkeypatch.delenv("CELLSYNTH_PRECISION", raising=False)
    before = os.environ.get("CELLSYNTH_THREADS")
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: frozenset({"avx", "avx2"}))
    args = ["train", "--data", str(sim), "--steps", "1", "--crop", "64", "--batch", "1",
            "--threads", "1", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    ckpt = torch.load(tmp_path / "a" / "last.pt", weights_only=False)
    assert ckpt["precision"] == "fp32"  # AVX2 only: bf16 would be emulated
    assert main([*args[:-1], "--out", str(tmp_path / "b")]) == 0
    err = capsys.readouterr().err
    assert "cellsynth train: precision fp32 (auto: CPU has no native bf16 (AVX2 only)" in err
    assert "cellsynth train: threads 1 (set by --threads)" in err
    assert os.environ.get("CELLSYNTH_THREADS") == before  # --threads does not leak
    assert "CELLSYNTH_THREADS_SOURCE" not in os.environ
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert main([*args[:-1], "--out", str(tmp_path / "c"), "--precision", "fp32"]) == 0
    assert "precision fp32 (requested)" in capsys.readouterr().err


def test_ctrl_c_checkpoints_the_step_it_finished_and_resume_is_exact(sim, tmp_path,
                                                                       monkeypatch):
    import signal

    config = TrainConfig(steps=5, checkpoint_every=50, **TINY)
    train(config, [sim], tmp_path / "full", progress=False)
    def ctrl_c():
        signal.raise_signal(signal.SIGINT)  # arrives mid-step: the step still finishes

    with _at_batch(monkeypatch, 3, ctrl_c), pytest.raises(KeyboardInterrupt):
        train(config, [sim], tmp_path / "stopped", progress=False)
    assert torch.load(tmp_path / "stopped" / "last.pt", weights_only=False)["step"] == 3
    train(config, [sim], tmp_path / "stopped", resume=True, progress=False)
    full, resumed = _losses(tmp_path / "full"), _losses(tmp_path / "stopped")
    assert sorted(resumed) == [1, 2, 3, 4, 5]
    for step in (4, 5):
        assert resumed[step] == pytest.approx(full[step], rel=1e-5, abs=1e-5)


def test_force_with_bad_input_leaves_the_old_run_as_it_was(sim, tmp_path, capsys):
    from cellsynth.cli import main

    run = tmp_path / "run"
    train(TrainConfig(steps=1, **TINY), [sim], run, progress=False)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    for bad in (["--data", str(tmp_path / "missing")], ["--data", str(sim), "--device", "cuda:7"],
                ["--data", str(sim), "--device", "nonsense"]):
        code = main(["train", *bad, "--out", str(run), "--force", "--steps", "1", "--quiet"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "Traceback" not in err[0], err
        assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_fine_tuning_takes_the_pretrained_models_channels(sim, tmp_path):
    """A gray simulation, RGB real images: fine-tuning converts them (with a note) instead of
    failing with '--init model does not match' (the pipeline hit this after pretraining)."""
    from cellsynth.io.images import read_image, write_image

    config = TrainConfig(steps=1, **TINY)
    train(config, [sim], tmp_path / "pre", progress=False)
    rgb = tmp_path / "rgb"
    (rgb / "images").mkdir(parents=True)
    (rgb / "labels").mkdir()
    for path in sorted((sim / "images").iterdir()):
        gray = read_image(path)
        write_image(rgb / "images" / path.name, np.stack([gray, gray // 2, gray // 3], axis=-1))
        label = sim / "labels" / f"{path.stem}.tif"
        (rgb / "labels" / label.name).write_bytes(label.read_bytes())
    with pytest.warns(UserWarning, match="converting RGB image to gray for a 1-channel model"):
        train(config, [rgb], tmp_path / "ft", init=tmp_path / "pre", progress=False)
    ckpt = torch.load(tmp_path / "ft" / "last.pt", weights_only=False)
    assert ckpt["model_spec"]["in_channels"] == 1
    with pytest.raises(CellsynthError, match="--init needs a `cellsynth train` run"):
        torch.save({"generator": {}}, tmp_path / "refiner.pt")
        train(config, [rgb], tmp_path / "ft2", init=tmp_path / "refiner.pt", progress=False)
    assert not (tmp_path / "ft2").exists()


def test_resume_after_a_kill_mid_log_line(sim, tmp_path):
    """kill -9 while a log line was being written: resume drops the broken line."""
    config = TrainConfig(steps=4, checkpoint_every=2, **TINY)
    run = tmp_path / "run"
    train(TrainConfig(steps=2, checkpoint_every=2, **TINY), [sim], run, progress=False)
    with (run / "log.jsonl").open("a") as log:
        log.write('{"step": 3, "loss": 1.2')  # the kill
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace(
        "steps: 2", "steps: 4"))
    ckpt = torch.load(run / "last.pt", weights_only=False)
    ckpt["config"]["steps"] = 4
    torch.save(ckpt, run / "last.pt")
    train(config, [sim], run, resume=True, progress=False)
    assert sorted(_losses(run)) == [1, 2, 3, 4]


def test_resume_may_run_longer_but_not_differently(sim, tmp_path):
    run = tmp_path / "run"
    train(TrainConfig(steps=2, checkpoint_every=1, **TINY), [sim], run, progress=False)
    summary = train(TrainConfig(steps=3, checkpoint_every=1, **TINY), [sim], run, resume=True,
                    progress=False)
    assert summary["steps"] == 3
    info = json.loads((run / "run.json").read_text())
    assert info["resumed_at_steps"] == [2] and info["data"] == [str(sim.resolve())]
    assert info["workers"] == 0  # (0 and >= 1 draw batches from different random streams)
    assert torch.__version__.startswith(info["torch_version"])
    with pytest.raises(CellsynthError, match="cannot resume with a different lr"):
        train(TrainConfig(steps=4, lr=5e-3, **TINY), [sim], run, resume=True, progress=False)


def test_run_json_records_the_thread_counts_a_run_trained_with(sim, tmp_path, monkeypatch):
    """Float sums follow the thread count, so a run repeats exactly only with the same counts
    at the same steps: run.json keeps them, and a resume drops those of the steps it redoes."""
    run = tmp_path / "run"
    config = TrainConfig(steps=6, checkpoint_every=2, **TINY)
    monkeypatch.setattr(trainer, "ThreadGovernor", ScriptedThreads)
    monkeypatch.setattr(ScriptedThreads, "plan", {0: 1, 3: 2, 4: 1})
    with _at_batch(monkeypatch, 5, _die), pytest.raises(KeyboardInterrupt):
        train(config, [sim], run, progress=False)  # dies after step 4's save
    assert json.loads((run / "run.json").read_text())["torch_threads"] == [[0, 1], [3, 2], [4, 1]]
    monkeypatch.setattr(ScriptedThreads, "plan", {0: 3})
    train(config, [sim], run, resume=True, progress=False)
    assert json.loads((run / "run.json").read_text())["torch_threads"] == [[0, 1], [3, 2], [4, 3]]


def test_training_leaves_the_callers_random_state_alone(sim, tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(TrainConfig(steps=1, seed=7, **TINY), [sim], tmp_path / "run", progress=False)
    assert torch.equal(torch.rand(3), expected)


def _constant_items(value: float, n: int = 2):
    from cellsynth.segment.data import LabeledImage

    labels = np.zeros((64, 64), np.int32)
    labels[20:40, 20:40] = 1
    return [LabeledImage(f"{value}-{i}", np.full((64, 64, 1), value, np.float32), labels)
            for i in range(n)]


def test_replay_draws_that_share_of_the_crops_from_the_pretraining_data():
    from cellsynth.segment.data import CropSampler

    config = TrainConfig(crop=32, batch=4, samples=32, order=4, replay=0.25,
                         augment=Augment(enabled=False))

    def sources(replay_on: bool, n_batches: int = 200, seed: int = 0) -> list[float]:
        rng = np.random.default_rng(seed)
        real = CropSampler(_constant_items(0.2), 32, config.augment, rng)
        synthetic = CropSampler(_constant_items(0.8), 32, config.augment, rng)
        seen = []
        for _ in range(n_batches):
            batch = batches._batch(real, config, 32, 4,
                                   synthetic if replay_on else None)
            seen += [float(x.mean()) for x in batch["inputs"]]
        return seen

    with_replay = np.array(sources(True))
    share = np.mean(np.isclose(with_replay, 0.8))
    assert 0.20 < share < 0.30, share  # 800 crops, expected 0.25
    assert set(np.round(with_replay, 3)) == {0.2, 0.8}
    assert set(np.round(sources(False), 3)) == {0.2}  # off: real crops only


def test_fine_tuning_with_replay_reads_and_records_the_replay_data(sim, tmp_path):
    from cellsynth.errors import ConfigError

    config = TrainConfig(steps=1, **TINY)
    train(config, [sim], tmp_path / "pre", progress=False)
    real = make_dataset(tmp_path / "real", n=2, size=64, seed=7)
    with pytest.raises(ConfigError, match="replay 0.5 needs replay data"):
        train(replace(config, replay=0.5), [real], tmp_path / "ft0", init=tmp_path / "pre",
              progress=False)
    train(replace(config, replay=0.5), [real], tmp_path / "ft", init=tmp_path / "pre",
          replay=[sim], progress=False)
    info = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert info["replay"] == [str(sim.resolve())] and info["replay_fraction"] == 0.5
    train(config, [real], tmp_path / "ft_plain", init=tmp_path / "pre", replay=[sim],
          progress=False)  # replay 0: the folders are ignored
    assert "replay" not in json.loads((tmp_path / "ft_plain" / "run.json").read_text())


def test_cli_fine_tuning_takes_replay_folders(sim, tmp_path, capsys):
    """`cellsynth train --init PRE --replay SIM`: half of each batch from SIM (recorded in
    run.json), the architecture taken from PRE (TINY's contour order etc., not the
    defaults); a fraction outside [0, 1) is one line."""
    from cellsynth.cli import main

    config = TrainConfig(steps=1, **TINY)
    train(config, [sim], tmp_path / "pre", progress=False)
    real = make_dataset(tmp_path / "real", n=2, size=64, seed=7)
    args = ["train", "--data", str(real), "--init", str(tmp_path / "pre"), "--steps", "1",
            "--crop", "64", "--batch", "1", "--quiet", "--replay", str(sim)]
    assert main([*args, "--out", str(tmp_path / "ft")]) == 0
    # the pretrained detector's pixel size (its simulation's) is the fine-tuning's
    assert "real: 2 of 2 image(s) state no pixel size (meta.json pixel_size_um, or the " \
           "TIFF's own metadata); used as they are, as if at the working 0.5 um/px" \
           in capsys.readouterr().err
    info = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert info["replay"] == [str(sim.resolve())] and info["replay_fraction"] == 0.5
    spec = torch.load(tmp_path / "ft" / "last.pt", weights_only=False)["model_spec"]
    assert spec == torch.load(tmp_path / "pre" / "last.pt", weights_only=False)["model_spec"]
    assert spec["order"] == 4 != TrainConfig().order
    assert main([*args, "--replay-fraction", "1.5", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "replay must be in [0, 1)" in err
    # without --init, --replay mixed the two folders in a training from scratch unsaid
    alone = [a for a in args if a not in ("--init", str(tmp_path / "pre"))]
    assert main([*alone, "--out", str(tmp_path / "mixed")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.endswith("--replay replays the data the --init "
                                                  "detector was trained on while fine-tuning; "
                                                  "without --init, give both folders to --data")
    assert not (tmp_path / "mixed").exists()


def _state(path: Path, key: str = "model") -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=False)[key]


def test_loss_weights_default_to_celldetections_and_scale_their_terms(sim, tmp_path):
    from cellsynth.segment.cpn import build_model
    from cellsynth.segment.trainer import LossWeights

    cd_weights = build_model(in_channels=1, model="slim_u22").weights
    assert {k: cd_weights[k] for k in vars(LossWeights())} == vars(LossWeights())
    base = TrainConfig(steps=1, **TINY)
    train(base, [sim], tmp_path / "base", progress=False)
    heavier = replace(base, loss_weights=LossWeights(refinement=3.0, score_bg=0.0))
    train(heavier, [sim], tmp_path / "heavy", progress=False)
    a, b = (json.loads((tmp_path / r / "log.jsonl").read_text().splitlines()[0])
            for r in ("base", "heavy"))
    # the same first batch and weights: only the weighted terms change
    assert b["refinement"] == pytest.approx(3 * a["refinement"], rel=1e-4)
    assert b["contour"] == pytest.approx(a["contour"], rel=1e-4)
    assert b["score"] < a["score"]  # the background pixels' term is gone
    with pytest.raises(ValueError, match="loss_weights.iou must be >= 0"):
        LossWeights(iou=-1.0)


def test_ema_validates_and_saves_the_averaged_weights_and_resumes_exactly(sim, tmp_path,
                                                                          monkeypatch):
    pre = TrainConfig(steps=1, **TINY)
    train(pre, [sim], tmp_path / "pre", progress=False)
    start = _state(tmp_path / "pre" / "last.pt")
    seen = []
    monkeypatch.setattr(trainer, "validate", lambda model, *a: seen.append(
        {k: v.clone() for k, v in model.state_dict().items()}) or {
        "score_thresh": 0.8, "f1_50": 0.5, "f1_avg": 0.1, "f1_by_threshold": {}})
    config = TrainConfig(steps=1, ema=0.75, checkpoint_every=1, **{**TINY, "val_every": 1})
    run = tmp_path / "ft"
    train(config, [sim], run, init=tmp_path / "pre", val=sim, progress=False)
    averaged, trained = _state(run / "last.pt"), _state(run / "last.pt", "trained_model")
    for name, value in trained.items():
        if value.is_floating_point():  # 0.75 of where it started, 0.25 of the trained step
            expected = 0.75 * start[name] + 0.25 * value
            assert torch.allclose(averaged[name], expected, atol=1e-6), name
        else:
            assert torch.equal(averaged[name], value), name
    assert not all(torch.equal(averaged[k], trained[k]) for k in trained)
    assert all(torch.equal(seen[0][k], averaged[k]) for k in averaged)  # validation: average
    assert all(torch.equal(_state(run / "best.pt")[k], averaged[k]) for k in averaged)
    # step 2 by a resume equals step 2 of an uninterrupted run
    train(replace(config, steps=2), [sim], run, val=sim, resume=True, progress=False)
    train(replace(config, steps=2), [sim], tmp_path / "full", init=tmp_path / "pre", val=sim,
          progress=False)
    for key in ("model", "trained_model"):
        resumed, full = _state(run / "last.pt", key), _state(tmp_path / "full" / "last.pt", key)
        assert all(torch.allclose(resumed[k], full[k], atol=1e-6) for k in full), key


def test_freeze_encoder_keeps_its_weights_and_statistics_and_trains_the_rest(sim, tmp_path,
                                                                             monkeypatch):
    pre = TrainConfig(steps=1, **TINY)
    train(pre, [sim], tmp_path / "pre", progress=False)
    start = _state(tmp_path / "pre" / "last.pt")
    # validation in between: the encoder must come back out of eval mode frozen, not trained
    monkeypatch.setattr(trainer, "validate", lambda model, *a: {
        "score_thresh": 0.8, "f1_50": 0.5, "f1_avg": 0.1, "f1_by_threshold": {}})
    config = TrainConfig(steps=3, lr=1e-2, warmup=1, freeze="encoder",
                         **{**TINY, "val_every": 1})
    train(config, [sim], tmp_path / "ft", init=tmp_path / "pre", val=sim, progress=False)
    tuned = _state(tmp_path / "ft" / "last.pt")
    encoder = [k for k in start if k.startswith("core.backbone.body.")]
    statistics = [k for k in encoder if "running_" in k]
    assert encoder and statistics
    assert all(torch.equal(tuned[k], start[k]) for k in encoder)  # weights and BN statistics
    changed = [k for k in start if k not in encoder and start[k].is_floating_point()
               and not torch.equal(tuned[k], start[k])]
    assert any(k.startswith("core.backbone.unet.") for k in changed)  # the decoder learned
    assert any(k.startswith("core.score_head.") for k in changed)
    # the same fine-tuning without freeze moves the encoder
    train(replace(config, freeze="none"), [sim], tmp_path / "all", init=tmp_path / "pre",
          val=sim, progress=False)
    moved = _state(tmp_path / "all" / "last.pt")
    assert not all(torch.equal(moved[k], start[k]) for k in encoder)


def test_train_init_keeps_the_base_detectors_channel_and_pixel_size(sim, tmp_path, capsys):
    """`train --init` of a detector trained on channel 1 of 2-channel images at 0.5 um/px
    fine-tunes on channel 1 at 0.5 um/px without being told again (it took channel 0 and no
    pixel size), and its replay of the (gray) simulation is read as it is (a channel of it
    was asked for, and could not be found)."""
    import tifffile

    from cellsynth.cli import main
    from cellsynth.io.images import read_image

    gray = make_dataset(tmp_path / "gray", n=2, size=64, seed=7)
    real = tmp_path / "real2"
    (real / "images").mkdir(parents=True)
    (real / "labels").mkdir()
    rng = np.random.default_rng(0)
    for path in sorted((gray / "images").iterdir()):
        nuclei = read_image(path)
        tifffile.imwrite(real / "images" / f"{path.stem}.tif",
                         np.stack([rng.integers(0, 255, nuclei.shape, np.uint8), nuclei]),
                         imagej=True, metadata={"axes": "CYX"})
        (real / "labels" / f"{path.stem}.tif").write_bytes(
            next((gray / "labels").glob(f"{path.stem}.*")).read_bytes())
    base = TrainConfig(steps=1, channel=1, pixel_size_um=0.5, **TINY)
    train(base, [real], tmp_path / "base", progress=False)
    assert main(["train", "--data", str(real), "--init", str(tmp_path / "base"), "--replay",
                 str(sim), "--out", str(tmp_path / "ft"), "--steps", "1", "--crop", "64",
                 "--batch", "2", "--quiet"]) == 0, capsys.readouterr().err
    assert "using channel 0" not in capsys.readouterr().err
    kept = torch.load(tmp_path / "ft" / "last.pt", weights_only=False)["config"]
    assert kept["channel"] == 1 and kept["pixel_size_um"] == 0.5


def test_a_detector_trained_without_a_pixel_size_records_its_datas(sim, tmp_path):
    """`train` on a simulation recorded no pixel size unless --pixel-size was given, so
    predict read images at any other pixel size as they were (second fresh-user audit)."""
    import shutil
    import warnings

    config = TrainConfig(steps=1, **TINY)
    train(config, [sim], tmp_path / "a", progress=False)
    saved = torch.load(tmp_path / "a" / "last.pt", weights_only=False)["config"]
    assert saved["pixel_size_um"] == preset("fluo").pixel_size_um == 0.5
    plain = make_dataset(tmp_path / "plain", n=2, size=64, seed=3)  # states none
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(config, [plain], tmp_path / "b", progress=False)
        # fine-tuning (the API too) works at its pretrained detector's pixel size
        train(config, [plain], tmp_path / "c", init=tmp_path / "a", progress=False)
    assert torch.load(tmp_path / "b" / "last.pt", weights_only=False)["config"][
        "pixel_size_um"] is None
    assert torch.load(tmp_path / "c" / "last.pt", weights_only=False)["config"][
        "pixel_size_um"] == 0.5
    # folders stating different sizes: said, and trained on as they are
    other = tmp_path / "sim2"
    shutil.copytree(sim, other)
    meta = json.loads((other / "meta.json").read_text())
    (other / "meta.json").write_text(json.dumps({**meta, "pixel_size_um": 0.25}))
    with pytest.warns(UserWarning, match=r"folders at different pixel sizes \(.*sim: 0.5 um, "
                                         r".*sim2: 0.25 um\); trained on as they are"):
        train(config, [sim, other], tmp_path / "d", progress=False)
    assert torch.load(tmp_path / "d" / "last.pt", weights_only=False)["config"][
        "pixel_size_um"] is None
    # a run from before (its config.yaml states none) resumes as it was
    cfg = (tmp_path / "a" / "config.yaml").read_text().replace("pixel_size_um: 0.5",
                                                              "pixel_size_um: null")
    (tmp_path / "a" / "config.yaml").write_text(cfg)
    ckpt = torch.load(tmp_path / "a" / "last.pt", weights_only=False)
    ckpt["config"]["pixel_size_um"] = None
    torch.save(ckpt, tmp_path / "a" / "last.pt")
    train(replace(config, steps=2), [sim], tmp_path / "a", resume=True, progress=False)
    assert torch.load(tmp_path / "a" / "last.pt", weights_only=False)["config"][
        "pixel_size_um"] is None


def test_core_and_rim_set_which_pixels_the_score_map_calls_a_cell():
    """A 40 px square cell: its foreground is the pixels farther than ``core`` of its centre's
    distance from the border; ``rim`` and nearer is background; the band between is ignored
    (-1). Wider cores give the score map and the outline regression more pixels per cell."""
    from cellsynth.segment.cpn import training_targets
    from cellsynth.segment.data import CropSampler

    labels = np.zeros((64, 64), np.int32)
    labels[12:52, 12:52] = 1
    counts = {}
    for core, rim in ((0.85, 0.8), (0.75, 0.5), (0.5, 0.5)):
        reduced = training_targets(labels, samples=32, order=4, rng=np.random.default_rng(0),
                                   core=core, rim=rim)["labels"]
        counts[core, rim] = {v: int((reduced == v).sum()) for v in (-1, 0, 1)}
        # the centre (distance 20 of 20) is the cell, a pixel 2 in from its border not
        assert reduced[32, 32] == 1 and reduced[32, 14] == 0
        assert (reduced[labels == 0] == 0).all()
    assert counts[0.85, 0.8][1] < counts[0.75, 0.5][1] < counts[0.5, 0.5][1]
    assert counts[0.5, 0.5][-1] == 0 < counts[0.75, 0.5][-1]
    # the square's pixels at distance d >= 1 from its border number (40 - 2 (d - 1))²; the
    # centre's distance is 20: core 0.5 keeps d > 10 (20 - 2 * 10 = 20 px a side, ~400)
    assert 300 <= counts[0.5, 0.5][1] <= 500
    # the trainer's batches are made with the config's core and rim
    config = TrainConfig(crop=64, batch=1, samples=32, order=4, core=0.5, rim=0.5,
                         augment=Augment(enabled=False))
    from cellsynth.segment.data import LabeledImage

    item = LabeledImage("square", np.full((64, 64, 1), 0.5, np.float32), labels)
    sampler = CropSampler([item], 64, config.augment, np.random.default_rng(0))
    batch = batches._batch(sampler, config, 32, 4)
    assert int((batch["labels"] == 1).sum()) == counts[0.5, 0.5][1]
    with pytest.raises(ValueError, match="rim <= core"):
        TrainConfig(core=0.5, rim=0.8)


def test_a_detector_stopped_part_way_is_named_so_when_used(sim, tmp_path, monkeypatch):
    """A training stopped by SIGTERM at step 80 of 300 was used by predict, train --init and
    soup as if finished, with no word (audit 6): run.json says whether it finished."""
    from cellsynth.segment.predict import read_detector_checkpoint

    config = TrainConfig(steps=4, checkpoint_every=2, **TINY)
    with _at_batch(monkeypatch, 3, _die), pytest.raises(KeyboardInterrupt):
        train(config, [sim], tmp_path / "killed", progress=False)  # dies after step 2's save
    assert json.loads((tmp_path / "killed" / "run.json").read_text())["finished"] is False
    with pytest.warns(UserWarning, match=r"killed: its training stopped at step 2 of 4 and "
                                         r"did not finish .* --resume finishes it"):
        read_detector_checkpoint(tmp_path / "killed")
    train(config, [sim], tmp_path / "killed", resume=True, progress=False)
    info = json.loads((tmp_path / "killed" / "run.json").read_text())
    assert (info["finished"], info["steps_done"]) == (True, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_detector_checkpoint(tmp_path / "killed")


def test_resume_on_other_data_is_refused_and_on_a_copy_of_it_goes_on(sim, tmp_path,
                                                                     monkeypatch):
    """`train --resume --data OTHER` trained on, wrote only OTHER into run.json and kept
    best.pt as chosen on the first validation (audit 6). A copy of the same data (or data
    whose first folder is gone: moved) resumes."""
    import shutil

    from cellsynth.errors import ConfigError

    other = make_dataset(tmp_path / "other", n=3, size=64, seed=5)
    config = TrainConfig(steps=4, checkpoint_every=2, **TINY)
    with _at_batch(monkeypatch, 3, _die), pytest.raises(KeyboardInterrupt):
        train(config, [sim], tmp_path / "run", val=sim, progress=False)
    for data, val, option in (([other], sim, "--data"), ([sim], None, "--val"),
                              ([sim], other, "--val")):
        with pytest.raises(ConfigError, match=f"--resume with other {option} than the run"):
            train(config, data, tmp_path / "run", val=val, resume=True, progress=False)
    copy = shutil.copytree(sim, tmp_path / "copy")
    train(config, [copy], tmp_path / "run", val=copy, resume=True, progress=False)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["steps_done"] == 4
