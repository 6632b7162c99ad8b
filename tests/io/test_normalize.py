"""Intensity normalisation by content: the same pixels in any dtype give the same floats."""

import numpy as np
import pytest
import zarr

from cellsynth.errors import ImageReadError
from cellsynth.io.images import read_image
from cellsynth.io.normalize import (
    DTYPE_SCALING,
    Normalization,
    apply_range,
    intensity_range,
    normalize,
)


def _cells(size=96, seed=0):
    """Dim 8-bit content (0-235), like a fluorescence image: dark background, bright blobs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = rng.normal(20, 4, (size, size))
    for y, x in rng.integers(8, size - 8, (12, 2)):
        image += 200 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 30.0)
    return np.clip(np.rint(image), 0, 235).astype(np.uint8)


def test_percentiles_of_a_ramp_by_hand():
    ramp = np.arange(101, dtype=np.float32).reshape(1, 101)  # percentile p is p itself
    low, high = intensity_range(ramp, Normalization(low=10, high=90))
    assert (low[0], high[0]) == (10.0, 90.0)
    out = normalize(ramp, Normalization(low=10, high=90))
    assert out[0, 10] == 0.0 and out[0, 50] == 0.5 and out[0, 90] == 1.0
    assert out[0, 0] == 0.0 and out[0, 100] == 1.0  # clipped
    assert out.dtype == np.float32


def test_bit_depth_and_scale_do_not_matter():
    """uint8, uint16 with the same values, x256, 12-bit (x16), float in [0, 1], float x1000."""
    base = _cells()
    reference = normalize(base)
    assert reference.min() == 0.0 and reference.max() == 1.0
    variants = [base.astype(np.uint16), base.astype(np.uint16) * 256,
                base.astype(np.uint16) * 16, base.astype(np.float32) / 255,
                base.astype(np.float32) * 1000, base.astype(np.uint32) * 70000]
    for image in variants:
        np.testing.assert_allclose(normalize(image), reference, atol=2e-6)
    # the old rule made the 8-bit content of a uint16 file nearly black
    assert normalize(base.astype(np.uint16), DTYPE_SCALING).max() < 0.004


def test_rgb_uses_one_range_unless_per_channel():
    gray = _cells().astype(np.float32)
    rgb = np.stack([gray, 0.5 * gray, 0.25 * gray], axis=-1)  # a hue: R > G > B
    joint = normalize(rgb)
    assert joint[..., 0].max() == 1.0 and joint[..., 2].max() < 0.3  # hue kept
    each = normalize(rgb, Normalization(per_channel=True))
    np.testing.assert_allclose(each[..., 0], each[..., 2], atol=1e-5)  # each stretched alone


def test_constant_and_nearly_constant_images_say_so():
    with pytest.warns(UserWarning, match="a.tif: image is constant"):
        out = normalize(np.full((8, 8), 7, np.uint16), where="a.tif")
    assert not out.any()
    nearly = np.full((40, 40), 100, np.uint16)
    nearly[0, 0] = 200  # one bright pixel: the 1st and 99.8th percentiles are equal
    with pytest.warns(UserWarning, match="b.tif: image is nearly constant"):
        out = normalize(nearly, where="b.tif")
    assert out[0, 0] == 1.0 and out[1, 1] == 0.0


def test_large_images_are_sampled_and_lazy_ones_read_in_blocks():
    rng = np.random.default_rng(0)
    big = rng.gamma(2.0, 300.0, (2100, 2100)).astype(np.uint16)  # > MAX_SAMPLES pixels
    exact = np.percentile(big, [1, 99.8])
    low, high = intensity_range(big)
    assert low[0] == pytest.approx(exact[0], rel=0.05)
    assert high[0] == pytest.approx(exact[1], rel=0.05)
    lazy = zarr.create_array(store={}, shape=big.shape, chunks=(256, 256), dtype=big.dtype)
    lazy[:] = big
    lazy_low, lazy_high = intensity_range(lazy)
    assert lazy_low[0] == pytest.approx(exact[0], rel=0.1)
    assert lazy_high[0] == pytest.approx(exact[1], rel=0.1)


def test_tiles_of_a_dim_region_ignore_a_small_bright_corner():
    """A tile is normalised with the whole image's range; a bright corner (< 0.2 % of the
    pixels) moves the robust percentiles little: the dim region's contrast changes by less
    than the detector's training augmentation (+-15 %)."""
    dim = np.tile(_cells(256).astype(np.uint16) * 16, (4, 4))  # 1024 x 1024, 12-bit
    corner = dim.copy()
    corner[:40, :40] = 4095  # saturated corner, 0.15 % of the image
    alone = normalize(dim[512:, 512:])
    tile = apply_range(corner[512:, 512:], *intensity_range(corner))
    gain = float((tile * alone).sum() / (alone * alone).sum())
    assert abs(gain - 1) < 0.15 and np.corrcoef(tile.ravel(), alone.ravel())[0, 1] > 0.999


