"""The package's shape: no import cycles, every module importable alone, and run-folder
names spelled only in pipeline/layout.py."""

import ast
import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

import cellsynth
from cellsynth.pipeline import layout

SRC = Path(cellsynth.__file__).parent


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports_at_import_time(path: Path, module: str, known: set[str]) -> set[str]:
    """cellsynth modules that importing ``module`` imports (module level, not in functions)."""
    tree = ast.parse(path.read_text())
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in tree.body:
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for name in names:
            # importing a.b.c imports the packages a and a.b first, except the packages
            # that hold ``module`` (Python has imported those before ``module`` runs)
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                candidate = ".".join(parts[:i])
                if candidate in known and not (module + ".").startswith(candidate + "."):
                    found.add(candidate)
    return found


def test_no_import_cycles():
    modules = _modules()
    graph = {m: _imports_at_import_time(p, m, set(modules)) for m, p in modules.items()}
    # no module may reach (through any chain) a module that imports it back
    cycles = []

    def visit(node, stack, on_stack, done):
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt in on_stack:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in done:
                visit(nxt, stack, on_stack, done)
        stack.pop()
        on_stack.discard(node)
        done.add(node)

    done: set[str] = set()
    for module in sorted(graph):
        if module not in done:
            visit(module, [], set(), done)
    assert not cycles, cycles


def test_every_module_imports_on_its_own():
    names = sorted(m for m in _modules() if not m.endswith("__main__"))  # that one runs the CLI
    script = (
        "import importlib, sys\n"
        f"failed = []\nfor name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] == 'cellsynth']:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n        importlib.import_module(name)\n"
        "    except Exception as err:\n        failed.append(f'{name}: {err!r}')\n"
        "print('\\n'.join(failed))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


_FILE_NAMES = {layout.STATE, layout.CONFIG, layout.REPORT, layout.META, layout.LOG, layout.LAST,
               layout.BEST, layout.METRICS, layout.REALISM_METRICS, layout.RESULT,
               layout.RESULTS}
_STAGES = [layout.SIMULATE, layout.REAL, layout.REFINER, layout.REFINED, layout.PRETRAIN,
           layout.FINETUNE, layout.PREDICT, layout.EVALUATE, layout.REALISM, layout.SAMPLES,
           layout.OVERLAYS, layout.DETECTIONS]
_STAGE_JOIN = re.compile(r"/\s*[\"'](" + "|".join(_STAGES) + r")[\"']")


def test_run_folder_names_live_in_layout_only():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        if path == SRC / "pipeline" / "layout.py":
            continue
        text = path.read_text()
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.STRING and not token.string.startswith(('"""', "f")):
                value = ast.literal_eval(token.string)
                if value in _FILE_NAMES:
                    offenders.append(f"{path.relative_to(SRC)}:{token.start[0]}: {value!r}")
        for number, line in enumerate(text.splitlines(), 1):
            if _STAGE_JOIN.search(line):
                offenders.append(f"{path.relative_to(SRC)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_name_check_would_catch_a_literal(tmp_path):
    # the check above is only worth something if it sees what it looks for
    line = 'ckpt = run / "last.pt"'
    token = next(t for t in tokenize.generate_tokens(io.StringIO(line).readline)
                 if t.type == tokenize.STRING)
    assert ast.literal_eval(token.string) in _FILE_NAMES
    assert _STAGE_JOIN.search('out / "pretrain"') and not _STAGE_JOIN.search('"pretrain"')
