"""``cellsynth init DATA``: a pipeline config for a biologist's own folders, from the recipes
measured on the shared datasets.

DATA is either the README's layout (``unlabeled/``, ``train/``, ``val/``, ``test/``, any of
them present) or one folder of images, with or without ``labels/``. What the config needs
that a user would otherwise look up:

- which simulator preset is closest to the stain, guessed from a few images (fluorescence:
  a dark background; Merker / silver: gray on a bright background; H&E: RGB with a pink
  eosin background or purple hematoxylin nuclei; Nissl: RGB with blue-violet cells on a pale
  background) and said with its evidence; ``--preset`` overrides it;
- the images' pixel size (``--pixel-size``, else meta.json, else what the files state); when
  unknown the config says so and the command prints one line about it;
- the recipe: with annotated images one of two (``--recipe``), fine-tuning with replay
  (not on H&E) and TTA in both:

  - ``accurate`` (``configs/nissl-k2.yaml``): no refiner, 2500 pretraining steps on the
    plain simulation chosen on held-out simulated images, 5 fine-tunings of 240 steps
    averaged (soup), detections paler than 95 % of the annotated cells dropped and box NMS
    at IoU 0.5 (Nissl only); on Nissl with 2 images 0.756 / 0.516 F1@0.5 / F1avg (3 seeds),
    29-49 min on 2 cores with native bf16;
  - ``fast`` (``configs/nissl-k2-fast.yaml``): the refiner, 600 pretraining steps on its
    images, one fine-tuning of 300 steps; 0.723 / 0.450, 12.5 min with native bf16, 74
    without. On H&E 5 fine-tunings averaged (soup): +0.031 F1@0.5 over one with 3
    annotated tcga_lgg images (3 seeds), and box NMS at IoU 0.5: +0.004 [+0.002, +0.007].

  By default ``accurate`` for Nissl where training is fast (a CUDA GPU, or a CPU with
  native bf16: ~2.5x the fast recipe's time, ~3 h on 2 cores without), else ``fast``: the
  accurate recipe's gains were measured on Nissl only. With no annotated images the
  zero-label recipe (``configs/nissl-k0.yaml``: the refiner with the semantic consistency
  loss, thresholds from held-out refined images). On H&E the simulation is first fitted to
  the unlabeled images (measured +0.12-0.14 F1@0.5 with zero labels on both H&E sets,
  docs/results.md).

On a machine with a CUDA GPU the config runs there (``device: cuda``, ``--device`` overrides)
and prepares training batches in 4 background processes (``workers: 4``: a step 3.6x faster
on an H200, docs/results.md); elsewhere on the CPU.

The file is validated by loading it as ``cellsynth run`` will, written atomically and never
over an existing one without ``force``.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import numpy as np

from cellsynth.errors import ConfigError, DatasetError, OutputExistsError
from cellsynth.io.datasets import IMAGE_FOLDERS, LABEL_FOLDERS, Dataset, load_dataset, sub_folder
from cellsynth.io.images import IMAGE_SUFFIXES
from cellsynth.pipeline.stain import PRESETS, StainGuess, channel_count, guess_stain

__all__ = ["ROLES", "StainGuess", "guess_stain", "find_folders", "init_config"]

ROLES = ("unlabeled", "train", "val", "test")
def run_name(data: str | os.PathLike) -> str:
    """The name of a config (and run) for ``data``: its folder's name, with its parent's
    where that says little (``images``, ``train``: ``dsb2018-train``)."""
    path = Path(data).resolve()
    if path.name.lower() in IMAGE_FOLDERS and path.parent.name:
        path = path.parent
    if path.name in ROLES + ("data",) and path.parent.name:
        return f"{path.parent.name}-{path.name}"
    return path.name or "data"


def _channel_preview(image: Path, config: Path) -> Path:
    """``<config stem>-channels.png`` beside the config: each channel of ``image`` (a
    window of its tissue for a whole section) side by side, contrast stretched, so that a
    user sees which one holds the cells before a run trains on one."""
    from cellsynth.io.images import to_uint8, write_image
    from cellsynth.io.normalize import normalize
    from cellsynth.io.sections import open_image, reads_lazily, tissue_windows
    from cellsynth.viz import as_rgb8, image_grid

    window = open_image(image, all_channels=True)
    if reads_lazily(image):
        window = np.asarray(tissue_windows(window, 1024, 1)[0][2])
    window = window[:1024, :1024]
    tiles = [as_rgb8(to_uint8(normalize(window[..., c], where=None)))
             for c in range(window.shape[2])]
    path = config.with_name(config.stem + "-channels.png")
    write_image(path, image_grid(tiles, columns=len(tiles)))
    return path


def find_folders(data: str | os.PathLike) -> dict[str, Path]:
    """{role: folder} of ``data``: its ``unlabeled/``, ``train/``, ``val/``, ``test/``
    subfolders, or ``data`` itself (annotated: train and unlabeled; else unlabeled). Train,
    val and test must be annotated (one line naming the first image without labels); without
    ``unlabeled/`` the refiner learns from the training images, labels ignored."""
    return {role: dataset.root for role, dataset in _find_datasets(data).items()}


# other names users give the role folders (any case): `training/`, `Test/`, `unlabelled/`
_ROLE_NAMES = {"unlabeled": ("unlabeled", "unlabelled", "unannotated"),
               "train": ("train", "training"), "val": ("val", "valid", "validation"),
               "test": ("test", "testing")}


def role_folders(data: Path) -> dict[str, Path]:
    """{role: sub-folder of ``data``} by name (:data:`_ROLE_NAMES`, any case; the role's
    own name first where two would match)."""
    subfolders = [d for d in sorted(data.iterdir()) if d.is_dir()]
    found = {}
    for role in ROLES:
        for name in _ROLE_NAMES[role]:
            match = [d for d in subfolders if d.name == name] or [
                d for d in subfolders if d.name.lower() == name]
            if match:
                found[role] = match[0]
                break
    return found


def _say_unused(data: Path, used: list[Path]) -> None:
    """Warn about sub-folders of ``data`` that hold images but no role was found in (an
    annotated ``Training Data/`` beside ``unlabelled/`` made a zero-label recipe without a
    word), naming the folder names each role is read from."""
    def holds_images(folder: Path) -> bool:
        inner = sub_folder(folder, IMAGE_FOLDERS) or folder
        try:
            return any(f.suffix.lower() in IMAGE_SUFFIXES for f in inner.iterdir())
        except OSError:
            return False

    unused = [d.name for d in sorted(data.iterdir()) if d.is_dir() and d not in used
              and not d.name.startswith(".") and d.name.lower() not in IMAGE_FOLDERS
              + LABEL_FOLDERS and holds_images(d)]
    if unused:
        import warnings

        names = "; ".join(f"{role}: {'/, '.join(_ROLE_NAMES[role])}/" for role in ROLES)
        warnings.warn(f"{data}: sub-folder(s) {', '.join(unused[:4])} hold images but are not "
                      f"used: init reads its folders by name ({names}, any case); rename "
                      f"one to use it", stacklevel=3)


def _find_datasets(data: str | os.PathLike) -> dict[str, Dataset]:
    """{role: loaded folder} as :func:`find_folders` says, each folder read once."""
    data = Path(data)
    if data.is_file():  # (init reads a folder of images; one image is not a dataset)
        raise DatasetError(f"{data}: a file, not a folder; give the folder of images it is in "
                           f"({data.parent}) or a project of train/, val/, test/, unlabeled/")
    if not data.is_dir():
        raise DatasetError(f"{data}: no such folder")
    if (data.name.lower() in IMAGE_FOLDERS
            and sub_folder(data.parent, LABEL_FOLDERS) is not None):
        from cellsynth.hardware import announce

        # (the images alone would make a zero-label recipe of an annotated folder)
        announce(f"{data}: reading {data.parent}, its dataset with the labels beside it")
        data = data.parent
    folders = role_folders(data)
    found = {role: load_dataset(folder, require_labels=role != "unlabeled")
             for role, folder in folders.items()}
    if folders:
        _say_unused(data, list(folders.values()))
    if not found:
        dataset = load_dataset(data)
        annotated = any(s.label_path is not None for s in dataset)
        return {"unlabeled": dataset, "train": dataset} if annotated else {"unlabeled": dataset}
    if "unlabeled" not in found:
        source = found.get("train") or found.get("val")
        if source is None:
            raise DatasetError(f"{data}: only test/ found; the refiner needs real images "
                               f"without labels (unlabeled/) or annotated ones (train/)")
        found["unlabeled"] = source
    return found


def _pixel_size(datasets: dict[str, Dataset]) -> tuple[float | None, str]:
    """The pixel size the folders state (meta.json, else what all of a folder's image files
    state alike) and where it comes from. Folders that state different ones are refused in
    one line: a run takes one for all its real images (``real.pixel_size_um``), so the
    annotated crops of a 20x scan beside 40x sections would be resampled by the wrong
    factor without a word. Where one folder's own files state several (a folder from two
    objectives), none is taken: each image is read at its own (a size another folder states
    was written and overruled them all; :func:`_mixed_pixel_sizes` says which)."""
    from cellsynth.io.resample import RELATIVE_TOLERANCE
    from cellsynth.pipeline import layout

    if any(_mixed_pixel_sizes({role: dataset}) for role, dataset in datasets.items()
           if dataset is not None and dataset.meta.get("pixel_size_um") is None):
        return None, ""
    stated = []
    for role in ROLES:
        dataset = datasets.get(role)
        if dataset is not None and dataset.pixel_size_um is not None and all(
                dataset.root != other.root for _, _, other in stated):
            where = (layout.META if dataset.meta.get("pixel_size_um") is not None
                     else "the image files")
            stated.append((dataset.pixel_size_um, f"{where} of {dataset.root}", dataset))
    if not stated:
        return None, ""
    first = stated[0][0]
    if any(abs(size / first - 1.0) > RELATIVE_TOLERANCE for size, _, _ in stated[1:]):
        said = "; ".join(f"{size:g} um/px ({where})" for size, where, _ in stated)
        raise DatasetError(f"the folders state different pixel sizes: {said}. A run takes one "
                           f"for all its real images (real.pixel_size_um); resample one set to "
                           f"the other's, or name the one to use with --pixel-size")
    return first, stated[0][1]


def _mixed_pixel_sizes(datasets: dict[str, Dataset]) -> dict[float, int]:
    """Images per pixel size their files state, where they state several (a folder from more
    than one microscope or objective: each image is then read at its own); else empty."""
    counts: dict[float, int] = {}
    for dataset in {d.root: d for d in datasets.values() if d is not None}.values():
        for sample in dataset:
            size = dataset.pixel_size_of(sample)
            if size is not None:
                counts[round(size, 4)] = counts.get(round(size, 4), 0) + 1
    return counts if len(counts) > 1 else {}


def _relative(path: Path, config: Path) -> str:
    """``path`` as the config will resolve it: relative to the config's folder where the data
    lies under it (the two move together), else absolute; as a YAML scalar, quoted where
    YAML would read it otherwise (``slides #2`` is a comment after ``slides``, ``run: 3`` a
    mapping)."""
    relative = Path(os.path.relpath(path.resolve(), config.resolve().parent))
    return _scalar((path.resolve() if relative.parts[:1] == ("..",) else relative).as_posix())


def _scalar(text: str) -> str:
    """``text`` as a YAML scalar that reads back as that string (quoted where needed)."""
    import yaml

    return yaml.safe_dump(text, width=1 << 30, allow_unicode=True).removesuffix(
        "\n...\n").rstrip("\n")


RECIPES = ("accurate", "fast")

_ACCURATE = """\
# no refiner: once annotated images fine-tune the detector, refined and simulated
# pretraining score alike (3 datasets); your unlabeled images are only predicted
refiner: false
# the pretrained checkpoint is chosen on held-out simulated images: zero-label F1 on the
# annotated ones would stop it at ~1000 steps, too early for the fine-tuning
pretrain_val: synthetic
pretrain: {{steps: 2500, crop: 192, batch: 4, lr: 0.001, val_every: 100{workers}}}
{replay_note}
{lr_note}
finetune: {{steps: 240, crop: 192, batch: 4, lr: {lr}, warmup: 5, val_every: 50{replay}{workers}}}
# 5 fine-tunings (other crops of the same images) with their weights averaged: +0.024 F1@0.5
# over 3 x 400 steps on Nissl with 2 images (docs/results.md)
soup: 5
"""

_ANNOTATED = """\
refine: {{steps: 1500, crop: 128, batch: 4, width: 48, blocks: 3, spade_hidden: 32,
         boundary_width: 2, self_reg: 1.0, self_reg_downsample: 2, feature_matching: 10.0,
         d_scales: 2, d_layers: 3, buffer_size: 256, lr_g: 1.0e-4, lr_d: 4.0e-4,
         sample_every: 250, checkpoint_every: 250}}
