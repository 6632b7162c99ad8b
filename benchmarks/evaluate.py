"""Benchmark: instance matching on a 2048 x 2048 label map with ~5,000 objects.

Compares ``cellsynth.evaluate.matching`` (sparse overlaps, Hungarian per connected component)
with a dense baseline in the same run: the full (n_gt + 1) x (n_pred + 1) overlap matrix and
one dense ``linear_sum_assignment`` per threshold on the full IoU matrix, as stardist does.
Both must give identical counts. Usage: ``python benchmarks/evaluate.py [--repeats N]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.optimize import linear_sum_assignment

from cellsynth.evaluate import THRESHOLDS, matching


def make_labels(rng: np.random.Generator, size: int = 2048, grid: int = 71
                ) -> tuple[np.ndarray, np.ndarray]:
    """Disks on a jittered grid (grid**2 objects) and a prediction: shifted, 5% dropped,
    ids randomly permuted and non-contiguous."""
    cell = size / grid
    gt = np.zeros((size, size), np.uint32)
    yy, xx = np.mgrid[-16:17, -16:17]
    label = 0
    for i in range(grid):
        for j in range(grid):
            cy = int((i + 0.5) * cell + rng.uniform(-3, 3))
            cx = int((j + 0.5) * cell + rng.uniform(-3, 3))
            disk = yy**2 + xx**2 <= rng.uniform(8, 14) ** 2
            label += 1
            y0, x0 = max(cy - 16, 0), max(cx - 16, 0)
            window = gt[y0:cy + 17, x0:cx + 17]
            sub = disk[y0 - (cy - 16):, x0 - (cx - 16):][:window.shape[0], :window.shape[1]]
            window[sub] = label
    pred = np.roll(gt, (1, 2), axis=(0, 1))
    new_ids = rng.permutation(label + 1).astype(np.uint32) * 3 + 1
    new_ids[0] = 0
    new_ids[rng.random(label + 1) < 0.05] = 0  # missed objects
    return gt, new_ids[pred]


def dense_matching(gt: np.ndarray, pred: np.ndarray, thresholds=THRESHOLDS) -> list[int]:
    """Baseline: dense overlap matrix and dense Hungarian per threshold (stardist's recipe)."""
    _, g = np.unique(gt, return_inverse=True)
    _, p = np.unique(pred, return_inverse=True)
    g, p = g.ravel(), p.ravel()
    n_g, n_p = g.max() + 1, p.max() + 1
    overlap = np.bincount(g * n_p + p, minlength=n_g * n_p).reshape(n_g, n_p)
    area_g, area_p = overlap.sum(1, keepdims=True), overlap.sum(0, keepdims=True)
    iou = (overlap / np.maximum(area_g + area_p - overlap, 1))[1:, 1:]
    n = min(iou.shape)
    tps = []
    for t in thresholds:
        rows, cols = linear_sum_assignment(-(iou >= t).astype(float) - iou / (2 * n))
        tps.append(int((iou[rows, cols] >= t).sum()))
    return tps


def best_time(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    gt, pred = make_labels(np.random.default_rng(0))
    n_gt, n_pred = len(np.unique(gt)) - 1, len(np.unique(pred)) - 1
    print(f"labels: {gt.shape[0]}x{gt.shape[1]}, {n_gt} gt and {n_pred} predicted objects, "
          f"{len(THRESHOLDS)} thresholds")
    t_fast, result = best_time(lambda: matching(gt, pred), args.repeats)
    t_dense, dense_tp = best_time(lambda: dense_matching(gt, pred), 1)
    assert list(result.tp) == dense_tp, (result.tp, dense_tp)
    print(f"cellsynth.evaluate.matching: {t_fast * 1e3:8.1f} ms  (best of {args.repeats})")
    print(f"dense baseline:              {t_dense * 1e3:8.1f} ms")
    print(f"speed-up: {t_dense / t_fast:.1f}x  (same TP at every threshold: {list(result.tp)})")


if __name__ == "__main__":
    main()
