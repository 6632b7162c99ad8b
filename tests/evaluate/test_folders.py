"""Evaluating dataset folders, through the library and through ``cellsynth evaluate``."""

import json

import numpy as np
import pytest
import tifffile

from cellsynth.cli import main
from cellsynth.errors import DatasetError, ImageReadError
from cellsynth.evaluate import evaluate_folders
from cellsynth.io import write_image, write_labels


def labels_a():
    labels = np.zeros((32, 32), np.uint16)
    labels[2:12, 2:12] = 1
    labels[20:30, 4:14] = 2
    return labels


def labels_b():
    labels = np.zeros((32, 32), np.uint16)
    labels[5:15, 15:25] = 7
    return labels


def make_dataset(root, labels_by_id, *, images=True):
    (root / "labels").mkdir(parents=True)
    for image_id, labels in labels_by_id.items():
        if images:
            (root / "images").mkdir(exist_ok=True)
            write_image(root / "images" / f"{image_id}.png", (labels > 0).astype(np.uint8) * 200)
        write_labels(root / "labels" / f"{image_id}.tif", labels)
    return root


@pytest.fixture
def gt_dir(tmp_path):
    return make_dataset(tmp_path / "gt", {"a": labels_a(), "b": labels_b()})


def shifted(labels, dx):
    return np.roll(labels, dx, axis=1)


def test_folder_of_label_images_as_prediction(gt_dir, tmp_path):
    pred = tmp_path / "pred"
    pred.mkdir()
    write_labels(pred / "a.tif", shifted(labels_a(), 2) * 3)  # both objects: IoU 80/120
    write_labels(pred / "b.png", np.zeros((32, 32), np.uint16))  # object of b missed
    result = evaluate_folders(gt_dir, pred)
    total = result.total
    assert (total.n_images, total.n_gt, total.n_pred) == (2, 3, 2)
    assert total.tp[0] == 2 and total.fn[0] == 1 and total.fp[0] == 0  # at 0.5
    assert total.tp[-1] == 0  # at 0.9
    assert set(result.per_image) == {"a", "b"}
    assert result.per_image["b"].fn == (1,) * 9
    report = result.to_json()
    assert report["per_image"]["a"]["tp"][0] == 2
    assert report["f1"][0] == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))


@pytest.mark.parametrize("images", [True, False])
def test_dataset_folder_and_labels_only_folder_as_prediction(gt_dir, tmp_path, images):
    pred = make_dataset(tmp_path / "pred", {"a": labels_a(), "b": labels_b()}, images=images)
    total = evaluate_folders(gt_dir, pred).total
    assert total.f1_avg == 1.0 and total.tp == (3,) * 9


def test_a_predictions_ome_zarr_labels_are_scored(gt_dir, tmp_path):
    """predict writes a section above 8192² as labels/<id>.ome.zarr (`--labels auto`), and
    evaluate refused its own output: "not a file"."""
    from cellsynth.io.ome_zarr import write_labels_zarr

    pred = tmp_path / "pred"
    (pred / "labels").mkdir(parents=True)
    write_labels_zarr(pred / "labels" / "a.ome.zarr", shifted(labels_a(), 2) * 3,
                      pixel_size_um=0.5)
    write_labels(pred / "labels" / "b.tif", labels_b())
    result = evaluate_folders(gt_dir, pred)
    assert (result.total.n_images, result.total.n_gt, result.total.n_pred) == (2, 3, 3)
    assert result.per_image["a"].tp[0] == 2 and result.per_image["a"].tp[-1] == 0
    assert result.per_image["b"].tp == (1,) * 9


def test_an_images_folder_given_for_labels_is_refused_not_scored(gt_dir):
    """--gt DATASET/images (or --pred RUN/overlays): intensities would be read as label
    maps and scored as a few huge cells (F1 0, no error); one line names the right folder."""
    with pytest.raises(DatasetError, match=r"gt/images: the ground-truth images, not their "
                                           r"labels; give .*gt or .*gt/labels"):
        evaluate_folders(gt_dir / "images", gt_dir)
    with pytest.raises(DatasetError, match=r"the predicted images, not their labels"):
        evaluate_folders(gt_dir, gt_dir / "images")


