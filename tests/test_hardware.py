"""Precision and thread decisions, with the hardware mocked."""

import warnings

import pytest

from cellsynth import hardware

AVX2_ONLY = frozenset({"fpu", "sse4_2", "avx", "avx2", "fma"})
AVX512_NO_BF16 = AVX2_ONLY | {"avx512f", "avx512bw", "avx512_vnni"}
AVX512_BF16 = AVX512_NO_BF16 | {"avx512_bf16"}
AMX = AVX2_ONLY | {"amx_tile", "amx_bf16"}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    for var in ("CELLSYNTH_PRECISION", "CELLSYNTH_THREADS", "OMP_NUM_THREADS",
                "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CELLSYNTH_CACHE_DIR", str(tmp_path / "cache"))  # no timings kept


def _flags(monkeypatch, flags, speedup=None):
    """Mock the CPU flags and the bf16 timing (None: the timing must not run)."""
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: flags)

    def timing():
        if speedup is None:
            raise AssertionError("the flags settle this case: no timing should run")
        return speedup
    monkeypatch.setattr(hardware, "_timed_bf16_speedup", timing)


@pytest.mark.parametrize("flags, expected", [
    (AVX2_ONLY, "fp32"), (AVX512_NO_BF16, "fp32"), (AMX, "bf16")])
def test_auto_follows_clear_cpu_flags_without_timing(monkeypatch, flags, expected):
    _flags(monkeypatch, flags)
    chosen = hardware.choose_precision("auto", "cpu")
    assert chosen.name == expected
    assert chosen.bf16 == (expected == "bf16")


@pytest.mark.parametrize("speedup, expected", [(0.62, "fp32"), (1.9, "bf16")])
def test_avx512_bf16_without_amx_is_timed(monkeypatch, speedup, expected):
    _flags(monkeypatch, AVX512_BF16, speedup=speedup)
    chosen = hardware.choose_precision("auto", "cpu")
    assert chosen.name == expected and f"{speedup:.2f}x" in chosen.reason
    assert "AVX512-BF16 without AMX" in chosen.reason


def test_the_timing_decision_is_the_median_of_the_first_three_processes(monkeypatch):
    """A loaded moment must not flip the decision: three timings are kept per machine."""
    timings = iter([1.25, 0.6, 0.7, 5.0])
    _flags(monkeypatch, AVX512_BF16)
    monkeypatch.setattr(hardware, "_timed_bf16_speedup", lambda: next(timings))
    decisions = [hardware.choose_precision("auto", "cpu") for _ in range(4)]
    assert [d.name for d in decisions] == ["bf16", "fp32", "fp32", "fp32"]
    assert "1.25x" in decisions[0].reason and "timed once" in decisions[0].reason
    assert "0.70x" in decisions[2].reason and "median of 3 timings" in decisions[3].reason
    assert next(timings) == 5.0  # the fourth process did not time
    _flags(monkeypatch, AVX512_BF16 | {"avx512_fp16"}, speedup=1.9)  # another machine
    assert hardware.choose_precision("auto", "cpu").name == "bf16"


