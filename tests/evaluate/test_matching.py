"""IoU matching and the derived metrics, on hand-made label maps with answers worked out here,
and on random label maps against a slow reference (boolean masks + exhaustive search)."""

import itertools

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from cellsynth.evaluate import THRESHOLDS, Matching, aggregate, matching

T = np.array(THRESHOLDS)


def square(shape, y, x, h, w, value, labels=None):
    labels = np.zeros(shape, np.uint16) if labels is None else labels
    labels[y:y + h, x:x + w] = value
    return labels


def test_thresholds_are_exact_decimals():
    assert THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)


def test_perfect_match_with_permuted_ids():
    gt = square((40, 40), 2, 2, 10, 10, 1)
    square(gt.shape, 20, 5, 8, 12, 2, gt)
    square(gt.shape, 25, 25, 5, 5, 3, gt)
    pred = np.choose(gt, [0, 7, 3, 100]).astype(np.uint16)
    m = matching(gt, pred)
    assert (m.n_gt, m.n_pred, m.tp, m.fp, m.fn) == (3, 3, (3,) * 9, (0,) * 9, (0,) * 9)
    for values in (m.precision, m.recall, m.f1, m.ap, m.mean_iou, m.pq):
        np.testing.assert_array_equal(values, 1.0)
    assert m.f1_avg == 1.0


def test_shifted_object_has_known_iou():
    # 10x10 square shifted by 2 columns: intersection 10*8 = 80, union 120, IoU = 2/3
    gt = square((20, 20), 5, 2, 10, 10, 1)
    pred = square((20, 20), 5, 4, 10, 10, 1)
    m = matching(gt, pred)
    matched = T <= 2 / 3  # 0.5 .. 0.65 match, 0.7 .. 0.9 do not
    np.testing.assert_array_equal(m.tp, matched.astype(int))
    np.testing.assert_array_equal(m.fp, (~matched).astype(int))
    np.testing.assert_array_equal(m.fn, (~matched).astype(int))
    np.testing.assert_allclose(m.sum_iou, np.where(matched, 2 / 3, 0.0))
    np.testing.assert_allclose(m.mean_iou, np.where(matched, 2 / 3, 0.0))
    np.testing.assert_allclose(m.pq, np.where(matched, 2 / 3, 0.0))  # TP=1, FP=FN=0
    np.testing.assert_array_equal(m.f1, matched.astype(float))
    assert m.f1_avg == pytest.approx(4 / 9)


def test_iou_exactly_at_threshold_counts_as_match():
    # 20 px gt, 11 px overlap, 0 extra pred px: IoU = 11/20 = 0.55 exactly
    gt = square((1, 20), 0, 0, 1, 20, 1)
    pred = square((1, 20), 0, 0, 1, 11, 1)
    m = matching(gt, pred)
    np.testing.assert_array_equal(m.tp, [1, 1, 0, 0, 0, 0, 0, 0, 0])


def test_split_object_into_two_halves():
    # gt 10x20; pred halves 10x10 each: both IoU 100/200 = 0.5, only one may match at 0.5
    gt = square((12, 22), 1, 1, 10, 20, 5)
    pred = square((12, 22), 1, 1, 10, 10, 4)
    square(pred.shape, 1, 11, 10, 10, 9, pred)
    m = matching(gt, pred)
    assert (m.n_gt, m.n_pred) == (1, 2)
    assert m.tp == (1,) + (0,) * 8
    assert m.fp == (1,) + (2,) * 8 and m.fn == (0,) + (1,) * 8
    assert m.precision[0] == 0.5 and m.recall[0] == 1.0
    assert m.f1[0] == pytest.approx(2 / 3) and m.ap[0] == pytest.approx(1 / 2)
    assert m.mean_iou[0] == 0.5
    assert m.pq[0] == pytest.approx(0.5 / (1 + 1 / 2 + 0 / 2))
    np.testing.assert_array_equal(m.f1[1:], 0.0)


