"""Atomic writes of files and whole output folders: nothing half-written, nothing lost.

A file is written under a temporary name in its destination folder and renamed into place
(``os.replace`` is atomic on one filesystem). A whole output folder is built in a staging
folder beside it and swapped in only when complete, so an interrupted run leaves either the
old folder or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cellsynth.errors import CellsynthError, OutputExistsError

__all__ = ["atomic_path", "write_json", "staged_output_dir", "prepare_run_dir"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename it to ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}",
                               dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _check_writable(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputExistsError(
            f"{out}: folder exists and is not empty (use --force to replace it)")
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CellsynthError(f"{out}: cannot create parent folder: {err.strerror}") from err
    if not os.access(parent, os.W_OK):
        raise CellsynthError(f"{out}: parent folder {parent} is not writable")


@contextlib.contextmanager
def staged_output_dir(out: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Build an output folder in a staging folder and swap it in when the block succeeds.

    Raises :class:`OutputExistsError` up front if ``out`` is a non-empty folder and ``force``
    is false. With ``force`` the old folder is replaced only after the new one is complete.
    """
    out = Path(out)
    _check_writable(out, force)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent or "."))
    try:
        yield staging
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old.tmp", dir=out.parent))
            os.replace(out, old / "x")
        try:
            os.replace(staging, out)
        except OSError:
            if old is not None:
                os.replace(old / "x", out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def prepare_run_dir(out: str | os.PathLike, *, resume: bool, force: bool,
                    checkpoint: str = "last.pt") -> Path:
    """Make a training run folder ready: check a resumable checkpoint, or start empty.

    A non-empty folder is only replaced with ``force``; ``resume`` needs ``checkpoint`` in it.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a folder")
    if resume:
        if not (out / checkpoint).is_file():
            raise OutputExistsError(f"{out}: nothing to resume, no {checkpoint} in it")
        return out
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise OutputExistsError(f"{out}: run folder exists and is not empty "
                                    f"(use --resume to continue it or --force to replace it)")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out
