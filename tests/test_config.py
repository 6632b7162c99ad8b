from dataclasses import dataclass, field

import pytest

from cellsynth.config import from_dict, load_yaml, override, to_dict
from cellsynth.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    rate: float = 0.5
    sizes: tuple[int, int] = (1, 2)


@dataclass(frozen=True)
class Outer:
    name: str = "x"
    steps: int = 10
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


def test_nested_override_keeps_other_values():
    config = override(Outer(), {"inner": {"rate": 2}})
    assert config.inner.rate == 2.0 and isinstance(config.inner.rate, float)
    assert config.inner.sizes == (1, 2) and config.steps == 10


@pytest.mark.parametrize("data, message", [
    ({"stepz": 3}, "unknown key.*'stepz'.*valid keys: name, steps, inner"),
    ({"steps": "ten"}, r"config\.steps: expected an integer, got 'ten'"),
    ({"steps": 2.5}, "expected an integer"),
    ({"steps": 0}, "steps must be >= 1, got 0"),
    ({"inner": {"sizes": [1]}}, r"config\.inner\.sizes: expected 2 values"),
    ({"inner": 3}, "expected a mapping"),
])
def test_invalid_values(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(Outer, data)


def test_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_yaml(bad)
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(tmp_path / "list.yaml")


def test_to_dict_roundtrip():
    config = Outer(name="y", inner=Inner(sizes=(3, 4)))
    assert from_dict(Outer, to_dict(config)) == config


def test_yaml_errors_name_the_line_and_a_folder_is_refused(tmp_path):
    from cellsynth.config import load_yaml
    from cellsynth.errors import ConfigError
    from cellsynth.pipeline.config import load_pipeline_config

    bad = tmp_path / "bad.yaml"
    bad.write_text("simulate:\n  preset: merker\n  n: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:4:1: invalid YAML"):
        load_yaml(bad)
    with pytest.raises(ConfigError, match="is a folder, expected a YAML config file"):
        load_yaml(tmp_path)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match="empty.yaml: empty pipeline config"):
        load_pipeline_config(empty)


@dataclass(frozen=True)
class Cell:
    name: str = "a"
    diameter_um: float = 10.0


@dataclass(frozen=True)
class Scene:
    cells: tuple[Cell, ...] = ()
    steps: int = 1


def test_key_errors_read_as_places_in_a_file_with_a_guess_and_the_entry_named(tmp_path):
    """`cfg.yaml.pretrain: unknown key(s)` read like a file name; a typo got no guess; an
    entry of a list was named by its index only."""
    with pytest.raises(ConfigError, match=r"^cfg.yaml: inner: unknown key\(s\) 'rte' \(did "
                                          r"you mean 'rate'\?\); valid keys: rate, sizes$"):
        from_dict(Outer, {"inner": {"rte": 1}}, where="cfg.yaml")
    with pytest.raises(ConfigError, match=r"^config: unknown key\(s\) 'nmae', 'zzz' \(did you "
                                          r"mean 'name' for 'nmae'\?\)"):
        from_dict(Outer, {"nmae": "y", "zzz": 1})
    with pytest.raises(ConfigError, match=r"^cfg.yml: cells\[1\] \('glia'\): unknown key\(s\) "
                                          r"'diameter' \(did you mean 'diameter_um'\?\)"):
        from_dict(Scene, {"cells": [{"name": "neuron"}, {"name": "glia", "diameter": 3}]},
                  where="cfg.yml")
    with pytest.raises(ConfigError, match=r"^x\.cells\[0\]: expected a mapping, got 3$"):
        from_dict(Scene, {"cells": [3]}, where="x")


def test_numbers_in_scientific_notation_are_numbers(tmp_path):
    """`lr: 1e-3` (as --help writes the default) was refused as "expected a number, got
    '1e-3'": YAML 1.1 reads an exponent without a dot as a string (audit)."""
    from cellsynth.segment.trainer import TrainConfig

    path = tmp_path / "train.yaml"
    path.write_text("lr: 1e-3\nweight_decay: 5E-5\nsteps: 20\nname: '1e-3'\nother: e5\n")
    data = load_yaml(path)
    assert data == {"lr": 0.001, "weight_decay": 5e-05, "steps": 20, "name": "1e-3",
                    "other": "e5"}
    assert isinstance(data["steps"], int)
    assert from_dict(TrainConfig, {k: data[k] for k in ("lr", "steps")}).lr == 0.001
