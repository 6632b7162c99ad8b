"""The README's Python example calls what the package has, as it is called: every imported
name exists and every call binds to its function's signature (a renamed argument or a
function that is gone fails here, not on a user's first try)."""

import ast
import importlib
import inspect
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def _bind_calls(source: str) -> tuple[dict[str, object], list[str]]:
    """The names the block imports, and its calls of them that do not bind (as messages)."""
    tree = ast.parse(source)
    names: dict[str, object] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module.startswith("cellsynth"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                names[alias.asname or alias.name] = getattr(module, alias.name)
    wrong = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in names:
            args = [None] * len(node.args)
            kwargs = {k.arg: None for k in node.keywords}
            try:
                inspect.signature(names[node.func.id]).bind(*args, **kwargs)
            except TypeError as error:
                wrong.append(f"line {node.lineno}: {ast.unparse(node)}: {error}")
    return names, wrong


def test_the_readme_python_example_binds_to_the_api():
    blocks = _python_blocks()
    assert blocks, "README has a Python example"
    names, wrong = {}, []
    for block in blocks:
        found, bad = _bind_calls(block)
        names.update(found)
        wrong += bad
    assert not wrong, wrong
    # it shows every stage: simulate, refine, train, predict, evaluate
    assert {"simulate", "fit", "refine_dataset", "train", "predict_image",
            "evaluate_folders"} <= set(names)


def test_a_call_that_does_not_bind_is_caught():
    _, wrong = _bind_calls("from cellsynth.segment import train\n"
                           "train(config, 'a', 'b', steps=3)\n")
    assert len(wrong) == 1 and "steps" in wrong[0]
