import json

import numpy as np
import pytest

from cellsynth.errors import DatasetError, ImageReadError
from cellsynth.io.datasets import load_dataset
from cellsynth.io.images import write_image, write_labels

from ..conftest import make_dataset


def test_load_dataset_pairs_images_and_labels(dataset):
    ds = load_dataset(dataset, require_labels=True)
    assert [s.id for s in ds] == ["img0", "img1", "img2"]
    image, labels = ds[1].read()
    assert image.shape == labels.shape == (32, 32)
    assert sorted(np.unique(labels)) == [0, 1, 2, 5]


def test_plain_folder_of_images(tmp_path):
    for i in range(2):
        write_image(tmp_path / f"{i}.png", np.zeros((8, 8), np.uint8))
    ds = load_dataset(tmp_path)
    assert len(ds) == 2 and not ds.has_labels


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DatasetError, match="no such folder"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images found"):
        load_dataset(tmp_path / "empty")


def test_image_without_label_when_required(dataset):
    (dataset / "labels" / "img2.tif").unlink()
    assert load_dataset(dataset)[2].label_path is None
    with pytest.raises(DatasetError, match=r"1 image\(s\) without a label file.*img2\.png"):
        load_dataset(dataset, require_labels=True)


def test_labels_without_images(dataset):
    write_labels(dataset / "labels" / "ghost.tif", np.zeros((32, 32), np.uint16))
    with pytest.raises(DatasetError, match=r"label file\(s\) without an image, e\.g\. ghost\.tif"):
        load_dataset(dataset)


def test_size_mismatch_names_both_files(dataset):
    write_labels(dataset / "labels" / "img0.tif", np.zeros((30, 32), np.uint16))
    with pytest.raises(ImageReadError, match=r"img0\.tif: label size 30x32 does not match image "
                                             r"img0\.png size 32x32"):
        load_dataset(dataset)[0].read()


def test_duplicate_ids(dataset):
    write_image(dataset / "images" / "img0.tif", np.zeros((32, 32), np.uint8))
    with pytest.raises(DatasetError, match="share the id 'img0'"):
        load_dataset(dataset)


def test_ome_tiff_images_pair_with_labels_named_without_ome_or_after_the_file(tmp_path):
    """QuPath exports x.ome.tif, and its scripts name the outlines after the image file
    (x.ome.tif.geojson) or its plain name (x.geojson); Cellpose saves x.ome_masks.tif:
    each pairs with its image under the id x (it was x.ome, and the labels were orphans)."""
    labels = np.zeros((16, 16), np.uint16)
    labels[4:9, 3:10] = 1
    square = {"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {"objectType": "detection"},
        "geometry": {"type": "Polygon",
                     "coordinates": [[[3, 4], [10, 4], [10, 9], [3, 9], [3, 4]]]}}]}
    for name, label_name in (("plain", "a.geojson"), ("named", "a.ome.tif.geojson")):
        root = tmp_path / name
        (root / "labels").mkdir(parents=True)
        (root / "images").mkdir()
        write_image(root / "images" / "a.ome.tif", np.zeros((16, 16), np.uint8))
        (root / "labels" / label_name).write_text(json.dumps(square))
        (sample,) = load_dataset(root, require_labels=True)
        assert sample.id == "a"
        np.testing.assert_array_equal(sample.read()[1] > 0, labels > 0)
    cellpose = tmp_path / "cellpose"
    cellpose.mkdir()
    write_image(cellpose / "a.ome.tif", np.zeros((16, 16), np.uint8))
    write_labels(cellpose / "a.ome_masks.tif", labels)
    (sample,) = load_dataset(cellpose, require_labels=True)
    assert sample.id == "a" and sample.read()[1].max() == 1
    moved = tmp_path / "moved"  # Cellpose's masks copied into a labels/ folder
    (moved / "images").mkdir(parents=True)
    (moved / "labels").mkdir()
    write_image(moved / "images" / "a.ome.tif", np.zeros((16, 16), np.uint8))
    write_labels(moved / "labels" / "a.ome_masks.tif", labels)
    (sample,) = load_dataset(moved, require_labels=True)
    assert sample.id == "a" and sample.label_path.name == "a.ome_masks.tif"
    write_image(cellpose / "a.tif", np.zeros((16, 16), np.uint8))  # now two images are "a"
    with pytest.raises(DatasetError, match="share the id 'a': a.ome.tif and a.tif"):
        load_dataset(cellpose)


