"""The config reference (docs/config-reference.md): every key a `cellsynth run` or
`cellsynth experiment` YAML accepts, with its default and the comment the code gives it,
read from the config dataclasses themselves, so the page cannot miss a key or state a
default the code does not have (a test regenerates it and compares)."""

from __future__ import annotations

import dataclasses
import inspect
import io
import re
import tokenize
import typing
from typing import Any

__all__ = ["config_reference"]

_INTRO = """# Config reference

Every key a `cellsynth run` config and a `cellsynth experiment` config accepts, with its
default and what the code says about it. Generated from the config classes by
`python -m cellsynth.pipeline.reference > docs/config-reference.md` (a test fails when this
page and the code disagree). Keys you leave out take these defaults; an unknown key is
refused in one line naming the file and the valid keys. Worked examples: `configs/*.yaml`
and the README.
"""


def _comments(cls: type) -> dict[str, str]:
    """Each field's comment in the source of ``cls``: the ``#`` comment on its line, else
    the ``#`` lines right above it (a block comment)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    trailing: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            trailing[token.start[0]] = token.string.lstrip("#").strip()
    found: dict[str, str] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for number, line in enumerate(lines, 1):
        match = re.match(r"\s+(\w+)\s*:", line)
        if not match or match.group(1) not in names or match.group(1) in found:
            continue
        if number in trailing and not line.lstrip().startswith("#"):
            found[match.group(1)] = trailing[number]
            continue
        above = []
        back = number - 1
        while back >= 1 and lines[back - 1].lstrip().startswith("#"):
            above.insert(0, lines[back - 1].lstrip().lstrip("#").strip())
            back -= 1
        if above:
            found[match.group(1)] = " ".join(above)
    return found


# what the fields the code leaves uncommented do, by class and field name
_SAID = {
    "name": "its name (the run's or experiment's title; a setting's folders and rows)",
    "device": "cpu, cuda or cuda:N (`cellsynth init` writes cuda where it finds a GPU)",
    "preset": "merker, nissl, he or fluo (README: `cellsynth simulate`)",
    "n": "simulated training images", "size": "side of each simulated image (px)",
    "workers": "processes that simulate (simulate:) or prepare batches (training: 0 = in "
               "the loop; 4 on a GPU)",
    "tile": "side of the tiles an image is predicted in (null: 1024)",
    "overlap": "overlap of neighbouring tiles (px)",
    "enabled": "run this stage / use these augmentations",
    "n_crops": "C2ST crops per image set", "epochs": "C2ST epochs per fold",
    "folds": "C2ST cross-validation folds", "crop": "training crop side (px)",
    "batch": "crops per step", "model": "detector network: slim_u22, tiny_u22, u22 or "
                                        "resnet18_unet", "lr": "peak learning rate",
    "pseudo": "fraction of each batch from pseudo-labelled images (0: off)",
    "seeds": "one detector (and draw of the k images) per seed",
    "settings": "what is compared: see the settings table",
    "bootstrap": "resamples of the paired bootstrap over test units",
    "refinement_iterations": "the CPN's outline refinement steps",
    "steps": "training steps", "warmup": "steps of linear learning-rate warm-up",
    "weight_decay": "AdamW weight decay", "seed": "random seed of this training",
    "val_every": "validate (F1, threshold, best.pt) every this many steps",
    "checkpoint_every": "write last.pt every this many steps",
    "lr_g": "refiner (generator) learning rate", "lr_d": "critic learning rate",
    "beta1": "Adam beta1 of both", "beta2": "Adam beta2 of both",
    "sample_every": "write a sample grid every this many steps",
    "d_scales": "image scales the critic sees",
    "simulate": "the simulation (`cellsynth simulate`; `fit_from` fits it first)",
    "predict": "how real.test and real.unlabeled are predicted (`cellsynth predict`)",
    "realism": "the realism stage: C2ST and the other distances, refined against real",
    "augment": "random changes of the training crops",
}


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _shown(value: Any) -> str:
    from cellsynth.config import to_dict

    if dataclasses.is_dataclass(value):
        return ""
    value = to_dict(value) if isinstance(value, (tuple, list, dict)) else value
    if isinstance(value, tuple):
        value = list(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return f"`{value!r}`".replace("'", "") if isinstance(value, (list, dict)) else \
        f"`{value}`"


def _differences(value: Any) -> str:
    """What a section's default differs in from its class's defaults ("steps 300, ...")."""
    from cellsynth.config import to_dict

    own, base = to_dict(value), to_dict(type(value)())
    return ", ".join(f"{k} {own[k]}" for k in own if own[k] != base.get(k))


def _rows(cls: type, prefix: str, default: Any, apart: dict[type, str]) -> list[str]:
    """The table rows of ``cls``'s keys under ``prefix``; sections of a class in ``apart``
    are one row pointing to that class's own table (title given)."""
    comments = _comments(cls)
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        value = getattr(default, f.name) if default is not None else _default(f)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hints[f.name]):
            doc = inspect.getdoc(hints[f.name]) or ""
            said = (comments.get(f.name) or _SAID.get(f.name)
                    or (" ".join(doc.split("\n\n")[0].split()).rstrip(".")
                        if not doc.startswith(hints[f.name].__name__) else ""))
            if hints[f.name] in apart:
                changed = _differences(value)
                said = "; ".join(t for t in (said, f"defaults as in {apart[hints[f.name]]}"
                                             + (f" except {changed}" if changed else "")) if t)
                rows.append(f"| `{key}:` | (section) | {said} |")
                continue
            rows.append(f"| `{key}:` | (section) | {said} |")
            rows += _rows(hints[f.name], f"{key}.", value, apart)
            continue
        text = (comments.get(f.name) or _SAID.get(f.name, "")).replace("|", "\\|")
        rows.append(f"| `{key}` | {_shown(value)} | {text} |")
    return rows


