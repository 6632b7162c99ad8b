"""Writing simulated datasets: layout, determinism across workers, CLI errors."""

import json

import numpy as np
import pytest

from cellsynth.cli import main
from cellsynth.errors import ConfigError
from cellsynth.io.datasets import load_dataset
from cellsynth.simulate import preset, simulate, simulation_config, write_simulation


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_dataset_layout_meta_and_preview(tmp_path):
    out = tmp_path / "sim"
    summary = write_simulation(preset("nissl"), n=3, size=64, seed=4, out=out, progress=False)
    ds = load_dataset(out, require_labels=True)
    assert [s.id for s in ds] == ["0000", "0001", "0002"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seed"] == 4 and meta["preset"] == "nissl" and meta["pixel_size_um"] == 0.346
    assert meta["config"]["cells"][0]["name"] == "pyramidal"
    assert summary["n_instances"] == meta["n_instances"] > 0
    assert "pixel_size_um_range" not in meta  # nissl: one pixel size
    assert (out / "preview.png").stat().st_size > 0
    # The written files are the iterator's images.
    for sample, (image, labels) in zip(ds, simulate("nissl", 3, 64, seed=4)):
        assert np.array_equal(sample.read_image(), image)
        assert np.array_equal(sample.read_labels(), labels)


def test_byte_identical_whatever_the_worker_count(tmp_path):
    config = preset("merker")
    write_simulation(config, n=5, size=48, seed=9, out=tmp_path / "w1", workers=1,
                     progress=False)
    write_simulation(config, n=5, size=48, seed=9, out=tmp_path / "w2", workers=2,
                     progress=False)
    assert _files(tmp_path / "w1") == _files(tmp_path / "w2")


def test_existing_output_is_not_overwritten(tmp_path):
    out = tmp_path / "sim"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["simulate", "--preset", "fluo", "--n", "1", "--size", "32", "--out", str(out),
                 "--quiet"]) == 2
    assert (out / "mine.txt").read_text() == "keep"
    assert main(["simulate", "--preset", "fluo", "--n", "1", "--size", "32", "--out", str(out),
                 "--quiet", "--force"]) == 0
    assert not (out / "mine.txt").exists() and (out / "images" / "0000.png").exists()


@pytest.mark.parametrize("args, message", [
    (["--n", "-1"], "--n: expected a positive integer, got -1"),
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--size", "8"], "size must be at least 16"),
    (["--color", "green"], "no colour variant 'green'"),
    (["--pixel-size", "0"], "expected a positive number"),
])
def test_bad_arguments_give_one_line(tmp_path, capsys, args, message):
    base = {"--preset": "merker", "--n": "2", "--size": "32", "--out": str(tmp_path / "o")}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    argv = ["simulate", "--quiet"] + [x for kv in base.items() for x in kv]
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def _exit_code(argv):
    """main's return value, or the status of the SystemExit that argparse raises."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


def test_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["simulate", "--preset", "fluo", "--n", "1", "--size", "32", "--quiet",
                 "--out", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert "cannot create its parent folder" in err and err.count("\n") == 1


def test_yaml_overrides_and_unknown_keys(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text("pixel_size_um: 0.5\ncells:\n  glia:\n    density: 1.5\n"
                    "optics:\n  blur_um: 0.8\n")
    config = simulation_config("merker", config_file=good)
    assert config.pixel_size_um == 0.5 and config.optics.blur_um == 0.8
    assert {c.name: c.density for c in config.cells}["glia"] == 1.5
    bad = tmp_path / "bad.yaml"
    bad.write_text("optics:\n  blurr_um: 0.8\n")
    with pytest.raises(ConfigError, match="unknown key.*'blurr_um'"):
        simulation_config("merker", config_file=bad)
    assert main(["simulate", "--preset", "merker", "--n", "1", "--out", str(tmp_path / "o"),
                 "--config", str(bad), "--quiet"]) == 2
    assert "blurr_um" in capsys.readouterr().err
    invalid = tmp_path / "invalid.yaml"
    invalid.write_text("cells:\n  glia:\n    diameter_um: [8, 4]\n")
    with pytest.raises(ConfigError, match="diameter_um must be an increasing range"):
        simulation_config("merker", config_file=invalid)
    with pytest.raises(ConfigError, match="no cell type 'astro'"):
        simulation_config("merker", overrides={"cells": {"astro": {"density": 1.0}}})


def test_meta_states_the_pixel_size_range_of_a_zoomed_preset(tmp_path):
    out = tmp_path / "fluo"
    write_simulation(preset("fluo"), n=1, size=32, seed=0, out=out, progress=False)
    meta = json.loads((out / "meta.json").read_text())
    low, high = meta["pixel_size_um_range"]
    assert low < meta["pixel_size_um"] < high
    assert meta["config"]["variation"]["zoom"] == [0.4, 3.0]


def test_an_image_too_large_for_memory_is_refused_up_front(tmp_path, monkeypatch):
    from cellsynth.errors import ConfigError
    from cellsynth.simulate import dataset

    monkeypatch.setattr(dataset, "_available_bytes", lambda: 2**30)  # 1 GiB free
    with pytest.raises(ConfigError, match=r"a 4096x4096 image needs about 1.9 GiB .* 1.0 GiB"):
        write_simulation(preset("fluo"), n=1, size=4096, seed=0, out=tmp_path / "big",
                         progress=False)
    assert not (tmp_path / "big").exists()


def test_a_full_disk_is_one_line_from_the_cli(tmp_path, monkeypatch, capsys):
    import errno

    from cellsynth.cli import main
    from cellsynth.simulate import dataset

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "0000.png"))

    monkeypatch.setattr(dataset, "_write_chunk", full)
    code = main(["simulate", "--preset", "fluo", "--n", "1", "--size", "64", "--out",
                 str(tmp_path / "sim"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err == [f"cellsynth simulate: error: {tmp_path / '0000.png'}: "
                                 "No space left on device"]
    assert not (tmp_path / "sim").exists()


def test_add_class_maps_redraws_them_for_an_older_simulation(tmp_path):
    import shutil

    from cellsynth.errors import DatasetError
    from cellsynth.simulate.dataset import add_class_maps

    out = tmp_path / "sim"
    write_simulation(preset("nissl"), n=3, size=48, seed=2, out=out, progress=False)
    written = {p.name: p.read_bytes() for p in (out / "classes").iterdir()}
    assert add_class_maps(out) is False  # it has them
    shutil.rmtree(out / "classes")  # as a simulation from before class maps
    assert add_class_maps(out) is True
    assert {p.name: p.read_bytes() for p in (out / "classes").iterdir()} == written
    # another seed in meta.json draws other images: refused, and nothing is written
    shutil.rmtree(out / "classes")
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "seed": 3}))
    with pytest.raises(DatasetError, match="0000.png: drawing it again from meta.json gives"):
        add_class_maps(out)
    assert sorted(p.name for p in out.iterdir()) == ["images", "labels", "meta.json",
                                                    "preview.png"]
