"""Prediction applies the model's recorded normalisation and precision on this machine."""

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from cellsynth.evaluate import matching
from cellsynth.io.images import read_image, read_labels, write_image
from cellsynth.io.normalize import DTYPE_SCALING, Normalization, intensity_range
from cellsynth.segment.predict import load_detector, predict_folder, predict_image


@pytest.fixture
def model(trained_detector) -> tuple[Path, Path]:
    return trained_detector


def _recorded(run: Path, path: Path, **config) -> Path:
    """A copy of ``run``'s detector at ``path`` whose training config records ``config``."""
    ckpt = torch.load(run / "last.pt", weights_only=False)
    ckpt["config"].update(config)
    torch.save(ckpt, path)
    return path


def _one_image(sim: Path, folder: Path) -> None:
    """``folder``/a.png: the first simulated image, in a folder that states no pixel size."""
    folder.mkdir()
    write_image(folder / "a.png", read_image(sorted((sim / "images").iterdir())[0]))


def test_the_run_records_its_normalisation(model):
    run, _ = model
    detector = load_detector(run, precision="fp32")
    assert detector.normalization == Normalization()
    ckpt = torch.load(run / "last.pt", weights_only=False)
    assert ckpt["precision"] == "fp32"
    # a model from before content normalisation is applied as it was trained
    del ckpt["config"]["normalization"]
    torch.save(ckpt, run.parent / "old.pt")
    assert load_detector(run.parent / "old.pt").normalization == DTYPE_SCALING


def test_same_cells_whatever_the_bit_depth(model, tmp_path):
    """uint8, uint16 with the same values, 12-bit (x16) and float x1000: same predictions."""
    run, sim = model
    image = read_image(sorted((sim / "images").iterdir())[0])
    assert image.dtype == np.uint8
    variants = {"u8": image, "u16": image.astype(np.uint16),
                "u12": image.astype(np.uint16) * 16, "f1000": image.astype(np.float32) * 1000}
    predicted = {}
    for name, data in variants.items():
        (tmp_path / name).mkdir()
        write_image(tmp_path / name / "a.tif", data)
        predict_folder(run, tmp_path / name, tmp_path / f"{name}-out", score_thresh=0.5,
                       precision="fp32", progress=False)
        predicted[name] = read_labels(tmp_path / f"{name}-out" / "labels" / "a.tif")
    reference = predicted["u8"]
    assert reference.max() >= 3, "the tiny model should find some cells"
    for name, labels in predicted.items():
        result = matching(reference, labels, thresholds=(0.98,))
        assert result.f1[0] == 1.0, name


def test_channel_selects_the_nuclei_of_a_composite(model, tmp_path, capsys):
    """A gray nuclei model on an RGB composite whose channel 1 holds the nuclei: --channel 1
    finds what the gray image gives; a channel the image lacks is one clear line."""
    from cellsynth.cli import main

    run, sim = model
    image = read_image(sorted((sim / "images").iterdir())[0])
    composite = np.zeros((*image.shape, 3), np.uint8)
    composite[..., 1] = image
    composite[..., 0] = 255 - image  # a bright other stain: converting to gray would mix it in
    for name, data in (("gray", image), ("rgb", composite)):
        (tmp_path / name).mkdir()
        write_image(tmp_path / name / "a.png", data)
    predict_folder(run, tmp_path / "gray", tmp_path / "gray-out", score_thresh=0.5,
                   precision="fp32", progress=False)
    predict_folder(run, tmp_path / "rgb", tmp_path / "rgb-out", score_thresh=0.5,
                   precision="fp32", channel=1, progress=False)
    gray = read_labels(tmp_path / "gray-out" / "labels" / "a.tif")
    picked = read_labels(tmp_path / "rgb-out" / "labels" / "a.tif")
    assert gray.max() >= 3 and matching(gray, picked, thresholds=(0.98,)).f1[0] == 1.0
    code = main(["predict", "--detector", str(run), "--images", str(tmp_path / "rgb"),
                 "--out", str(tmp_path / "bad"), "--channel", "3", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "a.png: channel 3 requested, but the image has 3 channel(s)" in err[0]


def test_channel_reaches_the_second_plane_of_an_imagej_fluorescence_tiff(model, tmp_path,
                                                                         capsys):
    """A 2-channel ImageJ TIFF (channels first, CYX) whose channel 1 holds the nuclei:
    --channel 1 finds what the gray image gives (it used to be read as gray + alpha, or
    refused), with an overlay drawn on that channel; without --channel it says it used
    channel 0."""
    import tifffile

    from cellsynth.cli import main

    run, sim = model
    image = read_image(sorted((sim / "images").iterdir())[0])
    planes = np.stack([255 - image, image]).astype(np.uint16) * 16  # 12-bit, nuclei in 1
    (tmp_path / "gray").mkdir()
    (tmp_path / "fluo").mkdir()
    write_image(tmp_path / "gray" / "a.png", image)
    tifffile.imwrite(tmp_path / "fluo" / "a.tif", planes, imagej=True,
                     metadata={"axes": "CYX"})
    predict_folder(run, tmp_path / "gray", tmp_path / "gray-out", score_thresh=0.5,
                   precision="fp32", progress=False)
    code = main(["predict", "--detector", str(run), "--images", str(tmp_path / "fluo"),
                 "--out", str(tmp_path / "fluo-out"), "--channel", "1", "--score-thresh",
                 "0.5", "--precision", "fp32", "--quiet"])
    assert code == 0, capsys.readouterr().err
    gray = read_labels(tmp_path / "gray-out" / "labels" / "a.tif")
    picked = read_labels(tmp_path / "fluo-out" / "labels" / "a.tif")
    assert gray.max() >= 3 and matching(gray, picked, thresholds=(0.98,)).f1[0] == 1.0
    overlay = read_image(tmp_path / "fluo-out" / "overlays" / "a.png")
    assert overlay.shape == (*image.shape, 3)
    plain = overlay[picked == 0]  # away from the outlines: channel 1 shown as gray
    np.testing.assert_array_equal(plain[:, 0], plain[:, 1])
    assert np.corrcoef(plain[:, 0], image[picked == 0])[0, 1] > 0.99
    capsys.readouterr()
    assert main(["predict", "--detector", str(run), "--images", str(tmp_path / "fluo"),
                 "--out", str(tmp_path / "first-out"), "--precision", "fp32"]) == 0
    said = capsys.readouterr().err
    assert "a.tif: 2 channels; using channel 0 (--channel, or a run config's real: " \
           "channel:, takes another, 0-1)" in said


def test_a_pyramid_of_3_fluorescence_channels_is_not_blended_as_rgb(model, tmp_path):
    """A pyramidal OME-TIFF of 3 min-is-black channels (read window by window) is 3
    channels, not RGB: without --channel its channel 0 is predicted, as a smaller file's
    would be (luma weights would have mixed the nuclei with the other markers)."""
    import tifffile

    run, sim = model
    image = read_image(sorted((sim / "images").iterdir())[0])
    rng = np.random.default_rng(0)
    planes = np.stack([image, *rng.integers(0, 255, (2, *image.shape), np.uint8)])
    (tmp_path / "cyx").mkdir()
    with tifffile.TiffWriter(tmp_path / "cyx" / "s.ome.tif", ome=True) as tif:
        tif.write(planes, subifds=1, tile=(64, 64), photometric="minisblack",
                  metadata={"axes": "CYX"})
        tif.write(planes[:, ::2, ::2], subfiletype=1, tile=(64, 64), photometric="minisblack")
    (tmp_path / "gray").mkdir()
    write_image(tmp_path / "gray" / "s.png", image)
    options = dict(score_thresh=0.5, precision="fp32", progress=False)
    with pytest.warns(UserWarning, match=r"s\.ome\.tif: 3 channels, not RGB; using channel 0"):
        predict_folder(run, tmp_path / "cyx", tmp_path / "cyx-out", **options)
    predict_folder(run, tmp_path / "gray", tmp_path / "gray-out", **options)
    gray = read_labels(tmp_path / "gray-out" / "labels" / "s.tif")
    assert gray.max() >= 3
    assert matching(gray, read_labels(tmp_path / "cyx-out" / "labels" / "s.tif"),
                    thresholds=(0.98,)).f1[0] == 1.0


def test_a_run_folder_given_as_detector_names_the_detectors_inside(model, tmp_path,
                                                                    caplog, capsys):
    """`predict --detector runs/x` (a `cellsynth run` folder): once it has predicted, the
    detector it predicted with; before, the error names its soup and fine-tuned detectors."""
    import shutil

    from cellsynth.errors import CellsynthError

    run, _ = model
    for stage in ("soup", "finetune"):
        (tmp_path / "runs" / "x" / stage).mkdir(parents=True)
        shutil.copy(run / "last.pt", tmp_path / "runs" / "x" / stage / "best.pt")
    where = tmp_path / "runs" / "x"
    with pytest.raises(CellsynthError, match=rf"a `cellsynth run` folder, not a detector; give "
                                             rf"its {where}/soup or {where}/finetune"):
        load_detector(where)
    assert load_detector(where / "soup").step == load_detector(run / "last.pt").step
    # a run that predicted says with which detector: that one is taken, and said, from
    # any folder (predict records it resolved; an older run's record is relative to where
    # the run was started: read from the run folder)
    import logging

    from cellsynth.hardware import forget_announcements

    _recorded(run, where / "finetune" / "best.pt", channel=1)  # (to tell it from the soup)
    (where / "predict").mkdir()
    for recorded in (str(where / "finetune" / "best.pt"), "runs/x/finetune/best.pt"):
        (where / "predict" / "meta.json").write_text(json.dumps({"model": recorded}))
        caplog.clear()
        forget_announcements()  # (each line is said once per process)
        with caplog.at_level(logging.INFO):
            assert load_detector(where).channel == 1
        assert (f"{where}: a `cellsynth run` folder; predicting with the detector it "
                f"predicted with, {where / 'finetune' / 'best.pt'}") in caplog.messages
    # fine-tuning does not guess which of them to start from, even after a prediction
    # (it took the soup or finetune without a word where the README says it refuses)
    from cellsynth.cli import main

    sim = model[1]
    code = main(["train", "--data", str(sim), "--init", str(where), "--out",
                 str(tmp_path / "ft"), "--steps", "1", "--quiet"])
    assert code == 2 and not (tmp_path / "ft").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith(f"{where}: a `cellsynth run` folder, not a "
                                             f"detector; give its {where}/soup or "
                                             f"{where}/finetune (the first is what the run "
                                             f"predicts with)"), err


def test_a_detector_trained_on_channel_1_says_so_on_a_gray_image(model, tmp_path, capsys):
    """The channel a detector recorded, missing from an image, is named as the detector's
    (the user asked for none) with the option that overrides it; --channel 0 then works."""
    from cellsynth.cli import main

    run, sim = model
    _recorded(run, tmp_path / "ch1.pt", channel=1)
    _one_image(sim, tmp_path / "gray")
    args = ["predict", "--detector", str(tmp_path / "ch1.pt"), "--images",
            str(tmp_path / "gray"), "--precision", "fp32", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "o1")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.endswith("a.png: the detector was trained on channel 1 of multi-channel "
                         "images, but this image has 1 channel(s); choose it with --channel 0")
    assert main([*args, "--out", str(tmp_path / "o2"), "--channel", "0"]) == 0


def test_a_detector_trained_on_one_staged_channel_picks_it_and_takes_gray_as_is(model,
                                                                               tmp_path,
                                                                               capsys):
    """A detector of a run with real.channel 1 (gray copies of channel 1, recorded as its
    source_channel) finds on a 2-channel ImageJ TIFF what it finds on the gray image, with
    no --channel and no warning, and on the gray image itself what a plain detector does;
    a 3-channel TIFF of separate markers gives its channel 1 too."""
    import tifffile

    run, sim = model
    _recorded(run, tmp_path / "src1.pt", source_channel=1)
    assert load_detector(tmp_path / "src1.pt").source_channel == 1
    image = read_image(sorted((sim / "images").iterdir())[0])
    (tmp_path / "fluo").mkdir()
    tifffile.imwrite(tmp_path / "fluo" / "a.tif", np.stack([255 - image, image]), imagej=True,
                     metadata={"axes": "CYX"})
    _one_image(sim, tmp_path / "gray")
    options = dict(score_thresh=0.5, precision="fp32", progress=False)
    predict_folder(run, tmp_path / "gray", tmp_path / "plain", **options)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*using channel 0")
        for folder in ("fluo", "gray"):
            predict_folder(tmp_path / "src1.pt", tmp_path / folder, tmp_path / f"{folder}-out",
                           **options)
    plain = read_labels(tmp_path / "plain" / "labels" / "a.tif")
    assert plain.max() >= 3
    for folder in ("fluo", "gray"):
        labels = read_labels(tmp_path / f"{folder}-out" / "labels" / "a.tif")
        assert matching(plain, labels, thresholds=(0.98,)).f1[0] == 1.0, folder
    # the output says which channel it predicted, for export's and inspect's readers
    from cellsynth.io.inspect import format_summary, summarize

    assert json.loads((tmp_path / "fluo-out" / "meta.json").read_text())["channel"] == 1
    # (gray images only: no channel was picked, and none is claimed)
    assert json.loads((tmp_path / "gray-out" / "meta.json").read_text())["channel"] is None
    assert "channel      1 (of multi-channel images)" in format_summary(
        summarize(tmp_path / "fluo-out")).splitlines()
    # the command says which channel it predicted, and that --channel overrides the
    # detector's where they differ
    from cellsynth.cli import main

    capsys.readouterr()
    args = ["predict", "--detector", str(tmp_path / "src1.pt"), "--images",
            str(tmp_path / "fluo"), "--precision", "fp32", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "c1")]) == 0
    assert "channel 1 (the detector's)) ->" in capsys.readouterr().out
    gray_args = [*args[:4], str(tmp_path / "gray"), *args[5:]]
    assert main([*gray_args, "--out", str(tmp_path / "g1")]) == 0
    assert "channel" not in capsys.readouterr().out
    assert main([*args, "--out", str(tmp_path / "c0"), "--channel", "0"]) == 0
    said = capsys.readouterr()
    assert "channel 0 (--channel)) ->" in said.out
    assert ("src1.pt: the detector was trained on channel 1 of multi-channel images; "
            "predicting channel 0 as --channel asks") in said.err
    # channel 0 (the inverted image) would give other cells: it was not what was predicted
    predict_folder(run, tmp_path / "fluo", tmp_path / "ch0", channel=0, **options)
    assert matching(plain, read_labels(tmp_path / "ch0" / "labels" / "a.tif"),
                    thresholds=(0.5,)).f1[0] < 0.5


