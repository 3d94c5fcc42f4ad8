"""The numba import (optional) and what every numba kernel module shares: the options of the
small per-tile helpers and the thread pool."""

from __future__ import annotations

import torch

try:
    import numba
    from numba import njit, prange
except ImportError as exc:  # numba is optional: the library falls back to other backends
    numba = None
    import_error = f"{exc}"

    def njit(*args, **kwargs):  # keeps the decorators importable without numba
        return lambda f: f

    prange = range
else:
    import_error = ""

# Options of the helpers that run per tile, row or candidate. They take arrays but never allocate,
# so they are compiled without NRT reference counting (``_nrt=False``, as numba does for its own
# hot helpers): counted, every array argument costs an atomic increment and decrement per call,
# which made a heap insertion ~7x slower.
LEAF = {"cache": True, "nogil": True, "_nrt": False}

_pool_started = False


def start_pool() -> None:
    """Starts numba's thread pool, keeping torch's thread count.

    With the OpenMP threading layer numba and torch share one OpenMP runtime, and starting the
    pool sets its thread count, torch's included, to ``NUMBA_NUM_THREADS``.
    """
    global _pool_started
    if not _pool_started:
        threads = torch.get_num_threads()
        numba.get_num_threads()  # starts the pool
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        _pool_started = True


def workers() -> int:
    """Sets and returns numba's thread count: torch's, within numba's pool."""
    start_pool()
    n = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n
