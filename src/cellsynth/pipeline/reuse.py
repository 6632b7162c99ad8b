"""``cellsynth run --reuse EARLIER``: an earlier run's finished stages copied into a new run
folder wherever its config would do the same work.

"The same work" is the run's own rule for skipping a stage (:mod:`cellsynth.pipeline.run`):
the same fingerprint, i.e. the same options and seed, the same contents of the real data
it reads and the same fingerprints of the stages it reads. So the Nissl recipe on another
dataset of the same stain and pixel size takes the first run's simulation and pretraining
(validated on held-out simulated images, it reads no real image) and trains the rest.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cellsynth.errors import ConfigError
from cellsynth.pipeline import layout
from cellsynth.pipeline.config import PipelineConfig
from cellsynth.pipeline.run import RunState, _contents, _stage_keys, legacy_contents

__all__ = ["reuse_sources", "reuse_plan", "copy_stage"]

# (report: cheap, and it describes its own folder)
_NEVER_REUSED = (layout.REPORT_STAGE,)


def reuse_sources(reuse: Sequence[str | os.PathLike], out: Path) -> list[Path]:
    """The run folders to reuse stages from, checked before any work: each must hold a
    state.json (a run folder) and not be ``out`` itself."""
    sources = []
    for source in map(Path, reuse):
        if not (source / layout.STATE).is_file():
            raise ConfigError(f"--reuse {source}: not a cellsynth run folder (no "
                              f"{layout.STATE}); name the --out of an earlier run")
        if out.exists() and source.resolve() == out.resolve():
            raise ConfigError(f"--reuse {source}: that is --out itself, whose finished "
                              "stages are kept anyway")
        sources.append(source)
    return sources


def reuse_plan(config: PipelineConfig, plan: list, out: Path, sources: Sequence[Path],
               recorded: dict[str, Any] | None = None,
               contents: dict[str, str | None] | None = None
               ) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Which stages ``out`` would take from which of ``sources``: in the plan's order, a
    stage not done in ``out`` (whose folder ``out`` does not hold at all: nothing of its own
    is replaced) that a source holds done with the fingerprint this config gives it there.
    A stage taken keeps the source's fingerprint, so the ones after it match theirs. Returns
    {stage: (source, its state.json entry)}; nothing is written."""
    contents = _contents(config, plan) if contents is None else contents
    legacy = legacy_contents(config, plan)  # (hashed once, where a record needs it)
    recorded = dict(recorded or {})
    states = [(source, RunState(source).data) for source in sources]
    taken: dict[str, tuple[Path, dict[str, Any]]] = {}
    for stage in plan:
        if stage.name in _NEVER_REUSED or (out / stage.name).exists():
            continue
        mine = recorded.get(stage.name)
        print_ = _stage_keys(config, plan, recorded, contents, legacy)[stage.name][0]
        if mine is not None and mine["fingerprint"] == print_ and mine["done"]:
            continue
        for source, data in states:
            entry = data.get(stage.name)
            if entry is None or not entry.get("done") or not (source / stage.name).is_dir():
                continue
            # keyed against the source's record: an older run's fingerprint still matches
            theirs = _stage_keys(config, plan, recorded | {stage.name: entry}, contents,
                                 legacy)
            if theirs[stage.name][0] == entry["fingerprint"]:
                taken[stage.name] = source, entry
                recorded[stage.name] = entry
                break
    return taken


def copy_stage(source: Path, out: Path, name: str, entry: dict[str, Any],
               state: RunState) -> None:
    """Copy ``source``'s stage folder into ``out`` (whole, then renamed into place: a kill
    leaves no half folder) and record it done with the source's entry. Checkpoints are
    hard links where the file system allows (the recipe's are 0.5 GB; cellsynth writes a
    checkpoint only by replacing it whole, which leaves the other run's file as it was);
    every other file is a copy (a later resume in ``out``, a grown soup, appends to logs)."""
    staging = out / f".reuse-{name}"
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(source / name, staging, copy_function=_link_or_copy)
    os.replace(staging, out / name)
    old = {str(source), str(source.resolve())}

    def moved(value: Any) -> Any:  # the summary's paths into the source name out's
        if isinstance(value, dict):
            return {k: moved(v) for k, v in value.items()}
        if isinstance(value, list):
            return [moved(v) for v in value]
        if isinstance(value, str):
            for prefix in sorted(old, key=len, reverse=True):
                if value == prefix or value.startswith(prefix + os.sep):
                    return str(out) + value[len(prefix):]
        return value

    info = {k: moved(v) for k, v in entry.items() if k not in ("fingerprint", "done")}
    state.mark(name, entry["fingerprint"], done=True, **info, reused_from=str(source))


def _link_or_copy(src: str, dst: str) -> None:
    """A checkpoint (``*.pt``) as a hard link, else (other files, or no link possible: another
    file system) a copy with its times."""
    if src.endswith(".pt"):
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)
