"""Faults from outside: kill -9 or Ctrl-C in the middle of a command, and a full disk.

A killed command must leave nothing that blocks or corrupts the next run (train resumes
exactly; simulate starts again and its stale staging folder is cleaned away), and a full
disk must be one line naming the file, with nothing half-written left behind.
"""

import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from cellsynth.simulate import preset, write_simulation

# Every command runs in a new process, forked from a server that has imported torch and
# celldetection once: starting an interpreter that imports them costs ~6 s of CPU, a third of
# these tests. The child runs the console script's `cellsynth.cli.main` with the arguments, its
# stdout and stderr (file descriptors 1 and 2) in files, and exits with main's code; a kill is
# a kill of that process. It has run no test, so it computes what a fresh `cellsynth` would.
_SERVER = multiprocessing.get_context("forkserver")
_SERVER.set_forkserver_preload(["torch", "celldetection", "cellsynth.cli"])
# the suite's thread count (tests/conftest.py): a subprocess computes what the test computes
ENV = {**os.environ, "CELLSYNTH_THREADS": os.environ.get("CELLSYNTH_THREADS", "1")}


def _cellsynth(args: list[str], out: str, err: str) -> None:  # in the child
    # Ctrl-C as in a fresh process: the fork server hands its children the SIGINT disposition
    # it found when it started, and one started while SIGINT was ignored or blocked in the
    # test worker (seen in full-suite runs under xdist) made every Ctrl-C a no-op (exit 0)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for fd, path in ((1, out), (2, err)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_TRUNC), fd)
    os.environ.clear()
    os.environ.update(ENV)
    from cellsynth.cli import main

    sys.exit(main(args))


class _Command:
    """`cellsynth ARGS` running in a process of its own (the subprocess.Popen calls used here)."""

    def __init__(self, args: list[str]):
        self.out, self.err = (tempfile.mkstemp(prefix="cellsynth-", suffix=f".{name}")[1]
                              for name in ("out", "err"))
        self.process = _SERVER.Process(target=_cellsynth, args=(args, self.out, self.err))
        self.process.start()

    def poll(self) -> int | None:
        return self.process.exitcode

    def send_signal(self, sig: int) -> None:
        os.kill(self.process.pid, sig)

    def wait(self, timeout: float) -> int:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired("cellsynth", timeout)
        return self.process.exitcode

    def communicate(self) -> tuple[str, str]:
        texts = tuple(Path(path).read_text() for path in (self.out, self.err))
        for path in (self.out, self.err):
            os.unlink(path)
        return texts


def _start(args: list[str]) -> _Command:
    return _Command(args)


def _signal_when(process: _Command, ready, sig: int, timeout: float = 120.0) -> int:
    """Send ``sig`` once ``ready()``; return the exit code."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, process.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "the command never got far enough"
        time.sleep(0.05)
    process.send_signal(sig)
    return process.wait(timeout=120)


def _kill_when(process: _Command, ready) -> None:
    assert _signal_when(process, ready, signal.SIGKILL) == -signal.SIGKILL


def _interrupt_when(process: _Command, ready, said: str) -> list[str]:
    """Ctrl-C: exit 130, no traceback, ``said`` the last line; return stderr's lines."""
    assert _signal_when(process, ready, signal.SIGINT) == 130
    err = process.communicate()[1]
    assert "Traceback" not in err and err.strip().splitlines()[-1] == said, err
    return err.strip().splitlines()


def _run(args: list[str]) -> subprocess.CompletedProcess:
    command = _Command(args)
    code = command.wait(timeout=300)
    return subprocess.CompletedProcess(args, code, *command.communicate())


def _losses(run: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in map(json.loads, (run / "log.jsonl").read_text()
                                              .splitlines()) if "loss" in e}


def _assert_resumed_like_full(full: Path, resumed: Path, *, steps: int) -> None:
    """Every step logged once, each loss as the uninterrupted run's."""
    expected, found = _losses(full), _losses(resumed)
    assert sorted(found) == list(range(1, steps + 1))
    for step in found:
        assert found[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-5), step


