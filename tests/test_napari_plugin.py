"""The napari plugin's manifest, reader and writer; napari itself (no Qt) where installed."""

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

import cellsynth
from cellsynth import napari_plugin
from cellsynth.io.images import read_labels, write_image, write_labels
from cellsynth.io.ome_zarr import write_labels_zarr
from tests.conftest import make_dataset

MANIFEST = Path(cellsynth.__file__).parent / "napari.yaml"


def test_manifest_commands_resolve_and_are_registered():
    manifest = yaml.safe_load(MANIFEST.read_text())
    commands = {c["id"]: c["python_name"] for c in manifest["contributions"]["commands"]}
    for python_name in commands.values():
        module, _, name = python_name.partition(":")
        assert callable(getattr(importlib.import_module(module), name))
    used = [c["command"] for kind in ("readers", "writers", "widgets")
            for c in manifest["contributions"][kind]]
    assert sorted(used) == sorted(commands)
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert 'cellsynth = "cellsynth:napari.yaml"' in pyproject
    npe2 = pytest.importorskip("npe2")  # full schema check where npe2 is installed
    npe2.PluginManifest.from_file(MANIFEST)


def test_the_widget_can_be_built_from_its_annotations():
    """napari builds the widget with magicgui from predict_widget's annotations: under
    `from __future__ import annotations` the detector's was the text "Path", which magicgui
    cannot import, so the widget failed to open (fourth audit); the manifest check passed."""
    magicgui = pytest.importorskip("magicgui")
    from magicgui.type_map import get_widget_class

    signature = magicgui.signature.magic_signature(napari_plugin.predict_widget)
    built = {name: get_widget_class(value=parameter.default,
                                    annotation=parameter.annotation)[0].__name__
             for name, parameter in signature.parameters.items()
             if name != "image"}  # (a napari layer: resolved by napari's own type map)
    assert built == {"detector": "FileEdit", "score_thresh": "FloatSpinBox", "tile": "SpinBox"}


def test_reader_refuses_a_label_map_of_another_size_and_says_when_it_opens_a_part(tmp_path):
    from cellsynth.errors import ImageReadError
    from cellsynth.io.images import write_labels

    root = make_dataset(tmp_path / "ds", n=2, size=32)
    write_labels(next((root / "labels").iterdir()), np.ones((30, 32), np.uint16))
    with pytest.raises(ImageReadError, match=r"label size 30x32 does not match"):
        napari_plugin.read_layers(str(root))  # (it opened misaligned layers)
    many = make_dataset(tmp_path / "many", n=3, size=16)
    with pytest.warns(UserWarning, match=r"many: opening the first 2 of its 3 images"):
        import unittest.mock as mock

        with mock.patch.object(napari_plugin, "_MAX_IMAGES", 2):
            layers = napari_plugin.read_layers(str(many))
    assert [kw["name"] for _, kw, kind in layers if kind == "image"] == ["img0", "img1"]


def test_reader_opens_a_dataset_with_pixel_size(tmp_path):
    root = make_dataset(tmp_path / "ds", n=2, size=32)
    (root / "meta.json").write_text(json.dumps({"pixel_size_um": 0.5}))
    reader = napari_plugin.get_reader(str(root))
    assert reader is not None
    layers = reader(str(root))
    assert [(kw["name"], kind) for _, kw, kind in layers] == [
        ("img0", "image"), ("img0 labels", "labels"), ("img1", "image"),
        ("img1 labels", "labels")]
    assert all(kw["scale"] == (0.5, 0.5) for _, kw, _ in layers)
    assert layers[1][0].max() == 5 and layers[0][1]["rgb"] is False
    assert napari_plugin.get_reader(str(tmp_path / "nothing.txt")) is None


def test_reader_opens_a_plain_folder_of_images_and_a_cellpose_folder(tmp_path):
    """Only folders with images/ (or predictions) opened; the README's "File > Open on a
    dataset folder" met None for a plain folder of images and for Cellpose's layout."""
    import shutil

    root = make_dataset(tmp_path / "ds", n=2, size=32)
    plain = tmp_path / "plain"
    shutil.copytree(root / "images", plain)
    (plain / ".DS_Store").write_bytes(b"x")
    cellpose = tmp_path / "cellpose"
    cellpose.mkdir()
    for name in ("img0", "img1"):
        shutil.copy(root / "images" / f"{name}.png", cellpose / f"{name}.png")
        shutil.copy(root / "labels" / f"{name}.tif", cellpose / f"{name}_masks.tif")
    layers = napari_plugin.get_reader(str(plain))(str(plain))
    assert [(kw["name"], kind) for _, kw, kind in layers] == [("img0", "image"),
                                                             ("img1", "image")]
    layers = napari_plugin.get_reader(str(cellpose))(str(cellpose))
    assert [kind for _, _, kind in layers] == ["image", "labels", "image", "labels"]
    assert layers[1][0].max() == 5
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    assert napari_plugin.get_reader(str(tmp_path / "notes")) is None  # no image of its own


