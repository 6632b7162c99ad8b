"""Realism metrics: how distinguishable are two image sets (e.g. real vs simulated)?

- C2ST, a classifier two-sample test: a small CNN trained from scratch to tell random crops of
  set A from set B; its k-fold held-out accuracy is 0.5 when the sets are indistinguishable and
  1.0 when they are trivially different. Folds are split by image, so held-out crops come from
  images the classifier has never seen (split by crop only when a set has a single image).
- SWD, the sliced Wasserstein distance between the distributions of 7 x 7 Laplacian-pyramid
  patches at each scale (Karras et al. 2018, "Progressive growing of GANs", Sec. 5).
- Interpretable statistics: Wasserstein-1 distance between pixel-intensity distributions per
  channel, and the RMS difference of the log10 radially averaged power spectra.

No pretrained weights are used anywhere. Images are ``(H, W)`` or ``(H, W, 3)`` arrays of
uint8, uint16 or float in [0, 1]; they are scaled to [0, 1] by their dtype's range.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.ndimage import convolve1d

from cellsynth.io.images import to_float

__all__ = ["C2STResult", "SWDResult", "RealismResult", "c2st", "sliced_wasserstein",
           "histogram_distance", "spectrum_distance", "realism"]

_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0  # the 5-tap kernel of cv2.pyrDown


@dataclass(frozen=True)
class C2STResult:
    """Classifier two-sample test: mean held-out accuracy over folds and its standard error."""

    accuracy: float
    sem: float
    fold_accuracies: tuple[float, ...]
    split: str  # "image": held-out crops come from unseen images; "crop": from training images
    held_out_images: int  # fewest images of a set in a held-out fold (0 for a crop split)
    crops_per_set: int
    crop_size: int
    epochs: int


@dataclass(frozen=True)
class SWDResult:
    """Sliced Wasserstein distance x 1e3 per Laplacian level (finest first) and their mean."""

    mean_x1e3: float
    per_level_x1e3: tuple[float, ...]
    patches_per_level: int


@dataclass(frozen=True)
class RealismResult:
    """All realism metrics of :func:`realism`; ``to_dict`` gives JSON-ready nested data."""

    n_a: int
    n_b: int
    channels: int
    converted_to_gray: bool  # True if RGB images were converted to match a gray set
    seed: int
    c2st: C2STResult
    swd: SWDResult
    histogram_w1: float  # mean over channels, intensity units in [0, 1]
    histogram_w1_per_channel: tuple[float, ...]
    spectrum_rms_log10: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- inputs ----------------------------------------------------------------------------------

def _prepare(a_images: Sequence[np.ndarray], b_images: Sequence[np.ndarray]
             ) -> tuple[list[np.ndarray], list[np.ndarray], bool]:
    """Both sets as lists of (H, W, C) float32 in [0, 1] with a common C (1 or 3)."""
    sets = []
    for name, images in (("a_images", a_images), ("b_images", b_images)):
        if len(images) == 0:
            raise ValueError(f"{name}: empty image set")
        out = []
        for i, image in enumerate(images):
            image = np.asarray(image)
            if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)):
                raise ValueError(f"{name}[{i}]: expected shape (H, W) or (H, W, 3), "
                                 f"got {image.shape}")
            try:
                image = to_float(image)
            except ValueError as err:
                raise ValueError(f"{name}[{i}]: {err}") from None
            if not np.isfinite(image).all():
                raise ValueError(f"{name}[{i}]: image contains NaN/inf values")
            out.append(image if image.ndim == 3 else image[..., None])
        sets.append(out)
    rgb = [x.shape[-1] == 3 for s in sets for x in s]
    converted = any(rgb) and not all(rgb)
    if converted:
        from skimage.color import rgb2gray

        warnings.warn("realism: the image sets mix gray and RGB images; converting RGB to gray",
                      stacklevel=3)
        sets = [[rgb2gray(x)[..., None].astype(np.float32) if x.shape[-1] == 3 else x
                 for x in s] for s in sets]
    return sets[0], sets[1], converted


def _rngs(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent streams for C2ST and SWD, so each metric alone gives the same numbers."""
    return tuple(np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))


def _check_c2st_options(folds: int, crop_size: int, n_crops: int, epochs: int) -> None:
    if folds < 2 or crop_size < 8 or n_crops < folds or epochs < 1:
        raise ValueError(f"c2st: need folds >= 2, crop_size >= 8, n_crops >= folds and "
                         f"epochs >= 1; got {folds}, {crop_size}, {n_crops} and {epochs}")


