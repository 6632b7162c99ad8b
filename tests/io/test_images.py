import numpy as np
import pytest
import tifffile

from cellsynth.errors import ImageReadError
from cellsynth.io.headers import check_header
from cellsynth.io.images import (
    read_image,
    read_labels,
    to_float,
    write_image,
    write_labels,
)


def test_roundtrip_png_and_tif(tmp_path):
    image = np.arange(48 * 40 * 3, dtype=np.uint32).reshape(48, 40, 3).astype(np.uint8)
    write_image(tmp_path / "a.png", image)
    assert np.array_equal(read_image(tmp_path / "a.png"), image)
    labels = np.zeros((48, 40), np.int64)
    labels[5:9, 3:7] = 70000  # needs uint32
    write_labels(tmp_path / "l.tif", labels)
    back = read_labels(tmp_path / "l.tif")
    assert back.dtype == np.uint32 and np.array_equal(back, labels)
    write_labels(tmp_path / "s.tif", (labels > 0).astype(np.int32))
    assert read_labels(tmp_path / "s.tif").dtype == np.uint16


def test_write_leaves_no_temporary_files(tmp_path):
    write_image(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match=r"nope\.png: no such file"):
        read_image(tmp_path / "nope.png")


def test_truncated_png_names_the_file(tmp_path):
    path = tmp_path / "cut.png"
    write_image(path, np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ImageReadError, match=r"cut\.png: cannot read file"):
        read_image(path)


@pytest.mark.parametrize("name", ["a.png", "a.tif"])
def test_check_header_finds_a_file_cut_short_without_reading_its_pixels(tmp_path, name):
    """The header of a PNG or TIFF cut anywhere (a copy that stopped) is refused naming the
    file; a whole one, or one with bytes after its end (padding), passes."""
    path = tmp_path / name
    write_image(path, np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    whole = path.read_bytes()
    check_header(path)
    path.write_bytes(whole + b"\0" * 100)
    check_header(path)
    for cut in (len(whole) - 1, len(whole) - 200, len(whole) // 2):
        path.write_bytes(whole[:cut])
        with pytest.raises(ImageReadError, match=rf"{name}: cannot read file \(corrupt or "):
            check_header(path)
    path.write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match=rf"{name}: cannot read file"):
        check_header(path)


def test_garbage_tif(tmp_path):
    path = tmp_path / "bad.tif"
    path.write_bytes(b"this is not a tiff")
    with pytest.raises(ImageReadError, match=r"bad\.tif: cannot read file"):
        read_image(path)


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "x.gif"
    path.write_bytes(b"GIF89a")
    with pytest.raises(ImageReadError, match="unsupported file type"):
        read_image(path)


def test_rgba_drops_alpha_with_warning(tmp_path):
    rgba = np.full((10, 12, 4), 7, np.uint8)
    write_path = tmp_path / "rgba.png"
    import imageio.v3 as iio

    iio.imwrite(write_path, rgba)
    with pytest.warns(UserWarning, match="alpha"):
        image = read_image(write_path)
    assert image.shape == (10, 12, 3)


def test_fluorescence_channels_are_kept_in_any_order_and_only_declared_alpha_goes(tmp_path):
    """A 2-channel fluorescence TIFF is two channels, whether ImageJ stored them first (CYX)
    or numpy wrote (H, W, 2): --channel 1 reaches the second, and without a channel the
    first is used with a warning saying so. Only an alpha the TIFF declares (or a PNG's) is
    dropped; a z-stack is one line, not a stack of channels."""
    from cellsynth.io.images import select_channel

    rng = np.random.default_rng(0)
    planes = rng.integers(0, 4096, (2, 24, 32), dtype=np.uint16)  # DAPI, a marker
    tifffile.imwrite(tmp_path / "cyx.tif", planes, imagej=True, metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "yxc.tif", np.moveaxis(planes, 0, -1))
    for name in ("cyx.tif", "yxc.tif"):
        both = read_image(tmp_path / name, all_channels=True)
        assert both.shape == (24, 32, 2), name
        np.testing.assert_array_equal(select_channel(both, 1, where=name), planes[1])
        with pytest.warns(UserWarning, match=rf"{name}: 2 channels; using channel 0 \(--channel, "
                                             r"or a run config's real: channel:, takes "
                                             r"another, 0-1\)"):
            np.testing.assert_array_equal(read_image(tmp_path / name), planes[0])

    gray_alpha = np.stack([planes[0], np.full_like(planes[0], 65535)], axis=-1)
    tifffile.imwrite(tmp_path / "ga.tif", gray_alpha, photometric="minisblack",
                     extrasamples=["unassalpha"])
    with pytest.warns(UserWarning, match="dropping alpha channel of gray\\+alpha"):
        np.testing.assert_array_equal(read_image(tmp_path / "ga.tif", all_channels=True),
                                      planes[0])

    tifffile.imwrite(tmp_path / "z.tif", planes[:, None].repeat(3, axis=1)[0], imagej=True,
                     metadata={"axes": "ZYX"})
    with pytest.raises(ImageReadError, match=r"z\.tif: 3 z-planes \(axes ZYX.*save one plane "
                                             r"or a projection"):
        read_image(tmp_path / "z.tif")
    from cellsynth.io.sections import open_large_image

    with pytest.raises(ImageReadError, match=r"z\.tif: 3 z-planes"):  # not its first plane
        open_large_image(tmp_path / "z.tif")  # (how predict opens a large or stacked file)

    markers = rng.integers(0, 4096, (3, 24, 32), dtype=np.uint16)  # 3 fluorescence channels
    tifffile.imwrite(tmp_path / "c3.tif", markers, imagej=True, metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "rgb.tif", np.moveaxis(markers, 0, -1), photometric="rgb")
    with pytest.warns(UserWarning, match=r"c3\.tif: 3 channels, not RGB; using channel 0"):
        np.testing.assert_array_equal(read_image(tmp_path / "c3.tif"), markers[0])
    assert read_image(tmp_path / "rgb.tif").shape == (24, 32, 3)  # colour stays colour


def test_rgb_tiffs_are_written_as_colour_and_read_back_as_rgb(tmp_path):
    """write_image says RGB in the file (tifffile will store an unlabelled (H, W, 3) as 3
    gray pages, and warns so): it reads back as colour, not as 3 channels of which the
    first would be used."""
    import warnings

    from cellsynth.io.images import is_colour

    rgb = np.random.default_rng(1).random((12, 10, 3)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tifffile's DeprecationWarning included
        write_image(tmp_path / "rgb.tif", rgb)
        assert is_colour(tmp_path / "rgb.tif")
        np.testing.assert_array_equal(read_image(tmp_path / "rgb.tif"), rgb)


def test_bad_shape(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 16, 16, 5), np.uint8))
    message = r"stack\.tif: expected image of shape.*\(3, 16, 16, 5\)"
    with pytest.raises(ImageReadError, match=message):
        read_image(tmp_path / "stack.tif")


