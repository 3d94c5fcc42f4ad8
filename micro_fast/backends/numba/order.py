"""The order of the top-k results and the exclusion lookup, as plain Python: compiled for the
CPU by ``topk`` and for the GPU by ``numba_cuda``, so both backends share one definition."""

from __future__ import annotations


def better(v, j, rv, rj):
    """The result order: larger value first, ties to the smaller index."""
    return v > rv or (v == rv and j < rj)


def in_sorted(ex_idx, lo, hi, col):
    """Whether ``col`` is in the sorted ``ex_idx[lo:hi]`` (binary search)."""
    while lo < hi:
        mid = (lo + hi) >> 1
        c = ex_idx[mid]
        if c == col:
            return True
        if c < col:
            lo = mid + 1
        else:
            hi = mid
    return False
