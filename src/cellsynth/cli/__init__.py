"""The ``cellsynth`` command: argparse subcommands that fill configs and call the library.

Heavy imports (torch, dask, the simulator) happen inside the command functions so that
``cellsynth --help`` is instant. User mistakes (CellsynthError) print one line and exit 2.
This module runs a command (its notes, progress bars, interrupts and errors);
:mod:`cellsynth.cli.parser` holds the options, :mod:`cellsynth.cli.commands` what each
command does with them.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import threading
import warnings
from pathlib import Path

from cellsynth.cli.parser import _build_parser
from cellsynth.errors import CellsynthError
from cellsynth.hardware import THREADS_SOURCE
from cellsynth.pipeline import layout

__all__ = ["main"]


def _write_above_bars(text: str, stream) -> None:
    from tqdm import tqdm

    tqdm.write(text, file=stream)


class _BarSafeHandler(logging.StreamHandler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            _write_above_bars(self.format(record), self.stream)
        except Exception:  # noqa: BLE001  (logging's own convention)
            self.handleError(record)


@contextlib.contextmanager
def _output(command: str, quiet: bool):
    """One line per note: logging (info unless --quiet) and warnings, prefixed by command,
    each on a line of its own above any progress bar (tqdm.write: a note written while a bar
    was drawn landed on the bar's line, for the next redraw to overwrite)."""
    handler = _BarSafeHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"cellsynth {command}: %(message)s"))
    logger = logging.getLogger("cellsynth")
    saved = logger.handlers[:], logger.level, logger.propagate, warnings.showwarning
    logger.handlers[:] = [handler]
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    logger.propagate = False

    shown: set[str] = set()

    def show(message, category, filename, lineno, file=None, line=None):
        # once per command: the stages of a run read the same folders and said the same
        # note about them up to 8 times, burying the lines that differ
        if str(message) not in shown:
            shown.add(str(message))
            _write_above_bars(f"cellsynth {command}: warning: {message}", file or sys.stderr)

    from cellsynth.hardware import forget_announcements

    forget_announcements()  # each command says once what it chose
    try:
        # a fresh filter list: Python then forgets which warnings it has shown, so a second
        # command in the same process (the API, napari, the tests) says its notes again
        with warnings.catch_warnings():
            warnings.simplefilter("default")
            warnings.showwarning = show
            yield
    finally:
        logger.handlers[:], logger.level, logger.propagate, warnings.showwarning = saved


def _continue_hint(args: argparse.Namespace) -> str:
    """What continues an interrupted command: for a training, --resume only once it has a
    checkpoint (stopped while starting, it said --resume, which then found nothing)."""

    hint = _CONTINUE.get(args.command, "")
    out = getattr(args, "out", None)
    if "--resume" in hint and out is not None and not (Path(out) / layout.LAST).is_file():
        return "; nothing was trained yet: the same command starts again"
    return hint


# what continues an interrupted command (the others start again; nothing was published)
_CONTINUE = {"train": "; the same command with --resume continues",
             "fit-refiner": "; the same command with --resume continues",
             "run": "; the same command continues", "experiment": "; the same command continues",
             "demo": "; the same command continues",
             "predict": "; the same command continues (finished rows of tiles are kept)"}


def _terminate_as_interrupt(signum: int, frame: object) -> None:
    """SIGTERM (``kill``, a job scheduler's stop) as Ctrl-C: the command's one line, its
    files left as an interrupt leaves them, and exit status 130; it ended at once, silent
    (143), where no training loop had taken the signal to stop between steps."""
    raise KeyboardInterrupt


LOG_BAR_INTERVAL_S = 30  # progress-bar updates when stderr is not a terminal


# commands whose output folder is written whole in a staging folder and swapped in at the
# end (a run folder, by contrast, is filled in place and resumed)
_SWAPPED_IN = ("simulate", "predict", "export", "generate")


def _check_out(args: argparse.Namespace) -> None:
    """``--out .`` (or ``..``): the absolute folder, whose name the staging and the backups
    of a replaced run are named after (``.`` has none: every such command failed with a
    traceback after its work). A folder the shell is in (or holds it) cannot be swapped in
    or moved aside (``--force``): refused up front, in one line."""
    out = getattr(args, "out", None)
    if not isinstance(out, Path):
        return
    typed = out
    if out.name in ("", ".", ".."):
        args.out = out = Path(os.path.abspath(out))
    try:
        here, resolved = Path.cwd().resolve(), out.resolve()
    except OSError:
        return
    if (resolved == here or resolved in here.parents) and (
            args.command in _SWAPPED_IN or getattr(args, "force", False)):
        how = ("is written whole and swapped in at the end" if args.command in _SWAPPED_IN
               else "is moved aside by --force")
        raise CellsynthError(f"--out {typed}: is the folder you are in (or holds it), and the "
                             f"output folder {how}; name a new folder, e.g. --out "
                             f"{args.command}-out")


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "command", None) is None:  # `cellsynth` alone: what it can do
        parser.print_help(sys.stderr)
        return 2
    threads = getattr(args, "threads", None)
    saved = {var: os.environ.get(var) for var in ("CELLSYNTH_THREADS", THREADS_SOURCE)}
    if threads is not None:  # the library (and any worker process) reads it from there
        os.environ["CELLSYNTH_THREADS"] = str(threads)
        os.environ[THREADS_SOURCE] = "--threads"  # what the "threads N (set by ...)" line names
    # progress bars into a log file (a background run): one update every 30 s, not one per
    # step (a 1000-step run wrote 0.5 MB of bars); tqdm reads its defaults from TQDM_*
    quiet_bars = not sys.stderr.isatty() and "TQDM_MININTERVAL" not in os.environ
    if quiet_bars:
        os.environ["TQDM_MININTERVAL"] = str(LOG_BAR_INTERVAL_S)
    import signal

    terminate = (signal.signal(signal.SIGTERM, _terminate_as_interrupt)
                 if threading.current_thread() is threading.main_thread() else None)
    try:
        _check_out(args)
        with _output(args.command, getattr(args, "quiet", False)):
            return int(args.func(args) or 0)
    except BrokenPipeError:  # the reader went away (`| head`): nothing left to say, to anyone
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except CellsynthError as err:
        print(f"cellsynth {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # An interrupt can land inside a library's constructor (imageio's PillowPlugin), whose
        # half-built object then fails in __del__ and prints "Exception ignored ...
        # Traceback" after our line; the user stopped the command, so such finaliser noise
        # is not shown.
        sys.unraisablehook = lambda unraisable: None
        print(f"cellsynth {args.command}: interrupted{_continue_hint(args)}",
              file=sys.stderr)
        return 130
    except OSError as err:  # the machine, not cellsynth: a full disk, a permission, ...
        where = f"{err.filename}: " if err.filename else ""
        print(f"cellsynth {args.command}: error: {where}{err.strerror or err}", file=sys.stderr)
        return 1
    finally:
        if terminate is not None:
            signal.signal(signal.SIGTERM, terminate)
        if quiet_bars:
            os.environ.pop("TQDM_MININTERVAL", None)
        if threads is not None:
            for var, value in saved.items():
                if value is None:
                    os.environ.pop(var, None)
                else:
                    os.environ[var] = value
