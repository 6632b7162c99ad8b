"""Each export opened by the tool it is for: Cellpose's training loader, StarDist's loading
idiom, pycocotools and shapely (installed with the test extras; skipped where absent)."""

import json
from glob import glob
from pathlib import Path

import numpy as np
import pytest

from cellsynth.io.export import export
from cellsynth.io.images import read_labels, write_image, write_labels

# pycocotools' decode passes copy= to numpy's __array__ (its warning, not ours)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture
def dataset(tmp_path):
    """Two images with cells of several shapes and sizes, some touching, one at the border."""
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    yy, xx = np.mgrid[:80, :96]
    for name, shift in (("a", 0), ("b", 7)):
        labels = np.zeros((80, 96), np.uint16)
        labels[((yy - 30 - shift) ** 2 + (xx - 40) ** 2) <= 64] = 1         # disk
        labels[((yy - 60) ** 2 / 9 + (xx - 20 - shift) ** 2 / 30) <= 4] = 2  # ellipse
        labels[5:15, 60:80] = 3                                              # rectangle
        labels[15:25, 60:70] = 4                                             # touching it
        labels[40:43, 70:72] = 5                                             # 6 pixels
        labels[70:, 85:] = 6                                                 # at the corner
        write_labels(root / "labels" / f"{name}.tif", labels)
        write_image(root / "images" / f"{name}.png", (labels > 0).astype(np.uint8) * 200)
    return root


def _truth(dataset, image_id):
    return read_labels(dataset / "labels" / f"{image_id}.tif")


def test_cellpose_training_loader_pairs_every_image_with_its_mask(dataset, tmp_path):
    cellpose_io = pytest.importorskip("cellpose.io")
    export(dataset, "cellpose", tmp_path / "cp")
    images, labels, names = cellpose_io.load_images_labels(str(tmp_path / "cp"))
    assert sorted(Path(n).stem for n in names) == ["a", "b"]
    for name, image, mask in zip(names, images, labels):
        np.testing.assert_array_equal(mask, _truth(dataset, Path(name).stem))
        assert image.shape[:2] == mask.shape


def test_stardist_loading_idiom_pairs_images_and_masks_by_name(dataset, tmp_path):
    from tifffile import imread  # as StarDist's example notebooks load their data

    export(dataset, "stardist", tmp_path / "sd")
    X = sorted(glob(str(tmp_path / "sd" / "images" / "*.tif")))
    Y = sorted(glob(str(tmp_path / "sd" / "masks" / "*.tif")))
    assert len(X) == len(Y) == 2
    assert all(Path(x).name == Path(y).name for x, y in zip(X, Y))
    for x, y in zip(X, Y):
        mask = imread(y)
        np.testing.assert_array_equal(mask, _truth(dataset, Path(y).stem))
        assert imread(x).shape == mask.shape


def test_pycocotools_masks_round_trip_to_our_labels(dataset, tmp_path):
    coco_api = pytest.importorskip("pycocotools.coco")
    export(dataset, "coco", tmp_path / "coco")
    coco = coco_api.COCO(str(tmp_path / "coco" / "annotations.json"))
    assert len(coco.getImgIds()) == 2 and len(coco.getAnnIds()) == 12
    for image in coco.loadImgs(coco.getImgIds()):
        truth = _truth(dataset, Path(image["file_name"]).stem)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        assert len(anns) == truth.max()
        for ann in anns:
            mask = coco.annToMask(ann).astype(bool)
            overlaps = np.bincount(truth[mask], minlength=truth.max() + 1)[1:]
            cell = truth == np.argmax(overlaps) + 1
            iou = (mask & cell).sum() / (mask | cell).sum()
            assert iou >= 0.99, (image["file_name"], ann["id"], iou)
            assert ann["area"] == cell.sum()


def test_geojson_is_valid_for_shapely_and_rasterises_back(dataset, tmp_path):
    shapely = pytest.importorskip("shapely")
    export(dataset, "geojson", tmp_path / "g")
    truth = _truth(dataset, "a")
    data = json.loads((tmp_path / "g" / "a.geojson").read_text())
    assert len(data["features"]) == truth.max()
    yy, xx = np.mgrid[:truth.shape[0], :truth.shape[1]]
    for feature in data["features"]:
        shape = shapely.geometry.shape(feature["geometry"])
        assert shape.is_valid and shape.geom_type == "Polygon"
        inside = shapely.contains_xy(shape, xx + 0.5, yy + 0.5)  # pixel centres
        cell = truth == feature["properties"]["measurements"]["label"]
        assert (inside & cell).sum() / (inside | cell).sum() >= 0.99
        assert shape.area == pytest.approx(cell.sum(), rel=0.1)


def test_pycocotools_decodes_cells_with_holes_and_pieces_exactly_and_reads_scores(tmp_path):
    """COCO's polygons cannot hold a hole or a second piece: the largest piece was written
    filled, so such cells did not decode back (2 of 506 ground-truth, 16 of 515 predicted
    cells in a fresh-user audit), and a prediction's scores were left out, which COCOeval
    needs. Such cells are RLE now (decoded pixel for pixel), and scores come along."""
    coco_api = pytest.importorskip("pycocotools.coco")
    labels = np.zeros((40, 48), np.uint16)
    labels[2:14, 2:14] = 1
    labels[6:10, 6:10] = 0          # a ring: a cell with a hole
    labels[20:26, 20:26] = 2
    labels[26, 26:34] = 2           # a sliver joined at a corner: its own piece
    labels[30:36, 5:12] = 3         # a plain cell (a polygon, as before)
    pred = tmp_path / "pred"
    (pred / "labels").mkdir(parents=True)
    (pred / "detections").mkdir()
    write_labels(pred / "labels" / "a.tif", labels)
    (pred / "detections" / "a.csv").write_text("id,score\n1,0.91\n2,0.77\n3,0.99\n")
    (pred / "meta.json").write_text(json.dumps({"stage": "predict"}))
    export(pred, "coco", tmp_path / "coco")
    coco = coco_api.COCO(str(tmp_path / "coco" / "annotations.json"))
    anns = coco.loadAnns(coco.getAnnIds())
    assert len(anns) == 3
    for ann, cell, score in zip(anns, (1, 2, 3), (0.91, 0.77, 0.99)):
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), labels == cell)
        assert ann["score"] == score and ann["area"] == (labels == cell).sum()
    assert isinstance(anns[2]["segmentation"], list)  # plain cells stay polygons
