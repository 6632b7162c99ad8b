"""What this machine can do: the precision a model runs in and the CPU threads it may use.

Precision. bf16 autocast roughly halves a CPU step where the CPU computes bf16 natively
(AMX; some AVX-512-BF16 CPUs) and makes it ~10x *slower* where it is emulated (AVX2-only CPUs:
22 s vs 2.3 s for a detector step measured on an AMD EPYC); on an AVX-512-BF16 Xeon without
AMX it was 0.67x. So ``"auto"`` asks the hardware: the x86 CPU flags settle the clear cases
(no bf16: fp32; AMX: bf16), a short timed convolution the others, and on CUDA
``torch.cuda.is_bf16_supported``. ``CELLSYNTH_PRECISION=fp32|bf16`` overrides ``auto``.
An explicit ``"bf16"`` is honoured, with a warning when it is emulated.

Threads. Torch's intra-op threads spin at barriers; with one thread per core and another busy
process on the machine, one step became 10-35x slower here. :func:`configure_threads` uses
the cores this process may run on (affinity and cgroup quota), minus those other processes
are using right now, shared among the local worker processes (DDP ranks, Dask workers);
``--threads`` / ``CELLSYNTH_THREADS`` override it. :class:`ThreadGovernor` re-checks the load
during long loops and gives cores back (or takes them) as other processes come and go.
The thread count changes the order of float sums, so a training run is repeated exactly only
with the same counts at the same steps (the Nissl recipe, seed 0, on one machine: 0.742 F1@0.5
with 1 thread, 0.719 with 2); :class:`ThreadHistory` records them in a run's run.json.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import statistics
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["resolve_device", "Precision", "choose_precision", "announce", "cpu_bf16_support",
           "usable_cores", "busy_cores_elsewhere", "choose_threads", "configure_threads",
           "ThreadGovernor", "ThreadHistory", "die_with_parent", "cache_dir", "cpu_model",
           "available_memory", "torch_threads"]

log = logging.getLogger("cellsynth")

PrecisionName = Literal["fp32", "bf16"]
_PRECISIONS = ("auto", "fp32", "bf16")
# set beside CELLSYNTH_THREADS by the CLI's --threads, so the threads line names the option
THREADS_SOURCE = "CELLSYNTH_THREADS_SOURCE"
_BF16_MIN_SPEEDUP = 1.2   # the timed fallback picks bf16 only if it is clearly faster


@dataclass(frozen=True)
class Precision:
    """The precision a model runs in and why it was chosen."""

    name: PrecisionName
    reason: str

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    def __str__(self) -> str:
        return f"precision {self.name} ({self.reason})"


def resolve_device(device):
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` as a torch.device, checked to exist; a bad one
    raises :class:`cellsynth.errors.ConfigError` (one line in the CLI)."""
    import torch

    from cellsynth.errors import ConfigError

    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"invalid device {device!r}: {err}") from err
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be cpu or cuda, got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r} requested but there are only "
                              f"{torch.cuda.device_count()} CUDA device(s)")
    return dev


