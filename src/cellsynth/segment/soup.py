"""Weight averaging of fine-tuned detectors ("model soup", Wortsman et al. 2022).

Several fine-tunings of one pretrained detector on the same few annotated images, each with
its own seed (other crops, augmentations and batch order), end near each other in weight
space; the average of their weights is one detector that predicts as fast as any of them
and scores better than they do on average. On Nissl cortex with 2 annotated images the
average of 3 fine-tunings beat the mean of those 3 by +0.020 [+0.005, +0.040] F1@0.5 and
+0.019 [+0.009, +0.029] F1avg (3 seeds, docs/results.md), where training one fine-tuning
3x longer lost 0.023.

Only fine-tunings of the *same* pretrained detector average well; detectors trained from
scratch, or from different starts, do not share a basin and their average detects nothing.
:func:`soup` therefore checks that every run was fine-tuned (``--init``) from the same
checkpoint and has the same architecture and input handling.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cellsynth.config import from_dict, save_yaml
from cellsynth.errors import CellsynthError, OutputExistsError
from cellsynth.io.files import (
    check_run_dir,
    discard_replaced_run,
    prepare_run_dir,
    restore_replaced_run,
    versions,
    write_json,
    write_with,
)
from cellsynth.pipeline import layout

__all__ = ["average_weights", "soup"]

# config fields that decide how a detector reads an image: its runs must agree on them
_SAME = ("normalization", "pixel_size_um", "channel", "order", "samples",
         "refinement_iterations", "model", "head_kernel")


def average_weights(states: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of each floating-point tensor over ``states`` (integer buffers such as
    BatchNorm's ``num_batches_tracked`` are taken from the first). The first state's
    version metadata is kept: without it torchvision's FPN would read the keys as an old
    format and rename them on loading."""
    if not states:
        raise ValueError("average_weights: no state dicts")
    keys = list(states[0])
    for state in states[1:]:
        if list(state) != keys:
            raise ValueError("average_weights: the state dicts hold different tensors")
    out = type(states[0])()
    for key in keys:
        first = states[0][key]
        if torch.is_floating_point(first):
            total = sum(state[key].double() for state in states)
            out[key] = (total / len(states)).to(first.dtype)
        else:
            out[key] = first.clone()
    metadata = getattr(states[0], "_metadata", None)
    if metadata is not None:
        out._metadata = metadata
    return out


def _run_info(path: Path) -> dict[str, Any]:
    """The run.json beside checkpoint ``path`` ({} where there is none); one that cannot be
    read is an error naming it (it says where the fine-tuning started, which soup checks)."""
    info = path.parent / layout.RUN_INFO
    try:
        return json.loads(info.read_text()) if info.is_file() else {}
    except ValueError as err:
        raise CellsynthError(f"{info}: cannot read it ({err}); it records which detector the "
                             f"fine-tuning started from") from None


def _same_start(a: tuple[str, str | None], b: tuple[str, str | None]) -> bool:
    """Whether two fine-tunings' recorded starts ((``init`` path, ``init_sha256``) of their
    run.json) are one pretrained detector. Where both recorded the checkpoint's SHA-256 the
    hashes decide: a run folder copied or moved between the fine-tunings still matches, a
    pretraining redone at the same path between them does not. Runs from before the hash was
    recorded match by the same path or byte-identical files."""
    import filecmp

    (path_a, sha_a), (path_b, sha_b) = a, b
    if sha_a and sha_b:
        return sha_a == sha_b
    if path_a == path_b:
        return True
    return Path(path_a).is_file() and Path(path_b).is_file() and \
        filecmp.cmp(path_a, path_b, shallow=False)


