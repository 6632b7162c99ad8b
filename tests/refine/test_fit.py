import json

import pytest
import torch

from cellsynth.errors import ConfigError, OutputExistsError
from cellsynth.refine import RefineConfig, fit, refine_config
from cellsynth.refine.trainer import new_state, train_step
from tests.conftest import ScriptedThreads


def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_discriminator_loss_decreases_on_a_fixed_batch(tiny):
    state = new_state(RefineConfig(**{**tiny.__dict__, "lr_d": 1e-3}), 1)
    gen = torch.Generator().manual_seed(0)
    sim = torch.rand(2, 1, 32, 32, generator=gen) * 0.4 - 0.9  # dark simulated crops
    labels = torch.randint(0, 3, (2, 32, 32), generator=gen)
    real = torch.rand(2, 1, 32, 32, generator=gen) * 0.4 + 0.5  # bright real crops
    losses = [train_step(state, sim, labels, real)["d"] for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]
    assert state.step == 30


def test_d_steps_updates_the_discriminator_per_chunk_of_real_crops(tiny):
    state = new_state(RefineConfig(**{**tiny.__dict__, "d_steps": 3}), 1)
    gen = torch.Generator().manual_seed(0)
    sim = torch.rand(2, 1, 32, 32, generator=gen) * 2 - 1
    labels = torch.randint(0, 3, (2, 32, 32), generator=gen)
    train_step(state, sim, labels, torch.rand(6, 1, 32, 32, generator=gen))
    assert state.step == 1
    assert all(int(s["step"]) == 3 for s in state.opt_d.state.values())
    assert all(int(s["step"]) == 1 for s in state.opt_g.state.values())
    with pytest.raises(ValueError, match="d_steps=3"):
        train_step(state, sim, labels, torch.rand(4, 1, 32, 32, generator=gen))


def _dim_batches():
    """Fluorescence-like crops: nearly black, real ones a little brighter and noisier."""
    gen = torch.Generator().manual_seed(0)
    sim = -0.95 + 0.01 * torch.rand(4, 1, 32, 32, generator=gen)
    real = -0.93 + 0.03 * torch.rand(4, 1, 32, 32, generator=gen)
    return sim, torch.randint(0, 3, (4, 32, 32), generator=gen), real


def test_input_standardisation_lets_the_discriminator_see_dim_images(tiny):
    config = RefineConfig(**{**tiny.__dict__, "lr_d": 1e-3, "self_reg": 100.0})
    sim, labels, real = _dim_batches()
    final = {}
    for norm in (False, True):
        state = new_state(config, 1)
        if norm:
            state.discriminator.set_input_stats(real)
        final[norm] = [train_step(state, sim, labels, real)["d"] for _ in range(40)][-1]
    assert final[False] > 1.5  # a Lipschitz-1 critic barely separates pixels 0.02 apart
    assert final[True] < 0.5 * final[False]


def test_set_input_stats_standardises_per_channel(tiny):
    D = new_state(tiny, 3).discriminator
    gen = torch.Generator().manual_seed(0)
    real = torch.rand(8, 3, 16, 16, generator=gen) * torch.tensor([0.1, 1.0, 0.0]).view(1, 3, 1, 1)
    D.set_input_stats(real, min_std=0.02)
    z = (real - D.input_shift) / D.input_scale
    assert torch.allclose(z[:, :2].mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-5)
    assert torch.allclose(z[:, :2].std(dim=(0, 2, 3)), torch.ones(2), atol=1e-4)
    assert D.input_scale[0, 2].item() == pytest.approx(0.02)  # flat channel: floored


