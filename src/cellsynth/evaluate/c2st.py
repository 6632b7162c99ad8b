"""C2ST, a classifier two-sample test: how distinguishable are two image sets?

A small CNN is trained from scratch (no pretrained weights) to tell random crops of set A from
set B; its k-fold held-out accuracy is 0.5 when the sets are indistinguishable and 1.0 when
they are trivially different. Folds are split by image, so held-out crops come from images the
classifier has never seen (split by crop only when a set has a single image). torch is
imported only when :func:`c2st` runs. Images are ``(H, W)`` or ``(H, W, 3)`` arrays of uint8,
uint16 or float in [0, 1]; they are scaled to [0, 1] by their dtype's range.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from cellsynth.evaluate._common import _check_min_size, _prepare, _rngs, _sample_windows
from cellsynth.hardware import choose_threads, torch_threads

__all__ = ["C2STResult", "c2st"]

# The classifier trains channels-last (oneDNN's pooling, BatchNorm and convolutions run ~1.5x
# faster on CPU in this layout than in NCHW) and pools before it normalises (_classifier).
# False: NCHW and the old block order, kept so benchmarks/c2st.py can measure both.
_FAST = True


@dataclass(frozen=True)
class C2STResult:
    """Classifier two-sample test: mean held-out accuracy over folds and its standard error.

    With ``repeats`` > 1 the whole test (crops, folds, classifier) is redrawn that many times:
    ``accuracy`` is the mean over repeats, ``sem`` the standard error over repeats and
    ``fold_accuracies`` holds every fold of every repeat.
    """

    accuracy: float
    sem: float
    fold_accuracies: tuple[float, ...]
    split: str  # "image": held-out crops come from unseen images; "crop": from training images
    held_out_images: int  # fewest images of a set in a held-out fold (0 for a crop split)
    crops_per_set: int
    crop_size: int
    epochs: int
    repeats: int = 1
    repeat_accuracies: tuple[float, ...] = ()  # one mean accuracy per repeat


def _check_c2st_options(folds: int, crop_size: int, n_crops: int, epochs: int) -> None:
    if folds < 2 or crop_size < 8 or n_crops < folds or epochs < 1:
        raise ValueError(f"c2st: need folds >= 2, crop_size >= 8, n_crops >= folds and "
                         f"epochs >= 1; got {folds}, {crop_size}, {n_crops} and {epochs}")


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


def _classifier(channels: int, pool_first: bool = True):
    """A small CNN: 4 conv blocks (16-32-64-64 channels), global average pooling, one logit.

    ``pool_first``: the first three blocks are conv, max-pool, BatchNorm, ReLU, so the
    normalisation and activation run on a quarter of the pixels (1.5x faster training; False:
    conv, BatchNorm, ReLU, max-pool, the order before 2026-11-30).
    """
    from torch import nn

    layers: list[nn.Module] = []
    width_in = channels
    for i, width in enumerate((16, 32, 64, 64)):
        conv = nn.Conv2d(width_in, width, 3, padding=1, bias=False)
        norm = [nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        pool = [nn.MaxPool2d(2)] if i < 3 else []
        layers += [conv, *pool, *norm] if pool_first else [conv, *norm, *pool]
        width_in = width
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width_in, 1))


def _fit_and_score(x_train, y_train, x_test, y_test, *, epochs: int, batch_size: int,
                   rng: np.random.Generator, tick) -> float:
    """Train a fresh classifier on (x_train, y_train); return its accuracy on the test set."""
    import torch

    with torch.random.fork_rng(devices=[]):  # seeds the weight init without leaking state
        torch.manual_seed(int(rng.integers(2**63 - 1)))
        net = _classifier(x_train.shape[1], pool_first=_FAST)
    if _FAST:
        net = net.to(memory_format=torch.channels_last)
        x_train = x_train.contiguous(memory_format=torch.channels_last)
        x_test = x_test.contiguous(memory_format=torch.channels_last)
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
    elif k < folds:
        warnings.warn(f"c2st: {k} folds, not the {folds} asked: a fold holds out whole images "
                      f"and a set has only {min(len(a), len(b))}", stacklevel=3)
    if held_out and held_out < 3:
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
    accuracies = []
    with bar, torch_threads(choose_threads(threads)[0]):
        for f in range(k):
            train, test = torch.from_numpy(fold_of != f), torch.from_numpy(fold_of == f)
            accuracies.append(_fit_and_score(x[train], y[train], x[test], y[test],
                                             epochs=epochs, batch_size=batch_size, rng=rng,
                                             tick=bar.update))
    acc = np.array(accuracies)
    return C2STResult(accuracy=float(acc.mean()), sem=float(acc.std(ddof=1) / np.sqrt(k)),
                      fold_accuracies=tuple(float(v) for v in acc), split=split,
                      held_out_images=held_out,
                      crops_per_set=k * m, crop_size=crop_size, epochs=epochs)


def _c2st_repeated(a: list[np.ndarray], b: list[np.ndarray], *, seed: int, repeats: int,
                   **options) -> C2STResult:
    """``repeats`` independent C2STs, repeat r seeded like a single test with ``seed + r``
    (so repeat 0 is exactly the single test with ``seed``), averaged."""
    if repeats < 1:
        raise ValueError(f"c2st: repeats must be >= 1, got {repeats}")
    runs = [_c2st(a, b, rng=_rngs(seed + r)[0], **options) for r in range(repeats)]
    if repeats == 1:
        return runs[0]
    means = np.array([r.accuracy for r in runs])
    return replace(runs[0], accuracy=float(means.mean()),
                   sem=float(means.std(ddof=1) / np.sqrt(repeats)),
                   fold_accuracies=tuple(v for r in runs for v in r.fold_accuracies),
                   repeats=repeats, repeat_accuracies=tuple(float(v) for v in means))


def c2st(a_images: Sequence[np.ndarray], b_images: Sequence[np.ndarray], *, seed: int = 0,
         folds: int = 5, crop_size: int = 64, n_crops: int = 512, epochs: int = 12,
         threads: int | None = None, progress: bool = False, repeats: int = 1) -> C2STResult:
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
        torch CPU threads while training (restored afterwards); default: the free usable
        cores (:func:`cellsynth.hardware.choose_threads`).
        On a CPU shared with other jobs, 1 is often much faster than oversubscribing.
    progress : bool
        Show training progress on stderr.
    repeats : int
        Redraw the whole test this many times (seeds ``seed .. seed + repeats - 1``) and
        average. One test varies by several points between seeds (0.86-0.96 for one pair of
        sets of 15 and 60 images); compare sets on the mean of a few repeats.

    Returns
    -------
    C2STResult
        Mean held-out accuracy (0.5 = indistinguishable) and its standard error over folds
        (over repeats if ``repeats`` > 1).

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
    return _c2st_repeated(a, b, seed=seed, repeats=repeats, folds=folds, crop_size=crop_size,
                          n_crops=n_crops, epochs=epochs, batch_size=64, threads=threads,
                          progress=progress)
