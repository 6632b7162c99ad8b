"""Reading, validating and atomically writing images, label maps and dataset folders."""

from cellsynth.io.datasets import Dataset, Sample, load_dataset, write_dataset_meta
from cellsynth.io.images import (
    read_image,
    read_labels,
    to_float,
    write_image,
    write_labels,
)
from cellsynth.io.normalize import Normalization, normalize

__all__ = [
    "Dataset",
    "Normalization",
    "Sample",
    "load_dataset",
    "normalize",
    "read_image",
    "read_labels",
    "to_float",
    "write_dataset_meta",
    "write_image",
    "write_labels",
]
