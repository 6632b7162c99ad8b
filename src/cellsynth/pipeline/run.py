"""``cellsynth run``: simulate -> fit refiner -> generate -> pretrain -> fine-tune -> predict
-> evaluate -> realism -> report, each stage in its own folder of the run.

A stage's *fingerprint* hashes its options, the *contents* of the real-data folders it reads
(see :func:`content_fingerprint`) and the fingerprints of the stages it reads. It is stored in
``RUN/state.json`` when the stage starts and again (``done``) when it ends, beside what it
hashed (``hashed``: the options by name, the contents' and the input stages' fingerprints),
so that a stage run again says which of them changed. Re-running skips
stages that are done with an unchanged fingerprint, resumes a training stage that was
interrupted (same fingerprint, checkpoint present) and redoes a stage whose options or inputs
changed, together with everything downstream of it. Moving or copying the real data
changes nothing; editing one of its images, labels or meta.json redoes what depends on it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

from cellsynth.config import save_yaml
from cellsynth.errors import FolderBusyError, OutputExistsError
from cellsynth.io.files import file_digest, refuse_inputs, write_json
from cellsynth.io.images import LABEL_SUFFIXES
from cellsynth.io.labels import CELLPOSE_SEG_SUFFIX
from cellsynth.pipeline import layout
from cellsynth.pipeline.config import PipelineConfig, check_inputs

__all__ = ["run", "fingerprint", "content_fingerprint", "stage_fingerprints", "RunState",
           "claim", "Parts", "duration", "timed"]

# (versions before 2026-12 hashed all bytes up to 1 MiB, larger files by size and mtime, and
# every file of the folder: what they recorded is recognised, content_fingerprint(legacy=))
_LEGACY_BYTES_UP_TO = 1 << 20
# the files content_fingerprint hashes in a folder (and meta.json, and OME-Zarr contents)
DATA_SUFFIXES = tuple(dict.fromkeys(s.lower() for s in (*LABEL_SUFFIXES, CELLPOSE_SEG_SUFFIX)))
_NAMED = 4  # a rerun names up to this many changed settings, and counts the rest
_UNSET = object()
# how often a running step records its seconds so far in state.json: a run killed outright
# (kill -9, the machine lost) keeps all but this much of the time its resume adds to
HEARTBEAT_SECONDS = 60.0


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-able parts (dict keys sorted)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def content_fingerprint(path: str | os.PathLike | None, *, legacy: bool = False
                        ) -> str | None:
    """Fingerprint of the data a file or folder holds, not of where it is or when it was
    copied.

    The files the readers take (images, labels, Cellpose ``_seg.npy``, meta.json, what an
    OME-Zarr holds) contribute their relative path and their bytes
    (:func:`cellsynth.io.files.file_digest`: all of them up to 16 MiB, of a larger file its
    size and blocks spread over it; an edit that keeps such a file's size and misses every
    block is not seen). Other files (notes,
    spreadsheets), hidden files and folders, and run or experiment folders below ``path``
    (a ``state.json`` beside what they hold: `init` in a project folder suggests
    ``--out runs/NAME`` there) are left out. A single file given as ``path`` is always hashed.

    ``legacy``: the fingerprint as earlier versions took it (every file; larger than 1 MiB by
    size and modification time), to recognise what they recorded.
    """
    if path is None:
        return None
    root = Path(path)
    files = [root] if root.is_file() else sorted(_data_files(root, everything=legacy))
    # (no version mark: a folder of data files up to 1 MiB hashes as it did with the older way)
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(root) if file != root else file.name).encode())
        if legacy:
            stat = file.stat()
            digest.update(file.read_bytes() if stat.st_size <= _LEGACY_BYTES_UP_TO
                          else f"{stat.st_size}:{stat.st_mtime_ns}".encode())
        else:
            digest.update(file_digest(file))
    return digest.hexdigest()[:16]


def _is_data(name: str) -> bool:
    """Whether the readers take a file of this name: an image, label, Cellpose ``_seg.npy``
    or meta.json (an OME-Zarr's files: :func:`_data_files`)."""
    return name.lower().endswith(DATA_SUFFIXES) or name == layout.META


def _data_files(root: Path, everything: bool = False) -> Iterator[Path]:
    """The files below ``root`` that :func:`content_fingerprint` hashes (:func:`_is_data`, or
    ``everything`` not hidden), in one walk that does not enter hidden folders or run
    folders (those below ``root`` holding a state.json; a run's folder can hold more than
    the data beside it). An OME-Zarr's own hidden files (``.zattrs``) are data."""
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        zarr = not everything and any(p.suffix.lower() == ".zarr"
                                      for p in [here, *here.relative_to(root).parents])
        dirs[:] = [d for d in dirs if (zarr or not d.startswith("."))
                   and not (here / d / layout.STATE).is_file()]
        for n in names:
            file = here / n
            if ((zarr or not n.startswith(".")) and file.is_file()
                    and (everything or zarr or _is_data(n))):
                yield file


class RunState:
    """RUN/state.json: per stage (or experiment cell) its fingerprint and whether it finished."""

    def __init__(self, root: Path):
        self.path = root / layout.STATE
        self.data: dict[str, Any] = {}
        self.reload()

    def reload(self) -> None:
        """Read state.json again: another process sharing the folder may have recorded more."""
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {}

    def status(self, name: str, fingerprint: str) -> str:
        """"new", "interrupted" (started, same fingerprint) or "done"."""
        entry = self.data.get(name)
        if entry is None or entry["fingerprint"] != fingerprint:
            return "new"
        return "done" if entry["done"] else "interrupted"

    def amend(self, name: str, **changes: Any) -> None:
        """Record ``changes`` in the entry of ``name``, keeping the rest of it."""
        entry = dict(self.data[name])
        entry.update(changes)
        self.mark(name, entry.pop("fingerprint"), entry.pop("done"), **entry)

    def mark(self, name: str, fingerprint: str, done: bool, **info: Any) -> None:
        """Record one entry. Several processes may share a run folder (an experiment's
        ``--settings`` evaluation while the rest trains): the file is re-read under a lock
        and only this entry replaced, so no process overwrites what another recorded."""
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            if fcntl is not None:  # POSIX; elsewhere the re-read alone narrows the race
                fcntl.flock(lock, fcntl.LOCK_EX)
            on_disk = json.loads(self.path.read_text()) if self.path.exists() else {}
            on_disk[name] = {"fingerprint": fingerprint, "done": done, **info}
            write_json(self.path, on_disk)
        self.data = on_disk


@contextlib.contextmanager
def claim(root: Path, name: str, on_wait: Callable[[], None] | None = None, *,
          busy: str | None = None) -> Iterator[None]:
    """Hold ``name`` (a stage or an experiment's work unit) for this process while it runs:
    several processes sharing a folder (an experiment's seeds side by side) then never do the
    same unit twice; one that reaches a held unit waits (``on_wait`` is called once) and
    afterwards finds it done in state.json, or, given ``busy``, raises
    :class:`FolderBusyError` with that message instead of waiting. The hold is an advisory
    lock on ``root/.claims/<name>.lock``; it ends with the process, so a killed unit can be
    resumed."""
    folder = root / ".claims"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / (name.replace("/", "__") + ".lock"), "a") as lock:
        if fcntl is not None:  # POSIX; elsewhere no claim (one process per folder)
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if busy is not None:
                    raise FolderBusyError(busy) from None
                if on_wait is not None:
                    on_wait()
                fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(lock, fcntl.LOCK_UN)


