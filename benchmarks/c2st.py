"""C2ST speed and verdicts: the classifier as before (NCHW; conv, BatchNorm, ReLU, pool) vs
now (channels-last; conv, pool, BatchNorm, ReLU).

    python benchmarks/c2st.py [--n 48] [--size 128] [--threads N] [--seeds 0 1 2]

Issue 16's setting: 48 vs 48 images of 128² (C2ST defaults: 5 folds, 512 crops of 64² per
set, 12 epochs). Target: under 1 min with the same verdicts. Four pairs of sets, simulated
with the `nissl` preset (no data needed): the same distribution (two seeds of the
simulator), copies slightly blurred (Gaussian sigma 0.4 px) or brightened (gamma 0.9), and
a clearly different one (gamma 1.5). Prints seconds and accuracy per version, pair and
seed, and the speed ratio.
"""

from __future__ import annotations

import argparse
import importlib
import time

import numpy as np
from scipy import ndimage as ndi

from cellsynth.simulate import simulate

# the package re-exports the function under the module's name
c2st_module = importlib.import_module("cellsynth.evaluate.c2st")


def pairs(n: int, size: int) -> dict[str, tuple[list[np.ndarray], list[np.ndarray]]]:
    a = [im for im, _ in simulate("nissl", n, size, seed=0)]
    b = [im for im, _ in simulate("nissl", n, size, seed=1)]
    blurred = [ndi.gaussian_filter(im.astype(np.float32), (0.4, 0.4, 0)).round()
               .clip(0, 255).astype(np.uint8) for im in b]

    def gamma(g: float) -> list[np.ndarray]:
        return [(255 * (im / 255.0) ** g).round().astype(np.uint8) for im in b]

    return {"same": (a, b), "blur 0.4": (a, blurred), "gamma 0.9": (a, gamma(0.9)),
            "gamma 1.5": (a, gamma(1.5))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = ap.parse_args()
    sets = pairs(args.n, args.size)
    seconds = {False: [], True: []}
    for name, (a, b) in sets.items():
        for seed in args.seeds:
            row = []
            for layout in (False, True):
                c2st_module._FAST = layout
                started = time.perf_counter()
                result = c2st_module.c2st(a, b, seed=seed, threads=args.threads)
                seconds[layout].append(time.perf_counter() - started)
                row.append(f"{'new' if layout else 'old'} {result.accuracy:.3f} "
                           f"({seconds[layout][-1]:.1f} s)")
            print(f"{name:10s} seed {seed}: " + "  ".join(row), flush=True)
    old, new = np.mean(seconds[False]), np.mean(seconds[True])
    print(f"mean seconds per C2ST: old {old:.1f} -> new {new:.1f} "
          f"({old / new:.2f}x)")


if __name__ == "__main__":
    main()
