import numpy as np
import pytest
import torch

from cellsynth.refine.spade import SPADE, SPADEGenerator, semantic_map


def test_semantic_map_classes_by_hand():
    labels = torch.zeros((1, 8, 8), dtype=torch.long)
    labels[0, 1:6, 1:6] = 3  # a 5 x 5 cell
    m = semantic_map(labels, boundary_width=1)
    assert m.shape == (1, 3, 8, 8)
    assert torch.equal(m.sum(1), torch.ones(1, 8, 8))  # one-hot
    bg, interior, boundary = m[0]
    assert bg.sum() == 64 - 25
    assert interior.sum() == 9 and interior[2:5, 2:5].all()  # the 3 x 3 core
    assert boundary.sum() == 16 and boundary[1, 1:6].all()  # the 1-px outline


def test_semantic_map_touching_cells_and_crop_edge():
    labels = torch.zeros((1, 6, 6), dtype=torch.long)
    labels[0, :, :3] = 1
    labels[0, :, 3:] = 2  # two cells filling the crop, touching at column 2|3
    boundary = semantic_map(labels, boundary_width=1)[0, 2]
    assert boundary[:, 2:4].all()  # the shared edge is boundary for both cells
    assert not boundary[:, [0, 1, 4, 5]].any()  # the crop edge is not a boundary


def test_spade_is_instance_norm_when_modulation_is_zero():
    spade = SPADE(4, 3, hidden=5)
    torch.nn.init.zeros_(spade.gamma_beta.weight)
    torch.nn.init.zeros_(spade.gamma_beta.bias)
    rng = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=rng)
    seg = semantic_map(torch.randint(0, 3, (2, 16, 16), generator=rng))  # resized inside
    y = spade(x, seg)
    expected = (x - x.mean((2, 3), keepdim=True)) / torch.sqrt(
        x.var((2, 3), unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(y, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_generator_shapes_and_identity_at_init(channels, size):
    g = SPADEGenerator(channels, width=6, blocks=2, hidden=4)
    rng = torch.Generator().manual_seed(0)
    image = torch.rand(2, channels, *size, generator=rng) * 1.8 - 0.9
    seg = semantic_map(torch.randint(0, 4, (2, *size), generator=rng))
    out = g(image, seg, generator=torch.Generator().manual_seed(0))
    assert out.shape == image.shape
    torch.testing.assert_close(out, image, atol=1e-5, rtol=0)  # residual starts at identity


def test_generator_margin_clamps_saturated_pixels_only():
    g = SPADEGenerator(1, width=6, blocks=1, hidden=4, margin=0.05)
    image = torch.tensor([-1.0, -0.5, 0.0, 0.9, 1.0]).repeat(4, 4)[None, None, :4, :8]
    seg = semantic_map(torch.zeros(1, 4, 8, dtype=torch.long))
    out = g(image, seg, generator=torch.Generator().manual_seed(0))  # delta = 0 at init
    torch.testing.assert_close(out, image.clamp(-0.95, 0.95), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="margin"):
        SPADEGenerator(1, margin=0.0)


def test_generator_output_bounded_and_seeded():
    g = SPADEGenerator(3, width=6, blocks=1, hidden=4)
    torch.nn.init.normal_(g.out.weight, std=10.0)  # a wild refiner
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    seg = semantic_map(torch.zeros(1, 16, 16, dtype=torch.long))
    a = g(image, seg, generator=torch.Generator().manual_seed(1))
    b = g(image, seg, generator=torch.Generator().manual_seed(1))
    c = g(image, seg, generator=torch.Generator().manual_seed(2))
    assert a.abs().max() <= 1.0
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_generator_rejects_bad_sizes():
    g = SPADEGenerator(1, width=6, blocks=1, hidden=4)
    with pytest.raises(ValueError, match="multiples of 4"):
        g(torch.zeros(1, 1, 18, 16), torch.zeros(1, 3, 18, 16))
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        SPADEGenerator(2)
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        semantic_map(torch.from_numpy(np.zeros((4, 4), np.int64)))
