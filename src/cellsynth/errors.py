"""Exceptions for user-facing problems; the CLI prints them as one line, never a traceback."""

__all__ = ["CellsynthError", "ImageReadError", "DatasetError", "ConfigError", "OutputExistsError",
           "FolderBusyError"]


class CellsynthError(Exception):
    """Base class of every error caused by user input (files, configs, arguments)."""


class ImageReadError(CellsynthError):
    """A single image or label file is missing, unreadable or invalid."""


class DatasetError(CellsynthError):
    """A dataset folder violates the layout (empty, ids missing, image/label mismatch)."""


class ConfigError(CellsynthError):
    """A configuration value or key is invalid."""


class OutputExistsError(CellsynthError):
    """An output folder exists and is not empty, and ``force`` was not given."""


class FolderBusyError(CellsynthError):
    """Another process is working in the output folder that this one would write."""
