"""Refiner losses: hinge adversarial loss, self-regularisation and mean feature matching.

All take discriminator outputs as returned by
:class:`cellsynth.refine.discriminator.MultiScaleDiscriminator` (a list of (features, logits)
per scale) and return fp32 scalars, whatever precision the forward pass ran in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["d_hinge_loss", "g_hinge_loss", "self_regularization", "feature_matching"]

Outputs = list[tuple[list[torch.Tensor], torch.Tensor]]


def d_hinge_loss(real: Outputs, fake: Outputs) -> torch.Tensor:
    """``mean(relu(1 - D(x))) + mean(relu(1 + D(G(s))))``, averaged over scales (Lim & Ye 2017)."""
    terms = [F.relu(1 - r.float()).mean() + F.relu(1 + f.float()).mean()
             for (_, r), (_, f) in zip(real, fake)]
    return torch.stack(terms).mean()


def g_hinge_loss(fake: Outputs) -> torch.Tensor:
    """``-mean(D(G(s)))``, averaged over scales."""
    return torch.stack([-f.float().mean() for _, f in fake]).mean()


def self_regularization(refined: torch.Tensor, simulated: torch.Tensor, *,
                        downsample: int = 1, normalize: bool = False) -> torch.Tensor:
    """L1 between refined and simulated images (SimGAN Eq. 3, ``psi`` = average pooling).

    Pooling by ``downsample`` first lets the refiner change fine texture freely while keeping
    intensities at cell scale, hence the layout given by the labels. ``normalize`` standardises
    each image and channel first, ``(x - mean) / (std + eps)``, so a global change of brightness
    or contrast costs nothing (e.g. simulated nuclei brighter than real ones).

    refined, simulated : (B, C, H, W).
    """
    if refined.shape != simulated.shape:
        raise ValueError(f"self_regularization: shapes differ, {tuple(refined.shape)} vs "
                         f"{tuple(simulated.shape)}")
    a, b = refined.float(), simulated.float()
    if downsample > 1:
        a, b = F.avg_pool2d(a, downsample), F.avg_pool2d(b, downsample)
    if normalize:
        a, b = _standardize(a), _standardize(b)
    return (a - b).abs().mean()


def _standardize(x: torch.Tensor, eps: float = 0.05) -> torch.Tensor:
    """(B, C, H, W) -> zero mean, unit std per image and channel; ``eps`` (in [-1, 1] units)
    keeps near-empty crops (background noise only) from being blown up."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = x.std(dim=(2, 3), keepdim=True)
    return (x - mean) / (std + eps)


def feature_matching(real: Outputs, fake: Outputs) -> torch.Tensor:
    """L1 between batch-mean discriminator features of real and refined images.

    Unpaired (Salimans et al. 2016): the real images are not the targets of the refined ones,
    so only feature statistics are matched, not features image by image as in pix2pixHD.
    """
    terms = []
    for (feats_r, _), (feats_f, _) in zip(real, fake):
        for fr, ff in zip(feats_r, feats_f):
            terms.append((fr.detach().float().mean(dim=(0, 2, 3))
                          - ff.float().mean(dim=(0, 2, 3))).abs().mean())
    return torch.stack(terms).mean()