def test_the_timing_still_decides_where_the_cache_cannot_be_written(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("CELLSYNTH_CACHE_DIR", str(blocker / "cache"))  # under a file
    _flags(monkeypatch, AVX512_BF16, speedup=1.9)
    assert hardware.choose_precision("auto", "cpu").name == "bf16"


def test_auto_on_avx2_says_why(monkeypatch):
    _flags(monkeypatch, AVX2_ONLY)
    text = str(hardware.choose_precision("auto", "cpu"))
    assert text.startswith("precision fp32") and "AVX2 only" in text and "emulated" in text


def test_explicit_bf16_is_honoured_with_a_warning_where_emulated(monkeypatch):
    _flags(monkeypatch, AVX2_ONLY)
    with pytest.warns(UserWarning, match="emulated"):
        assert hardware.choose_precision("bf16", "cpu").name == "bf16"
    _flags(monkeypatch, AMX)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert hardware.choose_precision("bf16", "cpu").name == "bf16"
        assert hardware.choose_precision("fp32", "cpu").name == "fp32"


def test_environment_overrides_auto_only(monkeypatch):
    _flags(monkeypatch, AMX)
    monkeypatch.setenv("CELLSYNTH_PRECISION", "fp32")
    assert hardware.choose_precision("auto", "cpu").name == "fp32"
    assert hardware.choose_precision("bf16", "cpu").name == "bf16"  # explicit wins
    monkeypatch.setenv("CELLSYNTH_PRECISION", "fp16")
    with pytest.raises(ValueError, match="CELLSYNTH_PRECISION.*fp16"):
        hardware.choose_precision("auto", "cpu")


def test_without_flags_a_timing_decides(monkeypatch, tmp_path):
    monkeypatch.setattr(hardware, "_cpu_flags", lambda: None)  # ARM, macOS
    monkeypatch.setattr(hardware, "_timed_bf16_speedup", lambda: 0.1)
    chosen = hardware.choose_precision("auto", "cpu")
    assert chosen.name == "fp32" and "0.10x" in chosen.reason
    monkeypatch.setattr(hardware, "_timed_bf16_speedup", lambda: 1.9)
    monkeypatch.setenv("CELLSYNTH_CACHE_DIR", str(tmp_path / "another machine's cache"))
    assert hardware.choose_precision("auto", "cpu").name == "bf16"


def test_cuda_asks_torch(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert hardware.choose_precision("auto", "cuda:0").name == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert hardware.choose_precision("auto", "cuda").name == "bf16"


def test_bad_precision_is_rejected():
    with pytest.raises(ValueError, match="'half'"):
        hardware.choose_precision("half", "cpu")


def test_cpu_flags_parse_proc_cpuinfo(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu avx2 avx512_bf16\n")
    real_path = hardware.Path
    monkeypatch.setattr(hardware, "Path", lambda p: cpuinfo if p == "/proc/cpuinfo"
                        else real_path(p))
    assert hardware._cpu_flags() == frozenset({"fpu", "avx2", "avx512_bf16"})


# --- threads ---------------------------------------------------------------------------------

def test_threads_use_the_free_cores(monkeypatch):
    monkeypatch.setattr(hardware, "usable_cores", lambda: 2)
    assert hardware.choose_threads(busy_elsewhere=0.0)[0] == 2
    n, why = hardware.choose_threads(busy_elsewhere=1.0)  # one busy process elsewhere
    assert n == 1 and "busy elsewhere" in why
    assert hardware.choose_threads(busy_elsewhere=5.0)[0] == 1  # never 0


def test_threads_are_shared_among_local_workers(monkeypatch):
    monkeypatch.setattr(hardware, "usable_cores", lambda: 8)
    assert hardware.choose_threads(busy_elsewhere=0.0, workers=4)[0] == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    assert hardware.choose_threads(busy_elsewhere=0.0)[0] == 2


def test_explicit_threads_win(monkeypatch):
    monkeypatch.setattr(hardware, "usable_cores", lambda: 2)
    assert hardware.choose_threads(3, busy_elsewhere=1.5) == (3, "requested")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert hardware.choose_threads(busy_elsewhere=0.0) == (1, "set by OMP_NUM_THREADS")
    monkeypatch.setenv("CELLSYNTH_THREADS", "2")
    assert hardware.choose_threads(busy_elsewhere=0.0) == (2, "set by CELLSYNTH_THREADS")
    monkeypatch.setenv("CELLSYNTH_THREADS", "lots")
    with pytest.raises(ValueError, match="CELLSYNTH_THREADS.*'lots'"):
        hardware.choose_threads()


def test_cgroup_quota_caps_the_cores(monkeypatch):
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(hardware, "_cgroup_cpus", lambda: 1.5)
    assert hardware.usable_cores() == 2
    monkeypatch.setattr(hardware, "_cgroup_cpus", lambda: None)
    assert hardware.usable_cores() == 4


def test_governor_adapts_to_the_load(monkeypatch):
    import torch

    monkeypatch.setattr(hardware, "usable_cores", lambda: 2)
    monkeypatch.setattr(hardware, "busy_cores_elsewhere", lambda interval=0.25: 0.0)
    before = torch.get_num_threads()
    try:
        governor = hardware.ThreadGovernor(every=0.0)
        assert governor.threads == 2
        monkeypatch.setattr(governor._probe, "busy_elsewhere", lambda: 1.0)
        assert governor.tick() == 1 and torch.get_num_threads() == 1
        monkeypatch.setattr(governor._probe, "busy_elsewhere", lambda: 0.0)
        assert governor.tick() == 2 and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_governor_keeps_an_explicit_count(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        governor = hardware.ThreadGovernor(1, every=0.0)
        monkeypatch.setattr(governor._probe, "busy_elsewhere", lambda: 0.0)
        assert governor.tick() == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_bf16_timing_leaves_torchs_random_state_alone():
    import torch

    hardware._timed_bf16_speedup.cache_clear()
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    hardware._timed_bf16_speedup()
    assert torch.equal(torch.rand(3), expected)
