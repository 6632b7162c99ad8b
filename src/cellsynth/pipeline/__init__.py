"""Running the stages together: ``cellsynth run``, ``demo``, ``report`` and ``experiment``.

- ``config``: :class:`PipelineConfig` and the per-stage options;
- ``run``: the run loop (state, fingerprints, skip/resume);
- ``stages``: what each stage reads, depends on and does;
- ``staging``: the user's real data copied into the run (rescaled, one channel, selected);
- ``layout``: the names of every folder and file of a run (used by all subpackages);
- ``report``: the HTML report of a run; ``demo``: the bundled demo;
- ``experiment``: settings x seeds of detector runs, evaluated with paired statistics;
  ``experiment_results``: its results table and learning-curve plot; ``experiment_estimate``:
  its cost on this machine (``--estimate``).

Importing this package imports nothing heavy; the names below load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PipelineConfig": "config", "RealData": "config", "SimulateOptions": "config",
    "PredictOptions": "config", "RealismOptions": "config", "load_pipeline_config": "config",
    "write_report": "report", "demo_config": "demo",
}
# the functions run() and demo() live in the modules of the same name:
# ``from cellsynth.pipeline.run import run``, ``from cellsynth.pipeline.demo import demo``

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
