"""int8 prediction on CPUs without bf16: the CPN's backbone and heads quantised after training.

torch.ao FX post-training static quantisation (the ``x86`` qconfig: activations int8 per
tensor, weights per channel, fbgemm/oneDNN kernels) cannot trace a whole celldetection CPN
(an assert on the input range in its ``Normalize``, shape checks in ``CPNCore.forward``), so
each traceable part is quantised on its own: the U-Net backbone, its ``Normalize`` replaced by
the same arithmetic without the assert and its feature dictionary restored, and the four
heads. CPNCore's glue (choosing features, resizing) and the contour sampling stay fp32.

Activation ranges are calibrated on a few windows of the images to be predicted (tissue
windows of sections), as the model sees them. Measured on an AVX2-only EPYC (1 thread),
the recipe's Nissl detector: 1.51x the fp32 path per image, F1@0.5 0.99 against the fp32
labels and the same accuracy against annotations (docs/results.md,
``experiments/int8_core.py``). Opt-in (``predict --precision int8``): outlines move a little
(F1avg 0.97 against fp32's).
"""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from collections.abc import Iterable

import numpy as np
import torch

__all__ = ["quantize_core", "PARTS"]

PARTS = ("backbone", "score_head", "location_head", "fourier_head", "refinement_head")

# an int8 model's forward creates quantised tensors, which torch warns are deprecated, once
# per process: nothing a user of `predict --precision int8` can act on
warnings.filterwarnings("ignore", message="torch.quantize_per_tensor, torch.quantize_per_channel")


class _Normalize(torch.nn.Module):
    """celldetection's ``Normalize`` without its range assert, which FX cannot trace."""

    def __init__(self, mean, std) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class _AsDict(torch.nn.Module):
    """A traced backbone returns its features as a tuple; CPNCore looks them up by name."""

    def __init__(self, inner: torch.nn.Module, keys: list[str]) -> None:
        super().__init__()
        self.inner, self.keys = inner, keys

    def forward(self, x: torch.Tensor):
        out = self.inner(x)
        return out if isinstance(out, dict) else OrderedDict(zip(self.keys, out))


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), np.float32))[None]


def quantize_core(model: torch.nn.Module, calibration: Iterable[np.ndarray]
                  ) -> torch.nn.Module:
    """A copy of the CPN ``model`` (eval, CPU) whose core's backbone and heads compute in int8.

    ``calibration``: (h, w, C) float32 images in [0, 1] at the model's pixel size, as
    prediction hands them to it (at least one; sides multiples of 32 are not needed)."""
    with warnings.catch_warnings():  # torch.ao says it is deprecated at every call
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*reduce_range will be deprecated")
        return _quantize_core(model, calibration)


@torch.no_grad()
def _quantize_core(model: torch.nn.Module, calibration: Iterable[np.ndarray]
                   ) -> torch.nn.Module:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    images = [np.asarray(i, np.float32) for i in calibration]
    if not images:
        raise ValueError("int8 needs at least one calibration image")
    model = copy.deepcopy(model).eval().to(memory_format=torch.contiguous_format)
    core = model.core
    if "forward" in core.__dict__:  # a bf16 autocast wrapper: int8 replaces it
        del core.forward
    norm = core.backbone.normalize.transform.transforms[0]
    core.backbone.normalize = _Normalize(norm.mean, norm.std)
    seen: dict[str, tuple] = {}
    hooks = [getattr(core, n).register_forward_hook(
        lambda mod, inp, out, n=n: seen.setdefault(n, (inp, out)) and None) for n in PARTS]
    example = images[0][:64, :64]
    example = np.pad(example, ((0, 64 - example.shape[0]), (0, 64 - example.shape[1]), (0, 0)),
                     mode="reflect")
    core(_tensor(example))
    for h in hooks:
        h.remove()
    keys = list(seen["backbone"][1].keys())
    mapping = get_default_qconfig_mapping("x86")
    prepared = {n: prepare_fx(getattr(core, n), mapping, example_inputs=seen[n][0])
                for n in PARTS}
    for n in PARTS[1:]:
        setattr(core, n, prepared[n])
    core.backbone = _AsDict(prepared["backbone"], keys)
    for image in images:
        pad = [(0, -s % 32) for s in image.shape[:2]] + [(0, 0)]
        core(_tensor(np.pad(image, pad, mode="reflect")))
    for n in PARTS[1:]:
        setattr(core, n, convert_fx(prepared[n]))
    core.backbone = _AsDict(convert_fx(prepared["backbone"]), keys)
    model.channels_last = False
    return model
