"""cellsynth experiment: settings x seeds, resumable, the test split used only at the end."""

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cellsynth.errors import ConfigError
from cellsynth.pipeline import experiment, experiment_results
from cellsynth.pipeline.config import SimulateOptions
from cellsynth.pipeline.experiment import (
    ExperimentConfig,
    Setting,
    load_experiment_config,
    run_experiment,
)
from cellsynth.refine.config import RefineConfig
from cellsynth.segment.trainer import TrainConfig
from tests.conftest import make_dataset

TINY = dict(steps=2, crop=64, batch=1, samples=32, order=4, refinement_iterations=1,
            checkpoint_every=1, val_every=2, precision="fp32")


def _config(tmp_path: Path, **changes) -> ExperimentConfig:
    train = make_dataset(tmp_path / "train", n=3, size=64, seed=1)
    test = make_dataset(tmp_path / "test", n=2, size=64, seed=2)
    base = dict(
        name="tiny", train=str(train), test=str(test), seeds=(0, 1),
        settings=(Setting("real_k1", "real", 1), Setting("sim_only", "simulated", 0),
                  Setting("sim_ft_k1", "simulated", 1), Setting("refined_only", "refined", 0)),
        compare=(("sim_ft_k1", "real_k1"),),
        simulate=SimulateOptions(preset="fluo", n=3, size=64, workers=1), n_val=2,
        refine=RefineConfig(steps=2, crop=32, batch=2, width=8, blocks=1, spade_hidden=8,
                            d_width=8, d_layers=2, d_scales=1, sample_every=2,
                            checkpoint_every=1, log_every=1, precision="fp32"),
        pretrain=TrainConfig(**TINY), finetune=TrainConfig(**TINY),
        supervised=TrainConfig(**TINY), tiles=2, bootstrap=50)
    return ExperimentConfig(**{**base, **changes})


def _checked_plan(config: ExperimentConfig, tmp_path: Path):
    """The config checked, then planned: (units by name, the detectors of every cell)."""
    experiment.check_experiment(config)
    units, detector_of = experiment._plan(config, tmp_path / "out")
    return {u.name: u for u in units}, detector_of


def _differ_in_seed_only(first, second) -> bool:
    """Two detector units train the same data with the same options but the seed."""
    return (second.inputs == first.inputs
            and {k: v for k, v in second.options.items() if k != "seed"}
            == {k: v for k, v in first.options.items() if k != "seed"})



def _record_trainings_and_predictions(monkeypatch, predicted) -> list[tuple]:
    """The events of an experiment run, in order: ("train",) for each detector trained and
    ("predict", *predicted(kwargs)) for each test split predicted (both still run)."""
    from cellsynth.segment import folders, trainer

    events: list[tuple] = []
    train, predict_folder = trainer.train, folders.predict_folder
    monkeypatch.setattr(trainer, "train", lambda *a, **kw: (events.append(("train",)),
                                                            train(*a, **kw))[1])

    def spy_predict(*a, **kw):
        events.append(("predict", *predicted(kw)))
        return predict_folder(*a, **kw)

    monkeypatch.setattr(folders, "predict_folder", spy_predict)
    return events


def test_experiment_runs_resumes_and_keeps_the_test_split_for_the_end(tmp_path, monkeypatch):
    config = _config(tmp_path)
    test = Path(config.test).resolve()
    events: list[str] = []
    from cellsynth.segment import folders, trainer

    train, predict_folder = trainer.train, folders.predict_folder

    def spy_train(cfg, data, out, **kw):
        used = [Path(d).resolve() for d in data] + [Path(kw["val"]).resolve()]
        assert not any(p == test or test in p.parents for p in used), used
        events.append("train")
        return train(cfg, data, out, **kw)

    def spy_predict(run, images, *a, **kw):
        events.append("predict")
        return predict_folder(run, images, *a, **kw)

    monkeypatch.setattr(trainer, "train", spy_train)
    monkeypatch.setattr(folders, "predict_folder", spy_predict)
    said: list[str] = []
    results = run_experiment(config, tmp_path / "exp", log=said.append)
    # 2 seeds x (real_k1, sim_k0, sim_k1, refined_k0) detectors, each evaluated once
    assert events.count("train") == 8 and events.count("predict") == 8
    assert "predict" not in events[:events.index("predict")]
    assert events.index("predict") == 8  # every detector trained before the first test read
    settings = results["settings"]
    assert list(settings) == ["real_k1", "sim_only", "sim_ft_k1", "refined_only"]
    # the steps each seed's refiner reached (all of its 2: no refine_minutes cap here)
    assert settings["refined_only"]["refiner_steps"] == [config.refine.steps] * 2 == [2, 2]
    assert "refiner_steps" not in settings["sim_ft_k1"]
    assert all(len(s["f1_50"]["per_seed"]) == 2 for s in settings.values())
    assert results["n_test_units"] == 2 * 4  # 2 test images in 2 x 2 tiles
    comparison = results["comparisons"]["sim_ft_k1 - real_k1"]
    low, high = comparison["f1_50"]["ci95"]
    assert low <= comparison["f1_50"]["diff"] <= high
    assert json.loads((tmp_path / "exp" / "results.json").read_text())["seeds"] == [0, 1]
    assert "| sim_ft_k1 | simulated | 1 |" in (tmp_path / "exp" / "results.md").read_text()
    assert (tmp_path / "exp" / "learning_curve.png").stat().st_size > 1000
    # the k images differ between seeds (the draw is part of the spread)
    state = json.loads((tmp_path / "exp" / "state.json").read_text())
    draws = {state[f"data/k1_s{s}"]["summary"]["images"][0] for s in (0, 1)}
    assert len(draws) == 2
    # a re-run redoes nothing; one more seed runs only that seed's units
    events.clear()
    said.clear()
    run_experiment(config, tmp_path / "exp", log=said.append)
    assert events == [] and not [line for line in said if "running" in line]


def test_resume_after_a_kill_continues_the_unit(tmp_path, monkeypatch):
    config = _config(tmp_path, settings=(Setting("real_k1", "real", 1),), compare=(),
                     seeds=(0,))
    from cellsynth.pipeline import run as run_module
    from cellsynth.segment import trainer

    train, clock, hours = trainer.train, time.perf_counter, [0.0]
    # the units' clock, which the killed training moves on by an hour (no real sleep)
    monkeypatch.setattr(run_module.time, "perf_counter", lambda: clock() + 3600 * hours[0])

    def killed(cfg, data, out, **kw):
        hours[0] += 1  # an hour's work, then the kill
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "train", killed)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, tmp_path / "exp", log=lambda _: None)
    unit = "detectors/real_k1_s0"
    state = json.loads((tmp_path / "exp" / "state.json").read_text())
    assert not state[unit]["done"] and 3600 <= state[unit]["seconds"] < 3610
    monkeypatch.setattr(trainer, "train", train)
    said: list[str] = []
    started = clock()
    run_experiment(config, tmp_path / "exp", log=said.append)
    assert f"[2/2] {unit}: resuming" in said
    # its time is the killed run's and the resumed one's together
    entry = json.loads((tmp_path / "exp" / "state.json").read_text())[unit]
    assert entry["done"] and entry["runs"] == 2
    assert 3600 < entry["seconds"] <= 3600.1 + clock() - started


