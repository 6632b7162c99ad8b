"""QuPath's exported outlines (labels/<id>.geojson) read as instance labels."""

import json
import logging

import numpy as np
import pytest

from cellsynth.cli import main
from cellsynth.errors import ImageReadError
from cellsynth.evaluate.matching import evaluate_folders
from cellsynth.hardware import forget_announcements
from cellsynth.io.datasets import load_dataset
from cellsynth.io.export import _geojson
from cellsynth.io.geojson import read_geojson_labels
from cellsynth.io.images import read_labels, write_image, write_labels
from cellsynth.segment.data import load_labeled


def _square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _feature(rings, object_type=None, kind="Polygon"):
    properties = {"objectType": object_type} if object_type else {}
    return {"type": "Feature", "geometry": {"type": kind, "coordinates": rings},
            "properties": properties}


def _cells(shape=(40, 48)):
    """Three blobs of different shapes, ids not contiguous."""
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    labels = np.zeros(shape, np.uint16)
    labels[(yy - 10) ** 2 + (xx - 12) ** 2 <= 36] = 3
    labels[(yy - 28) ** 2 / 49 + (xx - 30) ** 2 / 100 <= 1] = 7
    labels[5:12, 35:44] = 9
    return labels


def test_pixels_whose_centre_is_inside_belong_to_the_cell_and_holes_stay_empty(tmp_path):
    path = tmp_path / "a.geojson"
    # QuPath's convention: pixel (r, c) covers [c, c+1) x [r, r+1); a square from (2, 2) to
    # (6, 6) holds the 16 pixels of rows and columns 2-5; the hole (3, 3)-(5, 5) removes 4
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        _feature([_square(2, 2, 6, 6), _square(3, 3, 5, 5)]),
        _feature([[_square(8, 1, 10, 2)], [_square(8, 5, 9, 7)]], kind="MultiPolygon")]}))
    labels = read_geojson_labels(path, (8, 12))
    expected = np.zeros((8, 12), np.uint32)
    expected[2:6, 2:6] = 1
    expected[3:5, 3:5] = 0
    expected[1, 8:10] = 2  # both parts of the MultiPolygon are one cell
    expected[5:7, 8] = 2
    np.testing.assert_array_equal(labels, expected)


def test_a_cell_inside_another_cells_hole_is_kept_whatever_the_order(tmp_path):
    """A ring drawn after a cell in its hole filled the hole over that cell and then cleared
    it: 1 instance instead of 2 (the other order gave 2)."""
    inner = _feature([_square(4, 4, 6, 6)])
    ring = _feature([_square(1, 1, 9, 9), _square(3, 3, 7, 7)])
    expected_ring = np.zeros((10, 10), bool)
    expected_ring[1:9, 1:9] = True
    expected_ring[3:7, 3:7] = False
    for order, ids in (([inner, ring], (1, 2)), ([ring, inner], (2, 1))):
        path = tmp_path / "a.geojson"
        path.write_text(json.dumps({"type": "FeatureCollection", "features": order}))
        labels = read_geojson_labels(path, (10, 10))
        assert (labels[4:6, 4:6] == ids[0]).all() and (labels == ids[0]).sum() == 4
        np.testing.assert_array_equal(labels == ids[1], expected_ring)


def test_what_cellsynth_exports_reads_back_as_the_same_cells(tmp_path):
    labels = _cells()
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps(_geojson(labels, "a")))
    back = read_geojson_labels(path, labels.shape)
    assert len(np.unique(back)) == len(np.unique(labels)) == 4
    for old in (3, 7, 9):  # every cell maps onto exactly one new id, pixel for pixel
        new = np.unique(back[labels == old])
        assert len(new) == 1 and new[0] > 0
        np.testing.assert_array_equal(back == new[0], labels == old)