@pytest.mark.parametrize("norm", [True, False])
def test_fit_sets_the_input_stats_from_real_crops(tiny, sim_dir, real_dir, tmp_path, norm):
    run = tmp_path / "run"
    fit(RefineConfig(**{**tiny.__dict__, "steps": 1, "d_input_norm": norm}), sim_dir,
        real_dir, run, progress=False)
    d = torch.load(run / "last.pt", weights_only=True)["discriminator"]
    # real_dir after normalisation: mean ~-0.5 and std ~0.57 in [-1, 1] units
    assert (d["input_shift"].abs().min() > 0.2) == norm
    assert (d["input_scale"].sub(1).abs().max() > 0.3) == norm


def test_fit_writes_run_folder(tiny, sim_dir, real_dir, tmp_path):
    run = tmp_path / "run"
    summary = fit(tiny, sim_dir, real_dir, run, progress=False)
    assert summary["step"] == 4
    assert [r["step"] for r in _log(run)] == [1, 2, 3, 4]
    assert {"d", "g_adv", "self_reg", "g"} <= set(_log(run)[0])
    assert sorted(p.name for p in (run / "samples").iterdir()) == [
        "step_000002.png", "step_000004.png"]
    assert refine_config(run / "config.yaml") == tiny
    with pytest.raises(OutputExistsError, match="--resume"):
        fit(tiny, sim_dir, real_dir, run, progress=False)


@pytest.mark.parametrize("options", [{}, {"d_steps": 2, "self_reg_normalize": True,
                                                "saturation_margin": 0.05}])
