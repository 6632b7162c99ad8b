"""Simulator throughput at 256 x 256: a plain single-process loop vs Dask worker processes.

    python benchmarks/simulate.py [--n 200] [--workers 2] [--presets merker nissl he fluo]

For each preset it prints images/s of (1) the baseline: a plain loop over
``cellsynth.simulate.simulate`` in one process, (2) the same rendering spread over Dask
worker processes, (3) ``write_simulation`` with those workers, including PNG/TIFF writes,
and the ratios (2)/(1) and (3)/(1).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np

from cellsynth.simulate import image_seeds, preset, render_scene, simulate, write_simulation


def _render_only(config, seeds):
    return sum(int(render_scene(config, (256, 256), np.random.default_rng(s))[1].max())
               for s in seeds)


def _parallel_render(config, n, workers):
    import dask

    seeds = image_seeds(0, n)
    chunk = max(1, n // (workers * 4))
    tasks = [dask.delayed(_render_only)(config, seeds[i:i + chunk]) for i in range(0, n, chunk)]
    with dask.config.set({"multiprocessing.context": "fork"}):
        return sum(dask.compute(*tasks, scheduler="processes", num_workers=workers))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--presets", nargs="+", default=["merker", "nissl", "he", "fluo"])
    args = parser.parse_args()
    print(f"{'preset':8s} {'loop img/s':>11s} {'dask img/s':>11s} {'ratio':>6s} "
          f"{'write img/s':>12s} {'ratio':>6s}")
    for name in args.presets:
        config = preset(name)
        next(simulate(config, 1, 256, 0))  # warm caches and imports
        t0 = time.perf_counter()
        for _ in simulate(config, args.n, 256, seed=0):
            pass
        loop = args.n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        _parallel_render(config, args.n, args.workers)
        dask_rate = args.n / (time.perf_counter() - t0)
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            write_simulation(config, n=args.n, size=256, seed=0, out=f"{tmp}/sim",
                             workers=args.workers, progress=False)
            write_rate = args.n / (time.perf_counter() - t0)
        print(f"{name:8s} {loop:11.1f} {dask_rate:11.1f} {dask_rate / loop:6.2f} "
              f"{write_rate:12.1f} {write_rate / loop:6.2f}")


if __name__ == "__main__":
    main()