def test_a_folder_of_raw_images_as_ground_truth_is_refused_not_scored(tmp_path):
    """A plain folder of images (no labels beside them) given as --gt was read as label maps:
    every grey value a "cell", F1 0 without a word."""
    raw = tmp_path / "raw"
    raw.mkdir()
    cells = np.kron(np.arange(1, 17).reshape(4, 4), np.ones((32, 32), int)).astype(np.uint16)
    pred = make_dataset(tmp_path / "pred", {"a": cells}, images=False)
    rng = np.random.default_rng(0)
    write_image(raw / "a.png", rng.integers(1, 255, cells.shape, dtype=np.uint8))
    with pytest.raises(ImageReadError, match=r"raw/a.png: an image of intensities, not an "
                                             r"instance label map \(254 grey values in"):
        evaluate_folders(raw, pred)
    assert evaluate_folders(pred, pred).total.f1_avg == 1.0  # the 16 square cells


def test_labels_in_a_capitalised_or_singular_folder_are_the_ground_truth(gt_dir, tmp_path):
    """Images/ + Labels/ was not a dataset: its Images/ were read as a folder of label maps."""
    root = tmp_path / "upper"
    for name in ("Images", "Label"):
        (root / name).mkdir(parents=True)
    for image_id, labels in (("a", labels_a()), ("b", labels_b())):
        write_image(root / "Images" / f"{image_id}.png", np.full(labels.shape, 9, np.uint8))
        write_labels(root / "Label" / f"{image_id}.tif", labels)
    total = evaluate_folders(root, gt_dir).total
    assert (total.n_gt, total.tp[0], total.f1_avg) == (3, 3, 1.0)
    with pytest.raises(DatasetError, match=r"upper/Images: the ground-truth Images, not"):
        evaluate_folders(root / "Images", gt_dir)


def test_a_cellpose_folder_as_ground_truth_is_scored_by_its_masks(gt_dir, tmp_path):
    """x.png beside x_masks.png (Cellpose's layout, as `run` takes a test folder): the masks
    are the ground truth (the images were read as label maps: 246 "cells", F1 0)."""
    cellpose = tmp_path / "cellpose"
    cellpose.mkdir()
    for image_id, labels in (("a", labels_a()), ("b", labels_b())):
        write_image(cellpose / f"{image_id}.png", (labels > 0).astype(np.uint8) * 200 + 7)
        write_labels(cellpose / f"{image_id}_masks.png", labels)
    total = evaluate_folders(cellpose, gt_dir).total
    assert (total.n_gt, total.n_pred, total.tp[0]) == (3, 3, 3)


def test_missing_id_in_prediction_names_folder_and_file(gt_dir, tmp_path):
    pred = make_dataset(tmp_path / "pred", {"a": labels_a()}, images=False)
    with pytest.raises(DatasetError, match=r"pred/labels: no prediction for 1 .*b\.tif"):
        evaluate_folders(gt_dir, pred)


def test_predicted_images_without_ground_truth_are_named_and_not_scored(gt_dir, tmp_path):
    """A whole folder predicted, a few of its images annotated (the usual way): those are
    scored, the others named (the command refused the folder before)."""
    pred = make_dataset(tmp_path / "pred", {"a": labels_a(), "b": shifted(labels_b(), 9),
                                            "c": labels_b()}, images=False)
    result = evaluate_folders(gt_dir, pred)
    assert result.unscored == ("c",)
    assert set(result.per_image) == {"a", "b"}
    assert (result.total.n_images, result.total.n_pred, result.total.tp[0]) == (2, 3, 2)
    assert result.to_json()["unscored"] == ["c"]


def test_no_predicted_image_with_ground_truth_is_one_error(gt_dir, tmp_path):
    pred = make_dataset(tmp_path / "pred", {"c": labels_b()}, images=False)
    with pytest.raises(DatasetError, match=r"gt/labels: no ground truth for any predicted id "
                                           r".*c\.tif.*matched by file name"):
        evaluate_folders(gt_dir, pred)


def test_ground_truth_image_without_labels(gt_dir, tmp_path):
    write_image(gt_dir / "images" / "c.png", np.zeros((32, 32), np.uint8))
    with pytest.raises(DatasetError, match=r"c\.png"):
        evaluate_folders(gt_dir, gt_dir)


def test_size_mismatch(gt_dir, tmp_path):
    pred = make_dataset(tmp_path / "pred", {"a": labels_a(), "b": labels_b()[:30]}, images=False)
    with pytest.raises(ImageReadError, match=r"b\.tif: size 30x32 does not match .*32x32"):
        evaluate_folders(gt_dir, pred)


def test_non_integer_labels(gt_dir, tmp_path):
    pred = make_dataset(tmp_path / "pred", {"a": labels_a()}, images=False)
    tifffile.imwrite(pred / "labels" / "b.tif", labels_b().astype(np.float32) + 0.5)
    with pytest.raises(ImageReadError, match=r"b\.tif: labels must be an integer image"):
        evaluate_folders(gt_dir, pred)