def test_resume_continues_exactly(tiny, sim_dir, real_dir, tmp_path, options):
    tiny = RefineConfig(**{**tiny.__dict__, **options})
    fit(tiny, sim_dir, real_dir, tmp_path / "straight", progress=False)
    short = RefineConfig(**{**tiny.__dict__, "steps": 2})
    fit(short, sim_dir, real_dir, tmp_path / "resumed", progress=False)
    # a killed run may have logged past its checkpoint; resume must drop those lines
    with open(tmp_path / "resumed" / "log.jsonl", "a") as log:
        log.write(json.dumps({"step": 3, "d": 0.0}) + "\n" + '{"step": 4, "d"')
    fit(tiny, sim_dir, real_dir, tmp_path / "resumed", resume=True, progress=False)
    straight, resumed = _log(tmp_path / "straight"), _log(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(straight, resumed):
        for key in ("d", "g_adv", "self_reg", "g"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), (a["step"], key)


def test_run_json_records_the_thread_counts_a_refiner_trained_with(tiny, sim_dir, real_dir,
                                                                   tmp_path, monkeypatch):
    import importlib

    fit_module = importlib.import_module("cellsynth.refine.fit")
    run = tmp_path / "run"
    monkeypatch.setattr(fit_module, "ThreadGovernor", ScriptedThreads)
    monkeypatch.setattr(ScriptedThreads, "plan", {0: 1, 1: 2})
    fit(RefineConfig(**{**tiny.__dict__, "steps": 2}), sim_dir, real_dir, run, progress=False)
    assert json.loads((run / "run.json").read_text())["torch_threads"] == [[0, 1], [1, 2]]
    monkeypatch.setattr(ScriptedThreads, "plan", {0: 1})
    fit(tiny, sim_dir, real_dir, run, resume=True, progress=False)
    assert json.loads((run / "run.json").read_text())["torch_threads"] == [[0, 1], [1, 2], [2, 1]]


def test_the_time_budget_counts_the_runs_a_resume_continues(tiny, sim_dir, real_dir,
                                                             tmp_path):
    """max_minutes is the training time of all runs together: a budget that one step
    exceeds stops after that step, and resuming with the same budget adds no step (it used
    to restart the clock, so a run killed n times trained n + 1 budgets)."""
    run = tmp_path / "run"
    first = fit(tiny, sim_dir, real_dir, run, max_minutes=0.0, progress=False)
    assert first["step"] == 1
    spent = torch.load(run / "last.pt", weights_only=True)["seconds"]
    assert spent > 0
    again = fit(tiny, sim_dir, real_dir, run, resume=True, max_minutes=0.0, progress=False)
    assert again["step"] == 1
    assert torch.load(run / "last.pt", weights_only=True)["seconds"] == spent
    # a larger budget continues from the time spent, to the end of the steps
    rest = fit(tiny, sim_dir, real_dir, run, resume=True, max_minutes=60.0, progress=False)
    assert rest["step"] == tiny.steps
    assert torch.load(run / "last.pt", weights_only=True)["seconds"] > spent
    # the log's times run on across the resumes too
    seconds = [r["seconds"] for r in _log(run)]
    assert len(seconds) == tiny.steps and seconds == sorted(seconds)
    assert seconds[1] >= round(spent, 2)


def test_resume_refuses_a_different_experiment(tiny, sim_dir, real_dir, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(OutputExistsError, match="nothing to resume"):
        fit(tiny, sim_dir, real_dir, run, resume=True, progress=False)
    fit(RefineConfig(**{**tiny.__dict__, "steps": 1}), sim_dir, real_dir, run, progress=False)
    changed = RefineConfig(**{**tiny.__dict__, "self_reg": 5.0})
    with pytest.raises(ConfigError, match="self_reg"):
        fit(changed, sim_dir, real_dir, run, resume=True, progress=False)


def test_resume_a_checkpoint_from_before_new_options(tiny, sim_dir, real_dir, tmp_path):
    run = tmp_path / "run"
    fit(RefineConfig(**{**tiny.__dict__, "steps": 1}), sim_dir, real_dir, run, progress=False)
    checkpoint = torch.load(run / "last.pt", weights_only=True)
    for key in ("d_steps", "self_reg_normalize", "saturation_margin", "d_input_norm"):
        del checkpoint["config"][key]
    for key in ("input_shift", "input_scale"):
        del checkpoint["discriminator"][key]
    torch.save(checkpoint, run / "last.pt")
    assert fit(tiny, sim_dir, real_dir, run, resume=True, progress=False)["step"] == 4


def test_config_rejects_unknown_and_bad_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("crop: 64\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown key.*learning_rate"):
        refine_config(path)
    with pytest.raises(ConfigError, match="crop must be a multiple of 4"):
        refine_config(None, {"crop": 30})
    with pytest.raises(ConfigError, match="d_steps must be >= 1"):
        refine_config(None, {"d_steps": 0})
    with pytest.raises(ConfigError, match="saturation_margin"):
        refine_config(None, {"saturation_margin": 0.5})
    assert refine_config(None, {"crop": 64, "seed": None}).crop == 64


def test_ctrl_c_checkpoints_the_step_it_finished_and_resume_is_exact(tiny, sim_dir, real_dir,
                                                                       tmp_path, monkeypatch):
    import importlib
    import signal

    fit_module = importlib.import_module("cellsynth.refine.fit")  # the package's `fit` is the
    # function of that name
    tiny = RefineConfig(**{**tiny.__dict__, "steps": 5, "checkpoint_every": 50})
    fit(tiny, sim_dir, real_dir, tmp_path / "straight", progress=False)
    calls = {"n": 0}
    real_step = fit_module.train_step

    def interrupted_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            signal.raise_signal(signal.SIGINT)  # arrives mid-step: the step still finishes
        return real_step(*args, **kwargs)

    monkeypatch.setattr(fit_module, "train_step", interrupted_step)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny, sim_dir, real_dir, tmp_path / "stopped", progress=False)
    monkeypatch.setattr(fit_module, "train_step", real_step)
    assert torch.load(tmp_path / "stopped" / "last.pt", weights_only=True)["step"] == 3
    fit(tiny, sim_dir, real_dir, tmp_path / "stopped", resume=True, progress=False)
    straight, resumed = _log(tmp_path / "straight"), _log(tmp_path / "stopped")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5]
    for a, b in zip(straight, resumed):
        for key in ("d", "g_adv", "self_reg", "g"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-7), (a["step"], key)