@pytest.mark.parametrize(("args", "message"), [
    (["--score-thresh", "5"], "expected a score between 0 and 1, got 5.0"),
    (["--tile", "64", "--overlap", "64"], "--overlap 64 must be smaller than --tile 64"),
    (["--device", "cuda:3"], "device 'cuda:3' requested but"),
    (["--nms", "0"], "the NMS threshold must be in (0, 1], got 0.0"),
])
def test_predict_refuses_bad_options_in_one_line(model, tmp_path, capsys, args, message):
    from cellsynth.cli import main

    run, sim = model
    try:
        code = main(["predict", "--detector", str(run), "--images", str(sim), "--out",
                     str(tmp_path / "out"), "--quiet", *args])
    except SystemExit as stop:  # argparse rejects it while parsing
        code = stop.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_tile_barely_larger_than_its_overlap_is_said_with_its_cost(model, tmp_path):
    """--tile 100 beside the default --overlap 96 steps tiles by 4 px: each pixel predicted
    ~625 times (48 min for a megapixel where 4 s would do), and nothing said."""
    run, sim = model
    _one_image(sim, tmp_path / "plain")
    with pytest.warns(UserWarning, match=r"--tile 100 with --overlap 96: tiles step by 4 px, "
                                         r"so each pixel is predicted about 625 times; "
                                         r"--tile 192 or more"):
        predict_folder(run, tmp_path / "plain", tmp_path / "out", tile=100, overlap=96,
                       score_thresh=0.5, precision="fp32", progress=False)


def test_predict_names_a_refiner_run_and_a_truncated_checkpoint(model, tmp_path):
    from cellsynth.errors import CellsynthError

    run, _ = model
    torch.save({"generator": {}, "step": 1}, tmp_path / "refiner.pt")
    with pytest.raises(CellsynthError, match="refiner.pt: a refiner run"):
        load_detector(tmp_path / "refiner.pt")
    (tmp_path / "cut.pt").write_bytes((run / "last.pt").read_bytes()[:5000])
    with pytest.raises(CellsynthError, match=r"cut.pt: cannot load checkpoint \(truncated"):
        load_detector(tmp_path / "cut.pt")


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_a_file_cut_short_is_refused_before_any_image_is_predicted(model, tmp_path,
                                                                   monkeypatch, suffix):
    """A truncated copy among the images failed only when prediction reached it (hours into
    a folder of sections), leaving the rows of tiles done before it; every header is now
    read first, and the file named before one tile is predicted."""
    from cellsynth.errors import ImageReadError
    from cellsynth.segment import folders

    run, sim = model
    _one_image(sim, tmp_path / "images")
    write_image(tmp_path / "images" / f"b{suffix}", read_image(tmp_path / "images" / "a.png"))
    whole = (tmp_path / "images" / f"b{suffix}").read_bytes()
    (tmp_path / "images" / f"b{suffix}").write_bytes(whole[:len(whole) - 100])
    predicted = []
    monkeypatch.setattr(folders, "predict_image",
                        lambda *a, **k: predicted.append(1) or predict_image(*a, **k))
    with pytest.raises(ImageReadError, match=rf"b\{suffix}: cannot read file \(corrupt"):
        predict_folder(run, tmp_path / "images", tmp_path / "out", score_thresh=0.5,
                       precision="fp32", progress=False)
    assert predicted == []
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.proposals").exists()


def test_a_level_an_image_lacks_is_refused_before_any_image_is_predicted(model, tmp_path,
                                                                         monkeypatch):
    """--level 1 over a folder where one image is flat: named before one tile is predicted
    (it failed when prediction reached that image)."""
    import tifffile

    from cellsynth.errors import ImageReadError
    from cellsynth.segment import folders

    run, sim = model
    image = read_image(sorted((sim / "images").iterdir())[0])
    (tmp_path / "images").mkdir()
    with tifffile.TiffWriter(tmp_path / "images" / "a.tif") as tif:  # a pyramid: 2 levels
        tif.write(image, subifds=1, tile=(32, 32), photometric="minisblack")
        tif.write(image[::2, ::2], subfiletype=1, tile=(32, 32), photometric="minisblack")
    write_image(tmp_path / "images" / "b.png", image)
    predicted = []
    monkeypatch.setattr(folders, "predict_image",
                        lambda *a, **k: predicted.append(1) or predict_image(*a, **k))
    with pytest.raises(ImageReadError, match=r"b\.png: no resolution level 1; the image has 1"):
        predict_folder(run, tmp_path / "images", tmp_path / "out", level=1, score_thresh=0.5,
                       precision="fp32", progress=False)
    assert predicted == [] and not (tmp_path / "out").exists()


