"""Test-time augmentation: 8 views read, mapped back and merged (no model needed)."""

import numpy as np
import pytest

from cellsynth.segment.tiles import contours_to_labels, tiled_proposals
from cellsynth.segment.tta import VIEWS, Dihedral, merge_views, to_image_coordinates
from tests.segment.test_tiles import _disks, _oracle


def _transformed(a, view):
    transpose, flip_y, flip_x = view
    b = np.swapaxes(a, 0, 1) if transpose else a
    if flip_y:
        b = b[::-1]
    if flip_x:
        b = b[:, ::-1]
    return b


@pytest.mark.parametrize("view", VIEWS)
def test_a_view_reads_the_windows_of_the_transformed_image(view):
    a = np.random.default_rng(0).random((37, 52, 3))
    d = Dihedral(a, view)
    full = _transformed(a, view)
    assert d.shape == full.shape
    for ys, xs in ((slice(0, 10), slice(5, 30)), (slice(20, None), slice(None, 7)),
                   (slice(None), slice(None))):
        np.testing.assert_array_equal(d[ys, xs], full[ys, xs])


@pytest.mark.parametrize("view", VIEWS)
def test_proposals_of_a_view_map_back_onto_the_cells(view):
    labels = _disks((90, 130), 12, 8.5, seed=2)
    image = labels[..., None].astype(np.float32)
    base = contours_to_labels(*tiled_proposals(image, _oracle(labels), tile=64, overlap=24),
                              labels.shape)
    c, s = tiled_proposals(Dihedral(image, view), _oracle(labels), tile=64, overlap=24)
    # the oracle reads cell ids from the view's pixels, so each proposal knows its cell
    back = contours_to_labels(to_image_coordinates(c, view, labels.shape), s, labels.shape)
    np.testing.assert_array_equal(back > 0, base > 0)
    assert (back > 0).sum() > 0.9 * (labels > 0).sum()


def _circle(cx, cy, r, n=48):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=-1).astype(np.float32)


def test_views_vote_on_scores_and_outlines():
    steady, shaky = (30.0, 30.0), (80.0, 40.0)
    views = []
    for v in range(8):
        contours, scores = [_circle(*steady, 10 + (v - 3.5) * 0.2)], [0.9]
        if v < 2:  # found in 2 of 8 views only
            contours.append(_circle(*shaky, 8))
            scores.append(1.0)
        views.append((np.stack(contours), np.array(scores, np.float32)))
    contours, scores = merge_views(views)
    assert len(scores) == 2
    order = np.argsort(-scores)
    np.testing.assert_allclose(scores[order], [0.9, 0.25], atol=1e-6)
    radius = np.hypot(*(contours[order[0]] - steady).T)
    np.testing.assert_allclose(radius, 10.0, atol=0.15)  # the median of 9.3 ... 10.7
    # one view never contributes two members to a cell: two overlapping proposals of the
    # same view stay two cells
    twice = [(np.stack([_circle(30, 30, 10), _circle(31, 30, 10)]), np.array([0.9, 0.8]))]
    assert len(merge_views(twice)[1]) == 2
    assert merge_views([(np.zeros((0, 48, 2)), np.zeros(0))] * 8)[1].shape == (0,)
