"""Exports to Cellpose, StarDist, QuPath GeoJSON and COCO, and reading those folders back."""

import json

import numpy as np
import pytest
from skimage.draw import polygon as fill_polygon

from cellsynth.cli import main
from cellsynth.errors import DatasetError
from cellsynth.evaluate import matching
from cellsynth.io.datasets import load_dataset
from cellsynth.io.export import export, label_polygons
from cellsynth.io.images import read_image, read_labels, write_image, write_labels
from cellsynth.io.resample import read_pixel_size


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    yy, xx = np.mgrid[:48, :64]
    for name, shift in (("a", 0), ("b", 5)):
        labels = np.zeros((48, 64), np.uint16)
        labels[4:14, 6:20] = 1  # a 10 x 14 rectangle
        labels[((yy - 30 - shift) ** 2 + (xx - 40) ** 2) <= 64] = 2  # a disk, radius 8
        write_labels(root / "labels" / f"{name}.tif", labels)
        write_image(root / "images" / f"{name}.png", (labels > 0).astype(np.uint8) * 200)
    return root


def test_polygons_of_a_rectangle_are_its_pixel_edges():
    labels = np.zeros((10, 12), np.uint16)
    labels[2:5, 3:9] = 7  # rows 2-4, columns 3-8
    (polygon,) = label_polygons(labels).values()
    assert polygon[:, 0].min() == 3 and polygon[:, 0].max() == 9  # x: columns 3..9 edges
    assert polygon[:, 1].min() == 2 and polygon[:, 1].max() == 5
    assert np.array_equal(polygon[0], polygon[-1])  # closed ring


@pytest.mark.parametrize("to", ["cellpose", "stardist"])
def test_cellpose_and_stardist_folders_round_trip(dataset, tmp_path, to):
    export(dataset, to, tmp_path / to)
    names = sorted(p.relative_to(tmp_path / to).as_posix()
                   for p in (tmp_path / to).rglob("*") if p.is_file())
    expected = {"cellpose": ["a.png", "a_masks.tif", "b.png", "b_masks.tif"],
                "stardist": ["images/a.tif", "images/b.tif", "masks/a.tif", "masks/b.tif"]}
    assert names == expected[to]
    back = load_dataset(tmp_path / to, require_labels=True)  # recognised, not unlabeled
    assert [s.id for s in back] == ["a", "b"]
    for sample in back:
        np.testing.assert_array_equal(sample.read_labels(),
                                      read_labels(dataset / "labels" / f"{sample.id}.tif"))


def test_geojson_is_what_qupath_imports_and_rasterises_back(dataset, tmp_path, capsys):
    assert main(["export", str(dataset), "--to", "geojson", "--out", str(tmp_path / "g")]) == 0
    assert "wrote 4 cells of 2 images as geojson" in capsys.readouterr().out
    data = json.loads((tmp_path / "g" / "a.geojson").read_text())
    assert data["type"] == "FeatureCollection" and len(data["features"]) == 2
    feature = data["features"][0]
    assert feature["geometry"]["type"] == "Polygon"
    assert feature["properties"]["objectType"] == "detection"
    labels = read_labels(dataset / "labels" / "a.tif")
    drawn = np.zeros_like(labels)
    for k, f in enumerate(data["features"], start=1):
        ring = np.array(f["geometry"]["coordinates"][0])
        rr, cc = fill_polygon(ring[:, 1] - 0.5, ring[:, 0] - 0.5, labels.shape)  # centres
        drawn[rr, cc] = k
    result = matching(labels, drawn, thresholds=(0.8,))
    assert result.f1[0] == 1.0 and result.mean_iou[0] > 0.9


def test_coco_annotations(dataset, tmp_path):
    export(dataset, "coco", tmp_path / "c")
    coco = json.loads((tmp_path / "c" / "annotations.json").read_text())
    assert [i["file_name"] for i in coco["images"]] == ["images/a.png", "images/b.png"]
    assert len(coco["annotations"]) == 4 and coco["categories"] == [{"id": 1, "name": "cell"}]
    rectangle = coco["annotations"][0]
    assert rectangle["bbox"] == [6.0, 4.0, 14.0, 10.0] and rectangle["area"] == 140
    assert (tmp_path / "c" / "images" / "a.png").is_file()


