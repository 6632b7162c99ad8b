"""The one place that names the folders and files of a run.

A ``cellsynth run`` folder holds one folder per stage (named below) plus ``state.json``,
``config.yaml`` and ``report.html``. A training run folder (``train``, ``fit-refiner``, or a
stage folder of ``run``) holds ``last.pt`` (latest checkpoint), ``best.pt`` (detector only:
best validation F1), ``config.yaml`` and ``log.jsonl``. Every dataset-like output (simulate,
refined, predict) has a ``meta.json``. Everything else in the package spells these names
through this module, so a rename happens here or nowhere.
"""

from __future__ import annotations

from pathlib import Path

# --- stage folders of `cellsynth run` -------------------------------------------------------
FIT = "fit"              # simulator preset fitted to real images (fitted.yaml + preview)
FITTED = "fitted.yaml"   # in FIT: the preset override the simulation uses
FIT_TABLE = "fit.txt"    # in FIT: the fitted numbers beside the base's (as fit-simulator prints)
SIMULATE = "simulate"    # simulated dataset
REAL = "real"            # real images rescaled to the working pixel size (when needed)
REFINER = "refiner"      # refiner run
REFINER_CHOICE = "refiner_choice"  # which refiner snapshot makes the most useful data
REFINED = "refined"      # refined dataset
# held-out synthetic images that validate the detector (threshold, best checkpoint) when the
# run has no annotated real.val images
SIMULATE_VAL = "simulate_val"
REFINED_VAL = "refined_val"
PRETRAIN = "pretrain"    # detector run on synthetic data
FINETUNE = "finetune"    # detector run fine-tuned on real labels
FINETUNE_RUNS = "finetune_runs"  # soup > 1: the other fine-tunings (r1, r2, ...: other seeds)
SOUP = "soup"            # soup > 1: the fine-tunings' weights averaged into one detector
PSEUDO = "pseudo"        # unlabeled real images with the fine-tuned detector's labels
SELFTRAIN = "selftrain"  # detector fine-tuned once more with the pseudo-labelled images
COUNT_THRESHOLD = "count_threshold"  # score threshold from the estimated count (threshold.json)
THRESHOLD = "threshold.json"
PREDICT = "predict"      # predicted labels of real images
EVALUATE = "evaluate"    # instance metrics against ground truth
REALISM = "realism"      # realism metrics of simulated/refined vs real
REPORT_STAGE = "report"  # writes REPORT at the run's top level

# --- files of a run -------------------------------------------------------------------------
STATE = "state.json"     # per stage: fingerprint, done, summary
CONFIG = "config.yaml"   # the config a run was started with
REPORT = "report.html"
META = "meta.json"       # provenance of a dataset-like folder
LOG = "log.jsonl"        # training log, one JSON object per logged step
LAST = "last.pt"         # latest checkpoint (resume from here)
BEST = "best.pt"         # detector checkpoint with the best validation F1
SAMPLES = "samples"      # refiner sample grids
SNAPSHOTS = "snapshots"  # refiner generators every checkpoint_every steps (step_NNNNNN.pt)
CHOICE = "choice.json"   # in REFINER_CHOICE: every candidate's validation F1, the chosen one
METRICS = "metrics.json"            # in EVALUATE
REALISM_METRICS = "realism.json"    # in REALISM
RUN_INFO = "run.json"    # a training run's inputs, versions, device and precision
RESULT = "result.json"   # one experiment cell (setting x seed)
RESULTS = "results.json"  # an experiment's summary

# --- subfolders of a predict output ---------------------------------------------------------
LABELS = "labels"
OVERLAYS = "overlays"
DETECTIONS = "detections"


def detector_checkpoint(run: str | Path) -> Path:
    """The checkpoint a detector run is used through: best.pt, else last.pt; a file as it is."""
    path = Path(run)
    if path.is_dir():
        return path / BEST if (path / BEST).exists() else path / LAST
    return path


def refiner_checkpoint(run: str | Path) -> Path:
    """A refiner run's checkpoint (last.pt), or ``run`` itself if it is a file."""
    path = Path(run)
    return path / LAST if path.is_dir() else path


def has_checkpoint(run: str | Path) -> bool:
    """Whether a run folder holds a checkpoint to resume from."""
    return (Path(run) / LAST).exists()
