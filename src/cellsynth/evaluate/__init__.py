"""Evaluation: instance-segmentation metrics (matching) and image-set realism metrics.

``matching`` and ``realism`` are the two entry points; torch is imported only when a C2ST runs.
"""

from cellsynth.evaluate.matching import (
    THRESHOLDS,
    DatasetEvaluation,
    Matching,
    aggregate,
    evaluate_folders,
    matching,
)
from cellsynth.evaluate.realism import (
    C2STResult,
    RealismResult,
    SWDResult,
    c2st,
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
    "realism",
    "sliced_wasserstein",
    "spectrum_distance",
]
