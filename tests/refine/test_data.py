import numpy as np
import pytest
import tifffile

from cellsynth.errors import DatasetError
from cellsynth.io.datasets import write_dataset_meta
from cellsynth.io.images import write_image
from cellsynth.refine import data
from cellsynth.refine.data import RealCrops, SimulatedCrops
from tests.conftest import make_dataset


def test_simulated_crops_keep_image_and_labels_aligned(tmp_path):
    root = make_dataset(tmp_path / "sim", n=1, size=32)
    sim = SimulatedCrops(root, 16)
    image = sim.images[0][..., 0]
    images, labels = sim.sample(8, np.random.default_rng(0))
    assert images.shape == (8, 1, 16, 16) and labels.shape == (8, 16, 16)
    for img, lab in zip(images[:, 0].numpy(), labels.numpy()):
        # every crop pixel of a label must be found at the same place in some dihedral copy
        found = False
        for k in range(4):
            for flip in (False, True):
                full_img = data._dihedral(image, k, flip)
                full_lab = data._dihedral(sim.labels[0], k, flip)
                for y in range(17):
                    for x in range(17):
                        if np.array_equal(full_img[y:y + 16, x:x + 16], img):
                            found |= np.array_equal(full_lab[y:y + 16, x:x + 16], lab)
        assert found


def test_sim_without_labels_is_a_clear_error(tmp_path):
    root = make_dataset(tmp_path / "sim", labels=False)
    with pytest.raises(DatasetError, match="needs labels"):
        SimulatedCrops(root, 16)


def test_empty_real_folder_is_a_clear_error(tmp_path):
    (tmp_path / "real").mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        RealCrops(tmp_path / "real", 16, 3)


def test_real_8_and_16_bit_normalise_alike_and_gray_becomes_rgb(tmp_path):
    rng = np.random.default_rng(0)
    gray8 = rng.integers(0, 256, (20, 20), dtype=np.uint8)
    stored = {"r8": gray8, "r16": gray8.astype(np.uint16) * 257,
              "r12": gray8.astype(np.uint16) * 16, "same_values_u16": gray8.astype(np.uint16)}
    for name, image in stored.items():
        (tmp_path / name).mkdir()
        write_image(tmp_path / name / "a.tif", image)
    a = RealCrops(tmp_path / "r8", 20, 3)
    for name in stored:
        b = RealCrops(tmp_path / name, 20, 3)
        np.testing.assert_allclose(a.images[0], b.images[0], atol=1e-6)
    assert a.images[0].shape == (20, 20, 3) and np.ptp(a.images[0], axis=-1).max() == 0
    assert any("gray -> RGB" in n for n in a.notes)
    assert a.images[0].min() >= -1 and a.images[0].max() <= 1


def test_real_rgb_to_gray_and_rescaled_to_sim_pixel_size(tmp_path):
    root = tmp_path / "real"
    root.mkdir()
    write_image(root / "a.png", np.full((40, 60, 3), 200, np.uint8))
    write_dataset_meta(root, {"pixel_size_um": 1.0})
    real = RealCrops(root, 16, 1, sim_pixel_size_um=0.5)
    assert real.images[0].shape == (80, 120, 1)  # 1 um/px -> 0.5 um/px doubles the size
    assert any("rescaled x2.000" in n for n in real.notes)
    assert any("RGB -> gray" in n for n in real.notes)
    override = RealCrops(root, 16, 1, sim_pixel_size_um=0.5, real_pixel_size_um=0.25)
    assert override.images[0].shape == (20, 30, 1)


def test_real_image_smaller_than_crop_is_a_clear_error(tmp_path):
    (tmp_path / "real").mkdir()
    write_image(tmp_path / "real" / "small.png", np.zeros((10, 30), np.uint8))
    with pytest.raises(DatasetError, match=r"small.png: image is 10x30, smaller than"):
        RealCrops(tmp_path / "real", 16, 1)


def test_large_tiff_is_read_lazily_with_the_same_values(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 65535, (64, 48), dtype=np.uint16)
    (tmp_path / "real").mkdir()
    tifffile.imwrite(tmp_path / "real" / "big.tif", image)  # uncompressed: memory-mappable
    eager = RealCrops(tmp_path / "real", 16, 1)
    monkeypatch.setattr(data, "LAZY_PIXELS", 100)
    lazy = RealCrops(tmp_path / "real", 16, 1)
    assert lazy.lazy == [True] and isinstance(lazy.images[0], np.memmap)
    a = eager.sample(5, np.random.default_rng(3))
    b = lazy.sample(5, np.random.default_rng(3))
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_real_without_pixel_size_is_used_as_is_with_a_note(tmp_path):
    root = tmp_path / "real"
    root.mkdir()
    write_image(root / "a.png", np.full((40, 60), 200, np.uint8))
    real = RealCrops(root, 16, 1, sim_pixel_size_um=0.5)
    assert real.images[0].shape == (40, 60, 1) and real.scales == [1.0]
    assert any("pixel size unknown" in n and "0.5 um/px" in n for n in real.notes)


