"""Measured choices between equivalent implementations, cached per machine.

Several ops have implementations that agree within float tolerance but whose speed depends on
the CPU: MICRO's fusion loss as one fused-view pass or as separate losses, the CSR product in
C++ or numba, the row projection in C++ or as torch's products, the tile sizes of the compiled
kernels. Rather than assume, the library measures the candidates once on this machine, on
small representative problems (a few seconds in all, the first time a choice is needed), and
keeps the fastest, as FFTW keeps its wisdom. A candidate replaces the default only when it is
faster by more than ``MARGIN``.

The choices live in ``tuning.json`` in the user cache directory (``$MICRO_FAST_CACHE_DIR``,
else ``$XDG_CACHE_HOME/micro_fast``, else ``~/.cache/micro_fast``), one entry per CPU model,
SIMD instruction set of the compiled core, thread count and library version, with the
measured times. ``micro-fast tune`` re-runs the calibration and prints the table;
``micro-fast info`` shows the cached choices. ``MICRO_FAST_TUNE=0`` turns it off: the built-in
defaults are used and nothing is measured or written. A measurement taken on a busy machine
(``BUSY_OTHERS``, ``BUSY_SPREAD``) is repeated, then discarded: its decision keeps the default
and nothing is cached. Under torchrun only local rank 0 measures. For a given choice results are
deterministic, bit for bit.

On a GPU the same holds per device model (``CUDA_DECISIONS``): the cuda kernels, numba_cuda
where its size bound allows, and the blocked torch implementations on cuBLAS (torch_ref) are
timed against each other on the GPU for the top-k search, the contrastive loss and the CSR
product, so that ``auto`` is never slower there than plain torch. Those entries are keyed by the
GPU's name and compute capability, the driver, the library version and the build of
``micro_fast._cuda``, and are measured the first time a CUDA tensor needs them (or by
``micro-fast tune``); a busy GPU is detected by the spread of the timed calls.

Calibration measures at the backend level (array in, array out): this module sits between the
backends and ``micro_fast.dispatch``, which turns the choices into each op's plan.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from micro_fast import tuning_problems as problems
from micro_fast.tuning_problems import (  # noqa: F401  (re-exported: the decision tables)
    CALIBRATION_ROWS,
    CUDA_DECISIONS,
    CUDA_ROWS,
    DECISIONS,
    Decision,
)

#: A candidate replaces the default only when it is faster by more than this share.
MARGIN = 0.03
#: Calibration rounds (after one warm-up per candidate): each round times every candidate once,
#: in turns, so a slow spell of a shared machine hits them alike; a candidate's fastest counts.
REPEATS = 5
#: A decision is measured on a busy machine when other processes used more than this share of
#: the CPUs while it was timed (from /proc/stat, less this process's own CPU time) ...
BUSY_OTHERS = 0.25
#: ... or when a candidate's median timed call is this much slower than its fastest.
BUSY_SPREAD = 0.5
#: Busy measurements are repeated this many times; still busy, the decision keeps its default
#: and the result is not cached (the next process measures again).
BUSY_RETRIES = 2
#: Under torchrun, the ranks other than local rank 0 wait this long for its measurement.
RANK_WAIT_S = 120.0


# --- the machine ------------------------------------------------------------------------

@functools.cache
def cpu_name() -> str:
    """CPU model as the OS reports it, with its family/model numbers where the name alone is
    generic (virtual machines often report only "AMD EPYC")."""
    name = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return name
    fields = {}
    for key in ("model name", "cpu family", "model", "stepping"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.M)
        if m:
            fields[key] = m.group(1).strip()
    name = fields.get("model name", name)
    if "cpu family" in fields:
        name += (f" (family {fields['cpu family']}, model {fields.get('model', '?')}, "
                 f"stepping {fields.get('stepping', '?')})")
    return name


def simd_isa() -> str:
    from micro_fast.backends import cpp

    return cpp.simd_isa()


@functools.cache
def build_id() -> str:
    """A digest of the compiled core's file: a rebuilt extension is calibrated afresh."""
    from micro_fast.backends import cpp

    path = getattr(cpp._C, "__file__", None)
    if not path:
        return "none"
    try:
        return hashlib.sha1(Path(path).read_bytes()).hexdigest()[:12]
    except OSError:
        return "unknown"


