"""Training data: crops keep images and labels aligned; datasets come at the working scale."""

import json
import warnings

import numpy as np
import pytest

from cellsynth.io.images import write_image, write_labels
from cellsynth.segment.data import Augment, CropSampler, LabeledImage, load_labeled


def _disc_image(size: int = 96) -> LabeledImage:
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.int32)
    for i, (cy, cx, r) in enumerate([(20, 25, 9), (60, 30, 12), (40, 70, 10), (80, 80, 7)], 1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    image = (labels > 0).astype(np.float32)[..., None]  # the image *is* the foreground
    return LabeledImage("discs", image, labels)


def test_crops_without_zoom_keep_pixels_and_labels_together():
    augment = Augment(scale=(1.0, 1.0), brightness=0.0, contrast=0.0, gamma=0.0)
    sampler = CropSampler([_disc_image()], 64, augment, np.random.default_rng(0))
    for _ in range(20):  # random windows, rotations and flips
        image, labels = sampler.sample()
        assert image.shape == (64, 64, 1) and labels.shape == (64, 64)
        np.testing.assert_array_equal(image[..., 0] > 0.5, labels > 0)


def test_zoomed_crops_stay_aligned_up_to_the_interpolated_rim():
    augment = Augment(scale=(0.7, 1.4), brightness=0.0, contrast=0.0, gamma=0.0)
    sampler = CropSampler([_disc_image()], 64, augment, np.random.default_rng(1))
    for _ in range(20):
        image, labels = sampler.sample()
        foreground, cells = image[..., 0] > 0.5, labels > 0
        union = (foreground | cells).sum()
        if union:
            assert (foreground & cells).sum() / union > 0.85


def test_load_labeled_rescales_to_the_working_pixel_size(tmp_path):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    item = _disc_image(96)
    write_image(root / "images" / "a.png", (item.image[..., 0] * 200).astype(np.uint8))
    write_labels(root / "labels" / "a.tif", item.labels.astype(np.uint16))
    (root / "meta.json").write_text(json.dumps({"pixel_size_um": 0.5}))
    same = load_labeled([root], pixel_size_um=0.5)[0]
    coarse = load_labeled([root], pixel_size_um=1.0)[0]
    fine = load_labeled([root], pixel_size_um=0.25)[0]
    assert same.labels.shape == (96, 96)
    assert coarse.labels.shape == (48, 48) and fine.labels.shape == (192, 192)
    assert coarse.image.shape == (48, 48, 1) and coarse.image.dtype == np.float32
    for scaled, factor in ((coarse, 0.5), (fine, 2.0)):
        assert set(np.unique(scaled.labels)) == set(np.unique(item.labels))  # ids stay ids
        areas = np.bincount(scaled.labels.ravel())[1:] / factor ** 2
        np.testing.assert_allclose(areas, np.bincount(item.labels.ravel())[1:], rtol=0.15)
    # a dataset without a stated pixel size is taken as it is, and the warning names it
    (root / "meta.json").unlink()
    with pytest.warns(UserWarning, match=r"ds: no pixel size .* working 1 um/px"):
        assert load_labeled([root], pixel_size_um=1.0)[0].labels.shape == (96, 96)
    with warnings.catch_warnings():  # no working pixel size asked for: nothing to say
        warnings.simplefilter("error")
        assert load_labeled([root])[0].labels.shape == (96, 96)