def test_self_training_labels_the_undrawn_images_with_the_teacher_not_the_annotations(
        tmp_path, monkeypatch):
    config = _config(tmp_path, settings=(Setting("real_k1", "real", 1),
                                         Setting("real_k1_pseudo", "real", 1, pseudo=0.5)),
                     compare=(("real_k1_pseudo", "real_k1"),), seeds=(0,))
    test = Path(config.test).resolve()
    from cellsynth.segment import folders, trainer

    train, predict_folder = trainer.train, folders.predict_folder
    calls: list[tuple[str, object]] = []

    def spy_train(cfg, data, out, **kw):
        calls.append(("train", (cfg, [Path(d) for d in data], kw)))
        return train(cfg, data, out, **kw)

    def spy_predict(run, images, out, **kw):
        images = Path(images).resolve()
        seen = sorted(p.stem for p in (images / "images").iterdir() if p.suffix == ".png")
        calls.append(("predict", (Path(run), images, {**kw, "seen": seen})))
        return predict_folder(run, images, out, **kw)

    def teacher_labels(detector, image, **kw):  # the teacher finds one square cell per image
        labels = np.zeros(image.shape[:2], np.int32)
        labels[10:30, 10:30] = 1
        return labels, np.array([0.0, 0.9])
    monkeypatch.setattr(trainer, "train", spy_train)
    monkeypatch.setattr(folders, "predict_folder", spy_predict)
    monkeypatch.setattr(folders, "predict_image", teacher_labels)
    results = run_experiment(config, tmp_path / "exp", log=lambda _: None)
    exp = tmp_path / "exp"
    state = json.loads((exp / "state.json").read_text())
    drawn = state["data/k1_s0"]["summary"]["images"]
    pseudo = exp / "pseudo" / "real_k1_s0"
    ids = sorted(p.stem for p in (pseudo / "images").iterdir())
    assert ids == sorted(set(f"img{i}" for i in range(3)) - set(drawn))  # the 2 not drawn
    # their labels are the teacher's one square, not the annotations (several discs)
    from cellsynth.io.images import read_labels
    for i in ids:
        labels = read_labels(pseudo / "labels" / f"{i}.tif")
        assert np.unique(labels).tolist() == [0, 1] and (labels == 1).sum() == 400
    # the student: fine-tuned from the teacher on the k image, half its batches pseudo
    (_, (cfg, data, kw)), = [c for c in calls if c[0] == "train" and c[1][2].get("init")]
    assert kw["init"] == exp / "detectors" / "real_k1_s0"
    assert data == [exp / "data" / "k1_s0"] and kw["replay"] == [pseudo]
    assert cfg.replay == 0.5
    # the teacher voted over 8 views; it read training images only, and the test split
    # came after every training
    (_, (run, images, kw)), = [c for c in calls if c[0] == "predict" and c[1][1] != test]
    assert run == exp / "detectors" / "real_k1_s0" and kw["seen"] == ids
    assert kw["tta"] is True
    first_test = next(i for i, c in enumerate(calls) if c[0] == "predict" and c[1][1] == test)
    assert all(c[0] == "predict" and c[1][1] == test for c in calls[first_test:])
    assert results["settings"]["real_k1_pseudo"]["detectors"] == [
        "detectors/real_k1_pseudo-0.5_s0"]
    with pytest.raises(ValueError, match="pseudo needs k >= 1"):
        Setting("x", "real", None, pseudo=0.5)


def test_distillation_labels_with_the_teacher_and_fine_tunes_the_student(tmp_path,
                                                                        monkeypatch):
    # the student (a different detector: another learning rate here, a smaller model in
    # use) fine-tunes from its own detector; the images not drawn are labelled by the teacher
    student = Setting("real_k1_b", "real", 1, detector={"lr": 5e-4})
    distil = Setting("real_k1_b_distil", "real", 1, detector={"lr": 5e-4}, pseudo=0.5,
                     teacher="real_k1")
    config = _config(tmp_path, settings=(Setting("real_k1", "real", 1), student, distil),
                     compare=(("real_k1_b_distil", "real_k1_b"),), seeds=(0,))
    # asking for the distilled setting alone brings its teacher along
    only = experiment.select_settings(config, ["real_k1_b_distil"])
    assert [s.name for s in only.settings] == ["real_k1", "real_k1_b_distil"]
    from cellsynth.segment import folders, trainer

    train, predict_folder = trainer.train, folders.predict_folder
    trained: list[tuple[object, Path, dict]] = []
    labelled_by: list[Path] = []

    def spy_train(cfg, data, out, **kw):
        trained.append((cfg, Path(out), kw))
        return train(cfg, data, out, **kw)

    def spy_predict(run, images, out, **kw):
        if Path(images).resolve() != Path(config.test).resolve():
            labelled_by.append(Path(run))
        return predict_folder(run, images, out, **kw)
    monkeypatch.setattr(trainer, "train", spy_train)
    monkeypatch.setattr(folders, "predict_folder", spy_predict)
    results = run_experiment(config, tmp_path / "exp", log=lambda _: None)
    exp = tmp_path / "exp"
    assert labelled_by == [exp / "detectors" / "real_k1_s0"]   # the teacher, not the student
    (cfg, out, kw), = [t for t in trained if t[2].get("init")]
    assert kw["init"] == exp / "detectors" / "real_k1_lr-0.0005_s0"   # the student's own
    assert kw["replay"] == [exp / "pseudo" / "real_k1_s0"] and cfg.replay == 0.5
    assert cfg.lr == 5e-4
    assert out == exp / "detectors" / "real_k1_lr-0.0005_pseudo-0.5_by-real_k1_s0"
    assert results["settings"]["real_k1_b_distil"]["detectors"] == [
        "detectors/real_k1_lr-0.0005_pseudo-0.5_by-real_k1_s0"]
    with pytest.raises(ValueError, match="teacher needs pseudo"):
        Setting("x", "real", 1, teacher="real_k1")
    with pytest.raises(ValueError, match="is not a setting"):
        _config(tmp_path / "a", settings=(distil,), compare=())
    with pytest.raises(ValueError, match="same k"):
        _config(tmp_path / "b", settings=(Setting("real_k2", "real", 2), replace(
            distil, teacher="real_k2")), compare=())


def test_experiment_config_errors(tmp_path):
    path = tmp_path / "exp.yaml"
    make_dataset(tmp_path / "train", n=2)
    make_dataset(tmp_path / "test", n=1, seed=1)  # (other images than train's)
    path.write_text("train: train\ntest: test\nsettings:\n  - {name: a, data: real, k: 3}\n")
    with pytest.raises(ConfigError, match="k = 3 but .*train has only 2 images"):
        load_experiment_config(path)
    path.write_text("train: train\ntest: test\nsettings:\n  - {name: a, data: real, k: 1}\n"
                    "compare: [[a, b]]\n")
    with pytest.raises(ConfigError, match="compare"):
        load_experiment_config(path)
    path.write_text("train: train\ntest: test\nseeds: [4]\n"
                    "settings:\n  - {name: a, data: real, k: 1}\n")
    config = load_experiment_config(path)
    assert config.settings == (Setting("a", "real", 1),) and config.seeds == (4,)
    assert config.train == str((tmp_path / "train").resolve())
    assert experiment.check_experiment(config) is None
    # --out a folder of the user's that is no experiment: refused before any work (a run's
    # predict/ and report.html were replaced there without a word; audit)
    from cellsynth.errors import OutputExistsError

    (tmp_path / "mine" / "notes").mkdir(parents=True)
    with pytest.raises(OutputExistsError, match=r"mine: not empty and not a cellsynth "
                                                 r"experiment folder \(it holds notes\)"):
        experiment.run_experiment(config, tmp_path / "mine")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes"]


def test_select_settings_keeps_the_named_ones_and_their_comparisons(tmp_path):
    config = ExperimentConfig(train="t", test="u", settings=(
        Setting("a", "real", 1), Setting("b", "simulated", 0), Setting("c", "simulated", 1)),
        compare=(("c", "a"), ("b", "a"), ("c", "b")))
    chosen = experiment.select_settings(config, ["c", "a"])
    assert [s.name for s in chosen.settings] == ["a", "c"]  # the config's order
    assert chosen.compare == (("c", "a"),)
    with pytest.raises(ConfigError, match="unknown setting.*d; the config has a, b, c"):
        experiment.select_settings(config, ["a", "d"])