def machine_key(threads: int | None = None) -> dict[str, object]:
    """What a cached choice is valid for."""
    from micro_fast import __version__

    return {"cpu": cpu_name(), "isa": simd_isa(),
            "threads": int(threads or torch.get_num_threads()), "version": __version__,
            "build": build_id()}


def device_key(device: torch.device | str = "cpu", threads: int | None = None
               ) -> dict[str, object]:
    """What a cached choice for tensors of ``device`` is valid for: the CPU key, or the GPU's
    identity (``micro_fast.backends.cuda.device_identity``) and the library version."""
    device = torch.device(device)
    if device.type == "cpu":
        return machine_key(threads)
    from micro_fast import __version__
    from micro_fast.backends import cuda

    return {**cuda.device_identity(device), "version": __version__}


def _key_str(key: dict[str, object]) -> str:
    if "gpu" in key:
        return (f"{key['gpu']} | sm {key['cc']} | driver {key['driver']} | {key['version']} "
                f"({key['build']})")
    return (f"{key['cpu']} | {key['isa']} | {key['threads']} threads | {key['version']} "
            f"({key['build']})")


# --- the cache --------------------------------------------------------------------------

def enabled() -> bool:
    return os.environ.get("MICRO_FAST_TUNE", "1").strip().lower() not in ("0", "off", "false",
                                                                          "no")


