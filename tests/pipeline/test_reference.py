"""docs/config-reference.md lists every config key with the code's default."""

import dataclasses
from pathlib import Path

from cellsynth.pipeline.config import PipelineConfig
from cellsynth.pipeline.reference import config_reference

PAGE = Path(__file__).parents[2] / "docs" / "config-reference.md"


def test_the_committed_reference_is_what_the_code_generates():
    assert PAGE.read_text() == config_reference(), (
        "regenerate: python -m cellsynth.pipeline.reference > docs/config-reference.md")


def test_every_key_of_a_run_config_has_a_row_with_its_default():
    page = config_reference()
    for f in dataclasses.fields(PipelineConfig):
        assert f"| `{f.name}" in page, f.name
    for f in dataclasses.fields(PipelineConfig().simulate):
        assert f"| `simulate.{f.name}` |" in page, f.name
    assert "| `simulate.n` | `200` |" in page
    assert "| `predict.overlap` | `96` |" in page
    assert "defaults as in the detector training table except steps 300, lr 0.0003" in page
    assert "| `steps` | `1000` |" in page  # the training table: TrainConfig's own