def test_reader_opens_ome_zarr_pyramids_and_predictions(tmp_path):
    labels = np.zeros((1200, 900), np.uint32)
    labels[5:50, 5:40] = 9
    predictions = tmp_path / "pred"
    (predictions / "labels").mkdir(parents=True)
    (predictions / "meta.json").write_text(json.dumps({"stage": "predict",
                                                      "pixel_size_um": 0.25}))
    write_labels_zarr(predictions / "labels" / "big.ome.zarr", labels, pixel_size_um=0.25,
                      chunk=512)
    layers = napari_plugin.get_reader(str(predictions))(str(predictions))
    (data, kwargs, kind), = layers
    assert kind == "labels" and kwargs["multiscale"] and kwargs["scale"] == (0.25, 0.25)
    assert [level.shape for level in data] == [(1200, 900), (600, 450), (300, 225)]
    assert np.asarray(data[0][5:7, 5:7]).tolist() == [[9, 9], [9, 9]]
    single = napari_plugin.read_layers(str(predictions / "labels" / "big.ome.zarr"))
    assert single[0][1]["name"] == "big"


def test_writer_saves_labels_with_the_layer_scale(tmp_path):
    labels = np.zeros((20, 30), np.int32)
    labels[2:9, 3:12] = 4
    written = napari_plugin.write_labels_layer(str(tmp_path / "x.tif"), labels,
                                               {"scale": (0.5, 0.5)})
    assert written == [str(tmp_path / "x.tif")]
    assert np.array_equal(read_labels(tmp_path / "x.tif"), labels)
    from cellsynth.io.resample import read_pixel_size

    assert read_pixel_size(tmp_path / "x.tif") == pytest.approx(0.5)


def test_a_pixel_size_of_1_um_survives_the_reader_and_the_writer(tmp_path):
    """A Labels layer at 1 um/px (BigBrain's, the merker preset's) was saved with no pixel
    size: napari's default scale 1 reads as "unknown". The reader now records the pixel
    size in the layer's metadata, and a scale in micrometres counts whatever its value."""
    from cellsynth.io.resample import read_pixel_size

    labels = np.zeros((12, 12), np.int32)
    labels[2:6, 2:6] = 1
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    write_image(root / "images" / "a.png", np.full((12, 12), 9, np.uint8))
    write_labels(root / "labels" / "a.tif", labels)
    (root / "meta.json").write_text('{"pixel_size_um": 1.0}')
    _, kwargs, kind = napari_plugin.read_layers(str(root))[1]
    assert kind == "labels" and kwargs["metadata"] == {"pixel_size_um": 1.0}
    napari_plugin.write_labels_layer(str(tmp_path / "m.tif"), labels, kwargs)
    assert read_pixel_size(tmp_path / "m.tif") == pytest.approx(1.0)
    napari_plugin.write_labels_layer(str(tmp_path / "u.tif"), labels,
                                     {"scale": (1.0, 1.0), "units": ("um", "um")})
    assert read_pixel_size(tmp_path / "u.tif") == pytest.approx(1.0)
    napari_plugin.write_labels_layer(str(tmp_path / "x.tif"), labels, {"scale": (1.0, 1.0)})
    assert read_pixel_size(tmp_path / "x.tif") is None  # napari's default: unknown


def test_predicted_cells_are_named_apart_and_a_labels_folder_opens_as_labels(tmp_path):
    """A prediction opened beside its images gave its layers the images' names; a labels/
    folder opened alone gave Image layers."""
    labels = np.zeros((12, 12), np.int32)
    labels[2:6, 2:6] = 3
    pred = tmp_path / "pred"
    (pred / "labels").mkdir(parents=True)
    write_labels(pred / "labels" / "a.tif", labels)
    (pred / "meta.json").write_text(json.dumps({"stage": "predict", "pixel_size_um": 0.5}))
    assert [(kw["name"], kind) for _, kw, kind in napari_plugin.read_layers(str(pred))] == [
        ("a cells", "labels")]
    reader = napari_plugin.get_reader(str(pred / "labels"))
    (data, kwargs, kind), = reader(str(pred / "labels"))
    assert (kind, kwargs["name"], kwargs["scale"]) == ("labels", "a labels", (0.5, 0.5))
    np.testing.assert_array_equal(data, labels)


