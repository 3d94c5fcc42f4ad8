"""What the benchmark suite's fixtures and cases share: the thread count, the peak-memory
probe and the optional peers' imports."""

from __future__ import annotations

import gc
import os
import re
from collections.abc import Callable

import pytest

THREADS = int(os.environ.get("MICRO_FAST_BENCH_THREADS", "2"))


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        m = re.search(rf"^{field}:\s+(\d+) kB", fh.read(), re.M)
    return int(m.group(1)) if m else 0


def peak_extra_mb(fn: Callable[[], object]) -> float | None:
    """Peak resident memory above the starting point while ``fn`` runs, in MiB (Linux).

    Resets the kernel's high-water mark (``/proc/self/clear_refs``), so allocations by torch,
    NumPy, FAISS and the compiled kernels are all seen, unlike tracemalloc.
    """
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    gc.collect()
    base = _status_kb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return None
    result = fn()
    peak = _status_kb("VmHWM")
    del result
    return max(0.0, (peak - base) / 1024.0)


def strict() -> bool:
    """``MICRO_FAST_BENCH_STRICT=1`` (set by benchmarks/make_results.py): a peer whose optional
    module is missing fails its case instead of skipping it, so a results run cannot leave a
    comparison out silently."""
    return os.environ.get("MICRO_FAST_BENCH_STRICT", "0") not in ("", "0")


def require(module: str):
    """Imports an optional peer's module: skipped without it, or a failure in strict mode."""
    if strict():
        return __import__(module)
    return pytest.importorskip(module, reason=f"{module} not installed (pip install '.[bench]')")