def _table(title: str, cls: type, note: str, apart: dict[type, str]) -> str:
    head = f"## {title}\n\n{note}\n\n| key | default | what it does |\n|---|---|---|\n"
    return head + "\n".join(_rows(cls, "", cls(), apart)) + "\n"


def config_reference() -> str:
    """The Markdown page of every config key (see the module docstring)."""
    from cellsynth.pipeline.config import PipelineConfig
    from cellsynth.pipeline.experiment import ExperimentConfig, Setting
    from cellsynth.refine.config import RefineConfig
    from cellsynth.segment.trainer import TrainConfig

    training = "the detector training table"
    apart = {TrainConfig: training, RefineConfig: "the refiner table"}
    setting = ("## `settings:` of an experiment (one entry per setting)\n\n"
               "Each entry needs `name`, `data` and `k`; the rest change how that setting "
               "trains or predicts (see the README's experiment section).\n\n"
               "| key | default | what it does |\n|---|---|---|\n"
               + "\n".join(_rows(Setting, "", None, apart)) + "\n")
    return "\n".join([
        _INTRO,
        _table("`cellsynth run CONFIG.yaml`", PipelineConfig,
               "`finetune:` starts from the pretrained detector: its network (model, order, "
               "samples, refinement_iterations, head_kernel) is `pretrain:`'s where "
               "`finetune:` names none.", apart),
        _table("`cellsynth experiment CONFIG.yaml`", ExperimentConfig,
               "`train:`, `test:` (and `unlabeled:`) are folders relative to the YAML; the "
               "test split is read only after every detector is trained.", apart),
        setting,
        _table("The detector training table: `pretrain:`, `finetune:`, `supervised:`",
               TrainConfig, "Also what `cellsynth train --config FILE` reads.", apart={}),
        _table("The refiner table: `refine:`", RefineConfig,
               "Also what `cellsynth fit-refiner --config FILE` reads.", apart={})])


if __name__ == "__main__":
    print(config_reference(), end="")