def test_train_killed_with_sigkill_resumes_exactly(tmp_path):
    # every run in a fresh process: torch's arithmetic differs slightly between a process
    # that has run other tests and a new one, and exactness is what is tested here
    sim = tmp_path / "sim"
    write_simulation(preset("fluo"), n=3, size=64, seed=0, out=sim, progress=False)
    config = tmp_path / "train.yaml"
    config.write_text("steps: 6\ncrop: 64\nbatch: 1\nsamples: 32\norder: 4\n"
                      "refinement_iterations: 1\ncheckpoint_every: 1\nprecision: fp32\n")
    args = ["train", "--data", str(sim), "--config", str(config), "--quiet"]
    killed = tmp_path / "killed"
    process = _start(args + ["--out", str(killed)])
    reference = _start(args + ["--out", str(tmp_path / "full")])  # meanwhile, uninterrupted
    _kill_when(process, lambda: (killed / "log.jsonl").exists()
               and len(_losses(killed)) >= 3)
    result = _run(args + ["--out", str(killed), "--resume"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert reference.wait(timeout=300) == 0, reference.communicate()[1][-2000:]
    _assert_resumed_like_full(tmp_path / "full", killed, steps=6)


def test_simulate_killed_with_sigkill_starts_again_and_cleans_up(tmp_path):
    # 120 images (~2 s at full speed): a loaded machine can delay the test's signal by a
    # second, and 40 images were then all written before the Ctrl-C arrived (exit 0)
    args = ["simulate", "--preset", "nissl", "--n", "120", "--size", "192", "--workers", "2",
            "--seed", "3", "--quiet"]
    assert _run(args + ["--out", str(tmp_path / "reference")]).returncode == 0
    out = tmp_path / "sim"
    process = _start(args + ["--out", str(out)])

    def some_images_written() -> bool:
        staged = list(tmp_path.glob(".sim*.*.tmp/images/*.png"))
        return len(staged) >= 5

    _kill_when(process, some_images_written)
    assert list(tmp_path.glob(".sim.*.tmp")) and not out.exists()  # what the kill left
    result = _run(args + ["--out", str(out)])  # no --force needed: nothing was published
    assert result.returncode == 0, result.stderr[-2000:]
    assert not list(tmp_path.glob(".sim.*.tmp"))  # the dead run's staging is gone
    reference = tmp_path / "reference"
    for file in sorted((reference / "images").iterdir()):
        assert (out / "images" / file.name).read_bytes() == file.read_bytes()

    # Ctrl-C: the staging folder goes at once, and a plain rerun writes the same images
    out = tmp_path / "sim2"
    _interrupt_when(_start(args + ["--out", str(out)]), some_images_written,
                    "cellsynth simulate: interrupted")
    assert not list(tmp_path.glob(".sim*.tmp")) and not out.exists()
    assert _run(args + ["--out", str(out)]).returncode == 0
    for file in sorted((reference / "images").iterdir()):
        assert (out / "images" / file.name).read_bytes() == file.read_bytes()


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (needs root and mount rights; skipped elsewhere)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_full_disk_is_one_line_and_leaves_nothing_behind(small_disk, tmp_path):
    out = small_disk / "sim"
    result = _run(["simulate", "--preset", "nissl", "--n", "30", "--size", "256", "--out",
                   str(out), "--quiet"])
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0]
    assert lines[0].startswith("cellsynth simulate: error: ") and "Traceback" not in result.stderr
    assert not out.exists() and not list(small_disk.glob(".sim.*"))


def _refiner_losses(run: Path) -> dict[int, dict]:
    return {e["step"]: {k: v for k, v in e.items() if k not in ("step", "seconds")}
            for e in map(json.loads, (run / "log.jsonl").read_text().splitlines())}


def test_fit_refiner_and_generate_killed_with_sigkill(tmp_path):
    """fit-refiner resumes exactly; generate, killed, leaves nothing and a plain rerun writes
    what an uninterrupted one writes."""
    sim = tmp_path / "sim"
    write_simulation(preset("fluo"), n=6, size=64, seed=0, out=sim, progress=False)
    config = tmp_path / "refine.yaml"
    config.write_text("steps: 8\ncrop: 32\nbatch: 2\nwidth: 8\nblocks: 1\nspade_hidden: 8\n"
                      "d_width: 8\nd_layers: 2\nd_scales: 1\nsample_every: 100\n"
                      "checkpoint_every: 2\nlog_every: 1\nprecision: fp32\n")
    args = ["fit-refiner", "--sim", str(sim), "--real", str(sim), "--config", str(config),
            "--quiet"]
    killed = tmp_path / "killed"
    process = _start(args + ["--out", str(killed)])
    reference = _start(args + ["--out", str(tmp_path / "full")])
    _kill_when(process, lambda: (killed / "log.jsonl").exists()
               and len((killed / "log.jsonl").read_text().splitlines()) >= 3)
    result = _run(args + ["--out", str(killed), "--resume"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert reference.wait(timeout=300) == 0, reference.communicate()[1][-2000:]
    full, resumed = _refiner_losses(tmp_path / "full"), _refiner_losses(killed)
    assert sorted(resumed) == list(range(1, 9))
    for step in range(1, 9):
        assert resumed[step] == pytest.approx(full[step], rel=1e-5, abs=1e-6), step

    many = tmp_path / "many"
    write_simulation(preset("fluo"), n=480, size=64, seed=1, out=many, progress=False)
    gen = ["generate", "--refiner", str(killed), "--sim", str(many), "--batch", "1",
           "--precision", "fp32", "--quiet"]
    out = tmp_path / "refined"
    process = _start(gen + ["--out", str(out)])
    reference = _start(gen + ["--out", str(tmp_path / "refined_full")])
    _kill_when(process, lambda: len(list(tmp_path.glob(".refined.*.tmp/images/*.png"))) >= 3)
    assert not out.exists()
    result = _run(gen + ["--out", str(out)])
    assert result.returncode == 0, result.stderr[-2000:]
    assert reference.wait(timeout=300) == 0
    assert not list(tmp_path.glob(".refined.*.tmp"))
    for file in sorted((tmp_path / "refined_full" / "images").iterdir()):
        assert (out / "images" / file.name).read_bytes() == file.read_bytes()

    # Ctrl-C: nothing left, and a plain rerun writes the same; signalled at the first image of
    # 480, so that a loaded machine cannot let the test sleep while generate finishes them all
    # (with 120 it did, under three busy processes)
    out = tmp_path / "refined2"
    _interrupt_when(_start(gen + ["--out", str(out)]),
                    lambda: len(list(tmp_path.glob(".refined2.*.tmp/images/*.png"))) >= 1,
                    "cellsynth generate: interrupted")
    assert not list(tmp_path.glob(".refined2.*.tmp")) and not out.exists()
    assert _run(gen + ["--out", str(out)]).returncode == 0
    for file in sorted((tmp_path / "refined_full" / "images").iterdir()):
        assert (out / "images" / file.name).read_bytes() == file.read_bytes()


def test_run_killed_with_sigkill_skips_what_is_done_and_resumes_the_rest(tmp_path):
    from tests.conftest import make_dataset

    real = make_dataset(tmp_path / "real", n=2, size=64, labels=False)
    config = tmp_path / "run.yaml"
    config.write_text(f"""seed: 0
simulate: {{preset: fluo, n: 4, size: 64, workers: 1}}
real: {{unlabeled: {real}}}
refine: {{steps: 2, crop: 32, batch: 2, width: 8, blocks: 1, spade_hidden: 8, d_width: 8,
          d_layers: 2, d_scales: 1, sample_every: 2, checkpoint_every: 1, log_every: 1,
          precision: fp32}}
pretrain: {{steps: 8, crop: 64, batch: 1, samples: 32, order: 4, refinement_iterations: 1,
            checkpoint_every: 1, precision: fp32}}
predict: {{tile: 64, overlap: 16}}
realism: {{enabled: false}}
""")
    out = tmp_path / "run"
    process = _start(["run", str(config), "--out", str(out), "--quiet"])
    reference = _start(["run", str(config), "--out", str(tmp_path / "full"), "--quiet"])
    log = out / "pretrain" / "log.jsonl"
    _kill_when(process, lambda: log.exists() and len(_losses(out / "pretrain")) >= 3)
    result = _run(["run", str(config), "--out", str(out), "--quiet"])
    assert result.returncode == 0, result.stderr[-2000:]
    said = result.stdout.splitlines()
    done = ("simulate", "simulate_val", "refiner", "refined", "refined_val")
    assert said[:6] == [f"[{s}] up to date, skipped" for s in done] + ["[pretrain] resuming"]
    assert reference.wait(timeout=300) == 0
    _assert_resumed_like_full(tmp_path / "full" / "pretrain", out / "pretrain", steps=8)
    assert (out / "report.html").is_file() and len(list((out / "predict" / "labels")
                                                        .glob("*.tif"))) == 2

    # Ctrl-C during pretraining: the step it finished is checkpointed, the rerun resumes there
    out = tmp_path / "run2"
    log = out / "pretrain" / "log.jsonl"
    said = _interrupt_when(_start(["run", str(config), "--out", str(out), "--quiet"]),
                           lambda: log.exists() and len(_losses(out / "pretrain")) >= 3,
                           "cellsynth run: interrupted; the same command continues")
    stopped = torch.load(out / "pretrain" / "last.pt", weights_only=False)["step"]
    assert stopped == max(_losses(out / "pretrain")) and 3 <= stopped < 8
    assert f"cellsynth run: stopped by SIGINT at step {stopped}; checkpoint saved" in said
    result = _run(["run", str(config), "--out", str(out), "--quiet"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[pretrain] resuming" in result.stdout.splitlines()
    _assert_resumed_like_full(tmp_path / "full" / "pretrain", out / "pretrain", steps=8)


def _section_predict(tmp_path: Path, detector: Path) -> list[str]:
    """`predict` arguments (no --out) for tmp_path/section/s.tif, a 288² simulated image
    cut into 128² tiles: several rows, so a stop can land after the first."""
    from cellsynth.io.images import read_image, write_image

    write_simulation(preset("fluo"), n=1, size=288, seed=5, out=tmp_path / "big",
                     progress=False)
    section = tmp_path / "section"
    section.mkdir()
    write_image(section / "s.tif", read_image(tmp_path / "big" / "images" / "0000.png"))
    return ["predict", "--detector", str(detector), "--images", str(section), "--tile", "128",
            "--overlap", "32", "--batch", "2", "--score-thresh", "0.5", "--precision", "fp32"]


def test_predict_killed_with_sigkill_resumes_at_the_rows_it_finished(tmp_path,
                                                                     trained_detector):
    from cellsynth.io.images import read_labels

    args = _section_predict(tmp_path, trained_detector[0])
    out = tmp_path / "out"
    process = _start(args + ["--out", str(out), "--quiet"])
    reference = _start(args + ["--out", str(tmp_path / "full"), "--quiet"])
    cache = tmp_path / ".out.proposals" / "s"
    _kill_when(process, lambda: len(list(cache.glob("row*.npz"))) >= 1)
    done = len(list(cache.glob("row*.npz")))
    result = _run(args + ["--out", str(out)])  # no --force: nothing was published
    assert result.returncode == 0, result.stderr[-2000:]
    said = f"s.tif: {done} rows of tiles already predicted"
    assert said in result.stderr, result.stderr[-2000:]
    assert reference.wait(timeout=300) == 0, reference.communicate()[1][-2000:]
    labels = read_labels(out / "labels" / "s.tif")
    assert labels.max() >= 3, "the tiny detector should find some cells"
    assert (labels == read_labels(tmp_path / "full" / "labels" / "s.tif")).all()
    assert not (tmp_path / ".out.proposals").exists()  # published: the rows are gone


def test_predict_stopped_with_sigterm_says_so_and_continues(tmp_path, trained_detector):
    """SIGTERM (kill, a scheduler's stop) ended predict at once and silently (143), where
    Ctrl-C and a training loop say what happened: it is now an interrupt, one line saying
    the same command continues, which it does."""
    args = _section_predict(tmp_path, trained_detector[0]) + ["--out", str(tmp_path / "out")]
    process = _start(args + ["--quiet"])
    cache = tmp_path / ".out.proposals" / "s"
    code = _signal_when(process, lambda: len(list(cache.glob("row*.npz"))) >= 1,
                        signal.SIGTERM)
    err = process.communicate()[1]
    assert code == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == ("cellsynth predict: interrupted; the same command "
                                            "continues (finished rows of tiles are kept)")
    result = _run(args)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rows of tiles already predicted" in result.stderr


def test_predict_parts_in_processes_at_once_give_the_labels_of_one(tmp_path, trained_detector):
    """`predict --part I/N` in two processes at once (a cluster's array jobs): each predicts
    its own rows of tiles into the cache beside --out and writes no output; the same command
    without --part then predicts no tile and writes the labels one process alone gives.
    A part without a number it can be is one line."""
    import numpy as np

    from cellsynth.io.images import read_labels

    args = _section_predict(tmp_path, trained_detector[0])
    out = tmp_path / "out"
    reference = _start(args + ["--out", str(tmp_path / "alone"), "--quiet"])
    parts = [_start(args + ["--out", str(out), "--part", f"{i}/2"])
             for i in (1, 2)]
    for i, part in enumerate(parts):
        code, err = part.wait(timeout=300), part.communicate()[1]
        assert code == 0, err[-2000:]
        assert f"part {i + 1} of 2 done (" in err and "without --part writes" in err, err
    assert not out.exists()
    rows = sorted(p.name for p in (tmp_path / ".out.proposals" / "s").glob("row*.npz"))
    assert rows == ["row00000.npz", "row00001.npz", "row00002.npz"]  # 288 px, tiles of 128
    result = _run(args + ["--out", str(out)])
    assert result.returncode == 0, result.stderr[-2000:]
    tiles = json.loads((out / "meta.json").read_text())["images_pixel_size_um"]["s"]["tiles"]
    assert tiles["predicted"] == 0 and tiles["stored"] == 9
    # (its speed is not the parts' work over its own seconds; "1 image", not "1 images")
    assert re.search(r"cells in 1 image \(nothing left to predict; 100% of the tiles were "
                     r"predicted before\) ->", result.stdout), result.stdout
    assert reference.wait(timeout=300) == 0, reference.communicate()[1][-2000:]
    labels = read_labels(out / "labels" / "s.tif")
    assert labels.max() >= 3, "the tiny detector should find some cells"
    assert np.array_equal(labels, read_labels(tmp_path / "alone" / "labels" / "s.tif"))
    assert not (tmp_path / ".out.proposals").exists()
    bad = _run(args + ["--out", str(tmp_path / "x"), "--part", "3/2"])
    assert bad.returncode == 2 and "expected I/N with 1 <= I <= N" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_rows_of_a_replaced_checkpoint_are_not_reused(tmp_path, trained_detector):
    """Rows predicted by a part (or a stopped run) were reused after the detector in the same
    folder was trained again (`train --force`: same path, same step), mixing two models'
    cells with a note saying it continued; the checkpoint's size and time are in the key."""
    import shutil

    import numpy as np
    import torch

    from cellsynth.io.images import read_labels

    run = shutil.copytree(trained_detector[0], tmp_path / "det")
    args = _section_predict(tmp_path, run)
    out = tmp_path / "out"
    part = _run(args + ["--out", str(out), "--part", "1/2"])
    assert part.returncode == 0, part.stderr[-2000:]
    checkpoint = run / ("best.pt" if (run / "best.pt").is_file() else "last.pt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    generator = torch.Generator().manual_seed(0)
    for value in state["model"].values():  # another model of the same step
        if value.is_floating_point() and value.ndim == 4:
            value += 0.2 * value.std() * torch.randn(value.shape, generator=generator)
    torch.save(state, checkpoint)
    resumed = _run(args + ["--out", str(out)])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "already predicted" not in resumed.stderr
    fresh = _run(args + ["--out", str(tmp_path / "fresh")])
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    tiles = json.loads((out / "meta.json").read_text())["images_pixel_size_um"]["s"]["tiles"]
    assert tiles["stored"] == 0 and tiles["predicted"] == 9
    assert np.array_equal(read_labels(out / "labels" / "s.tif"),
                          read_labels(tmp_path / "fresh" / "labels" / "s.tif"))


def test_predict_parts_with_tta_split_every_views_rows(tmp_path, trained_detector):
    """With test-time augmentation each of the 8 views has its own rows of tiles: parts
    split every view's, and the final call predicts none and paints what one call does."""
    import numpy as np

    from cellsynth.io.images import read_labels
    from cellsynth.segment.folders import predict_folder

    args = _section_predict(tmp_path, trained_detector[0])
    images = Path(args[args.index("--images") + 1])
    options = dict(tile=128, overlap=32, batch=2, score_thresh=0.5, precision="fp32",
                   tta=True, progress=False)
    predict_folder(trained_detector[0], images, tmp_path / "alone", **options)
    for i in range(3):
        summary = predict_folder(trained_detector[0], images, tmp_path / "out", part=(i, 3),
                                 **options)
        assert summary["predicted"] + summary["blank"] == 8 * 3  # 8 views x its row of 3
    cache = tmp_path / ".out.proposals"
    assert len(list(cache.glob("s.tta*/row*.npz"))) == 8 * 3 and not (tmp_path / "out").exists()
    predict_folder(trained_detector[0], images, tmp_path / "out", **options)
    tiles = json.loads((tmp_path / "out" / "meta.json").read_text())[
        "images_pixel_size_um"]["s"]["tiles"]
    assert tiles["predicted"] == 0 and tiles["stored"] == 8 * 9
    assert np.array_equal(read_labels(tmp_path / "out" / "labels" / "s.tif"),
                          read_labels(tmp_path / "alone" / "labels" / "s.tif"))
