"""Shared benchmark fixtures: thread count, peak-memory measurement, optional peers."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import pytest
import torch

# the suite's own modules (peers, sizes, reference_micro) import by name, wherever it lives
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import isas  # noqa: E402
import sizes  # noqa: E402
from harness import THREADS, peak_extra_mb  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--bench-size", default="small", choices=sizes.NAMES,
                     help="problem sizes of the suite: small (about 2 minutes on 2 cores), "
                          "paper (the published datasets) or large (200,000 items)")
    parser.addoption("--bench-isa", default="best",
                     help="instruction sets of the compiled cases: best (default), all (every "
                          "one this CPU runs) or a comma list such as avx2,generic")


_LOAD_AT_SESSION_START = os.getloadavg() if hasattr(os, "getloadavg") else None
_SESSION_START = time.time()
_CEILINGS_AT_START: dict | None = None


def pytest_benchmark_update_machine_info(config, machine_info):
    """The load average before the suite started and when it ended (the results JSON's
    ``machine_info``; report.py puts the first in the provenance header)."""
    machine_info["load_average_at_session_start"] = _LOAD_AT_SESSION_START
    machine_info["session_start_unix"] = _SESSION_START
    machine_info["ceilings_at_session_start"] = _CEILINGS_AT_START
    machine_info["load_average_at_session_end"] = (os.getloadavg() if hasattr(os, "getloadavg")
                                                   else None)


def pytest_configure(config):
    global _CEILINGS_AT_START
    sizes.set_current(config.getoption("--bench-size"))
    isas.set_selected(config.getoption("--bench-isa"))
    torch.set_num_threads(THREADS)
    if not config.getoption("benchmark_disable", False):
        import report

        # measured again after the run (micro-fast bench): the report takes the faster of the
        # two, so one disturbed measurement cannot inflate the "% of GEMM / copy" columns
        _CEILINGS_AT_START = report.ceilings(THREADS)
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


@pytest.fixture
def run_case(benchmark):
    """Times ``fn`` with pytest-benchmark and records its peak extra memory.

    Every case of a group must be called with the same ``warmup`` and ``rounds``
    (``sizes.timing(n)``): peers and our kernels get the same warm-up calls and timed rounds.
    The first warm-up call is timed too (``extra_info["first_call_s"]``, the cold call), so
    cold calls can be compared as well.
    """

    def run(fn: Callable[[], object], *, rounds: int = sizes.ROUNDS, warmup: int = sizes.WARMUP,
            isa: str | None = None, **info) -> None:
        """``isa``: for a compiled case, the instruction set to run it with (``"best"``: the
        library's pick), recorded in ``extra_info["isa"]``; ``None`` for other cases."""
        with isas.using(None if isa in (None, "best") else isa):
            if benchmark.disabled:  # --benchmark-disable: exercise the case once, measure nothing
                benchmark(fn)
                return
            benchmark.extra_info.update(info)
            for i in range(warmup):
                t0 = time.perf_counter()
                fn()
                if i == 0:
                    benchmark.extra_info["first_call_s"] = time.perf_counter() - t0
            benchmark.extra_info["warmup"] = warmup
            benchmark.extra_info["threads"] = THREADS
            if isa is not None:
                benchmark.extra_info["isa"] = isas.current()
            benchmark.extra_info["peak_extra_mb"] = peak_extra_mb(fn)
            benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=0)

    return run
