"""Evaluation: instance-segmentation metrics (matching) and image-set realism metrics.

``matching`` and ``realism`` are the two entry points; the classifier two-sample test lives in
``c2st`` (also reachable through ``realism``), and torch is imported only when a C2ST runs.
"""

from cellsynth.evaluate.c2st import C2STResult, c2st
from cellsynth.evaluate.folders import DatasetEvaluation, evaluate_folders
from cellsynth.evaluate.matching import (
    THRESHOLDS,
    Matching,
    aggregate,
    matching,
    matching_by_score,
    matching_tiles,
)
from cellsynth.evaluate.realism import (
    RealismResult,
    SWDResult,
    histogram_distance,
    realism,
    sliced_wasserstein,
    spectrum_distance,
)

__all__ = [
    "THRESHOLDS",
    "C2STResult",
    "DatasetEvaluation",
    "Matching",
    "RealismResult",
    "SWDResult",
    "aggregate",
    "c2st",
    "evaluate_folders",
    "histogram_distance",
    "matching",
    "matching_by_score",
    "matching_tiles",
    "realism",
    "sliced_wasserstein",
    "spectrum_distance",
]