def _check_min_size(images: list[np.ndarray], name: str, size: int, why: str) -> None:
    for i, image in enumerate(images):
        if min(image.shape[:2]) < size:
            raise ValueError(f"{name}[{i}]: image {image.shape[0]}x{image.shape[1]} is smaller "
                             f"than {why} ({size} px)")


def _sample_windows(images: list[np.ndarray], which: np.ndarray, n: int, size: int,
                    rng: np.random.Generator) -> np.ndarray:
    """``n`` random size x size windows, (n, C, size, size), from images ``which``, uniform
    over all window positions (an image is drawn in proportion to its number of positions)."""
    positions = np.array([(images[i].shape[0] - size + 1) * (images[i].shape[1] - size + 1)
                          for i in which], dtype=float)
    picks = rng.choice(which, size=n, p=positions / positions.sum())
    out = np.empty((n, images[0].shape[-1], size, size), np.float32)
    for i in np.unique(picks):
        slots = np.flatnonzero(picks == i)
        h, w = images[i].shape[:2]
        ys = rng.integers(0, h - size + 1, slots.size)
        xs = rng.integers(0, w - size + 1, slots.size)
        windows = np.lib.stride_tricks.sliding_window_view(images[i], (size, size), axis=(0, 1))
        out[slots] = windows[ys, xs]  # (k, C, size, size)
    return out


# --- C2ST ------------------------------------------------------------------------------------

def _digest(image: np.ndarray) -> bytes:
    return hashlib.blake2b(image.tobytes() + str(image.shape).encode(), digest_size=16).digest()


