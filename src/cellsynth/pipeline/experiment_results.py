"""The written results of ``cellsynth experiment``: the results.md table and the
learning-curve plot, both drawn from the summary that
:func:`cellsynth.pipeline.experiment.run_experiment` writes to results.json."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cellsynth.io.datasets import load_dataset

if TYPE_CHECKING:
    from cellsynth.pipeline.experiment import ExperimentConfig

__all__ = ["k_position"]


def _write_table(config: ExperimentConfig, results: dict[str, Any], path: Path) -> None:
    from cellsynth.io.files import atomic_path

    several = any("runs" in r for r in results["settings"].values())
    rows = ["| setting | data | k |" + (" runs |" if several else "")
            + " F1@0.5 | F1avg | AP@0.5 | PQ@0.5 |",
            "|---|---|---|" + ("---|" if several else "") + "---|---|---|---|"]
    for name, r in results["settings"].items():
        one_seed = len(results["seeds"]) == 1  # no spread to show: do not print "± 0.000"
        cells = " | ".join(f"{r[m]['mean']:.3f}" + ("" if one_seed else f" ± {r[m]['std']:.3f}")
                           + (f" (runs ± {r[m]['run_std']:.3f})" if "run_std" in r[m] else "")
                           for m in ("f1_50", "f1_avg", "ap_50", "pq_50"))
        n_runs = len(r['runs'][0]) if 'runs' in r else 1
        runs = (f" {f'soup of {n_runs}' if r.get('soup') else n_runs} |" if several else "")
        rows.append(f"| {name} | {r['data']} | {'all' if r['k'] is None else r['k']} |"
                    f"{runs} {cells} |")
    if results["comparisons"]:
        rows += ["", "| difference | F1@0.5 (95 % CI) | F1avg (95 % CI) | P(a <= b) |",
                 "|---|---|---|---|"]
        for name, c in results["comparisons"].items():
            f1, avg = c["f1_50"], c["f1_avg"]
            rows.append(f"| {name} | {f1['diff']:+.3f} [{f1['ci95'][0]:+.3f}, "
                        f"{f1['ci95'][1]:+.3f}] | {avg['diff']:+.3f} [{avg['ci95'][0]:+.3f}, "
                        f"{avg['ci95'][1]:+.3f}] | {f1['p_le_0']:.3f} |")
    spread = ("mean ± std over seeds (the sample std, n − 1)" if len(config.seeds) > 1
              else "one seed, no spread")
    if several:
        spread += ("; a setting with several training runs per seed scores their mean (runs ± "
                   "the std between the runs of one seed), and its intervals resample the runs "
                   "too; a soup is one detector per seed, the average of its runs' weights")
    text = (f"# {config.name}\n\nseeds {list(config.seeds)}, {spread}; test "
            f"{config.test} ({results['n_test_units']} bootstrap units)\n\n"
            + "\n".join(rows) + "\n")
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _log_k_axis(ks: list[int]) -> bool:
    """Whether k is drawn on a log(1 + k) axis: when "all" lies far beyond the other k (0, 2,
    5, 10 and all 46 images would crowd into the left fifth of a linear axis)."""
    nonzero = sorted(k for k in set(ks) if k > 0)
    return len(nonzero) >= 3 and nonzero[-1] > 4 * nonzero[-2]


def k_position(ks: list[int]):
    """Where k is drawn among ``ks``: k itself, or log2(1 + k) where :func:`_log_k_axis`."""
    return (lambda k: float(np.log2(1 + k))) if _log_k_axis(ks) else float


def _curve_points(results: dict[str, Any], n_train: int
                  ) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """{curve: (x, mean F1@0.5, std)} of the learning-curve plot, x in the axis' units (k, or
    log2(1 + k) where :func:`_log_k_axis`). One line per curve (never zigzagging between two
    settings at the same k); the curves are dodged sideways by up to 3 % of the axis (never
    more than a quarter of the smallest gap between two k), so two curves with equal scores
    at a k (e.g. real and refined pretraining at k = 2) are both seen, not one under the
    other."""
    curves: dict[str, list[tuple[int, float, float]]] = {}
    for r in results["settings"].values():
        curves.setdefault(r.get("curve", r["data"]), []).append(
            (n_train if r["k"] is None else r["k"], r["f1_50"]["mean"], r["f1_50"]["std"]))
    ks = sorted({k for points in curves.values() for k, _, _ in points})
    axis = k_position(ks)
    xs = [axis(k) for k in ks]
    gap = min((b - a for a, b in zip(xs, xs[1:])), default=1)
    reach = min(gap / 4, 0.03 * max(xs[-1] - xs[0], 1)) if ks else 0.0
    offsets = np.linspace(-reach, reach, len(curves)) if len(curves) > 1 else [0.0]
    out = {}
    for offset, (name, points) in zip(offsets, curves.items()):
        k, mean, std = zip(*sorted(points))
        out[name] = ([axis(x) + float(offset) for x in k], list(mean), list(std))
    return out


def _k_axis(ax: Any, ks: list[int]) -> None:
    """The learning curve's k axis: log-placed ticks at the k run where they spread far
    (:func:`_log_k_axis`), else whole numbers, with half a k of room either side (one k
    alone had ticks at 1.875, 1.900, ...: matplotlib's integer locator gives up where the
    span holds one whole number)."""
    from matplotlib.ticker import MaxNLocator

    if _log_k_axis(ks):  # ticks at the k that were run, placed at log2(1 + k)
        ax.set_xticks([k_position(ks)(k) for k in ks], [str(k) for k in ks])
        ax.set_xlabel("annotated real images (k, log scale)")
    else:
        ax.set_xlabel("annotated real images (k)")
        ax.set_xlim(min(ks) - 0.5, max(ks) + 0.5)
        if max(ks) - min(ks) <= 10:  # every whole k
            ax.set_xticks(range(min(ks), max(ks) + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no k = 0.5


def _plot(config: ExperimentConfig, results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cellsynth.io.files import atomic_path

    n_train = len(load_dataset(config.train, require_labels=True))
    fig, ax = plt.subplots(figsize=(6, 4))
    curves = _curve_points(results, n_train)
    markers = "osD^vP*X"
    for i, (name, (k, mean, std)) in enumerate(curves.items()):
        ax.errorbar(k, mean, yerr=std, marker=markers[i % len(markers)], capsize=3,
                    label=name, linestyle="-" if len(k) > 1 else "none")
    _k_axis(ax, sorted({n_train if r["k"] is None else r["k"]
                        for r in results["settings"].values()}))
    ax.set_ylabel("F1@0.5 on the test split")
    seeds = list(results.get("seeds") or config.seeds)  # those this run evaluated
    ax.set_title(f"{config.name}: mean ± std over {len(seeds)} seeds" if len(seeds) > 1
                 else f"{config.name}: seed {seeds[0]} only (no spread)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2 if len(curves) > 6 else 1)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