def test_empty_folder(gt_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty: no images found"):
        evaluate_folders(gt_dir, tmp_path / "empty")


def test_cli_prints_table_and_writes_json(gt_dir, tmp_path, capsys):
    pred = tmp_path / "pred"
    pred.mkdir()
    write_labels(pred / "a.tif", labels_a())
    write_labels(pred / "b.tif", labels_b())
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt_dir), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "F1avg 1.0000" in text and "0.90" in text
    report = json.loads(out.read_text())
    for key in ("thresholds", "f1", "precision", "recall", "ap", "pq", "mean_iou", "f1_avg",
                "n_images", "n_gt", "n_pred", "per_image"):
        assert key in report
    assert report["f1"] == [1.0] * 9 and report["n_gt"] == 3 and report["n_images"] == 2
    assert set(report["per_image"]) == {"a", "b"}


def test_cli_quiet_draws_no_progress_bar(gt_dir, capsys):
    """evaluate had no --quiet, unlike the other commands (a script's log got its bar)."""
    assert main(["evaluate", "--pred", str(gt_dir), "--gt", str(gt_dir)]) == 0
    assert "evaluate: " in capsys.readouterr().err  # tqdm's bar, "evaluate: 100%|..."
    assert main(["evaluate", "--pred", str(gt_dir), "--gt", str(gt_dir), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and "F1avg 1.0000" in captured.out


def test_a_prediction_given_as_ground_truth_is_said(gt_dir, tmp_path):
    """--pred and --gt swapped printed a plausible table, precision and recall exchanged."""
    pred = make_dataset(tmp_path / "pred", {"a": labels_a(), "b": labels_b()}, images=False)
    (pred / "meta.json").write_text(json.dumps({"stage": "predict"}))
    with pytest.warns(UserWarning, match=r"pred: the ground truth given is a cellsynth "
                                         r"predict output; are --gt and --pred swapped\?"):
        assert evaluate_folders(pred, gt_dir).total.f1_avg == 1.0
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the right way round: nothing said
        evaluate_folders(gt_dir, pred)


def test_cli_user_error_is_one_line(gt_dir, tmp_path, capsys):
    assert main(["evaluate", "--pred", str(tmp_path / "nope"), "--gt", str(gt_dir)]) == 2
    err = capsys.readouterr().err
    assert "nope: no such folder" in err and "Traceback" not in err


def test_cli_names_the_predictions_it_did_not_score(gt_dir, tmp_path, capsys):
    pred = make_dataset(tmp_path / "pred", {"a": labels_a(), "b": labels_b(),
                                            "zz": labels_b()}, images=False)
    assert main(["evaluate", "--pred", str(pred), "--gt", str(gt_dir)]) == 0
    out = capsys.readouterr().out
    assert "F1avg 1.0000" in out
    assert "not scored: 1 predicted image(s) without ground truth" in out and "zz" in out


def test_cli_json_is_checked_before_the_work_and_never_replaces_silently(gt_dir, tmp_path,
                                                                           capsys):
    """--json wrote over any file, an annotation it had just read included, and found a
    missing folder only after the work; now: its folder is made, an existing file needs
    --force, a file in what the command reads is refused, and errors name the file."""
    pred = make_dataset(tmp_path / "pred", {"a": labels_a(), "b": labels_b()}, images=False)
    args = ["evaluate", "--pred", str(pred), "--gt", str(gt_dir), "--json"]
    out = tmp_path / "new" / "folder" / "m.json"
    assert main(args + [str(out)]) == 0
    assert json.loads(out.read_text())["n_gt"] == 3
    out.write_text("{}")
    assert main(args + [str(out)]) == 2
    err = capsys.readouterr().err
    assert "m.json: exists; choose another name or pass --force" in err
    assert out.read_text() == "{}"
    assert main(args + [str(out), "--force"]) == 0
    assert json.loads(out.read_text())["n_gt"] == 3
    label = gt_dir / "labels" / "a.tif"
    before = label.read_bytes()
    for target in (label, gt_dir / "labels" / "new.json", pred / "labels" / "m.json"):
        assert main(args + [str(target), "--force"]) == 2
        err = capsys.readouterr().err
        assert f"{target.name}: lies in the input" in err and "Traceback" not in err
    assert label.read_bytes() == before and not (gt_dir / "labels" / "new.json").exists()
    assert main(args + [str(gt_dir / "m.json")]) == 0  # beside the dataset's folders: fine