def test_each_real_image_is_rescaled_by_the_pixel_size_its_file_states(tmp_path):
    """Without meta.json or a given size, the refiner took a folder whose files did not all
    state one as unknown, so a section stating 1 um/px among images stating none was used
    at the simulation's 0.5 (and the note contradicted `inspect`)."""
    root = tmp_path / "real"
    root.mkdir()
    write_image(root / "a.png", np.full((40, 60), 200, np.uint8))
    tifffile.imwrite(root / "b.tif", np.full((30, 20), 100, np.uint8), resolution=(1e4, 1e4),
                     resolutionunit="CENTIMETER")  # 1 um/px
    real = RealCrops(root, 16, 1, sim_pixel_size_um=0.5)
    assert [im.shape for im in real.images] == [(40, 60, 1), (60, 40, 1)]
    assert real.scales == [1.0, 2.0]
    assert any("from what each states (1 um/px); 1 stating none taken to be at it" in n
               for n in real.notes)
    assert not any("pixel size unknown" in n for n in real.notes)
    # the size given overrules what the file states, for every image
    given = RealCrops(root, 16, 1, sim_pixel_size_um=0.5, real_pixel_size_um=0.5)
    assert given.scales == [1.0, 1.0]


def test_compressed_pyramidal_section_is_read_by_windows_with_the_same_values(tmp_path):
    """A whole section as scanners write it (tiled, zlib, pyramidal) cannot be memory-mapped:
    it is read window by window, never decoded whole, and gives the crops of the decoded one."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 4096, (192, 160, 3), dtype=np.uint16)
    (tmp_path / "decoded").mkdir()
    (tmp_path / "section").mkdir()
    tifffile.imwrite(tmp_path / "decoded" / "s.tif", image)
    with tifffile.TiffWriter(tmp_path / "section" / "s.ome.tif") as tif:
        tif.write(image, subifds=1, tile=(64, 64), compression="zlib", photometric="rgb")
        tif.write(image[::2, ::2], subfiletype=1, tile=(64, 64), compression="zlib",
                  photometric="rgb")
    eager = RealCrops(tmp_path / "decoded", 32, 3)
    lazy = RealCrops(tmp_path / "section", 32, 3)
    assert eager.lazy == [False] and lazy.lazy == [True]
    assert not isinstance(lazy.images[0], np.ndarray)
    a = eager.sample(6, np.random.default_rng(3)).numpy()
    b = lazy.sample(6, np.random.default_rng(3)).numpy()
    assert b.shape == (6, 3, 32, 32)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_crops_of_a_section_come_from_its_tissue_not_its_glass(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    slide = np.full((512, 512), 235, np.uint8)  # 86 % empty glass
    slide[:192, :192] = rng.integers(40, 200, (192, 192))
    (tmp_path / "real").mkdir()
    tifffile.imwrite(tmp_path / "real" / "slide.tif", slide, tile=(64, 64), compression="zlib")
    monkeypatch.setattr(data, "LAZY_PIXELS", 100)
    monkeypatch.setattr(data, "TISSUE_WINDOW", 64)
    monkeypatch.setattr(data, "TISSUE_WINDOWS", 4)
    real = RealCrops(tmp_path / "real", 32, 1)
    assert real.lazy == [True]
    crops = real.sample(100, np.random.default_rng(0)).numpy()
    textured = crops.reshape(100, -1).std(axis=1) > 0.1  # glass crops are flat
    assert textured.mean() >= 0.9  # uniform crops: ~11 % on tissue


@pytest.mark.parametrize("lazy", [False, True])
def test_real_crops_of_one_channel_are_the_crops_of_that_channel_saved_gray(tmp_path,
                                                                          monkeypatch, lazy):
    """fit-refiner --channel 1 on 2-channel ImageJ TIFFs learns from their channel 1 exactly
    as from that channel saved as gray images, decoded or read window by window (a whole
    section); without it, channel 0."""
    if lazy:
        monkeypatch.setattr(data, "LAZY_PIXELS", 1000)
    rng = np.random.default_rng(3)
    for name in ("two", "gray", "zero"):
        (tmp_path / name).mkdir()
    for i in range(2):
        planes = rng.integers(0, 4096, (2, 64, 80), dtype=np.uint16)
        tifffile.imwrite(tmp_path / "two" / f"a{i}.tif", planes, imagej=True,
                         metadata={"axes": "CYX"})
        tifffile.imwrite(tmp_path / "gray" / f"a{i}.tif", planes[1], photometric="minisblack")
        tifffile.imwrite(tmp_path / "zero" / f"a{i}.tif", planes[0], photometric="minisblack")
    picked = RealCrops(tmp_path / "two", 32, 1, channel=1)
    assert picked.lazy == [lazy, lazy]
    want = RealCrops(tmp_path / "gray", 32, 1).sample(6, np.random.default_rng(0))
    np.testing.assert_allclose(picked.sample(6, np.random.default_rng(0)), want, atol=1e-6)
    with pytest.warns(UserWarning, match="2 channels; using channel 0"):
        first = RealCrops(tmp_path / "two", 32, 1)
    np.testing.assert_allclose(first.sample(6, np.random.default_rng(0)),
                               RealCrops(tmp_path / "zero", 32, 1).sample(
                                   6, np.random.default_rng(0)), atol=1e-6)
