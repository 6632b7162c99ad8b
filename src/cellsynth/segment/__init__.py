"""Stages 3 and 4: train a Contour Proposal Network (celldetection) on synthetic data,
fine-tune it on a few real images, and predict instance labels on images of any size.

>>> from cellsynth.segment import TrainConfig, train, load_detector, predict_image
>>> train(TrainConfig(steps=2000), ["sim"], "pretrained")                 # doctest: +SKIP
>>> train(TrainConfig(steps=500, lr=1e-3), "real_k2", "tuned", init="pretrained")  # doctest: +SKIP
>>> labels = predict_image(load_detector("tuned"), image)                 # doctest: +SKIP

Only ``cpn.py`` imports celldetection; the names above are loaded on first use (torch is
heavy), so ``import cellsynth.segment`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> the module of this package that defines it
_EXPORTS = {
    "TrainConfig": "train_config", "LossWeights": "train_config",
    "load_train_config": "train_config", "train": "trainer",
    "Detector": "predict", "load_detector": "predict", "predict_image": "predict",
    "image_proposals": "predict", "predict_folder": "folders",
    "detections_table": "folders", "average_weights": "soup", "soup": "soup",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
