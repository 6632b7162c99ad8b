"""cellsynth run --estimate: steps x measured step time, validations and prediction over the
images' tiles at the working pixel size, done stages 0, nothing written."""

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cellsynth.io.images import read_image, write_image, write_labels
from cellsynth.pipeline import layout
from cellsynth.pipeline.config import PipelineConfig, PredictOptions, RealData, SimulateOptions
from cellsynth.pipeline.estimate import Timer, estimate, format_estimate, tiled_pixels
from cellsynth.pipeline.run import RunState, stage_fingerprints
from cellsynth.pipeline.stages import plan
from cellsynth.refine.config import RefineConfig
from cellsynth.segment.trainer import TrainConfig


class FakeTimer:
    """Known costs: what the estimate does with them is the thing under test."""

    def detector_step(self, config, channels):
        # a tiny_u22, or 128 px crops (what tells fine-tuning from pretraining here: they
        # share one network), 0.5 s; else 2.0 s
        return 0.5 if config.model == "tiny_u22" or config.crop == 128 else 2.0

    def detector_forward_per_mpx(self, config, channels):
        return {"int8": 4.0, "bf16": 5.0}.get(config.precision, 10.0)

    def refiner_step(self, config, channels):
        return 0.25

    def judge_training(self, config, channels):
        return 30.0

    def refiner_images(self, config, channels, size):
        return 0.125 * (size / 128) ** 2

    def detector_load(self, config, channels):
        return 0.0

    def prediction_writes(self, height, width, channels):
        return 0.0

    def tta_merge(self, height, width):
        return 0.0

    def fit_images(self, base, side, radii, seed=0):
        return 0.0, 0.0


class CostlyTimer(FakeTimer):
    """What prediction and the simulator fit spend besides the network's forward pass."""

    def detector_load(self, config, channels):
        return 3.0

    def prediction_writes(self, height, width, channels):
        return 2.0 * height * width / 1e6  # 2 s per megapixel

    def tta_merge(self, height, width):
        return 0.5 * height * width / 1e6  # 0.5 s per megapixel of model pixels

    def fit_images(self, base, side, radii, seed=0):
        return 0.5 * (side / 128) ** 2, 0.25 * (side / 128) ** 2  # render, measure


def _folder(root: Path, shapes: list[tuple[int, int]], *, labels: bool = False) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir(exist_ok=True)
    for i, shape in enumerate(shapes):
        write_image(root / "images" / f"im{i}.png", np.zeros(shape, np.uint8))
        if labels:
            mask = np.zeros(shape, np.uint16)
            mask[10:20, 10:20] = 1
            write_labels(root / "labels" / f"im{i}.tif", mask)
    return root


def test_tiled_pixels_count_the_overlap_and_small_images_once():
    # 600 px with tiles of 512 and overlap 96: tiles at 0 and 88, two per axis
    assert tiled_pixels(600, 600, 512, 96) == 4 * 512 * 512
    assert tiled_pixels(300, 400, 512, 96) == 300 * 400
    assert tiled_pixels(512, 1000, 512, 96) == 512 * 3 * 512  # x tiles at 0, 416, 488


def _config(tmp_path: Path, **kw) -> PipelineConfig:
    unlabeled = _folder(tmp_path / "unlabeled", [(600, 600)])
    val = _folder(tmp_path / "val", [(600, 600), (300, 400)], labels=True)
    test = _folder(tmp_path / "test", [(256, 256)], labels=True)
    return PipelineConfig(
        simulate=SimulateOptions(preset="fluo", n=4, size=128, workers=1),
        real=RealData(unlabeled=str(unlabeled), train=str(val), val=str(val), test=str(test)),
        refine=RefineConfig(steps=1000, consistency=1.0),
        pretrain=TrainConfig(steps=250, val_every=100),
        finetune=TrainConfig(steps=100, val_every=50, crop=128),
        predict=PredictOptions(tile=512, overlap=96, tta=True), **kw)