def _glass_with_a_little_tissue(side, centres):
    """Dark 8-bit glass (12-15, camera noise) with bright nuclei (180, r 8) at ``centres``."""
    rng = np.random.default_rng(1)
    image = (12 + rng.integers(0, 4, (side, side))).astype(np.uint8)
    yy, xx = np.mgrid[:side, :side]
    for y, x in centres:
        image[(yy - y) ** 2 + (xx - x) ** 2 <= 64] = 180
    return image


def test_a_little_tissue_on_dark_glass_sets_the_range_by_its_nuclei(tmp_path):
    """Nuclei on 0.12 % of a dark fluorescence section put the 99.8th percentile on the glass
    noise (12-15): it was stretched over [0, 1] and every tile called blank, 0 cells (a crop
    of the tissue gave all). The range now ends at the nuclei, with a warning; a body with
    cells of its own and a saturated speck of dust keeps its range (audit 7)."""
    centres = [(y, x) for y in range(900, 1140, 40) for x in range(900, 1100, 40)]
    image = _glass_with_a_little_tissue(2048, centres)
    with pytest.warns(UserWarning, match=r"slide: few bright pixels \(0.1\d* % above the "
                                         r"background's 15; a little tissue on dark glass"):
        low, high = intensity_range(image, where="slide")
    assert (low[0], high[0]) == (12.0, 180.0)
    crop = image[850:1200, 850:1150]
    assert np.array_equal(intensity_range(crop)[1], high)  # as the tissue alone gives
    # said once per folder: a training set of sparse images said it for each (the demo, 12x)
    import warnings

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        for name in ("a.png", "b.png", "c.png"):
            assert intensity_range(image, where=f"sparse_set/{name}")[1][0] == 180.0
    assert [str(w.message).split(":")[0] for w in said] == ["sparse_set/a.png"]
    # and once per set of a loader's items (b_images[i]), once for unnamed images (the demo
    # still said it 10 times)
    import importlib

    importlib.import_module("cellsynth.io.normalize")._SAID_SPARSE.discard("")
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        for i in range(3):
            intensity_range(image, where=f"b_images[{i}]")
            intensity_range(image)
    assert [str(w.message).split(":")[0] for w in said] == ["b_images[0]", "image"]
    # read lazily, in blocks of 128 px: the tissue where one of them looks
    lazy = zarr.create_array(store={}, shape=(2048, 2048), chunks=(256, 256), dtype=np.uint8)
    lazy[:] = _glass_with_a_little_tissue(2048, [(y, x) for y in (570, 600, 630)
                                                 for x in (570, 600, 630)])
    with pytest.warns(UserWarning, match="few bright pixels"):
        assert intensity_range(lazy, where="lazy")[1][0] == 180.0
    # a channels-first section (its lazy reader takes slices only): the noise rows read too
    import tifffile

    from cellsynth.io.sections import open_large_image

    planes = np.stack([_glass_with_a_little_tissue(1100, [(30, 30)])] * 2)  # (2, 1100, 1100)
    with tifffile.TiffWriter(tmp_path / "cyx.ome.tif", ome=True) as tif:
        tif.write(planes, tile=(256, 256), photometric="minisblack", metadata={"axes": "CYX"})
    section = open_large_image(tmp_path / "cyx.ome.tif")
    assert not isinstance(section, np.ndarray) and section.shape == (1100, 1100, 2)
    with pytest.warns(UserWarning, match="few bright pixels"):
        assert intensity_range(section, where="cyx")[1][0] == 180.0
    # dim cells everywhere and a saturated speck of dust (0.05 %): the cells' range, no word
    rng = np.random.default_rng(2)
    dim = rng.normal(20, 3, (1024, 1024))
    yy, xx = np.mgrid[:1024, :1024]
    dim[((yy % 30) - 15) ** 2 + ((xx % 30) - 15) ** 2 <= 36] = 300
    dim[:23, :23] = 4095
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        low, high = intensity_range(dim.astype(np.uint16))
    assert 280 <= high[0] <= 310


