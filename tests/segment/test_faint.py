"""The faint cut: how pale an annotated cell can be, and detections paler than that dropped."""

import numpy as np
import pytest
from skimage.draw import disk

from cellsynth.errors import ConfigError
from cellsynth.segment.faint import calibrate_faint, drop_faint, proposal_signals

# 20 cells of known stain density 0.05, 0.10, ..., 1.00 on a blank (stain 0) background
STAINS = np.linspace(0.05, 1.0, 20)
CENTRES = [(20 + 40 * (i // 5), 20 + 40 * (i % 5)) for i in range(20)]
RADIUS = 12


def _bright_field() -> tuple[np.ndarray, np.ndarray]:
    """RGB image in [0, 1]: white background, each cell 1 - its stain in every channel."""
    image = np.ones((160, 200, 3), np.float32)
    labels = np.zeros((160, 200), np.int32)
    for i, (centre, density) in enumerate(zip(CENTRES, STAINS)):
        rr, cc = disk(centre, RADIUS, shape=labels.shape)
        image[rr, cc] = 1.0 - density
        labels[rr, cc] = i + 1
    return image, labels


def _circle(centre: tuple[int, int], radius: float = RADIUS - 2, n: int = 32) -> np.ndarray:
    angle = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([centre[1] + radius * np.cos(angle), centre[0] + radius * np.sin(angle)], 1)


def test_the_cut_is_the_percentile_of_the_annotated_cells_stain():
    image, labels = _bright_field()
    cut = calibrate_faint([(image, labels)], 10)
    assert cut.dark and cut.n_objects == 20
    assert cut.cut == pytest.approx(np.percentile(STAINS, 10), abs=1e-5)
    # bright cells on a dark background (fluorescence): intensity, not stain
    fluo = calibrate_faint([(1.0 - image[..., :1], labels)], 10)
    assert not fluo.dark and fluo.cut == pytest.approx(np.percentile(STAINS, 10), abs=1e-5)
    assert calibrate_faint([(image, np.zeros_like(labels))], 10) is None
    with pytest.raises(ConfigError, match="percentile"):
        calibrate_faint([(image, labels)], 0)


def test_proposals_are_measured_window_by_window_as_in_one_piece():
    image, labels = _bright_field()
    cut = calibrate_faint([(image, labels)], 10)
    contours = np.stack([_circle(c) for c in CENTRES])
    reads = []

    def read(ys, xs):
        reads.append((ys.stop - ys.start) * (xs.stop - xs.start))
        return image[ys, xs]

    whole = proposal_signals(contours, labels.shape, read, cut)
    np.testing.assert_allclose(whole, STAINS, atol=1e-5)
    reads.clear()
    small = proposal_signals(contours, labels.shape, read, cut, block=40)
    np.testing.assert_allclose(small, whole)
    assert max(reads) < image.shape[0] * image.shape[1] / 4  # never the whole image at once


def test_only_painted_proposals_fainter_than_the_cut_are_dropped():
    image, labels = _bright_field()
    cut = calibrate_faint([(image, labels)], 10)  # between the 2nd and 3rd palest cell
    contours = np.stack([_circle(c) for c in CENTRES])
    scores = np.full(20, 0.95)
    scores[1] = 0.5  # the second palest: below the score threshold, not painted anyway
    kept, dropped = drop_faint(contours, scores, labels.shape, lambda ys, xs: image[ys, xs],
                               cut, score_thresh=0.9)
    assert dropped == 1 and kept[0] < 0            # the palest cell
    assert kept[1] == 0.5                           # untouched: it was not to be painted
    np.testing.assert_array_equal(kept[2:], scores[2:])


def test_a_run_config_asking_for_the_cut_without_annotated_images_is_refused(tmp_path):
    from cellsynth.io.images import write_image
    from cellsynth.pipeline.config import load_pipeline_config

    (tmp_path / "section" / "images").mkdir(parents=True)
    write_image(tmp_path / "section" / "images" / "a.png", np.full((64, 64, 3), 200, np.uint8))
    config = tmp_path / "c.yaml"
    config.write_text("simulate: {preset: nissl}\nreal: {unlabeled: section}\n"
                      "predict: {faint_percentile: 5}\n")
    with pytest.raises(ConfigError, match="faint_percentile needs annotated images"):
        load_pipeline_config(config)
    config.write_text("simulate: {preset: nissl}\nreal: {unlabeled: section}\n"
                      "predict: {faint_percentile: 100}\n")
    with pytest.raises(ConfigError, match=r"faint_percentile must be in \[0, 100\)"):
        load_pipeline_config(config)