pretrain: {{steps: 600, crop: 192, batch: 4, lr: 0.001, val_every: 100{workers}}}
{replay_note}
{lr_note}
finetune: {{steps: 300, crop: 192, batch: 4, lr: {lr}, warmup: 5, val_every: 50{replay}{workers}}}
"""

# On H&E (tcga_lgg, 3 of 28 images, refined pretraining, 3 seeds) the average of 5
# fine-tunings gained +0.031 [+0.021, +0.040] F1@0.5 over one; against all 28 images -0.005
# then -0.009 F1@0.5 (two refiners), -0.012 with TTA on both; docs/results.md "H&E: with
# the same TTA on both sides"
_HE_SOUP = """\
# 5 fine-tunings (other crops of the same images) with their weights averaged: +0.031 F1@0.5
# over one on H&E with 3 annotated images, ~0.01 below all 28 annotated (docs/results.md)
soup: 5
"""

# Fine-tuning at the pretraining's learning rate 1e-3 instead of 3e-4: +0.029 and +0.032 F1@0.5
# on Nissl with 2 images (experiment and the nissl-k2 recipe, 3 seeds each), +0.013 on H&E with
# 3 (tcga_lgg); on fluorescence (dsb2018_fluo, 5 images, replay, 3 seeds) level in F1@0.5
# (+0.000 [-0.005, +0.005]), +0.006 [+0.000, +0.010] F1avg, and a third of the spread over
# seeds (docs/results.md, seventeenth session): one lr for every stain.
_LR_NOTE = ("# lr 1e-3, the pretraining's: +0.03 F1@0.5 on Nissl, +0.013 on H&E, +0.006 F1avg on "
            "fluorescence over 3e-4")

# Replay (half of each fine-tuning batch from the pretraining images) helped on Nissl (2
# images: +0.016 F1avg) and fluorescence (5 images: +0.022 F1@0.5) but cost on H&E (tcga_lgg,
# 3 images: -0.015 F1@0.5, -0.035 F1avg; docs/results.md), where 3 annotated images alone
# beat the fitted simulation by far (0.820 vs 0.679 F1@0.5): replay there only pulls the
# detector back towards the weaker teacher.
_REPLAY = {
    True: ("# replay: half of each fine-tuning batch from the pretraining images, so a few "
           "annotated\n# images cannot pull the detector away from them", ", replay: 0.5"),
    False: ("# no replay on H&E: a few annotated H&E images alone beat the simulation by far, "
            "and\n# replaying it cost 0.015 F1@0.5 on tcga_lgg (docs/results.md)", ""),
}

_ZERO_LABEL = """\
# the S+U refiner with the semantic consistency loss: a frozen judge trained on the
# simulation must see the same cells before and after refinement (the zero-label setting
# that beat the plain simulation on Nissl and on fluorescence)
refine: {{steps: 2500, crop: 128, batch: 4, width: 48, blocks: 3, spade_hidden: 32,
         boundary_width: 2, self_reg: 1.0, self_reg_downsample: 2, feature_matching: 10.0,
         d_scales: 2, d_layers: 3, buffer_size: 256, lr_g: 1.0e-4, lr_d: 4.0e-4,
         sample_every: 250, checkpoint_every: 250, consistency: 10.0}}