def test_the_coco_box_of_a_cell_in_pieces_holds_every_piece(tmp_path):
    """A cell in two separate pieces, and one with a pixel joined at a corner: the box was
    the largest piece's ([20, 20, 10, 5] for a mask spanning [20, 20, 15, 5]; 14 of 303 cells
    of a real prediction; audit 7); now the box of the cell's own mask."""
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    labels = np.zeros((40, 48), np.uint16)
    labels[10:13, 10:13] = 1
    labels[13, 13] = 1  # joined at a corner
    labels[20:25, 20:30] = 2
    labels[20:25, 32:35] = 2  # a second piece, 2 px away
    labels[30:34, 2:6] = 3  # one piece
    write_labels(root / "labels" / "a.tif", labels)
    write_image(root / "images" / "a.png", (labels > 0).astype(np.uint8) * 200)
    export(root, "coco", tmp_path / "c")
    coco = json.loads((tmp_path / "c" / "annotations.json").read_text())
    boxes = [a["bbox"] for a in coco["annotations"]]
    expected = []
    for index in (1, 2, 3):
        ys, xs = np.nonzero(labels == index)
        expected.append([float(xs.min()), float(ys.min()), float(xs.max() + 1 - xs.min()),
                         float(ys.max() + 1 - ys.min())])
    assert boxes == expected == [[10.0, 10.0, 4.0, 4.0], [20.0, 20.0, 15.0, 5.0],
                                 [2.0, 30.0, 4.0, 4.0]]


def _prediction(dataset, pred, images: str, level: int = 0):
    """``pred``: the labels of ``dataset`` as ``cellsynth predict IMAGES --out PRED`` writes
    them, its meta.json recording ``images`` (the folder predict was given) and each file."""
    (pred / "labels").mkdir(parents=True)
    for name in ("a", "b"):
        (pred / "labels" / f"{name}.tif").write_bytes(
            (dataset / "labels" / f"{name}.tif").read_bytes())
    per_image = {name: {"file": f"{name}.png", "pixel_size_um": None,
                        **({"level": level} if level else {})} for name in ("a", "b")}
    (pred / "meta.json").write_text(json.dumps({"stage": "predict", "images": images,
                                                "images_pixel_size_um": per_image}))
    return pred


def test_a_prediction_folder_exports_polygons_whatever_became_of_its_images(dataset,
                                                                            tmp_path):
    pred = _prediction(dataset, tmp_path / "pred", str(tmp_path / "gone"))
    assert export(pred, "geojson", tmp_path / "g")["n_instances"] == 4
    (pred / "meta.json").write_text(json.dumps({"stage": "predict"}))  # records no image
    assert export(pred, "geojson", tmp_path / "g2")["n_instances"] == 4
    with pytest.raises(DatasetError, match="records no image file for the labels of a"):
        export(pred, "cellpose", tmp_path / "cp")
    assert not (tmp_path / "cp").exists()


@pytest.mark.parametrize("recorded", ["absolute", "relative"])
@pytest.mark.parametrize("to", ["cellpose", "stardist"])
def test_a_prediction_exports_with_the_images_its_meta_json_records(dataset, tmp_path,
                                                                    monkeypatch, to, recorded):
    """predict records the folder it was given (relative, before it was recorded resolved:
    taken from the current folder) and each image's file; the raster formats pair those
    images with the predicted labels, as they pair a dataset's."""
    monkeypatch.chdir(tmp_path)
    images = str(dataset) if recorded == "absolute" else dataset.name
    pred = _prediction(dataset, tmp_path / "pred", images)
    assert export(pred, to, tmp_path / to)["n_instances"] == 4
    back = load_dataset(tmp_path / to, require_labels=True)
    assert [s.id for s in back] == ["a", "b"]
    for sample in back:
        image, labels = sample.read()
        np.testing.assert_array_equal(image, read_image(dataset / "images" / f"{sample.id}.png"))
        np.testing.assert_array_equal(labels, read_labels(pred / "labels" / f"{sample.id}.tif"))


