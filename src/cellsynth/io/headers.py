"""Check image files from their headers, without decoding a pixel: a cheap look at every
file of a folder before hours of work reach a bad one (a copy cut short, a z-stack, a
channel it lacks)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from cellsynth.errors import ImageReadError
from cellsynth.io.images import (
    TIFF_SUFFIXES,
    _Notes,
    _reason,
    file_axes,
    refuse_stacks,
    tiff_alpha,
    tifffile_notes,
)

__all__ = ["check_header", "check_headers"]


def _png_ends_early(path: Path, size: int) -> bool:
    """Whether a PNG's chunks (length, type, data, CRC: stepped over, not read) run past the
    end of its ``size`` bytes before its IEND chunk: a truncated copy."""
    with open(path, "rb") as f:
        f.seek(8)  # (the signature)
        while True:
            head = f.read(8)
            end = f.tell() + int.from_bytes(head[:4], "big") + 4
            if len(head) < 8 or end > size:
                return True
            if head[4:] == b"IEND":
                return False
            f.seek(end)


def _tiff_channels(axes: str, shape: tuple[int, ...], photometric: int,
                   extrasamples: list[int]) -> int | None:
    """The channels :func:`read_image` gives a TIFF of these axes and shape (its alpha
    dropped), from the header alone; None where only reading it would tell."""
    axes, shape = file_axes(axes, shape)
    if not axes:
        return None
    counts = [n for a, n in zip(axes, shape) if a == "C"]
    count = counts[0] if len(counts) == 1 else 1 if not counts else None
    return None if count is None else count - tiff_alpha(photometric, extrasamples, count)


_PIL_CHANNELS = {"1": 1, "L": 1, "LA": 1, "I": 1, "I;16": 1, "I;16B": 1, "F": 1, "RGB": 3,
                 "RGBA": 3}  # (alpha dropped, as read_image drops it)


def check_header(path: str | os.PathLike) -> int | None:
    """Check an image file from its header, without decoding a pixel: a cheap look at every
    file of a folder before hours of work reach a bad one. Raises :class:`ImageReadError`
    naming the file where the header cannot be read, or the file ends before its data does
    (a truncated copy: a TIFF's strips or tiles, a PNG's chunks run past its end), or it is
    a TIFF z-stack or time series (:func:`refuse_stacks`). What only decoding finds (a
    corrupt byte inside, a JPEG cut short) :func:`read_image` still finds. Returns the
    number of channels :func:`read_image` will give (None where the header does not say)."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: no such file")
    size = path.stat().st_size
    with tifffile_notes() as notes:
        channels, axes, shape = _read_header(path, size, notes)
    if axes and "Q" not in axes and len(axes) == len(shape):  # (axes the file names)
        refuse_stacks(file_axes(axes, shape)[0], shape, where=str(path))
    return channels


def _read_header(path: Path, size: int, notes: _Notes) -> tuple[int | None, str, tuple[int, ...]]:
    """:func:`check_header`'s look at the file: its channels, and a TIFF's axes and shape
    as the file names them ("" and () for other formats)."""
    axes, shape, channels = "", (), None
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:  # (the IFDs: offsets and sizes, no pixels)
                axes, shape = tif.series[0].axes.upper(), tuple(tif.series[0].shape)
                page = tif.series[0].keyframe
                channels = _tiff_channels(axes, shape, int(page.photometric),
                                          [int(e) for e in page.extrasamples])
                for level in tif.series[0].levels:
                    for page in filter(None, level.pages):
                        ends = np.add(page.dataoffsets, page.databytecounts, dtype=np.int64)
                        if ends.size and int(ends.max()) > size:
                            raise ImageReadError(f"its data runs past its end ({size} bytes)")
        else:
            from PIL import Image

            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # (a header only:
            try:  # no "decompression bomb" to fear, and a whole slide's PNG is no error)
                with Image.open(path) as opened:  # (the header: size and mode, no pixels)
                    channels = _PIL_CHANNELS.get(opened.mode)
            finally:
                Image.MAX_IMAGE_PIXELS = limit
            if path.suffix.lower() == ".png" and _png_ends_early(path, size):
                raise ImageReadError(f"its data runs past its end ({size} bytes)")
    except Exception as err:  # the readers raise many types for corrupt files
        said = notes.said  # what tifffile saw first
        reason = str(err) if isinstance(err, ImageReadError) else (said[0] if said
                                                                   else _reason(err))
        raise ImageReadError(f"{path}: cannot read file (corrupt or truncated?): "
                             f"{reason}") from err
    return channels, axes, shape


def check_headers(paths: Iterable[str | os.PathLike], *, channel: int | None = None,
                  gray_is_the_channel: bool = False, asked: str | None = None
                  ) -> list[int | None]:
    """:func:`check_header` on every file of ``paths`` (a folder's worth, before hours of
    work reach a bad one; a Zarr, a folder, is skipped: its metadata is read as it is
    opened), and with ``channel`` that each image has that channel. ``gray_is_the_channel``:
    a gray image passes, being that channel saved alone (as a run stages it and its
    detectors take it). ``asked`` names the request in the error ("real.channel 1"; default
    "channel 1 requested"). Returns each file's channel count (None where the header does
    not say, or for a Zarr)."""
    counts: list[int | None] = []
    for path in map(Path, paths):
        count = check_header(path) if path.is_file() else None
        counts.append(count)
        if (channel is None or count is None or channel < count
                or (gray_is_the_channel and count == 1)):
            continue
        raise ImageReadError(f"{path}: {asked or f'channel {channel} requested'}, but the "
                             f"image has {count} channel(s) (0-{count - 1})")
    return counts