def test_nan_image(tmp_path):
    image = np.zeros((8, 8), np.float32)
    image[2, 3] = np.nan
    image[4, 4] = np.inf
    tifffile.imwrite(tmp_path / "nan.tif", image)
    with pytest.raises(ImageReadError, match=r"nan\.tif: image contains 2 NaN/inf"):
        read_image(tmp_path / "nan.tif")


def test_float_labels_of_ids_are_read_and_others_rejected(tmp_path):
    """Fiji saves label images as 32-bit float: whole numbers >= 0 are ids (they were
    refused); fractions, negatives or NaN are no labels."""
    ids = np.zeros((8, 8), np.float32)
    ids[1:4, 1:4], ids[5:7, 5:7] = 3, 70000
    tifffile.imwrite(tmp_path / "ids.tif", ids)
    read = read_labels(tmp_path / "ids.tif")
    assert read.dtype == np.uint32 and read.max() == 70000 and (read == ids).all()
    for name, value in (("half", 0.5), ("negative", -1.0), ("nan", np.nan)):
        bad = ids.copy()
        bad[0, 0] = value
        tifffile.imwrite(tmp_path / f"{name}.tif", bad)
        with pytest.raises(ImageReadError, match=rf"{name}\.tif: labels must be an integer "
                                                 r"image .* not whole numbers >= 0"):
            read_labels(tmp_path / f"{name}.tif")


def test_labels_must_be_2d_and_nonnegative(tmp_path):
    tifffile.imwrite(tmp_path / "rgb.tif", np.ones((8, 8, 3), np.uint16))
    with pytest.raises(ImageReadError, match="expected 2-D label image"):
        read_labels(tmp_path / "rgb.tif")
    tifffile.imwrite(tmp_path / "neg.tif", -np.ones((8, 8), np.int32))
    with pytest.raises(ImageReadError, match="negative"):
        read_labels(tmp_path / "neg.tif")


