"""The annotators' "too faint to be a cell" rule, learned from annotated images.

With a few annotated images a detector finds as many annotated somata as a fine-tuned peer
but also many objects nobody annotated, ~45 % of them paler than nearly every annotated one
(Nissl, docs/results.md "faint detections"). A :class:`FaintCut` is the ``percentile``-th
percentile of the annotated objects' mean *signal* (stain density for dark objects on a
bright background: 1 - the channel mean of the content-normalised image; intensity for
bright objects on a dark one), measured on annotated images; at prediction every detection
whose mean signal lies below it is dropped (:func:`drop_faint`): ``predict.faint_percentile``
in a pipeline config (measured on the run's annotated images), ``cellsynth predict
--faint-from ANNOTATED``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from cellsynth.errors import ConfigError

__all__ = ["FAINT_PERCENTILE", "FaintCut", "calibrate_faint", "proposal_signals", "drop_faint"]

BLOCK = 1024  # px: proposals are measured in windows of about this side (whole sections)
# paler than 95 % of the annotated cells: chosen on the Nissl development images (3 seeds),
# +0.011 [+0.007, +0.015] F1@0.5 on the test split after (docs/results.md)
FAINT_PERCENTILE = 5.0


@dataclass(frozen=True)
class FaintCut:
    percentile: float
    dark: bool        # objects darker than their background (bright-field stains)
    cut: float        # detections with a mean signal below this are dropped
    n_objects: int    # annotated objects it was measured on

    def signal(self, image: np.ndarray) -> np.ndarray:
        """(H, W) signal of a content-normalised (H, W[, C]) image in [0, 1]."""
        return _signal(image, self.dark)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _gray(image: np.ndarray) -> np.ndarray:
    x = np.asarray(image, np.float32)
    return x.mean(axis=-1) if x.ndim == 3 else x


def _signal(image: np.ndarray, dark: bool) -> np.ndarray:
    gray = _gray(image)
    return 1.0 - gray if dark else gray


def calibrate_faint(items: Sequence[tuple[np.ndarray, np.ndarray]],
                    percentile: float) -> FaintCut | None:
    """The cut of ``items`` ((content-normalised image, instance labels) pairs), or None
    where they hold no annotated object. Dark or bright objects: whichever their mean is
    against the unlabelled pixels, over all images."""
    if not 0 < percentile < 100:
        raise ConfigError(f"the faint percentile must be in (0, 100), got {percentile}")
    inside = outside = 0.0
    n_in = n_out = 0
    for image, labels in items:
        gray, mask = _gray(image), np.asarray(labels) > 0
        inside += float(gray[mask].sum())
        outside += float(gray[~mask].sum())
        n_in, n_out = n_in + int(mask.sum()), n_out + int((~mask).sum())
    if n_in == 0:
        return None
    dark = n_out == 0 or inside / n_in < outside / n_out
    means: list[float] = []
    for image, labels in items:
        labels = np.asarray(labels)
        ids = np.unique(labels[labels > 0])
        means += list(ndimage.mean(_signal(image, dark), labels, ids))
    return FaintCut(float(percentile), bool(dark), float(np.percentile(means, percentile)),
                    len(means))


def proposal_signals(contours: np.ndarray, shape: tuple[int, int],
                     read: Callable[[slice, slice], np.ndarray], cut: FaintCut,
                     block: int = BLOCK) -> np.ndarray:
    """Mean signal inside each contour ((K, S, 2) as (x, y) in image pixels), the image read
    as ``read(ys, xs)`` -> content-normalised window. Contours are measured in windows
    grouped by where their bounding box starts, so a whole section is read once, window by
    window, never whole. A contour with no pixel centre inside keeps the pixel under its
    mean point."""
    from skimage.draw import polygon

    out = np.zeros(len(contours), np.float64)
    if len(contours) == 0:
        return out
    h, w = shape
    lo = np.floor(contours.min(axis=1)).astype(np.int64)    # (K, 2): x0, y0
    hi = np.ceil(contours.max(axis=1)).astype(np.int64) + 1
    lo = np.clip(lo, 0, [w - 1, h - 1])
    hi = np.clip(hi, lo + 1, [w, h])
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for k, (x0, y0) in enumerate(lo):
        groups[(int(y0) // block, int(x0) // block)].append(k)
    for members in groups.values():
        idx = np.asarray(members)
        y0, x0 = int(lo[idx, 1].min()), int(lo[idx, 0].min())
        y1, x1 = int(hi[idx, 1].max()), int(hi[idx, 0].max())
        window = cut.signal(read(slice(y0, y1), slice(x0, x1)))
        for k in members:
            c = contours[k]
            rr, cc = polygon(c[:, 1] - y0, c[:, 0] - x0, shape=window.shape)
            if len(rr):
                out[k] = float(window[rr, cc].mean())
            else:
                cy, cx = c[:, 1].mean() - y0, c[:, 0].mean() - x0
                out[k] = float(window[int(np.clip(round(cy), 0, window.shape[0] - 1)),
                                      int(np.clip(round(cx), 0, window.shape[1] - 1))])
    return out


def drop_faint(contours: np.ndarray, scores: np.ndarray, shape: tuple[int, int],
               read: Callable[[slice, slice], np.ndarray], cut: FaintCut,
               score_thresh: float) -> tuple[np.ndarray, int]:
    """``scores`` with every proposal that would be painted (score >= ``score_thresh``) but
    is fainter than ``cut`` set to -1 (never painted), and how many were."""
    scores = np.asarray(scores).copy()
    painted = np.flatnonzero(scores >= score_thresh)
    signals = proposal_signals(np.asarray(contours)[painted], shape, read, cut)
    faint = painted[signals < cut.cut]
    scores[faint] = -1.0
    return scores, len(faint)