def cache_dir() -> Path:
    if os.environ.get("MICRO_FAST_CACHE_DIR"):
        return Path(os.environ["MICRO_FAST_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "micro_fast"


def cache_path() -> Path:
    return cache_dir() / "tuning.json"


def _read_cache() -> dict[str, dict]:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(data: dict[str, dict]) -> None:
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Holds the cache's lock file: processes of one machine (torchrun ranks) calibrate one
    at a time, and the later ones find the first one's result."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock
        yield
        return
    cache_dir().mkdir(parents=True, exist_ok=True)
    with open(cache_dir() / "tuning.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


_memo: dict[str, dict] = {}
_lock = threading.Lock()


def cached_entry(threads: int | None = None, device: torch.device | str = "cpu") -> dict | None:
    """The cached entry for this machine, or for the GPU of ``device`` (``None`` if it was
    never calibrated)."""
    return _read_cache().get(_key_str(device_key(device, threads)))


_peeking = threading.local()


def _cpp_available() -> bool:
    from micro_fast.backends import cpp

    return cpp.is_available()[0]


@contextlib.contextmanager
def without_calibration() -> Iterator[None]:
    """Inside, ``choices()`` never measures: it returns the cached choices, or the defaults
    where none are cached (for ``micro-fast info``)."""
    before = getattr(_peeking, "on", False)
    _peeking.on = True
    try:
        yield
    finally:
        _peeking.on = before


def decisions(device: torch.device | str = "cpu") -> tuple[Decision, ...]:
    """The decisions measured for tensors of ``device``: ``DECISIONS`` on the CPU,
    ``CUDA_DECISIONS`` on a GPU."""
    return DECISIONS if torch.device(device).type == "cpu" else CUDA_DECISIONS


def _cuda_available() -> bool:
    from micro_fast.backends import cuda

    return cuda.is_available()[0]


def _measurable(device: torch.device) -> bool:
    """Whether the decisions of ``device`` can be measured here: the compiled core for the
    CPU; a GPU torch sees and the cuda backend for a CUDA device."""
    if device.type == "cpu":
        return _cpp_available()
    return device.type == "cuda" and _cuda_available()


def _scope(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


def choices(device: torch.device | str = "cpu") -> dict[str, object]:
    """The choices in force for this machine and thread count, or for the GPU of ``device``
    (calibrating them first if that was never done); the defaults when tuning is off or
    nothing can be measured (no compiled core, no usable GPU)."""
    device = torch.device(device)
    ds = decisions(device)
    defaults = {d.name: d.default for d in ds}
    if not enabled() or not _measurable(device):
        return defaults
    device = _scope(device)
    key = _key_str(device_key(device))
    if getattr(_peeking, "on", False):
        entry = _memo.get(key) or _read_cache().get(key)
        return dict(defaults, **entry["choices"]) if entry else defaults
    entry = _memo.get(key)
    if entry is None:
        with _lock:
            entry = _memo.get(key)
            if entry is None:
                entry = _usable(_read_cache().get(key), ds)
                if entry is None and not _owner():
                    entry = _wait_for_owner(key, ds) or _defaults_entry(
                        "local rank 0 of this job did not measure in time", device)
                if entry is None:
                    with _locked():
                        entry = _usable(_read_cache().get(key), ds)
                        if entry is None:
                            print(f"micro_fast: measuring the fastest kernels for this "
                                  f"{'machine' if device.type == 'cpu' else 'GPU'} once "
                                  f"({key}; cached in {cache_path()}; MICRO_FAST_TUNE=0 skips)",
                                  file=sys.stderr)
                            entry = calibrate(write=True, device=device)
                _memo[key] = entry
    return entry["choices"]


def _run_id() -> str | None:
    return os.environ.get("TORCHELASTIC_RUN_ID")


def _owner() -> bool:
    """Whether this process measures: not a torchrun rank other than local rank 0."""
    return os.environ.get("LOCAL_RANK", "0") in ("", "0")


def _usable(entry: dict | None, ds: tuple[Decision, ...] | None = None) -> dict | None:
    """A complete cached entry (for the decisions ``ds``, default the CPU's), unless it was
    measured on a busy machine for another job."""
    ds = DECISIONS if ds is None else ds
    if not entry or set(entry.get("choices", {})) != {d.name for d in ds}:
        return None
    provisional = entry.get("provisional")
    return entry if provisional is None or provisional == _run_id() else None


def _wait_for_owner(key: str, ds: tuple[Decision, ...] | None = None) -> dict | None:
    deadline = time.monotonic() + RANK_WAIT_S
    while time.monotonic() < deadline:
        entry = _usable(_read_cache().get(key), ds)
        if entry is not None:
            return entry
        time.sleep(0.2)
    return None


def _defaults_entry(why: str, device: torch.device | str = "cpu") -> dict:
    print(f"micro_fast: using the built-in kernel choices ({why})", file=sys.stderr)
    return {"key": device_key(device), "choices": {d.name: d.default for d in decisions(device)},
            "seconds": {}, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "defaults": why}


def choice(name: str, device: torch.device | str = "cpu") -> object:
    """One choice in force for tensors of ``device`` (see ``choices``)."""
    return choices(device)[name]


def calibrate(write: bool = True, log: Callable[[str], None] | None = None,
              device: torch.device | str = "cpu") -> dict:
    """Measures every decision's candidates with the current ISA and thread count (or, for a
    CUDA ``device``, the GPU decisions on that GPU), and (with ``write``) stores the result in
    the cache. Returns the entry: ``key``, ``choices``,
    ``seconds`` (per decision, per candidate) and ``date``; ``busy`` (decision -> why) when
    a decision was measured on a busy machine even after ``BUSY_RETRIES`` retries: it keeps
    its default, and the entry is not cached (under torchrun it is, for that job only)."""
    device = _scope(device)
    made: dict[str, object] = {}
    seconds: dict[str, dict[str, float]] = {}
    busy: dict[str, str] = {}
    t_start = time.perf_counter()
    with problems.measuring_on(device):
        for d in decisions(device):
            cands = d.candidates()
            if len(cands) <= 1:
                made[d.name] = cands[0] if cands else d.default
                seconds[d.name] = {}
                continue
            default = d.default if d.default in cands else cands[0]
            runs = {c: d.prepare(c, made) for c in cands}
            for _ in range(BUSY_RETRIES + 1):
                stats: dict = {}
                with _load_monitor() as load:
                    times = time_candidates(runs, stats)
                if device.type != "cpu":  # other processes' CPU time does not slow a GPU
                    load = {}
                why = _busy_reason(load, stats)
                if why is None:
                    break
            del runs  # the problems' device memory
            best = min(times, key=times.get)
            default_t = times.get(default)
            if why is not None or (default_t is not None
                                   and times[best] > default_t * (1 - MARGIN)):
                best = default
            if why is not None:
                busy[d.name] = why
            made[d.name] = best
            seconds[d.name] = {str(c): t for c, t in times.items()}
            if log:
                log(f"{d.name}: " + ", ".join(f"{c} {1e3 * t:.1f} ms" for c, t in times.items())
                    + f" -> {best}" + (f" (default: measured on a busy machine, {why})"
                                       if why else ""))
    key = device_key(device)
    entry = {"key": key, "choices": made, "seconds": seconds,
             "date": time.strftime("%Y-%m-%d %H:%M:%S"),
             "calibration_s": round(time.perf_counter() - t_start, 2)}
    if busy:
        entry["busy"] = busy
        print(f"micro_fast: the machine was busy while measuring {', '.join(busy)} "
              f"({next(iter(busy.values()))}): kept the defaults there, and "
              + ("cached them for this torchrun job only" if _run_id()
                 else "not cached (the next process measures again)"), file=sys.stderr)
    if busy and _run_id():
        entry["provisional"] = _run_id()  # the other ranks of this job adopt it, no one else
    if write and (not busy or _run_id()):
        data = _read_cache()
        data[_key_str(key)] = entry
        _write_cache(data)
    _memo[_key_str(key)] = entry
    return entry


def forget() -> None:
    """Drops the in-process choices (the cache file stays); the next use re-reads it."""
    _memo.clear()


# --- the measurements ---------------------------------------------------------------------

def time_candidates(runs: dict[object, Callable[[], object]],
                    stats: dict | None = None) -> dict[object, float]:
    """The fastest of ``REPEATS`` timed calls of each candidate, timed in turns; ``stats``
    receives ``spread``, the largest median-over-fastest ratio less one of a candidate."""
    for fn in runs.values():
        fn()
    calls: dict[object, list[float]] = {c: [] for c in runs}
    for _ in range(REPEATS):
        for c, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            calls[c].append(time.perf_counter() - t0)
    if stats is not None:
        stats["spread"] = max(sorted(t)[len(t) // 2] / max(min(t), 1e-12) - 1
                              for t in calls.values())
    return {c: min(t) for c, t in calls.items()}


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (/proc/stat), or None."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _load_monitor() -> Iterator[dict]:
    """Measures, around its block, the share of the CPUs that other processes used."""
    out: dict = {}
    wall0, own0, all0 = time.perf_counter(), time.process_time(), _busy_cpu_seconds()
    yield out
    wall, own = time.perf_counter() - wall0, time.process_time() - own0
    all1 = _busy_cpu_seconds()
    if all0 is not None and all1 is not None and wall > 0:
        out["others"] = max(0.0, (all1 - all0) - own) / (wall * (os.cpu_count() or 1))


def _busy_reason(load: dict, stats: dict) -> str | None:
    if load.get("others", 0.0) > BUSY_OTHERS:
        return f"other processes used {100 * load['others']:.0f}% of the CPUs"
    if stats.get("spread", 0.0) > BUSY_SPREAD:
        return f"timed calls spread by {100 * stats['spread']:.0f}%"
    return None


def describe(entry: dict | None = None, device: torch.device | str = "cpu") -> list[str]:
    """Lines for ``micro-fast info`` / ``tune``: the key, each choice and its measured times
    (for the CPU, or for the GPU of a CUDA ``device``)."""
    if not enabled():
        return ["tuning: off (MICRO_FAST_TUNE=0): built-in defaults"]
    device = _scope(device)
    entry = entry if entry is not None else cached_entry(device=device)
    key = _key_str(device_key(device))
    if entry is None:
        return [f"tuning: not calibrated yet for {key} (runs on first use, or "
                "`micro-fast tune`)", f"  cache: {cache_path()}"]
    lines = [f"tuning ({key}; {entry.get('date', '?')}, {entry.get('calibration_s', '?')} s):",
             f"  cache: {cache_path()}"]
    for d in decisions(device):
        chosen = entry["choices"].get(d.name, d.default)
        times = entry.get("seconds", {}).get(d.name, {})
        timing = ", ".join(f"{c} {1e3 * t:.1f} ms" for c, t in times.items())
        lines.append(f"  {d.name:<30} {chosen!s:<9} {f'({timing})' if timing else ''}".rstrip())
    return lines
