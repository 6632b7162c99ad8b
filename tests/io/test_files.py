import json

import pytest

from cellsynth.errors import ConfigError, OutputExistsError
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


def test_outputs_follow_the_umask(tmp_path):
    import os
    import stat

    from cellsynth.io.files import write_json

    old = os.umask(0o022)
    try:
        with staged_output_dir(tmp_path / "out") as staging:
            write_json(staging / "meta.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out" / "meta.json").stat().st_mode) == 0o644


def test_an_output_written_meanwhile_by_another_process_is_not_replaced(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(OutputExistsError, match="another process") as err:
        with staged_output_dir(out) as staging:
            (staging / "mine.txt").write_text("mine")
            out.mkdir()  # the other process finished first
            (out / "theirs.txt").write_text("theirs")
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("out.")]
    assert len(kept) == 1 and (kept[0] / "mine.txt").read_text() == "mine"
    assert str(kept[0]) in str(err.value)


def test_forced_run_folder_is_kept_aside_until_the_new_run_has_a_checkpoint(tmp_path):
    from cellsynth.io.files import discard_replaced_run, prepare_run_dir, restore_replaced_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_text("old weights")
    with pytest.raises(OutputExistsError, match="--force"):
        prepare_run_dir(run, resume=False, force=False)
    assert prepare_run_dir(run, resume=False, force=True) is False
    assert list(run.iterdir()) == []
    (run / "config.yaml").write_text("new")
    restore_replaced_run(run)  # the new run failed before its first checkpoint
    assert (run / "last.pt").read_text() == "old weights"
    prepare_run_dir(run, resume=False, force=True)
    (run / "last.pt").write_text("new weights")
    discard_replaced_run(run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_run_stopped_before_its_first_checkpoint_starts_again(tmp_path):
    from cellsynth.io.files import prepare_run_dir

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("steps: 100")
    (run / "log.jsonl").write_text('{"step": 1}\n')
    assert prepare_run_dir(run, resume=True, force=False) is False  # nothing to resume
    assert list(run.iterdir()) == []
    (run / "config.yaml").write_text("steps: 100")
    assert prepare_run_dir(run, resume=False, force=False) is False  # plain rerun: fine too
    (run / "last.pt").write_text("w")
    assert prepare_run_dir(run, resume=True, force=False) is True
    with pytest.raises(OutputExistsError, match="nothing to resume"):
        prepare_run_dir(tmp_path / "other", resume=True, force=False)


def test_a_failed_write_names_the_file_and_the_free_space(tmp_path):
    import errno

    from cellsynth.errors import CellsynthError
    from cellsynth.io.files import write_with

    def full_disk(tmp):
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(CellsynthError, match=r"last.pt: cannot write: No space left on device "
                                             r"\(\d+ MiB free on that disk\)"):
        write_with(tmp_path / "last.pt", full_disk)
    assert list(tmp_path.iterdir()) == []  # no half-written file left behind


def test_atomic_write_to_a_folder_or_into_a_missing_folder_is_one_line(tmp_path):
    from cellsynth.errors import CellsynthError
    from cellsynth.io.files import write_json

    with pytest.raises(CellsynthError, match="is a folder, expected a file name"):
        write_json(tmp_path, {})
    with pytest.raises(CellsynthError, match="does not exist"):
        write_json(tmp_path / "no" / "m.json", {})


def test_a_folder_that_refuses_files_is_named_not_the_temporary_file(tmp_path, monkeypatch):
    """`init --out` or `evaluate --json` into a folder one may not write: the error named
    `.c.8j1yyuz7.tmp.yaml`, a file the user never asked for."""
    import tempfile

    from cellsynth.errors import CellsynthError
    from cellsynth.io.files import write_json

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / ".m.x1y2.tmp.json"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(CellsynthError) as caught:
        write_json(tmp_path / "m.json", {})
    assert str(caught.value) == f"{tmp_path / 'm.json'}: cannot write there: Permission denied"


def test_json_log_resume_drops_later_steps_and_a_cut_line(tmp_path):
    from cellsynth.io.files import JsonLog

    path = tmp_path / "log.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "lo')
    log = JsonLog(path, keep_until=2)
    log.write(step=3, loss=0.5)
    log.close()
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"step": 1}, {"step": 2}, {"step": 3, "loss": 0.5}]


def test_resume_config_names_what_changed():
    from cellsynth.io.files import check_resume_config

    defaults = {"steps": 10, "lr": 1.0, "new_option": 0}
    check_resume_config({"steps": 10, "lr": 1.0}, {"steps": 20, "lr": 1.0, "new_option": 0},
                        defaults, {"steps"}, "run/last.pt")  # longer is fine, new key default
    with pytest.raises(ConfigError, match="run/last.pt: cannot resume with a different lr, "
                                          "new_option"):
        check_resume_config({"steps": 10, "lr": 1.0}, {"steps": 10, "lr": 2.0, "new_option": 1},
                            defaults, {"steps"}, "run/last.pt")


def test_a_library_caller_swapping_in_the_folder_it_is_in_is_refused_up_front(
        tmp_path, monkeypatch):
    """The CLI refuses `--out .` for outputs swapped in whole; a library caller
    (`write_simulation(out=".")`, `predict_folder(..., ".")`) reached staged_output_dir
    with an empty name and failed after its work. Refused there, in one line, before any
    image is simulated; a '..' that is not the folder one is in is taken as the folder."""
    from cellsynth.errors import CellsynthError
    from cellsynth.simulate import dataset, preset, write_simulation

    here = tmp_path / "a" / "b"
    here.mkdir(parents=True)
    monkeypatch.chdir(here)
    drawn = []
    monkeypatch.setattr(dataset, "render_scene",
                        lambda *a, **k: drawn.append(1) or (_ for _ in ()).throw(
                            AssertionError("simulated before the check")))
    for out in (".", "..", here / "c" / ".."):
        with pytest.raises(CellsynthError, match="is the folder this process is in"):
            write_simulation(preset("fluo"), n=1, size=32, seed=0, out=out, progress=False)
    assert not drawn and sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b"]
    monkeypatch.chdir(tmp_path)
    with staged_output_dir(tmp_path / "a" / "b" / "..", force=True) as staging:
        (staging / "x.txt").write_text("new")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.txt"]
