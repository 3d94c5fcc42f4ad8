"""Shared benchmark fixtures: thread count, peak-memory measurement, optional peers."""

from __future__ import annotations

import gc
import os
import re
import sys
from collections.abc import Callable

import pytest
import torch

# the suite's own modules (peers, sizes, reference_micro) import by name, wherever it lives
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import isas  # noqa: E402
import sizes  # noqa: E402

THREADS = int(os.environ.get("MICRO_FAST_BENCH_THREADS", "2"))


def pytest_addoption(parser):
    parser.addoption("--bench-size", default="small", choices=sizes.NAMES,
                     help="problem sizes of the suite: small (about 2 minutes on 2 cores), "
                          "paper (the published datasets) or large (200,000 items)")
    parser.addoption("--bench-isa", default="best",
                     help="instruction sets of the compiled cases: best (default), all (every "
                          "one this CPU runs) or a comma list such as avx2,generic")


def pytest_configure(config):
    sizes.set_current(config.getoption("--bench-size"))
    isas.set_selected(config.getoption("--bench-isa"))
    torch.set_num_threads(THREADS)
    try:
        import numba

        numba.set_num_threads(min(THREADS, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass
    try:
        import faiss

        faiss.omp_set_num_threads(THREADS)
    except ImportError:
        pass


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


@pytest.fixture
def run_case(benchmark):
    """Times ``fn`` with pytest-benchmark and records its peak extra memory."""

    def run(fn: Callable[[], object], *, rounds: int = 3, warmup: int = 1,
            isa: str | None = None, **info) -> None:
        """``isa``: for a compiled case, the instruction set to run it with (``"best"``: the
        library's pick), recorded in ``extra_info["isa"]``; ``None`` for other cases."""
        with isas.using(None if isa in (None, "best") else isa):
            if benchmark.disabled:  # --benchmark-disable: exercise the case once, measure nothing
                benchmark(fn)
                return
            if warmup:
                fn()
            benchmark.extra_info.update(info)
            benchmark.extra_info["threads"] = THREADS
            if isa is not None:
                benchmark.extra_info["isa"] = isas.current()
            benchmark.extra_info["peak_extra_mb"] = peak_extra_mb(fn)
            benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)

    return run