def test_qupath_regions_are_not_cells_when_detections_are_present(tmp_path, caplog):
    path = tmp_path / "a.geojson"
    # QuPath's older export: a bare list; the region that was searched is an annotation
    path.write_text(json.dumps([
        _feature([_square(0, 0, 20, 20)], "annotation"),
        _feature([_square(2, 2, 5, 5)], "detection"),
        _feature([_square(10, 10, 14, 13)], "cell"),
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 1]},
         "properties": {"objectType": "detection"}}]))
    forget_announcements()
    with caplog.at_level(logging.INFO, logger="cellsynth"):
        labels = read_geojson_labels(path, (20, 20))
    assert np.bincount(labels.ravel()).tolist() == [400 - 9 - 12, 9, 12]
    assert "a.geojson: 1 feature(s) that are not polygons" in caplog.text
    # cells drawn by hand beside QuPath's detections (annotations enclosing no detection)
    # are cells; the region around them is not
    path.write_text(json.dumps([
        _feature([_square(0, 0, 20, 20)], "annotation"),
        _feature([_square(2, 2, 5, 5)], "detection"),
        _feature([_square(10, 10, 14, 13)], "detection"),
        _feature([_square(15, 1, 19, 4)], "annotation")]))
    assert np.bincount(read_geojson_labels(path, (20, 20)).ravel()).tolist() == [
        400 - 9 - 12 - 12, 9, 12, 12]
    # annotations alone are the cells (what someone who outlined cells by hand exports)
    path.write_text(json.dumps([_feature([_square(2, 2, 5, 5)], "annotation"),
                                _feature([_square(10, 10, 14, 13)], "annotation")]))
    assert np.bincount(read_geojson_labels(path, (20, 20)).ravel()).tolist() == [379, 9, 12]
    # ... and the region rectangle drawn around them is still a region: it was one "cell"
    # of the whole image less the cells (65 % of an image in a fresh user's audit), there
    # being no detection beside it to tell it by; nested in it, one cell holding another's
    # centre in its hole stays a cell
    forget_announcements()
    path.write_text(json.dumps([
        _feature([_square(0, 0, 20, 20)], "annotation"),
        _feature([_square(2, 2, 5, 5)], "annotation"),
        _feature([_square(10, 10, 18, 18), _square(12, 12, 16, 16)], "annotation"),
        _feature([_square(13, 13, 15, 15)], "annotation")]))
    with caplog.at_level(logging.INFO, logger="cellsynth"):
        labels = read_geojson_labels(path, (20, 20))
    assert np.bincount(labels.ravel()).tolist() == [400 - 9 - 48 - 4, 9, 48, 4]
    assert "a.geojson: 1 annotation(s) enclosing 2 or more other objects are regions" \
        in caplog.text


def _qupath_dataset(root, labels):
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    write_image(root / "images" / "a.png", np.where(labels > 0, 200, 30).astype(np.uint8))
    (root / "labels" / "a.geojson").write_text(json.dumps(_geojson(labels, "a")))


def test_a_folder_of_images_and_qupath_outlines_trains_evaluates_and_inspects(tmp_path, capsys):
    labels = _cells()
    root = tmp_path / "qupath"
    _qupath_dataset(root, labels)
    dataset = load_dataset(root, require_labels=True)
    image, read = dataset[0].read()
    assert read.shape == image.shape[:2] == labels.shape
    assert len(np.unique(read)) == 4
    np.testing.assert_array_equal(dataset[0].read_labels() > 0, labels > 0)  # size from image
    item = load_labeled([root])[0]
    np.testing.assert_array_equal(item.labels > 0, labels > 0)
    # scored against a label image of the same cells: perfect; against one cell fewer: not
    pred = tmp_path / "pred"
    pred.mkdir()
    write_labels(pred / "a.tif", labels)
    assert evaluate_folders(root, pred).total.f1[0] == 1.0
    write_labels(pred / "a.tif", np.where(labels == 9, 0, labels))
    assert evaluate_folders(root, pred).total.f1[0] == pytest.approx(0.8)
    assert main(["inspect", str(root)]) == 0
    assert "instances    3 total" in capsys.readouterr().out


