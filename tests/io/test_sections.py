"""Whole sections: windows of tissue are found without decoding the section, the same from a
lazy pyramidal TIFF as from the decoded array, and never on empty glass."""

import numpy as np
import pytest
import tifffile

from cellsynth.io.sections import open_image, reads_lazily, tissue_windows

GLASS = 235


def _slide(size=1200, tissue=(slice(0, 500), slice(700, 1200)), seed=0):
    """A brightfield slide: glass with camera noise, one rectangle of textured tissue."""
    rng = np.random.default_rng(seed)
    slide = np.clip(GLASS + rng.normal(0, 2, (size, size, 3)), 0, 255)
    ys, xs = tissue
    blobs = rng.uniform(60, 200, (ys.stop - ys.start, xs.stop - xs.start, 1))
    slide[ys, xs] = np.clip(blobs + rng.normal(0, 25, blobs.shape[:2] + (3,)), 0, 255)
    return slide.astype(np.uint8)


def _inside(y, x, side, tissue):
    ys, xs = tissue
    dy = max(0, min(y + side, ys.stop) - max(y, ys.start))
    dx = max(0, min(x + side, xs.stop) - max(x, xs.start))
    return dy * dx / side**2


def test_windows_hold_tissue_not_glass_and_barely_overlap():
    tissue = (slice(0, 500), slice(700, 1200))  # 17 % of the slide
    slide = _slide(tissue=tissue)
    found = tissue_windows(slide, 256, 3, seed=0, candidates=64)
    assert len(found) == 3
    for y, x, pixels in found:
        assert pixels.shape == (256, 256, 3)
        np.testing.assert_array_equal(pixels, slide[y:y + 256, x:x + 256])
        assert _inside(y, x, 256, tissue) >= 0.5, (y, x)
    for i, (y, x, _) in enumerate(found):
        for ky, kx, _ in found[:i]:
            overlap = max(0, 256 - abs(y - ky)) * max(0, 256 - abs(x - kx))
            assert overlap <= 256 * 256 / 4
    # a random window would be mostly glass: the choice is not luck
    rng = np.random.default_rng(0)
    drawn = [_inside(int(rng.integers(945)), int(rng.integers(945)), 256, tissue)
             for _ in range(200)]
    assert np.mean(np.array(drawn) >= 0.5) < 0.2


def test_small_image_is_one_window_of_itself():
    image = np.arange(300 * 200, dtype=np.uint16).reshape(300, 200)
    [(y, x, pixels)] = tissue_windows(image, 512, 4)
    assert (y, x) == (0, 0) and pixels is not image
    np.testing.assert_array_equal(pixels, image)


def test_lazy_pyramid_gives_the_windows_of_the_decoded_slide(tmp_path, monkeypatch):
    slide = _slide(size=640, tissue=(slice(100, 400), slice(200, 600)))
    path = tmp_path / "section.ome.tif"
    with tifffile.TiffWriter(path) as tif:  # tiled, compressed, pyramidal: not mappable
        tif.write(slide, subifds=1, tile=(128, 128), compression="zlib", photometric="rgb")
        tif.write(slide[::2, ::2], subfiletype=1, tile=(128, 128), compression="zlib",
                  photometric="rgb")
    assert reads_lazily(path)
    lazy = open_image(path)
    assert not isinstance(lazy, np.ndarray) and lazy.shape == slide.shape
    reads = []
    original = type(lazy).__getitem__
    monkeypatch.setattr(type(lazy), "__getitem__",
                        lambda self, key: reads.append(key) or original(self, key))
    a = tissue_windows(lazy, 128, 2, seed=4)
    b = tissue_windows(slide, 128, 2, seed=4)
    assert [(y, x) for y, x, _ in a] == [(y, x) for y, x, _ in b]
    for (_, _, pa), (_, _, pb) in zip(a, b):
        np.testing.assert_array_equal(pa, pb)
    # only the candidate windows were read, each once, never the whole section
    assert len(reads) == 16
    assert all((k[0].stop - k[0].start) * (k[1].stop - k[1].start) == 128 * 128 for k in reads)