def test_a_channel_the_images_lack_is_refused_before_the_detector_loads(model, tmp_path,
                                                                        monkeypatch):
    """--channel 2 on 2-channel TIFFs: one line naming the first such file, from the
    headers, before the detector is loaded (it came after loading it and a first image)."""
    import tifffile

    from cellsynth.errors import ImageReadError
    from cellsynth.segment import folders

    run, sim = model
    image = read_image(sorted((sim / "images").iterdir())[0])
    (tmp_path / "two").mkdir()
    tifffile.imwrite(tmp_path / "two" / "a.tif", np.stack([image, image]), imagej=True,
                     metadata={"axes": "CYX"})

    def loaded(*args, **kwargs):
        raise AssertionError("the detector was loaded")
    monkeypatch.setattr(folders, "load_detector", loaded)
    with pytest.raises(ImageReadError, match=r"a\.tif: channel 2 requested, but the image has "
                                             r"2 channel\(s\) \(0-1\)"):
        predict_folder(run, tmp_path / "two", tmp_path / "out", channel=2, progress=False)


def test_predict_takes_a_single_image_file(model, tmp_path):
    run, sim = model
    path = sorted((sim / "images").iterdir())[0]
    summary = predict_folder(run, path, tmp_path / "out", score_thresh=0.5, precision="fp32",
                             progress=False)
    assert summary["n_images"] == 1
    labels = read_labels(tmp_path / "out" / "labels" / f"{path.stem}.tif")
    alone = predict_image(load_detector(run, precision="fp32"), read_image(path),
                          score_thresh=0.5)
    assert labels.max() >= 3 and np.array_equal(labels, alone)
    from cellsynth.errors import DatasetError

    with pytest.raises(DatasetError, match="config.yaml: not an image file"):
        predict_folder(run, run / "config.yaml", tmp_path / "out2", progress=False)


def test_an_array_channels_first_or_with_nan_is_said_by_predict_image(model):
    """The API takes arrays as the readers take files: (3, H, W), as torch and ImageJ order
    them, gives the labels of (H, W, 3) with a warning (it gave (3, W) labels before); NaN
    is one line naming the problem (it was a bare AssertionError in the model)."""
    from cellsynth.errors import ImageReadError

    run, sim = model
    gray = read_image(sorted((sim / "images").iterdir())[0])
    detector = load_detector(run, precision="fp32")
    rgb = np.stack([gray] * 3, axis=-1)
    expected = predict_image(detector, rgb, score_thresh=0.5)
    assert expected.shape == gray.shape and expected.max() >= 3
    with pytest.warns(UserWarning, match=r"taken as channels first \(C, H, W\)"):
        first = predict_image(detector, np.moveaxis(rgb, -1, 0), score_thresh=0.5)
    assert np.array_equal(first, expected)
    holed = gray.astype(np.float32)
    holed[:3, :5] = np.nan
    with pytest.raises(ImageReadError, match="image: image contains 15 NaN/inf values"):
        predict_image(detector, holed)
    with pytest.raises(ImageReadError, match=r"shape \(1, 2, 8, 8\)"):
        predict_image(detector, np.zeros((1, 2, 8, 8), np.uint8))
    # a section read lazily (never checked whole) with NaN padding, as stitching leaves it,
    # reached the network: celldetection's AssertionError (audit 7)
    import zarr

    lazy = zarr.create_array(store={}, shape=holed.shape, chunks=(32, 32), dtype=np.float32)
    lazy[:] = holed
    with pytest.raises(ImageReadError, match=r"^section: NaN/inf values in rows 0-"):
        predict_image(detector, lazy, where="section")


def test_predict_reads_cellpose_and_stardist_folders_as_every_command_does(model, tmp_path):
    """predict listed a folder's files itself: in a Cellpose folder it predicted x_masks.tif
    as one more image, and of Images/ + Masks/ (or img/ + mask/) it found no image and
    said "0 images" with exit 0 (audit). It now reads them as inspect and train do, and
    export finds each image where it was, also in Images/, and names it when moved."""
    import shutil

    import tifffile

    from cellsynth.errors import DatasetError
    from cellsynth.io.export import export

    run, sim = model
    path = sorted((sim / "images").iterdir())[0]
    image, labels = read_image(path), read_labels(sim / "labels" / f"{path.stem}.tif")
    (tmp_path / "cp").mkdir()
    tifffile.imwrite(tmp_path / "cp" / "x.tif", image)
    tifffile.imwrite(tmp_path / "cp" / "x_masks.tif", labels)
    for folders in (("Images", "Masks"), ("img", "mask")):
        for sub, data in zip(folders, (image, labels)):
            (tmp_path / folders[0] / sub).mkdir(parents=True)
            tifffile.imwrite(tmp_path / folders[0] / sub / "a.tif", data)
    alone = predict_image(load_detector(run, precision="fp32"), image, score_thresh=0.5)
    assert alone.max() >= 3
    options = dict(score_thresh=0.5, precision="fp32", progress=False)
    for name, image_id in (("cp", "x"), ("Images", "a"), ("img", "a")):
        summary = predict_folder(run, tmp_path / name, tmp_path / f"{name}-out", **options)
        assert summary["n_images"] == 1, name
        assert sorted(p.name for p in (tmp_path / f"{name}-out" / "labels").iterdir()) == [
            f"{image_id}.tif"], name
        assert np.array_equal(read_labels(tmp_path / f"{name}-out" / "labels" /
                                          f"{image_id}.tif"), alone), name
    export(tmp_path / "Images-out", "cellpose", tmp_path / "exported")
    assert np.array_equal(read_image(tmp_path / "exported" / "a.tif"), image)
    shutil.move(tmp_path / "Images" / "Images", tmp_path / "elsewhere")
    with pytest.raises(DatasetError, match=r"Images/Images/a\.tif: no such file"):
        export(tmp_path / "Images-out", "cellpose", tmp_path / "exported2")


def _disk_image(shape, centres, radius):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    image = np.full(shape, 20, np.uint8)
    labels = np.zeros(shape, np.uint16)
    for k, (cy, cx) in enumerate(centres, start=1):
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
        image[disk], labels[disk] = 200, k
    return image, labels


def _threshold_predictor(detector, device="cpu", floor=0.5):
    """A stand-in for the CPN that, like it, knows the size of a cell in its pixels: every
    bright blob of a tile of 0.5-2x the area of a disk of radius 12 px, as a 48-point contour."""
    from skimage.measure import find_contours, label, regionprops

    def predictor(tiles):
        out = []
        for tile in tiles:
            blobs = label(tile[..., 0] > 0.5)
            contours = []
            for region in regionprops(blobs):
                if not 0.5 * np.pi * 144 < region.area < 2 * np.pi * 144:
                    continue
                mask = np.pad(blobs == region.label, 1).astype(float)
                contour = max(find_contours(mask, 0.5), key=len) - 1
                idx = np.linspace(0, len(contour) - 1, 48).astype(int)
                contours.append(contour[idx][:, ::-1])  # (x, y)
            out.append((np.array(contours, np.float32).reshape(-1, 48, 2),
                        np.ones(len(contours), np.float32)))
        return out
    return predictor


@pytest.mark.parametrize(("image_px", "scale"), [(0.25, 2), (1.0, 0.5)])
def test_an_image_at_another_pixel_size_is_resampled_and_drawn_back(monkeypatch, image_px,
                                                                    scale):
    """A 0.5 um/px model on the same disks imaged at 0.25 or 1.0 um/px: the cells come back at
    the image's own pixels and positions (tiles and overlaps in model pixels)."""
    from cellsynth.segment import predict
    from cellsynth.segment.predict import Detector, predict_image

    monkeypatch.setattr(predict, "make_predictor", _threshold_predictor)
    detector = Detector(None, 1, 0.5, 128, 0.5, 0, "test")
    rng = np.random.default_rng(0)
    centres = [(y, x) for y in range(30, 400, 60) for x in range(30, 330, 60)]
    centres = [(y + rng.uniform(-5, 5), x + rng.uniform(-5, 5)) for y, x in centres]
    shape = (int(420 * scale), int(360 * scale))
    image, truth = _disk_image(shape, [(y * scale, x * scale) for y, x in centres], 12 * scale)
    labels = predict_image(detector, image, tile=128, overlap=48, pixel_size_um=image_px)
    assert labels.shape == image.shape
    result = matching(truth, labels, thresholds=(0.5, 0.8))
    assert result.f1[0] == 1.0 and result.f1[1] == 1.0, result.f1
    assert result.mean_iou[0] > 0.85
    unscaled = predict_image(detector, image, tile=128, overlap=48, pixel_size_um=None)
    assert matching(truth, unscaled, thresholds=(0.5,)).f1[0] == 0.0  # wrong cell size