def test_a_little_tissue_between_a_sections_sampled_blocks_is_found_on_its_overview(
        tmp_path):
    """A pyramidal section whose few nuclei lie between the 8 x 8 sampled blocks: its range
    was the glass noise's and predict found 0 cells where a crop found all (audit 7). The
    grid saw noise alone, so blocks are read where the overview level shows something: the
    range ends at the nuclei, as the crop's does. Without a pyramid (one level) it cannot
    be found this way; the range of a section with tissue everywhere is unchanged."""
    import warnings

    import tifffile

    from cellsynth.io.sections import open_large_image

    centres = [(y, x) for y in (160, 200, 240) for x in (1250, 1290, 1330)]
    # (the grid's blocks cover rows and columns 0-127, 274-401, ..., 1096-1223, 1370-)
    image = _glass_with_a_little_tissue(2048, centres)
    path = tmp_path / "section.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        tif.write(image, subifds=3, tile=(256, 256), compression="zlib",
                  photometric="minisblack")
        for k in range(1, 4):
            tif.write(image[::2 ** k, ::2 ** k], subfiletype=1, tile=(256, 256),
                      compression="zlib", photometric="minisblack")
    crop = intensity_range(image[130:270, 1230:1360])
    with warnings.catch_warnings():  # (the sparse-tissue rule may speak: not what is tested)
        warnings.simplefilter("ignore")
        low, high = intensity_range(open_large_image(path), where="section")
    assert high[0] == crop[1][0] == 180.0 and low[0] <= 13.0
    flat = tmp_path / "flat.tif"  # no pyramid: the grid alone, which sees glass
    tifffile.imwrite(flat, image, tile=(256, 256), compression="zlib")
    assert intensity_range(open_large_image(flat))[1][0] < 20
    # tissue everywhere (cells on every block): the grid's range, no block added
    dense = np.tile(_cells(256), (8, 8))
    dense_path = tmp_path / "dense.ome.tif"
    with tifffile.TiffWriter(dense_path, ome=True) as tif:
        tif.write(dense, subifds=2, tile=(256, 256), photometric="minisblack")
        for k in (1, 2):
            tif.write(dense[::2 ** k, ::2 ** k], subfiletype=1, tile=(256, 256),
                      photometric="minisblack")
    section = open_large_image(dense_path)
    from cellsynth.io.normalize import DEFAULT, _sample

    grid = np.asarray(_sample(section), np.float64).ravel()
    low, high = intensity_range(section)
    assert (low[0], high[0]) == (np.percentile(grid, DEFAULT.low),
                                 np.percentile(grid, DEFAULT.high))


def test_bad_settings_and_dtypes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="low < high"):
        Normalization(low=50, high=10)
    import tifffile

    tifffile.imwrite(tmp_path / "mask.tif", np.zeros((8, 8), bool))
    with pytest.raises(ImageReadError, match="mask.tif: boolean image"):
        read_image(tmp_path / "mask.tif")
    tifffile.imwrite(tmp_path / "fft.tif", np.zeros((8, 8), np.complex64))
    with pytest.raises(ImageReadError, match="fft.tif: complex image"):
        read_image(tmp_path / "fft.tif")
    tifffile.imwrite(tmp_path / "deep.tif", np.full((8, 8), 70000, np.uint32))
    assert read_image(tmp_path / "deep.tif").dtype == np.uint32


def test_a_little_tissue_on_bright_glass_starts_the_range_at_its_cells():
    """The brightfield mirror of the dark-glass rule: stained cells on 0.12 % of bright glass
    put the 1st percentile on the glass noise (240-243), which was stretched over [0, 1];
    the range now starts at the cells, with its own warning, as a crop of the tissue gives.
    Bright glass with cells everywhere keeps its range, and says nothing."""
    import warnings

    centres = [(y, x) for y in range(900, 1140, 40) for x in range(900, 1100, 40)]
    image = 255 - _glass_with_a_little_tissue(2048, centres)  # glass 240-243, cells 75
    with pytest.warns(UserWarning, match=r"bright_slide: few dark pixels \(0.1\d* % below the "
                                         r"background's 240; a little tissue on bright glass"):
        low, high = intensity_range(image, where="bright_slide")
    assert (low[0], high[0]) == (75.0, 243.0)
    crop = image[850:1200, 850:1150]
    assert np.array_equal(intensity_range(crop)[0], low)  # as the tissue alone gives
    rgb = np.stack([image, image, image], axis=2)
    with pytest.warns(UserWarning, match="few dark pixels"):
        assert intensity_range(rgb, where="bright_rgb")[0].tolist() == [75.0] * 3
    # cells everywhere: the range the cells give, no word
    busy = 255 - _glass_with_a_little_tissue(
        512, [(y, x) for y in range(10, 512, 24) for x in range(10, 512, 24)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert intensity_range(busy, where="busy")[0][0] == 75.0
