"""Whole sections: images too large to decode at once, opened lazily and sampled by windows.

Zarr/OME-Zarr, pyramidal TIFFs, TIFFs of more than y, x and channels, and TIFFs over
``LAZY_PIXELS`` pixels (counted from the header) are opened as array-likes that read only
the windows sliced from them (:func:`open_large_image`). Stages that learn from unlabeled
images (the simulator fit, the score threshold from the estimated count) do not need a
whole section: they measure a few windows of tissue from it (:func:`tissue_windows`), so a
folder of whole-slide images costs what a few 1024² images cost.
"""

from __future__ import annotations

import os
import warnings
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.errors import ImageReadError
from cellsynth.io.images import TIFF_SUFFIXES, guess_axes, refuse_stacks, tiff_alpha

__all__ = ["LAZY_PIXELS", "open_large_image", "reads_lazily", "open_image", "image_shape",
           "tissue_windows", "image_or_windows", "pyramid_levels", "check_level", "overview_of"]

LAZY_PIXELS = 8192 * 8192


class _YXC:
    """A lazy (…, C, Y, X)-ordered array seen as (Y, X[, C]): slicing reads only the window.

    ``colors``: keep only the first this many channels (an RGBA or gray + alpha image
    without its alpha)."""

    def __init__(self, array: Any, axes: str, colors: int | None = None):
        self.array, self.axes = array, axes
        self._y, self._x = axes.index("y"), axes.index("x")
        self._c = axes.index("c") if "c" in axes else None
        h, w = int(array.shape[self._y]), int(array.shape[self._x])
        c = int(array.shape[self._c]) if self._c is not None else 1
        self._colors = colors
        c = min(c, colors or c)
        self.shape = (h, w) if c == 1 else (h, w, c)
        self.ndim = len(self.shape)
        self.dtype = array.dtype

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        ys, xs = key[:2]
        index = [0] * len(self.axes)  # other axes (t, z): the first plane
        index[self._y], index[self._x] = ys, xs
        if self._c is not None:
            index[self._c] = slice(None)
        window = np.asarray(self.array[tuple(index)])  # axes kept in file order
        kept = [a for a in self.axes if a in "cyx"]
        window = np.moveaxis(window, [kept.index("y"), kept.index("x")], [0, 1])
        if self._colors is not None and window.ndim == 3:
            window = window[..., :self._colors]
        if window.ndim == 3 and window.shape[-1] == 1:
            window = window[..., 0]
        return window


def _ngff_level(group: Any, level: int, path: Path) -> tuple[Any, str | None]:
    """(array, axes) of a multiscale level of an OME-Zarr (NGFF 0.4 or 0.5, or the series 0
    of a bioformats2raw container: :func:`~cellsynth.io.ome_zarr.ngff_group`) or tifffile
    group."""
    from cellsynth.io.ome_zarr import ngff_group

    group, attrs = ngff_group(group)
    multiscales = attrs.get("multiscales")
    if multiscales:
        datasets = multiscales[0]["datasets"]
        axes = multiscales[0].get("axes")
        names = "".join((a["name"] if isinstance(a, dict) else a)[0].lower() for a in axes) \
            if axes else None
        check_level(path, level, len(datasets))
        return group[datasets[level]["path"]], names
    keys = sorted(group.array_keys(), key=lambda k: (len(k), k))
    if not keys:
        raise ImageReadError(f"{path}: Zarr group holds no array")
    check_level(path, level, len(keys))
    return group[keys[level]], None


def check_level(path: Path, level: int, levels: int) -> None:
    """Raise :class:`ImageReadError` unless ``level`` is one of the image's ``levels``."""
    if not 0 <= level < levels:
        raise ImageReadError(f"{path}: no resolution level {level}; the image has {levels} "
                             f"({f'0-{levels - 1}, ' if levels > 1 else ''}0 = full "
                             f"resolution)")


