"""The one module that imports ``celldetection``: CPN models, training targets, raw inference.

Contour Proposal Networks (Upschulte et al. 2022) predict, per pixel, a score and a Fourier
contour; NMS keeps the best proposals. Everything else in cellsynth talks to this module.
Known pitfalls handled here (see ../shared/notes/celldetection.md): the target generator
writes -1 into (and mutates) the label array and draws from the global ``np.random``; bf16
over the whole model rounds contour coordinates, so only ``model.core`` is autocast.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from typing import Any

import numpy as np
import torch

# opencv-python (celldetection's) points Qt at its own plugins when imported on Linux, and a
# QApplication made afterwards (napari.Viewer() in a script or notebook that used cellsynth
# first) aborts the process: "Could not load the Qt platform plugin xcb". They are put back.
_QT_VARIABLES = ("QT_QPA_PLATFORM_PLUGIN_PATH", "QT_QPA_FONTDIR")
_qt_before = {name: os.environ.get(name) for name in _QT_VARIABLES}
with warnings.catch_warnings():  # timm / mamba FutureWarnings on import
    warnings.simplefilter("ignore")
    import celldetection as cd
for _name, _value in _qt_before.items():
    if _value is None:
        os.environ.pop(_name, None)
    else:
        os.environ[_name] = _value

__all__ = ["MODELS", "build_model", "celldetection_format", "training_targets", "collate",
           "set_core_precision", "prepare_for_inference", "raw_predict", "score_threshold",
           "macs_per_pixel", "balance_score_loss"]


class CpnTinyU22(cd.models.CPN):
    """CpnSlimU22 with half its channels (16-32-64-128-256): 97 k multiply-adds per pixel
    against 385 k, 2.0 M parameters against 7.9 M. With ``base_channels=32`` it is CpnSlimU22's
    network. Registered in ``celldetection.models`` so checkpoints load by name once this
    module is imported."""

    def __init__(self, in_channels: int, order: int = 5, nms_thresh: float = .2,
                 score_thresh: float = .9, samples: int = 32, classes: int = 2,
                 refinement: bool = True, refinement_iterations: int = 4,
                 refinement_margin: float = 3., refinement_buckets: int = 1,
                 base_channels: int = 16, **kwargs: Any):
        from celldetection.models.unet import UNet, UNetEncoder

        super().__init__(
            backbone=UNet(UNetEncoder(in_channels=in_channels, base_channels=base_channels),
                          out_channels=0),
            order=order, nms_thresh=nms_thresh, score_thresh=score_thresh, samples=samples,
            classes=classes, refinement=refinement,
            refinement_iterations=refinement_iterations, refinement_margin=refinement_margin,
            refinement_buckets=refinement_buckets, **kwargs)
        self.save_hyperparameters()


cd.models.CpnTinyU22 = CpnTinyU22

# name -> celldetection class; the small U-Net CPN trains at a useful speed on CPU.
MODELS = {
    "slim_u22": "CpnSlimU22",
    "tiny_u22": "CpnTinyU22",   # 4x cheaper than slim_u22 (see CpnTinyU22)
    "u22": "CpnU22",
    "resnet18_unet": "CpnResNet18UNet",
}


# the CPN heads (score, location, Fourier, refinement) that head_kernel sizes
HEADS = ("score", "location", "fourier", "refinement")


def build_model(*, in_channels: int, model: str = "slim_u22", order: int = 8, samples: int = 64,
                refinement_iterations: int = 4, head_kernel: int = 7) -> torch.nn.Module:
    """A freshly initialised CPN (no downloaded weights).

    ``head_kernel``: the kernel of the first convolution of each CPN head (celldetection's
    7). Those four convolutions are about half of the network's arithmetic (200 k of
    CpnSlimU22's 385 k multiply-adds per pixel); 3 makes a training step ~1.6x faster.
    """
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    if head_kernel < 1 or head_kernel % 2 == 0:
        raise ValueError(f"head_kernel must be an odd number >= 1, got {head_kernel}")
    cls = getattr(cd.models, MODELS[model])
    kwargs: dict[str, Any] = dict(in_channels=in_channels, order=order, samples=samples,
                                  refinement_iterations=refinement_iterations, classes=2)
    if head_kernel != 7:
        kwargs |= {f"kernel_size_{head}": head_kernel for head in HEADS}
    if model == "resnet18_unet":
        kwargs["pretrained"] = False
    return cls(**kwargs)


@torch.no_grad()
def macs_per_pixel(model: torch.nn.Module, in_channels: int, size: int = 256) -> float:
    """Multiply-adds of the model's convolutions per input pixel (a forward pass on one
    ``size`` x ``size`` image of random values; the model is left in eval mode)."""
    macs: list[int] = []

    def count(module, _inputs, output):
        macs.append(output[0].numel() * module.kernel_size[0] * module.kernel_size[1]
                    * module.in_channels // module.groups)

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, torch.nn.Conv2d)]
    model.eval()
    try:
        model(torch.rand(1, in_channels, size, size))
    finally:
        for h in hooks:
            h.remove()
    return sum(macs) / size**2


def celldetection_format(model: torch.nn.Module, state_dict: dict[str, Any], *,
                         score_thresh: float) -> dict[str, Any]:
    """Checkpoint entries that make ``celldetection.load_model(path)`` rebuild the model with
    our weights and validated score threshold (``state_dict`` is stored by reference, so the
    weights are not written twice)."""
    conf = cd.util.model2dict(model)
    conf["kwargs"] = {**conf["kwargs"], "score_thresh": float(score_thresh)}
    return {"cd.models": conf, "state_dict": state_dict}


def training_targets(labels: np.ndarray, *, samples: int, order: int,
                     rng: np.random.Generator, core: float = 0.85, rim: float = 0.8
                     ) -> dict[str, Any]:
    """CPN training targets for one (H, W) label crop.

    Returns a dict with ``labels`` (reduced: a cell's pixels farther from its border than
    ``core`` of its largest such distance are foreground, those nearer than ``rim``
    background, -1 between: ignored) and 1-tuples ``fourier``, ``locations``,
    ``sampled_contours``, ``sampling``, ready for :func:`collate`.
    """
    gen = cd.data.CPNTargetGenerator(samples=samples, order=order, min_fg_dist=core,
                                     max_bg_dist=rim)
    gen.feed(labels=labels.astype(np.int32))  # a copy: feed writes -1 into its input
    # Contour sample positions drawn from our generator, not the global np.random.
    gen._sampling = np.sort(rng.uniform(0.0, 1.0, samples))
    return {
        "labels": gen.reduced_labels,
        "fourier": (gen.fourier.astype(np.float32),),
        "locations": (gen.locations.astype(np.float32),),
        "sampled_contours": (gen.sampled_contours.astype(np.float32),),
        "sampling": (gen.sampling.astype(np.float32),),
    }


class _BalancedScore(torch.nn.Module):
    """celldetection's score objective (binary cross-entropy on logits) whose call on the
    cell pixels (targets of 1) weighs each pixel by ``weight``, set for one loss computation
    by :func:`balance_score_loss`; the background call stays a plain mean."""

    def __init__(self) -> None:
        super().__init__()
        self.weight: torch.Tensor | None = None

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight, self.weight = self.weight, None
        if weight is None or not target.numel() or float(target.reshape(-1)[0]) != 1.0:
            return torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        return torch.nn.functional.binary_cross_entropy_with_logits(
            logits, target, weight=weight.to(logits.dtype))


def cell_pixel_weights(labels: torch.Tensor, fg_masks: torch.Tensor,
                       exponent: float) -> torch.Tensor:
    """Per cell pixel (in ``torch.where(fg_masks)`` order), ``n^-exponent`` for a cell of
    ``n`` such pixels in its image of the batch, rescaled to a mean of 1."""
    n, _, _ = torch.where(fg_masks)
    ids = labels[fg_masks].long()
    key = n.long() * (int(ids.max()) + 1 if ids.numel() else 1) + ids
    _, inverse, counts = torch.unique(key, return_inverse=True, return_counts=True)
    weight = counts.to(torch.float32)[inverse] ** -exponent
    return weight / weight.mean() if weight.numel() else weight


def balance_score_loss(model: torch.nn.Module, exponent: float) -> None:
    """Weigh the CPN's score loss on cell pixels so a small cell counts more than its few
    pixels (``exponent`` 1: every cell the same; 0 undoes it). Celldetection's mean over all
    cell pixels lets a large soma outweigh a small one many times over."""
    if isinstance(model.__dict__.get("compute_loss"), functools.partial):
        del model.compute_loss  # undo an earlier wrap
    if not exponent:
        model.objectives["score"] = torch.nn.BCEWithLogitsLoss()
        return
    if model.score_channels != 1:
        raise ValueError("score_balance needs a CPN with one score channel")
    objective = model.objectives["score"] = _BalancedScore()

    def compute_loss(plain, **kwargs):
        objective.weight = cell_pixel_weights(kwargs["labels"], kwargs["fg_masks"], exponent)
        try:
            return plain(**kwargs)
        finally:
            objective.weight = None

    model.compute_loss = functools.partial(compute_loss, model.compute_loss)


def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Batch items of {"inputs": (H, W, C) float32, **training_targets} into tensors."""
    return cd.universal_dict_collate_fn(items)