def test_a_broken_geojson_file_is_one_line_naming_it(tmp_path, capsys):
    root = tmp_path / "broken"
    _qupath_dataset(root, _cells())
    (root / "labels" / "a.geojson").write_text('{"type": "FeatureCollection", "features": [')
    with pytest.raises(ImageReadError, match=r"a\.geojson: cannot read GeoJSON"):
        load_dataset(root)[0].read()
    assert main(["inspect", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "a.geojson: cannot read GeoJSON" in err
    ragged = _feature([[[0, 0], [3, 0, 1, 2], "x"]], "detection")  # a mangled ring
    (root / "labels" / "a.geojson").write_text(json.dumps([ragged]))
    with pytest.raises(ImageReadError, match="not a list of finite"):
        load_dataset(root)[0].read()
    (root / "labels" / "a.geojson").write_text(json.dumps({"cells": []}))
    with pytest.raises(ImageReadError, match="not GeoJSON features"):
        load_dataset(root)[0].read()


def _qupath_cells(path):
    """Two QuPath cells (a cell outline expanded around a nucleus) and one detection
    without a nucleus, as QuPath's cell detection exports them."""
    cells = [_feature([_square(1, 1, 9, 9)], "cell"), _feature([_square(11, 1, 19, 9)], "cell")]
    cells[0]["nucleusGeometry"] = {"type": "Polygon", "coordinates": [_square(3, 3, 6, 6)]}
    cells[1]["nucleusGeometry"] = {"type": "Polygon", "coordinates": [_square(13, 4, 17, 7)]}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": cells + [
        _feature([_square(1, 12, 3, 14)], "detection")]}))


def test_qupath_cells_give_their_cell_or_their_nucleus_outline(tmp_path, caplog):
    path = tmp_path / "a.geojson"
    _qupath_cells(path)
    forget_announcements()
    with caplog.at_level(logging.INFO, logger="cellsynth"):
        cells = read_geojson_labels(path, (20, 20))
    assert np.bincount(cells.ravel()).tolist() == [400 - 64 - 64 - 4, 64, 64, 4]
    assert "carry nucleus outlines too" in caplog.text and '"nucleus"' in caplog.text
    nuclei = read_geojson_labels(path, (20, 20), geometry="nucleus")
    # 3x3 and 4x3 nuclei; the detection without one keeps its outline
    assert np.bincount(nuclei.ravel()).tolist() == [400 - 9 - 12 - 4, 9, 12, 4]
    assert (nuclei[3:6, 3:6] == 1).all() and (nuclei[4:7, 13:17] == 2).all()
    with pytest.raises(ValueError, match="geometry must be one of"):
        read_geojson_labels(path, (20, 20), geometry="membrane")


