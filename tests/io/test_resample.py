"""Pixel sizes from files, and resampling that lines up window by window."""

import numpy as np
import pytest
import tifffile
import zarr
from skimage.transform import rescale

from cellsynth.io.resample import Rescaled, pixel_scale, read_pixel_size


def test_pixel_scale_has_one_tolerance():
    assert pixel_scale(1.0, 0.5) == 2.0
    assert pixel_scale(0.346, 1.0) == pytest.approx(0.346)
    assert pixel_scale(0.5, 0.5004) == 1.0  # within 1e-3: the same
    assert pixel_scale(None, 0.5) == 1.0 and pixel_scale(0.5, None) == 1.0


def _ome_zarr(path, image, scale_yx):
    """An OME-Zarr image group of one level whose scale is ``scale_yx`` micrometres."""
    root = zarr.open_group(str(path), mode="w")
    root.create_array("0", data=image)
    root.attrs["multiscales"] = [{"axes": [
        {"name": "y", "type": "space", "unit": "micrometer"},
        {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": list(scale_yx)}]}]}]


def test_pixel_size_from_ome_imagej_and_ome_zarr(tmp_path):
    image = np.zeros((32, 32), np.uint16)
    tifffile.imwrite(tmp_path / "a.ome.tif", image,
                     metadata={"axes": "YX", "PhysicalSizeX": 0.346, "PhysicalSizeXUnit": "µm"})
    assert read_pixel_size(tmp_path / "a.ome.tif") == pytest.approx(0.346)
    tifffile.imwrite(tmp_path / "b.tif", image, imagej=True, resolution=(1 / 0.25, 1 / 0.25),
                     metadata={"unit": "micron"})
    assert read_pixel_size(tmp_path / "b.tif") == pytest.approx(0.25)
    tifffile.imwrite(tmp_path / "c.tif", image, resolution=(72, 72))  # a default 72 dpi
    assert read_pixel_size(tmp_path / "c.tif") is None
    _ome_zarr(tmp_path / "d.zarr", image, (1.0, 1.0))
    assert read_pixel_size(tmp_path / "d.zarr") == 1.0
    assert read_pixel_size(tmp_path / "missing.tif") is None


def test_pixels_that_are_not_square_are_said_and_a_microscopes_inches_are_read(tmp_path):
    """PhysicalSizeY (and YResolution, a y scale) went unread: a 0.5 x 1.0 um pixel was
    taken as square without a word, areas in um² half what they are. And a TIFF stating its
    resolution in pixels per inch at a microscope's size (50800 dpi = 0.5 um) had none."""
    image = np.zeros((32, 32), np.uint16)
    tifffile.imwrite(tmp_path / "a.ome.tif", image, metadata={
        "axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "µm",
        "PhysicalSizeY": 1.0, "PhysicalSizeYUnit": "µm"})
    with pytest.warns(UserWarning, match=r"a\.ome\.tif: pixels are 0\.5 x 1 um \(not square\); "
                                         r"taken as 0\.5 um along both axes"):
        assert read_pixel_size(tmp_path / "a.ome.tif") == 0.5
    tifffile.imwrite(tmp_path / "b.tif", image, resolution=(1e4 / 0.5, 1e4 / 0.25),
                     resolutionunit="CENTIMETER")
    with pytest.warns(UserWarning, match="pixels are 0.5 x 0.25 um"):
        assert read_pixel_size(tmp_path / "b.tif") == pytest.approx(0.5)
    tifffile.imwrite(tmp_path / "c.tif", image, resolution=(50800, 50800),
                     resolutionunit="INCH")
    assert read_pixel_size(tmp_path / "c.tif") == pytest.approx(0.5)
    tifffile.imwrite(tmp_path / "d.tif", image, resolution=(300, 300), resolutionunit="INCH")
    assert read_pixel_size(tmp_path / "d.tif") is None  # a printer's 300 dpi: 85 um, not read
    _ome_zarr(tmp_path / "e.zarr", image, (2.0, 1.0))
    with pytest.warns(UserWarning, match="pixels are 1 x 2 um"):
        assert read_pixel_size(tmp_path / "e.zarr") == 1.0


@pytest.mark.parametrize("factor", [2.0, 0.5, 0.346])
def test_rescaled_windows_line_up_with_the_whole(factor):
    rng = np.random.default_rng(0)
    image = rng.random((96, 80)).astype(np.float32)
    view = Rescaled(image, factor)
    assert view.shape == (round(96 * factor), round(80 * factor))
    whole = view[0:view.shape[0], 0:view.shape[1]]
    part = view[5:21, 7:30]
    np.testing.assert_allclose(part, whole[5:21, 7:30], atol=1e-5)
    if factor in (2.0, 0.5):  # skimage samples at the shape ratio; equal for these factors
        reference = rescale(image, factor, order=1, anti_aliasing=factor < 1)
        np.testing.assert_allclose(whole[4:-4, 4:-4], reference[4:-4, 4:-4], atol=0.05)
    rgb = Rescaled(np.stack([image, image], axis=-1), factor)
    np.testing.assert_allclose(rgb[5:21, 7:30][..., 1], part, atol=1e-6)


def test_label_tiffs_carry_the_pixel_size(tmp_path):
    from cellsynth.io.images import read_labels, write_labels

    labels = np.arange(12, dtype=np.uint16).reshape(3, 4)
    write_labels(tmp_path / "a.tif", labels, pixel_size_um=0.346)
    assert read_pixel_size(tmp_path / "a.tif") == pytest.approx(0.346)
    np.testing.assert_array_equal(read_labels(tmp_path / "a.tif"), labels)
    write_labels(tmp_path / "b.tif", labels)
    assert read_pixel_size(tmp_path / "b.tif") is None