def test_small_flat_tiff_is_decoded_and_a_huge_one_is_not(tmp_path):
    image = np.zeros((96, 96), np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", image, compression="zlib")
    assert isinstance(open_image(tmp_path / "a.tif"), np.ndarray)
    assert not reads_lazily(tmp_path / "a.tif")
    assert reads_lazily(tmp_path / "a.tif", 96 * 95)  # pixels from the header, not bytes


@pytest.mark.parametrize("n", [1, 5])
def test_never_more_windows_than_asked(n):
    slide = _slide(size=700, tissue=(slice(0, 700), slice(0, 700)))
    assert len(tissue_windows(slide, 128, n, seed=1)) == n


def test_image_or_windows_decodes_small_images_and_windows_sections(tmp_path, monkeypatch):
    from cellsynth.io import images
    from cellsynth.io.sections import image_or_windows

    small = np.arange(64 * 80, dtype=np.uint16).reshape(64, 80)
    tifffile.imwrite(tmp_path / "small.tif", small)
    [decoded] = image_or_windows(tmp_path / "small.tif")
    np.testing.assert_array_equal(decoded, small)

    tissue = (slice(0, 320), slice(0, 640))
    slide = _slide(size=640, tissue=tissue)
    with tifffile.TiffWriter(tmp_path / "slide.ome.tif") as tif:
        tif.write(slide, subifds=1, tile=(128, 128), compression="zlib", photometric="rgb")
        tif.write(slide[::2, ::2], subfiletype=1, tile=(128, 128), compression="zlib",
                  photometric="rgb")
    monkeypatch.setattr(images, "_read_array", lambda path: pytest.fail(f"{path} decoded"))
    windows = image_or_windows(tmp_path / "slide.ome.tif", side=128, n=3)
    assert len(windows) == 3 and all(w.shape == (128, 128, 3) for w in windows)
    assert all(w.mean() < 200 for w in windows)  # tissue (~130), not glass (235)


def test_a_section_dropped_leaves_no_file_open(tmp_path):
    import gc
    import warnings

    slide = _slide(size=256, tissue=(slice(0, 128), slice(0, 128)))
    with tifffile.TiffWriter(tmp_path / "s.ome.tif") as tif:
        tif.write(slide, subifds=1, tile=(64, 64), compression="zlib", photometric="rgb")
        tif.write(slide[::2, ::2], subfiletype=1, tile=(64, 64), photometric="rgb")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = open_image(tmp_path / "s.ome.tif")
        np.testing.assert_array_equal(image[10:20, 30:40], slide[10:20, 30:40])
        del image
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_rgba_section_loses_its_alpha_but_channels_first_keep_every_channel(tmp_path):
    import zarr

    from cellsynth.io.normalize import intensity_range
    from cellsynth.io.sections import open_large_image

    rng = np.random.default_rng(3)
    rgba = rng.integers(0, 256, (256, 256, 4), dtype=np.uint8)
    rgba[..., 3] = 255  # opaque: an alpha channel kept as a 4th colour would be a flat plane
    with tifffile.TiffWriter(tmp_path / "rgba.ome.tif") as tif:
        tif.write(rgba, subifds=1, tile=(64, 64), photometric="rgb", extrasamples=["unassalpha"])
        tif.write(rgba[::2, ::2], subfiletype=1, tile=(64, 64), photometric="rgb",
                  extrasamples=["unassalpha"])
    assert reads_lazily(tmp_path / "rgba.ome.tif")
    with pytest.warns(UserWarning, match=r"rgba\.ome\.tif: dropping alpha channel of RGBA"):
        image = open_large_image(tmp_path / "rgba.ome.tif")
    assert image.shape == (256, 256, 3)
    np.testing.assert_array_equal(image[10:50, 60:70], rgba[10:50, 60:70, :3])
    low, high = intensity_range(image)
    assert low.shape == high.shape == (3,)  # what predict and the refiner scale by

    planes = rng.integers(0, 4096, (4, 128, 96), dtype=np.uint16)  # DAPI + 3 markers
    zarr.save_array(str(tmp_path / "fluo.zarr"), planes)
    fluo = open_large_image(tmp_path / "fluo.zarr")
    assert fluo.shape == (128, 96, 4)
    np.testing.assert_array_equal(fluo[5:9, 7:8], np.moveaxis(planes[:, 5:9, 7:8], 0, -1))


def test_stage_channels_takes_what_every_stage_reads():
    from cellsynth.io.sections import stage_channels

    rng = np.random.default_rng(0)
    gray_alpha = rng.integers(0, 255, (8, 9, 2), dtype=np.uint8)
    np.testing.assert_array_equal(stage_channels(gray_alpha), gray_alpha[..., 0])
    five = rng.integers(0, 4095, (8, 9, 5), dtype=np.uint16)  # markers: not a colour image
    np.testing.assert_array_equal(stage_channels(five), five[..., 0])
    rgb = rng.integers(0, 255, (8, 9, 3), dtype=np.uint8)
    assert stage_channels(rgb) is rgb
    gray = rgb[..., 0]
    assert stage_channels(gray) is gray


def _writes(tmp_path):
    """Files of every kind ``image_shape`` reads a header of, each 40 x 56 px."""
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, (40, 56), dtype=np.uint8)
    rgb = rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)
    rgba = rng.integers(0, 255, (40, 56, 4), dtype=np.uint8)
    iio.imwrite(tmp_path / "gray.png", gray)
    iio.imwrite(tmp_path / "rgba.png", rgba)
    iio.imwrite(tmp_path / "rgb.jpg", rgb)
    iio.imwrite(tmp_path / "gray.bmp", gray)
    tifffile.imwrite(tmp_path / "yx16.tif", gray.astype(np.uint16))
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "cyx_imagej.tif", np.stack([gray, gray // 2]), imagej=True,
                     metadata={"axes": "CYX"})
    tifffile.imwrite(tmp_path / "syx_planar.tif", np.moveaxis(rgb, 2, 0), photometric="rgb",
                     planarconfig="separate", metadata=None)  # (planes first: S, Y, X)
    tifffile.imwrite(tmp_path / "yx1.tif", gray[None, :, :, None])  # (length-1 axes)
    with tifffile.TiffWriter(tmp_path / "pyramid.ome.tif") as tif:
        tif.write(rgb, subifds=1, tile=(16, 16), photometric="rgb")
        tif.write(rgb[::2, ::2], subfiletype=1, tile=(16, 16), photometric="rgb")


def test_image_shape_reads_the_header_and_agrees_with_the_pixels(tmp_path, monkeypatch):
    """--estimate prices a run from every image's height and width: it decoded each whole
    image for them; the header gives the same (H, W) as open_image, without decoding."""
    from cellsynth.io import images
    from cellsynth.io.sections import image_shape

    _writes(tmp_path)
    files = sorted(p for p in tmp_path.iterdir())
    assert len(files) == 10
    decoded = {p.name: tuple(open_image(p, all_channels=True).shape[:2]) for p in files}
    assert set(decoded.values()) == {(40, 56)}

    def refuse(*args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(images, "_read_array", refuse)
    for path in files:
        assert image_shape(path) == decoded[path.name], path.name


def test_image_shape_of_an_unreadable_header_names_the_file(tmp_path):
    from cellsynth.errors import ImageReadError
    from cellsynth.io.sections import image_shape

    (tmp_path / "a.png").write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match=r"a\.png: cannot read file"):
        image_shape(tmp_path / "a.png")