def test_a_dataset_folder_chooses_the_nucleus_outline_in_its_meta_json(tmp_path, capsys):
    root = tmp_path / "qupath"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    write_image(root / "images" / "a.png", np.arange(400, dtype=np.uint8).reshape(20, 20))
    _qupath_cells(root / "labels" / "a.geojson")
    assert (load_dataset(root)[0].read()[1] > 0).sum() == 132  # default: cell outlines
    (root / "meta.json").write_text(json.dumps({"geojson_geometry": "nucleus"}))
    _, labels = load_dataset(root)[0].read()
    assert (labels > 0).sum() == 25
    assert load_labeled([root])[0].labels.max() == 3
    # evaluate reads the ground truth's nuclei too: predicted nuclei match all 3 exactly
    pred = tmp_path / "pred"
    pred.mkdir()
    write_labels(pred / "a.tif", labels)
    assert evaluate_folders(root, pred).total.f1[0] == 1.0
    out = tmp_path / "out"
    assert main(["export", str(root), "--to", "stardist", "--out", str(out)]) == 0
    np.testing.assert_array_equal(read_labels(out / "masks" / "a.tif") > 0, labels > 0)
    (root / "meta.json").write_text(json.dumps({"geojson_geometry": "membrane"}))
    assert main(["inspect", str(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "meta.json: geojson_geometry must be one of" in err


def test_predictions_exported_as_annotations_come_back_as_corrected_labels(tmp_path):
    """The correction loop: predictions -> QuPath annotations (editable there) -> a cell
    deleted and one drawn by hand -> read back as the image's labels."""
    labels = _cells()
    pred = tmp_path / "pred"
    (pred / "labels").mkdir(parents=True)
    write_labels(pred / "labels" / "a.tif", labels)
    (pred / "meta.json").write_text(json.dumps({"source": "cellsynth predict"}))
    out = tmp_path / "qupath"
    assert main(["export", str(pred), "--to", "geojson", "--objects", "annotation",
                 "--out", str(out)]) == 0
    data = json.loads((out / "a.geojson").read_text())
    assert {f["properties"]["objectType"] for f in data["features"]} == {"annotation"}
    removed = data["features"].pop(0)  # the user deletes one cell and draws a missing one
    data["features"].append(_feature([_square(1, 30, 6, 36)], "annotation"))
    (out / "a.geojson").write_text(json.dumps(data))
    back = read_geojson_labels(out / "a.geojson", labels.shape)
    assert len(np.unique(back)) == 4  # 3 - 1 + 1 cells and background
    gone = removed["properties"]["measurements"]["label"]
    assert not back[labels == gone].any()
    assert (back[30:36, 1:6] > 0).all()


def test_a_ring_cell_around_two_cells_exported_as_annotations_reads_back_as_three(tmp_path):
    """A cell whose hole holds two other cells, exported as QuPath annotations, was read
    back as a region around them (its outer ring encloses their centres): one cell lost
    and the image trained inside a box (audit). Centres in its hole are beside it, not in
    it; a region with a hole around cells inside its ring stays a region."""
    labels = np.zeros((80, 80), np.uint16)
    labels[10:70, 10:70] = 1
    labels[20:60, 20:60] = 0
    labels[25:35, 25:35], labels[45:55, 45:55], labels[72:78, 2:8] = 2, 3, 4
    data = _geojson(labels, "r", "annotation")
    assert {f["properties"]["objectType"] for f in data["features"]} == {"annotation"}
    (tmp_path / "r.geojson").write_text(json.dumps(data))
    back = read_geojson_labels(tmp_path / "r.geojson", labels.shape)
    assert len(np.unique(back)) == 5
    for old in (1, 2, 3, 4):
        new = np.unique(back[labels == old])
        assert len(new) == 1 and new[0] > 0
        np.testing.assert_array_equal(back == new[0], labels == old)
    cells = [_feature([_square(22, 22, 28, 28)]), _feature([_square(32, 32, 38, 38)])]
    region = _feature([_square(0, 0, 60, 60), _square(50, 50, 55, 55)], "annotation")
    (tmp_path / "s.geojson").write_text(json.dumps({"type": "FeatureCollection",
                                                    "features": [region] + cells}))
    assert np.unique(read_geojson_labels(tmp_path / "s.geojson", (64, 64))).tolist() == [0, 1, 2]


def test_objects_for_a_format_without_them_is_one_line(tmp_path, capsys):
    """`export --to cellpose --objects annotation` ignored --objects without a word."""
    pred = tmp_path / "pred"
    (pred / "labels").mkdir(parents=True)
    write_labels(pred / "labels" / "a.tif", _cells())
    assert main(["export", str(pred), "--to", "cellpose", "--objects", "annotation",
                 "--out", str(tmp_path / "cp")]) == 2
    err = capsys.readouterr().err
    assert "--objects sets QuPath's object type of --to geojson; --to cellpose has none" in err
    assert not (tmp_path / "cp").exists()


def test_outlines_that_miss_the_image_are_said_to(tmp_path):
    """GeoJSON in a whole slide's coordinates beside a crop of it drew no cell and said
    nothing: `train` trained on empty labels."""
    import warnings

    path = tmp_path / "a.geojson"
    path.write_text(json.dumps([_feature([_square(2000, 2000, 2005, 2005)], "annotation"),
                                _feature([_square(3000, 10, 3004, 14)], "annotation")]))
    with pytest.warns(UserWarning, match=r"a\.geojson: 2 of 2 polygon\(s\) cover no pixel of "
                                         r"the 20x20 image \(outlines in another image's"):
        assert not read_geojson_labels(path, (20, 20)).any()
    path.write_text(json.dumps([_feature([_square(2, 2, 5, 5)], "annotation"),
                                _feature([_square(3000, 10, 3004, 14)], "annotation")]))
    with pytest.warns(UserWarning, match=r"1 of 2 polygon\(s\) cover no pixel of the 20x20 "
                                         r"image$"):
        read_geojson_labels(path, (20, 20))
    path.write_text(json.dumps([_feature([_square(2, 2, 5, 5)], "annotation")]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_geojson_labels(path, (20, 20)).sum() == 9


@pytest.mark.parametrize("factor", [2, 4])
def test_outlines_exported_at_a_coarser_level_read_back_without_growing(tmp_path, factor):
    """Cells predicted at pyramid level 1 and exported to level 0's pixels read back 2.4 %
    larger: the cut corners of the outlines, scaled up, pass exactly through level-0 pixel
    centres, and all of those were counted in. Ties now split by side: the area read back
    is the polygons' own (within 0.5 %), and level 0 still reads back pixel for pixel."""
    from scipy import ndimage as ndi

    field = ndi.gaussian_filter(np.random.default_rng(3).random((128, 128)), 4)
    labels, _ = ndi.label(field > np.percentile(field, 75))

    def area(points):
        x, y = np.asarray(points)[:, 0], np.asarray(points)[:, 1]
        return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))

    data = _geojson(labels, "a", scale=(factor, factor))
    polygons = sum(area(poly[0]) - sum(area(h) for h in poly[1:])
                   for f in data["features"]
                   for poly in ([f["geometry"]["coordinates"]]
                                if f["geometry"]["type"] == "Polygon"
                                else f["geometry"]["coordinates"]))
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps(data))
    back = read_geojson_labels(path, (128 * factor, 128 * factor))
    assert (back > 0).sum() / polygons == pytest.approx(1.0, abs=0.005)
    upsampled = np.kron(labels > 0, np.ones((factor, factor), bool))
    assert (back > 0).sum() / upsampled.sum() < 1.005  # (was 1.024 at level 1 -> 0)
    path.write_text(json.dumps(_geojson(labels, "a")))
    np.testing.assert_array_equal(read_geojson_labels(path, labels.shape) > 0, labels > 0)


def test_cells_annotated_in_a_region_train_and_score_inside_it_only(tmp_path, caplog):
    """A biologist outlines the cells of one rectangle of a larger image in QuPath: the cells
    outside it are not annotated, so they must not teach or score as background. The image
    trains inside the region's box only, and a prediction that also finds the unannotated
    cells scores as perfect (they were false positives, and whole-image background)."""
    from cellsynth.io.geojson import read_geojson_regions

    labels = np.zeros((60, 80), np.uint16)
    for i, (y, x) in enumerate([(10, 10), (30, 20), (50, 30), (12, 55), (40, 65)], start=1):
        labels[y - 4:y + 4, x - 4:x + 4] = i  # cells 4 and 5 lie right of x = 45
    root = tmp_path / "part"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    write_image(root / "images" / "a.png", np.where(labels > 0, 200, 30).astype(np.uint8))
    outlined = _geojson(np.where(labels <= 3, labels, 0), "a")["features"]
    for feature in outlined:
        feature["properties"]["objectType"] = "annotation"  # (drawn by hand)
    region = _feature([_square(0, 0, 45, 60)], "annotation")
    (root / "labels" / "a.geojson").write_text(json.dumps(
        {"type": "FeatureCollection", "features": [region, *outlined]}))
    assert read_geojson_regions(root / "labels" / "a.geojson", (60, 80)) == [
        (slice(0, 60), slice(0, 45))]
    forget_announcements()
    with caplog.at_level(logging.INFO, logger="cellsynth"):
        items = load_labeled([root])
    assert "a.geojson: cells annotated in 1 region(s); trained and validated inside them " \
        "only" in caplog.text
    assert [item.labels.shape for item in items] == [(60, 45)]  # (it was the whole 60x80)
    assert len(np.unique(items[0].labels)) == 4  # background and the 3 outlined cells
    pred = tmp_path / "pred"
    pred.mkdir()
    write_labels(pred / "a.tif", labels)  # every cell found, the 2 unannotated ones too
    assert evaluate_folders(root, pred).total.f1[0] == 1.0
    # and a run's report draws the region as scored: its 3 cells found, nothing false (the
    # whole image showed the 2 unannotated cells as false detections)
    from cellsynth.pipeline.report import _outcome_pictures, _scored_test_images

    run = tmp_path / "run"
    (run / "evaluate").mkdir(parents=True)
    (run / "evaluate" / "metrics.json").write_text("{}")
    (run / "config.yaml").write_text(json.dumps({"real": {"test": str(root)}}))
    (run / "predict").mkdir()
    pred.rename(run / "predict" / "labels")
    shown = _scored_test_images(run)
    assert [(name, image.shape[:2]) for name, image, *_ in shown] == [("a@0", (60, 45))]
    assert _outcome_pictures(shown)[1] == [{"tp": 3, "fp": 0, "fn": 0}]
    (run / "predict" / "labels").rename(pred)
    write_labels(pred / "a.tif", np.where(labels == 2, 0, labels))  # one annotated missed
    assert evaluate_folders(root, pred).total.f1[0] == pytest.approx(0.8)
    # a region that is not a rectangle is used by its box, and said
    region["geometry"]["coordinates"] = [[[0, 0], [45, 0], [45, 60], [0, 60], [0, 30],
                                          [20, 30], [0, 0]]]
    (root / "labels" / "a.geojson").write_text(json.dumps(
        {"type": "FeatureCollection", "features": [region, *outlined]}))
    forget_announcements()
    with caplog.at_level(logging.INFO, logger="cellsynth"):
        boxes = read_geojson_regions(root / "labels" / "a.geojson", (60, 80))
    assert boxes == [(slice(0, 60), slice(0, 45))]
    assert "a.geojson: 1 of 1 region(s) are not rectangles" in caplog.text


def test_inspect_says_which_outlined_cells_lie_outside_the_regions(tmp_path, capsys):
    """inspect counted a cell outlined outside every region with the others and said
    nothing, where training and export say it is not used (audit)."""
    labels = np.zeros((40, 60), np.uint16)
    for i, (y, x) in enumerate([(10, 10), (30, 20), (20, 50)], start=1):
        labels[y - 4:y + 4, x - 4:x + 4] = i  # cell 3 lies right of x = 35
    root = tmp_path / "part"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    write_image(root / "images" / "a.png", np.where(labels > 0, 200, 30).astype(np.uint8))
    cells = _geojson(labels, "a")["features"]
    region = _feature([_square(0, 0, 35, 40)], "annotation")
    (root / "labels" / "a.geojson").write_text(json.dumps(
        {"type": "FeatureCollection", "features": [region, *cells]}))
    forget_announcements()
    assert main(["inspect", str(root)]) == 0
    assert "a.geojson: 1 cell(s) lie outside its 1 annotated region(s) and are not used" in \
        capsys.readouterr().err


def test_a_region_annotated_file_is_parsed_once_for_its_cells_and_regions(tmp_path,
                                                                           monkeypatch):
    """Loading a region-annotated image reads its cells and then its regions from the same
    file; a QuPath export of a section holds 10^5 cells, so it is parsed once while
    unchanged, and again once it changes."""
    import cellsynth.io.geojson as geojson

    labels = np.zeros((40, 40), np.uint16)
    labels[5:12, 5:12], labels[20:28, 8:16] = 1, 2
    outlined = _geojson(labels, "a")["features"]
    for feature in outlined:
        feature["properties"]["objectType"] = "annotation"
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        _feature([_square(0, 0, 30, 40)], "annotation"), *outlined]}))
    parsed = []
    real = geojson._read_features
    monkeypatch.setattr(geojson, "_read_features", lambda p: parsed.append(p) or real(p))
    cells = geojson.read_geojson_labels(path, (40, 40))
    boxes = geojson.read_geojson_regions(path, (40, 40))
    assert len(parsed) == 1
    assert len(np.unique(cells)) == 3 and boxes == [(slice(0, 40), slice(0, 30))]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": outlined}))
    assert geojson.read_geojson_regions(path, (40, 40)) == []  # (the new file, read again)
    assert len(parsed) == 2