def test_a_predicted_image_no_longer_there_is_one_line_naming_it(dataset, tmp_path, capsys):
    pred = _prediction(dataset, tmp_path / "pred", str(dataset))
    (dataset / "images" / "b.png").unlink()
    assert main(["export", str(pred), "--to", "stardist", "--out", str(tmp_path / "sd")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{dataset / 'images' / 'b.png'}: no such file" in err
    assert not (tmp_path / "sd").exists()


def test_a_prediction_at_a_pyramid_level_exports_that_level_with_its_channels(tmp_path):
    """Labels predicted at level 1 of a 2-channel fluorescence pyramid pair with level 1, its
    two channels kept (as planes: a 2-channel image is no RGB), not the level 0 file."""
    import tifffile

    planes = np.random.default_rng(0).integers(0, 4096, (2, 64, 48), dtype=np.uint16)
    folder = tmp_path / "slides"
    folder.mkdir()
    with tifffile.TiffWriter(folder / "a.ome.tif", ome=True) as tif:
        tif.write(planes, subifds=1, tile=(16, 16), photometric="minisblack",
                  metadata={"axes": "CYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
        tif.write(planes[:, ::2, ::2], subfiletype=1, tile=(16, 16), photometric="minisblack")
    pred = tmp_path / "pred"
    (pred / "labels").mkdir(parents=True)
    labels = np.zeros((32, 24), np.uint16)
    labels[3:9, 4:12] = 1
    write_labels(pred / "labels" / "a.tif", labels)
    for stated in (0.5, None):  # predict's meta.json records the level's; else the file's
        entry = {"file": "a.ome.tif", "level": 1, "level0_shape": [64, 48],
                 **({"pixel_size_um": stated} if stated else {})}
        (pred / "meta.json").write_text(json.dumps({
            "stage": "predict", "images": str(folder), "images_pixel_size_um": {"a": entry}}))
        for to, image, mask in (("stardist", "images/a.tif", "masks/a.tif"),
                                ("cellpose", "a.tif", "a_masks.tif")):
            export(pred, to, tmp_path / to, force=True)
            exported = read_image(tmp_path / to / image, all_channels=True)
            np.testing.assert_array_equal(exported, planes[:, ::2, ::2].transpose(1, 2, 0))
            # as each tool loads it: StarDist's notebooks count channels on the last axis
            # (planes first gave it 24 channels; audit 7), Cellpose moves planes itself
            raw = tifffile.imread(tmp_path / to / image)
            assert raw.shape == ((32, 24, 2) if to == "stardist" else (2, 32, 24)), (to, raw.shape)
            # the level's pixel size goes with it: without it the level was later taken
            # at the model's pixel size (2x off at level 1)
            for path in (image, mask):
                assert read_pixel_size(tmp_path / to / path) == pytest.approx(0.5), (to, path)


def test_polygons_keep_every_corner_of_the_pixel_outline_and_nothing_else():
    """An outline is the marching-squares contour of the cell without the points on a
    straight line between their neighbours: the same area to the last digit, no collinear
    vertex left."""
    from scipy import ndimage as ndi
    from skimage.measure import find_contours

    rng = np.random.default_rng(3)
    field = ndi.gaussian_filter(rng.random((128, 128)), 3)
    labels, _ = ndi.label(field > np.percentile(field, 70))  # irregular blobs
    polygons = label_polygons(labels)
    assert len(polygons) >= 5

    def area(points):
        x, y = points[:, 0], points[:, 1]
        return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))

    dropped = 0
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        polygon = polygons[index]
        contour = max(find_contours(np.pad(labels[box] == index, 1).astype(float), 0.5),
                      key=len)
        full = np.stack([contour[:, 1] - 1 + box[1].start + 0.5,
                         contour[:, 0] - 1 + box[0].start + 0.5], axis=1)
        assert np.array_equal(polygon[0], polygon[-1]) and len(polygon) <= len(full)
        dropped += len(full) - len(polygon)
        assert area(polygon) == pytest.approx(area(full), abs=1e-9)
        assert {tuple(p) for p in polygon} <= {tuple(p) for p in full}
        ring = polygon[:-1]
        before, after = ring - np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0) - ring
        assert np.all(np.abs(before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]) > 1e-9)
    assert dropped > 100  # the straight runs of the larger blobs


