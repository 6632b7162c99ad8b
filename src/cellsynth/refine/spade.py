"""The SPADE refiner: simulated image + label-derived semantic map -> refined image.

SPADE (Park et al. 2019, "Semantic Image Synthesis with Spatially-Adaptive Normalization",
Eq. 1) normalises activations without learned affine parameters and re-modulates them with a
per-pixel scale and bias predicted from the semantic map, so the layout given by the labels
is re-injected at every block instead of being washed out by normalisation. Here the
generator is a residual refiner (Shrivastava et al. 2017): it starts as the identity and
learns a bounded correction of the simulated image. Fully convolutional: train on crops, apply
to any size divisible by 4.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SEMANTIC_CHANNELS", "CLASS_CHANNELS", "semantic_map", "scene_layout", "label_channels",
           "SPADE", "SPADEResBlock", "SPADEGenerator"]

SEMANTIC_CHANNELS = ("background", "interior", "boundary")
# With the simulator's class map (simulate.scene.CLASSES 2, 3, 4): unlabelled structures get
# channels of their own, so the refiner can tell an out-of-focus blob from a labelled cell.
CLASS_CHANNELS = {2: "unlabelled cell", 3: "vessel lumen", 4: "fibre"}


def label_channels(class_map: bool) -> int:
    """Channels of the semantic map, without or with the class map."""
    return len(SEMANTIC_CHANNELS) + (len(CLASS_CHANNELS) if class_map else 0)


def scene_layout(labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Instance labels (> 0) with each unlabelled pixel's class as a negative code (0, -2, -3,
    -4): one int32 map that crops, flips and pads like the labels alone."""
    if labels.shape != classes.shape:
        raise ValueError(f"scene_layout: labels {labels.shape} and classes {classes.shape}")
    return np.where(labels > 0, labels, -classes.astype(np.int32)).astype(np.int32)
_EPS = 1e-3  # keeps atanh finite for saturated simulated pixels


def semantic_map(labels: torch.Tensor, *, boundary_width: int = 2, class_map: bool = False
                 ) -> torch.Tensor:
    """One-hot background / cell interior / cell boundary map of instance labels.

    With ``class_map``, ``labels`` is a :func:`scene_layout` and three more channels mark
    unlabelled cells, vessel lumina and fibres (which are then not background).

    A foreground pixel is *boundary* when another label (or background) lies within
    ``boundary_width`` pixels (a max-pool minus min-pool test on the label tensor itself, so no
    per-step CPU work); the remaining foreground pixels are *interior*.

    Parameters
    ----------
    labels : (B, H, W) integer tensor, 0 = background.
    boundary_width : inner-boundary thickness in pixels.

    Returns
    -------
    (B, 3, H, W) float32 tensor (6 with ``class_map``), exactly one channel is 1 per pixel.
    """
    if labels.ndim != 3:
        raise ValueError(f"semantic_map: expected labels of shape (B, H, W), got {labels.shape}")
    lab = labels.to(torch.float32).unsqueeze(1)  # (B, 1, H, W); ids < 2**24 are exact
    k = 2 * boundary_width + 1
    # replicate padding: the crop edge is not a boundary
    padded = F.pad(lab, (boundary_width,) * 4, mode="replicate")
    high = F.max_pool2d(padded, k, stride=1)  # (B, 1, H, W)
    low = -F.max_pool2d(-padded, k, stride=1)  # (B, 1, H, W)
    foreground = lab > 0
    boundary = foreground & (high != low)
    interior = foreground & ~boundary
    if not class_map:
        return torch.cat([~foreground, interior, boundary], dim=1).to(torch.float32)
    extra = [lab == -code for code in CLASS_CHANNELS]
    return torch.cat([lab == 0, interior, boundary, *extra], dim=1).to(torch.float32)


class SPADE(nn.Module):
    """Spatially-adaptive denormalisation: ``norm(x) * (1 + gamma(s)) + beta(s)`` (Eq. 1).

    Parameters
    ----------
    norm_nc : channels of the activations to normalise.
    label_nc : channels of the semantic map.
    hidden : channels of the shared conv on the semantic map.
    kernel : kernel size of the gamma/beta conv (3 in the paper; 1 is cheap at full res).
    """

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = 32, kernel: int = 3) -> None:
        super().__init__()
        # parameter-free: the affine part comes from the semantic map
        self.norm = nn.InstanceNorm2d(norm_nc, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(label_nc, hidden, 3, padding=1), nn.ReLU())
        # gamma and beta from one conv (same maths as two, one kernel launch)
        self.gamma_beta = nn.Conv2d(hidden, 2 * norm_nc, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        # x: (B, C, h, w); segmap: (B, L, H, W) at full resolution
        if segmap.shape[-2:] != x.shape[-2:]:
            # area, not the paper's nearest: a thin boundary class must survive downsampling
            segmap = F.interpolate(segmap, size=x.shape[-2:], mode="area")  # (B, L, h, w)
        gamma, beta = self.gamma_beta(self.shared(segmap)).chunk(2, dim=1)  # 2 x (B, C, h, w)
        return self.norm(x) * (1 + gamma) + beta


class SPADEResBlock(nn.Module):
    """SPADE ResBlock (Park et al. 2019, Fig. 4): two SPADE-ReLU-conv units plus a shortcut."""

    def __init__(self, fin: int, fout: int, label_nc: int, hidden: int = 32) -> None:
        super().__init__()
        mid = min(fin, fout)
        self.norm_0 = SPADE(fin, label_nc, hidden)
        self.conv_0 = nn.Conv2d(fin, mid, 3, padding=1)
        self.norm_1 = SPADE(mid, label_nc, hidden)
        self.conv_1 = nn.Conv2d(mid, fout, 3, padding=1)
        self.shortcut = None
        if fin != fout:
            self.norm_s = SPADE(fin, label_nc, hidden)
            self.shortcut = nn.Conv2d(fin, fout, 1, bias=False)

    def forward(self, x: torch.Tensor, segmap: torch.Tensor) -> torch.Tensor:
        # x: (B, fin, h, w) -> (B, fout, h, w)
        skip = x if self.shortcut is None else self.shortcut(self.norm_s(x, segmap))
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, segmap), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, segmap), 0.2))
        return skip + dx


