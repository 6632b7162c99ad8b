"""Read and write single images and instance label maps, validating them on the way in
(label maps are read in :mod:`cellsynth.io.labels`).

Supported files: TIFF, including pyramidal OME-TIFF and Aperio SVS (tifffile), and
PNG/JPEG/BMP (imageio); other microscope formats (CZI, ND2, LIF, VSI, ...) are named in a
one-line error saying to convert them to OME-TIFF. Images are ``(H, W)`` or ``(H, W, C)``,
channels last whatever the file's order (an ImageJ or OME-TIFF stores fluorescence channels
first); an alpha channel (a PNG's 2nd or 4th, a TIFF's declared one) is dropped with a
warning. Every stage works on gray or RGB: of an image with another number of channels the
one ``--channel`` names is used, else channel 0, said in a warning
(:func:`select_channel`). Label maps are ``(H, W)`` integer arrays, 0 = background. Every
problem raises :class:`ImageReadError` naming the file.
"""

from __future__ import annotations

import gc
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.errors import ImageReadError
from cellsynth.io.files import atomic_path

# (label maps are read in cellsynth.io.labels; the names stay importable from here)
from cellsynth.io.labels import CELLPOSE_SEG_SUFFIX, GEOJSON_SUFFIX, read_labels

__all__ = [
    "CELLPOSE_SEG_SUFFIX",
    "CONVERT_HINT",
    "FOREIGN_FORMATS",
    "IMAGE_SUFFIXES",
    "NAN_HINT",
    "TIFF_SUFFIXES",
    "channels_last",
    "colour_of",
    "foreign_files",
    "guess_axes",
    "is_colour",
    "refuse_stacks",
    "tiff_alpha",
    "unread_format",
    "match_channels",
    "read_image",
    "read_labels",
    "select_channel",
    "to_float",
    "tiff_resolution",
    "to_uint8",
    "write_image",
    "write_labels",
]

TIFF_SUFFIXES = (".tif", ".tiff", ".svs")  # read by tifffile (.svs: Aperio whole slides)
IMAGE_SUFFIXES = (*TIFF_SUFFIXES, ".png", ".jpg", ".jpeg", ".bmp")
LABEL_SUFFIXES = (*IMAGE_SUFFIXES, GEOJSON_SUFFIX)  # what labels/ may hold
_TIFF = (".tif", ".tiff")  # what is written as TIFF
# Microscope and whole-slide formats that are not read (Bio-Formats / OpenSlide territory):
# named, so a folder of them is not just "no images found".
FOREIGN_FORMATS = {".czi": "Zeiss CZI", ".nd2": "Nikon ND2", ".lif": "Leica LIF",
                   ".vsi": "Olympus VSI", ".oir": "Olympus OIR", ".oib": "Olympus OIB",
                   ".mrxs": "3DHISTECH MRXS", ".ndpi": "Hamamatsu NDPI", ".scn": "Leica SCN",
                   ".bif": "Ventana BIF", ".isyntax": "Philips iSyntax", ".ims": "Imaris",
                   ".dcm": "DICOM"}
CONVERT_HINT = ("convert to OME-TIFF first (Bio-Formats: bfconvert IN OUT.ome.tif; QuPath: "
                "File > Export images > OME TIFF)")
# what to do about NaN/inf pixels (said where an image file is read, and where a section's
# tiles are read lazily)
NAN_HINT = ("registration or stitching pads with NaN: fill them with the background's value, "
            "e.g. numpy.nan_to_num(image, nan=...), and save it again")


def unread_format(path: Path) -> str | None:
    """The one-line reason a file of a microscope format that is not read is refused, else
    None."""
    name = FOREIGN_FORMATS.get(path.suffix.lower())
    return f"{path}: {name} files are not read; {CONVERT_HINT}" if name else None


def foreign_files(folder: Path) -> list[Path]:
    """Files of ``folder`` in a microscope format that is not read (:data:`FOREIGN_FORMATS`)."""
    return [p for p in sorted(folder.iterdir())
            if p.suffix.lower() in FOREIGN_FORMATS and not p.name.startswith(".")]


def _read_array(path: Path) -> np.ndarray:
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if not path.is_file():
        raise ImageReadError(f"{path}: not a file")
    suffix = path.suffix.lower()
    if unread_format(path):
        raise ImageReadError(unread_format(path))
    if suffix not in IMAGE_SUFFIXES:
        raise ImageReadError(
            f"{path}: unsupported file type {suffix!r} "
            f"(expected one of {', '.join(IMAGE_SUFFIXES)})"
        )
    if suffix in TIFF_SUFFIXES:
        return _read_tiff(path)
    return _read_imageio(path)