def open_large_image(path: str | os.PathLike, *, level: int = 0) -> Any:
    """Open a TIFF (flat, tiled or pyramidal/OME) or Zarr/OME-Zarr image lazily, as an
    array-like of shape (H, W) or (H, W, C) that reads only the windows sliced from it.

    ``level``: the resolution level of a pyramid (0 = full resolution). NGFF axes are
    honoured (a (c, y, x) image is C channels of H x W, not H = C); tifffile's axes too.
    The alpha channel of an RGBA or gray + alpha image (channels last, as the samples of a
    pixel) is dropped with a warning, as :func:`cellsynth.io.images.read_image` drops it;
    channels first (e.g. 4 fluorescence channels) are all kept.
    """
    path = Path(path)
    requested = level
    try:
        import zarr

        axes, store, alpha = None, None, 0
        if path.suffix.lower() == ".zarr" or path.is_dir():
            node = zarr.open(str(path), mode="r")
        elif path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                axes = series.axes.lower().replace("s", "c")
                check_level(path, level, len(series.levels))
                page = series.keyframe  # its photometric and extra samples: which is alpha
                samples = series.shape[axes.index("c")] if "c" in axes else 1
                alpha = tiff_alpha(int(page.photometric),
                                   [int(e) for e in page.extrasamples], samples)
            store = tifffile.imread(path, aszarr=True, level=level)
            node = zarr.open(store, mode="r")
            level = 0  # tifffile opened that level already
        else:
            raise ImageReadError(f"{path}: large images must be TIFF or Zarr")
        if not hasattr(node, "shape"):  # a group: a pyramid
            node, ngff_axes = _ngff_level(node, level, path)
            axes = ngff_axes or axes
    except ImageReadError:
        raise
    except Exception as err:
        raise ImageReadError(f"{path}: cannot open lazily: {err}") from err
    ndim = len(node.shape)
    if axes is None or len(axes) != ndim or "q" in axes:
        axes = guess_axes(tuple(node.shape)) if ndim in (2, 3) else None
        if axes is None:
            raise ImageReadError(f"{path}: cannot tell the axes of a {ndim}-D array "
                                 f"{tuple(node.shape)}; expected (y, x), (y, x, c) or (c, y, x)")
    if "y" not in axes or "x" not in axes:
        raise ImageReadError(f"{path}: image has axes {axes!r}, without y and x")
    refuse_stacks(axes, tuple(int(n) for n in node.shape), where=str(path))
    colors = None
    if alpha:  # (a TIFF's, as it declares; Zarr knows no alpha: its channels are channels)
        colors = int(node.shape[axes.index("c")]) - alpha
        warnings.warn(f"{path}: dropping alpha channel of "
                      f"{'RGBA' if colors == 3 else 'gray+alpha'} image", stacklevel=2)
    image = node if axes in ("yx", "yxc") and colors is None else _YXC(node, axes, colors)
    if store is not None:  # tifffile's store keeps the file open for the lazy reads: close
        weakref.finalize(image, store.close)  # it with the array, not with a warning at exit
    _OPENED[id(image)] = (path, requested)
    weakref.finalize(image, _OPENED.pop, id(image), None)
    return image


# (file, level) of each image open_large_image returned, while it lives: where to find its
# pyramid's coarser levels (overview_of)
_OPENED: dict[int, tuple[Path, int]] = {}


def overview_of(image: Any, *, min_side: int = 256, max_pixels: int = 4096 * 4096
                ) -> tuple[Any, float] | None:
    """(the coarsest level of the pyramid ``image`` is a level of whose shorter side still
    has ``min_side`` px, opened lazily; how many of ``image``'s pixels one of its pixels
    spans), or None where ``image`` was not opened by :func:`open_large_image`, its file
    has no coarser level, or the coarsest has more than ``max_pixels`` (a section with one
    half-size level: reading it is no overview): a small picture of a whole section to find
    its tissue on, as a viewer shows it."""
    source = _OPENED.get(id(image))
    if source is None:
        return None
    path, level = source
    coarser = [c for c in pyramid_levels(path)[level + 1:]
               if min(int(c.shape[0]), int(c.shape[1])) >= min_side]
    best = coarser[-1] if coarser else None
    if best is None or int(best.shape[0]) * int(best.shape[1]) > max_pixels:
        return None
    return best, int(image.shape[0]) / int(best.shape[0])


def reads_lazily(path: str | os.PathLike, lazy_pixels: int = LAZY_PIXELS) -> bool:
    """Zarr, pyramidal TIFFs, TIFFs with axes beyond y, x and channels, and TIFFs over
    ``lazy_pixels`` pixels (counted from the header, not guessed from the compressed file
    size) are read tile by tile."""
    path = Path(path)
    if path.is_dir():
        return True
    if path.suffix.lower() not in TIFF_SUFFIXES:
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes = series.axes.lower()
            if "q" in axes:  # axes tifffile could not name: read_image says what is wrong
                return False
            pixels = series.shape[axes.index("y")] * series.shape[axes.index("x")]
            # (a small channels-first image, e.g. ImageJ's 2-channel CYX, is read whole
            # with its channels last; a z-stack or time series only window by window)
            return (len(series.levels) > 1 or axes not in ("yx", "yxs", "cyx", "syx")
                    or pixels > lazy_pixels)
    except Exception:  # unreadable header: read_image says what is wrong with the file
        return False


def open_image(path: str | os.PathLike, *, level: int = 0, channel: int | None = None,
               all_channels: bool = False) -> Any:
    """An image file decoded whole, or a whole section opened lazily (see :func:`reads_lazily`):
    either way an (H, W) or (H, W, C) array-like that can be sliced. ``channel``: only that
    channel (0-based) of a multi-channel image, as (H, W), lazily for a section
    (:func:`cellsynth.io.images.select_channel`), as ``real.channel`` reads a run's images:
    a gray image is used as it is (that channel saved alone), as a detector that recorded
    the channel takes it. ``all_channels``: every channel, none chosen and nothing said (for
    its shape, or to show each)."""
    from cellsynth.io.images import read_image, select_channel

    if channel is None and not all_channels:
        return open_large_image(path, level=level) if reads_lazily(path) else read_image(path)
    image = (open_large_image(path, level=level) if reads_lazily(path)
             else read_image(path, all_channels=True))
    if len(image.shape) == 2 or channel is None:
        return image
    return select_channel(image, channel, where=str(path))


