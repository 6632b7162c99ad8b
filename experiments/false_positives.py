"""What the recipe's false positives are, next to the fine-tuned Cellpose peer's (V1), on the
Nissl development images (the 2 training images the recipe does not annotate; never the test
split).

The twenty-second session found that the recipe misses as many somata there as the peer
(72-73 against 74) but makes 41-63 false positives against the peer's 33: precision, not
recall, separates them. A false positive is a detection that matches no soma at IoU >= 0.5;
each is put in one kind by the annotated somata it touches (IoU > 0.1):

- ``merge``: two or more (one outline over several somata; the merged misses' detections),
- ``fragment``: one soma that another detection matches (a second outline on a found soma),
- ``outline``: one soma that nothing matches (a poor outline of a real soma),
- ``unannotated``: none; split into ``near`` (it overlaps a soma a little, IoU <= 0.1) and
  ``isolated``. Their area and mean stain are given as percentiles of the annotated somata's
  (the stain as the faint cut measures it), so "small and pale" reads as a number.

With --gallery, crops of the first run's unannotated false positives, and beside them
(``*_small_somata.jpg``) the annotated somata of <= 250 px: what the annotators call small.

    python experiments/false_positives.py \\
        --detectors /work/exp/recipe-t1-s0 /work/exp/recipe-s1 /work/exp/recipe-s2 \\
        --peer PEER/v1/train/predict/labels --cache /work/exp/core_cache \\
        --gallery docs/results/nissl_false_positives/gallery.jpg \\
        --json docs/results/nissl_false_positives/results.json

(--detectors names recipe run folders, predicted as the recipe predicts: soup, 8-view TTA,
the faint cut, NMS 0.5; the cache of experiments/recipe_dev_compare.py is reused.) The peer's
development predictions are read from --peer (TIFFs named as the dataset's images, as
experiments/peer_cellpose.py writes them: its predict/labels/ folder).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from _nissl_dev_set import (
    DEV,
    arguments,
    dev_items,
    recipe_faint_cut,
    recipe_run_predictions,
    summary,
    write,
)

from cellsynth.evaluate.matching import _overlaps
from cellsynth.io.normalize import normalize

KINDS = ("merge", "fragment", "outline", "near", "isolated")


def _ids(labels: np.ndarray) -> np.ndarray:
    return np.unique(labels[labels > 0])


def classify(gt: np.ndarray, pred: np.ndarray) -> dict[int, str]:
    """Each false positive of ``pred`` (by its label) and its kind (see the docstring)."""
    gi, pi, iou, _, _ = _overlaps(gt, pred)
    gids, pids = _ids(gt), _ids(pred)
    matched_p = set(pids[pi[iou >= 0.5] - 1].tolist())
    matched_g = set(gids[gi[iou >= 0.5] - 1].tolist())
    kinds = {}
    for p in set(pids.tolist()) - matched_p:
        k = np.searchsorted(pids, p) + 1
        mine = pi == k
        touched = gids[gi[mine & (iou > 0.1)] - 1]
        if len(touched) >= 2:
            kinds[p] = "merge"
        elif len(touched) == 1:
            kinds[p] = "fragment" if int(touched[0]) in matched_g else "outline"
        else:
            kinds[p] = "near" if mine.any() else "isolated"
    return kinds


def _object_stats(labels: np.ndarray, signal: np.ndarray) -> dict[int, tuple[int, float]]:
    """(area in px, mean signal) of every object."""
    from scipy import ndimage

    ids = _ids(labels)
    area = ndimage.sum_labels(np.ones_like(signal), labels, ids)
    mean = ndimage.mean(signal, labels, ids)
    return {int(i): (int(a), float(m)) for i, a, m in zip(ids, area, mean)}


def describe(items, preds, cut) -> dict:
    """Counts by kind, and the unannotated ones' area and stain as percentiles of the
    annotated somata's (pooled over the images)."""
    counts = dict.fromkeys(KINDS, 0)
    gt_area, gt_sig, fp_area, fp_sig, where = [], [], [], [], []
    for k, ((image, gt), pred) in enumerate(zip(items, preds)):
        signal = cut.signal(normalize(image, where=None))
        g = _object_stats(gt, signal)
        gt_area += [a for a, _ in g.values()]
        gt_sig += [s for _, s in g.values()]
        stats = _object_stats(pred, signal)
        for p, kind in classify(gt, pred).items():
            counts[kind] += 1
            if kind in ("near", "isolated"):
                fp_area.append(stats[p][0])
                fp_sig.append(stats[p][1])
                where.append((k, p, kind))
    ga, gs = np.sort(gt_area), np.sort(gt_sig)

    def pct(sorted_ref: np.ndarray, values: list) -> list[float]:
        return [round(100.0 * np.searchsorted(sorted_ref, v) / len(sorted_ref), 1)
                for v in values]

    area_pct, sig_pct = pct(ga, fp_area), pct(gs, fp_sig)
    unann = len(fp_area)
    return {"false_positives": int(sum(counts.values())), "kinds": counts,
            "unannotated": {
                "n": unann,
                "area_px_median": float(np.median(fp_area)) if unann else None,
                "area_percentile_median": float(np.median(area_pct)) if unann else None,
                "smaller_than_5pct_of_somata": int(sum(a < 5 for a in area_pct)),
                "stain_percentile_median": float(np.median(sig_pct)) if unann else None,
                "paler_than_25pct_of_somata": int(sum(s < 25 for s in sig_pct)),
                "darker_than_median_soma": int(sum(s > 50 for s in sig_pct))},
            "somata_area_px_median": float(np.median(ga)),
            "_where": where}


