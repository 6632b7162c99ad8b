"""Summarise a dataset folder: image count, sizes, dtypes, channels, instances and their areas."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import numpy as np

from cellsynth.io.datasets import load_dataset

__all__ = ["summarize", "format_summary"]


def summarize(root: str | os.PathLike) -> dict[str, Any]:
    """Read every image (and label map) of a dataset and return summary statistics.

    Each file is validated on the way (see :func:`cellsynth.io.read_image`), so this also
    serves as a check of a whole dataset. Unlabeled whole sections (pyramidal or huge TIFFs,
    OME-Zarr; :func:`cellsynth.io.sections.reads_lazily`) are opened, not decoded: their
    size, dtype and channels come from the file's header.
    """
    from cellsynth.io.sections import open_large_image, reads_lazily

    dataset = load_dataset(root)
    sizes: Counter[str] = Counter()
    dtypes: Counter[str] = Counter()
    channels: Counter[int] = Counter()
    instances: list[int] = []
    areas: list[np.ndarray] = []
    n_labeled = n_sections = 0
    for sample in dataset:
        if sample.label_path is not None:
            image, labels = sample.read()
            n_labeled += 1
            counts = np.bincount(labels.ravel().astype(np.int64))[1:]
            counts = counts[counts > 0]
            instances.append(int(counts.size))
            areas.append(counts)
        elif reads_lazily(sample.image_path):
            image = open_large_image(sample.image_path)
            n_sections += 1
        else:
            image = sample.read_image()
        sizes[f"{image.shape[0]}x{image.shape[1]}"] += 1
        dtypes[str(image.dtype)] += 1
        channels[1 if image.ndim == 2 else image.shape[2]] += 1
    summary: dict[str, Any] = {
        "root": str(dataset.root),
        "n_images": len(dataset),
        "n_labeled": n_labeled,
        "sizes": dict(sizes.most_common()),
        "dtypes": dict(dtypes),
        "channels": dict(channels),
        "pixel_size_um": dataset.pixel_size_um,
    }
    if n_sections:
        summary["n_sections"] = n_sections
    if instances:
        all_areas = np.concatenate(areas) if areas else np.zeros(0)
        summary["instances"] = {
            "total": int(sum(instances)),
            "per_image_min": int(min(instances)),
            "per_image_median": float(np.median(instances)),
            "per_image_max": int(max(instances)),
        }
        if all_areas.size:
            p5, p50, p95 = np.percentile(all_areas, [5, 50, 95])
            summary["area_px"] = {"p5": float(p5), "median": float(p50), "p95": float(p95)}
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """Render :func:`summarize` output as a few aligned lines for the terminal."""

    def counts(d: dict) -> str:
        return ", ".join(f"{k} ({v})" for k, v in d.items())

    lines = [
        f"dataset      {summary['root']}",
        f"images       {summary['n_images']} ({summary['n_labeled']} with labels"
        + (f"; {summary['n_sections']} whole section(s), read window by window"
           if summary.get("n_sections") else "") + ")",
        f"sizes        {counts(summary['sizes'])}",
        f"dtypes       {counts(summary['dtypes'])}",
        f"channels     {counts(summary['channels'])}",
    ]
    if summary.get("pixel_size_um") is not None:
        lines.append(f"pixel size   {summary['pixel_size_um']} um/px")
    if "instances" in summary:
        inst = summary["instances"]
        lines.append(
            f"instances    {inst['total']} total; per image min {inst['per_image_min']}, "
            f"median {inst['per_image_median']:g}, max {inst['per_image_max']}"
        )
    if "area_px" in summary:
        area = summary["area_px"]
        lines.append(
            f"area (px)    median {area['median']:.0f}; "
            f"5 % {area['p5']:.0f}, 95 % {area['p95']:.0f}"
        )
    return "\n".join(lines)