def test_a_labels_folder_of_qupath_outlines_opens_at_its_images_size(tmp_path):
    """A labels/ folder of QuPath .geojson files opened alone gave no layers (outlines need
    the image's size): drawn at the image's beside it, else at what holds every outline."""
    from cellsynth.io.images import write_image

    square = {"type": "Feature", "properties": {"objectType": "annotation"},
              "geometry": {"type": "Polygon",
                           "coordinates": [[[2, 3], [8, 3], [8, 9], [2, 9], [2, 3]]]}}
    root = tmp_path / "ds"
    (root / "labels").mkdir(parents=True)
    (root / "images").mkdir()
    for name in ("a", "b"):
        (root / "labels" / f"{name}.geojson").write_text(
            json.dumps({"type": "FeatureCollection", "features": [square]}))
    write_image(root / "images" / "a.png", np.zeros((20, 30), np.uint8))  # b: no image
    layers = napari_plugin.read_layers(str(root / "labels"))
    assert [(kw["name"], kind, data.shape) for data, kw, kind in layers] == [
        ("a labels", "labels", (20, 30)), ("b labels", "labels", (9, 8))]
    expected = np.zeros((9, 8), np.uint32)
    expected[3:9, 2:8] = 1  # the pixels whose centres lie inside the square
    np.testing.assert_array_equal(layers[0][0][:9, :8], expected)
    np.testing.assert_array_equal(layers[1][0], expected)


def test_napari_opens_a_dataset_and_a_prediction_through_the_plugin(tmp_path):
    """napari itself (its viewer model: no window, no Qt) finds the plugin through the
    package's entry point and opens our folders as Image + Labels layers at our scale."""
    components = pytest.importorskip("napari.components")
    import npe2

    npe2.PluginManager.instance().discover()  # what napari's application does at start-up
    root = make_dataset(tmp_path / "ds", n=2, size=32)
    (root / "meta.json").write_text(json.dumps({"pixel_size_um": 0.5}))
    viewer = components.ViewerModel()
    viewer.open(str(root), plugin="cellsynth")
    assert [(layer.name, type(layer).__name__) for layer in viewer.layers] == [
        ("img0", "Image"), ("img0 labels", "Labels"), ("img1", "Image"),
        ("img1 labels", "Labels")]
    assert tuple(viewer.layers["img0 labels"].scale) == (0.5, 0.5)
    assert viewer.layers["img1 labels"].data.max() == 5
    labels = np.zeros((1200, 900), np.uint32)
    labels[5:50, 5:40] = 9
    write_labels_zarr(tmp_path / "big.ome.zarr", labels, pixel_size_um=0.25, chunk=512)
    viewer.open(str(tmp_path / "big.ome.zarr"), plugin="cellsynth")
    big = viewer.layers["big"]
    assert type(big).__name__ == "Labels" and big.multiscale and len(big.data) == 3


def test_reader_opens_a_section_as_a_lazy_multiscale_image(tmp_path, monkeypatch):
    import tifffile

    import cellsynth.io.images as images

    root = tmp_path / "slides"
    (root / "images").mkdir(parents=True)
    section = np.random.default_rng(0).integers(0, 255, (512, 384, 3), dtype=np.uint8)
    with tifffile.TiffWriter(root / "images" / "s1.ome.tif") as tif:
        tif.write(section, subifds=2, tile=(128, 128), compression="zlib", photometric="rgb")
        tif.write(section[::2, ::2], subfiletype=1, tile=(128, 128), photometric="rgb")
        tif.write(section[::4, ::4], subfiletype=1, tile=(128, 128), photometric="rgb")
    monkeypatch.setattr(images, "_read_array", lambda path: pytest.fail(f"{path} decoded"))
    (data, kwargs, kind), = napari_plugin.read_layers(str(root))
    assert kind == "image" and kwargs["multiscale"] and kwargs["rgb"]
    assert [level.shape for level in data] == [(512, 384, 3), (256, 192, 3), (128, 96, 3)]
    np.testing.assert_array_equal(np.asarray(data[1][10:20, 30:40]), section[::2, ::2][10:20,
                                                                                      30:40])
    # the section file by itself (the manifest claims every file, and refused it; napari's
    # own reader would decode level 0 whole), at the pixel size it states
    file = root / "images" / "s1.ome.tif"
    assert napari_plugin.get_reader(str(file)) is not None
    (alone, kwargs, kind), = napari_plugin.read_layers(str(file))
    assert kind == "image" and kwargs["name"] == "s1" and len(alone) == 3
    monkeypatch.undo()
    from cellsynth.io.images import write_image

    write_image(tmp_path / "small.png", section[:64, :64])  # a plain image: napari's own
    assert napari_plugin.get_reader(str(tmp_path / "small.png")) is None