def test_estimate_multiplies_steps_validations_and_views(tmp_path):
    config = _config(tmp_path)
    by_stage = {e.stage: e for e in estimate(config, timer=FakeTimer(), channels=1)}
    val_mpx = (4 * 512 * 512 + 300 * 400) / 1e6
    assert by_stage[layout.REFINER].seconds == pytest.approx(1000 * 0.25 + 30.0)
    # 250 steps validated at 100, 200 and 250
    assert by_stage[layout.PRETRAIN].seconds == pytest.approx(250 * 2.0 + 3 * val_mpx * 10.0)
    assert by_stage[layout.FINETUNE].seconds == pytest.approx(100 * 0.5 + 2 * val_mpx * 10.0)
    # 8 views (tta) of the one 256² test image
    assert by_stage[layout.PREDICT].seconds == pytest.approx(8 * 256 * 256 / 1e6 * 10.0)
    # the 4 simulated images of 128² refined; real.val is annotated, so no synthetic
    # validation images are simulated or refined
    assert by_stage[layout.REFINED].seconds == pytest.approx(4 * 0.125)
    assert layout.REFINED_VAL not in by_stage
    assert by_stage[layout.SIMULATE].seconds is None  # cheap stages are not timed
    text = format_estimate(list(by_stage.values()), machine="test CPU")
    total = (1000 * 0.25 + 30 + 4 * 0.125 + 250 * 2 + 3 * val_mpx * 10 + 100 * 0.5
             + 2 * val_mpx * 10 + 8 * 256 * 256 / 1e6 * 10)
    assert text.splitlines()[-1].split()[1:3] == [f"{total / 60:.1f}", "min"]