def test_plain_celldetection_loads_a_run(model):
    """celldetection users: cd.load_model(RUN/last.pt) gives the trained CPN."""
    import celldetection as cd

    run, _ = model
    ckpt = torch.load(run / "last.pt", weights_only=False)
    loaded = cd.load_model(str(run / "last.pt"), load_kwargs={"weights_only": False})
    assert type(loaded).__name__ == "CpnSlimU22"
    assert loaded.score_thresh == pytest.approx(ckpt["score_thresh"])
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, ckpt["model"][name]), name


def test_progress_counts_tiles(monkeypatch):
    """A whole section shows progress tile by tile (total known before the first tile)."""
    from cellsynth.segment import predict
    from cellsynth.segment.predict import Detector, predict_image

    class Bar:
        def __init__(self):
            self.total, self.n, self.totals_seen = 0, 0, []

        def refresh(self):
            self.totals_seen.append(self.total)

        def update(self, k):
            self.n += k

    monkeypatch.setattr(predict, "make_predictor", _threshold_predictor)
    detector = Detector(None, 1, 0.5, 128, None, 0, "test")
    image, _ = _disk_image((300, 200), [(50, 50)], 12)
    bar = Bar()
    predict_image(detector, image, tile=128, overlap=48, progress=bar)
    assert bar.totals_seen == [4 * 2] and bar.n == 8  # rows start 0, 80, 160, 172; columns 0, 72