# tifffile logs its complaints about a file (a corrupt one's, twice, from every reader that
# opens it: pixel size, pyramid levels, pixels) and, with no handler anywhere, Python prints
# them raw; the pixels' read turns them into one line of ours (_read_tiff)
logging.getLogger("tifffile").addHandler(logging.NullHandler())


class _Notes(logging.Handler):
    """Keeps what a library logs while a file is read."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    @property
    def said(self) -> list[str]:
        """tifffile's messages without their "<tifffile.TiffPages @n> " prefix."""
        return [m.split("> ", 1)[-1] for m in self.messages]


@contextmanager
def tifffile_notes() -> Iterator[_Notes]:
    """While the block reads a file, what tifffile logs is kept (``notes.said``), not
    printed: the reader turns it into one line of its own."""
    notes, logger = _Notes(), logging.getLogger("tifffile")
    logger.addHandler(notes)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield notes
    finally:
        logger.removeHandler(notes)
        logger.propagate = propagate


def _read_tiff(path: Path) -> np.ndarray:
    """A TIFF through tifffile. What tifffile logs on the way (a corrupt file's "invalid
    offset to first page", twice, in its own words) is not printed: a file it cannot read
    gets one error line, one it reads with complaints one warning naming the file."""
    import tifffile

    with tifffile_notes() as notes:
        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                image = np.asarray(series.asarray())
                axes, page = series.axes, series.keyframe
                photometric, extra = int(page.photometric), [int(e) for e in page.extrasamples]
        except Exception as err:  # the readers raise many types for corrupt files
            said = notes.said  # what tifffile saw first
            raise ImageReadError(f"{path}: cannot read file (corrupt or truncated?): "
                                 f"{said[0] if said else _reason(err)}") from err
    said = notes.said
    if image.size == 0:
        raise ImageReadError(f"{path}: cannot read file (corrupt or truncated?): "
                             f"{said[0] if said else 'no image data in it'}")
    if said:
        warnings.warn(f"{path}: read, but tifffile says: {said[0]}", stacklevel=3)
    image = channels_last(image, axes, where=str(path))
    alpha = tiff_alpha(photometric, extra, image.shape[2] if image.ndim == 3 else 1)
    if alpha:
        warnings.warn(f"{path}: dropping alpha channel of "
                      f"{'RGBA' if image.shape[2] - alpha == 3 else 'gray+alpha'} image",
                      stacklevel=3)
        image = image[..., :image.shape[2] - alpha]
    return image


# TIFF's PhotometricInterpretation RGB, and its ExtraSamples values that are alpha
# (associated, unassociated)
_PHOTOMETRIC_RGB, _ALPHA_SAMPLES = 2, (1, 2)
# what tifffile calls an axis that is neither y, x nor channels: a stack a 2-D reader must
# not flatten
_STACK_AXES = {"Z": "z-planes", "T": "time points", "I": "images (pages)",
               "R": "tiles or regions", "A": "angles", "P": "phases", "H": "lifetimes",
               "E": "lambdas", "L": "exposures", "V": "views", "M": "mosaic tiles",
               "S": "colour samples besides the channels"}


def guess_axes(shape: tuple[int, ...]) -> str:
    """The axes of an array whose file does not name them: (y, x), or of a 3-D one
    channels last when its last axis is short (RGB, RGBA, 2 fluorescence channels saved from
    numpy) and channels first otherwise (ImageJ's and OME's order)."""
    if len(shape) == 2:
        return "yx"
    return "yxc" if len(shape) == 3 and shape[-1] <= 4 else "cyx"


def file_axes(axes: str, shape: tuple[int, ...]) -> tuple[str, tuple[int, ...]]:
    """tifffile's ``axes`` of an array of ``shape`` as cellsynth reads them, upper case:
    where the file names none (``"Q"``) or they do not fit the shape, guessed
    (:func:`guess_axes`) after axes of length 1 go from a shape beyond 3-D; ``S`` (samples)
    counts as the channel axis where there is no ``C``. Returns the axes ("" where no guess
    fits: not 2- or 3-D) and the shape they describe. :func:`channels_last` reads the
    pixels by it, :func:`cellsynth.io.headers.check_header` counts channels from a header
    by it, so the two cannot disagree."""
    axes, shape = axes.upper(), tuple(int(n) for n in shape)
    if "Q" in axes or len(axes) != len(shape):
        shape = tuple(n for n in shape if n != 1) if len(shape) > 3 else shape
        axes = guess_axes(shape).upper() if len(shape) in (2, 3) else ""
    return (axes.replace("S", "C") if "C" not in axes else axes), shape