def stage_fingerprints(config: PipelineConfig, plan: list,
                       recorded: dict[str, Any] | None = None) -> dict[str, str]:
    """Each planned stage's fingerprint: its options, the contents of the real data it reads
    and the fingerprints of the stages it reads. ``recorded`` (a run's state.json) keeps the
    fingerprint it holds for a stage keyed the older way (:func:`_stage_keys`)."""
    return {name: key[0] for name, key in _stage_keys(config, plan, recorded).items()}


def _stage_keys(config: PipelineConfig, plan: list, recorded: dict[str, Any] | None = None,
                contents: dict[str, str | None] | None = None,
                legacy: Callable[[], dict[str, str | None]] | None = None
                ) -> dict[str, tuple[str, dict[str, Any]]]:
    """Each planned stage's fingerprint and what it hashed, as state.json records it beside
    the fingerprint (``hashed``): the options (flattened to ``finetune.steps``-like keys),
    the real data's content fingerprints and the input stages' fingerprints, so that a
    rerun can name what changed (:func:`_what_changed`).

    A stage whose ``unread`` inputs earlier versions hashed keeps the fingerprint
    ``recorded`` holds for it where that is what the earlier keying gives, or where the
    record differs from now only in those inputs: the stages after it then match their
    records too, and nothing is redone for a change of what it never read. A stage recorded
    when the real data was hashed the older way (``content_fingerprint(legacy=True)``) keeps
    its record where that way gives what it recorded."""
    if contents is None:
        contents = _contents(config, plan)
    if legacy is None:
        legacy = legacy_contents(config, plan)
    keys: dict[str, tuple[str, dict[str, Any]]] = {}
    for stage in plan:
        parts = stage.config(config)
        reads = {role: contents[role] for role in stage.reads}
        inputs = {d: keys[d][0] for d in stage.inputs}
        print_ = fingerprint(stage.name, _values(parts), reads, list(inputs.values()))
        hashed = {"settings": _flat(parts), "reads": reads, "inputs": inputs}
        hashed = json.loads(json.dumps(hashed, default=str))  # as stored
        entry = (recorded or {}).get(stage.name)
        if stage.unread and entry is not None and entry["fingerprint"] != print_:
            unread = {d: keys[d][0] for d in stage.unread}
            earlier = fingerprint(stage.name, _values(parts), reads,
                                  list(inputs.values()) + list(unread.values()))
            if entry["fingerprint"] == earlier or _same_but(entry.get("hashed"), hashed,
                                                            inputs=stage.unread):
                print_, hashed = entry["fingerprint"], entry.get("hashed") or hashed
        if entry is not None and entry["fingerprint"] != print_ and _same_but(
                entry.get("hashed"), hashed, settings=_SAME_OUTPUT):
            print_, hashed = entry["fingerprint"], entry["hashed"]
        if entry is not None and entry["fingerprint"] != print_ and reads:
            # recorded by a version that hashed the real data the older way: kept where the
            # data is what that way hashed then (content_fingerprint's legacy)
            earlier = {role: legacy()[role] for role in stage.reads}
            if entry["fingerprint"] == fingerprint(stage.name, _values(parts), earlier,
                                                   list(inputs.values())) or _same_but(
                    entry.get("hashed"), hashed | {"reads": earlier}, settings=_SAME_OUTPUT):
                print_, hashed = entry["fingerprint"], entry.get("hashed") or hashed
        keys[stage.name] = print_, hashed
    return keys