def test_refine_variants_get_their_own_refiner_data_and_detectors(tmp_path):
    config = _config(tmp_path, settings=(
        Setting("refined_only", "refined", 0), Setting("cm_only", "refined", 0,
                                                       {"class_map": True}),
        Setting("cm_ft", "refined", 1, {"class_map": True})), compare=())
    units, detector_of = experiment._plan(config, tmp_path / "out")
    names = [u.name for u in units]
    for name in ("refiner/s0", "refiner_class_map-true/s0", "refined/s0",
                 "refined_class_map-true/s0", "refined_class_map-true_val/s0"):
        assert name in names, name
    assert detector_of["refined_only", 0][0] == "detectors/refined_k0_s0"
    assert detector_of["cm_only", 0][0] == "detectors/refined_class_map-true_k0_s0"
    assert detector_of["cm_ft", 0][0] == "detectors/refined_class_map-true_k1_s0"
    assert names.count("refiner_class_map-true/s0") == 1  # shared by both cm settings
    options = {u.name: u.options for u in units}
    assert options["refiner_class_map-true/s0"][0]["class_map"] is True
    assert "class_map" not in options["refiner/s0"][0]  # the default: old fingerprints hold
    with pytest.raises(ConfigError, match="setting bad: refine: unknown key.*'class_mapp'"):
        experiment.check_experiment(replace(config, settings=(
            Setting("bad", "refined", 0, {"class_mapp": True}),)))
    with pytest.raises(ValueError, match="refine: changes need data: refined"):
        Setting("real_cm", "real", 1, {"class_map": True})


def test_detector_variants_train_their_own_detectors_with_the_changed_options(tmp_path):
    config = _config(tmp_path, settings=(
        Setting("real_k1", "real", 1), Setting("real_k1_tiny", "real", 1,
                                               detector={"model": "tiny_u22"}),
        Setting("sim_ft_tiny", "simulated", 1, detector={"model": "tiny_u22"}),
        Setting("sim_only_tiny", "simulated", 0, detector={"model": "tiny_u22"})),
        compare=(("real_k1_tiny", "real_k1"),))
    units, detector_of = experiment._plan(config, tmp_path / "out")
    assert detector_of["real_k1", 0][0] == "detectors/real_k1_s0"  # unchanged: old runs hold
    assert detector_of["real_k1_tiny", 0][0] == "detectors/real_k1_model-tiny_u22_s0"
    assert detector_of["sim_ft_tiny", 1][0] == "detectors/simulated_k1_model-tiny_u22_s1"
    # fine-tuning starts from the variant's own zero-label detector, shared with sim_only_tiny
    zero = detector_of["sim_only_tiny", 1][0]
    assert zero == "detectors/simulated_k0_model-tiny_u22_s1"
    by_name = {u.name: u for u in units}
    assert zero in by_name[detector_of["sim_ft_tiny", 1][0]].inputs
    models = {name: by_name[name].options["model"] for name in (
        "detectors/real_k1_s0", "detectors/real_k1_model-tiny_u22_s0", zero)}
    assert models == {"detectors/real_k1_s0": "slim_u22",
                      "detectors/real_k1_model-tiny_u22_s0": "tiny_u22", zero: "tiny_u22"}
    assert by_name[detector_of["sim_ft_tiny", 1][0]].options["lr"] == config.finetune.lr
    with pytest.raises(ConfigError, match="setting bad: detector: unknown key.*'modle'"):
        experiment.check_experiment(replace(config, compare=(), settings=(
            Setting("bad", "real", 1, detector={"modle": "tiny_u22"}),)))


def test_a_replay_setting_fine_tunes_on_its_synthetic_data_too(tmp_path):
    config = _config(tmp_path, settings=(
        Setting("sim_ft_k1", "simulated", 1),
        Setting("sim_ft_replay", "simulated", 1, detector={"replay": 0.5})), compare=())
    units, detector_of = experiment._plan(config, tmp_path / "out")
    by_name = {u.name: u for u in units}
    tuned = by_name[detector_of["sim_ft_replay", 0][0]]
    assert tuned.name == "detectors/simulated_k1_replay-0.5_s0"
    assert "sim/s0" in tuned.inputs and tuned.options["replay"] == 0.5
    # its zero-label start is the ordinary pretraining (replay is for fine-tuning only)
    assert "detectors/simulated_k0_s0" in tuned.inputs
    assert not any("k0_replay" in name for name in by_name)
    assert "sim/s0" not in by_name[detector_of["sim_ft_k1", 0][0]].inputs


def test_a_replicate_trains_the_same_fine_tuning_with_another_seed(tmp_path):
    config = _config(tmp_path, settings=(
        Setting("sim_ft_k1", "simulated", 1, finetune={"steps": 7}),
        Setting("again", "simulated", 1, finetune={"steps": 7}, replicate=1)),
        compare=(("again", "sim_ft_k1"),), seeds=(0, 3))
    by_name, detector_of = _checked_plan(config, tmp_path)
    for seed in (0, 3):
        first, second = (by_name[detector_of[n, seed][0]] for n in ("sim_ft_k1", "again"))
        assert second.name == f"detectors/simulated_k1_ft-steps-7_rep-1_s{seed}"
        # the same pretrained detector, drawn images and options; only the seed differs
        assert _differ_in_seed_only(first, second) and f"data/k1_s{seed}" in second.inputs
        assert first.options["seed"] == seed and second.options["seed"] == seed + 1000
    with pytest.raises(ValueError, match="retrain a detector, not a self-training"):
        Setting("x", "simulated", 1, pseudo=0.5, replicate=1)
    with pytest.raises(ValueError, match="replicate must be >= 0"):
        Setting("x", "simulated", 1, replicate=-1)


def test_runs_train_the_replicates_of_a_setting_and_share_them(tmp_path):
    config = _config(tmp_path, settings=(
        Setting("sim_ft_k1", "simulated", 1, finetune={"steps": 7}),
        Setting("again", "simulated", 1, finetune={"steps": 7}, replicate=2),
        Setting("three", "simulated", 1, finetune={"steps": 7}, runs=3)),
        compare=(("three", "sim_ft_k1"),), seeds=(0, 3))
    by_name, detector_of = _checked_plan(config, tmp_path)
    for seed in (0, 3):
        runs = detector_of["three", seed]
        # run 0 is the setting's own detector, run 2 the one replicate: 2 trains: shared
        assert runs == (detector_of["sim_ft_k1", seed][0],
                        f"detectors/simulated_k1_ft-steps-7_rep-1_s{seed}",
                        detector_of["again", seed][0])
        assert [by_name[r].options["seed"] for r in runs] == [seed, seed + 1000, seed + 2000]
        assert len({by_name[r].inputs for r in runs}) == 1
    assert len([n for n in by_name if n.startswith("detectors/simulated_k1")]) == 6
    with pytest.raises(ValueError, match="retrain a detector, not a self-training"):
        Setting("x", "real", 1, pseudo=0.5, runs=2)
    with pytest.raises(ValueError, match="runs must be >= 1"):
        Setting("x", "simulated", 1, runs=0)
    with pytest.raises(ValueError, match="runs and replicate exclude each other"):
        Setting("x", "simulated", 1, runs=2, replicate=1)