def test_unequal_split_matches_the_larger_part():
    # gt 10x20; pred parts 10x12 (IoU 0.6) and 10x8 (IoU 0.4)
    gt = square((12, 22), 1, 1, 10, 20, 1)
    pred = square((12, 22), 1, 1, 10, 12, 1)
    square(pred.shape, 1, 13, 10, 8, 2, pred)
    m = matching(gt, pred)
    np.testing.assert_array_equal(m.tp, (T <= 0.6).astype(int))
    np.testing.assert_allclose(m.mean_iou, np.where(T <= 0.6, 0.6, 0.0))
    np.testing.assert_allclose(m.f1, np.where(T <= 0.6, 2 / 3, 0.0))


def test_merged_objects():
    # two adjacent 10x10 gt objects, one 10x20 prediction: IoU 0.5 with each
    gt = square((12, 22), 1, 1, 10, 10, 1)
    square(gt.shape, 1, 11, 10, 10, 2, gt)
    pred = square((12, 22), 1, 1, 10, 20, 3)
    m = matching(gt, pred)
    assert m.tp[0] == 1 and m.fp[0] == 0 and m.fn[0] == 1
    assert m.precision[0] == 1.0 and m.recall[0] == 0.5
    assert m.tp[1:] == (0,) * 8
    # three gt objects merged into one prediction: IoU 1/3 each, nothing matches at >= 0.5
    gt3 = np.zeros((10, 30), np.uint16)
    gt3[:, :10], gt3[:, 10:20], gt3[:, 20:] = 1, 2, 3
    m3 = matching(gt3, (gt3 > 0).astype(np.uint16))
    assert m3.tp == (0,) * 9 and m3.fp == (1,) * 9 and m3.fn == (3,) * 9
    assert matching(gt3, (gt3 > 0).astype(np.uint16), [0.3]).tp == (1,)


def test_optimal_not_greedy_matching():
    # 1-row image. gt A=[0,3), B=[3,12); pred X=[0,8), Y=[8,11).
    # IoU(A,X) = 3/8, IoU(B,X) = 5/12, IoU(B,Y) = 3/9. Greedy (highest IoU first) takes B-X and
    # stops at 1 match; the optimal matching at 0.3 is A-X + B-Y (2 matches).
    gt = np.array([[1] * 3 + [2] * 9])
    pred = np.array([[1] * 8 + [2] * 3 + [0]])
    m = matching(gt, pred, [0.3, 0.35, 0.4, 0.45])
    assert m.tp == (2, 1, 1, 0)
    # at 0.35 and 0.4 one match is possible: the optimal one has the larger IoU (B-X, 5/12)
    np.testing.assert_allclose(m.sum_iou, [3 / 8 + 3 / 9, 5 / 12, 5 / 12, 0.0])


def test_empty_prediction():
    gt = square((20, 20), 1, 1, 5, 5, 1)
    square(gt.shape, 10, 10, 5, 5, 2, gt)
    m = matching(gt, np.zeros_like(gt))
    assert m.tp == (0,) * 9 and m.fp == (0,) * 9 and m.fn == (2,) * 9
    for values in (m.precision, m.recall, m.f1, m.ap, m.mean_iou, m.pq):
        np.testing.assert_array_equal(values, 0.0)  # precision 0/0 is defined as 0


def test_empty_ground_truth():
    pred = square((20, 20), 1, 1, 5, 5, 3)
    m = matching(np.zeros_like(pred), pred)
    assert (m.n_gt, m.n_pred) == (0, 1) and m.fp == (1,) * 9 and m.fn == (0,) * 9
    for values in (m.precision, m.recall, m.f1, m.ap, m.mean_iou, m.pq):
        np.testing.assert_array_equal(values, 0.0)


def test_both_empty_is_perfect():
    m = matching(np.zeros((8, 8), np.uint16), np.zeros((8, 8), np.uint32))
    assert (m.n_gt, m.n_pred) == (0, 0)
    for values in (m.precision, m.recall, m.f1, m.ap, m.mean_iou, m.pq):
        np.testing.assert_array_equal(values, 1.0)