def _contents(config: PipelineConfig, plan: list, legacy: bool = False
              ) -> dict[str, str | None]:
    """The content fingerprint of each real-data role the planned stages read (taken the
    older way: ``legacy``)."""
    return {role: content_fingerprint(getattr(config.real, role), legacy=legacy)
            for role in {role for stage in plan for role in stage.reads}}


def legacy_contents(config: PipelineConfig, plan: list) -> Callable[[], dict[str, str | None]]:
    """:func:`_contents` taken the older way, computed when first called (only a run with
    records that do not match now needs it) and kept."""
    return functools.cache(partial(_contents, config, plan, legacy=True))


# settings that change how a stage works, not what it writes: a recorded stage that differs
# from now only in them is kept (simulating in more processes redid every stage)
_SAME_OUTPUT = frozenset({"simulate.workers"})


def _same_but(before: dict[str, Any] | None, now: dict[str, Any], *,
              inputs: tuple[str, ...] = (), settings: frozenset[str] = frozenset()) -> bool:
    """Whether a stage's recorded ``hashed`` differs from ``now`` only in ``inputs`` (input
    stages earlier versions hashed and now does not: ``Stage.unread``) and ``settings``
    (:data:`_SAME_OUTPUT`)."""
    if not before or "settings" not in before:
        return False

    def drop(values: dict[str, Any] | None, names: Any) -> dict[str, Any]:
        return {k: v for k, v in (values or {}).items() if k not in names}

    return (drop(before["settings"], settings) == drop(now["settings"], settings)
            and before.get("reads") == now["reads"]
            and drop(before.get("inputs"), inputs) == now["inputs"])


