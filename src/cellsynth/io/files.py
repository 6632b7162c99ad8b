"""Atomic writes of files and whole output folders: nothing half-written, nothing lost.

A file is written under a temporary name in its destination folder and renamed into place
(``os.replace`` is atomic on one filesystem). A whole output folder is built in a staging
folder beside it and swapped in only when complete, so an interrupted run leaves either the
old folder or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cellsynth.errors import CellsynthError, ConfigError, OutputExistsError
from cellsynth.pipeline import layout

__all__ = ["atomic_path", "write_with", "write_json", "staged_output_dir", "refuse_inputs",
           "check_output_file", "check_run_dir",
           "prepare_run_dir", "discard_replaced_run", "restore_replaced_run", "run_info",
           "say_if_unfinished"]


# file_digest: all of a file's bytes up to this size; of a larger one (a whole section), its
# size and SAMPLE_BLOCKS blocks of SAMPLE_BYTES spread from its start to its end
DIGEST_WHOLE_UP_TO = 16 << 20
SAMPLE_BLOCKS, SAMPLE_BYTES = 256, 4096


def file_digest(path: str | os.PathLike) -> bytes:
    """A SHA-256 of a file's bytes: all of them up to ``DIGEST_WHOLE_UP_TO``, of a larger
    file its size and ``SAMPLE_BLOCKS`` blocks of ``SAMPLE_BYTES`` spread over it (reading a
    whole section costs more than what it guards; an edit that keeps such a file's size and
    misses every block is not seen)."""
    import hashlib
    from functools import partial

    digest = hashlib.sha256()
    size = os.stat(path).st_size
    with open(path, "rb") as f:
        if size <= max(DIGEST_WHOLE_UP_TO, SAMPLE_BLOCKS * SAMPLE_BYTES):
            for chunk in iter(partial(f.read, 1 << 20), b""):
                digest.update(chunk)
        else:
            digest.update(f"{size}:".encode())
            last = size - SAMPLE_BYTES
            for i in range(SAMPLE_BLOCKS):
                f.seek(last * i // (SAMPLE_BLOCKS - 1))
                digest.update(f.read(SAMPLE_BYTES))
    return digest.digest()


def run_info(folder: str | os.PathLike) -> dict[str, Any]:
    """A training run's run.json (``{}`` where the folder has none or it cannot be read)."""
    path = Path(folder) / layout.RUN_INFO
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def say_if_unfinished(checkpoint: Path, ckpt: dict[str, Any], command: str) -> None:
    """Warn where the run a checkpoint is in was stopped part-way (its run.json's
    ``finished`` is false; runs from before the flag have none): using it gave no sign.
    ``command``: what finishes it with --resume (``cellsynth train``)."""
    import warnings

    if run_info(checkpoint.parent).get("finished") is False:
        config = ckpt.get("config")
        steps = config.get("steps") if isinstance(config, dict) else None
        warnings.warn(f"{checkpoint.parent}: its training stopped at step "
                      f"{ckpt.get('step', '?')}{f' of {steps}' if steps else ''} and did not "
                      f"finish (or is still running); the same `{command}` command with "
                      f"--resume finishes it", stacklevel=3)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _public(path: Path, *, folder: bool) -> None:
    """Give a temporary file (0600) or folder (0700) the mode the umask asks for, so results
    renamed into place are as readable as any other file the user writes."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix); rename it to ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    if path.is_dir():
        raise CellsynthError(f"{path}: is a folder, expected a file name")
    if not path.parent.is_dir():
        raise CellsynthError(f"{path}: folder {path.parent} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}",
                                   dir=path.parent)
    except OSError as err:  # (named the temporary file, which the user never asked for)
        raise CellsynthError(f"{path}: cannot write there: {err.strerror}") from err
    os.close(fd)
    tmp = Path(tmp)
    _public(tmp, folder=False)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_with(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Atomically write ``path`` with ``write(tmp_path)`` (e.g. ``torch.save``); a failure
    (a full disk above all) becomes one :class:`CellsynthError` naming the file and the free
    space, not a writer's internal error."""
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            write(tmp)
        except (OSError, RuntimeError) as err:
            free = shutil.disk_usage(path.parent).free / 2**20
            reason = (err.strerror if isinstance(err, OSError) and err.strerror
                      else str(err).strip().splitlines()[0] if str(err).strip()
                      else type(err).__name__)
            raise CellsynthError(f"{path}: cannot write: {reason} ({free:.0f} MiB free on "
                                 f"that disk)") from err


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _check_writable(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OutputExistsError(
            f"{out}: folder exists and is not empty (use --force to replace it)")
    _writable_parent(out, "parent folder")


def _writable_parent(path: Path, called: str) -> None:
    """Make the folder ``path`` goes in (one line naming ``path`` where it cannot be made)
    and check that it may be written."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CellsynthError(f"{path}: cannot create its {called}: {err.strerror}") from err
    if not os.access(parent, os.W_OK):
        raise CellsynthError(f"{path}: {called} {parent} is not writable")


# the names of a dataset's two sub-folders (any case; the first of each is what cellsynth
# writes, "masks" StarDist's): what a dataset is read from, see cellsynth.io.datasets
IMAGE_FOLDERS = ("images", "image", "imgs", "img")
LABEL_FOLDERS = ("labels", "label", "masks", "mask")
DATASET_PARTS = IMAGE_FOLDERS + LABEL_FOLDERS


def refuse_inputs(out: str | os.PathLike, inputs: tuple | list, what: str = "output") -> None:
    """Raise :class:`OutputExistsError` if the folder ``out`` is one of the paths ``inputs``
    or holds one: replacing it (``--force``) would delete what the command reads; or if it
    lies in an input dataset's ``images/``, ``labels/`` or ``masks/`` (``--out DATA/labels``
    replaced the annotations the command had just read)."""
    folder = Path(out).resolve()
    for source in inputs:
        if source is None:
            continue
        source = Path(source).resolve()
        if source == folder or folder in source.parents:
            raise OutputExistsError(f"{out}: is (or holds) the input {source}; write the "
                                    f"{what} to another folder")
        if source in folder.parents:
            part = folder.relative_to(source).parts[0]
            if part.lower() in DATASET_PARTS and source.is_dir():
                raise OutputExistsError(f"{out}: lies in the {part}/ folder of the input "
                                        f"{source}, which holds what the command reads; "
                                        f"write the {what} to another folder")


def check_output_file(path: str | os.PathLike, *, force: bool = False,
                      inputs: tuple | list = ()) -> None:
    """Before any work: the file ``path`` may be written (its folder is made if missing). It
    must not exist unless ``force``, and must not lie in a folder the command reads (an
    input's ``images/``, ``labels/`` or ``masks/``, or a folder of label images given as an
    input: ``evaluate --json GT/labels/x.tif`` replaced an annotation it had just read)."""
    path = Path(path)
    if path.is_dir():
        raise CellsynthError(f"{path}: is a folder, expected a file name")
    target = path.resolve()
    for source in inputs:
        if source is None or not Path(source).is_dir():
            continue
        source = Path(source).resolve()
        if source not in target.parents:
            continue
        inner = target.relative_to(source).parts
        if inner[0].lower() in DATASET_PARTS or not any(
                (source / name).is_dir() for name in names_in(source)
                if name.lower() in IMAGE_FOLDERS):
            raise OutputExistsError(f"{path}: lies in the input {source}, which holds what "
                                    "the command reads; write it elsewhere")
    if path.exists() and not force:
        raise OutputExistsError(f"{path}: exists; choose another name or pass --force")
    _writable_parent(path, "folder")


def names_in(folder: Path) -> list[str]:
    """The names in ``folder``, sorted ([] where it cannot be listed)."""
    try:
        return sorted(os.listdir(folder))
    except OSError:
        return []


def swappable(out: str | os.PathLike) -> Path:
    """``out`` as a folder that can be built beside itself and swapped in: ``.`` or ``..``
    made absolute (the staging folder is named after ``out``, and theirs is empty: the
    command failed with a traceback after its work); the folder this process is in, or one
    that holds it, refused in one line (it cannot be replaced; the CLI says the same with
    the command's name, ``cli._check_out``)."""
    out = Path(out)
    if out.name in ("", ".", ".."):
        out = Path(os.path.abspath(out))
    try:
        here, resolved = Path.cwd().resolve(), out.resolve()
    except OSError:
        return out
    if resolved == here or resolved in here.parents:
        raise CellsynthError(f"{out}: is the folder this process is in (or holds it), and "
                             f"this output is written whole and swapped in at the end; "
                             f"name a new folder")
    return out


def check_output_dir(out: str | os.PathLike, *, force: bool = False,
                     inputs: tuple | list = ()) -> None:
    """What :func:`staged_output_dir` checks up front, without writing the folder: for a
    command that works long before it writes ``out`` (predict), or fills a cache beside
    ``out`` for a later one to write it (``predict --part``)."""
    out = swappable(out)
    refuse_inputs(out, inputs)
    _check_writable(out, force)


@contextlib.contextmanager
def staged_output_dir(out: str | os.PathLike, *, force: bool = False,
                      inputs: tuple | list = ()) -> Iterator[Path]:
    """Build an output folder in a staging folder and swap it in when the block succeeds.

    Raises :class:`OutputExistsError` up front if ``out`` is a non-empty folder and ``force``
    is false, or if it is (or holds) one of the paths ``inputs`` the command reads. With
    ``force`` the old folder is replaced only after the new one is complete.
    """
    out = swappable(out)
    refuse_inputs(out, inputs)
    _check_writable(out, force)
    _remove_stale_staging(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".tmp",
                                    dir=out.parent or "."))
    _public(staging, folder=True)
    try:
        yield staging
        if not force and out.is_dir() and any(out.iterdir()):
            # another process filled ``out`` while this one ran: keep both, replace nothing
            kept = out.with_name(f"{out.name}.{os.getpid()}")
            os.replace(staging, kept)
            raise OutputExistsError(f"{out}: was written by another process while this one ran; "
                                    f"left it as it is and saved this output as {kept}")
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".old.tmp",
                                        dir=out.parent))
            os.replace(out, old / "x")
        try:
            os.replace(staging, out)
        except OSError:
            if old is not None:
                os.replace(old / "x", out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _remove_stale_staging(out: Path) -> None:
    """Delete the staging folders that killed processes (kill -9, power loss) left beside
    ``out``: their names carry the writer's process id, and that process is gone."""
    for folder in out.parent.glob(f".{glob.escape(out.name)}.*.tmp"):
        pid = folder.name[len(out.name) + 2:].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass


def _replaced(out: Path) -> Path:
    return out.with_name(f".{out.name}.replaced.tmp")


def _has_checkpoint(out: Path) -> bool:
    return any(out.glob("*.pt"))


def _stopped_before_checkpoint(out: Path) -> bool:
    """A run of ours (config.yaml) killed before it saved anything: nothing to lose."""
    return (out / layout.CONFIG).is_file() and not _has_checkpoint(out)


def check_run_dir(out: str | os.PathLike, *, resume: bool, force: bool,
                  checkpoint: str = layout.LAST, inputs: tuple = ()) -> bool:
    """What :func:`prepare_run_dir` will do, checked without touching anything: raises
    :class:`OutputExistsError` if it would refuse, else returns whether it will resume. Call
    it before validating the inputs, and ``prepare_run_dir`` after. ``inputs``: the paths the
    run reads; a run folder that is one of them, or holds one, is never replaced."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a folder")
    refuse_inputs(out, inputs, "run")
    if resume:
        if (out / checkpoint).is_file():
            return True
        if not (out / layout.CONFIG).is_file():
            raise OutputExistsError(f"{out}: nothing to resume, no {checkpoint} in it")
    if out.is_dir() and any(out.iterdir()) and not force and not _stopped_before_checkpoint(out):
        raise OutputExistsError(f"{out}: run folder exists and is not empty "
                                f"(use --resume to continue it or --force to replace it)")
    return False


def prepare_run_dir(out: str | os.PathLike, *, resume: bool, force: bool,
                    checkpoint: str = layout.LAST) -> bool:
    """Make a training run folder ready; return whether there is a checkpoint to resume.

    A non-empty folder is only replaced with ``force``, and even then it is moved aside (to a
    hidden sibling), not deleted: the trainer calls :func:`discard_replaced_run` once the new
    run has written its first checkpoint, or :func:`restore_replaced_run` if it fails before.
    ``resume`` on a run that was stopped before its first checkpoint starts it again.
    """
    out = Path(out)
    if check_run_dir(out, resume=resume, force=force, checkpoint=checkpoint):
        return True
    if out.is_dir() and any(out.iterdir()):
        if _stopped_before_checkpoint(out):  # start it again
            shutil.rmtree(out)
        else:
            backup = _replaced(out)
            if backup.exists():
                shutil.rmtree(backup)
            os.replace(out, backup)
    out.mkdir(parents=True, exist_ok=True)
    return False


def discard_replaced_run(out: str | os.PathLike) -> None:
    """Delete the run that ``prepare_run_dir(force=True)`` moved aside (the new one has a
    checkpoint now)."""
    backup = _replaced(Path(out))
    if backup.exists():
        shutil.rmtree(backup, ignore_errors=True)


def restore_replaced_run(out: str | os.PathLike) -> None:
    """Put back the run that ``prepare_run_dir(force=True)`` moved aside, unless the new run
    has written a checkpoint (then the new run is kept)."""
    out = Path(out)
    backup = _replaced(out)
    if backup.exists() and not _has_checkpoint(out):
        shutil.rmtree(out, ignore_errors=True)
        os.replace(backup, out)


# --- the run-folder contract both trainers (detector and refiner) follow ----------------------

class JsonLog:
    """A training run's append-only JSONL log (one object per logged step).

    ``keep_until``: resuming from the checkpoint of that step; entries logged after it (by the
    run that was killed) are dropped, and so is a last line the kill cut short.
    """

    def __init__(self, path: str | os.PathLike, keep_until: int | None = None):
        path = Path(path)
        if keep_until is not None and path.exists():
            kept = []
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # cut short by a kill
                if isinstance(entry, dict) and entry.get("step", 0) <= keep_until:
                    kept.append(line)
            write_with(path, lambda tmp: tmp.write_text("".join(ln + "\n" for ln in kept)))
        self.file = path.open("a")

    def write(self, **entry: Any) -> None:
        self.file.write(json.dumps(entry) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def check_resume_config(saved: dict[str, Any], given: dict[str, Any], defaults: dict[str, Any],
                        resumable: set[str] | frozenset[str], where: str | os.PathLike) -> None:
    """Refuse to resume a run with options that would change what it computes.

    ``saved``: the config in the checkpoint (a key it lacks was added to the package later,
    so the run used its default); ``resumable``: the options that may change (how long to
    run, how often to log, validate or checkpoint).
    """
    saved = {**defaults, **saved}
    changed = sorted(k for k in given if k not in resumable and given[k] != saved.get(k))
    if changed:
        raise ConfigError(f"{where}: cannot resume with a different {', '.join(changed)} "
                          f"(only {', '.join(sorted(resumable))} may change)")


def versions() -> dict[str, str]:
    """Versions of cellsynth and the libraries that shape its results (for run records)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("cellsynth", "torch", "torchvision", "celldetection", "numpy",
                    "scikit-image"):
        try:
            found[f"{package}_version"] = version(package)
        except PackageNotFoundError:
            pass
    return found
