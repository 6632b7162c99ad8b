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


def summarize(per_seed: Sequence[Sequence[Matching]]) -> dict[str, Any]:
    """Mean and standard deviation over seeds of each metric (units summed per seed)."""
    values = {m: [] for m in METRICS}
    for units in per_seed:
        total = aggregate(units)
        found = {"f1_50": total.f1[0], "f1_avg": total.f1_avg, "ap_50": total.ap[0],
                 "pq_50": total.pq[0]}
        for m in METRICS:
            values[m].append(float(found[m]))
    return {m: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1
                else 0.0, "per_seed": v} for m, v in values.items()}


def paired_bootstrap(a: Sequence[Sequence[Matching]], b: Sequence[Sequence[Matching]], *,
                     n: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Difference a - b of each metric, mean over seeds, with a 95 % bootstrap interval.

    ``a[s][u]`` and ``b[s][u]``: seed s, unit u (same units in the same order). Each resample
    draws the units with replacement, sums every seed's counts over them, computes the
    metric per seed and averages over seeds. ``p_le_0`` is the fraction of resamples where
    a is not better than b (small: a is better beyond resampling noise).
    """
    if len(a) != len(b) or any(len(x) != len(y) for x, y in zip(a, b)):
        raise ValueError("paired_bootstrap: both settings need the same seeds and units")
    ca = np.stack([counts(units) for units in a])  # (S, U, K)
    cb = np.stack([counts(units) for units in b])
    n_units = ca.shape[1]
    draws = np.random.default_rng(seed).integers(0, n_units, (n, n_units))
    # (n, S, K): every seed's counts summed over the drawn units
    sum_a = ca[:, draws].sum(axis=2).transpose(1, 0, 2)
    sum_b = cb[:, draws].sum(axis=2).transpose(1, 0, 2)
    boot_a, boot_b = metrics_from_counts(sum_a), metrics_from_counts(sum_b)
    point_a, point_b = metrics_from_counts(ca.sum(1)), metrics_from_counts(cb.sum(1))
    result = {}
    for m in METRICS:
        diffs = (boot_a[m] - boot_b[m]).mean(axis=1)
        result[m] = {"diff": float((point_a[m] - point_b[m]).mean()),
                     "ci95": [float(np.percentile(diffs, 2.5)),
                              float(np.percentile(diffs, 97.5))],
                     "p_le_0": float(np.mean(diffs <= 0))}
    result["n_units"], result["n_seeds"], result["n_resamples"] = n_units, len(a), n
    return result


def split_tiles(labels: np.ndarray, tiles: int) -> list[np.ndarray]:
    """``tiles`` x ``tiles`` blocks of a label image (row-major), for finer bootstrap units."""
    if tiles < 1:
        raise ValueError(f"tiles must be >= 1, got {tiles}")
    rows = np.array_split(np.arange(labels.shape[0]), tiles)
    cols = np.array_split(np.arange(labels.shape[1]), tiles)
    return [labels[r[0]:r[-1] + 1, c[0]:c[-1] + 1] for r in rows for c in cols]