@pytest.mark.parametrize("big_id", [3, 60_000, 2**40])  # lookup-table and np.unique paths
def test_non_contiguous_ids(big_id):
    gt = np.zeros((30, 30), np.uint64)
    gt[0:10, 0:10], gt[12:20, 0:10], gt[0:10, 15:25] = 3, 1000, big_id + 5000
    pred = np.zeros_like(gt)
    pred[0:10, 0:10] = big_id  # identical
    pred[12:20, 0:10] = 7  # identical
    pred[0:10, 17:27] = 2**41  # shifted by 2 of 10 columns: IoU 80/120
    m = matching(gt, pred)
    assert (m.n_gt, m.n_pred) == (3, 3)
    np.testing.assert_array_equal(m.tp, np.where(T <= 2 / 3, 3, 2))
    np.testing.assert_allclose(m.sum_iou, np.where(T <= 2 / 3, 2 + 2 / 3, 2.0))


def test_dataset_aggregation_sums_counts_before_ratios():
    gt = square((20, 20), 1, 1, 5, 5, 1)
    square(gt.shape, 10, 10, 5, 5, 2, gt)
    square(gt.shape, 1, 10, 5, 5, 3, gt)
    perfect = matching(gt, gt)
    missed = matching(gt[:, :9], np.zeros_like(gt[:, :9]))  # 1 gt object (id 1), no prediction
    total = aggregate([perfect, missed])
    assert (total.n_images, total.n_gt, total.n_pred) == (2, 4, 3)
    assert total.tp == (3,) * 9 and total.fn == (1,) * 9 and total.fp == (0,) * 9
    np.testing.assert_allclose(total.f1, 6 / 7)  # not the mean of per-image F1 (1 and 0)
    np.testing.assert_allclose(total.recall, 3 / 4)
    assert total.to_dict()["f1_avg"] == pytest.approx(6 / 7)


def test_to_dict_has_stable_keys():
    d = matching(square((8, 8), 1, 1, 3, 3, 1), square((8, 8), 1, 1, 3, 3, 2)).to_dict()
    for key in ("thresholds", "f1", "precision", "recall", "ap", "pq", "mean_iou", "f1_avg",
                "n_images", "n_gt", "n_pred", "tp", "fp", "fn"):
        assert key in d
    assert d["thresholds"] == list(THRESHOLDS) and len(d["f1"]) == 9


@pytest.mark.parametrize(("gt", "pred", "message"), [
    (np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8), "same shape"),
    (np.zeros((4, 4), np.float32), np.zeros((4, 4), np.uint8), "integer"),
    (np.zeros((4, 4), bool), np.zeros((4, 4), np.uint8), "integer"),
    (np.zeros((4, 4), np.uint8), np.full((4, 4), -1, np.int32), "non-negative"),
])
def test_invalid_labels_raise(gt, pred, message):
    with pytest.raises(ValueError, match=message):
        matching(gt, pred)


@pytest.mark.parametrize("thresholds", [[0.0], [1.5], []])
def test_invalid_thresholds_raise(thresholds):
    with pytest.raises(ValueError, match="threshold"):
        matching(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), thresholds)


def test_adding_results_with_other_thresholds_raises():
    a = matching(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), [0.5])
    with pytest.raises(ValueError, match="thresholds"):
        a + matching(np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8), [0.6])
    with pytest.raises(ValueError, match="tp"):
        Matching(thresholds=(0.5,), n_gt=1, n_pred=0, tp=(1,), sum_iou=(1.0,))


# --- randomized, against a slow and obviously correct reference ------------------------------

def reference_iou(gt, pred):
    gt_ids, pred_ids = np.unique(gt[gt > 0]), np.unique(pred[pred > 0])
    iou = np.zeros((gt_ids.size, pred_ids.size))
    for i, g in enumerate(gt_ids):
        for j, p in enumerate(pred_ids):
            iou[i, j] = np.sum((gt == g) & (pred == p)) / np.sum((gt == g) | (pred == p))
    return iou


