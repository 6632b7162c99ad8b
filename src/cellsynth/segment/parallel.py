"""Independent training runs side by side on a CPU, one process each (a soup's fine-tunings).

A detector step does not use a second core as well as a second run does: on the 2-core
AMX Xeon of 2026-12-05 (``python benchmarks/parallel_runs.py``) two of the recipe's
fine-tunings finished 1.17x sooner side by side on 1 thread each than in turn on 2 threads in
bf16 (a step 0.80-0.92 s with 2 threads, 1.36-1.50 s in each of two runs at once), 1.33x in
fp32. The runs of a soup do not depend on each other, so :func:`parallel_plan` gives each
its own process and a share of the threads (the usable cores less those busy elsewhere, or
``--threads``), and :func:`train_side_by_side` runs them in the standard library's process
pool.

Each run is the same as :func:`cellsynth.segment.trainer.train` would make it alone with that
thread count (its run.json records the count). Ctrl-C or SIGTERM stops every run between
steps with a checkpoint, as it stops one run; a rerun resumes them.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path
from typing import Any

log = logging.getLogger("cellsynth")

__all__ = ["parallel_plan", "train_side_by_side", "start_worker", "ask_to_stop"]

_POLL_SECONDS = 2.0


# Memory one run side by side takes: the recipe's fine-tunings (CpnSlimU22, 192² x 4, 400
# replayed simulated images of 256², 2 annotated 512² images) peaked at 2.85 GB resident
# in each process (VmHWM, 2 runs in turn per process); with a margin
RUN_BYTES = 4 * 2**30


def parallel_plan(runs: int, device: str = "cpu", threads: int | None = None
                  ) -> tuple[int, int | None]:
    """(processes, threads of each) for ``runs`` independent training runs on ``device``.

    On a CPU each of up to ``runs`` processes gets an equal share (at least 1) of the
    threads :func:`cellsynth.hardware.choose_threads` allows this process (``threads``, the
    environment, or the free usable cores): ``--threads 1`` keeps the runs one after the
    other. No more processes than the available memory holds (:data:`RUN_BYTES` each).
    Elsewhere (a GPU) one process, threads unchanged (None).
    """
    from cellsynth import hardware

    if runs <= 1 or not str(device).startswith("cpu"):
        return 1, None
    total = hardware.choose_threads(threads)[0]
    processes = max(1, min(runs, total))
    available = hardware.available_memory()
    if available is not None:
        processes = max(1, min(processes, available // RUN_BYTES))
    return processes, max(1, total // processes)


def start_worker(parent: int, threads: int, source: str = "the runs side by side") -> None:
    """A pool process: its own session (Ctrl-C at the terminal reaches only the parent, which
    asks each run once to stop), ends with the parent, ``threads`` torch threads (``source``
    says why, in run.json's and the notes' terms); a stop asked before its run's loop starts
    is kept for the loop (a killed pool process would break the pool and with it the other
    runs' checkpoints)."""
    from cellsynth.hardware import THREADS_SOURCE, die_with_parent
    from cellsynth.signals import remember_stop_signals

    if hasattr(os, "setsid"):  # (POSIX)
        os.setsid()
    die_with_parent(parent)
    remember_stop_signals()
    os.environ["CELLSYNTH_THREADS"] = str(threads)
    os.environ[THREADS_SOURCE] = source


def ask_to_stop(pool: Any, pending: Any) -> None:
    """Cancel the futures in ``pending`` not started yet and send SIGTERM once to each of the
    pool's processes (:func:`start_worker`'s processes stop their loops between steps)."""
    for future in pending:
        future.cancel()
    # (the pool's own record of its processes: no public accessor before 3.14)
    for process in list(getattr(pool, "_processes", {}).values()):
        try:
            os.kill(process.pid, signal.SIGTERM)
        except OSError:
            pass


def _train(job: dict[str, Any]) -> dict[str, Any]:
    from cellsynth.segment.trainer import train

    return train(**job, progress=False)


def _steps_done(folder: Path) -> int:
    """The last step a run folder's log has written (0 if none yet)."""
    from cellsynth.pipeline import layout

    try:
        with open(folder / layout.LOG, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


def train_side_by_side(jobs: dict[str, dict[str, Any]], *, processes: int, threads: int,
                       progress: bool = True) -> dict[str, dict[str, Any]]:
    """Train each job (the keyword arguments of :func:`~cellsynth.segment.trainer.train`,
    ``progress`` aside) in up to ``processes`` processes of ``threads`` threads each; return
    their summaries by name.

    One progress bar counts the steps of all runs. If a run fails, or this process gets
    SIGINT/SIGTERM, every running run is asked to stop (SIGTERM: it checkpoints between
    steps), runs not started are dropped, and then the first error (or
    :class:`KeyboardInterrupt`) is raised.
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from tqdm.auto import tqdm

    from cellsynth.signals import stop_between_steps

    total = sum(job["config"].steps for job in jobs.values())
    bar = tqdm(total=total, desc=f"train {len(jobs)} runs, {processes} at a time",
               unit="step", disable=not progress)
    results: dict[str, dict[str, Any]] = {}
    failure: BaseException | None = None
    # spawn, not fork: a forked child of a process whose OpenMP pool has run can hang
    context = multiprocessing.get_context("spawn")
    with stop_between_steps() as stop, bar, ProcessPoolExecutor(
            processes, mp_context=context, initializer=start_worker,
            initargs=(os.getpid(), threads)) as pool:
        futures = {pool.submit(_train, job): name for name, job in jobs.items()}
        pending, asked = set(futures), False
        while pending:
            done, pending = wait(pending, timeout=_POLL_SECONDS, return_when=FIRST_COMPLETED)
            for future in done:
                name = futures[future]
                if future.cancelled():
                    continue
                error = future.exception()
                if error is None:
                    results[name] = future.result()
                    log.info("%s: done, best validation F1@0.5 %.3f", name,
                             results[name]["best_val_f1"])
                elif failure is None and not isinstance(
                        error, (KeyboardInterrupt, BrokenProcessPool)):
                    failure = error
            bar.n = sum(_steps_done(Path(job["out"])) for job in jobs.values())
            bar.refresh()
            if (stop or failure is not None) and not asked:
                asked = True
                ask_to_stop(pool, pending)
    if failure is not None:
        raise failure
    if stop or len(results) < len(jobs):
        raise KeyboardInterrupt
    return results