def channels_last(image: np.ndarray, axes: str, *, where: str) -> np.ndarray:
    """``image`` with tifffile's ``axes`` (e.g. ``"CYX"`` of an ImageJ hyperstack, ``"YXS"``
    of RGB, ``"QYX"`` where the file names none) as (H, W) or (H, W, C). Axes of length 1 go;
    a z-stack or time series is refused in one line (a 2-D reader would take its planes
    for channels)."""
    axes, shape = file_axes(axes, image.shape)
    image = image.reshape(shape)
    if not axes:
        raise ImageReadError(f"{where}: expected image of shape HxW, HxWxC or CxHxW, "
                             f"got shape {image.shape}")
    for i in reversed(range(image.ndim)):
        if axes[i] not in "YXC" and image.shape[i] == 1:
            image, axes = image.take(0, axis=i), axes[:i] + axes[i + 1:]
    refuse_stacks(axes, image.shape, where=where)
    if "Y" not in axes or "X" not in axes or axes.count("C") > 1:
        raise ImageReadError(f"{where}: cannot read axes {axes} of shape {image.shape} as "
                             f"an image (expected Y, X and at most one channel axis)")
    order = [axes.index("Y"), axes.index("X")] + ([axes.index("C")] if "C" in axes else [])
    image = np.transpose(image, order)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    return image


def refuse_stacks(axes: str, shape: tuple[int, ...], *, where: str) -> None:
    """One error line for an image with planes along an axis other than y, x and channels
    (a z-stack, a time series): a 2-D reader would take one plane, or the planes for
    channels. Axes of length 1 are fine."""
    stack = [(a, n) for a, n in zip(axes.upper(), shape) if a not in "YXC" and n > 1]
    if stack:
        a, n = stack[0]
        raise ImageReadError(
            f"{where}: {n} {_STACK_AXES.get(a, f'{a} planes')} (axes {axes.upper()}, shape "
            f"{tuple(shape)}); cellsynth reads single 2-D images: save one plane or a "
            f"projection (Fiji: Image > Stacks > Z Project)")


def tiff_alpha(photometric: int, extrasamples: list[int], channels: int) -> int:
    """How many of a TIFF's last ``channels`` are alpha: those its ExtraSamples tag
    declares so, and for an RGB image any sample past the third; unspecified extra samples
    of a gray image are channels (a 2-channel fluorescence image), not alpha."""
    declared = sum(e in _ALPHA_SAMPLES for e in extrasamples)
    if photometric == _PHOTOMETRIC_RGB and channels > 3:
        return channels - 3
    return min(declared, channels - 1)


