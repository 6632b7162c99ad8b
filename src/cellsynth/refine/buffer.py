"""History of refined images for the discriminator (SimGAN Sec. 2.3, Algorithm 2).

The discriminator sees half fresh refined images and half drawn from a buffer of earlier
refiner outputs, so it keeps penalising artefacts the refiner produced before and the two do
not chase each other in circles. Images are stored quantised to uint8 (as they are written to
disk anyway), which keeps a checkpoint of a 256-image buffer of 128 x 128 RGB crops at 12 MB.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["HistoryBuffer"]


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _to_float(images: torch.Tensor) -> torch.Tensor:
    return images.to(torch.float32) / 127.5 - 1


class HistoryBuffer:
    """A fixed-size pool of refined images in [-1, 1].

    Parameters
    ----------
    size : capacity (images).
    shape : (C, H, W) of one image.
    """

    def __init__(self, size: int, shape: tuple[int, int, int]) -> None:
        if size < 1:
            raise ValueError(f"HistoryBuffer: size must be >= 1, got {size}")
        self.images = torch.zeros((size, *shape), dtype=torch.uint8)  # (N, C, H, W)
        self.filled = 0

    def __len__(self) -> int:
        return self.filled

    def mix(self, fresh: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Discriminator batch: half ``fresh``, half history; then store the fresh half.

        fresh : (B, C, H, W) refined images, detached. Returns (B, C, H, W) on fresh's device.
        While the buffer holds fewer than B/2 images the batch is all fresh.
        """
        b = fresh.shape[0]
        half = b // 2
        out = fresh
        if self.filled >= half:
            idx = torch.randperm(self.filled, generator=generator)[:half]
            old = _to_float(self.images[idx]).to(fresh.device, fresh.dtype)
            out = torch.cat([fresh[: b - half], old], dim=0)
            keep = fresh[b - half:]
        else:
            keep = fresh
        self._store(keep, generator)
        return out

    def _store(self, images: torch.Tensor, generator: torch.Generator) -> None:
        images = _to_uint8(images).cpu()
        n_room = min(len(images), self.images.shape[0] - self.filled)
        if n_room:
            self.images[self.filled:self.filled + n_room] = images[:n_room]
            self.filled += n_room
        rest = images[n_room:]
        if len(rest):
            slots = torch.randperm(self.filled, generator=generator)[:len(rest)]
            self.images[slots] = rest

    def state_dict(self) -> dict[str, Any]:
        return {"images": self.images.clone(), "filled": self.filled}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["images"].shape != self.images.shape:
            raise ValueError(f"HistoryBuffer: checkpoint buffer has shape "
                             f"{tuple(state['images'].shape)}, expected {tuple(self.images.shape)}")
        self.images = state["images"].clone()
        self.filled = int(state["filled"])
