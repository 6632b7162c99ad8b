"""Whole-slide and microscope formats: Aperio SVS is read as the TIFF it is (pyramid levels
and its MPP pixel size), and formats that are not read (CZI, ND2, ...) are named in one line
with how to convert them, instead of a folder of them being "no images found"."""


import numpy as np
import pytest
import tifffile

from cellsynth.cli import main
from cellsynth.errors import DatasetError, ImageReadError
from cellsynth.io.datasets import load_dataset
from cellsynth.io.images import read_image
from cellsynth.io.resample import read_pixel_size
from cellsynth.io.sections import open_large_image, reads_lazily

APERIO = "Aperio Image Library v12.0.15 \r\n"


def _svs(path, image):
    """An SVS as Aperio writes it: tiled baseline, a thumbnail, then a level 4x smaller."""
    kw = {"photometric": "rgb", "compression": "zlib", "metadata": None}
    h, w = image.shape[:2]
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, tile=(128, 128), description=APERIO + f"{w}x{h} [0,0 {w}x{h}] "
                  f"(256x256) JPEG/RGB Q=70|AppMag = 20|MPP = 0.4990|Filename = x", **kw)
        tif.write(image[::8, ::8], description=APERIO + "thumbnail|MPP = 3.992", **kw)
        tif.write(image[::4, ::4], tile=(128, 128), description=APERIO + f"{w}x{h} -> "
                  f"{w // 4}x{h // 4} - |AppMag = 20|MPP = 0.4990", **kw)
    return path


def test_svs_is_a_lazily_read_pyramid_with_its_mpp_pixel_size(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (512, 384, 3), dtype=np.uint8)
    path = _svs(tmp_path / "slide.svs", image)
    assert [s.id for s in load_dataset(tmp_path)] == ["slide"]
    assert reads_lazily(path)  # a pyramid: never decoded whole
    np.testing.assert_array_equal(open_large_image(path)[100:140, 30:90], image[100:140, 30:90])
    assert open_large_image(path, level=1).shape == (128, 96, 3)
    assert read_pixel_size(path) == pytest.approx(0.499)
    assert read_pixel_size(path, level=1) == pytest.approx(4 * 0.499)  # SVS levels shrink 4x


def test_a_folder_of_czi_files_says_what_they_are_and_how_to_convert(tmp_path, capsys):
    folder = tmp_path / "slides"
    folder.mkdir()
    for name in ("a.czi", "b.CZI", "c.nd2"):
        (folder / name).write_bytes(b"ZISRAWFILE" + bytes(64))
    with pytest.raises(DatasetError) as err:
        load_dataset(folder)
    message = str(err.value)
    assert "no images found, only 3 Nikon ND2 / Zeiss CZI file(s) (a.czi, b.CZI, ...)" in message
    assert "bfconvert" in message and len(message.splitlines()) == 1
    assert main(["inspect", str(folder)]) == 2
    stderr = capsys.readouterr().err.strip()
    assert len(stderr.splitlines()) == 1 and "Zeiss CZI" in stderr
    with pytest.raises(ImageReadError, match=r"a\.czi: Zeiss CZI files are not read; convert"):
        read_image(folder / "a.czi")


def test_czi_beside_readable_images_is_said_to_be_skipped(tmp_path):
    tifffile.imwrite(tmp_path / "ok.tif", np.zeros((32, 32), np.uint8))
    (tmp_path / "other.czi").write_bytes(bytes(16))
    with pytest.warns(UserWarning, match=r"1 Zeiss CZI file\(s\) \(other\.czi\) skipped"):
        dataset = load_dataset(tmp_path)  # (a warning: --quiet must not hide skipped images)
    assert [s.id for s in dataset] == ["ok"]


def test_predict_lists_the_readable_images_and_says_which_were_skipped(tmp_path):
    from cellsynth.segment.folders import _inputs

    tifffile.imwrite(tmp_path / "ok.tif", np.zeros((32, 32), np.uint8))
    (tmp_path / "scan.nd2").write_bytes(bytes(16))
    with pytest.warns(UserWarning, match=r"1 Nikon ND2 file\(s\) \(scan\.nd2\) skipped"):
        assert [i for i, _ in _inputs(tmp_path)] == ["ok"]
    with pytest.raises(DatasetError, match=r"scan\.nd2: Nikon ND2 files are not read"):
        _inputs(tmp_path / "scan.nd2")