class Parts(dict):
    """Named parts of the config (``{"simulate": ..., "seed": ...}``) inside a stage's own
    parts: RUN/real depends on the simulation's. Hashed, like a stage's parts, as the list
    of their values (the fingerprints of runs from before the parts had names) and named as
    if they were the stage's own (``seed``, not ``simulate.seed``)."""


def _values(parts: dict[str, Any]) -> list[Any]:
    return [_values(v) if isinstance(v, Parts) else v for v in parts.values()]


def _flat(parts: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"finetune": {"steps": 400}}`` as ``{"finetune.steps": 400}``; lists of scalars
    stay values, other lists are indexed (``finetune.schedule[0].lr``)."""
    flat: dict[str, Any] = {}
    for name, value in parts.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if isinstance(value, Parts):
            flat |= _flat(value, prefix)
        elif isinstance(value, (list, tuple)) and any(isinstance(v, (dict, list, tuple))
                                                    for v in value):
            value = {f"[{i}]": v for i, v in enumerate(value)}
            flat |= {k.replace(".[", "["): v for k, v in _flat(value, key).items()}
        elif isinstance(value, dict) and value:
            flat |= _flat(value, key)
        else:
            flat[key] = value
    return flat


def _what_changed(before: dict[str, Any] | None, now: dict[str, Any]) -> str | None:
    """What differs between two records of a stage's hashed inputs, in words
    (``finetune.steps 400 -> 600; what it reads (pretrain) changed``); None where the
    earlier record is missing (a state.json from before records were kept) or shows no
    difference."""
    if not before:
        return None
    old, new = before.get("settings", {}), now["settings"]
    settings = [f"{k} {_shown(old, k)} -> {_shown(new, k)}" for k in {**old, **new}
                if old.get(k, _UNSET) != new.get(k, _UNSET)]
    read = [k for k in {**before.get("inputs", {}), **now["inputs"]}
            if before.get("inputs", {}).get(k) != now["inputs"].get(k)]
    read += [f"real.{k}" for k in {**before.get("reads", {}), **now["reads"]}
             if before.get("reads", {}).get(k) != now["reads"].get(k)]
    if len(settings) > _NAMED:
        settings = settings[:_NAMED] + [f"{len(settings) - _NAMED} more setting(s)"]
    said = settings + ([f"what it reads ({', '.join(read)})"] if read else [])
    return "; ".join(said) + " changed" if said else None


def _shown(values: dict[str, Any], key: str) -> str:
    # (an option added to the config later is hashed only away from its default: absent
    # from the record is its default, whether or not the config named it; "unset" misled)
    return "(default)" if key not in values else json.dumps(values[key])


def duration(seconds: float) -> str:
    """42 s, 3.5 min or 1 h 05 min."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if round(seconds / 60, 1) < 60:
        return f"{seconds / 60:.1f} min"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes:02d} min"


