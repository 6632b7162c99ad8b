"""Realism metrics on tiny synthetic textures: identical sets look identical, blurred or
intensity-shifted sets look different, and a seed fixes every number."""

import json

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from cellsynth.cli import main
from cellsynth.evaluate import (
    c2st,
    histogram_distance,
    realism,
    sliced_wasserstein,
    spectrum_distance,
)
from cellsynth.io import write_image

FAST = {"crop_size": 32, "n_crops": 96, "folds": 3, "epochs": 4, "threads": 1}


def textures(seed, n=9, size=48, blur=0.0, shift=0.0):
    """Smooth random textures in [0.1, 0.7] (+ shift), optionally blurred further."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = gaussian_filter(rng.random((size, size)), 1.5)
        x = 0.1 + 0.6 * (x - x.min()) / (x.max() - x.min())
        if blur:
            x = gaussian_filter(x, blur)
        out.append((x + shift).astype(np.float32))
    return out


@pytest.fixture(scope="module")
def sharp():
    return textures(0)


def test_identical_sets_are_indistinguishable(sharp):
    result = c2st(sharp, sharp, seed=0, **FAST)
    assert abs(result.accuracy - 0.5) < 0.15
    assert result.split == "image" and len(result.fold_accuracies) == 3
    assert result.held_out_images == 3
    assert result.crops_per_set == 96
    assert histogram_distance(sharp, sharp) == (0.0,)
    assert spectrum_distance(sharp, sharp) == 0.0


def test_blurred_vs_sharp_is_distinguishable(sharp):
    blurred = textures(1, blur=2.0)
    assert c2st(sharp, blurred, seed=0, **FAST).accuracy >= 0.9
    swd_same = sliced_wasserstein(sharp, textures(2), seed=0, n_patches=1024).mean_x1e3
    swd_blur = sliced_wasserstein(sharp, blurred, seed=0, n_patches=1024).mean_x1e3
    assert swd_blur > 3 * swd_same
    assert spectrum_distance(sharp, blurred) > 10 * spectrum_distance(sharp, textures(2))


def test_whole_image_brightness_and_contrast_are_normalised_away(sharp):
    # every image is normalised by its own percentiles, as the detector sees it: a global
    # shift or contrast change of the whole image is invisible, texture is not
    changed = [np.float32(2.0) * x + np.float32(0.25) for x in sharp]
    assert abs(c2st(sharp, changed, seed=0, **FAST).accuracy - 0.5) < 0.15
    assert histogram_distance(sharp, changed)[0] < 1e-4
    assert spectrum_distance(sharp, changed) < 1e-3


def test_bit_depth_is_invisible(sharp):
    """The same pixels stored as uint8, 12-bit uint16, uint16 x 256 or float x 1000 give the
    same realism numbers: images are normalised by content, not by their dtype."""
    as8 = [np.rint(x * 255).astype(np.uint8) for x in sharp]
    other = [np.rint(x * 255).astype(np.uint8) for x in textures(3, blur=1.0)]
    options = {"crop_size": 16, "n_crops": 64, "folds": 3, "epochs": 2, "swd_patches": 256,
               "threads": 1}
    reference = realism(as8, other, seed=0, **options)
    for stored in ([x.astype(np.uint16) * 16 for x in as8],
                   [x.astype(np.uint16) * 256 for x in as8],
                   [x.astype(np.float32) * 1000 for x in as8]):
        result = realism(stored, other, seed=0, **options)
        assert result.c2st.accuracy == pytest.approx(reference.c2st.accuracy, abs=1e-6)
        assert result.histogram_w1 == pytest.approx(reference.histogram_w1, abs=1e-5)
        assert result.swd.mean_x1e3 == pytest.approx(reference.swd.mean_x1e3, rel=1e-4)


def test_histogram_distance_of_two_levels_vs_a_ramp():
    # two levels map to {0, 1}; a ramp to ~uniform [0, 1]: W1 = integral |0.5 - x| = 0.25
    two = np.zeros((64, 64), np.uint16)
    two[:, 32:] = 4000
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (64, 1))
    assert histogram_distance([two], [ramp])[0] == pytest.approx(0.25, abs=0.02)


def test_spectrum_distance_sees_blur_not_gain():
    noise = np.random.default_rng(0).random((64, 64)).astype(np.float32) * 0.5
    assert spectrum_distance([noise], [3 * noise]) < 1e-6
    assert spectrum_distance([noise], [gaussian_filter(noise, 1.0)]) > 0.5


def test_same_seed_same_result_and_other_seed_differs(sharp):
    other = textures(3, blur=0.7)
    options = {"crop_size": 16, "n_crops": 64, "folds": 2, "epochs": 2, "swd_patches": 256,
               "threads": 1}
    first = realism(sharp, other, seed=7, **options)
    assert realism(sharp, other, seed=7, **options) == first
    assert sliced_wasserstein(sharp, other, seed=8, n_patches=256) != first.swd
    assert json.loads(json.dumps(first.to_dict()))["c2st"]["accuracy"] == first.c2st.accuracy


def test_gray_and_rgb_sets_are_compared_in_gray(sharp):
    rgb = [np.stack([x, x, x], axis=-1) for x in sharp]
    with pytest.warns(UserWarning, match="converting RGB to gray"):
        result = realism(sharp, rgb, seed=0, crop_size=16, n_crops=16, folds=2, epochs=1,
                         swd_patches=128, threads=1)
    assert result.converted_to_gray and result.channels == 1
    # rgb2gray of equal channels gives back the gray image; the percentiles of the three
    # channels pooled interpolate between other order statistics (~0.3 % of the range)
    assert result.histogram_w1 < 5e-3


def test_few_images_fall_back_to_crop_split(sharp):
    with pytest.warns(UserWarning, match="folds split crops"):
        result = c2st(sharp[:1], sharp[1:2], seed=0, crop_size=16, n_crops=16, folds=2, epochs=1,
                      threads=1)
    assert result.split == "crop" and result.held_out_images == 0
    with pytest.warns(UserWarning, match="only 1 image"):
        c2st(sharp[:2], sharp[2:4], seed=0, crop_size=16, n_crops=16, folds=2, epochs=1,
             threads=1)


def test_fewer_folds_than_asked_are_said(sharp):
    """`realism --folds 5` on 3 images per set ran 3 folds and said nothing (audit)."""
    with pytest.warns(UserWarning, match="3 folds, not the 5 asked") as said:
        result = c2st(sharp[:3], sharp[3:6], seed=0, crop_size=16, n_crops=30, folds=5,
                      epochs=1, threads=1)
    assert len(result.fold_accuracies) == 3
    assert "a set has only 3" in str(said[0].message)


@pytest.mark.parametrize(("a", "message"), [
    ([], "empty"),
    ([np.zeros((16, 16), np.float32)], "smaller than"),
    ([np.zeros((48, 48, 4), np.float32)], "expected shape"),
    ([np.zeros((48, 48), np.complex64)], "unsupported image dtype"),
])
def test_invalid_inputs_raise(sharp, a, message):
    with pytest.raises(ValueError, match=message):
        c2st(a, sharp, **FAST)


def write_set(root, images):
    (root / "images").mkdir(parents=True)
    for i, image in enumerate(images):
        write_image(root / "images" / f"{i:02d}.png", np.rint(image * 255).astype(np.uint8))
    return root


def test_cli_realism_writes_json(sharp, tmp_path, capsys):
    a = write_set(tmp_path / "a", sharp[:4])
    b = write_set(tmp_path / "b", textures(4, n=4, blur=2.0))
    out = tmp_path / "realism.json"
    argv = ["realism", "--a", str(a), "--b", str(b), "--json", str(out), "--seed", "1",
            "--crop", "16", "--crops", "32", "--folds", "2", "--epochs", "1", "--threads", "1"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "C2ST accuracy" in captured.out
    assert "cellsynth realism: warning: c2st: only 2 image(s)" in captured.err
    report = json.loads(out.read_text())
    assert report["n_a"] == 4 and report["seed"] == 1 and report["c2st"]["crop_size"] == 16
    assert len(report["c2st"]["fold_accuracies"]) == 2
    assert report["swd"]["mean_x1e3"] > 0 and report["a"] == str(a)
    # an existing file is replaced only with --force, an input image never (both were
    # replaced by JSON text without a word; audit), refused before the work
    assert main(argv + ["--repeats", "2"]) == 2
    assert "realism.json: exists" in capsys.readouterr().err
    image = a / "images" / "00.png"
    before = image.read_bytes()
    assert main(argv[:6] + [str(image)] + argv[7:] + ["--force"]) == 2
    assert "lies in the input" in capsys.readouterr().err and image.read_bytes() == before
    assert main(argv + ["--repeats", "2", "--force"]) == 0
    assert "mean of 2 repeats" in capsys.readouterr().out
    twice = json.loads(out.read_text())["c2st"]
    assert twice["repeats"] == 2 and twice["repeat_accuracies"][0] == report["c2st"]["accuracy"]


def test_cli_realism_image_smaller_than_crop(sharp, tmp_path, capsys):
    a = write_set(tmp_path / "a", sharp[:2])
    assert main(["realism", "--a", str(a), "--b", str(a), "--crop", "64"]) == 2
    err = capsys.readouterr().err
    assert "00.png: image 48x48 is smaller than the 64 px crops" in err


def test_repeats_average_independent_tests_seeded_seed_plus_r(sharp):
    other = textures(3)
    singles = [c2st(sharp, other, seed=s, **FAST).accuracy for s in (5, 6)]
    result = c2st(sharp, other, seed=5, repeats=2, **FAST)
    assert result.repeats == 2
    assert result.repeat_accuracies == pytest.approx(singles)
    assert result.accuracy == pytest.approx(np.mean(singles))
    assert result.sem == pytest.approx(np.std(singles, ddof=1) / np.sqrt(2))
    assert len(result.fold_accuracies) == 2 * 3
    assert realism(sharp, other, seed=5, repeats=2, swd_patches=256,
                   **FAST).c2st.accuracy == pytest.approx(result.accuracy)
    with pytest.raises(ValueError, match="repeats"):
        c2st(sharp, other, repeats=0, **FAST)


def test_cli_realism_compares_the_channel_named_with_a_gray_set(sharp, tmp_path, capsys):
    """realism on 2-channel images warned once per image and named a --channel it lacked."""
    import tifffile

    gray = write_set(tmp_path / "gray", sharp[:3])
    (tmp_path / "two" / "images").mkdir(parents=True)
    for i, image in enumerate(sharp[:3]):
        planes = np.stack([np.zeros_like(image), image])  # the cells in channel 1
        tifffile.imwrite(tmp_path / "two" / "images" / f"{i}.tif",
                         np.rint(planes * 255).astype(np.uint8), imagej=True,
                         metadata={"axes": "CYX"})
    argv = ["realism", "--a", str(gray), "--b", str(tmp_path / "two"), "--crop", "16",
            "--crops", "32", "--folds", "2", "--epochs", "1", "--threads", "1", "--json"]
    assert main(argv + [str(tmp_path / "one.json"), "--channel", "1"]) == 0
    assert "channels; using channel" not in capsys.readouterr().err
    same = json.loads((tmp_path / "one.json").read_text())["swd"]["mean_x1e3"]
    assert main(argv + [str(tmp_path / "zero.json")]) == 0
    said = capsys.readouterr().err
    assert said.count("2 channels; using channel 0") == 3  # one per file, each named
    assert "0.tif: 2 channels" in said and "--channel" in said
    blank = json.loads((tmp_path / "zero.json").read_text())["swd"]["mean_x1e3"]
    assert blank > 5 * same  # channel 1 holds the gray set's own pixels, channel 0 none
