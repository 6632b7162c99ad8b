"""The label-free score threshold: the detector's count on unlabeled images matched to the
estimator's count."""

import numpy as np
import pytest

from cellsynth.segment.calibrate import FLOOR, count_threshold, threshold_for_count


def test_threshold_for_count_takes_the_score_at_that_rank():
    scores = [np.array([0.9, 0.999, 0.95]), np.array([0.97]), np.array([])]
    assert threshold_for_count(scores, 2) == pytest.approx(0.97)
    assert threshold_for_count(scores, 2.4) == pytest.approx(0.97)   # rounded count
    assert threshold_for_count(scores, 4) == pytest.approx(0.9)
    assert threshold_for_count(scores, 0) == pytest.approx(0.999)    # none expected: keep the best
    assert threshold_for_count(scores, 10) == FLOOR                   # fewer proposals than cells
    assert threshold_for_count([np.array([0.2, 0.3])], 1) == FLOOR   # never below the floor
    assert threshold_for_count([], 3) == FLOOR


def test_count_threshold_matches_the_estimated_count(trained_detector):
    run, sim = trained_detector
    result = count_threshold(run, sim, "fluo", pixel_size_um=0.5)
    # the estimator finds the simulated nuclei; the barely trained detector finds only a few
    # above its default threshold, and exactly as many as estimated at the calibrated one
    assert result["n_images"] == 4 and result["estimated_count"] >= 20
    assert result["count_at_own"] < result["estimated_count"]
    assert FLOOR < result["score_thresh"] < result["own_score_thresh"] == pytest.approx(0.9)
    assert result["count_at_threshold"] == result["estimated_count"]


def test_windows_of_a_section_are_scaled_as_the_whole_section(trained_detector, tmp_path,
                                                                monkeypatch):
    """The count threshold scores windows of a whole section with the section's intensity
    range (as `cellsynth predict` will scale it), a plain image with its own."""
    import tifffile

    from cellsynth.io.normalize import intensity_range
    from cellsynth.io.sections import open_large_image
    from cellsynth.segment import predict
    from cellsynth.segment.predict import load_detector
    from cellsynth.simulate import preset, simulate

    run, _ = trained_detector
    tiles = [image for image, _ in simulate(preset("fluo"), 4, 1152, seed=3)]
    section = np.block([[tiles[0], tiles[1]], [tiles[2], tiles[3]]]).astype(np.uint16) * 16
    section[:64, :64] = 4095  # a bright corner no tissue window holds
    folder = tmp_path / "sections"
    folder.mkdir()
    with tifffile.TiffWriter(folder / "s.ome.tif") as tif:
        tif.write(section, subifds=1, tile=(256, 256), compression="zlib")
        tif.write(section[::2, ::2], subfiletype=1, tile=(256, 256), compression="zlib")
    seen = []

    def spy(detector, image, **kwargs):
        seen.append((image.shape, kwargs.get("value_range")))
        return np.zeros((0, 8, 2)), np.zeros(0), 0.0

    monkeypatch.setattr(predict, "image_proposals", spy)
    count_threshold(run, folder, "fluo", pixel_size_um=0.5)
    detector = load_detector(run)
    whole = intensity_range(open_large_image(folder / "s.ome.tif"), detector.normalization)
    assert len(seen) >= 2 and all(shape == (1024, 1024) for shape, _ in seen)
    for _, (low, high) in seen:
        np.testing.assert_array_equal(low, whole[0])
        np.testing.assert_array_equal(high, whole[1])
    seen.clear()
    small = tmp_path / "small"
    small.mkdir()
    tifffile.imwrite(small / "a.tif", tiles[0][:256, :256])
    count_threshold(run, small, "fluo", pixel_size_um=0.5)
    assert seen == [((256, 256), None)]  # a plain image: its own range, as before
    # a 2-channel section and a detector of channel 1: windows of channel 1, scaled by
    # channel 1's range (channel 0, a tenth as bright, would give another)
    seen.clear()
    two = tmp_path / "two"
    two.mkdir()
    with tifffile.TiffWriter(two / "s.ome.tif") as tif:
        stack = np.stack([section // 10, section])
        tif.write(stack, subifds=1, tile=(256, 256), compression="zlib",
                  metadata={"axes": "CYX"})
        tif.write(stack[:, ::2, ::2], subfiletype=1, tile=(256, 256), compression="zlib")
    _recorded(run, tmp_path / "c1.pt", source_channel=1)
    count_threshold(tmp_path / "c1.pt", two, "fluo", pixel_size_um=0.5)
    assert len(seen) >= 2 and all(shape == (1024, 1024) for shape, _ in seen)
    for _, (low, high) in seen:
        np.testing.assert_array_equal(low, whole[0])
        np.testing.assert_array_equal(high, whole[1])


def _recorded(run, path, **config):
    """A copy of ``run``'s detector at ``path`` whose training config records ``config``."""
    import torch

    ckpt = torch.load(run / "last.pt", weights_only=False)
    ckpt["config"].update(config)
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize("recorded", ["source_channel", "channel"])
def test_a_detector_of_channel_1_is_calibrated_on_channel_1(trained_detector, tmp_path,
                                                             recorded):
    """A detector trained on channel 1 of 2-channel images (a run's ``real.channel``:
    ``source_channel``; or ``train --channel``) was calibrated on channel 0: the estimator
    counted channel 0 and the detector scored it. Both now read channel 1, so a folder of
    2-channel images whose channel 1 is the gray images calibrates as the gray folder does
    (channel 0 here is the negative: counted there, the numbers differ)."""
    import tifffile

    from cellsynth.io.images import read_image

    run, sim = trained_detector
    detector = _recorded(run, tmp_path / "c1.pt", **{recorded: 1})
    folder = tmp_path / "two"
    folder.mkdir()
    for path in sorted((sim / "images").iterdir()):
        image = read_image(path)
        tifffile.imwrite(folder / f"{path.stem}.tif", np.stack([255 - image, image]),
                         imagej=True, metadata={"axes": "CYX"})
    gray = count_threshold(run, sim / "images", "fluo", pixel_size_um=0.5)
    two = count_threshold(detector, folder, "fluo", pixel_size_um=0.5)
    assert gray["estimated_count"] >= 20
    for key in ("estimated_count", "count_at_own", "count_at_threshold", "n_images"):
        assert two[key] == gray[key], key
    assert two["score_thresh"] == pytest.approx(gray["score_thresh"])
    # and the same detector on the gray images themselves: that channel saved alone
    alone = count_threshold(detector, sim / "images", "fluo", pixel_size_um=0.5)
    assert alone["estimated_count"] == gray["estimated_count"]
    assert alone["score_thresh"] == pytest.approx(gray["score_thresh"])
