import pytest
import torch

from cellsynth.refine.buffer import HistoryBuffer
from cellsynth.refine.discriminator import MultiScaleDiscriminator
from cellsynth.refine.losses import (
    d_hinge_loss,
    feature_matching,
    g_hinge_loss,
    self_regularization,
)


def _out(*values):
    return [([torch.zeros(1, 2, 1, 1)], torch.full((1, 1, 2, 2), v)) for v in values]


def test_discriminator_shapes():
    d = MultiScaleDiscriminator(3, width=4, layers=3, scales=2)
    outputs = d(torch.zeros(2, 3, 64, 64))
    assert [o[1].shape for o in outputs] == [(2, 1, 8, 8), (2, 1, 4, 4)]
    assert [f.shape[1] for f in outputs[0][0]] == [4, 8, 16]


def test_hinge_losses_by_hand():
    # real logits 2 (beyond the margin, no loss), fake -0.5 -> relu(1 - 0.5) = 0.5
    assert d_hinge_loss(_out(2.0), _out(-0.5)).item() == pytest.approx(0.5)
    # two scales averaged: (relu(1-0)+relu(1+0) + relu(1-1)+relu(1+3)) / 2 = (2 + 4) / 2
    assert d_hinge_loss(_out(0.0, 1.0), _out(0.0, 3.0)).item() == pytest.approx(3.0)
    assert g_hinge_loss(_out(1.0, 3.0)).item() == pytest.approx(-2.0)
    # feature matching compares features, not logits: equal features cost 0 whatever the
    # logits, features apart by 0.5 on average cost 0.5
    assert feature_matching(_out(0.0), _out(1.0)).item() == 0.0
    shifted = [([torch.tensor([0.0, 1.0]).view(1, 2, 1, 1)], torch.zeros(1, 1, 2, 2))]
    assert feature_matching(_out(0.0), shifted).item() == pytest.approx(0.5)


def test_self_regularization_downsampled_ignores_fine_texture():
    sim = torch.zeros(1, 1, 4, 4)
    checker = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(2, 2)[None, None] * 0.5
    assert self_regularization(sim + checker, sim).item() == pytest.approx(0.5)
    assert self_regularization(sim + checker, sim, downsample=2).item() == pytest.approx(0.0)
    assert self_regularization(sim + 0.25, sim, downsample=2).item() == pytest.approx(0.25)


def test_self_regularization_normalized_ignores_brightness_and_contrast():
    gen = torch.Generator().manual_seed(0)
    sim = torch.rand(2, 1, 8, 8, generator=gen) * 2 - 1
    dimmer = 0.4 * sim - 0.5  # same layout, a third of the contrast, darker
    assert self_regularization(dimmer, sim).item() > 0.3
    # only eps (which keeps flat crops from blowing up) leaves a small residual
    assert self_regularization(dimmer, sim, normalize=True).item() < 0.1
    # a changed layout still costs
    assert self_regularization(sim.flip(-1), sim, normalize=True).item() > 0.8


def test_history_buffer_mixes_half_and_round_trips():
    buf = HistoryBuffer(4, (1, 2, 2))
    gen = torch.Generator().manual_seed(0)
    first = buf.mix(torch.full((2, 1, 2, 2), -1.0), gen)
    assert torch.equal(first, torch.full((2, 1, 2, 2), -1.0)) and len(buf) == 2  # all stored
    second = buf.mix(torch.full((2, 1, 2, 2), 1.0), gen)
    assert second[0].eq(1).all() and second[1].eq(-1).all()  # fresh + history
    for _ in range(5):
        buf.mix(torch.full((2, 1, 2, 2), 1.0), gen)
    assert len(buf) == 4
    state = buf.state_dict()
    other = HistoryBuffer(4, (1, 2, 2))
    other.load_state_dict(state)
    assert torch.equal(other.images, buf.images) and len(other) == 4
    with pytest.raises(ValueError, match="shape"):
        HistoryBuffer(3, (1, 2, 2)).load_state_dict(state)
