"""Training data: crops keep images and labels aligned; datasets come at the working scale."""

import json
import warnings

import numpy as np
import pytest
import tifffile

from cellsynth.io.datasets import load_dataset
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
    with pytest.warns(UserWarning,
                      match=r"ds: 1 of 1 image\(s\) state no pixel size .* working 1 um/px"):
        assert load_labeled([root], pixel_size_um=1.0)[0].labels.shape == (96, 96)
    with warnings.catch_warnings():  # no working pixel size asked for: nothing to say
        warnings.simplefilter("error")
        assert load_labeled([root])[0].labels.shape == (96, 96)


def _tiff_dataset(root, sizes_um, *, kind="imagej"):
    """A labeled folder of TIFFs that state their own pixel size as Fiji (ImageJ, unit
    micron) or an OME-TIFF writer (QuPath, bfconvert) does; no meta.json."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    item = _disc_image(96)
    pixels = (item.image[..., 0] * 200).astype(np.uint8)
    for i, um in enumerate(sizes_um):
        path = root / "images" / f"im{i}.tif"
        if kind == "imagej":
            tifffile.imwrite(path, pixels, imagej=True, resolution=(1 / um, 1 / um),
                             metadata={"unit": "micron"})
        else:
            tifffile.imwrite(path, pixels, ome=True,
                             metadata={"PhysicalSizeX": um, "PhysicalSizeXUnit": "µm",
                                       "PhysicalSizeY": um, "PhysicalSizeYUnit": "µm"})
        write_labels(root / "labels" / f"im{i}.tif", item.labels.astype(np.uint16))
    return item


@pytest.mark.parametrize("kind", ["imagej", "ome"])
def test_training_images_rescale_by_the_pixel_size_their_tiffs_state(tmp_path, kind):
    root = tmp_path / "fiji"
    _tiff_dataset(root, [0.5, 0.5], kind=kind)
    assert load_dataset(root).pixel_size_um == pytest.approx(0.5)
    with warnings.catch_warnings():  # the files say it: nothing to warn about
        warnings.simplefilter("error")
        coarse = load_labeled([root], pixel_size_um=1.0)
    assert [c.labels.shape for c in coarse] == [(48, 48), (48, 48)]
    # meta.json, written by the user or by cellsynth, wins over the files' tags
    (root / "meta.json").write_text(json.dumps({"pixel_size_um": 1.0}))
    assert load_dataset(root).pixel_size_um == 1.0
    assert load_labeled([root], pixel_size_um=1.0)[0].labels.shape == (96, 96)


def test_images_from_two_microscopes_each_keep_their_own_pixel_size(tmp_path):
    root = tmp_path / "mixed"
    _tiff_dataset(root, [0.5, 0.25])
    dataset = load_dataset(root)
    assert dataset.pixel_size_um is None  # no one size for the folder
    assert [dataset.pixel_size_of(s) for s in dataset] == pytest.approx([0.5, 0.25])
    items = load_labeled([root], pixel_size_um=0.5)
    assert [i.labels.shape for i in items] == [(96, 96), (48, 48)]
    # one image of three without metadata: only it is used as it is, and the warning counts it
    tifffile.imwrite(root / "images" / "im2.tif", tifffile.imread(root / "images" / "im0.tif"))
    write_labels(root / "labels" / "im2.tif", items[0].labels.astype(np.uint16))
    with pytest.warns(UserWarning, match=r"mixed: 1 of 3 image\(s\) state no pixel size"):
        items = load_labeled([root], pixel_size_um=0.5)
    assert [i.labels.shape for i in items] == [(96, 96), (48, 48), (96, 96)]


def _flat_rgb(size: int = 64, value: float = 0.5) -> LabeledImage:
    item = _disc_image(size)
    image = np.where(item.labels[..., None] > 0, 0.2, value).astype(np.float32)
    return LabeledImage("rgb", np.repeat(image, 3, axis=-1), item.labels)


_rng = np.random.default_rng
_STILL = dict(scale=(1.0, 1.0), brightness=0.0, contrast=0.0, gamma=0.0)


def test_two_channel_training_images_use_the_chosen_channel_and_say_channel_0_once(tmp_path):
    """A folder of ImageJ 2-channel TIFFs (channels first) trains on the channel named, and
    without one on channel 0 with one warning for the folder, not one per image."""
    rng = np.random.default_rng(5)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    planes = {}
    for i in range(3):
        planes[i] = rng.integers(0, 4096, (2, 20, 24), dtype=np.uint16)
        tifffile.imwrite(tmp_path / "images" / f"a{i}.tif", planes[i], imagej=True,
                         metadata={"axes": "CYX"})
        write_labels(tmp_path / "labels" / f"a{i}.tif", np.ones((20, 24), np.uint16))
    picked = load_labeled([tmp_path], channel=1)
    for i, item in enumerate(picked):
        assert item.image.shape == (20, 24, 1)
        # the marker's own contrast, not channel 0's or a mixture
        assert np.corrcoef(item.image[..., 0].ravel(), planes[i][1].ravel())[0, 1] > 0.99
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = load_labeled([tmp_path])
    said = [str(w.message) for w in caught]
    assert said == [f"{tmp_path}: 3 image(s) with 2 channels; using channel 0 (choose another "
                    f"with --channel, 0-1)"]
    assert np.corrcoef(first[0].image[..., 0].ravel(), planes[0][0].ravel())[0, 1] > 0.99


def test_a_source_channel_is_picked_from_multi_channel_images_and_gray_ones_kept(tmp_path):
    """A detector whose training images were channel 1 staged gray (source_channel 1) is
    fine-tuned on the user's 2-channel TIFFs with their channel 1, on gray images as they
    are, and says nothing about channel 0."""
    rng = np.random.default_rng(6)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    planes = rng.integers(0, 4096, (2, 20, 24), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "images" / "a.tif", planes, imagej=True,
                     metadata={"axes": "CYX"})
    gray = rng.integers(0, 255, (20, 24), dtype=np.uint8)
    write_image(tmp_path / "images" / "b.png", gray)
    for name in ("a", "b"):
        write_labels(tmp_path / "labels" / f"{name}.tif", np.ones((20, 24), np.uint16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a, b = load_labeled([tmp_path], source_channel=1)
    assert a.image.shape == b.image.shape == (20, 24, 1)
    assert np.corrcoef(a.image[..., 0].ravel(), planes[1].ravel())[0, 1] > 0.99
    assert np.corrcoef(b.image[..., 0].ravel(), gray.ravel())[0, 1] > 0.99
    # a channel given outright still wins
    first, _ = load_labeled([tmp_path], channel=0, source_channel=1)
    assert np.corrcoef(first.image[..., 0].ravel(), planes[0].ravel())[0, 1] > 0.99


def test_blur_softens_about_half_of_the_crops_and_never_moves_the_labels():
    plain = Augment(**_STILL)
    blurred = Augment(**_STILL, blur=2.0)
    changed = 0
    for seed in range(30):
        a_image, a_labels = CropSampler([_disc_image()], 64, plain, _rng(seed)).sample()
        b_image, b_labels = CropSampler([_disc_image()], 64, blurred, _rng(seed)).sample()
        np.testing.assert_array_equal(a_labels, b_labels)  # same window, rotation, flip
        if not np.array_equal(a_image, b_image):
            changed += 1
            # a blur spreads the edges: less gradient, same mean
            assert np.abs(np.diff(b_image, axis=0)).sum() < np.abs(np.diff(a_image, axis=0)).sum()
            assert abs(b_image.mean() - a_image.mean()) < 0.01
    assert 7 <= changed <= 23


def test_stain_jitter_changes_each_colour_channel_on_its_own():
    augment = Augment(**_STILL, stain=0.2)
    sampler = CropSampler([_flat_rgb()], 64, augment, np.random.default_rng(3))
    spreads = []
    for _ in range(10):
        image, labels = sampler.sample()
        background = image[labels == 0].reshape(-1, 3)[0]   # one value per channel
        assert np.all((background >= 0.5 ** 1.2 - 1e-6) & (background <= 0.5 ** 0.8 + 1e-6))
        spreads.append(np.ptp(background))
    assert max(spreads) > 0.02  # the channels moved apart, not together


def test_stain_jitter_leaves_one_channel_images_and_their_random_stream_alone():
    one = dict(_STILL, scale=(0.8, 1.25), brightness=0.05)
    a = CropSampler([_disc_image()], 64, Augment(**one), np.random.default_rng(5))
    b = CropSampler([_disc_image()], 64, Augment(**one, stain=0.3), np.random.default_rng(5))
    for _ in range(5):
        (ai, al), (bi, bl) = a.sample(), b.sample()
        np.testing.assert_array_equal(ai, bi)
        np.testing.assert_array_equal(al, bl)


def test_new_augment_options_keep_old_fingerprints_and_reject_bad_values():
    from cellsynth.config import from_dict, to_dict
    from cellsynth.errors import ConfigError
    assert set(to_dict(Augment())) == {"enabled", "scale", "brightness", "contrast", "gamma"}
    assert to_dict(Augment(blur=1.5))["blur"] == 1.5
    for bad in ({"blur": -1.0}, {"stain": 1.0}):
        with pytest.raises(ConfigError, match="blur >= 0 and 0 <= stain < 1"):
            from_dict(Augment, bad)


def _bars_image(size: int = 160) -> LabeledImage:
    """Long horizontal bars: their orientation in a crop says how far the crop was turned."""
    labels = np.zeros((size, size), np.int32)
    for i, y in enumerate(range(20, size - 10, 30), 1):
        labels[y:y + 8, 20:size - 20] = i
    return LabeledImage("bars", (labels > 0).astype(np.float32)[..., None], labels)


def _bar_angles(augment: Augment, n: int = 40) -> list[float]:
    from skimage.measure import regionprops
    sampler = CropSampler([_bars_image()], 64, augment, np.random.default_rng(7))
    angles = []
    for _ in range(n):
        image, labels = sampler.sample()
        foreground, cells = image[..., 0] > 0.5, labels > 0
        union = (foreground | cells).sum()
        if union:  # turned pixels and turned labels stay together
            assert (foreground & cells).sum() / union > 0.9
        for region in regionprops(labels):
            if region.axis_major_length > 3 * region.axis_minor_length and region.area > 150:
                angles.append(np.degrees(region.orientation) % 90)  # 0 or ~90: axis-aligned
    return angles


def test_rotation_turns_crops_by_any_angle_and_labels_turn_with_the_pixels():
    still = dict(_STILL)
    aligned = _bar_angles(Augment(**still))
    turned = _bar_angles(Augment(**still, rotate=180))
    assert aligned and turned
    off_axis = [a for a in turned if 15 < a < 75]
    assert all(a < 3 or a > 87 for a in aligned)   # 90-degree turns and flips only
    assert len(off_axis) >= len(turned) // 3       # any angle: most bars end up oblique


def test_rotation_cuts_a_window_wide_enough_that_no_cell_is_mirrored_or_padded():
    from skimage.measure import label as components
    item = _disc_image(200)
    sampler = CropSampler([item], 64, Augment(**_STILL, rotate=180), np.random.default_rng(2))
    for _ in range(30):
        image, labels = sampler.sample()
        for cell in np.unique(labels)[1:]:  # one piece per cell, as in the image it came from
            assert components(labels == cell).max() == 1
        assert np.abs(image[..., 0] - (labels > 0)).mean() < 0.05


def _bar_wiggle(augment: Augment, n: int = 20) -> list[float]:
    """How far the middle line of each straight bar wanders (px) in crops with this augment."""
    sampler = CropSampler([_bars_image()], 64, augment, np.random.default_rng(11))
    wiggles = []
    for _ in range(n):
        image, labels = sampler.sample()
        foreground, cells = image[..., 0] > 0.5, labels > 0
        union = (foreground | cells).sum()
        if union:  # bent pixels and bent labels stay together
            assert (foreground & cells).sum() / union > 0.85
        for bar in np.unique(labels)[1:]:
            inside = labels == bar
            if inside.shape[1] - np.count_nonzero(inside.any(0)) > 8:
                continue  # bars run along x (no turn); keep those crossing the whole crop
            middle = [np.flatnonzero(column).mean() for column in inside.T if column.any()]
            wiggles.append(float(np.ptp(np.asarray(middle) - np.polyval(
                np.polyfit(np.arange(len(middle)), middle, 1), np.arange(len(middle))))))
    return wiggles


def test_elastic_bends_straight_outlines_and_labels_bend_with_the_pixels():
    straight = _bar_wiggle(Augment(**_STILL))
    bent = _bar_wiggle(Augment(**_STILL, elastic=3.0))
    assert straight and bent
    assert max(straight) <= 1.0            # a straight bar, cut and turned by 90 degrees
    assert np.median(bent) > 2.0           # a bar whose middle line meanders


def test_rotation_and_elastic_options_are_off_by_default_and_checked():
    from cellsynth.config import from_dict, to_dict
    from cellsynth.errors import ConfigError
    assert not {"rotate", "elastic"} & set(to_dict(Augment()))
    assert to_dict(Augment(rotate=180))["rotate"] == 180
    assert to_dict(Augment(elastic=2.0))["elastic"] == 2.0
    with pytest.raises(ConfigError, match=r"rotate must be in \[0, 180\]"):
        from_dict(Augment, {"rotate": 200})
    with pytest.raises(ConfigError, match=r"elastic must be in \[0, 8\] px"):
        from_dict(Augment, {"elastic": -1.0})


def test_without_turns_crops_keep_the_images_orientation():
    from skimage.measure import regionprops

    def upright(augment: Augment) -> list[bool]:  # is each long bar vertical in its crop?
        sampler = CropSampler([_bars_image()], 64, augment, np.random.default_rng(7))
        found = []
        for _ in range(40):
            _, labels = sampler.sample()
            found += [abs(np.degrees(r.orientation)) < 10 for r in regionprops(labels)
                      if r.axis_major_length > 3 * r.axis_minor_length and r.area > 150]
        return found

    kept, turned = upright(Augment(**_STILL, turns=False)), upright(Augment(**_STILL))
    assert kept and turned
    assert not any(kept)                    # horizontal bars stay horizontal
    assert 0.2 < np.mean(turned) < 0.8      # with 90-degree turns about half stand upright
    from cellsynth.config import to_dict
    assert "turns" not in to_dict(Augment()) and to_dict(Augment(turns=False))["turns"] is False