def test_a_soup_setting_averages_the_runs_of_its_fine_tuning(tmp_path):
    config = _config(tmp_path, settings=(
        Setting("x2", "simulated", 1, runs=2),
        Setting("soup", "simulated", 1, runs=2, soup=True)), compare=(("soup", "x2"),),
        seeds=(0, 4))
    by_name, detector_of = _checked_plan(config, tmp_path)
    for seed in (0, 4):
        (name,) = detector_of["soup", seed]
        assert name == f"detectors/simulated_k1_soup2_s{seed}"
        # the very detectors of the runs setting (nothing trained twice), and the k images
        # that choose its threshold; never the test split
        assert by_name[name].inputs == detector_of["x2", seed] + (f"data/k1_s{seed}",)
    assert len([n for n in by_name if n.startswith("detectors/simulated_k1")]) == 6
    for bad, message in ((dict(runs=1), "needs runs >= 2"),
                         (dict(runs=2, data="real"), "synthetic pretraining"),
                         (dict(runs=2, k=0), "synthetic pretraining")):
        args = {"name": "x", "data": "simulated", "k": 1, "soup": True, **bad}
        with pytest.raises(ValueError, match=message):
            Setting(**args)


def test_runs_of_zero_label_and_real_settings_retrain_their_detector(tmp_path):
    config = _config(tmp_path, settings=(
        Setting("real_k1", "real", 1), Setting("real_k1_x2", "real", 1, runs=2),
        Setting("sim_only", "simulated", 0), Setting("sim_only_x2", "simulated", 0, runs=2),
        Setting("sim_ft_k1", "simulated", 1)), compare=(("sim_only_x2", "real_k1_x2"),),
        seeds=(2,))
    by_name, detector_of = _checked_plan(config, tmp_path)
    real, sim = detector_of["real_k1_x2", 2], detector_of["sim_only_x2", 2]
    assert real == ("detectors/real_k1_s2", "detectors/real_k1_rep-1_s2")
    assert sim == ("detectors/simulated_k0_s2", "detectors/simulated_k0_rep-1_s2")
    assert real[0] == detector_of["real_k1", 2][0] and sim[0] == detector_of["sim_only", 2][0]
    for first, second in (real, sim):
        first, second = by_name[first], by_name[second]
        # the same data and options, another seed
        assert _differ_in_seed_only(first, second)
        assert (first.options["seed"], second.options["seed"]) == (2, 1002)
    # the fine-tuning starts from the zero-label detector's first run
    assert sim[0] in by_name[detector_of["sim_ft_k1", 2][0]].inputs
    assert sim[1] not in by_name[detector_of["sim_ft_k1", 2][0]].inputs


def test_the_table_shows_runs_and_their_spread(tmp_path):
    from cellsynth.evaluate import matching
    from cellsynth.evaluate.stats import paired_bootstrap, summarize

    truth = np.zeros((40, 40), np.int32)
    truth[2:10, 2:10], truth[20:30, 20:30] = 1, 2
    half = truth * (truth == 1)
    # seed 0: runs finding both cells / one; seed 1: both runs find both
    a = [[[matching(truth, truth)], [matching(truth, half)]],
         [[matching(truth, truth)], [matching(truth, truth)]]]
    b = [[matching(truth, half)], [matching(truth, half)]]
    config = _config(tmp_path, seeds=(0, 1), settings=(
        Setting("twice", "simulated", 1, runs=2), Setting("once", "simulated", 1)),
        compare=(("twice", "once"),))
    results = {"n_test_units": 1, "seeds": [0, 1], "comparisons": {
        "twice - once": paired_bootstrap(a, b, n=200)}, "settings": {
        "twice": {"data": "simulated", "k": 1, "runs": [["d0", "d1"], ["d2", "d3"]],
                  **summarize(a)},
        "once": {"data": "simulated", "k": 1, **summarize(b)}}}
    experiment_results._write_table(config, results, tmp_path / "results.md")
    table = (tmp_path / "results.md").read_text()
    # F1@0.5 per seed: (1 + 2/3) / 2 and 1 -> 0.917 +- 0.118; the runs: variance 1/18 at
    # seed 0, 0 at seed 1, pooled sqrt(1/36) = 0.167
    assert "| twice | simulated | 1 | 2 | 0.917 ± 0.118 (runs ± 0.167) |" in table
    assert "| once | simulated | 1 | 1 | 0.667 ± 0.000 |" in table
    assert "resample the runs" in table


def test_a_finetune_setting_changes_the_fine_tuning_only(tmp_path):
    config = _config(tmp_path, settings=(
        Setting("sim_ft_k1", "simulated", 1),
        Setting("sim_ft_long", "simulated", 1, finetune={"steps": 7}),
        Setting("both_long", "simulated", 1, detector={"steps": 7})), compare=())
    experiment.check_experiment(config)
    units, detector_of = experiment._plan(config, tmp_path / "out")
    by_name = {u.name: u for u in units}
    long = by_name[detector_of["sim_ft_long", 0][0]]
    assert long.name == "detectors/simulated_k1_ft-steps-7_s0"
    assert long.options["steps"] == 7 and long.options["lr"] == config.finetune.lr
    # it starts from the plain zero-label detector, the one sim_ft_k1 starts from
    plain = by_name[detector_of["sim_ft_k1", 0][0]]
    assert plain.options["steps"] == config.finetune.steps != 7
    assert "detectors/simulated_k0_s0" in long.inputs and "detectors/simulated_k0_s0" in \
        plain.inputs
    # detector: changes both stages: another pretraining and another fine-tuned detector
    both = by_name[detector_of["both_long", 0][0]]
    assert both.name == "detectors/simulated_k1_steps-7_s0" != long.name
    assert "detectors/simulated_k0_steps-7_s0" in both.inputs
    # a learning curve of its own: never two points at one k on the plain setting's line
    curves = {st.name: experiment._curve(st) for st in config.settings}
    assert len(set(curves.values())) == 3
    for bad, match in (({"stpes": 7}, "setting bad: finetune: unknown key.*'stpes'"),):
        with pytest.raises(ConfigError, match=match):
            experiment.check_experiment(replace(config, settings=(
                Setting("bad", "simulated", 1, finetune=bad),)))
    with pytest.raises(ValueError, match="setting z: finetune: changes need"):
        Setting("z", "simulated", 0, finetune={"steps": 7})
    # a nested option names its folder by its dotted path, and reaches the fine-tuning
    aug = replace(config, settings=(Setting("aug", "simulated", 1, finetune={
        "augment": {"stain": 0.1, "blur": 1.5}}),))
    experiment.check_experiment(aug)
    units, detector_of = experiment._plan(aug, tmp_path / "out")
    tuned = {u.name: u for u in units}[detector_of["aug", 0][0]]
    assert tuned.name == "detectors/simulated_k1_ft-augment.blur-1.5_ft-augment.stain-0.1_s0"
    assert tuned.options["augment"]["blur"] == 1.5 and tuned.options["augment"]["stain"] == 0.1
    with pytest.raises(ValueError, match="setting r: finetune: changes need"):
        Setting("r", "real", 1, finetune={"steps": 7})


def test_a_tta_setting_reuses_its_detector_and_is_evaluated_apart(tmp_path, monkeypatch):
    config = _config(tmp_path, seeds=(0,), settings=(
        Setting("real_k1", "real", 1), Setting("real_k1_tta", "real", 1, tta=True)),
        compare=(("real_k1_tta", "real_k1"),))
    events = _record_trainings_and_predictions(monkeypatch, lambda kw: (kw["tta"],))
    results = run_experiment(config, tmp_path / "exp", log=lambda _: None)
    assert events == [("train",), ("predict", False), ("predict", True)]
    assert results["settings"]["real_k1_tta"]["detectors"] == \
        results["settings"]["real_k1"]["detectors"]
    assert "real_k1_tta - real_k1" in results["comparisons"]
    state = json.loads((tmp_path / "exp" / "state.json").read_text())
    assert state["evaluations/real_k1_s0_tta"]["done"] and state["evaluations/real_k1_s0"]["done"]