def soup(runs: Sequence[str | os.PathLike], out: str | os.PathLike, *,
         val: str | os.PathLike | None = None, force: bool = False, device: str = "cpu"
         ) -> dict[str, Any]:
    """Average the weights of the detectors ``runs`` (run folders or checkpoints) into a
    new detector run ``out`` (best.pt, config.yaml, run.json), usable wherever a trained
    detector is (predict, --init, celldetection.load_model).

    ``val``: labeled images (e.g. the annotated ones the runs were fine-tuned on) on which
    the soup's score threshold is chosen as training chooses it; without them it takes the
    median of the runs' validated thresholds. Returns the summary written to run.json.
    """
    from cellsynth.hardware import choose_precision, resolve_device
    from cellsynth.segment.cpn import build_model, celldetection_format, set_core_precision
    from cellsynth.segment.data import load_labeled
    from cellsynth.segment.predict import read_detector_checkpoint
    from cellsynth.segment.trainer import TrainConfig, validate

    out = Path(out)
    if len(runs) < 2:
        raise CellsynthError(f"{out}: a soup needs at least 2 detectors, got {len(runs)}")
    inputs = tuple(Path(r) for r in runs) + ((Path(val),) if val is not None else ())
    if out.is_dir() and any(out.iterdir()) and not force:  # (there is nothing to resume)
        raise OutputExistsError(f"{out}: folder exists and is not empty (use --force to "
                                f"replace it)")
    check_run_dir(out, resume=False, force=force, checkpoint=layout.BEST, inputs=inputs)
    resolve_device(device)
    loaded = [read_detector_checkpoint(r, needed_by="soup") for r in runs]
    seen: dict[Path, str] = {}
    for run, (path, _) in zip(runs, loaded):  # (one detector twice weighs it double)
        if path.resolve() in seen:
            raise CellsynthError(f"{run}: the same detector as {seen[path.resolve()]} "
                                 f"({path}); a soup averages different fine-tunings")
        seen[path.resolve()] = str(run)
    first_path, first = loaded[0]
    configs = [ckpt.get("config", {}) for _, ckpt in loaded]
    inits = []
    for (path, ckpt), config in zip(loaded, configs):
        if ckpt["model_spec"] != first["model_spec"]:
            raise CellsynthError(f"{path}: another architecture than {first_path} "
                                 f"({ckpt['model_spec']} vs {first['model_spec']}); only "
                                 f"fine-tunings of one pretrained detector can be averaged")
        for key in _SAME:
            if config.get(key) != configs[0].get(key):
                raise CellsynthError(f"{path}: {key} {config.get(key)!r} differs from "
                                     f"{first_path}'s {configs[0].get(key)!r}")
        info = _run_info(path)
        init = info.get("init")
        if init is None:
            raise CellsynthError(f"{path}: not a fine-tuning (its run.json names no --init "
                                 f"detector); only fine-tunings of one pretrained detector "
                                 f"average into a working detector")
        inits.append((init, info.get("init_sha256")))
    for (path, _), init in zip(loaded, inits):
        if not _same_start(init, inits[0]):
            same_path = "; the same path, other contents: pretrained again in between?" \
                if init[0] == inits[0][0] else ""
            raise CellsynthError(f"{path}: fine-tuned from {init[0]}, {first_path} from "
                                 f"{inits[0][0]}{same_path}; only fine-tunings of one "
                                 f"pretrained detector can be averaged")
    weights = average_weights([ckpt["model"] for _, ckpt in loaded])
    config = from_dict(TrainConfig, {**configs[0], "device": device},
                       where=f"{first_path}: config")
    model = build_model(**first["model_spec"]).to(device)
    model.load_state_dict(weights)
    thresholds = [float(ckpt.get("score_thresh", 0.9)) for _, ckpt in loaded]
    validated: dict[str, Any] = {}
    n_val = 0
    if val is not None:
        items = load_labeled([val], channels=first["model_spec"]["in_channels"],
                             pixel_size_um=config.pixel_size_um,
                             normalization=config.normalization, channel=config.channel,
                             source_pixel_size_um=config.data_pixel_size_um)
        n_val = len(items)
        precision = choose_precision(config.precision, device)
        set_core_precision(model, precision.name)
        result = validate(model, items, config)
        score_thresh, best_f1 = float(result["score_thresh"]), float(result["f1_50"])
        validated = {"val_f1": best_f1, "val_f1_avg": float(result["f1_avg"])}
    else:
        score_thresh, best_f1 = float(sorted(thresholds)[len(thresholds) // 2]), None
    run_paths = [str(p.resolve()) for p, _ in loaded]
    prepare_run_dir(out, resume=False, force=force, checkpoint=layout.BEST)
    try:
        save_yaml(out / layout.CONFIG, from_dict(TrainConfig, configs[0]))
        state = {"model": weights, "model_spec": first["model_spec"], "config": configs[0],
                 "step": max(int(ckpt.get("step", 0)) for _, ckpt in loaded),
                 "best_f1": best_f1, "score_thresh": score_thresh,
                 "precision": first.get("precision", "fp32"), "soup": run_paths,
                 **celldetection_format(model, weights, score_thresh=score_thresh)}
        write_with(out / layout.BEST, lambda tmp: torch.save(state, tmp))
    except BaseException:
        restore_replaced_run(out)
        raise
    discard_replaced_run(out)
    summary = {**versions(), "stage": "soup", "runs": run_paths, "init": inits[0][0],
               "init_sha256": inits[0][1],
               "val": str(Path(val).resolve()) if val is not None else None,
               "n_val_images": n_val, "score_thresh": score_thresh,
               "run_score_thresh": thresholds,
               "run_val_f1": [ckpt.get("best_f1") for _, ckpt in loaded], **validated}
    write_json(out / layout.RUN_INFO, summary)
    return summary
