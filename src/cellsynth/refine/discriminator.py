"""Multi-scale PatchGAN discriminator with spectral norm: a local adversarial loss.

Each scale is a small fully convolutional net whose output is a map of real/fake logits, one
per receptive field (~38 px at scale 0, doubling per scale), so the refiner is judged on local
texture and cannot fix global statistics at the cost of local artefacts (Shrivastava et al.
2017, Sec. 2.2; Isola et al. 2017; Wang et al. 2018 for the multi-scale pyramid). Spectral norm
(Miyato et al. 2018) on every conv keeps the hinge-loss discriminator Lipschitz. It never sees
labels: the real images are unlabeled.

The input is first standardised with the real images' per-channel mean and std (measured once,
kept as buffers). A Lipschitz-1 net can only tell apart inputs as far apart as their pixels
are, and dim fluorescence images use a small part of [-1, 1]: without this the hinge loss stayed
at chance (~2) for thousands of steps on dsb2018_fluo.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

__all__ = ["PatchDiscriminator", "MultiScaleDiscriminator"]


class PatchDiscriminator(nn.Module):
    """``layers`` stride-2 4x4 convs (width doubling, capped at 8x) and a 3x3 logit conv.

    Parameters
    ----------
    channels : image channels (1 or 3).
    width : channels of the first conv.
    layers : stride-2 convs; the logit map has stride ``2 ** layers``.
    """

    def __init__(self, channels: int, *, width: int = 32, layers: int = 3) -> None:
        super().__init__()
        convs = []
        cin = channels
        for i in range(layers):
            cout = width * min(2 ** i, 8)
            convs.append(spectral_norm(nn.Conv2d(cin, cout, 4, stride=2, padding=1)))
            cin = cout
        self.convs = nn.ModuleList(convs)
        self.logits = spectral_norm(nn.Conv2d(cin, 1, 3, padding=1))

    def forward(self, image: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """image: (B, C, H, W) -> (features per layer, logits (B, 1, H / 2**layers, ...))."""
        features = []
        x = image
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)  # (B, c_i, H / 2**(i+1), W / 2**(i+1))
            features.append(x)
        return features, self.logits(x)


class MultiScaleDiscriminator(nn.Module):
    """``scales`` PatchDiscriminators on the image average-pooled by 1, 2, 4, ..."""

    def __init__(self, channels: int, *, width: int = 32, layers: int = 3,
                 scales: int = 2) -> None:
        super().__init__()
        if channels not in (1, 3):
            raise ValueError(f"MultiScaleDiscriminator: channels must be 1 or 3, got {channels}")
        self.scales = nn.ModuleList(
            PatchDiscriminator(channels, width=width, layers=layers) for _ in range(scales))
        self.register_buffer("input_shift", torch.zeros(1, channels, 1, 1))
        self.register_buffer("input_scale", torch.ones(1, channels, 1, 1))

    @torch.no_grad()
    def set_input_stats(self, real: torch.Tensor, *, min_std: float = 0.02) -> None:
        """Standardise future inputs with the per-channel mean and std of ``real`` (B, C, H, W),
        the std floored at ``min_std`` (in [-1, 1] units) so flat images are not blown up."""
        real = real.float().to(self.input_shift.device)
        self.input_shift.copy_(real.mean(dim=(0, 2, 3)).view_as(self.input_shift))
        std = real.std(dim=(0, 2, 3)).clamp_min(min_std)
        self.input_scale.copy_(std.view_as(self.input_scale))

    def forward(self, image: torch.Tensor) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
        """image: (B, C, H, W) -> one (features, logits) pair per scale, finest first."""
        outputs = []
        x = (image - self.input_shift) / self.input_scale
        for k, disc in enumerate(self.scales):
            if k:
                x = F.avg_pool2d(x, 2)  # (B, C, H / 2**k, W / 2**k)
            outputs.append(disc(x))
        return outputs