def test_an_nms_setting_reuses_its_detector_and_predicts_with_its_threshold(tmp_path,
                                                                            monkeypatch):
    config = _config(tmp_path, seeds=(0,), settings=(
        Setting("real_k1", "real", 1), Setting("real_k1_nms", "real", 1, nms=0.5),
        Setting("real_k1_tta_nms", "real", 1, tta=True, nms=0.5)),
        compare=(("real_k1_nms", "real_k1"),))
    events = _record_trainings_and_predictions(
        monkeypatch, lambda kw: (kw["tta"], kw["nms_thresh"]))
    results = run_experiment(config, tmp_path / "exp", log=lambda _: None)
    assert events == [("train",), ("predict", False, None), ("predict", False, 0.5),
                      ("predict", True, 0.5)]
    assert results["settings"]["real_k1_nms"]["detectors"] == \
        results["settings"]["real_k1"]["detectors"]
    state = json.loads((tmp_path / "exp" / "state.json").read_text())
    assert state["evaluations/real_k1_s0_nms-0.5"]["done"]
    assert state["evaluations/real_k1_s0_tta_nms-0.5"]["done"]
    meta = json.loads((tmp_path / "exp" / "evaluations" / "real_k1_s0_nms-0.5" / "predict"
                       / "meta.json").read_text())
    assert meta["nms_thresh"] == 0.5
    # the detector and the evaluation without nms are kept: only the new threshold predicts
    config2 = replace(config, settings=(
        Setting("real_k1", "real", 1), Setting("real_k1_nms", "real", 1, nms=0.4)),
        compare=())
    events.clear()
    run_experiment(config2, tmp_path / "exp", log=lambda _: None)
    assert events == [("predict", False, 0.4)]
    assert experiment._curve(Setting("a", "real", 1, nms=0.5)) != \
        experiment._curve(Setting("b", "real", 2))
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="setting x: nms must be a box IoU in"):
            Setting("x", "real", 1, nms=bad)


def test_a_faint_setting_reuses_its_detector_and_cuts_by_its_seeds_annotated_images(
        tmp_path, monkeypatch):
    config = _config(tmp_path, seeds=(0,), settings=(
        Setting("real_k1", "real", 1), Setting("real_k1_faint", "real", 1, faint_percentile=5),
        Setting("real_k1_nms_faint", "real", 1, nms=0.5, faint_percentile=5)),
        compare=(("real_k1_faint", "real_k1"),))
    def faint_of(kw):
        faint_from = kw.get("faint_from")
        return (kw["nms_thresh"], kw.get("faint_percentile"),
                Path(faint_from).relative_to(tmp_path / "exp").as_posix()
                if faint_from else None)

    events = _record_trainings_and_predictions(monkeypatch, faint_of)
    results = run_experiment(config, tmp_path / "exp", log=lambda _: None)
    # one detector; the cut from the 1 image seed 0 drew (the images it was tuned on)
    assert events == [("train",), ("predict", None, None, None),
                      ("predict", None, 5, "data/k1_s0"), ("predict", 0.5, 5, "data/k1_s0")]
    assert results["settings"]["real_k1_faint"]["detectors"] == \
        results["settings"]["real_k1"]["detectors"]
    state = json.loads((tmp_path / "exp" / "state.json").read_text())
    assert state["evaluations/real_k1_s0_faint-5"]["done"]
    assert state["evaluations/real_k1_s0_nms-0.5_faint-5"]["done"]
    meta = json.loads((tmp_path / "exp" / "evaluations" / "real_k1_s0_faint-5" / "predict"
                       / "meta.json").read_text())
    assert meta["faint"]["percentile"] == 5
    # another percentile predicts again, nothing else
    events.clear()
    run_experiment(replace(config, settings=(
        Setting("real_k1", "real", 1), Setting("real_k1_faint", "real", 1, faint_percentile=10)),
        compare=()), tmp_path / "exp", log=lambda _: None)
    assert events == [("predict", None, 10, "data/k1_s0")]
    assert experiment._curve(Setting("a", "real", 1, faint_percentile=5)) != \
        experiment._curve(Setting("b", "real", 2))
    for bad in (0.0, 100.0, -1.0):
        with pytest.raises(ValueError, match="setting x: faint_percentile must be in"):
            Setting("x", "real", 1, faint_percentile=bad)
    with pytest.raises(ValueError, match="faint_percentile is measured on the setting's "
                                         "annotated images; it needs k >= 1"):
        Setting("x", "simulated", 0, faint_percentile=5)


def test_mixed_settings_pretrain_on_the_simulation_and_its_refined_images(tmp_path):
    config = _config(tmp_path, settings=(
        Setting("refined_only", "refined", 0), Setting("mixed_only", "mixed", 0),
        Setting("mixed_ft", "mixed", 1, detector={"replay": 0.5}),
        Setting("mixed_cm", "mixed", 0, {"class_map": True})), compare=())
    units, detector_of = experiment._plan(config, tmp_path / "out")
    by_name = {u.name: u for u in units}
    zero = by_name[detector_of["mixed_only", 0][0]]
    assert zero.name == "detectors/mixed_k0_s0"
    # both image sets (the same cells in two looks), thresholds from the refined ones
    assert zero.inputs == ("sim/s0", "refined/s0", "refined_val/s0")
    assert [n for n in by_name if n.startswith("refiner")].count("refiner/s0") == 1
    # fine-tuning starts from it and replays both
    tuned = by_name[detector_of["mixed_ft", 0][0]]
    assert tuned.inputs == ("data/k1_s0", "data/k1_s0", "detectors/mixed_k0_s0",
                            "sim/s0", "refined/s0")
    assert by_name[detector_of["mixed_cm", 0][0]].inputs[1] == "refined_class_map-true/s0"
    with pytest.raises(ValueError, match="data must be real, simulated, refined or mixed"):
        Setting("bad", "blend", 0)


def test_a_mixed_setting_runs_and_trains_on_both_image_sets(tmp_path, monkeypatch):
    config = _config(tmp_path, settings=(Setting("mixed_only", "mixed", 0),), compare=(),
                     seeds=(0,))
    from cellsynth.segment import trainer

    train, roots = trainer.train, []

    def spy(cfg, data, out, **kw):
        roots.append([Path(d).relative_to(tmp_path / "exp").as_posix() for d in data])
        return train(cfg, data, out, **kw)

    monkeypatch.setattr(trainer, "train", spy)
    results = run_experiment(config, tmp_path / "exp", log=lambda _: None)
    assert roots == [["sim/s0", "refined/s0"]]
    assert results["settings"]["mixed_only"]["data"] == "mixed"


def test_learning_curves_join_settings_that_differ_only_in_k(tmp_path):
    curve = experiment._curve
    assert curve(Setting("a", "simulated", 0)) == curve(Setting("b", "simulated", 2))
    assert curve(Setting("a", "refined", 0)) != curve(Setting("b", "refined", 0,
                                                              {"consistency": 10.0}))
    assert curve(Setting("a", "simulated", 2)) != curve(Setting("b", "simulated", 2,
                                                                tta=True))
    assert curve(Setting("a", "simulated", 2)) != curve(Setting("b", "simulated", 2,
                                                                detector={"replay": 0.5}))


