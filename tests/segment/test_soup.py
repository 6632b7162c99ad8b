"""Weight averaging of fine-tuned detectors (cellsynth soup)."""

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from cellsynth.errors import CellsynthError, OutputExistsError
from cellsynth.segment.cpn import build_model
from cellsynth.segment.predict import load_detector, predict_folder
from cellsynth.segment.soup import average_weights, soup
from cellsynth.segment.trainer import THRESHOLD_GRID, TrainConfig, train
from cellsynth.simulate import preset, write_simulation

TINY = dict(crop=64, batch=2, samples=32, order=4, refinement_iterations=1, val_every=1000,
            precision="fp32")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two fine-tunings of one pretrained detector (seeds 0 and 1), one of another
    pretrained detector, a detector trained from scratch, and their images."""
    root = tmp_path_factory.mktemp("soup")
    sim = root / "sim"
    write_simulation(preset("fluo"), n=3, size=64, seed=0, out=sim, progress=False)
    pre = TrainConfig(steps=2, lr=4e-3, warmup=1, **TINY)
    train(pre, [sim], root / "pre", progress=False)
    train(replace(pre, seed=5), [sim], root / "pre_b", progress=False)
    tune = TrainConfig(steps=3, lr=1e-2, warmup=1, **TINY)
    for name, seed, init in (("ft0", 0, "pre"), ("ft1", 1, "pre"), ("other", 0, "pre_b")):
        train(replace(tune, seed=seed), [sim], root / name, init=root / init, val=sim,
              progress=False)
    yield {"root": root, "sim": sim, "ft0": root / "ft0", "ft1": root / "ft1",
            "other": root / "other", "scratch": root / "pre"}
    shutil.rmtree(root, ignore_errors=True)  # ~0.7 GB of checkpoints; CI disks are small


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "best.pt", map_location="cpu", weights_only=True)["model"]


def test_the_soup_is_the_mean_of_the_runs_and_a_working_detector(runs, tmp_path):
    out = tmp_path / "soup"
    summary = soup([runs["ft0"], runs["ft1"]], out, val=runs["sim"])
    a, b, mean = _weights(runs["ft0"]), _weights(runs["ft1"]), _weights(out)
    floats = [k for k in a if a[k].is_floating_point()]
    assert any(not torch.equal(a[k], b[k]) for k in floats)  # two different fine-tunings
    for key in floats:
        assert torch.allclose(mean[key], (a[key] + b[key]) / 2, atol=1e-6), key
    # it loads and predicts as any trained detector (keys kept under their own names)
    detector = load_detector(out, say_precision=False)
    assert detector.score_thresh == summary["score_thresh"]
    assert summary["score_thresh"] in THRESHOLD_GRID and summary["n_val_images"] == 3
    info = json.loads((out / "run.json").read_text())
    assert info["stage"] == "soup" and len(info["runs"]) == 2
    assert Path(info["init"]).parent == runs["scratch"].resolve()
    predict_folder(out, runs["sim"], tmp_path / "pred", progress=False)
    for image in sorted((runs["sim"] / "labels").iterdir()):
        predicted = tifffile.imread(tmp_path / "pred" / "labels" / f"{image.stem}.tif")
        assert predicted.shape == tifffile.imread(image).shape


def test_without_validation_images_the_threshold_is_the_runs_median(runs, tmp_path):
    copy = tmp_path / "ft0_copy"  # (a third run; one run named twice is refused)
    shutil.copytree(runs["ft0"], copy)
    thresholds = [torch.load(runs[r] / "best.pt", weights_only=True)["score_thresh"]
                  for r in ("ft0", "ft1", "ft0")]
    summary = soup([runs["ft0"], runs["ft1"], copy], tmp_path / "soup")
    assert summary["score_thresh"] == sorted(thresholds)[1]
    assert "val_f1" not in summary


def test_average_weights_keeps_the_version_metadata_torchvision_needs():
    model = build_model(in_channels=1, model="tiny_u22", order=4, samples=16,
                        refinement_iterations=1)
    first = model.state_dict()
    second = type(first)({k: v + 1 if v.is_floating_point() else v for k, v in first.items()})
    second._metadata = first._metadata
    mean = average_weights([first, second])
    fresh = build_model(in_channels=1, model="tiny_u22", order=4, samples=16,
                        refinement_iterations=1)
    fresh.load_state_dict(mean)  # strict: every key under its own name
    assert torch.allclose(fresh.state_dict()[next(k for k in first if
                                                  first[k].is_floating_point())],
                          first[next(k for k in first if first[k].is_floating_point())] + 0.5)
    # the trap it avoids: the same tensors in a plain dict get renamed by torchvision's FPN
    with pytest.raises(RuntimeError, match="inner_blocks"):
        fresh.load_state_dict(dict(mean))


def test_integer_buffers_come_from_the_first_run():
    first = {"w": torch.tensor([1.0, 3.0]), "n": torch.tensor(4)}
    second = {"w": torch.tensor([3.0, 5.0]), "n": torch.tensor(9)}
    mean = average_weights([first, second])
    assert torch.equal(mean["w"], torch.tensor([2.0, 4.0])) and int(mean["n"]) == 4
    with pytest.raises(ValueError, match="different tensors"):
        average_weights([first, {"w": first["w"]}])


@pytest.mark.parametrize("pair, message", [
    (("ft0", "scratch"), "not a fine-tuning"),
    (("ft0", "other"), "fine-tuned from"),
])
def test_runs_that_do_not_share_a_pretrained_detector_are_refused(runs, tmp_path, pair,
                                                                   message):
    out = tmp_path / "soup"
    with pytest.raises(CellsynthError, match=message) as err:
        soup([runs[pair[0]], runs[pair[1]]], out)
    assert str(runs[pair[1]]) in str(err.value)  # names the run that does not fit
    assert not out.exists()  # nothing written


def test_fine_tunings_of_a_copied_pretrained_detector_share_its_start(runs, tmp_path):
    """A run folder copied between its fine-tunings: the recorded starts differ as paths but
    are the same bytes, so the fine-tunings still average."""
    shutil.copytree(runs["root"] / "pre", tmp_path / "pre_copy")
    tune = TrainConfig(steps=1, lr=1e-2, warmup=1, seed=2, **TINY)
    train(tune, [runs["sim"]], tmp_path / "ft2", init=tmp_path / "pre_copy", progress=False)
    starts = {json.loads((r / "run.json").read_text())["init"]
              for r in (runs["ft0"], tmp_path / "ft2")}
    assert len(starts) == 2  # two paths
    summary = soup([runs["ft0"], tmp_path / "ft2"], tmp_path / "soup")
    assert len(summary["runs"]) == 2 and (tmp_path / "soup" / "best.pt").is_file()


def test_fine_tunings_of_a_pretraining_redone_at_the_same_path_are_refused(runs, tmp_path):
    """The pretrained detector was trained again, into the same folder, between two
    fine-tunings: their recorded starts are one path but two detectors, which do not
    average; the checkpoint hashes recorded at fine-tuning time tell them apart."""
    shutil.copytree(runs["root"] / "pre", tmp_path / "pre")
    tune = TrainConfig(steps=1, lr=1e-2, warmup=1, seed=2, **TINY)
    train(tune, [runs["sim"]], tmp_path / "ft_a", init=tmp_path / "pre", progress=False)
    shutil.copyfile(runs["root"] / "pre_b" / "last.pt", tmp_path / "pre" / "last.pt")
    train(tune, [runs["sim"]], tmp_path / "ft_b", init=tmp_path / "pre", progress=False)
    infos = [json.loads((tmp_path / r / "run.json").read_text()) for r in ("ft_a", "ft_b")]
    assert infos[0]["init"] == infos[1]["init"]  # one path
    assert infos[0]["init_sha256"] != infos[1]["init_sha256"]
    with pytest.raises(CellsynthError, match="same path, other contents") as err:
        soup([tmp_path / "ft_a", tmp_path / "ft_b"], tmp_path / "soup")
    assert str(tmp_path / "ft_b") in str(err.value)
    assert not (tmp_path / "soup").exists()


def test_another_architecture_is_refused(runs, tmp_path):
    wide = tmp_path / "wide"
    config = TrainConfig(steps=1, **{**TINY, "order": 6})
    train(config, [runs["sim"]], wide, init=None, progress=False)
    info = json.loads((wide / "run.json").read_text())
    info["init"] = json.loads((runs["ft0"] / "run.json").read_text())["init"]
    (wide / "run.json").write_text(json.dumps(info))  # as if fine-tuned from the same start
    with pytest.raises(CellsynthError, match="another architecture"):
        soup([runs["ft0"], wide], tmp_path / "soup")


def test_a_soup_never_replaces_a_folder_without_force(runs, tmp_path):
    out = tmp_path / "soup"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError):
        soup([runs["ft0"], runs["ft1"]], out)
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(OutputExistsError, match="input"):  # never over one of its runs
        soup([runs["ft0"], runs["ft1"]], runs["ft1"], force=True)
    assert np.isfinite(soup([runs["ft0"], runs["ft1"]], out, force=True)["score_thresh"])
    assert not (out / "notes.txt").exists()
    with pytest.raises(CellsynthError, match="at least 2"):
        soup([runs["ft0"]], tmp_path / "one")


def test_the_cli_says_what_it_made_or_one_line_why_not(runs, tmp_path, capsys):
    from cellsynth.cli import main

    out = tmp_path / "soup"
    assert main(["soup", str(runs["ft0"]), str(runs["ft1"]), "--out", str(out), "--val",
                 str(runs["sim"]), "--quiet"]) == 0
    said = capsys.readouterr().out
    assert f"averaged 2 fine-tunings -> {out}; validation F1@0.5" in said
    assert main(["soup", str(runs["ft0"]), str(runs["scratch"]), "--out",
                 str(tmp_path / "bad"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cellsynth soup: error: ")
    assert "not a fine-tuning" in err[0] and "Traceback" not in err[0]
    # a run.json cut short (a disk filled while it was written) gave json's traceback
    cut = shutil.copytree(runs["ft1"], tmp_path / "cut")
    (cut / "run.json").write_text((runs["ft1"] / "run.json").read_text()[:40])
    assert main(["soup", str(runs["ft0"]), str(cut), "--out", str(tmp_path / "cutsoup"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{cut / 'run.json'}: cannot read it" in err[0], err
    assert not (tmp_path / "cutsoup").exists()


def test_one_detector_named_twice_is_refused(runs, tmp_path):
    """`soup A A` (or A and A/best.pt) averaged one fine-tuning with itself and called it
    a soup (fresh-user audit)."""
    from cellsynth.errors import CellsynthError
    from cellsynth.segment.predict import checkpoint_path

    first = runs["ft0"]
    for twin in (first, checkpoint_path(first)):
        with pytest.raises(CellsynthError, match=r"the same detector as .*a soup averages "
                                                 r"different fine-tunings"):
            soup([first, twin], tmp_path / "s", force=True)
    assert not (tmp_path / "s").exists()