def _image_folds(a: list[np.ndarray], b: list[np.ndarray], k: int, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Assign images to k folds, round-robin in random order. An image present in both sets
    gets the same fold on both sides: otherwise the classifier would have seen it with the
    other label and be pushed below chance on it."""
    fold_a = np.empty(len(a), int)
    fold_a[rng.permutation(len(a))] = np.arange(len(a)) % k
    known = {_digest(x): f for x, f in zip(a, fold_a, strict=True)}
    fold_b = np.array([known.get(_digest(x), -1) for x in b])
    counts = np.bincount(fold_b[fold_b >= 0], minlength=k)
    for i in rng.permutation(np.flatnonzero(fold_b < 0)):
        fold_b[i] = int(np.argmin(counts))
        counts[fold_b[i]] += 1
    return fold_a, fold_b


def _classifier(channels: int):
    """A small CNN: 4 conv blocks (16-32-64-64 channels), global average pooling, one logit."""
    from torch import nn

    layers: list[nn.Module] = []
    width_in = channels
    for i, width in enumerate((16, 32, 64, 64)):
        layers += [nn.Conv2d(width_in, width, 3, padding=1, bias=False),
                   nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        if i < 3:
            layers.append(nn.MaxPool2d(2))
        width_in = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width_in, 1))


def _fit_and_score(x_train, y_train, x_test, y_test, *, epochs: int, batch_size: int,
                   rng: np.random.Generator, tick) -> float:
    """Train a fresh classifier on (x_train, y_train); return its accuracy on the test set."""
    import torch

    with torch.random.fork_rng(devices=[]):  # seeds the weight init without leaking state
        torch.manual_seed(int(rng.integers(2**63 - 1)))
        net = _classifier(x_train.shape[1])
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    n_batches = max(1, len(x_train) // batch_size)  # array_split: no batch smaller than that
    net.train()
    for _ in range(epochs):
        for batch in np.array_split(rng.permutation(len(x_train)), n_batches):
            x = x_train[torch.from_numpy(batch)]  # (B, C, S, S)
            # a random dihedral transform per batch: the same for both classes, so unbiased
            x = torch.rot90(x, int(rng.integers(4)), dims=(2, 3))
            if rng.integers(2):
                x = torch.flip(x, dims=(3,))
            logits = net(x)[:, 0]  # (B,)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, y_train[torch.from_numpy(batch)])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        tick()
    # Re-estimate the BatchNorm statistics of the final weights over the training set: after
    # few steps the running averages still lag behind and would bias the test predictions.
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # cumulative average over the batches below
        for chunk in torch.split(x_train, 256):
            net(chunk)
    net.eval()
    with torch.no_grad():
        logits = torch.cat([net(chunk)[:, 0] for chunk in torch.split(x_test, 256)])
    return float(((logits > 0).float() == y_test).float().mean())


def _c2st(a: list[np.ndarray], b: list[np.ndarray], *, rng: np.random.Generator, folds: int,
          crop_size: int, n_crops: int, epochs: int, batch_size: int, threads: int | None,
          progress: bool) -> C2STResult:
    import torch

    _check_min_size(a, "a_images", crop_size, "the C2ST crop size")
    _check_min_size(b, "b_images", crop_size, "the C2ST crop size")
    k = min(folds, len(a), len(b))
    fold_a, fold_b = _image_folds(a, b, k, rng) if k >= 2 else (np.zeros(0, int),) * 2
    split, held_out = "image", 0
    if k >= 2:
        held_out = int(min(np.bincount(fold_a, minlength=k).min(),
                           np.bincount(fold_b, minlength=k).min()))
    if held_out == 0:
        warnings.warn("c2st: too few images to hold out whole images; folds split crops, so "
                      "held-out crops come from training images", stacklevel=3)
        k, split = folds, "crop"
    elif held_out < 3:
        warnings.warn(f"c2st: only {held_out} image(s) of a set held out per fold; the accuracy "
                      "then reflects single images more than the sets and may lie far from 0.5 "
                      "(even below it) for one distribution", stacklevel=3)
    m = max(1, n_crops // k)  # crops per set and fold: every fold is balanced A/B
    crops, labels, fold_of = [], [], []
    for f in range(k):
        for label, images, fold in ((0.0, a, fold_a), (1.0, b, fold_b)):
            which = np.flatnonzero(fold == f) if split == "image" else np.arange(len(images))
            crops.append(_sample_windows(images, which, m, crop_size, rng) - 0.5)
            labels.append(np.full(m, label, np.float32))
            fold_of.append(np.full(m, f))
    x, y = torch.from_numpy(np.concatenate(crops)), torch.from_numpy(np.concatenate(labels))
    fold_of = np.concatenate(fold_of)
    from tqdm import tqdm

    bar = tqdm(total=k * epochs, desc="c2st", unit="epoch", disable=not progress, leave=False)
    accuracies, previous_threads = [], torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for f in range(k):
            train, test = torch.from_numpy(fold_of != f), torch.from_numpy(fold_of == f)
            accuracies.append(_fit_and_score(x[train], y[train], x[test], y[test],
                                             epochs=epochs, batch_size=batch_size, rng=rng,
                                             tick=bar.update))
    finally:
        torch.set_num_threads(previous_threads)
        bar.close()
    acc = np.array(accuracies)
    return C2STResult(accuracy=float(acc.mean()), sem=float(acc.std(ddof=1) / np.sqrt(k)),
                      fold_accuracies=tuple(float(v) for v in acc), split=split,
                      held_out_images=held_out,
                      crops_per_set=k * m, crop_size=crop_size, epochs=epochs)


def c2st(a_images: Sequence[np.ndarray], b_images: Sequence[np.ndarray], *, seed: int = 0,
         folds: int = 5, crop_size: int = 64, n_crops: int = 512, epochs: int = 12,
         threads: int | None = None, progress: bool = False) -> C2STResult:
    """Classifier two-sample test between two image sets.

    Parameters
    ----------
    a_images, b_images : sequences of (H, W) or (H, W, 3) arrays, uint8/uint16/float
        Each image at least ``crop_size`` pixels on each side; sizes may differ.
    seed : int
        Seeds crop sampling, fold assignment, weight init and batch order.
    folds : int >= 2
        Cross-validation folds (fewer if a set has fewer images).
    crop_size, n_crops, epochs : int
        Crop side, crops per set (split evenly over folds), training epochs per fold.
    threads : int, optional
        torch CPU threads while training (restored afterwards); default: torch's setting.
        On a CPU shared with other jobs, 1 is often much faster than oversubscribing.
    progress : bool
        Show training progress on stderr.

    Returns
    -------
    C2STResult
        Mean held-out accuracy (0.5 = indistinguishable) and its standard error over folds.

    Notes
    -----
    Folds hold out whole images, so the test asks whether *new* images of A and B can be told
    apart. With few images per fold, differences between single images dominate and, as with
    any cross-validation on few groups, the accuracy can then fall below 0.5 for sets from one
    distribution (a warning says so); compare with a real-vs-real baseline in that case. The
    standard error over folds ignores the correlation between folds.
    """
    _check_c2st_options(folds, crop_size, n_crops, epochs)
    a, b, _ = _prepare(a_images, b_images)
    return _c2st(a, b, rng=_rngs(seed)[0], folds=folds, crop_size=crop_size,
                 n_crops=n_crops, epochs=epochs, batch_size=64, threads=threads,
                 progress=progress)


# --- SWD -------------------------------------------------------------------------------------

def _laplacian_pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """Laplacian pyramid of an (H, W, C) image, finest level first; the last is the Gaussian
    residual. Binomial 5-tap filtering with mirrored borders, as cv2.pyrDown / cv2.pyrUp."""
    def blur(x: np.ndarray, gain: float = 1.0) -> np.ndarray:
        x = convolve1d(x, _BINOMIAL * gain, axis=0, mode="mirror")
        return convolve1d(x, _BINOMIAL * gain, axis=1, mode="mirror")

    pyramid, current = [], image.astype(np.float64)
    for _ in range(levels - 1):
        down = blur(current)[::2, ::2]
        up = np.zeros_like(current)
        up[::2, ::2] = down
        pyramid.append(current - blur(up, gain=2.0))  # gain 2 per axis restores the mean
        current = down
    pyramid.append(current)
    return pyramid


def _swd(a: list[np.ndarray], b: list[np.ndarray], *, rng: np.random.Generator, n_patches: int,
         n_directions: int = 512) -> SWDResult:
    _check_min_size(a + b, "images", 16, "the smallest SWD level")
    min_side = min(min(x.shape[:2]) for x in a + b)
    levels = int(np.floor(np.log2(min_side / 16))) + 1  # coarsest level >= 16 px, as Karras
    pyramids = [[_laplacian_pyramid(x, levels) for x in images] for images in (a, b)]
    per_level = []
    for level in range(levels):
        descriptors = [_sample_windows([p[level] for p in pyr], np.arange(len(pyr)), n_patches,
                                       7, rng) for pyr in pyramids]  # (N, C, 7, 7) each
        # Normalise each channel with statistics of both sets pooled (Karras normalises each
        # set on its own, which hides global intensity and contrast differences).
        both = np.concatenate(descriptors)
        mean = both.mean(axis=(0, 2, 3), keepdims=True)
        std = both.std(axis=(0, 2, 3), keepdims=True) + 1e-8
        da, db = (((d - mean) / std).reshape(n_patches, -1) for d in descriptors)
        directions = rng.standard_normal((da.shape[1], n_directions))
        directions /= np.linalg.norm(directions, axis=0, keepdims=True)
        pa, pb = np.sort(da @ directions, axis=0), np.sort(db @ directions, axis=0)
        per_level.append(float(np.abs(pa - pb).mean()) * 1e3)
    return SWDResult(mean_x1e3=float(np.mean(per_level)), per_level_x1e3=tuple(per_level),
                     patches_per_level=n_patches)


def sliced_wasserstein(a_images: Sequence[np.ndarray], b_images: Sequence[np.ndarray], *,
                       seed: int = 0, n_patches: int = 8192) -> SWDResult:
    """Sliced Wasserstein distance between multi-scale patch distributions (x 1e3).

    At each Laplacian-pyramid level (finest to the coarsest level of at least 16 px),
    ``n_patches`` random 7 x 7 patches per set are normalised per channel, projected on 512
    random unit directions, and the mean absolute difference of the sorted projections is
    taken (Karras et al. 2018). Independent samples of one distribution give a small positive
    value (sampling noise), not exactly 0.
    """
    if n_patches < 2:
        raise ValueError(f"sliced_wasserstein: n_patches must be >= 2, got {n_patches}")
    a, b, _ = _prepare(a_images, b_images)
    return _swd(a, b, rng=_rngs(seed)[1], n_patches=n_patches)


# --- simple statistics -----------------------------------------------------------------------

def _histogram_w1(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[float, ...]:
    """Wasserstein-1 per channel between pooled pixel intensities, on the 1/65535 grid."""
    levels = 65535  # exact for uint8 and uint16 data (both lie on this grid)
    distances = []
    for c in range(a[0].shape[-1]):
        cdfs = []
        for images in (a, b):
            counts = sum(np.bincount(np.rint(x[..., c].ravel() * levels).astype(np.int64),
                                     minlength=levels + 1) for x in images)
            cdfs.append(np.cumsum(counts) / counts.sum())
        distances.append(float(np.abs(cdfs[0] - cdfs[1])[:-1].sum() / levels))
    return tuple(distances)


def _mean_log_spectrum(images: list[np.ndarray], bins: int) -> np.ndarray:
    """log10 of the radially averaged power spectrum (mean over images), in ``bins`` bins of
    spatial frequency over (0, 0.5] cycles/pixel. Images are mean-free and Hann-windowed."""
    total, count = np.zeros(bins), np.zeros(bins)
    for image in images:
        x = image.mean(axis=-1)
        window = np.outer(np.hanning(x.shape[0]), np.hanning(x.shape[1]))
        x = (x - x.mean()) * window
        power = np.abs(np.fft.fft2(x)) ** 2 / (window**2).sum()
        radius = np.hypot(*np.meshgrid(np.fft.fftfreq(x.shape[0]), np.fft.fftfreq(x.shape[1]),
                                       indexing="ij"))
        index = np.ceil(radius / 0.5 * bins).astype(int) - 1  # bin i: (i/bins, (i+1)/bins] * 0.5
        valid = (radius > 0) & (index < bins)
        sums = np.bincount(index[valid], power[valid], minlength=bins)
        hits = np.bincount(index[valid], minlength=bins)
        total += np.divide(sums, hits, out=np.zeros(bins), where=hits > 0)
        count += hits > 0
    return np.log10(np.divide(total, count, out=np.full(bins, np.nan), where=count > 0) + 1e-12)


def _spectrum_rms(a: list[np.ndarray], b: list[np.ndarray], bins: int = 32) -> float:
    diff = _mean_log_spectrum(a, bins) - _mean_log_spectrum(b, bins)
    return float(np.sqrt(np.nanmean(diff**2)))


def histogram_distance(a_images: Sequence[np.ndarray], b_images: Sequence[np.ndarray]
                       ) -> tuple[float, ...]:
    """Wasserstein-1 distance between the pixel intensities (in [0, 1]) of the two sets, per
    channel: the mean absolute intensity change needed to turn one histogram into the other."""
    a, b, _ = _prepare(a_images, b_images)
    return _histogram_w1(a, b)


def spectrum_distance(a_images: Sequence[np.ndarray], b_images: Sequence[np.ndarray]) -> float:
    """RMS difference (in log10 units) of the sets' mean radially averaged power spectra of the
    channel-mean images (mean-free, Hann-windowed) over 32 frequency bins in (0, 0.5]
    cycles/pixel; 0.3 means a factor 2 in power on average. Blind to mean intensity."""
    a, b, _ = _prepare(a_images, b_images)
    return _spectrum_rms(a, b)


# --- everything ------------------------------------------------------------------------------

def realism(a_images: Sequence[np.ndarray], b_images: Sequence[np.ndarray], *, seed: int = 0,
            folds: int = 5, crop_size: int = 64, n_crops: int = 512, epochs: int = 12,
            swd_patches: int = 8192, threads: int | None = None,
            progress: bool = False) -> RealismResult:
    """Compare two image sets with C2ST, SWD, intensity-histogram and power-spectrum distances.

    Parameters
    ----------
    a_images, b_images : sequences of (H, W) or (H, W, 3) arrays, uint8/uint16/float
        If one set is gray and the other RGB, RGB images are converted to gray (with a warning).
    seed : int
        Same seed, same result (on the same machine and torch version).
    folds, crop_size, n_crops, epochs, threads
        C2ST options, see :func:`c2st`.
    swd_patches : int
        Patches per set and pyramid level for the SWD, see :func:`sliced_wasserstein`.
    progress : bool
        Show C2ST training progress on stderr.
    """
    _check_c2st_options(folds, crop_size, n_crops, epochs)
    if swd_patches < 2:
        raise ValueError(f"realism: swd_patches must be >= 2, got {swd_patches}")
    a, b, converted = _prepare(a_images, b_images)
    c2st_rng, swd_rng = _rngs(seed)
    w1 = _histogram_w1(a, b)
    return RealismResult(
        n_a=len(a), n_b=len(b), channels=a[0].shape[-1], converted_to_gray=converted, seed=seed,
        c2st=_c2st(a, b, rng=c2st_rng, folds=folds, crop_size=crop_size, n_crops=n_crops,
                   epochs=epochs, batch_size=64, threads=threads, progress=progress),
        swd=_swd(a, b, rng=swd_rng, n_patches=swd_patches),
        histogram_w1=float(np.mean(w1)), histogram_w1_per_channel=w1,
        spectrum_rms_log10=_spectrum_rms(a, b),
    )