def test_learning_curve_shows_both_of_two_curves_with_equal_points():
    score = {"mean": 0.946, "std": 0.0}
    results = {"settings": {
        "real_k2": {"data": "real", "k": 2, "f1_50": score},
        "refined_k0": {"data": "refined", "k": 0, "f1_50": {"mean": 0.9, "std": 0.01}},
        "refined_k2": {"data": "refined", "k": 2, "f1_50": score},
        "refined_all": {"data": "refined", "k": None, "f1_50": {"mean": 0.95, "std": 0.0}}}}
    points = experiment_results._curve_points(results, n_train=4)
    (real_x, _, _), (refined_x, refined_f1, _) = points["real"], points["refined"]
    assert refined_f1 == [0.9, 0.946, 0.95]  # sorted by k, "all" at the 4 training images
    assert real_x[0] != refined_x[1]  # the equal points at k = 2 are side by side
    assert all(abs(x - k) <= 0.5 for x, k in zip(refined_x, [0, 2, 4]))  # k still readable


def test_learning_curve_k_axis_is_logarithmic_only_when_all_lies_far_beyond():
    def results(ks):
        return {"settings": {f"s{k}": {"data": "refined", "k": k,
                                       "f1_50": {"mean": 0.5, "std": 0.0}} for k in ks}}

    assert not experiment_results._log_k_axis([0, 1, 2, 4])  # Nissl: k = 0 / 1 / 2 / all 4
    x, _, _ = experiment_results._curve_points(results([0, 1, 2, None]), n_train=4)["refined"]
    assert x == [0.0, 1.0, 2.0, 4.0]
    assert experiment_results._log_k_axis([0, 2, 5, 10, 46])  # 0 / 2 / 5 / 10 / all 46
    x, _, _ = experiment_results._curve_points(results([0, 2, 5, 10, None]), n_train=46)["refined"]
    assert x == pytest.approx(np.log2([1, 3, 6, 11, 47]))
    assert x[3] - x[2] > 0.8 and x[4] - x[3] < 2.3  # 5 -> 10 readable, 10 -> 46 not 36 wide


@pytest.mark.parametrize("ks,ticks", [([2], ["2"]), ([0, 1, 2, 4], ["0", "1", "2", "3", "4"]),
                                      ([0, 2, 5, 10, 46], ["0", "2", "5", "10", "46"])])
