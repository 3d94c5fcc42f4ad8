"""CSR products and the bipartite user-item graph, JIT-compiled with numba
for the CPU (the contracts are those of ``micro_fast.backends``)."""

from __future__ import annotations

import numpy as np
import torch

from micro_fast.backends.numba._jit import njit, prange, workers
from micro_fast.errors import InputError


@njit(parallel=True, cache=True, nogil=True)
def _spmm_kernel(indptr, indices, values, x, y):
    m, d = y.shape
    for r in prange(m):
        for j in range(d):
            y[r, j] = 0.0
        for e in range(indptr[r], indptr[r + 1]):
            v = values[e]
            c = indices[e]
            for j in range(d):
                y[r, j] += v * x[c, j]


@njit(parallel=True, cache=True, nogil=True)
def _sddmm_kernel(indptr, indices, a, b, out):
    m, d = a.shape
    for r in prange(m):
        for e in range(indptr[r], indptr[r + 1]):
            c = indices[e]
            s = 0.0
            for j in range(d):
                s += a[r, j] * b[c, j]
            out[e] = s


def spmm(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor,
         x: torch.Tensor) -> torch.Tensor:
    workers()
    # torch's allocator reuses freed blocks; fresh NumPy outputs fault their pages in again
    y = torch.empty(indptr.numel() - 1, x.shape[1], dtype=x.dtype)
    _spmm_kernel(indptr.numpy(), indices.numpy(), values.detach().numpy(), x.detach().numpy(),
                 y.numpy())
    return y


def sddmm(indptr: torch.Tensor, indices: torch.Tensor, a: torch.Tensor,
          b: torch.Tensor) -> torch.Tensor:
    workers()
    out = torch.empty(indices.numel(), dtype=a.dtype)
    _sddmm_kernel(indptr.numpy(), indices.numpy(), a.detach().numpy(), b.detach().numpy(),
                  out.numpy())
    return out


@njit(cache=True, nogil=True)
def _bipartite_kernel(users, items, n_users, n_items, self_loops, sum_duplicates, power, sym):
    """Counting sort by user, per-user sort of items, duplicate merge, then the item rows by a
    second counting sort (users come out in order). Values in float64: the multiplicities,
    normalized."""
    n = n_users + n_items
    nnz = users.shape[0]
    uptr = np.zeros(n_users + 1, dtype=np.int64)
    for e in range(nnz):
        uptr[users[e] + 1] += 1
    for u in range(n_users):
        uptr[u + 1] += uptr[u]
    fill = uptr[:-1].copy()
    uitems = np.empty(nnz, dtype=np.int64)
    for e in range(nnz):
        uitems[fill[users[e]]] = items[e]
        fill[users[e]] += 1
    # merge duplicates in place: (item, count) runs per user
    cnt = np.empty(nnz, dtype=np.float64)
    dptr = np.zeros(n_users + 1, dtype=np.int64)
    w = 0
    for u in range(n_users):
        row = np.sort(uitems[uptr[u]:uptr[u + 1]])
        for t in range(row.shape[0]):
            if t > 0 and row[t] == row[t - 1]:
                if not sum_duplicates:
                    raise InputError("users/items: duplicate interaction")
                cnt[w - 1] += 1
            else:
                uitems[w] = row[t]
                cnt[w] = 1
                w += 1
        dptr[u + 1] = w
    loops = 1 if self_loops else 0
    indptr = np.zeros(n + 1, dtype=np.int64)
    for u in range(n_users):
        indptr[u + 1] = dptr[u + 1] - dptr[u] + loops
    for t in range(w):
        indptr[n_users + uitems[t] + 1] += 1
    for i in range(n_items):
        indptr[n_users + i + 1] += loops
    for r in range(n):
        indptr[r + 1] += indptr[r]
    indices = np.empty(indptr[n], dtype=np.int64)
    values = np.empty(indptr[n], dtype=np.float64)
    nxt = indptr[:-1].copy()
    for u in range(n_users):
        if self_loops:  # column u precedes every item column (>= n_users)
            indices[nxt[u]] = u
            values[nxt[u]] = 1
            nxt[u] += 1
        for t in range(dptr[u], dptr[u + 1]):
            r = n_users + uitems[t]
            indices[nxt[u]] = r
            values[nxt[u]] = cnt[t]
            nxt[u] += 1
            indices[nxt[r]] = u
            values[nxt[r]] = cnt[t]
            nxt[r] += 1
    if self_loops:  # column n_users + i follows every user column
        for i in range(n_items):
            r = n_users + i
            indices[nxt[r]] = r
            values[nxt[r]] = 1
    if power > 0:
        scale = np.zeros(n, dtype=np.float64)
        for r in range(n):
            deg = 0.0
            for e in range(indptr[r], indptr[r + 1]):
                deg += values[e]
            if deg > 0:
                scale[r] = deg ** -power
        for r in range(n):
            for e in range(indptr[r], indptr[r + 1]):
                f = scale[r] * scale[indices[e]] if sym else scale[r]
                values[e] = values[e] * f
    return indptr, indices, values


def bipartite_graph(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int,
                    normalization: str, self_loops: bool, duplicates: str,
                    dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    power = {"sym": 0.5, "rw": 1.0, "none": 0.0}[normalization]
    indptr, indices, values = _bipartite_kernel(
        users.numpy(), items.numpy(), int(n_users), int(n_items), bool(self_loops),
        duplicates == "sum", power, normalization == "sym")
    # one rounding to the output dtype, of the float64 products
    return (torch.from_numpy(indptr), torch.from_numpy(indices),
            torch.from_numpy(values).to(dtype))
