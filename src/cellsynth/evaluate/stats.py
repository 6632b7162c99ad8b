"""Statistics over evaluation units: per-setting summaries and paired bootstrap differences.

A *unit* is what the bootstrap resamples: a test image, or a tile of one when a test split
has too few images to resample (2 images give 3 distinct resamples). Every setting is
evaluated on the same units with the same seeds, so differences are paired: a resample
draws units once and compares both settings on them, seed by seed, then averages the seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cellsynth.evaluate.matching import Matching, aggregate

__all__ = ["counts", "metrics_from_counts", "summarize", "paired_bootstrap", "METRICS",
           "split_tiles"]

METRICS = ("f1_50", "f1_avg", "ap_50", "pq_50")


def counts(units: Sequence[Matching]) -> np.ndarray:
    """(n_units, 2 + 2T) array: n_gt, n_pred, tp per threshold, sum_iou per threshold."""
    return np.array([[u.n_gt, u.n_pred, *u.tp, *u.sum_iou] for u in units], float)


def metrics_from_counts(total: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics of summed counts; ``total`` is (..., 2 + 2T), so batches of resamples work."""
    n_t = (total.shape[-1] - 2) // 2
    n_gt, n_pred = total[..., 0:1], total[..., 1:2]
    tp, sum_iou = total[..., 2:2 + n_t], total[..., 2 + n_t:]
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(n_gt + n_pred > 0, 2 * tp / (n_gt + n_pred), 1.0)
        ap = np.where(n_gt + n_pred - tp > 0, tp / (n_gt + n_pred - tp), 1.0)
        pq = np.where(n_gt + n_pred > 0, sum_iou / (0.5 * (n_gt + n_pred)), 1.0)
    return {"f1_50": f1[..., 0], "f1_avg": f1.mean(-1), "ap_50": ap[..., 0], "pq_50": pq[..., 0]}


def _runs(cells: Sequence[Sequence[Any]]) -> list[list[Sequence[Matching]]]:
    """``[seed][unit]`` (one training run per seed) or ``[seed][run][unit]`` as the latter."""
    return [list(runs) if runs and not isinstance(runs[0], Matching) else [runs]
            for runs in cells]


def summarize(per_seed: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """Mean and standard deviation over seeds of each metric (units summed per seed).

    ``per_seed[s]`` is seed s's units, or a list of such lists: the same setting trained
    several times (runs). A seed's value is then the mean over its runs, ``per_run`` holds
    them all and ``run_std`` the spread between runs of one seed (the pooled within-seed
    standard deviation): the noise of training again.
    """
    per_run = [[_metrics(aggregate(units)) for units in runs] for runs in _runs(per_seed)]
    result = {}
    for m in METRICS:
        v = [float(np.mean([r[m] for r in runs])) for runs in per_run]
        result[m] = {"mean": float(np.mean(v)),
                     "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "per_seed": v}
        if any(len(runs) > 1 for runs in per_run):
            within = [np.var([r[m] for r in runs], ddof=1) for runs in per_run if len(runs) > 1]
            result[m]["per_run"] = [[float(r[m]) for r in runs] for runs in per_run]
            result[m]["run_std"] = float(np.sqrt(np.mean(within)))
    return result


def _metrics(total: Matching) -> dict[str, float]:
    return {"f1_50": float(total.f1[0]), "f1_avg": float(total.f1_avg),
            "ap_50": float(total.ap[0]), "pq_50": float(total.pq[0])}


def paired_bootstrap(a: Sequence[Sequence[Any]], b: Sequence[Sequence[Any]], *,
                     n: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Difference a - b of each metric, mean over seeds, with a 95 % bootstrap interval.

    ``a[s][u]`` and ``b[s][u]``: seed s, unit u (same units in the same order). Each resample
    draws the units with replacement, sums every seed's counts over them, computes the
    metric per seed and averages over seeds. ``p_le_0`` is the fraction of resamples where
    a is not better than b (small: a is better beyond resampling noise).

    A setting trained several times per seed comes as ``a[s][r][u]`` (run r; a and b may
    have different numbers of runs). Its value is the mean over runs, and each resample also
    draws every seed's runs with replacement, independently for a and b (different runs are
    not paired), so the interval includes the noise of training again; a setting with one
    run per seed carries none of it. With one run on both sides this is the unit bootstrap
    above, draw for draw. With two or three runs the resampled spread of the runs is
    (R - 1) / R of theirs: the interval stays a little too narrow.
    """
    a, b = _runs(a), _runs(b)
    if len(a) != len(b) or len({len(units) for runs in a + b for units in runs}) != 1:
        raise ValueError("paired_bootstrap: both settings need the same seeds and units")
    ca = [np.stack([counts(units) for units in runs]) for runs in a]  # per seed (R, U, K)
    cb = [np.stack([counts(units) for units in runs]) for runs in b]
    n_units = ca[0].shape[1]
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_units, (n, n_units))

    def resampled(c: np.ndarray) -> dict[str, np.ndarray]:
        """(n,) per metric: the run-mean of the metric on each resample of units (and runs)."""
        boot = metrics_from_counts(c[:, draws].sum(axis=2))  # (R, n) per metric
        if c.shape[0] == 1:
            return {m: v[0] for m, v in boot.items()}
        runs = rng.integers(0, c.shape[0], (n, c.shape[0]))  # the same draw for all metrics
        return {m: np.take_along_axis(v.T, runs, axis=1).mean(axis=1) for m, v in boot.items()}

    boot_a = [resampled(c) for c in ca]
    boot_b = [resampled(c) for c in cb]
    point_a = [metrics_from_counts(c.sum(1)) for c in ca]  # (R,) per metric
    point_b = [metrics_from_counts(c.sum(1)) for c in cb]
    result = {}
    for m in METRICS:
        diffs = np.mean([x[m] - y[m] for x, y in zip(boot_a, boot_b)], axis=0)
        point = np.mean([x[m].mean() - y[m].mean() for x, y in zip(point_a, point_b)])
        result[m] = {"diff": float(point),
                     "ci95": [float(np.percentile(diffs, 2.5)),
                              float(np.percentile(diffs, 97.5))],
                     "p_le_0": float(np.mean(diffs <= 0))}
    result["n_units"], result["n_seeds"], result["n_resamples"] = n_units, len(a), n
    if any(c.shape[0] > 1 for c in ca + cb):
        result["n_runs"] = [[int(c.shape[0]) for c in ca], [int(c.shape[0]) for c in cb]]
    return result


def split_tiles(labels: np.ndarray, tiles: int) -> list[np.ndarray]:
    """``tiles`` x ``tiles`` blocks of a label image (row-major), for finer bootstrap units."""
    if tiles < 1:
        raise ValueError(f"tiles must be >= 1, got {tiles}")
    rows = np.array_split(np.arange(labels.shape[0]), tiles)
    cols = np.array_split(np.arange(labels.shape[1]), tiles)
    return [labels[r[0]:r[-1] + 1, c[0]:c[-1] + 1] for r in rows for c in cols]
