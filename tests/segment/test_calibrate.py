"""The label-free score threshold: the detector's count on unlabeled images matched to the
estimator's count."""

import numpy as np
import pytest

from cellsynth.segment.calibrate import FLOOR, count_threshold, threshold_for_count


def test_threshold_for_count_takes_the_score_at_that_rank():
    scores = [np.array([0.9, 0.999, 0.95]), np.array([0.97]), np.array([])]
    assert threshold_for_count(scores, 2) == pytest.approx(0.97)
    assert threshold_for_count(scores, 2.4) == pytest.approx(0.97)   # rounded count
    assert threshold_for_count(scores, 4) == pytest.approx(0.9)
    assert threshold_for_count(scores, 0) == pytest.approx(0.999)    # none expected: keep the best
    assert threshold_for_count(scores, 10) == FLOOR                   # fewer proposals than cells
    assert threshold_for_count([np.array([0.2, 0.3])], 1) == FLOOR   # never below the floor
    assert threshold_for_count([], 3) == FLOOR


def test_count_threshold_matches_the_estimated_count(trained_detector):
    run, sim = trained_detector
    result = count_threshold(run, sim, "fluo", pixel_size_um=0.5)
    # the estimator finds the simulated nuclei; the barely trained detector finds only a few
    # above its default threshold, and exactly as many as estimated at the calibrated one
    assert result["n_images"] == 4 and result["estimated_count"] >= 20
    assert result["count_at_own"] < result["estimated_count"]
    assert FLOOR < result["score_thresh"] < result["own_score_thresh"] == pytest.approx(0.9)
    assert result["count_at_threshold"] == result["estimated_count"]
