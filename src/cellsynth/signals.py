"""Stop long training loops *between* steps on Ctrl-C or SIGTERM, so they can checkpoint.

A signal in the middle of an optimiser step would leave half-updated weights; instead the
first SIGINT/SIGTERM only sets a flag that the loop checks after each step (it then saves a
checkpoint and raises :class:`KeyboardInterrupt`). A second one stops at once.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

__all__ = ["StopRequest", "stop_between_steps", "remember_stop_signals"]


class StopRequest:
    """Truthy once a stop was asked for; ``name`` says by which signal."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""


# what SIGINT/SIGTERM asked for outside a loop, where remember_stop_signals() was called
_remembered: StopRequest | None = None


def remember_stop_signals() -> None:
    """In a worker process that runs training loops: SIGINT/SIGTERM outside a loop (while
    the worker waits or a run loads its data) neither kill it nor are lost; the next loop
    starts with the stop already asked for, so it stops after its first step, checkpointed."""
    global _remembered
    _remembered = StopRequest()

    def handler(signum, frame):
        _remembered.signum = signum

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, handler)


@contextlib.contextmanager
def stop_between_steps() -> Iterator[StopRequest]:
    """Within the block, SIGINT/SIGTERM set the yielded request instead of interrupting."""
    request = StopRequest()
    if _remembered:
        request.signum = _remembered.signum
    if threading.current_thread() is not threading.main_thread():
        yield request  # signal handlers can only be set in the main thread
        return

    def handler(signum, frame):
        if request:
            raise KeyboardInterrupt  # asked twice: stop now
        request.signum = signum
        if _remembered is not None:
            _remembered.signum = signum  # (a later loop in this process stops too)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
