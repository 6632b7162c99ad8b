from cellsynth.cli import main
from cellsynth.io.inspect import summarize


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