def _region_dataset(tmp_path, with_outside: bool = False):
    """An 60 x 80 image whose left 45 columns (a QuPath region) hold 3 hand-drawn cells;
    ``with_outside``: one more cell drawn right of the region."""
    labels = np.zeros((60, 80), np.uint16)
    for i, (y, x) in enumerate([(10, 10), (30, 20), (50, 30), (12, 60)], start=1):
        labels[y - 4:y + 4, x - 4:x + 4] = i
    root = tmp_path / "part"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    write_image(root / "images" / "a.png", np.where(labels > 0, 200, 30).astype(np.uint8))
    drawn = _geojson(np.where(labels <= (4 if with_outside else 3), labels, 0), "a")["features"]
    for feature in drawn:
        feature["properties"]["objectType"] = "annotation"
    region = _feature([_square(0, 0, 45, 60)], "annotation")
    (root / "labels" / "a.geojson").write_text(json.dumps(
        {"type": "FeatureCollection", "features": [region, *drawn]}))
    return root, labels


@pytest.mark.parametrize("to", ["cellpose", "stardist", "coco"])
def test_an_export_of_a_region_annotated_image_is_its_region(tmp_path, caplog, to):
    """The export drew the whole 60 x 80 image as annotated: a detector trained or scored
    on it met every cell outside the region as background (F1 0.75 where it was 1)."""
    from cellsynth.io.export import export

    root, labels = _region_dataset(tmp_path)
    forget_announcements()
    with caplog.at_level(logging.INFO, logger="cellsynth"):
        summary = export(root, to, tmp_path / to)
    assert (summary["n_images"], summary["n_instances"]) == (1, 3)
    assert "the cells of 1 QuPath region(s) written as images of their own" in caplog.text
    if to == "coco":
        coco = json.loads((tmp_path / to / "annotations.json").read_text())
        assert [(i["file_name"], i["height"], i["width"]) for i in coco["images"]] == [
            ("images/a_region1.tif", 60, 45)]
        assert len(coco["annotations"]) == 3
        return
    back = load_dataset(tmp_path / to, require_labels=True)
    assert [s.id for s in back] == ["a_region1"]
    image, region_labels = back[0].read()
    assert image.shape[:2] == (60, 45)
    np.testing.assert_array_equal(region_labels > 0, labels[:, :45] > 0)