def test_the_reader_claims_ome_zarr_labels_but_leaves_images_to_napari(tmp_path):
    """An OME-Zarr image (no NGFF image-label metadata) is not opened as labels: napari asks
    its next reader (napari-ome-zarr) instead of showing a section as one Labels layer."""
    import zarr

    labels = np.zeros((64, 48), np.uint32)
    labels[5:20, 5:20] = 3
    write_labels_zarr(tmp_path / "cells.ome.zarr", labels, pixel_size_um=0.5)
    write_labels_zarr(tmp_path / "section.ome.zarr", labels, pixel_size_um=0.5)
    del zarr.open_group(str(tmp_path / "section.ome.zarr"), mode="r+").attrs["image-label"]
    assert napari_plugin.get_reader(str(tmp_path / "section.ome.zarr")) is None
    (data, kwargs, kind), = napari_plugin.get_reader(str(tmp_path / "cells.ome.zarr"))(
        str(tmp_path / "cells.ome.zarr"))
    assert kind == "labels" and np.asarray(data).max() == 3 and kwargs["name"] == "cells"
    (tmp_path / "cells.ome.zarr").rename(tmp_path / "nuclei.zarr")
    assert napari_plugin.read_layers(str(tmp_path / "nuclei.zarr"))[0][1]["name"] == "nuclei"
    # NGFF 0.5 (Zarr v3, as current ome-zarr-py writes) keeps the metadata under "ome": its
    # labels were not recognised (audit 7)
    from cellsynth.io.ome_zarr import is_label_zarr, read_labels_zarr

    v05 = zarr.open_group(str(tmp_path / "v05.ome.zarr"), mode="w", zarr_format=3)
    v05.create_array("0", data=labels, chunks=(32, 32))
    v05.attrs["ome"] = {"version": "0.5", "image-label": {}, "multiscales": [{
        "name": "cells", "axes": [{"name": "y", "type": "space", "unit": "micrometer"},
                                  {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [0.5, 0.5]}]}]}]}
    assert is_label_zarr(tmp_path / "v05.ome.zarr")
    read, px = read_labels_zarr(tmp_path / "v05.ome.zarr")
    assert np.array_equal(read, labels) and px == 0.5
    (data, kwargs, kind), = napari_plugin.get_reader(str(tmp_path / "v05.ome.zarr"))(
        str(tmp_path / "v05.ome.zarr"))
    assert kind == "labels" and np.asarray(data).max() == 3 and kwargs["scale"] == (0.5, 0.5)


def test_reader_gives_each_image_and_prediction_its_own_pixel_size(tmp_path):
    """Images stating different pixel sizes (no meta.json) all opened at scale 1, and so did
    a prediction of them, whose folder-wide pixel size is null (fourth audit)."""
    import tifffile

    from cellsynth.io.images import tiff_resolution

    root = tmp_path / "mixed"
    (root / "images").mkdir(parents=True)
    for name, px in (("a", 0.346), ("b", 0.5)):
        tifffile.imwrite(root / "images" / f"{name}.tif", np.zeros((32, 32), np.uint8),
                         **tiff_resolution(px))
    layers = napari_plugin.read_layers(str(root))
    assert [kw["scale"] for _, kw, _ in layers] == [(0.346, 0.346), (0.5, 0.5)]
    pred = tmp_path / "pred"
    (pred / "labels").mkdir(parents=True)
    for name in ("a", "b"):
        from cellsynth.io.images import write_labels

        write_labels(pred / "labels" / f"{name}.tif", np.ones((32, 32), np.uint16))
    (pred / "meta.json").write_text(json.dumps({
        "stage": "predict", "pixel_size_um": None,
        "images_pixel_size_um": {"a": {"pixel_size_um": 0.346}, "b": {"pixel_size_um": 0.5}}}))
    layers = napari_plugin.read_layers(str(pred))
    assert [kw.get("scale") for _, kw, _ in layers] == [(0.346, 0.346), (0.5, 0.5)]
