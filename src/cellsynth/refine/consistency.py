"""Semantic consistency: the refiner must not change what is a cell.

The adversarial loss may make a refined image look real by darkening an out-of-focus blob
into a soma or fading a faint cell into the background; the labels would then lie. Pixel L1
to the simulation (self-regularisation) cannot tell such a change from a harmless change of
texture or colour. A *judge* can: a small network trained on the simulation alone to say,
per pixel, background / cell interior / cell boundary (the first three channels of
:func:`~cellsynth.refine.spade.semantic_map`). It is frozen, and the refiner pays

    L_sem = mean over pixels of KL( J(simulated) || J(refined) )

so the judge must see the same map in the refined image as in the simulated one. The loss
is 0 for identical images and grows with every pixel whose class the refiner changed.

The judge standardises each crop (per channel) and is trained with random contrast, gamma,
blur and noise, so it reads layout rather than colour or texture: the refiner stays free to
change those, which is its job.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cellsynth.refine.losses import _standardize  # per image and channel, as self_reg's
from cellsynth.refine.spade import semantic_map

__all__ = ["SemanticJudge", "train_judge", "consistency_loss", "judge_targets"]


class SemanticJudge(nn.Module):
    """(B, C, H, W) in [-1, 1] -> (B, 3, H, W) logits of background / interior / boundary.

    An encoder-decoder of ~30 k parameters with a receptive field of ~45 px at full
    resolution (two stride-2 stages, then dilated convolutions).
    """

    def __init__(self, channels: int, width: int = 16) -> None:
        super().__init__()

        def block(cin: int, cout: int, *, stride: int = 1, dilation: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation,
                                           dilation=dilation),
                                 nn.GroupNorm(4, cout), nn.SiLU())

        w = width
        self.stem = block(channels, w)                              # (B, w, H, W)
        self.down = nn.Sequential(block(w, 2 * w, stride=2),        # (B, 2w, H/2, W/2)
                                  block(2 * w, 2 * w, stride=2),    # (B, 2w, H/4, W/4)
                                  block(2 * w, 2 * w, dilation=2),
                                  block(2 * w, 2 * w, dilation=4))
        self.up = block(3 * w, w)                                   # skip from the stem
        self.head = nn.Conv2d(w, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _standardize(x.float())
        skip = self.stem(x)
        deep = F.interpolate(self.down(skip), size=skip.shape[-2:], mode="bilinear",
                             align_corners=False)
        return self.head(self.up(torch.cat([skip, deep], dim=1)))


def judge_targets(labels: torch.Tensor, *, boundary_width: int = 2) -> torch.Tensor:
    """(B, H, W) instance labels (negative = unlabelled classes of a scene layout, which are
    not cells) -> (B, H, W) int64 classes 0 background, 1 interior, 2 boundary."""
    cells = labels.clamp(min=0)
    return semantic_map(cells, boundary_width=boundary_width).argmax(dim=1)


def _augment(x: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """Random per-image contrast, gamma, blur and noise on (B, C, H, W) in [-1, 1]."""
    b = x.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(b, 1, 1, 1, generator=rng)

    y = ((x + 1) / 2).clamp(1e-4, 1) ** torch.exp(uniform(-0.5, 0.5))  # gamma 0.6-1.65
    y = (y - 0.5) * uniform(0.5, 1.5) + 0.5 + uniform(-0.2, 0.2)         # contrast, shift
    if torch.rand(1, generator=rng).item() < 0.5:                         # mild defocus
        y = F.avg_pool2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    y = y + uniform(0.0, 0.08) * torch.randn(y.shape, generator=rng)
    return y * 2 - 1


def train_judge(sample, channels: int, *, steps: int = 300, batch: int = 8,
                boundary_width: int = 2, seed: int = 0, lr: float = 2e-3,
                device: torch.device | str = "cpu") -> SemanticJudge:
    """Train a judge on simulated crops and return it frozen (eval mode, no gradients).

    sample : ``sample(n, rng) -> (images (n, C, h, w) in [-1, 1], labels (n, h, w))``, e.g.
        :meth:`cellsynth.refine.data.SimulatedCrops.sample`.
    Deterministic for a fixed ``seed`` (own generators; the global RNGs are untouched).
    """
    rng = np.random.default_rng([seed, 3])
    torch_rng = torch.Generator().manual_seed(int(rng.integers(2 ** 31)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rng.integers(2 ** 31)))
        judge = SemanticJudge(channels).to(device)
    opt = torch.optim.Adam(judge.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    # boundary pixels are few: weight the classes by inverse frequency (measured once)
    _, probe = sample(4 * batch, rng)
    counts = torch.bincount(judge_targets(probe, boundary_width=boundary_width).flatten(),
                            minlength=3).float()
    weight = (counts.sum() / (3 * counts.clamp(min=1))).clamp(max=10.0).to(device)
    judge.train()
    for _ in range(steps):
        images, labels = sample(batch, rng)
        target = judge_targets(labels, boundary_width=boundary_width).to(device)
        logits = judge(_augment(images, torch_rng).to(device))
        loss = F.cross_entropy(logits, target, weight=weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    opt.zero_grad(set_to_none=True)
    judge.eval()
    judge.requires_grad_(False)
    return judge


def consistency_loss(judge: nn.Module, refined: torch.Tensor, simulated: torch.Tensor
                     ) -> torch.Tensor:
    """Mean per-pixel ``KL(J(simulated) || J(refined))`` (fp32 scalar); gradients flow into
    ``refined`` only. refined, simulated : (B, C, H, W) in [-1, 1]."""
    if refined.shape != simulated.shape:
        raise ValueError(f"consistency_loss: shapes differ, {tuple(refined.shape)} vs "
                         f"{tuple(simulated.shape)}")
    with torch.no_grad():
        target = F.log_softmax(judge(simulated.float()), dim=1)  # (B, 3, H, W)
    log_q = F.log_softmax(judge(refined.float()), dim=1)
    return (target.exp() * (target - log_q)).sum(dim=1).mean()
