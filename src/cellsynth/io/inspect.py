"""Summarise a dataset folder (image count, sizes, dtypes, channels, instances and their
areas), one image, or a ``cellsynth predict`` output (what its meta.json records)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
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
    from cellsynth.io.export import is_prediction_folder
    from cellsynth.io.sections import open_large_image, reads_lazily

    if os.path.isdir(root) and is_prediction_folder(Path(root)):
        return _summarize_prediction(Path(root))
    if os.path.isfile(root) or (str(root).lower().endswith(".zarr") and os.path.isdir(root)
                                and not os.path.isdir(os.path.join(root, "images"))):
        return _summarize_file(root)
    dataset = load_dataset(root)
    sizes: Counter[str] = Counter()
    dtypes: Counter[str] = Counter()
    channels: Counter[int] = Counter()
    instances: list[int] = []
    areas: list[np.ndarray] = []
    n_labeled = n_sections = 0
    constant: list[str] = []  # images of one value (a blank export, a failed conversion)
    for sample in dataset:
        if sample.label_path is not None:
            image, labels = sample.read(all_channels=True)
            sample.annotated_boxes(labels.shape)  # (QuPath regions: says which cells are
            # outside them and not used, as training and export say)
            n_labeled += 1
            counts = np.bincount(labels.ravel().astype(np.int64))[1:]
            counts = counts[counts > 0]
            instances.append(int(counts.size))
            areas.append(counts)
        elif reads_lazily(sample.image_path):
            image = open_large_image(sample.image_path)
            n_sections += 1
        else:
            image = sample.read_image(all_channels=True)
        if isinstance(image, np.ndarray) and _constant(image):
            constant.append(sample.image_path.name)
        sizes[f"{image.shape[0]}x{image.shape[1]}"] += 1
        dtypes[str(image.dtype)] += 1
        channels[1 if image.ndim == 2 else image.shape[2]] += 1
    stated: Counter[str] = Counter(  # (what each file says, where meta.json says nothing)
        f"{s.stated_pixel_size_um:g} um/px" if s.stated_pixel_size_um else "unknown"
        for s in dataset) if dataset.pixel_size_um is None else Counter()
    summary: dict[str, Any] = {
        "root": str(dataset.root),
        "n_images": len(dataset),
        "n_labeled": n_labeled,
        "sizes": dict(sizes.most_common()),
        "dtypes": dict(dtypes),
        "channels": dict(channels),
        "pixel_size_um": dataset.pixel_size_um,
        **({"pixel_sizes_stated": dict(stated.most_common())} if stated else {}),
    }
    if n_sections:
        summary["n_sections"] = n_sections
    if constant:
        summary["constant"] = constant
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


def _constant(image: np.ndarray) -> bool:
    """Whether every pixel of ``image`` has one value (nothing to segment, nothing for
    the normalisation to stretch)."""
    return bool(image.size) and bool((image == image.flat[0]).all())


def _summarize_prediction(root: Path) -> dict[str, Any]:
    """A prediction folder as its meta.json records it (no label map is decoded: a whole
    section's would be a whole section): images and cells, the detector, the pixel size and
    where the images predicted are, and how many of them are no longer there (export to
    Cellpose or StarDist needs them)."""
    import json

    from cellsynth.io.export import predicted_image, prediction_labels
    from cellsynth.pipeline import layout

    meta = json.loads((root / layout.META).read_text())
    labels = prediction_labels(root)
    per_image = meta.get("images_pixel_size_um", {})
    sizes: Counter[str] = Counter(
        f"{v['pixel_size_um']:g} um/px" if v.get("pixel_size_um") else "unknown"
        for v in per_image.values())
    images = [predicted_image(meta, image_id) for image_id, _ in labels]
    return {"root": str(root), "prediction": True, "n_images": len(labels),
            "n_instances": meta.get("n_instances"), "model": meta.get("model"),
            "model_step": meta.get("model_step"), "score_thresh": meta.get("score_thresh"),
            "pixel_size_um": meta.get("pixel_size_um"),
            **({"pixel_sizes_stated": dict(sizes.most_common())}
               if meta.get("pixel_size_um") is None and sizes else {}),
            "levels": sorted({int(v.get("level", 0)) for v in per_image.values()}),
            "channel": meta.get("channel"),
            "images": meta.get("images"),
            "images_missing": sum(p is None or not p.exists() for p in images)}


def _counts(d: dict) -> str:
    return ", ".join(f"{k} ({v})" for k, v in d.items())


def _format_prediction(summary: dict[str, Any]) -> list[str]:
    """The lines of :func:`format_summary` for a prediction folder."""
    step = f" (step {summary['model_step']})" if summary.get("model_step") is not None else ""
    cells = summary["n_instances"]
    lines = [f"{'prediction':<12} {summary['root']}",
             f"images       {summary['n_images']}"
             + (f" (pyramid level {', '.join(map(str, summary['levels']))})"
                if any(summary["levels"]) else ""),
             f"cells        {cells if cells is not None else 'unknown'}",
             f"detector     {summary['model'] or 'unknown'}{step}"
             + (f", score threshold {summary['score_thresh']:g}"
                if summary.get("score_thresh") is not None else "")]
    if summary.get("pixel_size_um") is not None:
        lines.append(f"pixel size   {summary['pixel_size_um']:g} um/px")
    elif summary.get("pixel_sizes_stated"):
        lines.append(f"pixel size   {_counts(summary['pixel_sizes_stated'])}")
    if summary.get("channel") is not None:
        lines.append(f"channel      {summary['channel']} (of multi-channel images)")
    missing = summary["images_missing"]
    lines.append(f"predicted    from {summary['images'] or 'images not recorded'}"
                 + (f" ({missing} of {summary['n_images']} image(s) no longer there)"
                    if missing and summary["images"] else ""))
    return lines


def _summarize_file(path: str | os.PathLike) -> dict[str, Any]:
    """One image file (or OME-Zarr) as a user would ask about it before predicting it: size,
    pyramid levels, dtype, channels and the pixel size it states; read lazily, not decoded."""
    from pathlib import Path

    from cellsynth.io.images import read_image
    from cellsynth.io.resample import read_pixel_size
    from cellsynth.io.sections import pyramid_levels, reads_lazily

    path = Path(path)
    lazy = reads_lazily(path)
    levels = pyramid_levels(path) if lazy else [read_image(path, all_channels=True)]
    image = levels[0]
    px = read_pixel_size(path)
    return {"root": str(path), "file": True, "n_images": 1, "n_labeled": 0,
            "sizes": {f"{image.shape[0]}x{image.shape[1]}": 1}, "dtypes": {str(image.dtype): 1},
            "channels": {1 if len(image.shape) == 2 else int(image.shape[2]): 1},
            "pixel_size_um": px, **({"pixel_sizes_stated": {"unknown": 1}} if px is None else {}),
            "levels": [f"{lv.shape[0]}x{lv.shape[1]}" for lv in levels],
            **({"n_sections": 1} if lazy else {}),
            **({"constant": [path.name]} if not lazy and _constant(image) else {})}


def format_summary(summary: dict[str, Any]) -> str:
    """Render :func:`summarize` output as a few aligned lines for the terminal."""

    counts = _counts
    if summary.get("prediction"):
        return "\n".join(_format_prediction(summary))
    lines = [
        f"{'image' if summary.get('file') else 'dataset':<12} {summary['root']}",
        f"images       {summary['n_images']} ({summary['n_labeled']} with labels"
        + (f"; {summary['n_sections']} whole section(s), read window by window"
           if summary.get("n_sections") else "") + ")",
        f"sizes        {counts(summary['sizes'])}",
        f"dtypes       {counts(summary['dtypes'])}",
        f"channels     {counts(summary['channels'])}",
    ]
    if summary.get("constant"):
        names = summary["constant"]
        lines.append(f"blank        {len(names)} image(s) of a single value, nothing to segment: "
                     f"{', '.join(names[:3])}" + (", ..." if len(names) > 3 else ""))
    if len(summary.get("levels", [])) > 1:
        lines.append(f"levels       {len(summary['levels'])}: {', '.join(summary['levels'])}")
    if summary.get("pixel_size_um") is not None:
        lines.append(f"pixel size   {summary['pixel_size_um']:g} um/px")
    elif summary.get("pixel_sizes_stated"):  # no meta.json: what the files say, or nothing
        lines.append(f"pixel size   {counts(summary['pixel_sizes_stated'])}"
                     + (" (state it: pixel_size_um in meta.json, or a run config's "
                        "real.pixel_size_um, or predict --pixel-size)"
                        if "unknown" in summary["pixel_sizes_stated"] else ""))
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