def test_a_cell_with_a_hole_or_a_corner_joined_pixel_reads_back_exactly(tmp_path):
    """GeoJSON of a ring-shaped cell keeps its hole, and a pixel joined to its cell only at
    a corner (4-connected, as QuPath reads pixels) is a second polygon of the same cell:
    what is exported reads back pixel for pixel (the outline alone filled the hole and lost
    the pixel); a plain cell stays one Polygon."""
    import shapely.geometry

    from cellsynth.io.export import _geojson
    from cellsynth.io.geojson import read_geojson_labels

    labels = np.zeros((14, 14), np.int32)
    labels[2:9, 2:9] = 1
    labels[4:7, 4:7] = 0  # a hole
    labels[9, 9] = 1  # touching the ring only at its corner
    labels[10:13, 1:4] = 2
    collection = _geojson(labels, "x")
    kinds = {f["properties"]["measurements"]["label"]: f["geometry"]["type"]
             for f in collection["features"]}
    assert kinds == {1: "MultiPolygon", 2: "Polygon"}
    for feature in collection["features"]:
        assert shapely.geometry.shape(feature["geometry"]).is_valid
    (tmp_path / "x.geojson").write_text(json.dumps(collection))
    np.testing.assert_array_equal(read_geojson_labels(tmp_path / "x.geojson", labels.shape),
                                  labels)


def test_coco_outline_of_a_cell_in_two_pieces_is_the_larger_piece_as_in_geojson():
    """A cell whose 1 x 10 sliver touches its 4 x 4 body only at a corner: the sliver's
    outline is the longer (22 vs 16 px), its area the smaller (10 vs 16 px). COCO's one
    polygon is the body, the piece GeoJSON puts first."""
    from cellsynth.io.export import label_shapes

    labels = np.zeros((16, 20), np.int32)
    labels[2:6, 2:6] = 1  # the body
    labels[6, 6:16] = 1  # the sliver, joined at the corner (5, 5)-(6, 6)
    (polygon,) = label_polygons(labels).values()
    xs, ys = polygon[:, 0], polygon[:, 1]
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (2, 6, 2, 6)
    np.testing.assert_array_equal(polygon, label_shapes(labels)[1][0][0])


