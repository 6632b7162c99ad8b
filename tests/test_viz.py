"""Pictures for humans: how an image is shown under its outlines."""

import numpy as np

from cellsynth.viz import as_rgb8


def test_a_dim_8_bit_image_is_stretched_as_its_16_bit_twin_and_a_full_one_kept():
    """An overlay of an 8-bit fluorescence image of values 4-55 was near black (mean 13)
    while the same image in 16 bits was stretched."""
    rng = np.random.default_rng(0)
    dim = rng.integers(4, 56, (64, 64)).astype(np.uint8)
    shown8, shown16 = as_rgb8(dim), as_rgb8(dim.astype(np.uint16) * 16)
    assert shown8.mean() > 100 and np.abs(shown8.astype(int) - shown16).max() <= 2
    he = rng.integers(40, 250, (64, 64, 3)).astype(np.uint8)  # uses its range: as it is
    np.testing.assert_array_equal(as_rgb8(he), he)


def test_a_picture_of_a_constant_image_adds_no_unnamed_warning(recwarn):
    """predict's overlay of a blank image said "image: image is constant" after the reader
    had said it naming the file (audit): a picture does not warn again."""
    from cellsynth.viz import as_rgb8, outcome_overlay

    blank = np.zeros((8, 8), np.uint16)
    assert as_rgb8(blank).shape == (8, 8, 3)
    outcome_overlay(blank, np.zeros((8, 8), int), np.zeros((8, 8), int))
    assert not recwarn.list
