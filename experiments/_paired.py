"""The paired comparison that compare_runs.py and compare_dev.py print: per side the mean ±
std over seeds (and each seed), and a - b with its 95 % paired bootstrap interval."""

from __future__ import annotations

from typing import Any

from cellsynth.evaluate.stats import paired_bootstrap, summarize


def compare(a: list, b: list, n: int = 2000) -> tuple[dict, dict, dict[str, Any]]:
    """(summary of a, summary of b, a - b) of matchings ``a[seed][unit]``, ``b[seed][unit]``;
    prints F1@0.5 and F1avg."""
    sa, sb = summarize(a), summarize(b)
    diff = paired_bootstrap(a, b, n=n, seed=0)
    for metric in ("f1_50", "f1_avg"):
        d = diff[metric]
        print(f"{metric}: a {sa[metric]['mean']:.3f} ± {sa[metric]['std']:.3f} "
              f"{[round(x, 3) for x in sa[metric]['per_seed']]}, b {sb[metric]['mean']:.3f} ± "
              f"{sb[metric]['std']:.3f} {[round(x, 3) for x in sb[metric]['per_seed']]}, "
              f"a - b {d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]")
    return sa, sb, diff