def test_areas_in_um2_at_the_models_pixel_size_where_the_image_states_none(model, tmp_path):
    """An image of unknown pixel size is predicted as if at the detector's (predict warns
    so); its cells' areas in um² are then at that size too (they were left empty), and each
    row says that size was assumed, not stated (a user could report them as measured)."""
    import csv

    run, sim = model
    _recorded(run, tmp_path / "px.pt", pixel_size_um=0.5)
    _one_image(sim, tmp_path / "plain")
    with pytest.warns(UserWarning, match="taken to be at the model's 0.5 um/px"):
        predict_folder(tmp_path / "px.pt", tmp_path / "plain", tmp_path / "out",
                       score_thresh=0.5, precision="fp32", progress=False)
    areas = np.bincount(read_labels(tmp_path / "out" / "labels" / "a.tif").ravel())
    with open(tmp_path / "out" / "detections" / "a.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 3
    for row in rows:
        assert float(row["area_um2"]) == pytest.approx(areas[int(row["id"])] * 0.25, abs=1e-3)
        assert (row["pixel_size_um"], row["pixel_size"]) == ("0.5", "assumed")


def test_a_pixel_size_given_against_the_files_own_is_said(model, tmp_path):
    """--pixel-size 1.0 on a file stating 0.5 um/px resampled it 2x and made every area 4x
    without a word; it is still used (the user may know the metadata is wrong), and said."""
    import csv
    import warnings

    run, sim = model
    _recorded(run, tmp_path / "px.pt", pixel_size_um=0.5)
    folder = tmp_path / "stated"
    folder.mkdir()
    write_image(folder / "a.tif", read_image(sorted((sim / "images").iterdir())[0]),
                pixel_size_um=0.5)
    with pytest.warns(UserWarning, match=r"a\.tif: states 0\.5 um/px; --pixel-size 1 is used "
                                         r"instead"):
        predict_folder(tmp_path / "px.pt", folder, tmp_path / "out", pixel_size_um=1.0,
                       score_thresh=0.5, precision="fp32", progress=False)
    with open(tmp_path / "out" / "detections" / "a.csv") as f:
        assert {row["pixel_size_um"] for row in csv.DictReader(f)} == {"1"}
    with warnings.catch_warnings():  # the same size as the file's: nothing to say
        warnings.simplefilter("error")
        predict_folder(tmp_path / "px.pt", folder, tmp_path / "same", pixel_size_um=0.5,
                       score_thresh=0.5, precision="fp32", progress=False)


def test_inspect_describes_a_prediction_folder(model, tmp_path, monkeypatch, capsys):
    """inspect PRED said 'no images found' (a prediction has labels/ only); it describes what
    predict recorded, the images' folder resolved though predict was given it relative."""
    from cellsynth.cli import main
    from cellsynth.pipeline.layout import detector_checkpoint

    run, sim = model
    _one_image(sim, tmp_path / "plain")
    monkeypatch.chdir(tmp_path)
    predict_folder(run, "plain", "out", score_thresh=0.5, precision="fp32", pixel_size_um=0.5,
                   progress=False)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["n_instances"] >= 3
    capsys.readouterr()
    assert main(["inspect", "out"]) == 0
    out = capsys.readouterr().out
    assert "prediction   out\nimages       1\n" in out
    assert f"cells        {meta['n_instances']}\n" in out
    assert (f"detector     {detector_checkpoint(run)} (step {meta['model_step']}), "
            f"score threshold 0.5\n") in out
    assert "pixel size   0.5 um/px\n" in out
    assert f"predicted    from {(tmp_path / 'plain').resolve()}" in out


def test_predict_writes_a_detections_table(model, tmp_path):
    import csv

    run, sim = model
    path = sorted((sim / "images").iterdir())[0]
    predict_folder(run, path, tmp_path / "out", score_thresh=0.5, precision="fp32",
                   pixel_size_um=0.5, progress=False)
    labels = read_labels(tmp_path / "out" / "labels" / f"{path.stem}.tif")
    with open(tmp_path / "out" / "detections" / f"{path.stem}.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == labels.max() >= 3
    areas = np.bincount(labels.ravel())
    for row in rows:
        cell = int(row["id"])
        assert int(row["area_px"]) == areas[cell]
        assert float(row["area_um2"]) == pytest.approx(areas[cell] * 0.25, abs=1e-3)
        assert (row["pixel_size_um"], row["pixel_size"]) == ("0.5", "stated")  # --pixel-size
        assert 0.5 <= float(row["score"]) <= 1.0
        ys, xs = np.nonzero(labels == cell)
        assert float(row["centroid_y"]) == pytest.approx(ys.mean(), abs=0.01)
        assert (int(row["bbox_y0"]), int(row["bbox_x1"])) == (ys.min(), xs.max() + 1)


def test_a_higher_nms_threshold_keeps_touching_cells_and_is_recorded(model, tmp_path):
    run, sim = model
    found = {}
    for nms in (None, 0.01, 0.9):
        out = tmp_path / f"nms-{nms}"
        predict_folder(run, sim / "images", out, score_thresh=0.3, precision="fp32",
                       nms_thresh=nms, progress=False)
        meta = json.loads((out / "meta.json").read_text())
        assert meta["nms_thresh"] == (0.2 if nms is None else nms)  # None: celldetection's
        found[nms] = meta["n_instances"]
    # boxes of neighbouring cells overlap a little: an NMS at IoU 0.01 takes them for one
    assert found[0.01] < found[None] <= found[0.9], found


def test_the_detections_table_counted_in_bands_equals_counted_whole():
    from cellsynth.segment.predict import detections_table

    rng = np.random.default_rng(0)
    labels = np.zeros((90, 70), np.uint32)
    for cell in range(1, 30):
        y, x = rng.integers(0, 80), rng.integers(0, 60)
        labels[y:y + rng.integers(2, 12), x:x + rng.integers(2, 12)] = cell
    scores = np.concatenate([[np.inf], rng.uniform(0.5, 1, 29)])
    whole = detections_table(labels, scores, 0.5, band=1000)
    assert detections_table(labels, scores, 0.5, band=7) == whole
    rows = whole.splitlines()[1:]
    present = np.unique(labels)[1:]
    assert [int(r.split(",")[0]) for r in rows] == present.tolist()  # covered cells vanish
    first = rows[0].split(",")
    ys, xs = np.nonzero(labels == present[0])
    assert first[1:4] == [f"{ys.mean():.2f}", f"{xs.mean():.2f}", str(ys.size)]


def test_labels_as_ome_zarr_with_pixel_size_pyramid_and_exports(model, tmp_path, monkeypatch):
    import json

    from cellsynth.io.export import export
    from cellsynth.io.ome_zarr import read_labels_zarr
    from cellsynth.segment import folders
    from cellsynth.segment.tiles import open_large_image

    run, sim = model
    path = sorted((sim / "images").iterdir())[0]
    (tmp_path / "in").mkdir()
    write_image(tmp_path / "in" / "a.png", read_image(path))
    (tmp_path / "in" / "meta.json").write_text(json.dumps({"pixel_size_um": 0.5}))
    tiff = tmp_path / "tiff"
    predict_folder(run, tmp_path / "in", tiff, score_thresh=0.5, precision="fp32",
                   progress=False)
    expected = read_labels(tiff / "labels" / "a.tif")
    out = tmp_path / "zarr"
    predict_folder(run, tmp_path / "in", out, score_thresh=0.5, precision="fp32",
                   labels_as="ome-zarr", progress=False)
    labels, pixel = read_labels_zarr(out / "labels" / "a.ome.zarr")
    assert expected.max() >= 3 and np.array_equal(labels, expected) and pixel == 0.5
    assert np.array_equal(np.asarray(open_large_image(out / "labels" / "a.ome.zarr")[:, :]),
                          expected)  # our own lazy reader opens it too
    # "auto" switches to OME-Zarr above the size limit (lowered here)
    monkeypatch.setattr(folders, "ZARR_ABOVE_PIXELS", expected.size - 1)
    predict_folder(run, tmp_path / "in", tmp_path / "auto", score_thresh=0.5, precision="fp32",
                   progress=False)
    assert (tmp_path / "auto" / "labels" / "a.ome.zarr").is_dir()
    summary = export(out, "geojson", tmp_path / "geojson")
    assert summary["n_instances"] == int(expected.max())
    assert (tmp_path / "geojson" / "a.geojson").is_file()


def test_a_section_read_and_painted_chunk_by_chunk_equals_the_in_memory_path(
        model, tmp_path, monkeypatch, caplog):
    """Pyramidal TIFF and OME-Zarr inputs go the whole-section way (tiles read lazily, labels
    painted window by window into OME-Zarr, the table computed in bands) and give the same
    pixels and rows as a flat TIFF read and painted whole."""
    import tifffile
    import zarr

    from cellsynth.io.ome_zarr import read_labels_zarr
    from cellsynth.segment import predict

    run, sim = model
    found = [read_image(p) for p in sorted((sim / "images").iterdir())]
    crops = [np.rot90(found[i % len(found)], i // len(found)) for i in range(6)]
    mosaic = np.concatenate([np.concatenate(crops[:3], axis=1),
                             np.concatenate(crops[3:], axis=1)], axis=0)
    (tmp_path / "flat").mkdir()
    tifffile.imwrite(tmp_path / "flat" / "s.tif", mosaic)
    (tmp_path / "pyramid").mkdir()
    with tifffile.TiffWriter(tmp_path / "pyramid" / "s.ome.tif") as tif:
        tif.write(mosaic, subifds=1, tile=(64, 64), compression="zlib")
        tif.write(mosaic[::2, ::2], subfiletype=1, tile=(64, 64), compression="zlib")
    (tmp_path / "ngff").mkdir()
    root = zarr.open_group(str(tmp_path / "ngff" / "s.zarr"), mode="w")
    root.create_array("0", data=mosaic, chunks=(64, 64))
    root.attrs["multiscales"] = [{"version": "0.4", "axes": [
        {"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
        "datasets": [{"path": "0"}]}]
    painted, original = [], predict.PaintedLabels
    monkeypatch.setattr(predict, "PaintedLabels",
                        lambda *a, **k: painted.append(1) or original(*a, **k))
    options = dict(tile=128, overlap=48, score_thresh=0.5, precision="fp32",
                   pixel_size_um=0.5, progress=False)
    predict_folder(run, tmp_path / "flat", tmp_path / "memory", **options)
    assert not painted  # a small flat TIFF is read and painted whole
    expected = read_labels(tmp_path / "memory" / "labels" / "s.tif")
    table = (tmp_path / "memory" / "detections" / "s.csv").read_text()
    assert expected.max() >= 10
    import logging

    for source in ("pyramid", "ngff"):
        out = tmp_path / f"out-{source}"
        with caplog.at_level(logging.INFO, logger="cellsynth"):
            predict_folder(run, tmp_path / source, out, labels_as="ome-zarr", **options)
        # no overlay picture of a whole section (nor an empty overlays/), and a note
        assert not (out / "overlays").exists()
        assert (tmp_path / "memory" / "overlays" / "s.png").is_file()
        assert "no overlay for a whole section" in caplog.text
        caplog.clear()
        labels, pixel = read_labels_zarr(out / "labels" / "s.ome.zarr")  # (s.ome.tif: s)
        np.testing.assert_array_equal(labels, expected)
        assert pixel == 0.5
        assert (out / "detections" / "s.csv").read_text() == table
        # NGFF's image-label source names the OME-Zarr image the labels are of (it named
        # "../../", the prediction folder); of a TIFF it names none
        group = out / "labels" / "s.ome.zarr"
        image_label = dict(zarr.open_group(str(group), mode="r").attrs["image-label"])
        if source == "ngff":
            assert (group / image_label["source"]["image"]).resolve() == \
                (tmp_path / "ngff" / "s.zarr").resolve()
        else:
            assert "source" not in image_label
    assert len(painted) == 2


def test_ome_zarr_pyramid_halves_each_level(tmp_path):
    from cellsynth.io.ome_zarr import read_labels_zarr, write_labels_zarr

    labels = np.zeros((1000, 700), np.uint32)
    labels[10:60, 10:90], labels[900:, 600:] = 3, 70000
    path = write_labels_zarr(tmp_path / "x.ome.zarr", labels, pixel_size_um=0.25, chunk=256)
    shapes, sizes = [], []
    for level in range(3):
        data, pixel = read_labels_zarr(path, level=level)
        shapes.append(data.shape)
        sizes.append(pixel)
        assert set(np.unique(data)) == {0, 3, 70000}  # ids survive downsampling
        np.testing.assert_array_equal(data, labels[::2 ** level, ::2 ** level])
    assert shapes == [(1000, 700), (500, 350), (250, 175)] and sizes == [0.25, 0.5, 1.0]
    assert not list(tmp_path.glob(".*tmp"))  # written beside and renamed into place


def test_napari_widget_segments_an_image_layer(model):
    from types import SimpleNamespace

    from cellsynth.napari_plugin import predict_widget

    run, sim = model
    image = read_image(sorted((sim / "images").iterdir())[0])
    layer = SimpleNamespace(data=image, scale=(1.0, 1.0), name="nuclei",
                            translate=(10.0, 20.0))
    labels, kwargs, kind = predict_widget(layer, run, score_thresh=0.5)
    assert kind == "labels" and kwargs["name"] == "nuclei cells"
    assert kwargs["translate"] == (10.0, 20.0)  # (the cells sat at the origin, off the image)
    expected = predict_image(load_detector(run), image, score_thresh=0.5)
    assert labels.max() >= 3 and np.array_equal(labels, expected)
    # a pyramid is segmented at its finest level (np.asarray of napari's multiscale data
    # gave the coarsest, a quarter-size label layer without a word)
    pyramid = SimpleNamespace(data=[image, image[::2, ::2]], multiscale=True,
                              scale=(1.0, 1.0), name="nuclei")
    assert np.array_equal(predict_widget(pyramid, run, score_thresh=0.5)[0], expected)
    # a stack (z, time or channels first) is refused in one line (it gave (2, W) labels)
    from cellsynth.errors import CellsynthError

    stack = SimpleNamespace(data=np.stack([image, image]), scale=(1.0, 1.0, 1.0),
                            name="stack", rgb=False)
    with pytest.raises(CellsynthError, match=r"stack: a layer of shape \(2, 96, 96\); the "
                                             r"widget segments one 2-D gray or RGB image"):
        predict_widget(stack, run)


def test_napari_widget_loads_its_detector_once_and_again_when_the_file_changes(
        model, tmp_path, monkeypatch):
    """The widget reloaded the detector on every click; it now keeps it while the checkpoint
    file is unchanged, and an untouched detector field is said in one line (it said
    "last.pt: no checkpoint")."""
    import os
    import shutil
    from types import SimpleNamespace

    from cellsynth import napari_plugin
    from cellsynth.errors import CellsynthError
    from cellsynth.segment import predict as predict_module

    run, sim = model
    ckpt = shutil.copy(run / "last.pt", tmp_path / "detector.pt")
    loads = []
    real_load = predict_module.load_detector
    monkeypatch.setattr(predict_module, "load_detector",
                        lambda path, **kw: loads.append(Path(path)) or real_load(path, **kw))
    monkeypatch.setattr(napari_plugin, "_LOADED", {})
    layer = SimpleNamespace(data=read_image(sorted((sim / "images").iterdir())[0]),
                            scale=(1.0, 1.0), name="nuclei")
    first = napari_plugin.predict_widget(layer, Path(ckpt), score_thresh=0.5)[0]
    again = napari_plugin.predict_widget(layer, Path(ckpt), score_thresh=0.5)[0]
    assert loads == [Path(ckpt)] and np.array_equal(first, again)
    stat = os.stat(ckpt)  # retrained in place: read again
    os.utime(ckpt, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    napari_plugin.predict_widget(layer, Path(ckpt), score_thresh=0.5)
    assert loads == [Path(ckpt), Path(ckpt)]
    with pytest.raises(CellsynthError, match=r"^choose a detector: a `cellsynth train` run "):
        napari_plugin.predict_widget(layer, Path("."))


def test_napari_widget_stops_a_prediction_that_a_newer_click_supersedes(model, monkeypatch):
    """A click while the widget still predicted waited for the old prediction to finish (and
    its cells to be added); now the old one stops after its current batch of tiles and adds
    nothing, as it does when napari quits its worker."""
    from types import SimpleNamespace

    from cellsynth import napari_plugin

    run, sim = model
    tile = read_image(sorted((sim / "images").iterdir())[0])
    image = np.tile(tile, (12, 12) + (1,) * (tile.ndim - 2))  # 4 tiles, 2 batches
    layer = SimpleNamespace(data=image, scale=(1.0, 1.0), name="nuclei")
    batches: list[int] = []

    class Counted(napari_plugin._StopCheck):
        def update(self, n: int = 1) -> None:
            batches.append(n)
            super().update(n)

    monkeypatch.setattr(napari_plugin, "_StopCheck", Counted)
    whole = napari_plugin.predict_widget(layer, run, score_thresh=0.5)
    assert whole is not None and len(batches) > 1 and whole[0].max() > 0
    batches.clear()

    class ClickedMeanwhile(Counted):
        def update(self, n: int = 1) -> None:
            napari_plugin._supersede()  # (a newer click, during the first batch)
            super().update(n)

    monkeypatch.setattr(napari_plugin, "_StopCheck", ClickedMeanwhile)
    assert napari_plugin.predict_widget(layer, run, score_thresh=0.5) is None
    assert len(batches) == 1  # stopped after its first batch


def test_napari_widget_segments_in_a_worker_and_the_viewer_gets_the_cells(model):
    """Inside a napari window (Qt and a display; skipped where there are none) the widget returns a
    napari worker, so the window is not frozen while it predicts, and napari adds its cells
    to the viewer when it ends (it predicted on the main thread)."""
    import os

    pytest.importorskip("qtpy.QtWidgets")  # (QtBindingsNotFoundError is an ImportError)
    if not os.environ.get("DISPLAY"):  # (napari's canvas needs OpenGL: e.g. xvfb-run pytest)
        pytest.skip("a napari window needs a display")
    napari = pytest.importorskip("napari")
    # (the training fixture imported celldetection first, as a script using cellsynth before
    # napari.Viewer() does: cpn.py keeps opencv from pointing Qt at its own plugins)
    from magicgui import magicgui
    from napari.qt.threading import FunctionWorker
    from qtpy.QtCore import QEventLoop, QTimer

    from cellsynth.napari_plugin import predict_widget

    run, sim = model
    image = read_image(sorted((sim / "images").iterdir())[0])
    viewer = napari.Viewer(show=False)
    try:
        layer = viewer.add_image(image, name="nuclei", scale=(0.5, 0.5))
        widget = magicgui(predict_widget)
        viewer.window.add_dock_widget(widget)
        worker = widget(layer, run, 0.5, 1024)
        assert isinstance(worker, FunctionWorker)
        loop = QEventLoop()
        worker.finished.connect(loop.quit)
        QTimer.singleShot(120_000, loop.quit)
        loop.exec_()
        for _ in range(20):  # (the result reaches the viewer through queued signals)
            napari.qt.get_qapp().processEvents()
        cells = viewer.layers["nuclei cells"]
        expected = predict_image(load_detector(run), image, score_thresh=0.5)
        assert np.array_equal(cells.data, expected) and tuple(cells.scale) == (0.5, 0.5)
    finally:
        viewer.close()


def test_napari_widget_a_second_click_stops_the_first_in_a_real_window(model):
    """Two clicks in a napari window (skipped without Qt and a display): the first worker
    stops and returns nothing, the second adds the cells (the first made the second wait
    for all of its tiles, then both added a layer)."""
    import os

    pytest.importorskip("qtpy.QtWidgets")
    if not os.environ.get("DISPLAY"):
        pytest.skip("a napari window needs a display")
    napari = pytest.importorskip("napari")
    from magicgui import magicgui
    from qtpy.QtCore import QEventLoop, QTimer

    from cellsynth.napari_plugin import predict_widget

    run, sim = model
    tile = read_image(sorted((sim / "images").iterdir())[0])
    image = np.tile(tile, (12, 12) + (1,) * (tile.ndim - 2))
    viewer = napari.Viewer(show=False)
    try:
        layer = viewer.add_image(image, name="nuclei")
        widget = magicgui(predict_widget)
        viewer.window.add_dock_widget(widget)
        returned: list = []
        first = widget(layer, run, 0.5, 1024)
        first.returned.connect(lambda value: returned.append(("first", value)))
        second = widget(layer, run, 0.5, 1024)
        second.returned.connect(lambda value: returned.append(("second", value)))
        loop = QEventLoop()
        second.finished.connect(loop.quit)
        QTimer.singleShot(120_000, loop.quit)
        loop.exec_()
        for _ in range(20):
            napari.qt.get_qapp().processEvents()
        assert [name for name, _ in returned] == ["first", "second"]
        assert returned[0][1] is None and returned[1][1] is not None
        expected = predict_image(load_detector(run), image, score_thresh=0.5)
        assert np.array_equal(viewer.layers["nuclei cells"].data, expected)
        assert [lay.name for lay in viewer.layers] == ["nuclei", "nuclei cells"]
    finally:
        viewer.close()


def test_inference_preparation_folds_batchnorm_without_changing_the_proposals(model):
    import copy

    from cellsynth.segment.cpn import (
        build_model,
        prepare_for_inference,
        raw_predict,
        score_threshold,
    )

    run, sim = model
    ckpt = torch.load(run / "last.pt", weights_only=True)
    plain = build_model(**ckpt["model_spec"])
    plain.load_state_dict(ckpt["model"])
    plain.eval()
    fast = copy.deepcopy(plain)
    assert prepare_for_inference(fast) == 22  # every conv + norm pair of the slim U-Net
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    from cellsynth.io.normalize import normalize

    image = normalize(read_image(sorted((sim / "images").iterdir())[0]))  # as it trained
    inputs = torch.from_numpy(image.reshape(1, 1, *image.shape[:2]))
    with score_threshold(plain, 0.5), score_threshold(fast, 0.5):
        (c0, s0), = raw_predict(plain, inputs)
        (c1, s1), = raw_predict(fast, inputs)
    assert len(s0) >= 3 and len(s1) == len(s0)
    np.testing.assert_allclose(s1, s0, atol=1e-4)
    np.testing.assert_allclose(c1, c0, atol=1e-2)


def test_proposals_below_the_threshold_are_skipped_without_changing_the_labels(model,
                                                                             monkeypatch):
    """Without TTA the network's contours are only computed for proposals that can pass the
    threshold; the labels equal those painted from every proposal above the 0.5 floor."""
    from cellsynth.segment import predict
    from cellsynth.segment.tiles import tiled_proposals

    run, sim = model
    detector = load_detector(run)
    image = read_image(sorted((sim / "images").iterdir())[0])
    image = np.concatenate([image, image[::-1]], axis=1)  # two tiles with overlap
    low, high = intensity_range(image, detector.normalization)
    read = predict._reader(detector.in_channels, low, high, "image")  # as predict reads

    def proposals(floor):
        return tiled_proposals(image, predict.make_predictor(detector, floor=floor), tile=96,
                               overlap=32, read=read)

    everything = proposals(0.5)
    scores = np.sort(everything[1])
    assert len(scores) >= 5  # the fixture's detector proposes cells above 0.5
    for thresh in (float(scores[len(scores) // 3]), float(scores[2 * len(scores) // 3])):
        floor = predict.score_floor(detector, thresh, tta=False)
        assert thresh - 1e-5 < floor < thresh
        assert predict.score_floor(detector, thresh, tta=True) == 0.5
        few = proposals(floor)
        assert 0 < len(few[1]) < len(everything[1]) and few[1].min() > floor
        labels = predict_image(detector, image, tile=96, overlap=32, score_thresh=thresh)
        with monkeypatch.context() as m:  # the old way: every proposal above 0.5
            m.setattr(predict, "score_floor", lambda *args, **kw: 0.5)
            old = predict_image(detector, image, tile=96, overlap=32, score_thresh=thresh)
        assert labels.max() > 0 and np.array_equal(labels, old)


def test_an_svs_and_an_rgba_section_give_the_labels_of_the_rgb_image(model, tmp_path):
    """An Aperio SVS is predicted at the pixel size its MPP states, and an RGBA section
    loses its alpha (not repeated into 12 channels): both label like the RGB image."""
    import tifffile

    run, sim = model
    found = [read_image(p) for p in sorted((sim / "images").iterdir())]
    gray = np.concatenate([np.concatenate(found[:2], axis=1),
                           np.concatenate(found[2:4], axis=1)], axis=0)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    rgba = np.concatenate([rgb, np.full(gray.shape + (1,), 255, gray.dtype)], axis=-1)
    options = dict(tile=128, overlap=48, score_thresh=0.5, precision="fp32", progress=False)
    (tmp_path / "flat").mkdir()
    tifffile.imwrite(tmp_path / "flat" / "s.tif", rgb, photometric="rgb")
    predict_folder(run, tmp_path / "flat", tmp_path / "memory", pixel_size_um=0.5, **options)
    expected = read_labels(tmp_path / "memory" / "labels" / "s.tif")
    assert expected.max() >= 5

    (tmp_path / "svs").mkdir()
    aperio = "Aperio Image Library v12.0.15 \r\n"
    kw = {"photometric": "rgb", "compression": "zlib", "metadata": None}
    with tifffile.TiffWriter(tmp_path / "svs" / "s.svs") as tif:
        tif.write(rgb, tile=(64, 64), description=aperio + "x|AppMag = 20|MPP = 0.5", **kw)
        tif.write(rgb[::8, ::8], description=aperio + "thumbnail", **kw)
        tif.write(rgb[::4, ::4], tile=(64, 64), description=aperio + "x|MPP = 0.5", **kw)
    (tmp_path / "rgba").mkdir()
    with tifffile.TiffWriter(tmp_path / "rgba" / "s.ome.tif") as tif:
        tif.write(rgba, subifds=1, tile=(64, 64), photometric="rgb", extrasamples=["unassalpha"])
        tif.write(rgba[::2, ::2], subfiletype=1, tile=(64, 64), photometric="rgb",
                  extrasamples=["unassalpha"])
    for source, extra in (("svs", {}), ("rgba", {"pixel_size_um": 0.5})):
        out = tmp_path / f"out-{source}"
        with pytest.warns(UserWarning):  # RGB -> gray for the fluo model; RGBA: alpha too
            predict_folder(run, tmp_path / source, out, labels_as="tiff", **options, **extra)
        image_id = "s"  # s.svs and s.ome.tif alike
        np.testing.assert_array_equal(read_labels(out / "labels" / f"{image_id}.tif"),
                                      expected)
        meta = json.loads((out / "meta.json").read_text())
        assert meta["images_pixel_size_um"][image_id]["pixel_size_um"] == 0.5


def test_a_pyramid_level_is_predicted_at_its_own_pixel_size_beside_a_meta_json(
        model, tmp_path, monkeypatch):
    """A folder with a meta.json that states no pixel size (provenance only) and an SVS of
    0.499 um/px read at level 1: the level's 1.996 um/px is the image's pixel size, not the
    level 0 size the files state (which once came in through the folder's common size)."""
    import json

    import tifffile

    from cellsynth.segment import predict

    monkeypatch.setattr(predict, "make_predictor", _threshold_predictor)
    run, _ = model
    folder = tmp_path / "slides"
    folder.mkdir()
    image = np.random.default_rng(0).integers(20, 60, (512, 384, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:512, :384]
    for y, x in ((128, 96), (300, 250), (420, 120)):  # cells of radius 12 px at level 1
        image[(yy - y) ** 2 + (xx - x) ** 2 < 48 ** 2] = 230
    kw = {"photometric": "rgb", "compression": "zlib", "metadata": None}
    # level 1 by 4x4 means, as slide scanners make their levels (each pixel covers 16)
    level1 = image.reshape(128, 4, 96, 4, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    head = "Aperio Image Library v12.0.15 \r\n"
    with tifffile.TiffWriter(folder / "slide.svs") as tif:
        tif.write(image, tile=(128, 128), description=head + "512x384 |MPP = 0.4990", **kw)
        tif.write(image[::8, ::8], description=head + "thumbnail", **kw)
        tif.write(level1, tile=(128, 128), description=head + "-> 128x96 |MPP = 0.4990", **kw)
    (folder / "meta.json").write_text(json.dumps({"stain": "Nissl"}))
    predict_folder(run, folder, tmp_path / "out", level=1, precision="fp32", progress=False)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["images_pixel_size_um"]["slide"]["pixel_size_um"] == pytest.approx(4 * 0.499)
    # a pixel size stated in meta.json or by --pixel-size is the slide's (level 0's): at
    # level 1 it grows as the file's own does (it was taken as level 1's, 4x too small)
    for how, kw in (("meta", {}), ("given", {"pixel_size_um": 0.25})):
        if how == "meta":
            (folder / "meta.json").write_text(json.dumps({"stain": "Nissl",
                                                          "pixel_size_um": 0.25}))
        predict_folder(run, folder, tmp_path / how, level=1, precision="fp32",
                       progress=False, **kw)
        stated = json.loads((tmp_path / how / "meta.json").read_text())
        assert stated["images_pixel_size_um"]["slide"]["pixel_size_um"] == \
            pytest.approx(4 * 0.25), how
    (folder / "meta.json").write_text(json.dumps({"stain": "Nissl"}))
    labels = read_labels(tmp_path / "out" / "labels" / "slide.tif")
    assert labels.shape == (128, 96)
    # exported outlines are in level 0's pixels, where QuPath and napari show the slide
    from cellsynth.io.export import export, label_polygons

    assert meta["images_pixel_size_um"]["slide"]["level0_shape"] == [512, 384]
    export(tmp_path / "out", "geojson", tmp_path / "qupath")
    export(tmp_path / "out", "coco", tmp_path / "coco")
    features = json.loads((tmp_path / "qupath" / "slide.geojson").read_text())["features"]
    own = label_polygons(labels)
    assert len(features) == len(own) == 3
    for feature in features:
        index = feature["properties"]["measurements"]["label"]
        assert np.allclose(feature["geometry"]["coordinates"][0], own[index] * 4, atol=0.01)
        # at level 0 too, as the outline is (it was the level's pixel count, 16x smaller)
        assert feature["properties"]["measurements"]["area_px"] == \
            16 * int((labels == index).sum())
    # the raster formats pair the labels with the level they were predicted at
    export(tmp_path / "out", "stardist", tmp_path / "stardist")
    np.testing.assert_array_equal(read_image(tmp_path / "stardist" / "images" / "slide.tif"),
                                  level1)
    coco = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    assert coco["images"][0] | {"id": 1} == {"id": 1, "file_name": "slide.svs",
                                            "height": 512, "width": 384}
    assert coco["annotations"][0]["area"] == 16 * int((labels == 1).sum())
    # the detections table gives each cell at level 0 too, where the slide's coordinates
    # are (it had only level 1's pixels): the centres drawn at level 0, within a pixel
    import csv

    with open(tmp_path / "out" / "detections" / "slide.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    found = sorted((float(r["centroid_y_level0"]), float(r["centroid_x_level0"])) for r in rows)
    assert np.allclose(found, [(128, 96), (300, 250), (420, 120)], atol=1.5), found
    for r in rows:  # the box's pixel edges scale by the level's factor
        assert float(r["bbox_y1_level0"]) == 4 * int(r["bbox_y1"])
        assert float(r["bbox_x0_level0"]) == 4 * int(r["bbox_x0"])
    predict_folder(run, folder, tmp_path / "level0", precision="fp32", progress=False)
    header = (tmp_path / "level0" / "detections" / "slide.csv").read_text().splitlines()[0]
    assert "level0" not in header  # (at level 0 the columns would repeat centroid and box)


def test_blank_glass_beside_a_section_is_not_predicted_and_changes_no_label(model, tmp_path,
                                                                            capsys):
    """A field of the background's level beside the cells (the simulated image spans only
    9-19 grey levels, so noise of one level would be a sixth of its range): its tiles are
    skipped (counted in meta.json, said in one line) and the labels are those of predicting
    every tile (`--empty-contrast 0`)."""
    from cellsynth.cli import main

    run, sim = model
    image = read_image(sorted((sim / "images").iterdir())[0])
    field = np.full((image.shape[0], 480), np.median(image), np.uint8)
    field[:, :image.shape[1]] = image
    (tmp_path / "in").mkdir()
    write_image(tmp_path / "in" / "s.tif", field)
    common = ["predict", "--detector", str(run), "--images", str(tmp_path / "in"),
              "--tile", "128", "--overlap", "48", "--score-thresh", "0.5",
              "--precision", "fp32"]
    assert main([*common, "--out", str(tmp_path / "every"), "--empty-contrast", "0",
                 "--quiet"]) == 0
    assert main([*common, "--out", str(tmp_path / "skip")]) == 0
    tiles = {name: json.loads((tmp_path / name / "meta.json").read_text())
             ["images_pixel_size_um"]["s"]["tiles"] for name in ("every", "skip")}
    assert tiles["every"]["blank"] == 0 and tiles["every"]["predicted"] == 6
    assert tiles["skip"]["blank"] >= 2
    assert tiles["skip"]["predicted"] + tiles["skip"]["blank"] == 6
    every = read_labels(tmp_path / "every" / "labels" / "s.tif")
    assert every.max() >= 3
    np.testing.assert_array_equal(read_labels(tmp_path / "skip" / "labels" / "s.tif"), every)
    err = capsys.readouterr().err
    assert f"s.tif: {tiles['skip']['blank']} of 6 tiles blank" in err
    assert "crop to the tissue" not in err  # (some tiles were predicted)
    # every tile blank: the likelier cause is named (a range set by glass noise; audit 7)
    glass = 12 + np.random.default_rng(0).integers(0, 4, field.shape)  # camera noise alone
    write_image(tmp_path / "in" / "s.tif", glass.astype(np.uint8))
    assert main([*common, "--out", str(tmp_path / "none")]) == 0
    err = capsys.readouterr().err
    assert "s.tif: 6 of 6 tiles blank" in err and "crop to the tissue" in err, err


def test_int8_keeps_what_agrees_with_fp32_and_falls_back_otherwise(model, tmp_path, capsys,
                                                                 monkeypatch):
    """--precision int8 quantises the backbone and heads on windows of the images, then keeps
    int8 only where it finds the fp32 cells there; otherwise it predicts at what `auto` picks
    on this CPU (bf16 where native; it was always fp32) and says so. Training cannot ask for
    int8."""
    from cellsynth.cli import main
    from cellsynth.segment import folders

    run, sim = model
    common = ["predict", "--detector", str(run), "--images", str(sim), "--score-thresh", "0.5"]

    def meta(name: str) -> dict:
        return json.loads((tmp_path / name / "meta.json").read_text())

    assert main([*common, "--out", str(tmp_path / "fp32"), "--precision", "fp32"]) == 0
    assert main([*common, "--out", str(tmp_path / "bf16"), "--precision", "bf16"]) == 0
    capsys.readouterr()
    monkeypatch.setattr(folders, "INT8_AGREEMENT", 1.01)  # nothing can agree enough
    monkeypatch.setenv("CELLSYNTH_PRECISION", "bf16")  # (what auto picks on an AMX CPU)
    assert main([*common, "--out", str(tmp_path / "strict"), "--precision", "int8"]) == 0
    assert ("precision bf16 (set by CELLSYNTH_PRECISION): int8 changed the cells"
            in capsys.readouterr().err)
    assert meta("strict")["precision"] == "bf16"
    assert meta("strict")["precision_asked"] == "int8"  # (the refusal left no trace)
    assert "precision_asked" not in meta("fp32")
    names = sorted(p.name for p in (tmp_path / "fp32" / "labels").iterdir())
    for name in names:  # (the fp32 reference int8 was checked against now runs in bf16)
        np.testing.assert_array_equal(read_labels(tmp_path / "strict" / "labels" / name),
                                      read_labels(tmp_path / "bf16" / "labels" / name))
    monkeypatch.setenv("CELLSYNTH_PRECISION", "fp32")  # (an AVX2 CPU's auto)
    monkeypatch.setattr(folders, "INT8_AGREEMENT", 0.0)  # whatever int8 finds
    assert main([*common, "--out", str(tmp_path / "int8"), "--precision", "int8"]) == 0
    err = capsys.readouterr().err
    assert "precision int8 (the detector's backbone and heads" in err
    assert "precision fp32" not in err and "deprecated" not in err  # one line, no noise
    assert meta("int8")["precision"] == "int8"
    assert sorted(p.name for p in (tmp_path / "int8" / "labels").iterdir()) == names
    # checked at the threshold asked for: where fp32 finds nothing there, nothing can be
    # compared (the detector's own threshold was used, and 0 cells against 0 passed as F1 1)
    common[-1] = "0.999999"
    assert main([*common, "--out", str(tmp_path / "none"), "--precision", "int8"]) == 0
    assert ("precision fp32 (set by CELLSYNTH_PRECISION): int8 not checked: fp32 finds 0 "
            "cell(s) on the 4 calibration window(s) at score threshold 0.999999"
            ) in capsys.readouterr().err
    assert meta("none")["precision"] == "fp32"
    with pytest.raises(SystemExit):
        main(["train", "--data", str(sim), "--out", str(tmp_path / "t"), "--precision", "int8"])
    assert "invalid choice: 'int8'" in capsys.readouterr().err


def test_quantize_core_runs_the_backbone_and_heads_in_int8(model):
    """The quantised copy holds int8 convolutions in every part, leaves the fp32 model as it
    was, and its score map follows the fp32 one on the calibration image."""
    from cellsynth.segment.quantize import PARTS, quantize_core

    run, sim = model
    detector = load_detector(run, precision="fp32")
    image = read_image(sorted((sim / "images").iterdir())[0]).astype(np.float32)
    image = image[..., None] if image.ndim == 2 else image
    image = image[..., :1].repeat(detector.in_channels, axis=2)
    image = (image - image.min()) / max(float(image.max() - image.min()), 1e-6)
    int8 = quantize_core(detector.model, [image])
    quantized = torch.ao.nn.quantized.Conv2d
    for part in PARTS:
        assert any(isinstance(m, quantized) for m in getattr(int8.core, part).modules()), part
        assert not any(isinstance(m, quantized)
                       for m in getattr(detector.model.core, part).modules()), part
    side = (min(image.shape[:2]) // 32) * 32
    x = torch.from_numpy(np.ascontiguousarray(image[:side, :side].transpose(2, 0, 1)))[None]
    with torch.no_grad():
        ref = detector.model.core(x)[0]  # the score map
        got = int8.core(x)[0]
    assert got.dtype == torch.float32 and got.shape == ref.shape
    r = np.corrcoef(ref.flatten().numpy(), got.flatten().numpy())[0, 1]
    assert r > 0.9, r


def test_faint_detections_are_dropped_by_the_cut_of_annotated_images(model, tmp_path, capsys):
    """--faint-from: the fluorescence detector's cells are bright on a dark background (read
    from the annotations); the cut at the median annotated nucleus drops the detections
    dimmer than it (measured here on the painted pixels, apart from the implementation)
    and keeps the others; the dropped ones are counted; bad input is one line."""
    import json

    from scipy import ndimage

    from cellsynth.cli import main
    from cellsynth.io.normalize import normalize

    run, sim = model
    image = read_image(sim / "images" / "0003.png")
    (tmp_path / "img").mkdir()
    write_image(tmp_path / "img" / "a.png", image)
    brightness = normalize(image, load_detector(run).normalization)
    brightness = brightness.mean(-1) if brightness.ndim == 3 else brightness
    found = {}
    for name, extra in (("all", {}), ("p50", {"faint_from": sim, "faint_percentile": 50.0})):
        out = tmp_path / name
        predict_folder(run, tmp_path / "img", out, score_thresh=0.5, precision="fp32",
                       progress=False, **extra)
        labels = read_labels(out / "labels" / "a.tif")
        ids = np.unique(labels[labels > 0])
        found[name] = (json.loads((out / "meta.json").read_text()),
                       np.asarray(ndimage.mean(brightness, labels, ids)))
    meta, every = found["all"]
    assert meta["faint"] is None and meta["n_faint_dropped"] == 0 and len(every) >= 10
    meta, kept = found["p50"]
    cut = meta["faint"]["cut"]
    assert not meta["faint"]["dark"] and meta["faint"]["percentile"] == 50
    assert meta["n_faint_dropped"] > 0 and 0 < len(kept) < len(every)
    # per image: the count beside the tile counts, which count tiles only
    assert meta["images_pixel_size_um"]["a"]["n_faint_dropped"] == meta["n_faint_dropped"]
    assert set(meta["images_pixel_size_um"]["a"]["tiles"]) == {"predicted", "blank", "stored"}
    assert (every < cut - 0.05).sum() > 0           # there were dim ones to drop ...
    assert np.mean(kept >= cut - 0.05) >= 0.9       # ... and what is left is bright enough
    code = main(["predict", "--detector", str(run), "--images", str(tmp_path / "img"),
                 "--out", str(tmp_path / "bad"), "--faint-from", str(tmp_path / "img"),
                 "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "without a label file" in err[0], err
    code = main(["predict", "--detector", str(run), "--images", str(tmp_path / "img"),
                 "--out", str(tmp_path / "bad"), "--faint-percentile", "10", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--faint-percentile needs --faint-from" in err[0]
    assert not (tmp_path / "bad").exists()


def test_a_detector_without_a_pixel_size_says_it_cannot_match_the_images_one(model, tmp_path,
                                                                             capsys):
    """A stated pixel size that cannot be used is one warning line, shown with --quiet; a
    detector that records its pixel size gets none and resamples."""
    import torch

    from cellsynth.cli import main

    run, sim = model
    (tmp_path / "imgs").mkdir()
    image = read_image(sorted((sim / "images").iterdir())[0])
    write_image(tmp_path / "imgs" / "a.png", image)
    args = ["predict", "--images", str(tmp_path / "imgs"), "--pixel-size", "0.25", "--quiet"]
    assert main([*args, "--detector", str(run), "--out", str(tmp_path / "p")]) == 0
    err = capsys.readouterr().err
    assert err.count("does not record the pixel size it was trained at") == 1, err
    assert "images' 0.25 um/px cannot be matched" in err
    meta = json.loads((tmp_path / "p" / "meta.json").read_text())
    assert meta["images_pixel_size_um"]["a"]["resampled_by"] == 1.0
    ckpt = torch.load(run / "last.pt", weights_only=False)
    ckpt["config"]["pixel_size_um"] = 0.5  # the same detector, knowing its pixel size
    torch.save(ckpt, tmp_path / "knows.pt")
    assert main([*args, "--detector", str(tmp_path / "knows.pt"),
                 "--out", str(tmp_path / "q")]) == 0
    assert "does not record" not in capsys.readouterr().err
    meta = json.loads((tmp_path / "q" / "meta.json").read_text())
    assert meta["images_pixel_size_um"]["a"]["resampled_by"] == 0.5


def test_one_image_of_a_dataset_takes_the_pixel_size_its_meta_json_states(model, tmp_path,
                                                                          capsys):
    """predict --images DATA/images/x.png said the pixel size was unknown although DATA's
    meta.json states it (fourth audit)."""
    from cellsynth.cli import main

    run, sim = model
    _recorded(run, tmp_path / "half.pt", pixel_size_um=0.5)
    first = sorted((sim / "images").iterdir())[0]
    assert json.loads((sim / "meta.json").read_text())["pixel_size_um"] == 0.5
    assert main(["predict", "--detector", str(tmp_path / "half.pt"), "--images", str(first),
                 "--out", str(tmp_path / "one"), "--precision", "fp32", "--quiet"]) == 0
    assert "unknown" not in capsys.readouterr().err
    meta = json.loads((tmp_path / "one" / "meta.json").read_text())
    assert meta["images_pixel_size_um"][first.stem]["pixel_size_um"] == 0.5
    # the dataset's images/ folder given (without a meta.json of its own): DATA's too
    # (taken to be at the model's size, whatever DATA states; audit 6)
    data = tmp_path / "data"
    shutil.copytree(sim, data)
    meta_json = json.loads((data / "meta.json").read_text())
    (data / "meta.json").write_text(json.dumps({**meta_json, "pixel_size_um": 0.25}))
    assert main(["predict", "--detector", str(tmp_path / "half.pt"), "--images",
                 str(data / "images"), "--out", str(tmp_path / "folder"), "--precision", "fp32",
                 "--quiet"]) == 0
    assert "unknown" not in capsys.readouterr().err
    meta = json.loads((tmp_path / "folder" / "meta.json").read_text())
    assert {v["pixel_size_um"] for v in meta["images_pixel_size_um"].values()} == {0.25}


def test_a_datasets_labels_folder_given_as_images_is_refused(model, tmp_path, capsys):
    """predict --images DATA/labels "predicted 77 cells" in the label maps (audit 6)."""
    from cellsynth.cli import main

    run, sim = model
    assert main(["predict", "--detector", str(run), "--images", str(sim / "labels"),
                 "--out", str(tmp_path / "p"), "--quiet"]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "the label maps of the dataset" in err, err
    assert not (tmp_path / "p").exists()