def test_meta_json(tmp_path):
    root = make_dataset(tmp_path / "d", n=1)
    (root / "meta.json").write_text(json.dumps({"pixel_size_um": 0.5}))
    assert load_dataset(root).pixel_size_um == 0.5
    (root / "meta.json").write_text("{broken")
    with pytest.raises(DatasetError, match=r"meta\.json: cannot parse JSON"):
        load_dataset(root)


def test_a_cellpose_gui_folder_reads_its_seg_npy_masks(tmp_path, caplog):
    """Cellpose's GUI saves x_seg.npy (a dict holding 'masks', 'outlines', ...) beside x."""
    import logging

    from cellsynth.errors import ImageReadError
    from cellsynth.hardware import forget_announcements
    from cellsynth.io.images import read_labels, write_image

    masks = np.zeros((20, 24), np.uint16)
    masks[2:8, 3:9], masks[10:18, 12:20] = 1, 2
    write_image(tmp_path / "x.png", np.full((20, 24), 40, np.uint8))
    np.save(tmp_path / "x_seg.npy", {"masks": masks, "outlines": masks * 0, "filename": "x.png"})
    forget_announcements()
    with caplog.at_level(logging.INFO, logger="cellsynth"):
        dataset = load_dataset(tmp_path, require_labels=True)
        # the same folder named another way (init reads it relative, then absolute): said once
        load_dataset(tmp_path / ".." / tmp_path.name, require_labels=True)
    assert caplog.text.count("read as a Cellpose GUI (x + x_seg.npy) folder") == 1
    assert [s.id for s in dataset] == ["x"]
    np.testing.assert_array_equal(dataset[0].read()[1], masks)
    (tmp_path / "x_seg.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ImageReadError, match=r"x_seg.npy: cannot read Cellpose file"):
        read_labels(tmp_path / "x_seg.npy")
    np.save(tmp_path / "y_seg.npy", {"outlines": masks})
    with pytest.raises(ImageReadError, match=r"y_seg.npy: not a Cellpose _seg.npy file"):
        read_labels(tmp_path / "y_seg.npy")


@pytest.mark.parametrize("images, labels", [("Images", "Labels"), ("image", "label"),
                                            ("img", "mask"), ("IMAGES", "Masks")])
def test_image_and_label_folders_named_in_any_case_or_the_singular(tmp_path, images, labels):
    """Images/ + Labels/ (or image/ + label/, img/ + mask/) were read as a project whose
    images sit in sub-folders: "no images found"."""
    root = tmp_path / "d"
    ids = np.zeros((12, 14), np.uint16)
    ids[2:6, 3:8] = 5
    (root / images).mkdir(parents=True)
    (root / labels).mkdir()
    write_image(root / images / "a.png", np.full((12, 14), 30, np.uint8))
    write_labels(root / labels / "a.tif", ids)
    dataset = load_dataset(root, require_labels=True)
    assert [s.image_path.parent.name for s in dataset] == [images]
    np.testing.assert_array_equal(dataset[0].read()[1], ids)


def test_the_exact_folder_name_wins_over_another_case(tmp_path):
    root = tmp_path / "d"
    for name in ("images", "Images"):
        (root / name).mkdir(parents=True)
    write_image(root / "images" / "a.png", np.full((8, 8), 30, np.uint8))
    write_image(root / "Images" / "b.png", np.full((8, 8), 30, np.uint8))
    assert [s.id for s in load_dataset(root)] == ["a"]


def test_x_mask_beside_x_pairs_as_cellposes_x_masks_does(tmp_path):
    """x_mask.tif (singular) beside x.png was read as a second image; an image named
    y_mask.png without a y beside it stays an image."""
    ids = np.zeros((10, 10), np.uint16)
    ids[1:5, 1:5], ids[6:9, 6:9] = 1, 2
    write_image(tmp_path / "x.png", np.full((10, 10), 30, np.uint8))
    write_labels(tmp_path / "x_mask.tif", ids)
    dataset = load_dataset(tmp_path, require_labels=True)
    assert [s.id for s in dataset] == ["x"]
    np.testing.assert_array_equal(dataset[0].read()[1], ids)
    plain = tmp_path / "plain"
    plain.mkdir()
    write_image(plain / "y_mask.png", np.full((10, 10), 30, np.uint8))
    write_image(plain / "z.png", np.full((10, 10), 30, np.uint8))
    assert [(s.id, s.label_path) for s in load_dataset(plain)] == [("y_mask", None),
                                                                    ("z", None)]


def test_cellposes_own_namings_pair_and_its_flow_files_are_not_images(tmp_path, caplog):
    """Cellpose's datasets name pairs 000_img.png + 000_masks.png, its predictions
    x_cp_masks.png (--save_png), and its training writes x_flows.tif beside x.tif: the
    first two were "label file(s) without an image", the flows read as images (a 4-channel
    float "RGBA"; init then said "image(s) without a label file") (audit)."""
    import logging

    from cellsynth.hardware import forget_announcements

    ids = np.zeros((10, 10), np.uint16)
    ids[1:5, 1:5], ids[6:9, 6:9] = 1, 2
    image = np.full((10, 10), 30, np.uint8)
    cases = {"img": (("000_img.png", "000_masks.png"), "000_img", "x_img + x_masks"),
             "cp": (("x.png", "x_cp_masks.png"), "x", "x + x_cp_masks"),
             "flows": (("x.tif", "x_masks.tif"), "x", "x + x_masks")}
    forget_announcements()
    for name, ((image_name, mask_name), image_id, kind) in cases.items():
        root = tmp_path / name
        root.mkdir()
        write_image(root / image_name, image)
        write_labels(root / mask_name, ids)
        if name == "flows":
            import tifffile

            tifffile.imwrite(root / "x_flows.tif", np.random.default_rng(0).random(
                (4, 10, 10)).astype(np.float32))
        with caplog.at_level(logging.INFO, logger="cellsynth"):
            dataset = load_dataset(root, require_labels=True)
        assert [s.id for s in dataset] == [image_id], name
        assert (dataset[0].image_path.name, dataset[0].label_path.name) == (image_name,
                                                                            mask_name)
        np.testing.assert_array_equal(dataset[0].read()[1], ids)
        assert f"read as a Cellpose ({kind}) folder" in caplog.text, name
    assert "1 Cellpose flow file(s) (x_flows.tif) skipped" in caplog.text
    # the GUI's x_seg.npy beside x_masks.tif: the masks are read, and that is said
    np.save(tmp_path / "flows" / "x_seg.npy", {"masks": ids * 0})
    with caplog.at_level(logging.INFO, logger="cellsynth"):
        dataset = load_dataset(tmp_path / "flows", require_labels=True)
    assert dataset[0].label_path.name == "x_masks.tif"
    assert "1 Cellpose GUI file(s) (x_seg.npy) not read: the x_masks files" in caplog.text
    # an orphan x_masks with no x (nor x_img) is still named as one
    (tmp_path / "img" / "000_img.png").rename(tmp_path / "img" / "001_img.png")
    with pytest.raises(DatasetError, match=r"1 label file\(s\) without an image, e\.g\. "
                                           r"000_masks\.png"):
        load_dataset(tmp_path / "img")
