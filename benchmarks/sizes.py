"""Problem sizes of the suite, chosen with ``--bench-size``:

* ``small``: runs in about two minutes on 2 cores (CI checks the suite with it);
* ``paper``: the published datasets' sizes (Baby 7,050 items, Clothing 23,033 items);
* ``large``: 200,000 items, where the dense peers would need tens to hundreds of GB: they are
  skipped, and their skip reason says how much memory they would take.
"""

from __future__ import annotations

import os

NAMES = ("small", "paper", "large")

# kNN graph: (items, feature dim)
KNN = {
    "small": [(2000, 64), (5000, 64)],
    "paper": [(7050, 64), (23033, 64), (23033, 384), (7050, 4096)],
    "large": [(200_000, 64)],
}
# spmm: bipartite graphs (users, items, interactions) and kNN graphs (items); feature dims
SPMM_BIPARTITE = {"small": [(4000, 2500, 25_000), (8000, 5000, 50_000)],
                  "paper": [(19445, 7050, 160_792), (39387, 23033, 278_677)],
                  "large": [(300_000, 200_000, 3_000_000)]}
SPMM_KNN = {"small": [2500, 5000], "paper": [7050, 23033], "large": [200_000]}
SPMM_DIMS = {"small": [64], "paper": [64, 128], "large": [64]}
# contrastive loss: items (d = 64)
CONTRASTIVE = {"small": [1000, 3000], "paper": [7050, 23033], "large": [200_000]}
# training epoch / evaluation: a micro_fast.data.synthetic preset
TRAIN = {"small": "small", "paper": "baby", "large": "clothing"}

# a dense peer is skipped when its N x N float32 matrices would exceed this
DENSE_LIMIT_GB = float(os.environ.get("MICRO_FAST_BENCH_DENSE_GB", "8"))

# Every case of a group (one op at one size) gets the same warm-up calls and timed rounds, peers
# and our kernels alike: WARMUP + ROUNDS, or WARMUP + HUGE_ROUNDS where the group's size is past
# HUGE_N (the 200,000-item cases, where a call takes minutes).
WARMUP = 1
ROUNDS = 3
HUGE_N = 50_000
HUGE_ROUNDS = 1

_current = "small"


def timing(n: int) -> dict[str, int]:
    """``run_case`` keyword arguments (warm-up calls, timed rounds) of a group of size ``n``:
    the same for every case of the group."""
    return {"warmup": WARMUP, "rounds": HUGE_ROUNDS if n > HUGE_N else ROUNDS}


def set_current(name: str) -> None:
    global _current
    if name not in NAMES:
        raise ValueError(f"--bench-size must be one of {NAMES}, got {name!r}")
    _current = name


def current() -> str:
    return _current


def dense_gb(n: int, copies: int = 1) -> float:
    """Memory of ``copies`` float32 N x N matrices, in GB."""
    return copies * 4.0 * n * n / 1e9


def skip_dense_reason(n: int, copies: int = 1) -> str | None:
    gb = dense_gb(n, copies)
    if gb > DENSE_LIMIT_GB:
        return (f"out of memory: the dense path holds {gb:.0f} GB of N x N matrices at N={n} "
                f"(limit MICRO_FAST_BENCH_DENSE_GB={DENSE_LIMIT_GB:g})")
    return None
