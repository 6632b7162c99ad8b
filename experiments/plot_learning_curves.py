"""One learning-curve figure (F1@0.5 on a test split against the annotated images k) from the
results.json files of several `cellsynth experiment` runs, with the peers and the goal as
horizontal lines: what docs/results.md shows per dataset.

    R=docs/results/nissl_k2_amx/results.json
    python experiments/plot_learning_curves.py --n-train 4 \\
        --line "simulated pretraining + fine-tuning" $R:sim_only $R:sim_ft_k1 ... \\
        --hline "Cellpose V1 (peer)=0.762" --hline "goal=0.77" \\
        --title "nissl_rat_sscx/test" --out docs/results/nissl_k2_amx/learning_curve.png

Each point is a setting's mean over its seeds with the std as error bar; a point with
fewer seeds than the most of the figure says so in the legend. k = null (all) is drawn at
``--n-train``; k is on a log(1 + k) axis when that lies far beyond the other k.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cellsynth.pipeline.experiment import _log_k_axis, k_position


def _point(spec: str, n_train: int) -> tuple[float, float, float, int]:
    path, _, setting = spec.rpartition(":")
    results = json.loads(Path(path).read_text())
    r = results["settings"][setting]
    k = n_train if r["k"] is None else r["k"]
    return k, r["f1_50"]["mean"], r["f1_50"]["std"], len(results["seeds"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--line", nargs="+", action="append", required=True,
                    metavar=("LABEL", "RESULTS:SETTING"))
    ap.add_argument("--hline", action="append", default=[], metavar="LABEL=F1")
    ap.add_argument("--n-train", type=int, required=True, help="k of 'all'")
    ap.add_argument("--title", default="")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [(spec[0], [_point(s, args.n_train) for s in spec[1:]]) for spec in args.line]
    ks = sorted({p[0] for _, points in lines for p in points})
    log_axis = _log_k_axis(ks)
    position = k_position(ks)  # the experiment plot's rule, so both figures agree

    def axis(k):
        return np.array([position(x) for x in np.atleast_1d(k)])
    most = max(p[3] for _, points in lines for p in points)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    markers = "osD^vP*X"
    offsets = np.linspace(-0.06, 0.06, len(lines)) if len(lines) > 1 else [0.0]
    for i, ((label, points), dx) in enumerate(zip(lines, offsets)):
        points = sorted(points)
        k, mean, std, seeds = zip(*points)
        fewer = sorted({s for s in seeds if s < most})
        note = f" ({', '.join(f'{s} seed' + ('s' if s > 1 else '') for s in fewer)} at some k)" \
            if fewer else ""
        ax.errorbar(axis(k) + dx, mean, yerr=std, marker=markers[i % len(markers)],
                    capsize=3, label=label + note, linestyle="-" if len(k) > 1 else "none")
    styles = [":", "--", "-."]
    for j, spec in enumerate(args.hline):
        label, _, value = spec.rpartition("=")
        ax.axhline(float(value), color="gray", linestyle=styles[j % len(styles)], lw=1,
                   label=f"{label} {float(value):.3f}")
    ax.set_xticks(axis(ks), [str(k) for k in ks])
    ax.set_xlabel("annotated real images (k" + (", log scale)" if log_axis else ")"))
    ax.set_ylabel("F1@0.5 on the test split")
    ax.set_title(f"{args.title}: mean ± std over {most} seeds" if args.title else "")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
