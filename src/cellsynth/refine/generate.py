"""Apply a trained refiner to a simulated dataset: refined images, the very same labels.

The output is a dataset folder (images/ as uint8 PNG, labels/ copied byte for byte,
meta.json with provenance and label fidelity, preview.png), built in a staging folder and
moved into place when complete.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cellsynth import __version__
from cellsynth.errors import DatasetError
from cellsynth.hardware import announce, choose_precision, configure_threads
from cellsynth.io.datasets import write_dataset_meta
from cellsynth.io.files import refuse_inputs, run_info, say_if_unfinished, staged_output_dir
from cellsynth.io.images import to_uint8, write_image
from cellsynth.io.normalize import Normalization, normalize
from cellsynth.pipeline import layout
from cellsynth.refine.config import RefineConfig, config_from_checkpoint
from cellsynth.refine.data import load_simulated, read_layout
from cellsynth.refine.fidelity import label_fidelity
from cellsynth.refine.spade import SPADEGenerator, semantic_map
from cellsynth.refine.trainer import build_generator, read_checkpoint, resolve_device
from cellsynth.viz import contour_overlay, image_grid

__all__ = ["Refiner", "load_refiner", "refine_images", "refine_dataset"]

_PREVIEW_IMAGES = 8


class Refiner:
    """A trained generator with what is needed to apply it (config, step, device, precision)."""

    def __init__(self, generator: SPADEGenerator, config: RefineConfig, *, step: int,
                 checkpoint: Path, device: torch.device, bf16: bool) -> None:
        self.generator = generator.eval()
        self.config = config
        self.step = step
        self.checkpoint = checkpoint
        self.device = device
        self.bf16 = bf16

    @property
    def channels(self) -> int:
        return self.generator.channels


def load_refiner(run: str | os.PathLike, *, device: str = "cpu",
                 precision: str = "auto") -> Refiner:
    """Load the generator of a run folder (its last.pt) or of a checkpoint file.

    ``precision`` ("auto"/"bf16"/"fp32"): ``auto`` asks *this* machine's hardware, not the
    one the run trained on (bf16 is ~10x slower where the CPU emulates it).
    """
    path = layout.refiner_checkpoint(run)
    checkpoint = read_checkpoint(path)
    say_if_unfinished(path, checkpoint, "cellsynth fit-refiner")
    config = config_from_checkpoint(checkpoint["config"], where=f"{path}: config")
    dev = resolve_device(device)
    generator = build_generator(config, checkpoint["channels"])
    generator.load_state_dict(checkpoint["generator"])
    chosen = choose_precision(precision, str(dev))
    announce(str(chosen))
    bf16 = chosen.bf16
    return Refiner(generator.to(dev), config, step=int(checkpoint["step"]), checkpoint=path,
                   device=dev, bf16=bf16)


_CONTEXT = 16  # mirrored border, pixels, around every image refined whole


def _as_tensor(image: np.ndarray, channels: int, normalization: Normalization
               ) -> torch.Tensor:
    """(H, W) or (H, W, C) -> (C, H, W) float32 in [-1, 1], normalised as in training."""
    array = normalize(image, normalization)
    array = array[..., None] if array.ndim == 2 else array
    if array.shape[-1] != channels:
        raise DatasetError(f"image has {array.shape[-1]} channel(s), the refiner {channels}")
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1) * 2 - 1


def refine_images(refiner: Refiner, images: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                  *, batch: int = 8, seed: int = 0) -> list[np.ndarray]:
    """Refine whole images (any size; same-size images are batched).

    Parameters
    ----------
    images : (H, W) or (H, W, 3) simulated images, uint8/uint16/float in [0, 1].
    labels : (H, W) instance labels, one per image (scene layouts if the refiner uses the
        class map).
    batch : images per forward pass.
    seed : seed of the noise channel; same seed, same output.

    Returns
    -------
    refined : list of (H, W) or (H, W, 3) uint8 images, in input order.
    """
    if len(images) != len(labels):
        raise ValueError(f"refine_images: {len(images)} images but {len(labels)} label maps")
    if batch < 1:
        raise ValueError(f"refine_images: batch must be >= 1, got {batch}")
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, image in enumerate(images):
        groups[image.shape[:2]].append(i)
    out: list[np.ndarray | None] = [None] * len(images)
    noise = torch.Generator(refiner.device).manual_seed(seed)
    for (h, w), members in sorted(groups.items()):
        for start in range(0, len(members), batch):
            idx = members[start:start + batch]
            norm = refiner.config.normalization
            x = torch.stack([_as_tensor(images[i], refiner.channels, norm) for i in idx])
            lab = torch.stack([torch.from_numpy(labels[i].astype(np.int64)) for i in idx])
            # Mirror _CONTEXT px of context around the image (the generator otherwise sees zero
            # padding there and brightened/darkened the last ~4 px by up to 8 levels), and pad
            # to the multiple of 4 the generator needs; crop back afterwards.
            c = _CONTEXT if min(h, w) > _CONTEXT + 4 else 0
            pad = (c, c + (-w % 4), c, c + (-h % 4))  # left, right, top, bottom
            mode = "reflect" if c else "replicate"
            x = F.pad(x, pad, mode=mode).to(refiner.device)
            lab = F.pad(lab[:, None].float(), pad, mode=mode)[:, 0].long()
            segmap = semantic_map(lab.to(refiner.device),
                                  boundary_width=refiner.config.boundary_width,
                                  class_map=refiner.config.class_map)
            with torch.no_grad(), torch.autocast(refiner.device.type, dtype=torch.bfloat16,
                                                 enabled=refiner.bf16):
                y = refiner.generator(x, segmap, generator=noise)  # (B, C, H', W')
            y = y[:, :, c:c + h, c:c + w].float().clamp(-1, 1)
            y = ((y + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
            for k, i in enumerate(idx):
                out[i] = to_uint8(y[k, ..., 0] if refiner.channels == 1 else y[k])
    return out  # type: ignore[return-value]


def _say_if_other_simulation(refiner: Refiner, sim: Any) -> None:
    """Warn where ``sim`` was simulated at another pixel size or with another preset than
    the simulation the refiner was trained on (its run.json, and that simulation's
    meta.json where it still is): a fluorescence refiner applied to a bright-field
    simulation said nothing and painted blotches over the cells."""
    import json

    if sim.meta.get("refiner"):  # a refined set (generate's meta.json)
        warnings.warn(f"{sim.root}: already refined (by {sim.meta['refiner'].get('run', '?')});"
                      f" refining it again moves it further from the simulation its labels "
                      f"were drawn for", stacklevel=3)
    elif not sim.meta.get("preset"):
        warnings.warn(f"{sim.root}: not a cellsynth simulation (its meta.json records no "
                      f"preset): the refiner gives simulated images a real look, and real "
                      f"images given to it are repainted as if simulated", stacklevel=3)
    info = run_info(refiner.checkpoint.parent)
    try:
        trained_on = Path(info["sim"]) / layout.META if info.get("sim") else None
        preset = (json.loads(trained_on.read_text()).get("preset")
                  if trained_on is not None and trained_on.is_file() else None)
    except (OSError, ValueError):
        return
    px, now = info.get("sim_pixel_size_um"), sim.pixel_size_um
    if px and now and abs(now / px - 1.0) > 0.01:
        warnings.warn(f"{sim.root}: simulated at {now:g} um/px, but the refiner "
                      f"{refiner.checkpoint.parent} learned its look on a simulation at "
                      f"{px:g} um/px (cell sizes and texture at that scale)", stacklevel=3)
    mine = sim.meta.get("preset")
    if preset and mine and preset != mine:
        warnings.warn(f"{sim.root}: a {mine!r} simulation, but the refiner "
                      f"{refiner.checkpoint.parent} was trained on a {preset!r} one; it "
                      f"refines what it learned to refine", stacklevel=3)


def refine_dataset(run: str | os.PathLike, sim_dir: str | os.PathLike,
                   out_dir: str | os.PathLike, *, batch: int = 8, device: str = "cpu",
                   seed: int = 0, force: bool = False, precision: str = "auto",
                   progress: bool = True) -> dict[str, Any]:
    """Refine every image of a simulated dataset into ``out_dir``; labels are copied unchanged.

    Raises :class:`DatasetError` if ``sim_dir`` has images without labels or a channel count
    other than the refiner's. Returns a summary (n_images, images_per_s, fidelity).
    """
    from tqdm.auto import tqdm

    from cellsynth.simulate.dataset import CLASS_DIR, CLASS_SUFFIX

    refuse_inputs(out_dir, (run, sim_dir))  # (before the refiner is loaded)
    configure_threads()
    refiner = load_refiner(run, device=device, precision=precision)
    sim = load_simulated(sim_dir)
    _say_if_other_simulation(refiner, sim)
    started = time.perf_counter()
    sim_images, refined_images, label_maps = [], [], []
    with staged_output_dir(out_dir, force=force, inputs=(run, sim_dir)) as root:
        (root / "images").mkdir()
        (root / "labels").mkdir()
        bar = tqdm(total=len(sim), desc="generate", unit="img", disable=not progress)
        with bar:
            for start in range(0, len(sim), batch):
                chunk = sim.samples[start:start + batch]
                pairs = [s.read() for s in chunk]
                layouts = ([read_layout(s, p[1]) for s, p in zip(chunk, pairs)]
                           if refiner.config.class_map else [p[1] for p in pairs])
                try:
                    refined = refine_images(refiner, [p[0] for p in pairs], layouts,
                                            batch=batch, seed=seed + start)
                except DatasetError as err:
                    raise DatasetError(f"{sim.root}: {err}") from err
                for sample, (image, labels), ref in zip(chunk, pairs, refined):
                    write_image(root / "images" / f"{sample.id}.png", ref)
                    shutil.copyfile(sample.label_path, root / "labels" / sample.label_path.name)
                    # what was drawn at each pixel holds for the refined image too: kept, so
                    # the refined set is a simulation in every other respect
                    drawn = sim.root / CLASS_DIR / (sample.id + CLASS_SUFFIX)
                    if drawn.is_file():
                        (root / CLASS_DIR).mkdir(exist_ok=True)
                        shutil.copyfile(drawn, root / CLASS_DIR / drawn.name)
                    sim_images.append(image)
                    refined_images.append(ref)
                    label_maps.append(labels)
                bar.update(len(chunk))
        seconds = time.perf_counter() - started
        fidelity = label_fidelity(sim_images, refined_images, label_maps)
        meta = {
            "cellsynth_version": __version__,
            "stage": "refine",
            "n": len(sim),
            "pixel_size_um": sim.pixel_size_um,
            "refiner": {"run": str(Path(run).resolve()),
                        "checkpoint": str(refiner.checkpoint.resolve()), "step": refiner.step,
                        "precision": "bf16" if refiner.bf16 else "fp32"},
            "seed": seed,
            "sim": {"root": str(sim.root.resolve()), "meta": sim.meta},
            "label_fidelity": fidelity.to_dict(),
        }
        write_dataset_meta(root, meta)
        tiles = []  # simulated | refined with label contours
        for k in range(min(len(sim), _PREVIEW_IMAGES)):
            tiles += [sim_images[k], contour_overlay(refined_images[k], label_maps[k])]
        write_image(root / "preview.png", image_grid(tiles, columns=4))
    return {"n_images": len(sim), "seconds": seconds,
            "images_per_s": len(sim) / max(seconds, 1e-9), "fidelity": fidelity.to_dict()}
