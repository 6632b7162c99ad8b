"""Every command that reads data, given bad input: a non-zero exit, one line naming the file
and the problem, no traceback, and every existing output byte for byte as it was."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from cellsynth.cli import main
from cellsynth.io.images import write_image, write_labels
from cellsynth.segment.trainer import TrainConfig, train
from cellsynth.simulate import preset, write_simulation

TINY = dict(crop=64, batch=2, samples=32, order=4, refinement_iterations=1, val_every=1000)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """Good data, a trained run, an existing output, and a zoo of broken files."""
    root = tmp_path_factory.mktemp("reliability")
    sim = root / "sim"
    write_simulation(preset("fluo"), n=3, size=64, seed=0, out=sim, progress=False)
    run = root / "run"
    train(TrainConfig(steps=1, **TINY), [sim], run, progress=False)
    # one that records the pixel size it works at (predict resamples for it)
    train(TrainConfig(steps=1, pixel_size_um=0.5, **TINY), [sim], root / "run_px",
          progress=False)
    bad = root / "bad"
    (bad / "images").mkdir(parents=True)
    (bad / "labels").mkdir()
    good = np.full((64, 64), 100, np.uint8)
    cases = {
        "truncated": lambda p: p.write_bytes((sim / "images" / "0000.png").read_bytes()[:60]),
        "empty": lambda p: p.write_bytes(b""),
        "text": lambda p: p.write_text("not an image"),
    }
    for name, make in cases.items():
        folder = root / name
        (folder / "images").mkdir(parents=True)
        make(folder / "images" / "a.png")
    for name, value in (("meta_px_text", "0.25 um"), ("meta_px_negative", -0.25)):
        folder = root / name
        (folder / "images").mkdir(parents=True)
        write_image(folder / "images" / "a.png", good)
        (folder / "meta.json").write_text(json.dumps({"pixel_size_um": value}))
    four_d = root / "four_d"
    (four_d / "images").mkdir(parents=True)
    tifffile.imwrite(four_d / "images" / "a.tif", np.zeros((2, 3, 64, 64, 5), np.uint8))
    mismatch = root / "mismatch"
    (mismatch / "images").mkdir(parents=True)
    (mismatch / "labels").mkdir()
    write_image(mismatch / "images" / "a.png", good)
    write_labels(mismatch / "labels" / "a.tif", np.zeros((30, 64), np.uint16))
    float_labels = root / "float_labels"
    (float_labels / "images").mkdir(parents=True)
    (float_labels / "labels").mkdir()
    write_image(float_labels / "images" / "a.png", good)
    tifffile.imwrite(float_labels / "labels" / "a.tif", np.full((64, 64), 0.5, np.float32))
    corrupt_tiff = root / "corrupt_tiff"  # its first page's offset points past the end
    (corrupt_tiff / "images").mkdir(parents=True)
    tifffile.imwrite(corrupt_tiff / "images" / "a.tif", good)
    raw = bytearray((corrupt_tiff / "images" / "a.tif").read_bytes())
    raw[4:8] = (1 << 30).to_bytes(4, "little")
    (corrupt_tiff / "images" / "a.tif").write_bytes(bytes(raw))
    same_id = root / "same_id"  # a.png and a.tif: one labels/a.tif for both
    (same_id / "images").mkdir(parents=True)
    write_image(same_id / "images" / "a.png", good)
    tifffile.imwrite(same_id / "images" / "a.tif", good.astype(np.uint16))
    nan = root / "nan"
    (nan / "images").mkdir(parents=True)
    image = np.zeros((64, 64), np.float32)
    image[3, 3] = np.nan
    tifffile.imwrite(nan / "images" / "a.tif", image)
    negative = root / "negative_labels"
    (negative / "images").mkdir(parents=True)
    (negative / "labels").mkdir()
    write_image(negative / "images" / "a.png", good)
    tifffile.imwrite(negative / "labels" / "a.tif", np.full((64, 64), -1, np.int16))
    orphan = root / "orphan"
    (orphan / "images").mkdir(parents=True)
    (orphan / "labels").mkdir()
    write_image(orphan / "images" / "a.png", good)
    write_labels(orphan / "labels" / "a.tif", np.zeros((64, 64), np.uint16))
    write_labels(orphan / "labels" / "b.tif", np.zeros((64, 64), np.uint16))
    with tifffile.TiffWriter(root / "pyramid.tif") as tif:  # 2 levels: 0 and 1
        tif.write(good, subifds=1, tile=(32, 32))
        tif.write(good[::2, ::2], subfiletype=1, tile=(32, 32))
    import zarr

    zarr.open_group(str(root / "five_d.zarr"), mode="w").create_array(
        "0", data=np.zeros((2, 2, 2, 64, 64), np.uint8))  # no NGFF axes: which are y, x?
    (root / "slide.czi").write_bytes(b"CZI")
    rgba = root / "rgba"  # an alpha channel: dropped, said in one line
    (rgba / "images").mkdir(parents=True)
    (rgba / "labels").mkdir()
    iio.imwrite(rgba / "images" / "a.png", np.dstack([np.full((64, 64, 3), 90, np.uint8),
                                                      np.full((64, 64), 255, np.uint8)]))
    write_labels(rgba / "labels" / "a.tif", np.pad(np.ones((8, 8), np.uint16), 28))
    sixteen = root / "sixteen"  # a 16-bit PNG holding 8-bit values: read as it is
    (sixteen / "images").mkdir(parents=True)
    iio.imwrite(sixteen / "images" / "a.png", (np.arange(64 * 64) % 251).astype(np.uint16)
                .reshape(64, 64))
    (root / "empty_dir").mkdir()
    (root / "not_yaml.yaml").write_text("steps: [1, 2\n")
    (root / "empty.yaml").write_text("# to be filled in\n")
    (root / "unknown_key.yaml").write_text("stepz: 3\n")
    (root / "small_sim.yaml").write_text(f"simulate: {{preset: fluo, n: 1, size: 64}}\n"
                                         f"real: {{unlabeled: {sim}}}\n")
    (root / "cut.pt").write_bytes((run / "last.pt").read_bytes()[:4000])
    existing = root / "existing"
    existing.mkdir()
    (existing / "precious.txt").write_text("results of last week")
    return {"root": root, "sim": sim, "run": run, "run_px": root / "run_px", "existing": existing}


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# (command line with {placeholders}, what the one line must say)
CASES = [
    ("inspect {root}/truncated", "truncated"),
    ("inspect {root}/corrupt_tiff", "a.tif: cannot read file (corrupt or truncated?): invalid "
     "offset to first page"),
    ("predict --detector {run} --images {root}/corrupt_tiff --out {existing} --force",
     "a.tif: cannot read file (corrupt or truncated?)"),
    ("inspect {root}/empty", "a.png"),
    ("inspect {root}/text", "a.png"),
    ("inspect {root}/four_d", "expected image of shape"),
    ("inspect {root}/mismatch", "does not match"),
    ("inspect {root}/float_labels", "integer image"),
    ("inspect {root}/nan", "NaN"),
    ("inspect {root}/empty_dir", "no images"),
    ("inspect {root}/missing", "missing"),
    ("train --data {root}/truncated --out {existing} --force --steps 1", "truncated"),
    ("train --data {root}/mismatch --out {existing} --force --steps 1", "does not match"),
    ("train --data {root}/missing --out {existing} --force --steps 1", "missing"),
    ("train --data {sim} --out {existing} --force --steps 1 --device nonsense", "nonsense"),
    ("train --data {sim} --out {existing} --force --steps 1 --device cuda:5", "cuda"),
    ("train --data {sim} --out {existing} --force --config {root}/not_yaml.yaml",
     "invalid YAML"),
    ("train --data {sim} --out {existing} --force --config {root}/unknown_key.yaml",
     "stepz"),
    ("train --data {sim} --out {existing} --force --config {root}", "is a folder"),
    ("train --data {sim} --out {existing} --steps 1", "not empty"),
    ("train --data {sim} --out {existing} --resume", "nothing to resume"),
    ("train --data {sim} --out {existing} --force --init {root}/cut.pt --steps 1",
     "cut.pt: cannot load checkpoint"),
    ("predict --detector {root}/cut.pt --images {sim} --out {existing} --force",
     "cut.pt: cannot load checkpoint"),
    ("predict --detector {root}/missing --images {sim} --out {existing} --force", "missing"),
    ("predict --detector {run} --images {root}/truncated --out {existing} --force", "truncated"),
    ("predict --detector {run} --images {root}/missing --out {existing} --force", "missing"),
    ("predict --detector {run} --images {sim} --out {existing}", "not empty"),
    ("predict --detector {run} --images {root}/same_id --out {existing} --force",
     "two files share the id 'a': a.png and a.tif"),
    ("evaluate --pred {root}/mismatch --gt {sim}", "mismatch"),
    ("evaluate --pred {sim} --gt {root}/missing", "missing"),
    ("realism --a {root}/truncated --b {sim}", "truncated"),
    ("realism --a {root}/empty_dir --b {sim}", "empty_dir"),
    ("simulate --preset nonsense --n 1 --out {existing} --force", "nonsense"),
    ("simulate --preset fluo --n 1 --out {existing}", "not empty"),
    ("simulate --preset fluo --n 1 --out {existing} --force --config {root}/not_yaml.yaml",
     "invalid YAML"),
    ("fit-refiner --sim {root}/truncated --real {sim} --out {existing} --force", "truncated"),
    ("fit-refiner --sim {sim} --real {root}/missing --out {existing} --force --crop 32",
     "missing"),
    ("fit-refiner --sim {sim} --real {sim} --out {existing} --force --device cuda:5", "cuda"),
    ("fit-refiner --sim {sim} --real {sim} --out {existing} --force", "smaller than the "
     "training crop"),
    ("generate --refiner {run} --sim {sim} --out {existing} --force", "last.pt"),
    ("run {root}/not_yaml.yaml --out {existing}", "invalid YAML"),
    ("run {root}/empty.yaml --out {existing}", "empty pipeline config"),
    ("predict --detector {run} --images {root}/not_yaml.yaml --out {existing} --force",
     "not an image file"),
    ("predict --detector {run} --images {sim} --out {existing} --force --tile 64 --overlap 64",
     "--overlap 64 must be smaller"),
    ("predict --detector {run} --images {sim} --out {existing} --force --score-thresh 5",
     "between 0 and 1"),
    ("predict --detector {run} --images {sim} --out {existing} --force --channel 4",
     "channel 4 requested"),
    ("evaluate --pred {sim} --gt {sim} --json {existing}", "is a folder"),
    ("simulate --preset fluo --n 1 --size 100000 --out {existing} --force", "GiB"),
    ("run {root}/missing.yaml --out {existing}", "missing.yaml"),
    ("inspect {root}/negative_labels", "negative"),
    ("inspect {root}/orphan", "without an image"),
    ("train --data {existing} --out {existing} --force --steps 1", "is (or holds) the input"),
    ("experiment {root}/not_yaml.yaml --out {existing}", "invalid YAML"),
    ("run {root}/small_sim.yaml --out {existing}", "simulate.size 64 is smaller than "
     "refine.crop 128"),
    ("experiment {root}/empty.yaml --out {existing}", "empty experiment config"),
    ("export {root}/mismatch --to coco --out {existing} --force", "does not match"),
    ("predict --detector {run} --images {sim} --out {existing} --force --labels zarr",
     "invalid choice"),
    ("predict --detector {run} --images {root}/pyramid.tif --out {existing} --force --level 4",
     "pyramid.tif: no resolution level 4; the image has 2"),
    ("predict --detector {run} --images {sim} --out {existing} --force --level 2",
     "no resolution level 2; the image has 1 (0 = full resolution)"),
    ("predict --detector {run} --images {root}/five_d.zarr --out {existing} --force",
     "five_d.zarr: cannot tell the axes of a 5-D array"),
    ("predict --detector {run} --images {root}/slide.czi --out {existing} --force",
     "slide.czi: Zeiss CZI files are not read; convert to OME-TIFF"),
    # a pixel size in the wrong unit: it filled 22 GB (mm for um), made 304,704 tiles of
    # one image (nm for um), overflowed, or crashed in a histogram
    ("simulate --preset fluo --n 1 --size 64 --pixel-size 0.00025 --out {existing} --force",
     "a 2e+03x resampling (at most 32x either way; a size in nm or mm where um was meant?)"),
    ("simulate --preset fluo --n 1 --size 64 --pixel-size inf --out {existing} --force",
     "pixel size must be a number > 0, got inf"),
    ("predict --detector {run_px} --images {sim} --out {existing} --force --pixel-size 250",
     "pixel size 250 um against 0.5 um/px: a 500x resampling"),
    ("predict --detector {run_px} --images {sim} --out {existing} --force --pixel-size "
     "1e300",
     "at most 32x either way"),
    ("fit-simulator --real {sim} --preset fluo --pixel-size 0.00025 --out {existing}/f.yaml "
     "--force", "at most 32x either way"),
    ("inspect {root}/meta_px_text", "meta.json: pixel_size_um must be a number of "
     "micrometres > 0 (null where unknown), got '0.25 um'"),
    ("predict --detector {run} --images {root}/meta_px_negative --out {existing} --force",
     "pixel_size_um must be a number of micrometres > 0 (null where unknown), got -0.25"),
]


@pytest.mark.parametrize(("line", "says"), CASES, ids=[c[0].split(" {")[0] + ":" + c[1]
                                                       for c in CASES])
def test_bad_input_is_one_clear_line_and_nothing_is_lost(world, capsys, line, says):
    before = _snapshot(world["existing"])
    argv = line.format(**{k: str(v) for k, v in world.items()}).split()
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's own refusals
        code = stop.code
    captured = capsys.readouterr()
    err = [ln for ln in captured.err.replace("\r", "\n").splitlines()
           if ln.strip() and not re.search(r"\[\d\d:\d\d", ln)]  # progress bars aside
    errors = [ln for ln in err if ": error:" in ln]
    assert code not in (0, None), f"{line}: exit 0"
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    # one error line; anything else is a one-line note of the same command (threads, ...)
    assert len(errors) == 1, f"{line}: {captured.err}"
    assert all(ln.startswith(f"cellsynth {argv[0]}: ") for ln in err), captured.err
    assert says in errors[0], f"{line}: {errors[0]}"
    assert _snapshot(world["existing"]) == before, f"{line}: existing output changed"
    leftovers = [p.name for p in world["existing"].parent.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"{line}: left {leftovers}"


# Inputs that are unusual but fine: exit 0, no traceback, any note one line naming the file.
ACCEPTED = [
    ("inspect {root}/rgba", "rgba/images/a.png: dropping alpha channel of RGBA image"),
    ("inspect {root}/sixteen", None),
    ("realism --a {root}/rgba --b {root}/rgba --crop 32 --crops 32 --epochs 1 --folds 2",
     "dropping alpha channel"),
    # (the detector works at its simulation's 0.5 um/px, which it records)
    ("predict --detector {run} --images {root}/sixteen --out {root}/sixteen_out --quiet",
     "sixteen: pixel size of a.png unknown (no --pixel-size, meta.json or file "
     "metadata); it and any other image without one are taken to be at the model's 0.5 "
     "um/px"),
    ("predict --detector {run} --images {root}/rgba --out {root}/rgba_out --quiet",
     "rgba/images/a.png: dropping alpha channel of RGBA image"),
]


@pytest.mark.parametrize(("line", "note"), ACCEPTED, ids=[c[0].split(" {")[0] + ":" +
                                                          c[0].split("/")[1].split()[0]
                                                          for c in ACCEPTED])
def test_unusual_but_valid_input_is_accepted_with_at_most_a_note(world, capsys, line, note):
    argv = line.format(**{k: str(v) for k, v in world.items()}).split()
    code = main(argv)
    captured = capsys.readouterr()
    err = [ln for ln in captured.err.replace("\r", "\n").splitlines()
           if ln.strip() and not re.search(r"\[\d\d:\d\d|threads|precision", ln)]
    assert code == 0, captured.err
    assert "Traceback" not in captured.err and ": error:" not in captured.err
    if note is None:
        assert not err, err
    else:
        assert err and all(ln.startswith(f"cellsynth {argv[0]}: warning: ") for ln in err), err
        assert any(note in ln for ln in err), err


@pytest.mark.parametrize("line", [
    "predict --detector {run} --images {data} --out {data} --force",
    "predict --detector {run} --images {data} --out {parent} --force",
    "predict --detector {run} --images {data}/images/0000.png --out {data} --force",
    "export {data} --to geojson --out {data} --force",
    "export {data} --to cellpose --out {parent} --force",
    "generate --refiner {run} --sim {data} --out {parent} --force",
])
def test_an_output_that_is_or_holds_the_input_is_refused_even_with_force(world, tmp_path,
                                                                       capsys, line):
    import shutil

    parent = tmp_path / "project"
    data = parent / "data"
    shutil.copytree(world["sim"], data)
    before = _snapshot(parent)
    argv = line.format(run=world["run"], data=data, parent=parent).split()
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [ln for ln in err.splitlines() if ": error:" in ln]
    assert len(errors) == 1 and "is (or holds) the input" in errors[0], err
    assert _snapshot(parent) == before  # the images are all still there, byte for byte


@pytest.mark.parametrize("line, part", [
    ("predict --detector {run} --images {data} --out {data}/labels --force", "labels"),
    ("export {data} --to geojson --out {data}/labels --force", "labels"),
    ("export {data} --to stardist --out {data}/masks --force", "masks"),
    ("export {data} --to geojson --out {data}/Labels --force", "Labels"),  # (any case)
    ("predict --detector {run} --images {data} --out {data}/images/predicted --force", "images"),
])
def test_an_output_in_an_input_datasets_labels_or_images_is_refused(world, tmp_path, capsys,
                                                                    line, part):
    """`--out DATA/labels --force` passed the old rule (the output neither is nor holds the
    input DATA) and replaced the annotations the command had just read; writing into a
    dataset's images/, labels/ or masks/ is refused in one line, nothing touched."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(world["sim"], data)
    (data / "masks").mkdir()
    before = _snapshot(tmp_path)
    assert main(line.format(run=world["run"], data=data).split()) != 0
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ": error:" in ln]
    assert "Traceback" not in err and len(errors) == 1, err
    assert f"lies in the {part}/ folder of the input {data.resolve()}" in errors[0]
    assert _snapshot(tmp_path) == before  # the labels are all still there, byte for byte