def reference_matching(iou, threshold):
    """Exhaustive search: the matching with most pairs, then largest IoU sum."""
    best = (0, 0.0)
    n_gt, n_pred = iou.shape
    for k in range(min(n_gt, n_pred), 0, -1):
        for rows in itertools.combinations(range(n_gt), k):
            for cols in itertools.permutations(range(n_pred), k):
                values = iou[rows, cols]
                if np.all(values >= threshold) and (k, values.sum()) > best:
                    best = (k, values.sum())
        if best[0]:
            return best
    return best


def random_labels(rng, shape, n):
    labels = np.zeros(shape, np.uint32)
    ids = rng.choice(10_000, size=n, replace=False) + 1
    for i in ids:
        y, x = rng.integers(0, shape[0] - 2), rng.integers(0, shape[1] - 2)
        h, w = rng.integers(2, 8, size=2)
        labels[y:y + h, x:x + w] = i
    return labels


def test_random_small_cases_match_exhaustive_reference():
    rng = np.random.default_rng(0)
    thresholds = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.75, 0.9]
    for _ in range(150):
        gt = random_labels(rng, (14, 14), int(rng.integers(0, 6)))
        if rng.random() < 0.5:  # a perturbed copy: many high-IoU pairs
            pred = np.roll(gt, tuple(rng.integers(-1, 2, size=2)), axis=(0, 1))
            pred = np.where(rng.random(gt.shape) < 0.1, 0, pred)
        else:
            pred = random_labels(rng, (14, 14), int(rng.integers(0, 6)))
        iou = reference_iou(gt, pred)
        m = matching(gt, pred, thresholds)
        assert (m.n_gt, m.n_pred) == iou.shape
        for t, tp, sum_iou in zip(thresholds, m.tp, m.sum_iou, strict=True):
            ref_tp, ref_sum = reference_matching(iou, t)
            assert tp == ref_tp
            assert sum_iou == pytest.approx(ref_sum, abs=1e-12)


def test_random_large_case_matches_dense_hungarian():
    # many objects: compare with one dense assignment on the full IoU matrix (no sparsity,
    # no decomposition into components)
    rng = np.random.default_rng(1)
    gt = random_labels(rng, (64, 64), 120)
    pred = np.roll(gt, (1, 0), axis=(0, 1)).copy()
    pred[rng.random(gt.shape) < 0.05] = 0
    pred = np.maximum(pred, random_labels(rng, (64, 64), 60) * (pred == 0))
    iou = reference_iou(gt, pred)
    thresholds = [0.1, 0.25, 0.4, 0.5, 0.7, 0.9]
    m = matching(gt, pred, thresholds)
    n = min(iou.shape)
    for t, tp, sum_iou in zip(thresholds, m.tp, m.sum_iou, strict=True):
        candidate = iou >= t
        rows, cols = linear_sum_assignment(-(candidate * (1 + iou / (2 * n))))
        ok = candidate[rows, cols]
        assert tp == ok.sum()
        assert sum_iou == pytest.approx(iou[rows, cols][ok].sum(), abs=1e-9)


def test_matching_by_score_equals_painting_at_each_threshold():
    from cellsynth.evaluate import matching_by_score
    from cellsynth.segment.tiles import contours_to_labels

    rng = np.random.default_rng(3)
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    ring = np.stack([np.cos(angles), np.sin(angles)], -1)
    truths, painted, proposals = [], [], []
    for _ in range(2):  # two images; overlapping proposals, so the painting order matters
        centres = rng.uniform(5, 75, (30, 2))
        truth = contours_to_labels(centres[:, None] + 6 * ring, np.ones(30), (80, 80))
        moved = centres + rng.normal(0, 2, centres.shape)
        contours = moved[:, None] + rng.uniform(4, 8, (30, 1, 1)) * ring
        scores = rng.uniform(0.3, 1.0, 30)
        truths.append(truth)
        proposals.append((contours, scores))
        painted.append(contours_to_labels(contours, scores, (80, 80), score_thresh=0.3,
                                          return_scores=True))
    grid = (0.3, 0.5, 0.7, 0.9)
    fast = matching_by_score(truths, painted, grid)
    for t, result in zip(grid, fast):
        slow = aggregate(matching(truth, contours_to_labels(c, s, (80, 80), score_thresh=t))
                         for truth, (c, s) in zip(truths, proposals))
        assert result.n_pred == slow.n_pred and result.tp == slow.tp
        np.testing.assert_allclose(result.sum_iou, slow.sum_iou)
    assert fast[0].n_pred > fast[-1].n_pred  # the thresholds did drop cells
    with pytest.raises(ValueError, match="2 truths but 1 predictions"):
        matching_by_score(truths, painted[:1], grid)


