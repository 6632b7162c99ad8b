from cellsynth.cli import main
from cellsynth.io.inspect import summarize
from tests.conftest import make_dataset


def test_summarize_counts_instances_and_areas(dataset):
    summary = summarize(dataset)
    assert summary["n_images"] == 3 and summary["n_labeled"] == 3
    assert summary["sizes"] == {"32x32": 3}
    assert summary["channels"] == {1: 3}
    assert summary["instances"]["total"] == 9
    # areas per image: 36, 96, 30 -> median 36, percentiles of [30]*3+[36]*3+[96]*3
    assert summary["area_px"]["median"] == 36


def test_inspect_cli_prints_summary(dataset, capsys):
    assert main(["inspect", str(dataset)]) == 0
    out = capsys.readouterr().out
    assert "images       3 (3 with labels)" in out
    assert "instances    9 total" in out


def test_inspect_cli_error_is_one_line(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such folder" in err


def test_sections_are_summarised_from_their_headers_not_decoded(tmp_path, capsys,
                                                                 monkeypatch):
    import numpy as np
    import tifffile
    import zarr

    import cellsynth.io.images as images

    root = tmp_path / "slides"
    root.mkdir()
    image = np.zeros((300, 200, 3), np.uint8)
    with tifffile.TiffWriter(root / "a.ome.tif") as tif:
        tif.write(image, subifds=1, tile=(64, 64), compression="zlib", photometric="rgb")
        tif.write(image[::2, ::2], subfiletype=1, tile=(64, 64), compression="zlib",
                  photometric="rgb")
    zarr.open_array(str(root / "b.zarr"), mode="w", shape=(120, 90), dtype=np.uint16,
                    chunks=(64, 64))

    def whole(path):
        raise AssertionError(f"{path} decoded whole")

    monkeypatch.setattr(images, "_read_array", whole)
    assert main(["inspect", str(root)]) == 0
    out = capsys.readouterr().out
    assert "images       2 (0 with labels; 2 whole section(s), read window by window)" in out
    assert "300x200 (1)" in out and "120x90 (1)" in out
    assert "uint8 (1)" in out and "uint16 (1)" in out
    assert "3 (1)" in out and "1 (1)" in out


def test_one_section_file_is_summarised_with_its_levels_and_pixel_size(tmp_path, capsys):
    """`inspect FILE`: a whole section a user is about to predict (what `predict --images`
    accepts), opened lazily; a folder whose files state no pixel size says so."""
    import numpy as np
    import tifffile

    from cellsynth.io.images import write_image

    image = np.zeros((512, 384, 3), np.uint8)
    with tifffile.TiffWriter(tmp_path / "s.ome.tif") as tif:
        tif.write(image, subifds=2, tile=(128, 128), photometric="rgb",
                  metadata={"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
        tif.write(image[::2, ::2], subfiletype=1, tile=(128, 128), photometric="rgb")
        tif.write(image[::4, ::4], subfiletype=1, tile=(128, 128), photometric="rgb")
    assert main(["inspect", str(tmp_path / "s.ome.tif")]) == 0
    out = capsys.readouterr().out
    assert f"image        {tmp_path / 's.ome.tif'}" in out
    assert "levels       3: 512x384, 256x192, 128x96" in out
    assert "pixel size   0.5 um/px" in out
    (tmp_path / "plain").mkdir()
    write_image(tmp_path / "plain" / "a.png", image)
    assert main(["inspect", str(tmp_path / "plain")]) == 0
    # (named for each way a folder is used: a project's train/ is a run config's, not predict's)
    assert ("pixel size   unknown (1) (state it: pixel_size_um in meta.json, or a run "
            "config's real.pixel_size_um, or predict --pixel-size)") in capsys.readouterr().out


def test_a_prediction_folder_says_how_many_of_its_images_are_gone(tmp_path, capsys):
    """A predict output (labels/ and meta.json, no images/) is described from its meta.json,
    not refused as a dataset without images; images moved since are counted."""
    import json

    (tmp_path / "ds" / "images").mkdir(parents=True)
    (tmp_path / "ds" / "images" / "a.png").write_bytes(b"")
    (tmp_path / "pred" / "labels").mkdir(parents=True)
    for name in ("a", "b"):
        (tmp_path / "pred" / "labels" / f"{name}.tif").write_bytes(b"")  # (not decoded)
    (tmp_path / "pred" / "meta.json").write_text(json.dumps({
        "stage": "predict", "model": "run/best.pt", "model_step": 300, "score_thresh": 0.9,
        "images": str(tmp_path / "ds"), "pixel_size_um": None, "n_instances": 42,
        "images_pixel_size_um": {"a": {"file": "a.png", "pixel_size_um": 0.5},
                                 "b": {"file": "b.png", "pixel_size_um": None, "level": 1}}}))
    summary = summarize(tmp_path / "pred")
    assert (summary["n_images"], summary["n_instances"], summary["images_missing"]) == (2, 42, 1)
    assert main(["inspect", str(tmp_path / "pred")]) == 0
    out = capsys.readouterr().out
    assert "images       2 (pyramid level 0, 1)\n" in out
    assert "detector     run/best.pt (step 300), score threshold 0.9\n" in out
    assert "pixel size   0.5 um/px (1), unknown (1)\n" in out
    assert f"predicted    from {tmp_path / 'ds'} (1 of 2 image(s) no longer there)" in out


def test_inspect_of_a_project_folder_summarises_each_role(tmp_path, capsys):
    """inspect of the folder init takes (unlabeled/, train/, test/) said 'no images found';
    it summarises each; a folder with neither images nor roles is still one error line."""
    from cellsynth.cli import main

    make_dataset(tmp_path / "proj" / "train", n=2)
    make_dataset(tmp_path / "proj" / "unlabeled", n=3, labels=False)
    assert main(["inspect", str(tmp_path / "proj")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("unlabeled/\n") and "\n\ntrain/\n" in out
    assert "images       3 (0 with labels" in out and "images       2 (2 with labels" in out
    (tmp_path / "empty").mkdir()
    assert main(["inspect", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no images found" in err[0]


def test_blank_images_are_named(tmp_path, capsys):
    """An image of one value (a blank export) passed inspect without a word; training and
    prediction found nothing in it."""
    import numpy as np

    from cellsynth.io.images import write_image

    folder = tmp_path / "d"
    folder.mkdir()
    write_image(folder / "blank.png", np.zeros((16, 16), np.uint8))
    write_image(folder / "grey.tif", np.full((16, 16, 3), 200, np.uint8))
    write_image(folder / "cells.png", np.arange(256, dtype=np.uint8).reshape(16, 16))
    assert summarize(folder)["constant"] == ["blank.png", "grey.tif"]
    assert main(["inspect", str(folder)]) == 0
    assert ("blank        2 image(s) of a single value, nothing to segment: blank.png, grey.tif"
            in capsys.readouterr().out)
    assert summarize(folder / "grey.tif")["constant"] == ["grey.tif"]
    assert "constant" not in summarize(folder / "cells.png")
