"""Typed configs: frozen dataclasses filled from YAML, unknown keys rejected, values checked once.

Each stage defines its own frozen dataclass (validated in ``__post_init__``); this module only
knows how to build one from a mapping (``from_dict``), merge YAML overrides into a default
(``override``) and write the resolved config back out as YAML (``to_yaml``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cellsynth.errors import ConfigError
from cellsynth.io.files import atomic_path

__all__ = ["from_dict", "override", "load_yaml", "to_dict", "to_yaml", "save_yaml", "ADDED",
           "errors_name"]

# Field metadata of an option added after runs existed: ``field(default=..., metadata=ADDED)``.
# to_dict leaves it out while it has its default, so the fingerprints (and saved configs) of
# earlier runs, which never had it, stay the same and `run`/`experiment` keep their work.
ADDED = {"added": True}

T = TypeVar("T")


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where=where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:  # (an entry with a name is named: cells)
            return tuple(_convert(v, args[0], f"{where}[{i}]" + (
                f" ({v['name']!r})" if isinstance(v, dict) and isinstance(v.get("name"), str)
                else "")) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if (origin or tp) is dict and not isinstance(value, dict):  # (a traceback when used)
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    if (origin or tp) is list and not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    return value


def _inside(where: str, key: str) -> str:
    """Where ``key`` of the mapping at ``where`` is: ``cfg.yaml: pretrain`` in a file (not
    ``cfg.yaml.pretrain``, which reads as a file name), ``pretrain.steps`` inside it."""
    if where.lower().endswith((".yaml", ".yml", ".json")):
        return f"{where}: {key}"
    return f"{where}.{key}"


def from_dict(cls: type[T], data: dict[str, Any], *, where: str = "config") -> T:
    """Build dataclass ``cls`` from a mapping; unknown keys and bad types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        close = {k: difflib.get_close_matches(str(k), list(fields), n=1, cutoff=0.7)
                 for k in unknown}
        guesses = [f"{c[0]!r}" + (f" for {k!r}" if len(unknown) > 1 else "")
                   for k, c in close.items() if c]
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}"
            + (f" (did you mean {', '.join(guesses)}?)" if guesses else "")
            + f"; valid keys: {', '.join(fields)}")
    kwargs = {k: _convert(v, hints[k], _inside(where, k)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where}: {err}") from err


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def to_dict(obj: Any) -> Any:
    """A dataclass as plain YAML/JSON-able data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)
                if not (f.metadata.get("added") and getattr(obj, f.name) == _default(f))}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def override(config: T, update: dict[str, Any], *, where: str = "config") -> T:
    """Return ``config`` with the (possibly nested) keys of ``update`` replaced, re-validated."""
    return from_dict(type(config), _merge(to_dict(config), update), where=where)


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader reading ``1e-3`` as a number, as YAML 1.2, Python and cellsynth's
    own ``--help`` write it (YAML 1.1 wants ``1.0e-3`` and read ``1e-3`` as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for a missing file or a syntax error."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, expected a YAML config file")
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)  # (a SafeLoader)
    except FileNotFoundError as err:
        raise ConfigError(f"{path}: no such config file") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read config file: {err}") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level")
    return data


def to_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def save_yaml(path: str | os.PathLike, config: Any) -> None:
    """Write a resolved config as YAML, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(to_yaml(config))


@contextlib.contextmanager
def errors_name(path: str | os.PathLike) -> Iterator[None]:
    """Config errors raised inside name ``path`` where they name no file of their own:
    "simulate: unknown preset 'hne'" became "run.yaml: simulate: unknown preset 'hne'"; one
    naming a data folder keeps its own."""
    try:
        yield
    except ConfigError as err:
        said = str(err)
        head = said.split(": ", 1)[0]
        if said.startswith(str(path)) or (os.sep in head and Path(head).exists()):
            raise
        raise ConfigError(f"{path}: {said}") from None