class SPADEGenerator(nn.Module):
    """Residual SPADE refiner, a small U-Net whose bottleneck is a stack of SPADE ResBlocks.

    ::

        image (+ noise) -conv-> f0 (w/3, H) -s2-> f1 (2w/3, H/2) -s2-> x (w, H/4)
        x -> blocks x SPADEResBlock -> up2 ++ f1 -> conv (2w/3, H/2) -> up2 ++ f0
          -> SPADE (1x1) -> conv -> delta (C, H)        (up2: bilinear, no checkerboard)
        refined = tanh(atanh(sim) + delta)

    The residual form is the identity when ``delta = 0`` (the last conv starts at zero) and
    stays inside (-1, 1) without clamping away gradients. The ResBlocks run at a quarter of
    the resolution (cells of ~25 px are ~6 px there) because that is where the compute
    budget of 2 CPU cores allows width; the skips carry full-resolution texture and noise.

    Parameters
    ----------
    channels : image channels, 1 (gray) or 3 (RGB).
    width : channels of the quarter-resolution ResBlocks.
    blocks : number of SPADE ResBlocks.
    hidden : SPADE hidden channels.
    noise : add one N(0, 1) noise input channel.
    label_nc : semantic-map channels.
    margin : ``sim`` is clamped to ``[-1 + margin, 1 - margin]`` before ``atanh``; a larger
        margin lets the refiner dim saturated simulated pixels with a small ``delta`` (with
        1e-3 they sit at atanh = 3.8 and come out as speckles inside dimmed nuclei).
    """

    def __init__(self, channels: int, *, width: int = 48, blocks: int = 3, hidden: int = 32,
                 noise: bool = True, label_nc: int = len(SEMANTIC_CHANNELS),
                 margin: float = _EPS) -> None:
        super().__init__()
        if not 0 < margin < 1:
            raise ValueError(f"SPADEGenerator: margin must be in (0, 1), got {margin}")
        self.margin = margin
        if channels not in (1, 3):
            raise ValueError(f"SPADEGenerator: channels must be 1 or 3, got {channels}")
        if width < 3 or blocks < 1:
            raise ValueError(f"SPADEGenerator: need width >= 3 and blocks >= 1, got "
                             f"{width}, {blocks}")
        self.channels = channels
        self.noise = noise
        c0, c1 = max(1, width // 3), max(1, 2 * width // 3)
        self.head = nn.Conv2d(channels + int(noise), c0, 3, padding=1)
        self.down1 = nn.Conv2d(c0, c1, 3, stride=2, padding=1)
        self.down2 = nn.Conv2d(c1, width, 3, stride=2, padding=1)
        self.blocks = nn.ModuleList(
            SPADEResBlock(width, width, label_nc, hidden) for _ in range(blocks))
        self.up1 = nn.Conv2d(width + c1, c1, 3, padding=1)
        self.norm_out = SPADE(c1 + c0, label_nc, max(1, hidden // 2), kernel=1)
        self.out = nn.Conv2d(c1 + c0, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, image: torch.Tensor, segmap: torch.Tensor,
                generator: torch.Generator | None = None) -> torch.Tensor:
        """Refine ``image``: (B, C, H, W) in [-1, 1], ``segmap``: (B, L, H, W); H, W % 4 == 0.

        ``generator`` draws the noise channel (pass one for reproducible output).
        """
        if image.shape[-2] % 4 or image.shape[-1] % 4:
            raise ValueError(f"SPADEGenerator: height and width must be multiples of 4, got "
                             f"{tuple(image.shape[-2:])}")
        x = image
        if self.noise:
            b, _, h, w = image.shape
            z = torch.randn((b, 1, h, w), generator=generator, device=image.device,
                            dtype=image.dtype)
            x = torch.cat([image, z], dim=1)  # (B, C+1, H, W)
        f0 = F.leaky_relu(self.head(x), 0.2)  # (B, c0, H, W)
        f1 = F.leaky_relu(self.down1(f0), 0.2)  # (B, c1, H/2, W/2)
        x = F.leaky_relu(self.down2(f1), 0.2)  # (B, w, H/4, W/4)
        for block in self.blocks:
            x = block(x, segmap)  # (B, w, H/4, W/4)
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear")  # (B, w, H/2, W/2)
        x = F.leaky_relu(self.up1(torch.cat([x, f1], dim=1)), 0.2)  # (B, c1, H/2, W/2)
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear")  # (B, c1, H, W)
        x = torch.cat([x, f0], dim=1)  # (B, c1 + c0, H, W)
        delta = self.out(F.leaky_relu(self.norm_out(x, segmap), 0.2))  # (B, C, H, W)
        base = torch.atanh(image.clamp(-1 + self.margin, 1 - self.margin))
        return torch.tanh(base + delta.to(base.dtype))  # (B, C, H, W) in (-1, 1)
