"""Summaries over seeds and the paired bootstrap over test units."""

import numpy as np
import pytest

from cellsynth.evaluate import aggregate, matching
from cellsynth.evaluate.stats import (
    counts,
    metrics_from_counts,
    paired_bootstrap,
    split_tiles,
    summarize,
)


def _labels(n_cells: int, shift: int = 0, size: int = 64) -> np.ndarray:
    labels = np.zeros((size, size), np.int32)
    for i in range(n_cells):
        y, x = divmod(i, 4)
        labels[4 + 15 * y + shift:14 + 15 * y + shift, 4 + 15 * x:14 + 15 * x] = i + 1
    return labels


def test_metrics_from_counts_agree_with_matching():
    units = [matching(_labels(8), _labels(6, shift=2)), matching(_labels(5), _labels(9)),
             matching(_labels(0), _labels(0))]
    total = aggregate(units)
    found = metrics_from_counts(counts(units).sum(0))
    assert found["f1_50"] == pytest.approx(total.f1[0])
    assert found["f1_avg"] == pytest.approx(total.f1_avg)
    assert found["ap_50"] == pytest.approx(total.ap[0])
    assert found["pq_50"] == pytest.approx(total.pq[0])


def test_summarize_is_mean_and_std_over_seeds():
    perfect = [matching(_labels(6), _labels(6))]
    half = [matching(_labels(6), _labels(3))]  # 3 of 6 found: F1 = 2 * 3 / 9
    summary = summarize([perfect, half])
    assert summary["f1_50"]["per_seed"] == pytest.approx([1.0, 2 / 3])
    assert summary["f1_50"]["mean"] == pytest.approx(5 / 6)
    assert summary["f1_50"]["std"] == pytest.approx(np.std([1.0, 2 / 3], ddof=1))


def test_paired_bootstrap_sees_a_consistent_gain_and_no_gain():
    truth = [_labels(12) for _ in range(6)]
    better = [[matching(t, _labels(12)) for t in truth] for _ in range(3)]  # all found
    worse = [[matching(t, _labels(8)) for t in truth] for _ in range(3)]    # 8 of 12
    result = paired_bootstrap(better, worse, n=500)
    assert result["f1_50"]["diff"] == pytest.approx(1 - 16 / 20)
    assert result["f1_50"]["ci95"][0] > 0 and result["f1_50"]["p_le_0"] == 0.0
    same = paired_bootstrap(worse, worse, n=200)
    assert same["f1_50"]["diff"] == 0.0 and same["f1_50"]["ci95"] == [0.0, 0.0]
    assert same["f1_50"]["p_le_0"] == 1.0
    # a gain on one unit only is not a consistent gain
    mixed = [[matching(t, _labels(12 if i == 0 else 8)) for i, t in enumerate(truth)]
             for _ in range(3)]
    result = paired_bootstrap(mixed, worse, n=2000)
    assert result["f1_50"]["ci95"][0] == 0.0 and result["f1_50"]["p_le_0"] > 0.2
    with pytest.raises(ValueError, match="same seeds and units"):
        paired_bootstrap(better, worse[:2])


def test_runs_of_a_setting_are_averaged_and_their_disagreement_widens_the_interval():
    truth = [_labels(12) for _ in range(6)]
    found = [matching(t, _labels(12)) for t in truth]  # F1 1.0
    some = [matching(t, _labels(8)) for t in truth]    # F1 16 / 20 = 0.8
    # one seed; setting a trained twice: one run finds every cell, the other 8 of 12
    summary = summarize([[found, some]])
    assert summary["f1_50"]["per_seed"] == pytest.approx([0.9])
    assert summary["f1_50"]["per_run"] == [[pytest.approx(1.0), pytest.approx(0.8)]]
    assert summary["f1_50"]["run_std"] == pytest.approx(np.std([1.0, 0.8], ddof=1))
    assert "run_std" not in summarize([found])["f1_50"]
    result = paired_bootstrap([[found, some]], [[some]], n=4000)
    assert result["f1_50"]["diff"] == pytest.approx(0.1)
    assert result["n_runs"] == [[2], [1]]
    # every unit gains in the mean of the runs, so units alone would call it certain; but
    # a quarter of the resamples draw the weaker run twice: no gain there
    assert result["f1_50"]["p_le_0"] == pytest.approx(0.25, abs=0.03)
    assert result["f1_50"]["ci95"] == pytest.approx([0.0, 0.2])
    agreeing = paired_bootstrap([[found, found]], [[some]], n=500)
    assert agreeing["f1_50"]["p_le_0"] == 0.0
    assert agreeing["f1_50"]["ci95"] == pytest.approx([0.2, 0.2])
    # one run on each side: the unit bootstrap, draw for draw
    half = [matching(t, _labels(12 if i % 2 else 8)) for i, t in enumerate(truth)]
    as_runs = paired_bootstrap([[half], [some]], [[some], [half]], n=300, seed=4)
    assert as_runs == paired_bootstrap([half, some], [some, half], n=300, seed=4)
    assert "n_runs" not in as_runs
    with pytest.raises(ValueError, match="same seeds and units"):
        paired_bootstrap([[found, some[:3]]], [[some]])


def test_split_tiles_covers_the_image_once():
    labels = np.arange(35 * 22).reshape(35, 22)
    tiles = split_tiles(labels, 3)
    assert len(tiles) == 9
    assert sorted(np.concatenate([t.ravel() for t in tiles]).tolist()) == labels.ravel().tolist()
    assert split_tiles(labels, 1)[0] is not None and split_tiles(labels, 1)[0].shape == (35, 22)


def test_outcome_overlay_colours_and_counts_agree_with_matching():
    from cellsynth.viz import OUTCOME_COLORS, outcome_overlay

    truth = np.zeros((40, 40), np.int32)
    truth[2:10, 2:10], truth[20:30, 20:30], truth[2:8, 30:38] = 1, 2, 3
    predicted = np.zeros((40, 40), np.int32)
    predicted[2:10, 3:10], predicted[12:16, 12:16], predicted[21:30, 20:29] = 5, 6, 7
    rgb, found = outcome_overlay(np.zeros((40, 40), np.uint8), truth, predicted)
    assert found == {"tp": 2, "fp": 1, "fn": 1}
    assert found["tp"] == matching(truth, predicted).tp[0]
    assert (rgb[12, 12] == OUTCOME_COLORS["fp"]).all()    # the invented cell
    assert (rgb[2, 34] == OUTCOME_COLORS["fn"]).all()     # the missed one, on its outline
    assert (rgb[21, 25] == OUTCOME_COLORS["tp"]).all()
    with pytest.raises(ValueError, match="iou must be >= 0.5"):
        outcome_overlay(rgb, truth, predicted, iou=0.3)