def image_shape(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of the image :func:`open_image` gives, from the file's header where
    the format allows (a TIFF's series, a PNG's or JPEG's size; a Zarr's or section's lazy
    array): no pixel decoded, so pricing a run (``--estimate``) over a folder of large
    images costs a header each. A header that cannot tell decodes the image, whose reader
    names what is wrong with the file."""
    from cellsynth.io.images import file_axes, read_image

    path = Path(path)
    if reads_lazily(path):
        image = open_large_image(path)
        return int(image.shape[0]), int(image.shape[1])
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                axes, shape = file_axes(tif.series[0].axes, tif.series[0].shape)
            if "Y" in axes and "X" in axes:
                return shape[axes.index("Y")], shape[axes.index("X")]
        else:
            from PIL import Image

            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # (a header only)
            try:
                with Image.open(path) as opened:
                    width, height = opened.size
            finally:
                Image.MAX_IMAGE_PIXELS = limit
            return int(height), int(width)
    except Exception:  # noqa: S110 (read_image below says what is wrong with the file)
        pass
    image = read_image(path, all_channels=True)
    return int(image.shape[0]), int(image.shape[1])


def _texture(window: np.ndarray) -> float:
    """Mean absolute difference of the luminance from its 9 x 9 local mean: high in tissue,
    low on empty glass or dark background; a window half on tissue scores half (its global
    spread would rank the tissue's edge first)."""
    from scipy.ndimage import uniform_filter

    window = np.asarray(window, np.float32)
    if window.ndim == 3:
        window = window[..., :3].mean(axis=2)
    return float(np.abs(window - uniform_filter(window, 9, mode="reflect")).mean())


def tissue_windows(image: Any, side: int, n: int, *, seed: int = 0,
                   candidates: int | None = None, share: float = 0.5
                   ) -> list[tuple[int, int, np.ndarray]]:
    """Up to ``n`` windows of ``side`` x ``side`` px of an image (numpy or lazy) that hold
    tissue rather than empty glass or dark background: ``candidates`` (default ``4 n``, at
    least 16) windows drawn at random with ``seed`` are read and the ``n`` with the most
    fine texture (:func:`_texture`) are kept, none overlapping another by more than a
    quarter of its area, nor with less than ``share`` of the best window's texture (glass:
    fewer than ``n`` windows come back from a slide that is mostly empty). Returns
    ``(y, x, pixels)``, the most textured first. An image no larger than ``side`` either
    way is one window, itself.

    Only the candidate windows are read, so a whole-slide image costs what ``candidates``
    windows cost, whatever its size.
    """
    h, w = int(image.shape[0]), int(image.shape[1])
    if h <= side and w <= side:
        return [(0, 0, np.asarray(image[0:h, 0:w]))]
    sy, sx = min(side, h), min(side, w)
    rng = np.random.default_rng(seed)
    count = candidates or max(4 * n, 16)
    found = []
    for _ in range(count):
        y, x = int(rng.integers(h - sy + 1)), int(rng.integers(w - sx + 1))
        window = np.asarray(image[y:y + sy, x:x + sx])
        found.append((_texture(window), y, x, window))
    found.sort(key=lambda f: -f[0])
    kept: list[tuple[int, int, np.ndarray]] = []
    for score, y, x, window in found:
        if len(kept) == n or score < share * found[0][0]:
            break
        if all(max(0, sy - abs(y - ky)) * max(0, sx - abs(x - kx)) <= sy * sx / 4
               for ky, kx, _ in kept):
            kept.append((y, x, window))
    return kept


def stage_channels(window: np.ndarray) -> np.ndarray:
    """A window of a section as every stage takes images: gray or RGB unchanged, of any
    other number of channels (2 or 4 fluorescence channels) channel 0, as
    :func:`cellsynth.io.images.read_image` reads such files (without its warning: a
    section gives many windows)."""
    if window.ndim == 3 and window.shape[-1] != 3:
        return window[..., 0]
    return window


def image_or_windows(path: str | os.PathLike, *, side: int = 1024, n: int = 4,
                     seed: int = 0, channel: int | None = None) -> list[np.ndarray]:
    """The decoded image, or for a whole section (:func:`reads_lazily`) up to ``n`` windows
    of ``side`` px of its tissue (:func:`tissue_windows`): what realism metrics compare
    against, without decoding a slide. ``channel``: that channel alone (see
    :func:`open_image`)."""
    if not reads_lazily(path):
        return [open_image(path, channel=channel)]
    image = open_image(path, channel=channel)
    return [stage_channels(w) for _, _, w in tissue_windows(image, side, n, seed=seed)]


def pyramid_levels(path: str | os.PathLike, *, max_levels: int = 16) -> list[Any]:
    """Every resolution level of a section (level 0 first), each opened lazily: what a viewer
    such as napari shows as one multiscale layer."""
    levels = [open_large_image(path)]
    for level in range(1, max_levels):
        try:
            levels.append(open_large_image(path, level=level))
        except ImageReadError:  # no such level: the pyramid ends
            break
    return levels