def run(config: PipelineConfig, out: str | os.PathLike, *, progress: bool = True,
        log: Callable[[str], None] = print,
        reuse: Sequence[str | os.PathLike] = ()) -> dict[str, Any]:
    """Run (or continue) the whole pipeline into ``out``; returns the stages' summaries.
    One process at a time per folder: a second one gets :class:`FolderBusyError`.

    ``reuse``: earlier run folders whose finished stages are copied into ``out`` where this
    config would do the same work (the same fingerprint: options, seed, the contents of the
    real data read, the stages read), instead of doing it again
    (:mod:`cellsynth.pipeline.reuse`)."""
    from cellsynth.hardware import resolve_device
    from cellsynth.pipeline.reuse import reuse_sources

    out = Path(out)
    check_inputs(config)
    sources = reuse_sources(reuse, out)
    resolve_device(config.device)  # before any stage works, not when the first trains
    check_out(config, out)
    out.mkdir(parents=True, exist_ok=True)
    with claim(out, "run", busy=f"{out}: another cellsynth run is working in this folder; "
                                "let it finish (or stop it) or choose another --out"):
        return _run(config, out, progress=progress, log=log, sources=sources)


def check_out(config: PipelineConfig, out: str | os.PathLike) -> None:
    """What ``--out`` must be, said before any work (``run --estimate`` too): a folder or a
    new name, and none of the real data's folders nor inside one (the run's stages write
    subfolders such as real/ and predict/ into it, and replace them)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a folder; give --out a folder")
    refuse_inputs(out, [getattr(config.real, role)
                        for role in ("unlabeled", "train", "val", "test")], "run")
    refuse_foreign_folder(out, "run", "its own folders and report.html")


def refuse_foreign_folder(out: Path, kind: str, writes: str) -> None:
    """Refuse in one line an ``--out`` that is a non-empty folder but no cellsynth ``kind``
    folder (no state.json or config.yaml of one): a run or experiment writes and replaces
    ``writes`` there (a user's predict/ or report.html were replaced without a word). Hidden
    entries (a stopped run's .claims/) do not count."""
    if out.is_dir() and not (out / layout.STATE).is_file() \
            and not (out / layout.CONFIG).is_file():
        theirs = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
        if theirs:
            raise OutputExistsError(
                f"{out}: not empty and not a cellsynth {kind} folder (it holds "
                f"{', '.join(theirs[:3])}{', ...' if len(theirs) > 3 else ''}); a {kind} "
                f"writes and replaces {writes} there: choose a new --out")


def timed(state: RunState, name: str, print_: str, resume: bool, work: Callable[[], Any],
          **info: Any) -> tuple[Any, float, float]:
    """Run ``work`` as the step ``name`` of ``state`` (marked begun, then done with its
    summary) and return (its summary, the seconds of all runs that worked on it since its
    fingerprint ``print_`` was set, the seconds of this one). A resumed step (``resume``)
    adds to what the runs before the kill spent; a stopped (Ctrl-C, SIGTERM) or failed one
    records its time so far, for the resume to add to; one killed outright (kill -9) what
    it recorded last (every ``HEARTBEAT_SECONDS``)."""
    entry = state.data.get(name, {}) if resume else {}
    earlier = entry.get("seconds", 0.0)
    runs = entry.get("runs", 1) + 1 if entry else 1
    state.mark(name, print_, done=False, seconds=earlier, runs=runs, **info)
    started = time.perf_counter()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            state.mark(name, print_, done=False, runs=runs, **info,
                       seconds=round(earlier + time.perf_counter() - started, 1))

    heart = threading.Thread(target=beat, name=f"cellsynth-heartbeat-{name}", daemon=True)
    heart.start()
    try:
        summary = work()
    except BaseException:
        stop.set()
        heart.join()  # (its last mark, if one is being written, comes before this one)
        state.mark(name, print_, done=False, runs=runs, **info,
                   seconds=round(earlier + time.perf_counter() - started, 1))
        raise
    stop.set()
    heart.join()
    now = time.perf_counter() - started
    state.mark(name, print_, done=True, summary=summary, seconds=round(earlier + now, 1),
               runs=runs, **info)
    return summary, earlier + now, now


_MAX_RECORDED_OUTPUT = 64  # top-level entries of a stage's folder named in state.json


def _record_output(state: RunState, out: Path, name: str) -> None:
    """Beside a finished stage's entry: the top-level entries of its folder (``output``: the
    first :data:`_MAX_RECORDED_OUTPUT` by name, and ``output_count`` of them all), for a later
    run to see whether they are still there (:func:`_gone`)."""
    folder = out / name
    if not folder.is_dir():
        return
    entries = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    if entries:
        state.amend(name, output=entries[:_MAX_RECORDED_OUTPUT], output_count=len(entries))


def _gone(out: Path, name: str, entry: dict[str, Any] | None) -> str:
    """What of a finished stage's recorded ``output`` is no longer in its folder (names,
    comma-separated, or how many of a folder with more than the names recorded; "" where all
    is there, or nothing was recorded)."""
    recorded = (entry or {}).get("output") or []
    missing = [n for n in recorded if not (out / name / n).exists()]
    if recorded and not missing and (entry or {}).get("output_count", 0) > len(recorded):
        count = entry["output_count"]  # (before 2026-12-08 only folders of <= 64 entries)
        now = sum(1 for p in (out / name).iterdir() if not p.name.startswith("."))
        return f"{name}/: {count - now} of its {count} entries" if now < count else ""
    if not missing:
        return ""
    if len(missing) == len(recorded) and not (out / name).exists():
        return f"{name}/"
    return ", ".join(f"{name}/{n}" for n in missing[:3]) + (", ..." if len(missing) > 3
                                                           else "")


def _run(config: PipelineConfig, out: Path, *, progress: bool, log: Callable[[str], None],
         sources: list[Path]) -> dict[str, Any]:
    from cellsynth.pipeline import stages
    from cellsynth.pipeline.reuse import copy_stage, reuse_plan

    save_yaml(out / layout.CONFIG, config)
    state = RunState(out)
    plan = stages.plan(config)
    contents = _contents(config, plan)
    reused = reuse_plan(config, plan, out, sources, state.data, contents) if sources else {}
    for name, (source, entry) in reused.items():
        copy_stage(source, out, name, entry, state)
        log(f"[{name}] reused from {source} (done there in "
            f"{duration(entry.get('seconds', 0.0))})")
    keys = _stage_keys(config, plan, state.data, contents)
    for stage in plan:  # (done for an earlier config: not done for this one, from now on,
        # so that a report written before it runs again does not show it as this one's)
        entry = state.data.get(stage.name)
        if entry and entry.get("done") and entry["fingerprint"] != keys[stage.name][0]:
            state.amend(stage.name, done=False, outdated=True)
    summaries: dict[str, Any] = {}
    for stage in plan:
        stage_fingerprint, hashed = keys[stage.name]
        status = state.status(stage.name, stage_fingerprint)
        gone = _gone(out, stage.name, state.data.get(stage.name)) if status == "done" else ""
        if status == "done" and not gone:
            if stage.name not in reused:
                log(f"[{stage.name}] up to date, skipped")
            summaries[stage.name] = state.data[stage.name].get("summary", {})
            continue
        if gone:  # (deleted by hand: it was "up to date, skipped" and read by the next)
            doing = f"running again: what it wrote is gone ({gone})"
            status = "new"
        elif status == "interrupted":
            doing = "resuming"
        elif stage.name in state.data:  # done or begun, then changed
            doing = "running again: " + (
                _what_changed(state.data[stage.name].get("hashed"), hashed)
                or "its settings or what it reads changed since it last ran")
        else:
            doing = "running"
        log(f"[{stage.name}] {doing}")
        resume = status == "interrupted"
        summary, seconds, now = timed(
            state, stage.name, stage_fingerprint, resume,
            partial(stage.run, config, out, resume=resume, progress=progress), hashed=hashed)
        earlier = seconds - now
        summaries[stage.name] = summary
        _record_output(state, out, stage.name)
        left = len(plan) - 1 - plan.index(stage)
        log(f"[{stage.name}] done in {duration(seconds)}"
            + (f" in all ({duration(now)} this time)" if earlier else "")
            + (f"; {left} stage{'s' if left > 1 else ''} to go" if left else ""))
    return summaries