def _cpu_flags() -> frozenset[str] | None:
    """The x86 CPU flags of /proc/cpuinfo, or None where there are none (ARM, macOS, ...)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return None


def _best_simd(flags: frozenset[str]) -> str:
    for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX")):
        if flag in flags:
            return name
    return "no AVX"


@functools.lru_cache(maxsize=1)
def _timed_bf16_speedup() -> float:
    """fp32 time / bf16 time of a small conv-BN-ReLU stack (U-Net-like), forward+backward.

    Runs the two precisions interleaved, 5 times each after a warm-up, and compares medians
    (~0.6 s; ratios 0.83-0.90 in three runs where a CPN step measured 0.67).
    """
    import torch
    from torch import nn

    def block(a: int, b: int) -> list[nn.Module]:
        return [nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU()]

    # torch's global random state is left as it was: else the first model of a process would
    # start from other random numbers than the next (a run and its resume differed)
    with torch.random.fork_rng(devices=[]):
        net = nn.Sequential(*block(16, 32), *block(32, 32), nn.MaxPool2d(2), *block(32, 64),
                            *block(64, 64))
        x = torch.randn(2, 16, 128, 128)

    def once(bf16: bool) -> float:
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            net(x).float().sum().backward()
        return time.perf_counter() - started

    once(False), once(True)  # warm-up: kernel selection
    fp32, bf16 = zip(*[(once(False), once(True)) for _ in range(5)])
    return statistics.median(fp32) / statistics.median(bf16)


_announced: set[str] = set()


def forget_announcements() -> None:
    """Let :func:`announce` say everything again (a new command starts)."""
    _announced.clear()


def announce(message: str) -> None:
    """Log ``message`` once per process (every stage of a run asks the same questions)."""
    if message not in _announced:
        _announced.add(message)
        log.info("%s", message)


def cpu_bf16_support() -> tuple[bool, str]:
    """(whether bf16 pays on this CPU, why).

    No bf16 in the x86 flags: bf16 is emulated, fp32. AMX: bf16. AVX512-BF16 without AMX is
    not enough by itself (measured on such a Xeon with torch 2.14: a CPN training step 0.67x
    the speed of fp32, prediction 0.7x), so there, and where there are no x86 flags, a ~0.6 s
    timing of a small conv stack forward+backward decides: the median of the first three
    processes' timings on the machine, cached (see :func:`_machine_bf16_speedup`).
    """
    flags = _cpu_flags()
    if flags is not None:
        if "amx_bf16" in flags:
            return True, "CPU has native bf16 (AMX-BF16)"
        if "avx512_bf16" not in flags:
            return False, (f"CPU has no native bf16 ({_best_simd(flags)} only): "
                           "bf16 would be emulated and ~10x slower")
    speedup, timings = _machine_bf16_speedup(flags)
    where = "AVX512-BF16 without AMX" if flags is not None else "no x86 CPU flags"
    said = f"median of {timings} timings on this machine" if timings > 1 else "timed once"
    return speedup >= _BF16_MIN_SPEEDUP, (f"{where}; bf16 measured at {speedup:.2f}x the "
                                          f"speed of fp32 ({said})")


_TIMINGS_KEPT = 3  # per machine: after this many, the median decides without timing again


def cache_dir() -> Path:
    """Where cellsynth keeps per-machine measurements: ``$CELLSYNTH_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/cellsynth``, else ``~/.cache/cellsynth``."""
    if os.environ.get("CELLSYNTH_CACHE_DIR"):
        return Path(os.environ["CELLSYNTH_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cellsynth"


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo; elsewhere what ``platform`` knows)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _machine_key(flags: frozenset[str] | None) -> str:
    import hashlib
    import platform

    import torch

    text = "|".join([cpu_model(), platform.machine(), torch.__version__,
                     " ".join(sorted(flags or ()))])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _machine_bf16_speedup(flags: frozenset[str] | None) -> tuple[float, int]:
    """(bf16 speed-up, number of timings behind it) for this machine.

    One ~0.6 s timing swings with the load (0.46x-1.20x seen on one Xeon whose CPN step is
    0.67x), so a process decided differently from the next. The first ``_TIMINGS_KEPT``
    processes on a machine (CPU model, flags, torch version) each add a timing to
    ``cache_dir()/bf16.json``; from then on the median decides, without timing. Where the
    cache cannot be written, each process times once.
    """
    import json

    path = cache_dir() / "bf16.json"
    key = _machine_key(flags)
    try:
        cached = json.loads(path.read_text())
        timings = [float(t) for t in cached.get(key, [])]
    except (OSError, ValueError, AttributeError, TypeError):
        cached, timings = {}, []
    if len(timings) < _TIMINGS_KEPT:
        timings.append(round(_timed_bf16_speedup(), 4))
        try:  # written beside and renamed: concurrent processes never read half a file
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({**cached, key: timings}, indent=1))
            os.replace(tmp, path)
        except OSError:
            pass
    return statistics.median(timings), len(timings)


def choose_precision(requested: str = "auto", device: str = "cpu") -> Precision:
    """Resolve ``"auto"``/``"fp32"``/``"bf16"`` for ``device`` ("cpu", "cuda", "cuda:1")."""
    if requested not in _PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(_PRECISIONS)}, got {requested!r}")
    kind = str(device).split(":")[0]
    if requested == "fp32":  # nothing to ask the hardware (its bf16 timing costs ~0.6 s)
        return Precision("fp32", "requested")
    if requested == "auto":
        env = os.environ.get("CELLSYNTH_PRECISION", "").strip().lower()
        if env in ("fp32", "bf16"):
            return Precision(env, "set by CELLSYNTH_PRECISION")
        if env not in ("", "auto"):
            raise ValueError(f"CELLSYNTH_PRECISION must be auto, fp32 or bf16, got {env!r}")
    if kind == "cuda":
        import torch

        native = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        why = "GPU has native bf16" if native else "GPU has no native bf16"
    elif kind == "cpu":
        native, why = cpu_bf16_support()
    else:
        native, why = False, f"bf16 autocast not used on {kind}"
    if requested == "bf16":
        if not native:
            warnings.warn(f"bf16 requested but {why}", stacklevel=2)
        return Precision("bf16", "requested")
    return Precision("bf16" if native else "fp32", f"auto: {why}")


# --- threads ---------------------------------------------------------------------------------

def _cgroup_cpus() -> float | None:
    """The CPU quota of this process's cgroup in cores (v2 ``cpu.max`` or v1 CFS), if any."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 else None
    except (OSError, ValueError):
        return None