def test_sizing_two_channel_images_says_nothing_about_their_channels(tmp_path):
    """--estimate only sizes the images: on 2-channel TIFFs with real.channel 1 it warned
    'using channel 0' for each, although the run itself uses channel 1."""
    import warnings

    import tifffile

    config = _config(tmp_path)
    for role in ("train", "test"):
        folder = Path(getattr(config.real, role)) / "images"
        for path in sorted(folder.iterdir()):
            image = read_image(path)
            path.unlink()
            tifffile.imwrite(folder / f"{path.stem}.tif", np.stack([image, image]),
                             imagej=True, metadata={"axes": "CYX"})
    config = replace(config, real=replace(config.real, channel=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        by_stage = {e.stage: e for e in estimate(config, timer=FakeTimer(), channels=1)}
    assert by_stage[layout.PREDICT].seconds == pytest.approx(8 * 256 * 256 / 1e6 * 10.0)


def test_estimate_works_at_the_working_pixel_size(tmp_path):
    # real images at 0.5 um/px, the simulation at 1.0: the detectors see them half as wide
    config = _config(tmp_path)
    config = replace(config, real=replace(config.real, pixel_size_um=0.5),
                     simulate=replace(config.simulate, pixel_size_um=1.0))
    by_stage = {e.stage: e for e in estimate(config, timer=FakeTimer(), channels=1)}
    assert by_stage[layout.PREDICT].seconds == pytest.approx(8 * 128 * 128 / 1e6 * 10.0)


def test_prediction_is_priced_over_the_tiles_predict_cuts(tmp_path):
    config = _config(tmp_path)
    big = _folder(tmp_path / "big", [(1100, 1100)], labels=True)
    config = replace(config, real=replace(config.real, test=str(big)))
    # the default tile, 1024, balanced for 1100 px with 96 overlap: 2 tiles of 608 per axis
    # (ceil(1004 / 2) + 96 = 598, rounded up to a multiple of 32)
    for tile, side in ((None, 2 * 608), (512, 3 * 448)):  # 512: 3 x (335 + 96 -> 448)
        options = replace(config.predict, tile=tile)
        by_stage = {e.stage: e for e in estimate(replace(config, predict=options),
                                                 timer=FakeTimer(), channels=1)}
        assert by_stage[layout.PREDICT].seconds == pytest.approx(8 * side * side / 1e6 * 10.0)


def test_prediction_is_priced_at_the_precision_predict_uses(tmp_path):
    config = _config(tmp_path)
    mpx = 256 * 256 / 1e6
    for precision, forward in (("bf16", 5.0), ("auto", 10.0)):
        options = replace(config.predict, precision=precision)
        by_stage = {e.stage: e for e in estimate(replace(config, predict=options),
                                                 timer=FakeTimer(), channels=1)}
        assert by_stage[layout.PREDICT].seconds == pytest.approx(8 * mpx * forward)
    # int8: its forward, plus the calibration windows (here the one 256² image, smaller
    # than 4 windows) forwarded twice in fp32 and once in int8
    options = replace(config.predict, precision="int8")
    by_stage = {e.stage: e for e in estimate(replace(config, predict=options),
                                             timer=FakeTimer(), channels=1)}
    assert by_stage[layout.PREDICT].seconds == pytest.approx(8 * mpx * 4.0
                                                             + mpx * (2 * 10.0 + 4.0))
    assert "int8" in by_stage[layout.PREDICT].detail


def test_done_stages_count_zero(tmp_path):
    config = _config(tmp_path)
    out = tmp_path / "run"
    out.mkdir()
    fingerprints = stage_fingerprints(config, plan(config))
    RunState(out).mark(layout.REFINER, fingerprints[layout.REFINER], done=True)
    RunState(out).mark(layout.PRETRAIN, fingerprints[layout.PRETRAIN], done=False)
    by_stage = {e.stage: e for e in estimate(config, out, timer=FakeTimer(), channels=1)}
    assert by_stage[layout.REFINER].seconds == 0.0
    assert by_stage[layout.PRETRAIN].seconds > 0  # interrupted: its steps are still ahead
    # stopped at a quarter of its steps: run resumes there, so a quarter is priced less (it
    # priced the whole stage again; audit); a line cut by the kill is passed over
    whole = by_stage[layout.PRETRAIN].seconds
    quarter = config.pretrain.steps // 4
    (out / layout.PRETRAIN).mkdir()
    (out / layout.PRETRAIN / layout.LOG).write_text(
        "".join(f'{{"step": {i}, "loss": 1.0}}\n' for i in range(1, quarter + 1))
        + '{"step": 99')
    by_stage = {e.stage: e for e in estimate(config, out, timer=FakeTimer(), channels=1)}
    left = (config.pretrain.steps - quarter) / config.pretrain.steps
    assert by_stage[layout.PRETRAIN].seconds == pytest.approx(whole * left)
    assert f"resumed at step {quarter}, {left:.0%} left" in by_stage[layout.PRETRAIN].detail
    # another refiner config: its done entry no longer counts
    changed = replace(config, refine=replace(config.refine, steps=10))
    by_stage = {e.stage: e for e in estimate(changed, out, timer=FakeTimer(), channels=1)}
    assert by_stage[layout.REFINER].seconds == pytest.approx(10 * 0.25 + 30.0)


def test_the_real_timer_times_a_tiny_detector_and_caches_it(monkeypatch):
    timer = Timer(warmup=1, steps=1)
    config = TrainConfig(model="tiny_u22", crop=64, batch=1, samples=16, order=3,
                         refinement_iterations=1, precision="fp32")
    first = timer.detector_step(config, 1)
    assert 0 < first < 60
    assert timer.detector_step(config, 1) == first  # measured once per shape
    # batch workers take the crops and targets out of the step (timed apart, not again)
    assert 0 < timer.detector_step(replace(config, workers=2), 1) < first
    fp32 = timer.detector_forward_per_mpx(config, 1)
    assert math.isfinite(fp32)
    # int8 is timed as predict --precision int8 runs it: a quantised core
    from cellsynth.segment import quantize
    quantized = []
    real = quantize.quantize_core
    monkeypatch.setattr(quantize, "quantize_core",
                        lambda model, images: quantized.append(images) or real(model, images))
    int8 = timer.detector_forward_per_mpx(replace(config, precision="int8"), 1)
    assert math.isfinite(int8) and len(quantized) == 1
    # what prediction and the simulator fit spend besides the network
    assert 0 < timer.detector_load(config, 1) < 60
    assert 0 < timer.prediction_writes(64, 80, 1) < 60
    merge = timer.tta_merge(64, 80)
    assert 0 < merge < 60 and timer.tta_merge(64, 80) == merge  # measured once per shape
    # a section larger than the timed side is priced by its pixels
    from cellsynth.pipeline import timing
    monkeypatch.setattr(timing, "_WRITES_SIDE", 64)
    assert timer.tta_merge(256, 128) == pytest.approx(8 * timer.tta_merge(64, 64))
    from cellsynth.simulate import preset
    from cellsynth.simulate.fit import search_plan

    base = preset("fluo")
    render, measure = timer.fit_images(base, 128, search_plan([(128, 128)], base).radii)
    assert render > 0 and measure > 0


def test_cli_estimate_prints_the_stages_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from cellsynth import cli
    from cellsynth.pipeline import estimate as estimate_module

    monkeypatch.setattr(estimate_module, "Timer", lambda *a, **k: FakeTimer())
    real = _config(tmp_path).real
    path = tmp_path / "config.yaml"
    path.write_text(f"""
simulate: {{preset: fluo, n: 4, size: 128, workers: 1}}
real: {{unlabeled: {real.unlabeled}, train: {real.train}, val: {real.val}, test: {real.test}}}
refine: {{steps: 1000, consistency: 1.0}}
pretrain: {{steps: 250, val_every: 100}}
finetune: {{steps: 100, val_every: 50, crop: 128}}
predict: {{tile: 512, overlap: 96, tta: true}}
""")
    out = tmp_path / "run"
    assert cli.main(["run", str(path), "--out", str(out), "--estimate"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("estimated on this machine (cpu: ")
    val_mpx = (4 * 512 * 512 + 300 * 400) / 1e6
    pretrain = f"{(250 * 2.0 + 3 * val_mpx * 10.0) / 60:.1f}"
    assert any(line.split()[:3] == ["pretrain", pretrain, "min"] for line in lines), lines
    assert not out.exists()


def test_a_soups_runs_are_priced_side_by_side_at_their_share_of_the_threads(tmp_path,
                                                                           monkeypatch):
    """soup 5 on 2 threads: its 4 further fine-tunings run 2 at a time on 1 thread each, so
    2 rounds of a run timed at 1 thread; with --threads 1 the 4 in turn, on 1 thread."""
    import torch

    class ThreadTimer(FakeTimer):
        def detector_step(self, config, channels):  # 1 thread: 0.8 s, 2 threads: 0.5 s
            return 0.8 if torch.get_num_threads() == 1 else 0.5

    config = _config(tmp_path, soup=5)
    val_mpx = (4 * 512 * 512 + 300 * 400) / 1e6
    one_run = {1: 100 * 0.8 + 2 * val_mpx * 10.0}
    before = torch.get_num_threads()
    monkeypatch.setenv("CELLSYNTH_THREADS", "2")
    runs = {e.stage: e for e in estimate(config, timer=ThreadTimer(), channels=1)}[
        layout.FINETUNE_RUNS]
    assert runs.seconds == pytest.approx(2 * one_run[1])
    assert runs.detail.endswith("2 at a time on 1 thread(s) each")
    assert torch.get_num_threads() == before  # (the timing's thread count is undone)
    monkeypatch.setenv("CELLSYNTH_THREADS", "1")
    torch.set_num_threads(2)  # (what the process has does not decide: the policy does)
    try:
        runs = {e.stage: e for e in estimate(config, timer=ThreadTimer(), channels=1)}[
            layout.FINETUNE_RUNS]
    finally:
        torch.set_num_threads(before)
    assert runs.seconds == pytest.approx(4 * one_run[1])
    assert runs.detail.startswith("4 x (") and "at a time" not in runs.detail


def test_pretraining_validated_on_the_simulation_is_priced_over_those_images(tmp_path):
    """`pretrain_val: synthetic` (the recipe's): pretraining validates on the held-out
    simulated images, fine-tuning on the annotated ones; each is priced over its own."""
    config = _config(tmp_path, pretrain_val="synthetic")
    by_stage = {e.stage: e for e in estimate(config, timer=FakeTimer(), channels=1)}
    synthetic = config.simulate.n_val * 128 * 128 / 1e6
    real = (4 * 512 * 512 + 300 * 400) / 1e6
    assert by_stage[layout.PRETRAIN].seconds == pytest.approx(250 * 2.0 + 3 * synthetic * 10)
    assert f"3 validations over {synthetic:.2f} MP" in by_stage[layout.PRETRAIN].detail
    assert by_stage[layout.FINETUNE].seconds == pytest.approx(100 * 0.5 + 2 * real * 10.0)


def test_the_simulator_fit_is_priced_by_its_batches_of_simulated_images(tmp_path):
    """simulate.fit_from: the fit simulates and measures batches of images at the side the
    real images set (search_plan), measures the real images once and renders a preview."""
    from cellsynth.simulate import preset
    from cellsynth.simulate.fit import search_plan

    config = _config(tmp_path)
    config = replace(config, simulate=replace(config.simulate, fit_from="real.unlabeled"))
    fit = {e.stage: e for e in estimate(config, timer=CostlyTimer(), channels=1)}[layout.FIT]
    plan = search_plan([(600, 600)], preset("fluo"))  # (at the preset's pixel size)
    each = 0.75 * (plan.side / 128) ** 2
    assert fit.seconds is not None and "not timed" not in fit.detail
    # batches x images, plus the real image measured and the preview: more, not much more
    assert plan.batches * plan.n_sim * each < fit.seconds < (plan.batches + 1) * plan.n_sim \
        * each
    # twice the real images to measure: more time
    more = _folder(tmp_path / "more", [(600, 600)] * 2)
    config = replace(config, real=replace(config.real, unlabeled=str(more)))
    assert {e.stage: e for e in estimate(config, timer=CostlyTimer(), channels=1)}[
        layout.FIT].seconds > fit.seconds


def test_prediction_is_priced_with_its_load_and_each_images_writes(tmp_path):
    """Predicting: the detector loaded once, each image's tiles forwarded, then each image
    painted and written; where the images were rescaled, forwarded at the working size and
    written once, at their own (it was written at both)."""
    config = _config(tmp_path)
    options = replace(config.predict, tta=False)
    mpx = 256 * 256 / 1e6
    seconds = {}
    for n in (1, 4):
        test = _folder(tmp_path / f"test{n}", [(256, 256)] * n, labels=True)
        by_stage = {e.stage: e for e in estimate(
            replace(config, predict=options, real=replace(config.real, test=str(test))),
            timer=CostlyTimer(), channels=1)}
        seconds[n] = by_stage[layout.PREDICT].seconds
    assert seconds[1] == pytest.approx(3.0 + mpx * 10.0 + mpx * 2.0)
    # each further image adds its writes besides its forward pass, the load is once
    assert seconds[4] - seconds[1] == pytest.approx(3 * (mpx * 10.0 + mpx * 2.0))
    assert "4 image(s) painted and written" in by_stage[layout.PREDICT].detail
    # at 0.5 um/px, simulated at 1.0: forwarded at 128², written at 256²
    rescaled = replace(config, predict=options,
                       real=replace(config.real, pixel_size_um=0.5),
                       simulate=replace(config.simulate, pixel_size_um=1.0))
    small = 128 * 128 / 1e6
    by_stage = {e.stage: e for e in estimate(rescaled, timer=CostlyTimer(), channels=1)}
    assert by_stage[layout.PREDICT].seconds == pytest.approx(3.0 + small * 10.0 + mpx * 2.0)


def test_test_time_augmentation_is_priced_with_the_merge_of_its_views(tmp_path):
    """With tta each image's 8 views are merged into its cells (0.8 of 6.0 s of a 512² Nissl
    image; the estimate left it out), at the working pixel size; without tta nothing is."""
    config = _config(tmp_path)
    mpx = 256 * 256 / 1e6
    seconds = {}
    for tta in (False, True):
        by_stage = {e.stage: e for e in estimate(replace(config, predict=replace(
            config.predict, tta=tta)), timer=CostlyTimer(), channels=1)}
        seconds[tta] = by_stage[layout.PREDICT].seconds
    assert seconds[False] == pytest.approx(3.0 + mpx * 10.0 + mpx * 2.0)
    assert seconds[True] == pytest.approx(3.0 + 8 * mpx * 10.0 + mpx * 0.5 + mpx * 2.0)
    assert "merged" in by_stage[layout.PREDICT].detail
    # at 0.5 um/px, simulated at 1.0: the views are merged at 128², written at 256²
    rescaled = replace(config, real=replace(config.real, pixel_size_um=0.5),
                       simulate=replace(config.simulate, pixel_size_um=1.0))
    small = 128 * 128 / 1e6
    by_stage = {e.stage: e for e in estimate(rescaled, timer=CostlyTimer(), channels=1)}
    assert by_stage[layout.PREDICT].seconds == pytest.approx(
        3.0 + 8 * small * 10.0 + small * 0.5 + mpx * 2.0)
