"""How long `run`/`experiment` take to fingerprint the real data at their start: the data
files hashed (whole up to 16 MiB, larger ones sampled) vs the older way (every file, whole up
to 1 MiB, larger ones by size and modification time; the baseline, measured in the same run).

    python benchmarks/fingerprint.py [--images 40] [--mib 4] [--section-gib 1]

Writes a folder of ``--images`` random "TIFF" files of ``--mib`` MiB each and one whole
section of ``--section-gib`` GiB (random bytes: only their hashing is measured) into a
temporary folder, and times both ways from a warm page cache (the first pass is not
counted). Prints seconds per way and the ratio new / old (> 1: the new way is slower).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from cellsynth.pipeline.run import content_fingerprint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--mib", type=float, default=4)
    parser.add_argument("--section-gib", type=float, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "real"
        root.mkdir()
        for i in range(args.images):
            (root / f"img{i:03d}.tif").write_bytes(
                rng.integers(0, 255, int(args.mib * 2**20), np.uint8).tobytes())
        if args.section_gib > 0:
            with open(root / "section.tif", "wb") as f:
                for _ in range(int(args.section_gib * 1024 / 64)):
                    f.write(rng.integers(0, 255, 64 << 20, np.uint8).tobytes())
        (root / "notes.txt").write_text("not data")
        content_fingerprint(root)  # (page cache)
        seconds = {}
        for name, legacy in (("old (baseline)", True), ("new", False)):
            runs = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                content_fingerprint(root, legacy=legacy)
                runs.append(time.perf_counter() - start)
            seconds[name] = min(runs)
            print(f"{name}: {seconds[name]:.3f} s (best of {args.repeats})")
    print(f"{args.images} images of {args.mib:g} MiB + a {args.section_gib:g} GiB section: "
          f"new / old = {seconds['new'] / seconds['old (baseline)']:.2f}x the time")


if __name__ == "__main__":
    main()