def test_tiles_attribute_whole_cells_and_sum_to_the_whole_image():
    """Cutting the label maps into tiles cut a cell on a border into two pieces, each
    matched apart (a sliver of a well-found cell could miss IoU 0.5: a false negative and a
    false positive from one correct cell). Units now come from the whole image's matching,
    each cell in the tile of its centroid; they sum to the whole image's result."""
    from cellsynth.evaluate import matching_tiles
    from cellsynth.evaluate.stats import split_tiles

    gt = np.zeros((40, 40), np.uint16)
    gt[16:24, 5:15] = 1      # across the row border at 20: centroid row 19.5, upper tile
    gt[2:8, 25:31] = 2       # upper right
    gt[30:36, 30:36] = 3     # lower right, missed
    pred = np.zeros_like(gt)
    pred[17:25, 5:15] = 7    # cell 1 shifted down by a row: IoU 7 / 9 rows
    pred[2:8, 25:31] = 8
    pred[30:36, 2:8] = 9     # lower left, a false positive
    whole = matching(gt, pred)
    units = matching_tiles(gt, pred, 2)
    assert len(units) == 4
    assert aggregate(units).tp == whole.tp and aggregate(units).n_pred == whole.n_pred
    assert aggregate(units).n_gt == whole.n_gt
    np.testing.assert_allclose(aggregate(units).sum_iou, whole.sum_iou)
    # upper left: cell 1 and its match (the prediction's centroid is below the border,
    # it goes with its match); upper right: cell 2; lower left: the false positive;
    # lower right: the missed cell
    assert [(u.n_gt, u.n_pred, u.tp[0]) for u in units] == [(1, 1, 1), (1, 1, 1), (0, 1, 0),
                                                            (1, 0, 0)]
    assert units[0].tp[T.tolist().index(0.75)] == 1 and units[0].tp[-1] == 0  # IoU 0.78
    # the old way: cell 1's two pieces scored apart (the lower piece, 4 rows of truth
    # against 5 of prediction, still matches; here the count of objects grows)
    cut = aggregate([matching(t, p) for t, p in zip(split_tiles(gt, 2), split_tiles(pred, 2))])
    assert cut.n_gt == whole.n_gt + 1
    # one tile is the whole image
    assert matching_tiles(gt, pred, 1)[0] == whole


@pytest.mark.parametrize("seed", range(5))
def test_tile_units_of_random_label_maps_sum_to_the_whole_image(seed):
    from scipy import ndimage as ndi

    from cellsynth.evaluate import matching_tiles

    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.random((97, 83)), 3)
    gt, _ = ndi.label(field > np.percentile(field, 70))
    pred, _ = ndi.label(np.roll(field, (1, 2), axis=(0, 1)) > np.percentile(field, 72))
    whole = matching(gt, pred)
    for tiles in (1, 2, 3, 4):
        units = matching_tiles(gt, pred, tiles)
        total = aggregate(units)
        assert len(units) == tiles * tiles
        assert (total.n_gt, total.n_pred, total.tp) == (whole.n_gt, whole.n_pred, whole.tp)
        np.testing.assert_allclose(total.sum_iou, whole.sum_iou)