def test_export_of_two_channel_images_keeps_them_and_warns_of_no_channel(tmp_path):
    """export copies a 2-channel ImageJ TIFF as it is and reads only its size: no line about
    using channel 0 (export has no --channel; it said so for every image)."""
    import warnings

    import tifffile

    root = tmp_path / "fluo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    planes = np.random.default_rng(0).integers(0, 4096, (2, 20, 24), dtype=np.uint16)
    tifffile.imwrite(root / "images" / "a.tif", planes, imagej=True, metadata={"axes": "CYX"})
    labels = np.zeros((20, 24), np.uint16)
    labels[3:9, 4:12] = 1
    write_labels(root / "labels" / "a.tif", labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export(root, "geojson", tmp_path / "geojson")
        export(root, "stardist", tmp_path / "stardist")
    assert (tmp_path / "stardist" / "images" / "a.tif").read_bytes() == \
        (root / "images" / "a.tif").read_bytes()
    features = json.loads((tmp_path / "geojson" / "a.geojson").read_text())["features"]
    assert len(features) == 1


@pytest.mark.parametrize("to", ["cellpose", "stardist", "coco"])
def test_the_pixel_size_a_datasets_meta_json_states_survives_the_export(dataset, tmp_path, to):
    """A dataset at 0.346 um/px (its meta.json) exported to Cellpose or StarDist read back
    as "pixel size unknown": the PNGs were copied as they are and no meta.json written."""
    (dataset / "meta.json").write_text(json.dumps({"pixel_size_um": 0.346}))
    export(dataset, to, tmp_path / to)
    assert json.loads((tmp_path / to / "meta.json").read_text())["pixel_size_um"] == 0.346
    if to != "coco":
        assert load_dataset(tmp_path / to).pixel_size_um == 0.346
    (dataset / "meta.json").unlink()  # nothing stated, nothing invented
    export(dataset, to, tmp_path / f"{to}_none")
    assert not (tmp_path / f"{to}_none" / "meta.json").exists()


def test_geojson_cells_of_a_prediction_carry_their_score_and_area_in_um2(dataset, tmp_path):
    """A QuPath user filters detections by confidence: the scores were in the prediction's
    detections table and COCO export, not in its GeoJSON."""
    pred = _prediction(dataset, tmp_path / "pred", str(dataset))
    meta = json.loads((pred / "meta.json").read_text())
    meta["images_pixel_size_um"]["a"]["pixel_size_um"] = 0.5
    (pred / "meta.json").write_text(json.dumps(meta))
    (pred / "detections").mkdir()
    (pred / "detections" / "a.csv").write_text("id,score\n1,0.91\n2,0.97\n")
    export(pred, "geojson", tmp_path / "g")
    cells = json.loads((tmp_path / "g" / "a.geojson").read_text())["features"]
    measured = [c["properties"]["measurements"] for c in cells]
    assert [(m["label"], m["score"], m["area_px"], m["area_um2"]) for m in measured][0] == (
        1, 0.91, 140, 35.0)  # the 10 x 14 rectangle, 0.25 um² per pixel
    assert measured[1]["score"] == 0.97
    b = json.loads((tmp_path / "g" / "b.geojson").read_text())["features"]
    assert all("score" not in c["properties"]["measurements"]
               and "area_um2" not in c["properties"]["measurements"] for c in b)


def test_a_coco_export_read_back_says_its_annotations_are_not_read(dataset, tmp_path, caplog):
    """inspect of a COCO export said '2 images (0 with labels)' and nothing of its
    annotations.json."""
    import logging

    from cellsynth.hardware import forget_announcements

    export(dataset, "coco", tmp_path / "c")
    forget_announcements()
    with caplog.at_level(logging.INFO, logger="cellsynth"):
        back = load_dataset(tmp_path / "c")
    assert [s.label_path for s in back] == [None, None]
    assert "c/annotations.json: COCO annotations are not read" in caplog.text


def test_coco_annotations_of_a_prediction_carry_their_score(dataset, tmp_path):
    """COCO's detection results carry a score per annotation (pycocotools ranks by it for
    AP); a dataset's cells, which have none, carry none."""
    pred = _prediction(dataset, tmp_path / "pred", str(dataset))
    (pred / "detections").mkdir()
    (pred / "detections" / "a.csv").write_text("id,score\n1,0.91\n2,0.97\n")
    export(pred, "coco", tmp_path / "c")
    coco = json.loads((tmp_path / "c" / "annotations.json").read_text())
    image_a = next(i["id"] for i in coco["images"] if i["file_name"].startswith("a"))
    scores = sorted(a.get("score") for a in coco["annotations"] if a["image_id"] == image_a)
    assert scores == [0.91, 0.97]
    assert all("score" not in a for a in coco["annotations"] if a["image_id"] != image_a)


def _blobs(height: int, width: int, seed: int) -> np.ndarray:
    """Cells of 3-40 rows, some in two pieces or with a hole, many across any row band."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((height, width), np.uint32)
    yy, xx = np.mgrid[:height, :width]
    for index in range(1, 41):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ry, rx = rng.uniform(1.5, 20), rng.uniform(1.5, 8)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        if index % 7 == 0:  # a hole
            inside &= ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 > 0.2
        labels[inside] = index
        if index % 5 == 0:  # a second piece below it
            labels[min(int(cy + ry) + 3, height - 2):min(int(cy + ry) + 5, height),
                   int(cx):int(cx) + 2] = index
    return labels


class _Reads:
    """A lazy (H, W) array that records the rows of every read, as a Zarr level is read."""

    def __init__(self, array):
        self.array, self.shape, self.dtype, self.rows = array, array.shape, array.dtype, []

    def __getitem__(self, key):
        rows = range(*key[0].indices(self.shape[0]))
        self.rows.append(len(rows))
        return self.array[key]


def test_cells_of_a_lazy_label_image_are_read_in_row_bands_and_come_out_the_same():
    """A whole section's labels are read in bands of rows (each band down to the lowest row
    of the cells starting in it), never whole, and give every cell as the image decoded at
    once does: outline, holes, pieces, mask."""
    from cellsynth.io.export import cell_shapes, label_shapes

    labels = _blobs(240, 64, seed=0)
    whole = {index: (pieces, mask, box) for index, pieces, mask, box in cell_shapes(labels)}
    assert len(whole) == len(np.unique(labels)) - 1 > 30
    lazy = _Reads(labels)
    banded = list(cell_shapes(lazy, band_pixels=16 * 64))
    # never the whole image: 15 bands, then those where cells start, each to their lowest row
    assert max(lazy.rows) < 16 + 41 and 15 < len(lazy.rows) <= 2 * 15
    assert sorted(i for i, *_ in banded) == sorted(whole)
    for index, pieces, mask, box in banded:
        assert box == whole[index][2]
        np.testing.assert_array_equal(mask, labels[box] == index)
        assert len(pieces) == len(whole[index][0])
        for piece, same in zip(pieces, whole[index][0]):
            for ring, same_ring in zip(piece, same, strict=True):
                np.testing.assert_array_equal(ring, same_ring)
    assert label_shapes(labels).keys() == whole.keys()
    # ids in the millions, as a section's are by its last rows: the same cells, renumbered
    high = np.where(labels > 0, labels + 5_000_000, 0).astype(np.uint32)
    assert sorted(i - 5_000_000 for i, *_ in cell_shapes(_Reads(high), band_pixels=16 * 64)) \
        == sorted(whole)


def test_coco_rle_of_a_cell_from_its_box_decodes_to_its_mask():
    """The RLE of a cell in two pieces with a hole, built from its box alone (a section's
    full mask was 268 MB a cell), decodes (column-major runs, background first) to the
    mask in the full image."""
    from cellsynth.io.export import _coco_rle

    labels = np.zeros((30, 20), np.uint8)
    labels[5:12, 3:9] = 1
    labels[8, 5] = 0  # a hole
    labels[14:16, 4:6] = 1  # a second piece
    labels[29, 19] = 1  # the last pixel
    box = (slice(5, 30), slice(3, 20))
    rle = _coco_rle(labels[box] == 1, box, labels.shape)
    assert rle == _coco_rle(labels == 1)
    runs = np.repeat(np.arange(len(rle["counts"])) % 2, rle["counts"]).astype(bool)
    np.testing.assert_array_equal(runs.reshape(rle["size"], order="F"), labels == 1)
    first = _coco_rle(np.ones((1, 1), bool), (slice(0, 1), slice(0, 1)), (3, 2))
    assert first["counts"] == [0, 1, 5]  # starts on a cell: an empty background run first


def test_geojson_and_coco_of_an_ome_zarr_prediction_are_the_same_read_in_bands(
        tmp_path, monkeypatch):
    """A whole section's prediction (labels/<id>.ome.zarr) exports from row bands: the
    GeoJSON features and COCO annotations equal those of the labels decoded whole."""
    import cellsynth.io.export as export_module
    from cellsynth.io.ome_zarr import write_labels_zarr

    labels = _blobs(240, 64, seed=1)
    pred = tmp_path / "pred"
    (pred / "labels").mkdir(parents=True)
    write_labels_zarr(pred / "labels" / "slide.ome.zarr", labels, pixel_size_um=0.5, chunk=32)
    (pred / "meta.json").write_text(json.dumps({
        "stage": "predict", "images": str(tmp_path / "slide.tif"),
        "images_pixel_size_um": {"slide": {"file": "slide.tif", "pixel_size_um": 0.5}}}))
    outs = {}
    for how, band in (("whole", 1 << 26), ("bands", 20 * 64)):
        monkeypatch.setattr(export_module, "BAND_PIXELS", band)
        for to in ("geojson", "coco"):
            summary = export(pred, to, tmp_path / f"{to}-{how}")
            assert summary["n_instances"] == len(np.unique(labels)) - 1
        outs[how] = (json.loads((tmp_path / f"geojson-{how}" / "slide.geojson").read_text()),
                     json.loads((tmp_path / f"coco-{how}" / "annotations.json").read_text()))
    key = lambda f: f["properties"]["measurements"]["label"]  # noqa: E731
    assert sorted(outs["bands"][0]["features"], key=key) == \
        sorted(outs["whole"][0]["features"], key=key)
    by_area = {f["properties"]["measurements"]["label"]:
               f["properties"]["measurements"]["area_px"] for f in outs["bands"][0]["features"]}
    assert by_area == {i: int((labels == i).sum()) for i in by_area}
    ann = lambda a: (a["bbox"], a["area"], json.dumps(a["segmentation"]))  # noqa: E731
    assert sorted(map(ann, outs["bands"][1]["annotations"])) == \
        sorted(map(ann, outs["whole"][1]["annotations"]))
    assert any(isinstance(a["segmentation"], dict) for a in outs["bands"][1]["annotations"])


def _grid_labels(step: int, size: int = 1024) -> np.ndarray:
    """Disks of diameter ~0.8 step on a grid, one id each."""
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.uint32)
    k = 0
    for cy in range(step // 2, size, step):
        for cx in range(step // 2, size, step):
            k += 1
            disk = (yy[cy - step // 2:cy + step // 2, cx - step // 2:cx + step // 2] - cy) ** 2 \
                + (xx[cy - step // 2:cy + step // 2, cx - step // 2:cx + step // 2] - cx) ** 2
            labels[cy - step // 2:cy + step // 2, cx - step // 2:cx + step // 2][
                disk < (0.4 * step) ** 2] = k
    return labels


def test_coco_export_memory_does_not_grow_with_the_cells(tmp_path):
    """Annotations wait on disk until annotations.json is written (a section's cells held as
    one document grew ~10 KB a cell)."""
    import tracemalloc

    peaks = []
    for rows in (64, 256):  # 256 and 1024 cells alike in the same 256^2 image
        root = tmp_path / f"d{rows}"
        (root / "images").mkdir(parents=True)
        (root / "labels").mkdir()
        labels = _grid_labels(8, size=256)
        labels[rows:] = 0
        write_image(root / "images" / "a.png", np.zeros(labels.shape, np.uint8))
        write_labels(root / "labels" / "a.tif", labels)
        export(root, "coco", tmp_path / f"warm{rows}")  # (imports are not what is measured)
        tracemalloc.start()
        result = export(root, "coco", tmp_path / f"c{rows}")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert result["n_instances"] == len(np.unique(labels)) - 1
    coco = json.loads((tmp_path / "c256" / "annotations.json").read_text())
    assert [a["id"] for a in coco["annotations"]] == list(range(1, 1025))
    assert coco["categories"] == [{"id": 1, "name": "cell"}]
    per_cell = (peaks[1] - peaks[0]) / (1024 - 256)
    assert per_cell < 300, per_cell  # (~1.7 KB a cell held in memory)