def _autocast_forward(forward, dtype, *args, **kwargs):
    device = next((a.device.type for a in args if torch.is_tensor(a)), "cpu")
    with torch.autocast(device, dtype=dtype):
        outputs = forward(*args, **kwargs)
    return tuple(o.float() if torch.is_tensor(o) and o.is_floating_point() else o
                 for o in outputs)


def set_core_precision(model: torch.nn.Module, precision: str) -> None:
    """Run the backbone and heads (``model.core``) in bf16 (CPU or GPU); contours stay fp32.

    ``precision``: "fp32" or "bf16", as resolved by
    :func:`cellsynth.hardware.choose_precision`. Idempotent; the state dict is unaffected.
    """
    core = model.core
    if "forward" in core.__dict__:  # undo an earlier wrap
        del core.forward
    if precision == "bf16":
        core.forward = functools.partial(_autocast_forward, core.forward, torch.bfloat16)
    elif precision != "fp32":
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")


@torch.no_grad()
def prepare_for_inference(model: torch.nn.Module) -> int:
    """Make a CPN faster for prediction only (in place; never for a model that will train).

    Every Conv2d followed by a BatchNorm2d in eval mode becomes one convolution with the
    normalisation folded into its weights (torch's ``fuse_conv_bn_eval``; the BatchNorm
    becomes an Identity), and the weights go channels-last, the layout oneDNN's CPU
    convolutions prefer. Outputs change by float rounding only (contours by ~1e-4 px).
    Returns the number of folded pairs.
    """
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model.eval()
    folded = 0
    for parent in list(model.modules()):
        names = list(parent._modules)
        for first, second in zip(names, names[1:]):
            conv, norm = parent._modules[first], parent._modules[second]
            if (isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)
                    and norm.track_running_stats and conv.out_channels == norm.num_features):
                parent._modules[first] = fuse_conv_bn_eval(conv, norm)
                parent._modules[second] = nn.Identity()
                folded += 1
    model.to(memory_format=torch.channels_last)
    model.channels_last = True  # raw_predict hands it channels-last inputs
    return folded


@torch.no_grad()
def raw_predict(model: torch.nn.Module, inputs: torch.Tensor
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Contours and scores of every proposal above ``model.score_thresh`` after NMS.

    inputs : (B, C, H, W) float in [0, 1].
    Returns, per image, ``contours`` (K, samples, 2) as (x, y) and ``scores`` (K,).
    """
    model.eval()
    if getattr(model, "channels_last", False):
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    out = model(inputs)
    return [(c.float().cpu().numpy(), s.float().cpu().numpy())
            for c, s in zip(out["contours"], out["scores"])]


@contextlib.contextmanager
def score_threshold(model: torch.nn.Module, value: float):
    """Temporarily set the model's internal score threshold (proposal filter before NMS)."""
    old = model.score_thresh
    model.score_thresh = value
    try:
        yield
    finally:
        model.score_thresh = old