def usable_cores() -> int:
    """Cores this process may run on: CPU affinity, capped by a cgroup quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    quota = _cgroup_cpus()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, from /proc/stat; None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


def _own_ticks() -> float:
    times = os.times()
    return (times.user + times.system) * os.sysconf("SC_CLK_TCK")


class _LoadProbe:
    """Cores kept busy by *other* processes between two calls of :meth:`busy_elsewhere`."""

    def __init__(self) -> None:
        self._last = (_cpu_ticks(), _own_ticks())

    def busy_elsewhere(self) -> float | None:
        now = (_cpu_ticks(), _own_ticks())
        (before, own_before), (after, own_after) = self._last, now
        self._last = now
        if before is None or after is None or after[1] <= before[1]:
            return None
        cpus = os.cpu_count() or 1
        busy = (after[0] - before[0]) - (own_after - own_before)
        return max(0.0, busy / (after[1] - before[1]) * cpus)


def busy_cores_elsewhere(interval: float = 0.25) -> float:
    """How many cores other processes keep busy, sampled over ``interval`` seconds."""
    probe = _LoadProbe()
    time.sleep(interval)
    busy = probe.busy_elsewhere()
    return 0.0 if busy is None else busy


def _local_workers() -> int:
    """Processes of one job sharing this machine (torchrun's LOCAL_WORLD_SIZE)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def choose_threads(threads: int | None = None, *, busy_elsewhere: float | None = None,
                   workers: int | None = None) -> tuple[int, str]:
    """(threads, why) for torch's intra-op pool.

    ``threads`` (from ``--threads``) wins, then ``CELLSYNTH_THREADS``, then ``OMP_NUM_THREADS``
    as the user set it; otherwise the usable cores less those busy elsewhere, divided among
    ``workers`` local processes (default: torchrun's LOCAL_WORLD_SIZE), at least 1.
    """
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        return threads, "requested"
    for var in ("CELLSYNTH_THREADS", "OMP_NUM_THREADS"):
        text = os.environ.get(var, "").strip()
        if text:
            try:
                value = int(text)
            except ValueError:
                raise ValueError(f"{var} must be a positive integer, got {text!r}") from None
            if value < 1:
                raise ValueError(f"{var} must be a positive integer, got {text!r}")
            source = os.environ.get(THREADS_SOURCE) if var == "CELLSYNTH_THREADS" else None
            return value, f"set by {source or var}"
    cores = usable_cores()
    workers = _local_workers() if workers is None else max(1, workers)
    share = max(1, cores // workers)
    busy = busy_cores_elsewhere() if busy_elsewhere is None else busy_elsewhere
    free = max(1, min(share, math.floor(cores - busy + 0.3)))
    why = f"{cores} usable core(s)"
    if workers > 1:
        why += f" shared by {workers} processes"
    if free < share:
        why += f", {busy:.1f} busy elsewhere"
    return free, why


def configure_threads(threads: int | None = None, *, workers: int | None = None) -> int:
    """Set torch's intra-op threads by :func:`choose_threads`; log the choice once."""
    import torch

    n, why = choose_threads(threads, workers=workers)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    announce(f"threads {n} ({why})")
    return n


class ThreadGovernor:
    """Re-check the load every ``every`` seconds in a loop and adjust torch's threads.

    Call :meth:`tick` once per step. With an explicit thread count (``--threads``, the
    environment) it never changes anything.
    """

    def __init__(self, threads: int | None = None, *, every: float = 20.0,
                 workers: int | None = None):
        self.fixed = threads is not None or any(
            os.environ.get(v, "").strip() for v in ("CELLSYNTH_THREADS", "OMP_NUM_THREADS"))
        self.threads = configure_threads(threads, workers=workers)
        self.every = every
        self.workers = workers
        self._probe = _LoadProbe()
        self._next = time.monotonic() + every

    def tick(self) -> int:
        """The thread count for the next step (changed only when the load has changed)."""
        if self.fixed or time.monotonic() < self._next:
            return self.threads
        import torch

        self._next = time.monotonic() + self.every
        busy = self._probe.busy_elsewhere()
        if busy is not None:
            n, why = choose_threads(busy_elsewhere=busy, workers=self.workers)
            if n != self.threads:
                torch.set_num_threads(n)
                log.info("threads %d -> %d (%s)", self.threads, n, why)
                self.threads = n
        return self.threads


class ThreadHistory:
    """The torch thread counts of a training run, as ``entries`` ``[[done, threads], ...]``:
    ``threads`` from the step after ``done`` finished steps on. A run's results depend on them
    (the order of float sums), so run.json keeps them beside the seed and the precision.

    ``previous``: the entries a resumed run recorded before (those from at or after ``step``,
    the step it resumes at, belong to the steps the killed run did not keep); ``threads``:
    the count it starts with now.
    """

    def __init__(self, previous: object, step: int, threads: int):
        kept = [[int(e[0]), int(e[1])] for e in previous if int(e[0]) < step] \
            if isinstance(previous, list) else []
        self.entries: list[list[int]] = kept
        self.update(step, threads)

    def update(self, done: int, threads: int) -> bool:
        """Record ``threads`` from step ``done`` + 1 on; True if that is a change."""
        if self.entries and self.entries[-1][1] == threads:
            return False
        self.entries.append([int(done), int(threads)])
        return True


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` within the block (None: unchanged), and
    what they were before restored after it."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def available_memory() -> int | None:
    """Bytes of memory available to new work (Linux's MemAvailable), or None if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def die_with_parent(parent: int) -> None:
    """In a worker process: end when ``parent`` (the process that started it) ends.

    A worker orphaned by ``kill -9`` of its parent would otherwise go on writing into the
    parent's staging folder while a rerun cleans that folder away. On Linux the kernel sends
    the worker SIGKILL when its parent dies (``PR_SET_PDEATHSIG``); elsewhere, and if the parent
    is already gone, the check of the parent's process id ends it at the next call.
    """
    import ctypes
    import signal
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:
        os._exit(1)
