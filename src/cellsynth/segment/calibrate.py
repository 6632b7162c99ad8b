"""A label-free score threshold for zero-label detectors.

A detector trained on synthetic images picks its score threshold on held-out synthetic
images, where it scores near 1 on every cell; on real tissue it then also outlines what the
simulation never showed it (H&E cell bodies, neuropil) and finds 1.4-2x as many objects as
there are cells. `cellsynth fit-simulator`'s estimator counts cells on unlabeled images
(multi-scale LoG and watershed; -8 % to -19 % against the annotations of two H&E sets).
:func:`count_threshold` takes as threshold the score of the cell whose rank, over the
detector's proposals on the same unlabeled images, equals that count. On the H&E test
splits this raised F1@0.5 by +0.04 to +0.14 over the synthetic threshold (docs/results.md).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

__all__ = ["count_threshold", "threshold_for_count"]

FLOOR = 0.5  # proposals below this score are never kept


def threshold_for_count(scores: list[np.ndarray], expected: float, floor: float = FLOOR
                        ) -> float:
    """The score of the ``expected``-th best proposal over all images (scores bunch up near
    1, so no grid is fine enough); ``floor`` if there are fewer proposals than that."""
    everything = np.sort(np.concatenate([np.ravel(s) for s in scores] or [np.zeros(0)]))[::-1]
    n = int(round(expected))
    if n < 1:
        return float(everything[0]) if everything.size else floor
    if n > everything.size:
        return floor
    return max(float(everything[n - 1]), floor)


def count_threshold(run: str | os.PathLike, images: str | os.PathLike, base: Any, *,
                    pixel_size_um: float | None = None, device: str = "cpu",
                    progress: bool = False) -> dict[str, Any]:
    """The score threshold at which the detector of ``run`` finds as many cells on the
    unlabeled ``images`` as the estimator does (``base``: the simulator config or preset
    whose colour model and cell sizes the estimator uses). Returns the threshold, the
    estimated count and the detector's counts at its own and at the new threshold."""
    from tqdm.auto import tqdm

    from cellsynth.io.images import select_channel
    from cellsynth.io.normalize import intensity_range
    from cellsynth.segment.predict import _channel, image_proposals, load_detector
    from cellsynth.simulate.fit import count_cells

    detector = load_detector(run, device=device)
    # the channel predict would take (the detector's, or the one its training images were
    # taken from): counted and scored on the same pixels; a gray image is that channel
    channel = _channel(detector, None)
    px, counted = count_cells(images, base, pixel_size_um=pixel_size_um, channel=channel)
    scores = []
    ranges: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for name, raw, _, source in tqdm(counted, desc="count-threshold", unit="image",
                                     disable=not progress):
        value_range = None
        if source is not raw:  # a window of a section: scaled as predict scales the section
            if id(source) not in ranges:
                ranges[id(source)] = intensity_range(
                    source if channel is not None else select_channel(source, None, where=name),
                    detector.normalization, where=name)
            value_range = ranges[id(source)]
        # (the channel is chosen already: a gray window is taken as it is)
        _, found, _ = image_proposals(detector, raw, score_thresh=FLOOR, device=device,
                                      where=name, pixel_size_um=px, value_range=value_range,
                                      channel=0 if channel is not None and raw.ndim == 2
                                      else None)
        scores.append(np.asarray(found, dtype=np.float64))
    expected = float(sum(n for _, _, n, _ in counted))
    thresh = threshold_for_count(scores, expected)
    total = lambda t: int(sum((s >= t).sum() for s in scores))  # noqa: E731
    return {"score_thresh": thresh, "own_score_thresh": float(detector.score_thresh),
            "estimated_count": int(expected), "count_at_own": total(detector.score_thresh),
            "count_at_threshold": total(thresh), "n_images": len(counted),
            "pixel_size_um": px}