def _reason(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _read_imageio(path: Path) -> np.ndarray:
    """PNG / JPEG / BMP through imageio. A file no plugin can open makes imageio try them
    all, and some say so on the way (a deprecated DICOM plugin, files left open): those
    notes are dropped, so a corrupt file gets its one line and nothing else."""
    import imageio.v3 as iio

    reason = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            image = np.asarray(iio.imread(path))
        except Exception as err:  # the plugins raise many types for corrupt files
            reason = _reason(err)
            if reason.startswith("Could not find a backend"):  # imageio's, naming no cause
                reason = f"not a {path.suffix.lower()[1:].upper()} image any reader recognises"
        if reason is not None:
            gc.collect()  # the failed plugins' open files are closed (and warn) in here
    if reason is not None:
        raise ImageReadError(f"{path}: cannot read file (corrupt or truncated?): {reason}")
    for w in caught:  # what a successful read had to say still reaches the user
        if not issubclass(w.category, (DeprecationWarning, ResourceWarning)):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return image


def read_image(path: str | os.PathLike, *, all_channels: bool = False) -> np.ndarray:
    """Read and validate an image.

    Returns
    -------
    image : (H, W) or (H, W, 3) array of any integer or float dtype, as stored; intensities
        are mapped to [0, 1] by content with :func:`cellsynth.io.normalize.normalize`.
        Channels last (a TIFF's channels-first planes are moved), alpha channels dropped
        (with a warning), single channels squeezed. An image with 2 or more than 3 channels
        gives its channel 0, with a warning; with ``all_channels`` every channel, (H, W, C),
        for :func:`select_channel` to pick the one a user names.
    """
    path = Path(path)
    image = _read_array(path)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if path.suffix.lower() not in TIFF_SUFFIXES:  # PNG's modes: LA and RGBA carry alpha
        if image.ndim == 3 and image.shape[-1] == 4:
            warnings.warn(f"{path}: dropping alpha channel of RGBA image", stacklevel=2)
            image = image[..., :3]
        if image.ndim == 3 and image.shape[-1] == 2:
            warnings.warn(f"{path}: dropping alpha channel of gray+alpha image", stacklevel=2)
            image = image[..., 0]
    if image.ndim != 2 and image.ndim != 3:
        raise ImageReadError(
            f"{path}: expected image of shape HxW, HxWxC or CxHxW, got shape {image.shape}"
        )
    if min(image.shape[:2]) < 1:
        raise ImageReadError(f"{path}: image is empty, shape {image.shape}")
    if image.dtype == bool:
        raise ImageReadError(f"{path}: boolean image (a mask?); expected intensities "
                             "(uint8/uint16/uint32 or float)")
    if np.issubdtype(image.dtype, np.complexfloating):
        raise ImageReadError(f"{path}: complex image; expected real intensities "
                             "(uint8/uint16/uint32 or float)")
    if not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise ImageReadError(f"{path}: unsupported image dtype {image.dtype} "
                             "(expected uint8/uint16/uint32 or float)")
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        bad = int((~np.isfinite(image)).sum())
        raise ImageReadError(f"{path}: image contains {bad} NaN/inf values ({NAN_HINT})")
    if all_channels:
        return image
    return select_channel(image, None, where=str(path), colour=colour_of(image, path))


# TIFF photometric interpretations of colour: RGB, YCbCr, CIE L*a*b*, ICC L*a*b*, ITU L*a*b*
_COLOUR_PHOTOMETRIC = (2, 6, 8, 9, 10)


def colour_of(image: Any, path: str | os.PathLike) -> bool:
    """Whether ``image`` read from ``path`` is gray or colour as it stands: False only for 3
    channels its TIFF says are not RGB (:func:`is_colour`, read only then), the ``colour``
    :func:`select_channel` takes."""
    return len(image.shape) != 3 or int(image.shape[2]) != 3 or is_colour(path)


def is_colour(path: str | os.PathLike) -> bool:
    """Whether a 3-channel image file holds colour (RGB) rather than 3 separate channels:
    PNG/JPEG/BMP always, a TIFF when its photometric interpretation is a colour one (an
    ImageJ or OME-TIFF with 3 fluorescence channels is min-is-black). Reads the header only."""
    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return True
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return int(tif.series[0].keyframe.photometric) in _COLOUR_PHOTOMETRIC
    except Exception:  # (a file that read a moment ago: take it as the colour it looks)
        return True


def to_float(image: np.ndarray) -> np.ndarray:
    """Scale an image to float32 in [0, 1] by its dtype's range (floats are clipped).

    Only for images whose dtype range is their content's (our own uint8 outputs); images
    entering a model go through :func:`cellsynth.io.normalize.normalize`.
    """
    if np.issubdtype(image.dtype, np.integer) and image.dtype != bool:
        info = np.iinfo(image.dtype)
        return np.clip(image.astype(np.float32) / info.max, 0.0, 1.0)
    if np.issubdtype(image.dtype, np.floating):
        return np.clip(image.astype(np.float32), 0.0, 1.0)
    raise ValueError(f"to_float: unsupported dtype {image.dtype}")


def select_channel(image: Any, channel: int | None, *, where: str = "image",
                   colour: bool = True) -> Any:
    """Channel ``channel`` of an (H, W, C) image (0-based) as (H, W).

    Like Cellpose's ``channels``: e.g. the DAPI channel of an RGB composite for a nuclei model.
    ``None`` keeps a gray or RGB image as it is and gives channel 0 of any other number of
    channels (2 fluorescence channels, 4 markers), or of 3 that are not ``colour`` (a TIFF's
    3 markers, :func:`colour_of`), with a warning naming ``--channel``: every stage takes
    gray or RGB. Works on lazy arrays too (the selection is a view). Raises
    :class:`ImageReadError` when the image has no such channel.
    """
    count = int(image.shape[2]) if len(image.shape) == 3 else 1
    if channel is None:
        if count == 1 or (count == 3 and colour):
            return image
        warnings.warn(f"{where}: {count} channels{', not RGB' if count == 3 else ''}; using "
                      f"channel 0 (--channel, or a run config's real: channel:, takes another, "
                      f"0-{count - 1})", stacklevel=2)
        channel = 0
    if not 0 <= channel < count:
        raise ImageReadError(f"{where}: channel {channel} requested, but the image has {count} "
                             f"channel(s) (0-{count - 1})")
    if len(image.shape) == 2:
        return image
    if isinstance(image, np.ndarray):
        return image[:, :, channel]
    return _ChannelView(image, channel)  # lazy (zarr, a section): stays lazy


class _ChannelView:
    """One channel of a lazy (H, W, C) array; slicing reads only the window."""

    def __init__(self, image: Any, channel: int):
        self.image, self.channel = image, channel
        self.shape = tuple(int(n) for n in image.shape[:2])
        self.dtype = image.dtype

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        return np.asarray(self.image[key[0], key[1]])[..., self.channel]


def match_channels(image: np.ndarray, channels: int, *, where: str | None = None) -> np.ndarray:
    """(H, W) or (H, W, 3) float image -> (H, W, channels) float32, converting gray <-> RGB.

    RGB -> gray uses the ITU-R 709 luma weights of ``skimage.color.rgb2gray``. With ``where``
    (a file name) a conversion is announced with a warning.
    """
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == channels:
        return image.astype(np.float32, copy=False)
    if where is not None:
        what = "converting RGB image to gray" if channels == 1 else "replicating gray to RGB"
        warnings.warn(f"{where}: {what} for a {channels}-channel model", stacklevel=2)
    if channels == 1:
        return (image @ np.array([0.2125, 0.7154, 0.0721], np.float32))[..., None]
    return np.repeat(image, 3, axis=-1).astype(np.float32, copy=False)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Convert a float image in [0, 1] to uint8 (rounded, clipped)."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


def tiff_resolution(pixel_size_um: float | None) -> dict[str, Any]:
    """tifffile.imwrite's arguments stating ``pixel_size_um`` as resolution in pixels per
    centimetre (Fiji, QuPath and cellsynth read it back); none where it is unknown."""
    if pixel_size_um is None:
        return {}
    return {"resolution": (1e4 / pixel_size_um, 1e4 / pixel_size_um),
            "resolutionunit": "CENTIMETER"}


def _write(path: Path, array: np.ndarray, *, compress: bool = True,
           pixel_size_um: float | None = None) -> None:
    suffix = path.suffix.lower()
    with atomic_path(path) as tmp:
        if suffix in _TIFF:
            import tifffile

            # the pixel size as TIFF resolution in pixels per centimetre (Fiji, QuPath and
            # cellsynth read it back); none written when unknown
            extra = tiff_resolution(pixel_size_um)
            # colour said so: tifffile will store (H, W, 3) as 3 gray pages unless told, and
            # a 3-channel TIFF that is not RGB reads as 3 separate channels (is_colour)
            photometric = "rgb" if array.ndim == 3 and array.shape[-1] == 3 else "minisblack"
            tifffile.imwrite(tmp, array, compression="zlib" if compress else None,
                             photometric=photometric, **extra)
        elif suffix == ".png":
            import imageio.v3 as iio

            iio.imwrite(tmp, array, extension=".png", compress_level=1)
        else:
            raise ValueError(f"{path}: can only write .tif or .png, not {suffix!r}")


def write_image(path: str | os.PathLike, image: np.ndarray, *,
                pixel_size_um: float | None = None) -> None:
    """Atomically write an image ((H, W) or (H, W, 3), uint8/uint16; float only to TIFF); a
    TIFF records ``pixel_size_um`` in its resolution tags."""
    path = Path(path)
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)):
        raise ValueError(f"{path}: image must be HxW or HxWx3, got shape {image.shape}")
    if path.suffix.lower() == ".png" and image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: PNG needs uint8 or uint16, got {image.dtype}")
    _write(path, image, pixel_size_um=pixel_size_um)


def write_labels(path: str | os.PathLike, labels: np.ndarray, *,
                 pixel_size_um: float | None = None) -> None:
    """Atomically write a label map as uint16 (uint32 if ids exceed 65535); a TIFF records
    ``pixel_size_um`` in its resolution tags."""
    path = Path(path)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{path}: labels must be a 2-D integer array, got {labels.dtype} {labels.shape}")
    top = int(labels.max()) if labels.size else 0
    if labels.size and labels.min() < 0:
        raise ValueError(f"{path}: labels must be non-negative")
    dtype = np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32
    if dtype == np.uint32 and path.suffix.lower() == ".png":
        raise ValueError(f"{path}: more than 65535 labels cannot be stored as PNG; use .tif")
    _write(path, labels.astype(dtype, copy=False), pixel_size_um=pixel_size_um)