def test_to_float_ranges():
    assert to_float(np.array([0, 255], np.uint8)).tolist() == [0.0, 1.0]
    assert to_float(np.array([65535], np.uint16)).tolist() == [1.0]
    assert to_float(np.array([2.0, -1.0], np.float64)).tolist() == [1.0, 0.0]


def test_select_channel_picks_one_and_names_a_missing_one():
    from cellsynth.io.images import select_channel

    rgb = np.stack([np.full((4, 5), v, np.uint16) for v in (10, 20, 30)], axis=-1)
    assert select_channel(rgb, None, where="x.tif") is rgb
    blue = select_channel(rgb, 2, where="x.tif")
    assert blue.shape == (4, 5) and (blue == 30).all()
    assert select_channel(rgb[..., 0], 0).shape == (4, 5)  # a gray image has channel 0
    with pytest.raises(ImageReadError, match=r"x.tif: channel 3 requested, but the image has 3 "
                                             r"channel\(s\) \(0-2\)"):
        select_channel(rgb, 3, where="x.tif")


def test_check_header_refuses_a_z_stack_and_passes_channels_and_rgb(tmp_path):
    """A ZYX stack is one line from its header alone (before a run or a prediction starts);
    2 channels first (CYX), an RGB TIFF and a plain 2-D one pass."""
    import tifffile


    rng = np.random.default_rng(0)
    tifffile.imwrite(tmp_path / "z.tif", rng.integers(0, 255, (3, 40, 50), np.uint8),
                     imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(ImageReadError, match=r"z\.tif: 3 z-planes \(axes ZYX"):
        check_header(tmp_path / "z.tif")
    tifffile.imwrite(tmp_path / "c.tif", rng.integers(0, 255, (2, 40, 50), np.uint8),
                     imagej=True, metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "rgb.tif", rng.integers(0, 255, (40, 50, 3), np.uint8),
                     photometric="rgb")
    tifffile.imwrite(tmp_path / "g.tif", rng.integers(0, 255, (40, 50), np.uint8))
    # and the channels read_image will give, from the header alone
    tifffile.imwrite(tmp_path / "yx2.tif", rng.integers(0, 255, (40, 50, 2), np.uint8))
    # 3 planes without metadata: tifffile calls them samples (SYX), read as channels
    tifffile.imwrite(tmp_path / "s3.tif", rng.integers(0, 255, (1, 3, 40, 50), np.uint8),
                     metadata=None)
    import imageio.v3 as iio

    iio.imwrite(tmp_path / "rgba.png", np.full((40, 50, 4), 200, np.uint8))  # alpha dropped
    # a header only: Pillow's "decompression bomb" limit (a whole slide's PNG) is no error
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 100  # (40 x 50 is then 20x over: Pillow would refuse it)
    try:
        assert check_header(tmp_path / "rgba.png") == 3
        assert Image.MAX_IMAGE_PIXELS == 100  # left as it was
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    for name, count in (("c.tif", 2), ("rgb.tif", 3), ("g.tif", 1), ("yx2.tif", 2),
                        ("rgba.png", 3), ("s3.tif", 3)):
        assert check_header(tmp_path / name) == count, name
        assert (read_image(tmp_path / name, all_channels=True).shape + (1,))[2] == count


@pytest.mark.parametrize("axes, shape, expected", [
    ("QQYX", (1, 2, 40, 50), 2),   # unnamed, 4-D: length-1 axes go, channels first guessed
    ("QYX", (40, 50, 3), 3),       # unnamed, short last axis: channels last
    ("QQQYX", (2, 2, 1, 40, 50), None),  # unnamed and 4-D after squeezing: no guess
    ("YXS", (40, 50, 3), 3),       # samples are the channels
    ("CYX", (2, 40, 50), 2),
])
def test_header_channel_count_and_the_pixels_read_agree(axes, shape, expected):
    """check_header counts a TIFF's channels from its axes as read_image reads its pixels
    (both through file_axes); where no guess fits, the header says None and the read
    refuses the shape."""
    from cellsynth.io.headers import _tiff_channels
    from cellsynth.io.images import channels_last

    assert _tiff_channels(axes, shape, 1, []) == expected
    image = np.zeros(shape, np.uint8)
    if expected is None:
        with pytest.raises(ImageReadError, match="expected image of shape"):
            channels_last(image, axes, where="x.tif")
    else:
        read = channels_last(image, axes, where="x.tif")
        assert (read.shape + (1,))[2] == expected and read.shape[:2] == (40, 50)


def test_check_headers_checks_the_channel_of_every_file_strictly_or_taking_gray_as_it(
        tmp_path):
    """One rule for predict (--channel: a gray image lacks channel 1) and for a run
    (real.channel: a gray image is that channel saved alone); the file lacking it is named
    wherever it is in the list, and the counts come back (None for a Zarr folder)."""
    import tifffile

    from cellsynth.io.headers import check_headers

    rng = np.random.default_rng(0)
    tifffile.imwrite(tmp_path / "a.tif", rng.integers(0, 255, (2, 40, 50), np.uint8),
                     imagej=True, metadata={"axes": "CYX"})
    write_image(tmp_path / "g.png", rng.integers(0, 255, (40, 50), np.uint8))
    (tmp_path / "s.zarr").mkdir()
    paths = [tmp_path / "a.tif", tmp_path / "s.zarr", tmp_path / "g.png"]
    assert check_headers(paths) == [2, None, 1]
    assert check_headers(paths, channel=1, gray_is_the_channel=True) == [2, None, 1]
    with pytest.raises(ImageReadError, match=r"g\.png: channel 1 requested, but the image has "
                                             r"1 channel\(s\) \(0-0\)"):
        check_headers(paths, channel=1)
    with pytest.raises(ImageReadError, match=r"a\.tif: real\.channel 2, but the image has 2 "):
        check_headers(paths, channel=2, gray_is_the_channel=True, asked="real.channel 2")


@pytest.mark.parametrize("value", [255, 1])
def test_a_foreground_mask_saved_as_labels_is_said_to_be_one(tmp_path, value):
    """A 0/255 (or 0/1) mask from a threshold, saved where instance labels go, was read as
    one cell of all its blobs without a word."""
    import warnings

    mask = np.zeros((32, 32), np.uint8)
    mask[2:8, 2:8] = mask[20:30, 15:25] = mask[12:14, 28:31] = value
    write_labels(tmp_path / "mask.png", mask)
    with pytest.warns(UserWarning, match=rf"mask\.png: every labelled pixel is {value}, in 3 "
                                         r"separate blobs: a foreground mask"):
        read_labels(tmp_path / "mask.png")
    # instance labels, and a single cell of one id, are read without a word
    labels = mask.astype(np.uint16)
    labels[20:30, 15:25] *= 2
    one = np.zeros((32, 32), np.uint16)
    one[4:9, 4:9] = 7
    one[9, 9] = 7  # joined only at a corner: still one cell (a prediction was taken for a mask)
    for name, image in (("labels.png", labels), ("one.png", one)):
        write_labels(tmp_path / name, image)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            np.testing.assert_array_equal(read_labels(tmp_path / name), image)


def test_an_image_of_intensities_is_refused_as_labels_and_dense_or_reused_ids_are_not(tmp_path):
    """Each grey value of an image lies in many patches, each id of a label map in one; tiny
    adjacent cells (most neighbours differ) and a uint8 map reusing ids past 255 stay labels."""
    from cellsynth.io.images import read_labels

    rng = np.random.default_rng(1)
    noisy = rng.normal(120, 25, (300, 300)).clip(1, 255).astype(np.uint8)
    write_image(tmp_path / "raw.png", noisy)
    with pytest.raises(ImageReadError, match=r"raw.png: an image of intensities"):
        read_labels(tmp_path / "raw.png")
    tiny = (np.arange(100 * 100).reshape(100, 100) + 1).repeat(3, 0).repeat(3, 1)
    write_labels(tmp_path / "tiny.tif", tiny.astype(np.uint16))  # 10000 cells of 3 x 3 px
    np.testing.assert_array_equal(read_labels(tmp_path / "tiny.tif"), tiny)
    reused = ((np.arange(30 * 30).reshape(30, 30) % 255) + 1).repeat(10, 0).repeat(10, 1)
    write_labels(tmp_path / "reused.tif", reused.astype(np.uint8))  # 900 cells, 255 ids
    np.testing.assert_array_equal(read_labels(tmp_path / "reused.tif"), reused)