def test_the_k_axis_has_whole_ticks_even_for_one_k(ks, ticks):
    """One k alone was drawn with ticks at 1.875, 1.900, ... (second fresh-user audit)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    x = [experiment_results.k_position(ks)(k) if experiment_results._log_k_axis(ks) else k
         for k in ks]
    ax.errorbar(x, [0.5] * len(ks), yerr=[0.1] * len(ks), marker="o", linestyle="none")
    experiment_results._k_axis(ax, ks)
    fig.canvas.draw()
    shown = [t.get_text() for t in ax.get_xticklabels()
             if ax.get_xlim()[0] <= t.get_position()[0] <= ax.get_xlim()[1]]
    plt.close(fig)
    assert shown == ticks


def test_estimate_prices_a_soup_as_its_runs_and_one_validation(tmp_path):
    from tests.pipeline.test_estimate import FakeTimer

    # a soup of 3 fine-tunings beside the one fine-tuning that is its run 0
    config = _config(tmp_path, settings=(
        Setting("sim_ft_k1", "simulated", 1),
        Setting("sim_ft_k1_soup3", "simulated", 1, runs=3, soup=True)),
        compare=(("sim_ft_k1_soup3", "sim_ft_k1"),))
    by_kind = {e.stage: e for e in experiment.estimate_experiment(
        config, timer=FakeTimer(), channels=1)}
    mp = 64 * 64 / 1e6
    # per seed: the pretraining and 3 fine-tunings (run 0 shared), 2 steps x 2.0 s each;
    # validations at 10 s/MP: the pretraining on 2 synthetic images, each fine-tuning on its
    # 1 annotated image, the soup's threshold once on the same image
    assert by_kind["detectors"].seconds == pytest.approx(2 * (4 * 2 * 2.0 + (2 + 3 + 1) * 10 * mp))
    assert by_kind["detectors"].detail.startswith("8 to run")
    # the fine-tuning and the soup predict the 2 test images (the soup as fast as a run)
    assert by_kind["test predictions"].seconds == pytest.approx(2 * 2 * 2 * mp * 10.0)


def test_estimate_prices_every_unit_still_to_run_and_writes_nothing(tmp_path, monkeypatch,
                                                                     capsys):
    from cellsynth.cli import main
    from cellsynth.config import save_yaml
    from cellsynth.pipeline import estimate as estimate_module
    from cellsynth.pipeline.run import RunState, content_fingerprint
    from tests.pipeline.test_estimate import FakeTimer

    config = _config(tmp_path)
    config = replace(config, refine=replace(config.refine, consistency=1.0))
    by_kind = {e.stage: e for e in experiment.estimate_experiment(
        config, timer=FakeTimer(), channels=1)}
    mp = 64 * 64 / 1e6  # every image here is 64² (one tile)
    # per seed: 4 detectors of 2 steps x 2.0 s, each validated once (at step 2) on its val
    # images: real_k1 and sim_ft_k1 on their 1 image, the zero-label ones on 2 synthetic ones
    assert by_kind["detectors"].seconds == pytest.approx(2 * (4 * 2 * 2.0 + 10 * 6 * mp))
    assert by_kind["refiners"].seconds == pytest.approx(2 * (2 * 0.25 + 30.0))  # + judge
    # refine_minutes caps a refiner's training time (not the judge's): 0.3 s of 2 x 0.25
    capped = {e.stage: e for e in experiment.estimate_experiment(
        replace(config, refine_minutes=0.005), timer=FakeTimer(), channels=1)}
    assert capped["refiners"].seconds == pytest.approx(2 * (0.3 + 30.0))
    # 3 simulated and 2 validation images refined per seed, 0.125 s x (64 / 128)² each
    assert by_kind["refining"].seconds == pytest.approx(2 * 5 * 0.125 / 4)
    # 8 distinct detectors predict the 2 test images once
    assert by_kind["test predictions"].seconds == pytest.approx(8 * 2 * mp * 10.0)
    assert "pseudo-labels" not in by_kind
    assert "plateau" not in by_kind["detectors"].detail
    # detectors that stop at a plateau are priced in full, and said to be an upper bound
    patient = replace(config, supervised=replace(config.supervised, patience=3))
    priced = {e.stage: e for e in experiment.estimate_experiment(
        patient, timer=FakeTimer(), channels=1)}["detectors"]
    assert priced.seconds == by_kind["detectors"].seconds
    assert "2 may stop earlier at a plateau" in priced.detail   # real_k1, seeds 0 and 1
    # a unit done in OUT counts 0
    out = tmp_path / "exp"
    out.mkdir()
    units, _ = experiment._plan(config, out)
    prints = experiment._fingerprints(units, content_fingerprint(config.train))
    RunState(out).mark("refiner/s0", prints["refiner/s0"], done=True)
    again = {e.stage: e for e in experiment.estimate_experiment(
        config, out, timer=FakeTimer(), channels=1)}
    assert again["refiners"].seconds == pytest.approx(2 * 0.25 + 30.0)
    assert again["refiners"].detail.startswith("1 to run, 1 done")
    # the CLI prints the table and writes nothing
    save_yaml(tmp_path / "exp.yaml", config)
    monkeypatch.setattr(estimate_module, "Timer", lambda device: FakeTimer())
    assert main(["experiment", str(tmp_path / "exp.yaml"), "--out", str(tmp_path / "new"),
                 "--estimate"]) == 0
    printed = capsys.readouterr().out
    assert "detectors" in printed and "test predictions" in printed
    assert printed.strip().splitlines()[-1].split()[0] == "total"
    assert not (tmp_path / "new").exists()


def test_a_wall_time_cap_on_refiners_is_named_as_what_makes_results_load_dependent(tmp_path):
    config = _config(tmp_path)
    assert any(s.data in experiment._REFINED for s in config.settings)
    assert experiment.reproducibility_notes(config) == []  # steps fixed: nothing to say
    (note,) = experiment.reproducibility_notes(replace(config, refine_minutes=20.0))
    assert "refine_minutes: 20 " in note and "refine: {steps: N}" in note
    # without a refined setting the cap trains nothing, so there is nothing to warn about
    plain = replace(config, refine_minutes=20.0, settings=tuple(
        s for s in config.settings if s.data not in experiment._REFINED), compare=())
    assert experiment.reproducibility_notes(plain) == []


def test_processes_sharing_a_folder_never_run_one_unit_twice(tmp_path):
    # one seed split into two processes by --settings (as when one seed is late): both need
    # the seed's simulation and zero-label detector and reach them at the same time
    import threading

    config = _config(tmp_path, seeds=(0,), compare=(),
                     settings=(Setting("sim_only", "simulated", 0),
                               Setting("sim_ft_k1", "simulated", 1)))
    said: dict[str, list[str]] = {"sim_only": [], "sim_ft_k1": []}
    errors: list[BaseException] = []

    def one(name: str) -> None:
        part = experiment.select_settings(config, [name])
        try:
            run_experiment(part, tmp_path / "exp", log=said[name].append,
                           subset=experiment.subset_tag(config, part))
        except BaseException as e:  # noqa: BLE001  (asserted empty in the test's thread)
            errors.append(e)

    threads = [threading.Thread(target=one, args=(n,)) for n in said]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    ran = [line.split(": ")[0].split("] ")[1] for lines in said.values() for line in lines
           if line.endswith((": running", ": resuming"))]
    assert len(ran) == len(set(ran)), sorted(ran)
    # the shared units were needed by both, so one of the two waited for the other
    assert any(line.endswith("another process is running it; waiting")
               for lines in said.values() for line in lines)
    state = json.loads((tmp_path / "exp" / "state.json").read_text())
    assert set(ran) == {name for name, entry in state.items() if entry["done"]}
    for name in said:
        tag = experiment.subset_tag(config, experiment.select_settings(config, [name]))
        part = json.loads((tmp_path / "exp" / f"results.{tag}.json").read_text())
        assert list(part["settings"]) == [name] and part["subset"] == tag
    assert not (tmp_path / "exp" / "results.json").exists()


def test_a_part_of_an_experiment_leaves_the_whole_summary_as_it_was(tmp_path):
    config = _config(tmp_path, settings=(Setting("real_k1", "real", 1),
                                         Setting("sim_only", "simulated", 0)),
                     compare=(("sim_only", "real_k1"),))
    run_experiment(config, tmp_path / "exp", log=lambda _: None)
    whole = {n: (tmp_path / "exp" / n).read_bytes()
             for n in ("results.json", "results.md", "learning_curve.png", "config.yaml")}
    part = experiment.select_settings(replace(config, seeds=(1,)), ["sim_only"])
    tag = experiment.subset_tag(config, part)
    assert tag == "seeds-1_settings-sim_only"  # (named, where a hash said nothing)
    more = replace(config, settings=config.settings + (Setting("x" * 60, "real", 1),))
    assert experiment.subset_tag(more, config) == "settings-real_k1+sim_only"
    tag_long = experiment.subset_tag(more, experiment.select_settings(more, ["x" * 60]))
    assert tag_long.startswith("settings-") and len(tag_long) == len("settings-") + 8
    said: list[str] = []
    results = run_experiment(part, tmp_path / "exp", log=said.append, subset=tag)
    assert not [line for line in said if "running" in line]  # all shared, nothing retrains
    assert list(results["settings"]) == ["sim_only"] and results["seeds"] == [1]
    for name, content in whole.items():
        assert (tmp_path / "exp" / name).read_bytes() == content, name
    assert json.loads((tmp_path / "exp" / f"results.{tag}.json").read_text())["seeds"] == [1]
    assert "| sim_only |" in (tmp_path / "exp" / f"results.{tag}.md").read_text()
    # the whole experiment and more seeds are no part; fewer seeds or settings are
    assert experiment.subset_tag(config, config) is None
    assert experiment.subset_tag(config, replace(config, seeds=(0, 1, 2))) is None
    assert experiment.subset_tag(config, replace(config, seeds=(0,))) == "seeds-0"


def _side_by_side_config(tmp_path: Path) -> ExperimentConfig:
    return _config(tmp_path, settings=(Setting("real_k1", "real", 1),
                                       Setting("sim_ft_k1", "simulated", 1)),
                   compare=(("sim_ft_k1", "real_k1"),))


def test_units_side_by_side_train_what_they_train_in_turn_and_test_comes_last(
        tmp_path, monkeypatch):
    import torch

    from cellsynth.segment import folders

    config = _side_by_side_config(tmp_path)
    monkeypatch.setenv("CELLSYNTH_THREADS", "1")  # in turn with the share each process gets
    in_turn = run_experiment(config, tmp_path / "turn", log=lambda _: None)
    monkeypatch.setattr(experiment, "parallel_plan", lambda runs, device: (2, 1))
    units, _ = experiment._plan(config, tmp_path / "side")
    phase1 = {u.name for u in units}
    predict_folder = folders.predict_folder
    done_when_tested: list[set] = []

    def spy_predict(*a, **kw):  # phase 2 runs here, in the calling process
        state = json.loads((tmp_path / "side" / "state.json").read_text())
        done_when_tested.append({n for n, e in state.items() if e["done"]} & phase1)
        return predict_folder(*a, **kw)

    monkeypatch.setattr(folders, "predict_folder", spy_predict)
    said: list[str] = []
    side = run_experiment(config, tmp_path / "side", log=said.append, processes=2)
    # every unit ran once, in a pool process, and the test split was read after all of them
    ran = [line for line in said if "running (side by side, 1 thread(s))" in line]
    assert len(ran) == len(phase1)
    assert {line.split("] ")[1].split(":")[0] for line in said if ": running" in line
            and "side by side" not in line} == {f"evaluations/{d}_s{s}" for s in (0, 1)
                                                  for d in ("real_k1", "simulated_k1")}
    assert done_when_tested and all(d == phase1 for d in done_when_tested)
    for name in phase1:
        if name.startswith("detectors/"):
            a = torch.load(tmp_path / "turn" / name / "best.pt", weights_only=False)["model"]
            b = torch.load(tmp_path / "side" / name / "best.pt", weights_only=False)["model"]
            assert all(torch.equal(a[k], b[k]) for k in a), name
    for name, r in in_turn["settings"].items():
        assert side["settings"][name]["f1_50"]["per_seed"] == r["f1_50"]["per_seed"]
    info = json.loads((tmp_path / "side" / "detectors/real_k1_s0" / "run.json").read_text())
    assert info["torch_threads"] == [[0, 1]]
    said.clear()  # a rerun finds everything done
    run_experiment(config, tmp_path / "side", log=said.append, processes=2)
    assert not [line for line in said if "running" in line]


def test_a_failing_unit_side_by_side_stops_the_experiment_with_its_error(tmp_path,
                                                                         monkeypatch):
    from cellsynth.errors import CellsynthError
    from cellsynth.pipeline.run import RunState, content_fingerprint

    config = _side_by_side_config(tmp_path)
    out = tmp_path / "exp"
    units, _ = experiment._plan(config, out)
    prints = experiment._fingerprints(units, content_fingerprint(config.train))
    broken = "detectors/real_k1_s1"  # interrupted, with a checkpoint cut short
    (out / broken).mkdir(parents=True)
    (out / broken / "last.pt").write_bytes(b"PK\x03\x04 cut short")
    RunState(out).mark(broken, prints[broken], done=False)
    monkeypatch.setattr(experiment, "parallel_plan", lambda runs, device: (2, 1))
    said: list[str] = []
    with pytest.raises(CellsynthError, match="cannot load checkpoint"):
        run_experiment(config, out, log=said.append, processes=2)
    assert any(line.endswith(f"{broken}: resuming (side by side, 1 thread(s))")
               for line in said)
    state = json.loads((out / "state.json").read_text())
    assert not state[broken]["done"]
    assert not (out / "results.json").exists()  # no test split read, no summary


@pytest.mark.parametrize("role", ["train", "test"])
def test_a_folder_at_another_pixel_size_than_the_simulation_is_refused_before_work(tmp_path,
                                                                                   role):
    """An experiment uses every image as it is: a simulation at 0.25 um/px trained with real
    images at 0.5 without a word, and only predicting the test split warned, after all the
    training (fresh-user audit). Refused up front; the same size (within the tolerance) and
    a folder that states none pass."""
    import json

    from cellsynth.errors import ConfigError

    config = replace(_config(tmp_path),
                     simulate=SimulateOptions(preset="fluo", n=3, size=64, workers=1,
                                              pixel_size_um=0.25))
    experiment.check_experiment(config)  # (no folder states a size)
    folder = Path(getattr(config, role))
    (folder / "meta.json").write_text(json.dumps({"pixel_size_um": 0.5}))
    with pytest.raises(ConfigError, match=rf"{role}: images at 0.5 um/px, the simulation at "
                                          r"0.25 \(preset fluo\).*simulate.pixel_size_um: 0.5"):
        experiment.check_experiment(config)
    (folder / "meta.json").write_text(json.dumps({"pixel_size_um": 0.25001}))
    experiment.check_experiment(config)


def test_a_test_split_that_shares_images_with_train_is_refused(tmp_path):
    """test: = train:, or a training image copied into the test folder, was scored as held
    out without a note (fresh-user audit)."""
    import shutil

    from cellsynth.errors import ConfigError

    config = _config(tmp_path)
    experiment.check_experiment(config)
    with pytest.raises(ConfigError, match=r"test: is the train: folder"):
        experiment.check_experiment(replace(config, test=config.train))
    train, test = Path(config.train), Path(config.test)
    shutil.copy(train / "images" / "img2.png", test / "images" / "img2.png")
    shutil.copy(train / "labels" / "img2.tif", test / "labels" / "img2.tif")
    with pytest.raises(ConfigError, match=r"1 test image\(s\) also in .*e\.g\. img2\.png"):
        experiment.check_experiment(config)


def test_estimate_counts_an_evaluation_done_only_with_its_fingerprint(tmp_path, monkeypatch):
    """After a change of tiles (or a retrained detector) every evaluation runs again, but
    `--estimate` said "0 to run": it counted an evaluation done by its name (audit)."""
    from tests.pipeline.test_estimate import FakeTimer

    config = _config(tmp_path, seeds=(0,), settings=(
        Setting("real_k1", "real", 1),
        Setting("real_k1_faint", "real", 1, tta=True, faint_percentile=5)), compare=())
    out = tmp_path / "exp"
    run_experiment(config, out, log=lambda _: None)

    def predictions(config):
        return {e.stage: e for e in experiment.estimate_experiment(
            config, out, timer=FakeTimer(), channels=1)}["test predictions"]

    done = predictions(config)
    assert done.seconds == 0 and done.detail.startswith("0 to run, 2 done")
    again = predictions(replace(config, tiles=1))
    assert again.detail.startswith("2 to run") and again.seconds > 0
    events = _record_trainings_and_predictions(monkeypatch, lambda kw: ())
    run_experiment(replace(config, tiles=1), out, log=lambda _: None)
    assert events == [("predict",), ("predict",)]  # what the estimate priced, nothing else


def test_finetune_takes_the_network_pretrain_names_in_an_experiment_too(tmp_path):
    from cellsynth.config import save_yaml, to_dict
    from cellsynth.pipeline.experiment import load_experiment_config

    data = to_dict(_config(tmp_path))
    data["pretrain"] = {**data["pretrain"], "model": "tiny_u22"}
    data.pop("finetune")
    save_yaml(tmp_path / "exp.yaml", data)
    assert load_experiment_config(tmp_path / "exp.yaml").finetune.model == "tiny_u22"
    data["finetune"] = {"model": "slim_u22"}
    save_yaml(tmp_path / "exp.yaml", data)
    with pytest.raises(ConfigError, match=r"exp.yaml: finetune: starts from the pretrained "
                                          r"detectors.*\(model tiny_u22 vs slim_u22\)"):
        load_experiment_config(tmp_path / "exp.yaml")


def test_seeds_in_the_folder_beyond_the_runs_seeds_are_found():
    """The plain command after a `--seeds 0 1` run rewrote results.json with seed 0 alone and
    no word of seed 1 (audit): the seeds a folder holds finished units of are found."""
    state = {"sim/s0": {"done": True}, "sim/s1": {"done": True},
             "detectors/real_kall_s1": {"done": True}, "detectors/x_k3_s2": {"done": False},
             "eval/real_kall_s3_tta": {"done": True}}
    assert experiment._other_seeds(state, (0,)) == [1]
    assert experiment._other_seeds(state, (0, 1)) == []


def test_an_experiment_recorded_when_contents_were_hashed_the_older_way_is_kept(
        tmp_path, monkeypatch):
    """Experiments recorded before the data fingerprint took only the data files (days of
    CPU) are neither redone nor priced again: their entries are re-keyed to now's."""
    from cellsynth.io.images import read_image, write_image
    from cellsynth.pipeline import experiment_plan
    from cellsynth.pipeline.run import content_fingerprint
    from tests.pipeline.test_estimate import FakeTimer

    config = _config(tmp_path, seeds=(0,), compare=(), settings=(
        Setting("real_k1", "real", 1), Setting("refined_only", "refined", 0)))
    (Path(config.train) / "notes.txt").write_text("mine")
    out = tmp_path / "exp"
    with monkeypatch.context() as older:
        for module in (experiment, experiment_plan):
            older.setattr(module, "content_fingerprint",
                          lambda path, legacy=False: content_fingerprint(path, legacy=True))
        run_experiment(config, out, log=lambda _: None)
    recorded = json.loads((out / "state.json").read_text())
    first = json.loads((out / "results.json").read_text())
    assert content_fingerprint(config.train) != content_fingerprint(config.train, legacy=True)
    priced = {e.stage: e for e in experiment.estimate_experiment(
        config, out, timer=FakeTimer(), channels=1)}
    assert priced["detectors"].seconds == 0 and priced["test predictions"].seconds == 0
    assert priced["refiners"].detail.startswith("0 to run")
    events = _record_trainings_and_predictions(monkeypatch, lambda kw: ())
    said: list[str] = []
    results = run_experiment(config, out, log=said.append)
    assert events == [] and not [line for line in said if "running" in line], said
    rekeyed = json.loads((out / "state.json").read_text())
    assert set(rekeyed) == set(recorded)
    changed = [n for n in recorded if rekeyed[n]["fingerprint"] != recorded[n]["fingerprint"]]
    assert "refiner/s0" in changed and any(n.startswith("evaluations/") for n in changed)
    assert all(rekeyed[n]["done"] for n in rekeyed)
    assert {n: r["f1_50"]["per_seed"] for n, r in results["settings"].items()} == {
        n: r["f1_50"]["per_seed"] for n, r in first["settings"].items()}
    # an annotated image edited: the detectors trained on it run again
    label = sorted((Path(config.train) / "labels").iterdir())[0]
    write_image(label, np.zeros_like(read_image(label)))
    run_experiment(config, out, log=lambda _: None)
    assert ("train",) in events