def test_a_geojson_export_keeps_the_region_and_reads_back_as_it(tmp_path):
    from cellsynth.io.export import export
    from cellsynth.io.geojson import read_geojson_regions

    root, _ = _region_dataset(tmp_path)
    export(root, "geojson", tmp_path / "g")
    data = json.loads((tmp_path / "g" / "a.geojson").read_text())
    assert [f["properties"].get("classification") for f in data["features"]][-1] == {
        "name": "Region*"}
    assert read_geojson_regions(tmp_path / "g" / "a.geojson", (60, 80)) == [
        (slice(0, 60), slice(0, 45))]
    assert read_geojson_labels(tmp_path / "g" / "a.geojson", (60, 80)).max() == 3


def test_cells_outside_every_region_are_said_and_a_classed_cell_drawn_over_is_a_cell(
        tmp_path, caplog):
    """A cell drawn outside the region was left out of training and scoring in silence; a
    'Neuron' with two 'Neuron's drawn over it was taken for a region."""
    from cellsynth.io.geojson import read_geojson_regions

    root, _ = _region_dataset(tmp_path, with_outside=True)
    forget_announcements()
    with caplog.at_level(logging.INFO, logger="cellsynth"):
        read_geojson_regions(root / "labels" / "a.geojson", (60, 80))
    assert "a.geojson: 1 cell(s) lie outside its 1 annotated region(s) and are not used" \
        in caplog.text
    neuron = {"name": "Neuron", "colorRGB": -3670016}
    big = _feature([_square(2, 2, 40, 40)], "annotation")
    small = [_feature([_square(x, 5, x + 6, 11)], "annotation") for x in (5, 20)]
    for feature in (big, *small):
        feature["properties"]["classification"] = neuron
    path = tmp_path / "n.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [big, *small]}))
    assert read_geojson_regions(path, (50, 50)) == []
    assert read_geojson_labels(path, (50, 50)).max() == 3
    big["properties"]["classification"] = {"name": "Tumor"}  # a tissue region: a region
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [big, *small]}))
    assert read_geojson_regions(path, (50, 50)) == [(slice(2, 40), slice(2, 40))]


def test_bare_polygons_and_a_geometry_collections_polygons_are_cells(tmp_path, caplog):
    """A list of bare Polygon geometries, or a Feature holding a GeometryCollection, read
    as 0 cells and 'features that are not polygons (points, lines)'."""
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps([{"type": "Polygon", "coordinates": [_square(1, 1, 4, 4)]},
                                {"type": "Polygon", "coordinates": [_square(6, 1, 9, 4)]}]))
    labels = read_geojson_labels(path, (10, 10))
    assert labels.max() == 2 and (labels == 1).sum() == 9 and (labels == 2).sum() == 9
    collection = {"type": "GeometryCollection", "geometries": [
        {"type": "Point", "coordinates": [1, 1]},
        {"type": "Polygon", "coordinates": [_square(2, 5, 5, 9)]}]}
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": collection, "properties": {}},
        _feature([[0, 0], [3, 3]], kind="LineString")]}))
    forget_announcements()
    with caplog.at_level(logging.INFO, logger="cellsynth"):
        labels = read_geojson_labels(path, (10, 10))
    assert labels.max() == 1 and (labels == 1).sum() == 12
    assert "1 feature(s) that are not polygons (points, lines)" in caplog.text
