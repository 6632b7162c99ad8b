import pytest

from cellsynth.errors import OutputExistsError
from cellsynth.io.files import staged_output_dir


def test_refuses_non_empty_output_without_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(OutputExistsError, match="--force"):
        with staged_output_dir(out):
            pass
    assert (out / "keep.txt").read_text() == "precious"


def test_failed_run_keeps_old_output_and_leaves_no_staging(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(RuntimeError):
        with staged_output_dir(out, force=True) as staging:
            (staging / "new.txt").write_text("half")
            raise RuntimeError("killed")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_force_replaces_only_when_complete(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with staged_output_dir(out, force=True) as staging:
        (staging / "new.txt").write_text("new")
        assert (out / "old.txt").exists()  # still there while the new one is built
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_empty_existing_folder_is_fine(tmp_path):
    (tmp_path / "out").mkdir()
    with staged_output_dir(tmp_path / "out") as staging:
        (staging / "a").write_text("a")
    assert (tmp_path / "out" / "a").exists()