def gallery(items, preds, where, path: Path, n: int = 48, side: int = 48) -> None:
    """Crops centred on unannotated false positives: the detection outlined magenta, the
    annotated somata green; `near` ones first."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from skimage.segmentation import find_boundaries

    chosen = sorted(where, key=lambda w: w[2] != "near")[:n]
    cols = 8
    rows = max(1, int(np.ceil(len(chosen) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.7))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, (k, p, kind) in zip(np.ravel(axes), chosen):
        image, gt = items[k]
        pred = preds[k]
        ys, xs = np.nonzero(pred == p)
        cy, cx = int(ys.mean()), int(xs.mean())
        y0 = int(np.clip(cy - side // 2, 0, image.shape[0] - side))
        x0 = int(np.clip(cx - side // 2, 0, image.shape[1] - side))
        win = (slice(y0, y0 + side), slice(x0, x0 + side))
        rgb = image[win].astype(np.float32)
        rgb = rgb / max(float(rgb.max()), 1.0) if rgb.max() > 1 else rgb
        if rgb.ndim == 2:
            rgb = np.stack([rgb] * 3, -1)
        rgb = rgb.copy()
        rgb[find_boundaries(gt[win], mode="inner")] = (0.0, 0.8, 0.0)
        rgb[find_boundaries(pred[win] == p, mode="inner")] = (1.0, 0.0, 1.0)
        ax.imshow(rgb)
        ax.set_title(f"{kind} {len(ys)}px", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80, **({"pil_kwargs": {"quality": 80}} if path.suffix == ".jpg" else {}))
    plt.close(fig)


def small_somata_gallery(items, path: Path, max_area: int = 250, n: int = 40,
                         side: int = 48) -> int:
    """Crops centred on the annotated somata of at most ``max_area`` px (outlined orange,
    the other somata green): what the annotators call a small soma. Returns their number."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import ndimage
    from skimage.segmentation import find_boundaries

    chosen = []
    for k, (_, gt) in enumerate(items):
        ids = _ids(gt)
        areas = ndimage.sum_labels(np.ones(gt.shape), gt, ids)
        chosen += [(k, int(i), int(a)) for i, a in zip(ids, areas) if a <= max_area]
    cols = 8
    rows = max(1, int(np.ceil(min(n, len(chosen)) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.6, rows * 1.7))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, (k, i, a) in zip(np.ravel(axes), chosen[:n]):
        image, gt = items[k]
        ys, xs = np.nonzero(gt == i)
        y0 = int(np.clip(int(ys.mean()) - side // 2, 0, image.shape[0] - side))
        x0 = int(np.clip(int(xs.mean()) - side // 2, 0, image.shape[1] - side))
        win = (slice(y0, y0 + side), slice(x0, x0 + side))
        rgb = image[win].astype(np.float32)
        rgb = (rgb / 255.0 if rgb.max() > 1 else rgb).copy()
        if rgb.ndim == 2:
            rgb = np.stack([rgb] * 3, -1)
        rgb[find_boundaries(gt[win], mode="inner")] = (0.0, 0.8, 0.0)
        rgb[find_boundaries(gt[win] == i, mode="inner")] = (1.0, 0.6, 0.0)
        ax.imshow(rgb)
        ax.set_title(f"{a}px", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80, **({"pil_kwargs": {"quality": 80}} if path.suffix == ".jpg" else {}))
    plt.close(fig)
    return len(chosen)


def main() -> None:
    args = arguments(__doc__, extra=lambda ap: (
        ap.add_argument("--peer", type=Path, required=True),
        ap.add_argument("--cache", type=Path, default=Path("runs/recipe-dev-cache")),
        ap.add_argument("--gallery", type=Path)))
    items = dev_items(args.data)
    cut = recipe_faint_cut(args.data)
    peer = [tifffile.imread(next(args.peer.glob(f"{stem}*.tif"))) for stem in DEV]
    out = summary(items)
    if args.gallery is not None:
        small = args.gallery.with_name(args.gallery.stem + "_small_somata" + args.gallery.suffix)
        out["annotated_somata_up_to_250px"] = small_somata_gallery(items, small)
    peer_d = describe(items, peer, cut)
    peer_d.pop("_where")
    out["peer_v1"] = peer_d
    print(f"peer: {peer_d['false_positives']} {peer_d['kinds']} {peer_d['unannotated']}")
    for name in args.detectors:
        preds = recipe_run_predictions(name, items, cut, args.cache)
        d = describe(items, preds, cut)
        where = d.pop("_where")
        out["detectors"][name] = d
        print(f"{name}: {d['false_positives']} {d['kinds']} {d['unannotated']}", flush=True)
        if args.gallery is not None and name == args.detectors[0]:
            gallery(items, preds, where, args.gallery)
    write(args.json, out)


if __name__ == "__main__":
    main()
