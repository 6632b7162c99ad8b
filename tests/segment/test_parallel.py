"""Training runs side by side (cellsynth.segment.parallel): the same runs as one at a time."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import replace

import pytest
import torch

from cellsynth.segment.parallel import _steps_done, parallel_plan, train_side_by_side
from cellsynth.segment.trainer import TrainConfig, train
from tests.conftest import make_dataset

TINY = TrainConfig(steps=3, crop=32, batch=1, samples=16, order=3, refinement_iterations=1,
                   checkpoint_every=1, val_every=3, model="tiny_u22")


def _weights(folder):
    return torch.load(folder / "last.pt", weights_only=True)["model"]


def test_the_plan_shares_the_threads_among_the_runs_and_keeps_a_gpu_to_one(monkeypatch):
    from cellsynth import hardware

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("CELLSYNTH_THREADS", raising=False)
    monkeypatch.setattr(hardware, "available_memory", lambda: None)  # (unknown: no cap)
    assert parallel_plan(4, "cpu", threads=2) == (2, 1)
    assert parallel_plan(4, "cpu", threads=8) == (4, 2)
    assert parallel_plan(2, "cpu", threads=5) == (2, 2)
    assert parallel_plan(4, "cpu", threads=1) == (1, 1)  # --threads 1: one after the other
    assert parallel_plan(1, "cpu", threads=8) == (1, None)
    assert parallel_plan(4, "cuda", threads=8) == (1, None)
    monkeypatch.setenv("CELLSYNTH_THREADS", "3")
    assert parallel_plan(5, "cpu") == (3, 1)


def test_the_plan_starts_no_more_runs_than_the_memory_holds(monkeypatch):
    from cellsynth import hardware
    from cellsynth.segment.parallel import RUN_BYTES

    monkeypatch.setattr(hardware, "available_memory", lambda: int(2.5 * RUN_BYTES))
    assert parallel_plan(4, "cpu", threads=8) == (2, 4)  # the threads go to the 2 runs
    monkeypatch.setattr(hardware, "available_memory", lambda: RUN_BYTES // 2)
    assert parallel_plan(4, "cpu", threads=8) == (1, 8)  # one at a time, never none


def test_runs_side_by_side_equal_the_same_runs_trained_one_at_a_time(tmp_path, monkeypatch):
    data = make_dataset(tmp_path / "data", n=2, size=48, seed=1)
    jobs = {name: dict(config=replace(TINY, seed=seed), data=[data], out=tmp_path / name,
                       val=data)
            for name, seed in (("a", 0), ("b", 1000))}
    summaries = train_side_by_side(jobs, processes=2, threads=1, progress=False)
    assert sorted(summaries) == ["a", "b"] and summaries["a"]["steps"] == 3
    monkeypatch.setenv("CELLSYNTH_THREADS", "1")  # (the runs side by side had 1 thread each)
    before = torch.get_num_threads()
    try:
        for name, job in jobs.items():
            alone = train(**{**job, "out": tmp_path / f"{name}-alone"}, progress=False)
            assert alone["best_val_f1"] == summaries[name]["best_val_f1"]
            mine, theirs = _weights(tmp_path / name), _weights(tmp_path / f"{name}-alone")
            assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    finally:
        torch.set_num_threads(before)
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].is_floating_point())
    assert _steps_done(tmp_path / "a") == 3


def test_a_failing_run_is_reported_by_its_error(tmp_path):
    from cellsynth.errors import ConfigError

    data = make_dataset(tmp_path / "data", n=2, size=48, seed=1)
    jobs = {"good": dict(config=TINY, data=[data], out=tmp_path / "good"),
            "bad": dict(config=replace(TINY, replay=0.5), data=[data], out=tmp_path / "bad")}
    with pytest.raises(ConfigError, match="replay 0.5 needs replay data"):
        train_side_by_side(jobs, processes=2, threads=1, progress=False)


def test_sigterm_stops_every_run_with_a_checkpoint_and_a_rerun_resumes(tmp_path):
    data = make_dataset(tmp_path / "data", n=2, size=48, seed=1)
    long = replace(TINY, steps=100_000, checkpoint_every=10**6)
    jobs = {name: dict(config=replace(long, seed=seed), data=[data], out=tmp_path / name)
            for name, seed in (("a", 0), ("b", 1000))}

    def stop_when_both_train():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and min(
                _steps_done(tmp_path / n) for n in jobs) < 2:
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=stop_when_both_train)
    killer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            train_side_by_side(jobs, processes=2, threads=1, progress=False)
    finally:
        killer.join()
    for name in jobs:
        saved = torch.load(tmp_path / name / "last.pt", weights_only=True)["step"]
        assert saved >= 2 and saved == _steps_done(tmp_path / name)
    # the rerun resumes each run where it stopped (here: to a nearer end)
    resumed = {name: {**job, "config": replace(job["config"], steps=saved + 1), "resume": True}
               for name, job in jobs.items()
               for saved in [torch.load(tmp_path / name / "last.pt",
                                        weights_only=True)["step"]]}
    summaries = train_side_by_side(resumed, processes=2, threads=1, progress=False)
    assert {n: s["steps"] for n, s in summaries.items()} == {
        n: j["config"].steps for n, j in resumed.items()}


def test_a_stop_asked_before_a_loop_starts_is_kept_for_it_not_fatal():
    """A pool process gets SIGTERM while it loads its run's data: it lives on, and the loop
    that starts next sees the stop (so it stops after one step, checkpointed)."""
    import subprocess
    import sys

    code = (
        "import os, signal\n"
        "from cellsynth.signals import remember_stop_signals, stop_between_steps\n"
        "with stop_between_steps() as stop:\n"
        "    pass\n"
        "print('before', bool(stop))\n"
        "remember_stop_signals()\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "with stop_between_steps() as stop:\n"
        "    print('loop', bool(stop), stop.name)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["before False", "loop True SIGTERM"]
