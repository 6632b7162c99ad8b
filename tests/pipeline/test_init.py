"""`cellsynth init`: a pipeline config for a user's own folders (stain, pixel size, recipe)."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from cellsynth.cli import main
from cellsynth.errors import DatasetError
from cellsynth.io.images import read_image, read_labels, write_image, write_labels
from cellsynth.pipeline.config import load_pipeline_config
from cellsynth.pipeline.init import find_folders
from cellsynth.pipeline.stain import guess_stain, stain_mismatch
from cellsynth.simulate import simulate


def _folder(root, preset, n=2, labels=True, seed=0, size=96):
    (root / "images").mkdir(parents=True)
    if labels:
        (root / "labels").mkdir()
    for i, (image, label) in enumerate(simulate(preset, n, size, seed=seed)):
        write_image(root / "images" / f"{preset}{i}.png", image)
        if labels:
            write_labels(root / "labels" / f"{preset}{i}.png", label)
    return root


@pytest.mark.parametrize("preset", ["merker", "nissl", "he", "fluo"])
def test_the_stain_of_each_preset_is_recognised_from_its_images(tmp_path, preset):
    root = _folder(tmp_path / preset, preset, n=3, labels=False, size=128)
    guess = guess_stain(sorted((root / "images").iterdir()))
    assert guess.preset == preset, guess.reason
    assert guess.n_images == 3 and "3 of 3 image(s)" in guess.reason


@pytest.mark.parametrize("drawn,color,wrong", [
    ("he", "fluo", "bright nuclei on a dark background; preset 'he' fits them"),
    ("nissl", "gray", "has one channel .*; preset 'nissl' fits them"),
    ("fluo", "he", "dark cells on a bright background; preset 'fluo' fits them"),
    ("merker", "fluo", "bright nuclei on a dark background; preset 'merker' fits them"),
    ("he", "he", None), ("nissl", "violet", None), ("fluo", "fluo", None),
    ("merker", "gray", None), ("he", "violet", None)])
def test_images_another_colour_model_fits_are_named_with_the_preset_that_fits(drawn, color,
                                                                              wrong):
    """fit-simulator fitted RGB H&E with the fluorescence preset for minutes without a word
    (fresh-user audit); Nissl against H&E is left alone (their votes are close)."""
    images = [image for image, _ in simulate(drawn, 3, 128, seed=1)]
    said = stain_mismatch(color, images, name="preset 'x'")
    if wrong is None:
        assert said is None
    else:
        assert re.search(wrong, said), said
        assert said.startswith("3 of 3 look")


def test_a_16_bit_copy_of_8_bit_content_gives_the_same_guess(tmp_path):
    """Content decides, not the dtype (a uint16 file holding 0-255)."""
    image, _ = next(simulate("nissl", 1, 128, seed=0))
    write_image(tmp_path / "a.tif", image.astype(np.uint16))
    assert guess_stain([tmp_path / "a.tif"]).preset == "nissl"


def test_init_writes_the_annotated_recipe_for_the_readme_layout(tmp_path, capsys):
    data = tmp_path / "my-data"
    _folder(data / "unlabeled", "nissl", labels=False, seed=1)
    _folder(data / "train", "nissl", seed=2)
    _folder(data / "test", "nissl", seed=3)
    (data / "unlabeled" / "meta.json").write_text(json.dumps({"pixel_size_um": 0.4}))
    out = tmp_path / "my-data.yaml"
    assert main(["init", str(data), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "preset nissl (guessed" in printed and "pixel size 0.4 um/px" in printed
    config = load_pipeline_config(out)
    assert config.simulate.preset == "nissl" and config.real.pixel_size_um == 0.4
    assert config.finetune.replay == 0.5 and config.refine.consistency == 0.0
    assert config.finetune.lr == 1e-3  # the pretraining's: +0.03 F1@0.5 on Nissl
    assert config.real.unlabeled == str(data / "unlabeled")
    assert config.real.train == config.real.val == str(data / "train")
    assert config.real.test == str(data / "test")
    # paths are relative to the config, so folder and config move together
    assert yaml.safe_load(out.read_text())["real"]["train"] == "my-data/train"
    # nothing is overwritten without --force
    before = out.read_text()
    assert main(["init", str(data), "--out", str(out), "--preset", "he"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "exists" in err and out.read_text() == before
    assert main(["init", str(data), "--out", str(out), "--preset", "he", "--force"]) == 0
    config = load_pipeline_config(out)
    assert config.simulate.preset == "he" and config.simulate.fit_from == "real.unlabeled"
    # H&E fine-tunes without replay (it cost F1 on tcga_lgg); the Nissl config above kept it
    assert config.finetune.replay == 0.0 and "no replay on H&E" in out.read_text()
    assert config.finetune.lr == 1e-3
    # packed nuclei stay apart (box NMS 0.5, measured on H&E and Nissl)
    assert config.predict.nms == 0.5 and config.predict.tta
    # fluorescence fine-tunes at 1e-3 too (measured level or better on dsb2018_fluo) and keeps
    # celldetection's NMS (0.5 was measured on Nissl and H&E only)
    assert main(["init", str(data), "--out", str(out), "--preset", "fluo", "--force"]) == 0
    assert load_pipeline_config(out).finetune.lr == 1e-3
    assert load_pipeline_config(out).predict.nms is None


def test_folders_stating_different_pixel_sizes_are_one_line_unless_one_is_named(tmp_path,
                                                                                capsys):
    """init took the first folder's pixel size for the whole project: annotated images
    stating 0.346 um/px beside unlabeled ones stating 0.5 were then resampled 1.45x for
    fine-tuning without a word. Named with --pixel-size, the user has chosen."""
    data = tmp_path / "project"
    _folder(data / "unlabeled", "nissl", labels=False, seed=1)
    _folder(data / "train", "nissl", seed=2)
    (data / "unlabeled" / "meta.json").write_text(json.dumps({"pixel_size_um": 0.5}))
    (data / "train" / "meta.json").write_text(json.dumps({"pixel_size_um": 0.346}))
    out = tmp_path / "p.yaml"
    assert main(["init", str(data), "--out", str(out)]) != 0
    err = capsys.readouterr().err
    assert ("the folders state different pixel sizes: 0.5 um/px (meta.json of "
            f"{data / 'unlabeled'}); 0.346 um/px (meta.json of {data / 'train'})") in err
    assert not out.exists()
    assert main(["init", str(data), "--out", str(out), "--pixel-size", "0.346"]) == 0
    assert load_pipeline_config(out).real.pixel_size_um == 0.346
    # the same size stated twice (within the tolerance) is one
    (data / "train" / "meta.json").write_text(json.dumps({"pixel_size_um": 0.5001}))
    assert main(["init", str(data), "--out", str(out), "--force"]) == 0
    assert load_pipeline_config(out).real.pixel_size_um == 0.5


def test_init_on_unlabeled_images_alone_writes_the_zero_label_recipe(tmp_path, capsys):
    data = _folder(tmp_path / "section", "fluo", labels=False)
    out = tmp_path / "cfg" / "section.yaml"
    assert main(["init", str(data), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "pixel size unknown" in printed and "zero-label recipe" in printed
    config = load_pipeline_config(out)
    assert config.simulate.preset == "fluo" and config.refine.consistency == 10.0
    assert config.real.train is None and config.real.pixel_size_um is None
    assert config.real.unlabeled == str(data)
    assert "UNKNOWN" in out.read_text()
    assert main(["init", str(data), "--out", str(out), "--force", "--pixel-size", "0.65"]) == 0
    assert load_pipeline_config(out).real.pixel_size_um == 0.65


@pytest.mark.parametrize("name", ["slides #2", "run: 3", "yes", "a b (1)"])
def test_folder_names_yaml_would_misread_are_written_quoted(tmp_path, capsys, name):
    """A folder named `slides #2` was written unquoted, so the config named `slides` (the
    rest a comment): "no such folder"; `run: 3` made the YAML invalid."""
    data = _folder(tmp_path / name, "fluo", labels=False)
    out = tmp_path / "cfg.yaml"
    assert main(["init", str(data), "--out", str(out)]) == 0
    assert load_pipeline_config(out).real.unlabeled == str(data)


def test_init_on_two_channel_images_writes_the_channel_every_stage_uses(tmp_path, capsys):
    """2-channel ImageJ TIFFs (nuclei in channel 1, channel 0 another stain that looks like
    a bright-field one): init writes real.channel 0 with a comment to check it and says
    so; --channel 1 guesses the stain from that channel; a channel they lack is one line."""
    import tifffile

    data = tmp_path / "fluo2"
    (data / "images").mkdir(parents=True)
    for i, (image, _) in enumerate(simulate("fluo", 2, 128, seed=2)):
        tifffile.imwrite(data / "images" / f"f{i}.tif", np.stack([255 - image, image]),
                         imagej=True, metadata={"axes": "CYX"})
    out = tmp_path / "f.yaml"
    assert main(["init", str(data), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "your images have 2 channels: every stage uses channel 0" in printed
    # each channel side by side, to see which holds the cells: channel 1 is the nuclei
    preview = read_image(tmp_path / "f-channels.png")
    assert f"Channels 0-1 of one image, left to right: {tmp_path / 'f-channels.png'}" in printed
    nuclei = next(iter(simulate("fluo", 1, 128, seed=2)))[0]
    left, right = preview[:128, :128, 0], preview[:128, -128:, 0]
    assert np.corrcoef(right.ravel(), nuclei.ravel())[0, 1] > 0.95
    assert np.corrcoef(left.ravel(), nuclei.ravel())[0, 1] < -0.95
    assert "channel: 0   # of your images' 2 channels (0-1), the one every stage uses: CHECK" \
        in out.read_text()
    first = load_pipeline_config(out)
    assert first.real.channel == 0 and first.simulate.preset == "merker"  # channel 0's look
    assert main(["init", str(data), "--out", str(out), "--force", "--channel", "1"]) == 0
    assert "channel 1 of 2 (--channel)" in capsys.readouterr().out
    config = load_pipeline_config(out)
    assert config.real.channel == 1 and config.simulate.preset == "fluo"
    before = out.read_text()
    assert main(["init", str(data), "--out", str(out), "--force", "--channel", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "f0.tif: --channel 2, but the image has 2 channel(s)" in err[0]
    assert out.read_text() == before


def test_configs_and_runs_are_named_by_the_data_not_by_a_role_folder(tmp_path, capsys,
                                                                     monkeypatch):
    """init of dsb2018/train (or its images/) names config and run dsb2018-train; a folder
    with its own name keeps it."""
    data = _folder(tmp_path / "dsb2018" / "train", "fluo", labels=False)
    monkeypatch.chdir(tmp_path)
    for given in (data, data / "images"):
        assert main(["init", str(given), "--force"]) == 0
        assert "next: cellsynth run dsb2018-train.yaml --out runs/dsb2018-train" in \
            capsys.readouterr().out
        assert load_pipeline_config(tmp_path / "dsb2018-train.yaml").name == "dsb2018-train"
    mine = _folder(tmp_path / "cortex-slides", "fluo", labels=False)
    assert main(["init", str(mine)]) == 0 and (tmp_path / "cortex-slides.yaml").is_file()


def test_init_on_the_images_subfolder_reads_its_dataset_with_the_labels(tmp_path):
    """`init DATA/images` (a folder a user may point at first) finds the labels/ beside it:
    the annotated recipe, not the zero-label one of its images alone."""
    data = _folder(tmp_path / "data", "fluo")
    assert find_folders(data / "images") == find_folders(data) == {"unlabeled": data,
                                                                    "train": data}


def test_an_annotated_folder_without_labels_is_one_line_and_writes_nothing(tmp_path, capsys):
    data = tmp_path / "d"
    _folder(data / "unlabeled", "merker", labels=False)
    _folder(data / "train", "merker", labels=False)  # train/ without labels/
    out = tmp_path / "d.yaml"
    assert main(["init", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "without a label file" in err and "train" in err
    assert not out.exists() and list(tmp_path.glob(".d.*")) == []
    with pytest.raises(DatasetError, match="no such folder"):
        find_folders(tmp_path / "missing")
    (tmp_path / "mk.py").write_text("print(1)\n")  # a file said "no such folder"
    with pytest.raises(DatasetError, match=r"mk.py: a file, not a folder; give the folder of "
                                           r"images it is in"):
        find_folders(tmp_path / "mk.py")


@pytest.mark.parametrize("recipe", ["fast", "accurate", None])
def test_the_written_recipe_runs_end_to_end_when_shrunk(tmp_path, recipe):
    """Every option init writes (replay, TTA, held-out simulated validation, the consistency
    refiner; the accurate recipe's pretraining on the plain simulation beside unlabeled
    images, and its soup) works together in `cellsynth run`; only the sizes are shrunk to
    seconds. ``None``: no annotated images."""
    from dataclasses import replace

    from cellsynth.pipeline.run import run

    annotated = recipe is not None
    data = tmp_path / "d"
    _folder(data / "unlabeled", "nissl", labels=False, seed=1, size=64)
    if annotated:
        _folder(data / "train", "nissl", seed=2, size=64)
    if recipe == "fast":  # (the accurate run predicts the unlabeled images instead)
        _folder(data / "test", "nissl", seed=3, size=64)
    assert main(["init", str(data), "--out", str(tmp_path / "d.yaml"), "--pixel-size", "0.346"]
                + (["--recipe", recipe] if annotated else [])) == 0
    config = load_pipeline_config(tmp_path / "d.yaml")
    tiny = {"crop": 64, "batch": 1, "samples": 32, "order": 4, "refinement_iterations": 1,
            "checkpoint_every": 1, "val_every": 1}
    config = replace(
        config,
        simulate=replace(config.simulate, n=3, size=64, workers=1, n_val=2),
        refine=replace(config.refine, steps=2, crop=32, batch=2, width=8, blocks=1,
                       spade_hidden=8, d_layers=2, d_scales=1, sample_every=1,
                       checkpoint_every=1, buffer_size=4, consistency_steps=2),
        pretrain=replace(config.pretrain, steps=2, **tiny),
        finetune=replace(config.finetune, steps=2, warmup=0, **tiny))
    summaries = run(config, tmp_path / "run", progress=False, log=lambda _: None)
    assert ("finetune" in summaries) == annotated
    assert ("evaluate" in summaries) == (recipe == "fast")
    assert config.predict.tta and config.refine.consistency == (0.0 if annotated else 10.0)
    # the accurate recipe trains no refiner although unlabeled images are named
    assert ("refiner" in summaries) == (recipe != "accurate")
    assert (tmp_path / "run" / "refined").exists() == (recipe != "accurate")
    assert ("soup" in summaries) == (recipe == "accurate")
    # both annotated Nissl recipes drop detections paler than 95 % of the annotated cells,
    # measured on all of them (real.val is the training images here); the fast one since
    # it was measured on it too (docs/results/fast_predict)
    meta = json.loads((tmp_path / "run" / "predict" / "meta.json").read_text())
    if annotated:
        cells = sum(len(np.unique(read_labels(p))) - 1
                    for p in sorted((data / "train" / "labels").iterdir()))
        assert meta["faint"]["percentile"] == 5 and meta["faint"]["dark"]
        assert meta["faint"]["n_objects"] == cells > 0
        # the report says how to predict new images the same way
        report = (tmp_path / "run" / "report.html").read_text()
        assert f"--faint-from {meta['faint_from']} --faint-percentile 5" in report
        # and keeps packed somata apart as the recipe measured (nms 0.5, not 0.2)
        # (and at the pixel size init was given: new images stating none are taken at it)
        assert meta["nms_thresh"] == 0.5
        assert "--tta --nms 0.5 --pixel-size 0.346 --faint-from" in report
    else:
        assert meta["faint"] is None and config.predict.faint_percentile == 0
        assert meta["nms_thresh"] == 0.2 and "--nms" not in (tmp_path / "run" /
                                                               "report.html").read_text()
    labels = sorted((tmp_path / "run" / "predict" / "labels").iterdir())
    assert [p.stem for p in labels] == (["nissl0", "nissl1"])  # test/ or the unlabeled images


def test_the_recipe_is_the_accurate_one_for_nissl_where_training_is_fast(tmp_path, capsys,
                                                                         monkeypatch):
    """accurate (no refiner, 2500 pretraining steps chosen on simulated images, soup of 5)
    for Nissl on a GPU or a CPU with native bf16; fast (refiner, one fine-tuning) for Nissl in
    fp32 and for stains the accurate recipe was not measured on; --recipe overrides."""
    import torch

    from cellsynth import hardware
    from cellsynth.pipeline.stages import plan

    data = tmp_path / "slides"
    _folder(data / "unlabeled", "nissl", labels=False, seed=1)
    _folder(data / "train", "nissl", seed=2)
    out = tmp_path / "slides.yaml"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def init(*extra, precision="bf16"):
        monkeypatch.setattr(hardware, "choose_precision",
                            lambda *a, **k: hardware.Precision(precision, "auto: measured"))
        assert main(["init", str(data), "--out", str(out), "--force", *extra]) == 0
        printed = capsys.readouterr().out
        config = load_pipeline_config(out)
        return config, printed, [stage.name for stage in plan(config)]

    config, printed, stages = init()
    assert "accurate annotated recipe (bf16 training here: measured)" in printed
    assert not config.refiner and "refiner" not in stages and "refined" not in stages
    assert config.real.unlabeled == str(data / "unlabeled")  # still predicted
    assert config.pretrain_val == "synthetic" and config.pretrain.steps == 2500
    assert config.soup == 5 and config.finetune.steps == 240 and config.simulate.n == 400
    assert config.finetune.replay == 0.5 and stages[-3:-1] == ["soup", "predict"]

    config, printed, stages = init(precision="fp32")
    assert "fast annotated recipe (fp32 training here: measured; the accurate" in printed
    assert "which `run --reuse` then takes into later runs" in printed
    assert config.refiner and "refiner" in stages and config.soup == 1
    assert config.pretrain.steps == 600 and config.pretrain_val == "real"

    config, printed, _ = init("--recipe", "accurate", precision="fp32")
    assert "(chosen by --recipe)" in printed and config.soup == 5 and not config.refiner

    config, printed, _ = init("--preset", "he")
    assert "fast annotated recipe (the accurate recipe's gains were measured on Nissl, not he"\
        in printed and config.refiner and config.simulate.fit_from == "real.unlabeled"
    # H&E's fast recipe averages 5 fine-tunings (measured there); Nissl's fast one above not
    assert config.soup == 5 and config.finetune.steps == 300
    config, _, stages = init("--preset", "he", "--recipe", "accurate")
    # H&E keeps its own choices: no replay, the simulation fitted to the unlabeled images
    assert config.soup == 5 and config.finetune.replay == 0.0 and "refiner" not in stages
    assert config.simulate.fit_from == "real.unlabeled" and stages[0] == "fit"

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Some GPU")
    config, printed, _ = init(precision="fp32")
    assert "accurate annotated recipe (training on a GPU" in printed and config.soup == 5


def test_init_runs_the_recipe_on_a_gpu_where_there_is_one(tmp_path, capsys, monkeypatch):
    import torch

    data = tmp_path / "slides"
    _folder(data / "train", "nissl", seed=2)
    out = tmp_path / "slides.yaml"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["init", str(data), "--out", str(out)]) == 0
    assert "device cpu (no CUDA GPU found)" in capsys.readouterr().out
    config = load_pipeline_config(out)
    assert config.device == "cpu" and config.pretrain.workers == config.finetune.workers == 0

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Some GPU")
    assert main(["init", str(data), "--out", str(out), "--force"]) == 0
    assert "device cuda (a GPU was found (Some GPU)" in capsys.readouterr().out
    config = load_pipeline_config(out)
    # batch workers: the training loop's own batches were half of a GPU step
    assert config.device == "cuda" and config.pretrain.workers == config.finetune.workers == 4
    assert main(["init", str(data), "--out", str(out), "--force", "--device", "cpu"]) == 0
    assert load_pipeline_config(out).pretrain.workers == 0
    # a config for a GPU machine written on one without: written, and said
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    capsys.readouterr()
    assert main(["init", str(data), "--out", str(out), "--force", "--device", "cuda"]) == 0
    assert ("device cuda (chosen by --device; this machine has no CUDA GPU, so run it where "
            "there is one)") in capsys.readouterr().out
    assert load_pipeline_config(out).device == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # zero labels on a GPU: its pretraining has workers too
    unlabeled = _folder(tmp_path / "unlabeled", "nissl", labels=False, seed=3)
    assert main(["init", str(unlabeled), "--out", str(out), "--force"]) == 0
    assert load_pipeline_config(out).pretrain.workers == 4
    before = out.read_text()
    assert main(["init", str(data), "--out", str(out), "--force", "--device", "gpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "device must be cpu, cuda or cuda:N" in err
    assert out.read_text() == before  # nothing written


def test_image_files_stating_different_pixel_sizes_are_named_not_called_unknown(tmp_path,
                                                                              capsys):
    """A folder from two objectives: its files state 0.5 and 0.65 um/px. init said "pixel
    size unknown (no --pixel-size, meta.json or file metadata)"; each image is read at its
    own, and init now says so with the sizes."""
    import tifffile

    data = tmp_path / "slides"
    (data / "images").mkdir(parents=True)
    image = next(iter(simulate("fluo", 1, 96, seed=0)))[0]
    for i, um in enumerate((0.5, 0.5, 0.65)):
        tifffile.imwrite(data / "images" / f"s{i}.tif", image,
                         resolution=(1e4 / um, 1e4 / um), resolutionunit="CENTIMETER")
    out = tmp_path / "s.yaml"
    assert main(["init", str(data), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert ("your image files state different pixel sizes: 0.5 um/px (2 image(s)), "
            "0.65 um/px (1 image(s)); each is read at its own") in printed
    assert "pixel size unknown" not in printed
    assert load_pipeline_config(out).real.pixel_size_um is None
    # a test/ folder stating one size beside them was written as the size of all, which
    # `run` then applied to every real image (0.25 for these 0.5 and 0.65 ones; audit)
    (data / "train").mkdir()
    (data / "images").rename(data / "train" / "images")
    (data / "train" / "labels").mkdir()
    (data / "test" / "images").mkdir(parents=True)
    (data / "test" / "labels").mkdir()
    labels = next(iter(simulate("fluo", 1, 96, seed=0)))[1]
    for i in range(3):
        write_labels(data / "train" / "labels" / f"s{i}.tif", labels)
    tifffile.imwrite(data / "test" / "images" / "t.tif", image, resolution=(4e4, 4e4),
                     resolutionunit="CENTIMETER")
    write_labels(data / "test" / "labels" / "t.tif", labels)
    assert main(["init", str(data), "--out", str(out), "--force"]) == 0
    printed = capsys.readouterr().out
    assert ("your image files state different pixel sizes: 0.25 um/px (1 image(s)), "
            "0.5 um/px (2 image(s)), 0.65 um/px (1 image(s)); each is read at its own") in printed
    assert load_pipeline_config(out).real.pixel_size_um is None


def test_role_folders_named_otherwise_are_found(tmp_path, capsys):
    """`training/`, `Test/` and `unlabelled/` (as the README spells it in places): init
    said "no images found (expected project/images/...)" and never named the role folders."""
    data = tmp_path / "project"
    _folder(data / "unlabelled", "nissl", labels=False, seed=1)
    _folder(data / "training", "nissl", seed=2)
    _folder(data / "Test", "nissl", seed=3)
    out = tmp_path / "p.yaml"
    assert main(["init", str(data), "--out", str(out), "--pixel-size", "0.346"]) == 0
    real = load_pipeline_config(out).real
    assert (Path(real.unlabeled).name, Path(real.train).name, Path(real.test).name) == (
        "unlabelled", "training", "Test")
    assert main(["inspect", str(data)]) == 0
    shown = capsys.readouterr().out
    assert "unlabelled/" in shown and "training/" in shown and "Test/" in shown


def test_a_test_folder_copied_from_train_is_refused(tmp_path, capsys):
    """init wrote a config that scored copies of the training images as held out (audit)."""
    import shutil

    data = tmp_path / "project"
    _folder(data / "train", "nissl", seed=2)
    shutil.copytree(data / "train", data / "test")
    out = tmp_path / "p.yaml"
    assert main(["init", str(data), "--out", str(out), "--pixel-size", "0.346"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "2 test image(s) also in" in err and "held out" in err, err
    assert not out.exists()


def test_a_sub_folder_of_images_under_no_role_name_is_said(tmp_path, capsys):
    """An annotated StarDist folder named `Training Data ü/` beside `unlabelled/` made a
    zero-label recipe without a word (audit): a warning names it and the names read."""
    from cellsynth.io.datasets import load_dataset

    data = tmp_path / "project"
    _folder(data / "unlabelled", "nissl", labels=False, seed=1)
    _folder(data / "Training Data ü", "nissl", seed=2)
    (data / "Training Data ü" / "labels").rename(data / "Training Data ü" / "masks")
    (data / "notes").mkdir()  # (no images: not named)
    out = tmp_path / "p.yaml"
    assert main(["init", str(data), "--out", str(out), "--pixel-size", "0.346"]) == 0
    assert re.search(r"warning: .*project: sub-folder\(s\) Training Data ü hold images but "
                     r"are not used: .*train: train/, training/", capsys.readouterr().err)
    assert load_pipeline_config(out).real.train is None
    # a folder of label maps alone: the hint named labels/ as where the images were
    (tmp_path / "only" / "labels").mkdir(parents=True)
    write_labels(tmp_path / "only" / "labels" / "a.tif", np.ones((8, 8), np.uint16))
    with pytest.raises(DatasetError, match=r"it has labels/ \(label maps\) but no images/"):
        load_dataset(tmp_path / "only")


def test_a_folder_without_images_says_what_it_is(tmp_path):
    """A run folder, a training run or a project whose images sit in sub-folders named
    otherwise: 'no images found' said only what was expected."""
    from cellsynth.io.datasets import load_dataset

    run = tmp_path / "run"
    (run / "predict").mkdir(parents=True)
    (run / "state.json").write_text("{}")
    (run / "config.yaml").write_text("name: x\n")
    with pytest.raises(DatasetError, match=r"cellsynth run folder: its predicted labels are "
                                           r"in .*run/predict"):
        load_dataset(run)
    detector = tmp_path / "det"
    detector.mkdir()
    (detector / "run.json").write_text("{}")
    with pytest.raises(DatasetError, match="a training run .*--detector"):
        load_dataset(detector)
    (tmp_path / "proj" / "scans").mkdir(parents=True)
    write_image(tmp_path / "proj" / "scans" / "a.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(DatasetError, match=r"image files are in its sub-folder\(s\) scans"):
        load_dataset(tmp_path / "proj")
    (tmp_path / "exported").mkdir()  # what `export --to geojson` writes: outlines only
    (tmp_path / "exported" / "a.geojson").write_text('{"type": "FeatureCollection"}')
    with pytest.raises(DatasetError, match=r"exported: no images found .*it holds QuPath "
                                           r"GeoJSON outlines: put them in labels/ beside"):
        load_dataset(tmp_path / "exported")
    (tmp_path / "coco").mkdir()
    (tmp_path / "coco" / "annotations.json").write_text("{}")
    with pytest.raises(DatasetError, match=r"a COCO annotations.json, which cellsynth does "
                                           r"not read"):
        load_dataset(tmp_path / "coco")


def test_stain_features_of_an_image_mostly_white_glass_are_finite(recwarn):
    """A tile at the tissue's edge, over 40 % white: no pixel was above the 60th percentile,
    so the eosin feature was the mean of nothing (NaN) with two numpy warnings (audit)."""
    from cellsynth.pipeline.stain import _features

    rng = np.random.default_rng(0)
    image = np.full((64, 64, 3), 255, np.uint8)
    image[:30] = rng.integers(60, 200, (30, 64, 3), dtype=np.uint8)
    image[:30, :, 1] //= 2  # pink-violet tissue above white glass (53 % of the pixels)
    features = _features(image, where="edge.png")
    assert features["color"] == 1.0
    assert all(np.isfinite(v) for v in features.values()), features
    assert not [w for w in recwarn.list if issubclass(w.category, RuntimeWarning)]
    with pytest.warns(UserWarning, match=r"^blank\.png: image is constant"):
        _features(np.zeros((16, 16, 3), np.uint8), where="blank.png")