pretrain: {{steps: 1000, crop: 192, batch: 4, lr: 0.001, val_every: 100{workers}}}
"""

# batch workers on a GPU: the training loop's own crops and targets were half of a step there
GPU_WORKERS = 4


_RECIPE_LINES = {
    "accurate": ("the accurate few-annotation recipe (configs/nissl-k2.yaml: 0.756 / 0.516 "
                 "F1@0.5 / F1avg on Nissl with 2 images, 29-49 min on 2 CPU cores with native "
                 "bf16, ~4 h in fp32 on 2 AVX2 cores; `run --estimate` "
                 "times it on this machine; `cellsynth init --recipe fast` for the "
                 "2.5x faster one)"),
    "fast": ("the fast few-annotation recipe (configs/nissl-k2-fast.yaml: 0.723 / 0.450 on "
             "Nissl with 2 images, 12.5 min on 2 CPU cores with native bf16, 74 min in fp32 "
             "on 2 AVX2 cores; `run --estimate` times it on this "
             "machine; `cellsynth init --recipe accurate` outlines better in 2.5x the time)"),
    None: "the zero-label recipe (configs/nissl-k0.yaml): no annotated images",
}


def _config_text(name: str, folders: dict[str, Path], out: Path, stain: StainGuess,
                 guessed: bool, pixel: float | None, pixel_from: str,
                 device: str = "cpu", device_from: str = "",
                 recipe: str | None = None, recipe_from: str = "",
                 channel: int | None = None, channels: int = 1,
                 channel_guessed: bool = False) -> str:
    """The config's text; ``recipe``: "accurate" or "fast" with annotated images (``train``
    in ``folders``), None without."""
    annotated = "train" in folders
    lines = [
        f"# Written by `cellsynth init` for {name}; edit freely. Run it with",
        f"#   cellsynth run {shlex.quote(str(out))} --out {shlex.quote(f'runs/{name}')}",
        f"# Stain: preset {stain.preset} ("
        + (f"guessed from the images: {stain.reason})" if guessed else "chosen by --preset)"),
        "#   if it is the wrong one: merker (gray, BigBrain), nissl, he or fluo.",
        f"# Recipe: {_RECIPE_LINES[recipe]}",
    ] + ([f"#   ({recipe_from})"] if recipe is not None and recipe_from else []) + [
        f"name: {_scalar(name)}",
        "seed: 0                # every stage derives its randomness from this",
        f"device: {device}" + (f"           # {device_from}" if device_from else ""),
    ]
    n = 300 if recipe == "fast" else 400
    fit = ", fit_from: real.unlabeled" if stain.preset == "he" else ""
    lines.append(f"simulate: {{preset: {stain.preset}, n: {n}, size: 256, workers: 2, "
                 f"n_val: 16{fit}}}" + ("   # fitted to your unlabeled images first "
                                         "(cellsynth fit-simulator)" if fit else ""))
    lines.append("real:")
    comments = {"unlabeled": ("used WITHOUT labels by the refiner" if recipe != "accurate"
                              else "predicted (labels unused; no refiner in this recipe)"),
                "train": "annotated: fine-tuning",
                "val": "annotated: score threshold and checkpoint",
                "test": "held out: predicted and scored at the end, never trained on"}
    roles = dict(folders)
    if annotated and "val" not in roles:
        roles["val"] = roles["train"]
        comments["val"] = "the annotated training images choose threshold and checkpoint"
    for role in ROLES:
        if role in roles:
            lines.append(f"  {role}: {_relative(roles[role], out)}   # {comments[role]}")
    if pixel is not None:
        lines.append(f"  pixel_size_um: {pixel:g}   # from {pixel_from}; rescaled to the "
                     f"simulation's")
    else:
        lines.append("  pixel_size_um: null   # UNKNOWN: set your images' um per pixel (20x "
                     "~0.5, 40x ~0.25), else they are taken at the simulation's")
    if channels > 1:
        lines.append(f"  channel: {channel}   # of your images' {channels} channels "
                     f"(0-{channels - 1}), the one every stage uses" + (
                         ": CHECK it is the one with the cells (e.g. the nuclear stain)"
                         if channel_guessed else " (--channel)"))
    text = "\n".join(lines) + "\n"
    workers = f", workers: {GPU_WORKERS}" if device.startswith("cuda") else ""
    if annotated:
        note, replay = _REPLAY[stain.preset != "he"]
        lr_note, lr = _LR_NOTE, "0.001"
        template = _ACCURATE if recipe == "accurate" else _ANNOTATED
        text += template.format(replay_note=note, replay=replay, lr_note=lr_note, lr=lr,
                                workers=workers)
        if recipe == "fast" and stain.preset == "he":
            text += _HE_SOUP
    else:
        text += _ZERO_LABEL.format(workers=workers)
    if annotated and stain.preset == "nissl":
        gain = ("(+0.011 F1@0.5 and +0.008 F1avg on Nissl with 2 images); nms: packed somata "
                "whose boxes\n# overlap by IoU <= 0.5 stay apart (+0.008 F1@0.5; "
                "celldetection's default 0.2)" if recipe == "accurate" else
                "and nms: packed somata whose\n# boxes overlap by IoU <= 0.5 stay apart "
                "(celldetection's default 0.2): both +0.013 [+0.003, +0.024]\n# F1@0.5, "
                "+0.002 F1avg on the fast recipe (3 seeds, paired, docs/results.md)")
        text += ("# faint_percentile: detections paler than 95 % of the annotated cells are "
                 f"dropped\n# {gain}\n"
                 "predict: {overlap: 96, tta: true, faint_percentile: 5, nms: 0.5}   "
                 "# TTA: 8 views vote\n")
    elif stain.preset == "he":
        text += ("# nms: packed nuclei whose boxes overlap by IoU <= 0.5 stay apart (+0.004 "
                 "F1@0.5 on tcga_lgg\n# H&E for 3 and for all 28 annotated images; "
                 "celldetection's default 0.2)\n"
                 "predict: {overlap: 96, tta: true, nms: 0.5}   # TTA: 8 views vote\n")
    else:
        text += "predict: {overlap: 96, tta: true}   # 8 views vote (8x the prediction time)\n"
    text += "realism: {enabled: false}   # `cellsynth realism` runs the C2ST apart\n"
    return text


def _device(device: str | None) -> tuple[str, str]:
    """(the device the config runs on, why): ``device`` as given, else the first CUDA GPU
    where torch sees one, else the CPU."""
    if device is not None:
        import re

        from cellsynth.pipeline.config import DEVICES
        if not re.fullmatch(DEVICES, device):
            raise ConfigError(f"--device must be cpu, cuda or cuda:N, got {device!r}")
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            # (a config for another machine is legitimate; run refuses it here at once)
            return device, ("chosen by --device; this machine has no CUDA GPU, so run it "
                            "where there is one")
        return device, "chosen by --device"
    import torch

    if torch.cuda.is_available():
        return "cuda", (f"a GPU was found ({torch.cuda.get_device_name(0)}); cpu to run on "
                        f"the CPU")
    return "cpu", "no CUDA GPU found"


def _recipe(recipe: str | None, preset: str, device: str) -> tuple[str, str]:
    """(the annotated recipe, why): ``recipe`` as given; else ``accurate`` for Nissl where
    training is fast (a CUDA device, or a CPU with native bf16), else ``fast``."""
    if recipe is not None:
        if recipe not in RECIPES:
            raise ConfigError(f"--recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
        return recipe, "chosen by --recipe"
    if preset != "nissl":
        return "fast", (f"the accurate recipe's gains were measured on Nissl, not {preset}; "
                        f"--recipe accurate to try it")
    if device.startswith("cuda"):
        return "accurate", "training on a GPU: minutes either way"
    from cellsynth.hardware import choose_precision

    precision = choose_precision("auto", "cpu")
    if precision.bf16:
        return "accurate", f"bf16 training here: {precision.reason.removeprefix('auto: ')}"
    return "fast", (f"fp32 training here: {precision.reason.removeprefix('auto: ')}; the "
                    f"accurate recipe would take ~4 h on 2 AVX2 cores (the fast one ~75 min), "
                    f"--recipe accurate to run "
                    f"it anyway (most of it pretraining, which `run --reuse` then takes into "
                    f"later runs: ~1 h each)")


def init_config(data: str | os.PathLike, out: str | os.PathLike, *,
                preset: str | None = None, pixel_size_um: float | None = None,
                force: bool = False, device: str | None = None,
                recipe: str | None = None, channel: int | None = None) -> dict[str, Any]:
    """Write a pipeline config for the folders of ``data`` to ``out`` (see the module)."""
    from cellsynth.io.files import atomic_path
    from cellsynth.pipeline.config import check_splits_held_out, load_pipeline_config

    out = Path(out)
    if out.exists() and not force:
        raise OutputExistsError(f"{out}: exists; choose another name or pass --force")
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"preset must be one of {', '.join(PRESETS)}, got {preset!r}")
    datasets = _find_datasets(data)
    check_splits_held_out(datasets)  # (a test/ copied from train/ scored as held out)
    folders = {role: dataset.root for role, dataset in datasets.items()}
    first = next(iter(datasets["unlabeled"])).image_path
    channels = channel_count(first)
    if channel is not None and channel >= channels:
        raise ConfigError(f"{first}: --channel {channel}, but the image has {channels} "
                          f"channel(s)" + (f" (0-{channels - 1})" if channels > 1 else ""))
    if channels > 1 and channel is None:
        channel = 0  # written into the config, with a comment to check it
        guessed_channel = True
    else:
        guessed_channel = False
    stain = guess_stain([s.image_path for s in datasets["unlabeled"]],
                        channel=channel if channels > 1 else None)
    guessed = preset is None
    if not guessed:
        stain = StainGuess(preset, "chosen by --preset", stain.n_images)
    pixel, pixel_from = ((pixel_size_um, "--pixel-size") if pixel_size_um is not None
                         else _pixel_size(datasets))
    name = run_name(data)
    device, device_from = _device(device)
    annotated = "train" in folders
    recipe, recipe_from = (_recipe(recipe, stain.preset, device) if annotated
                           else (None, "no annotated images"))
    text = _config_text(name, folders, out, stain, guessed, pixel, pixel_from, device,
                        device_from, recipe, recipe_from, channel, channels,
                        guessed_channel)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        tmp.write_text(text)
        load_pipeline_config(tmp)  # what `cellsynth run` will read; a failure writes nothing
    preview = _channel_preview(first, out) if channels > 1 else None
    return {"config": str(out), "preset": stain.preset, "guessed": guessed,
            "channel_preview": str(preview) if preview else None,
            "reason": stain.reason, "pixel_size_um": pixel, "pixel_from": pixel_from,
            "pixel_sizes_stated": {} if pixel is not None else _mixed_pixel_sizes(datasets),
            "roles": {role: str(folders[role]) for role in ROLES if role in folders},
            "annotated": annotated, "name": name, "device": device,
            "device_from": device_from, "recipe": recipe, "recipe_from": recipe_from,
            "channels": channels, "channel": channel if channels > 1 else None,
            "channel_guessed": guessed_channel}
