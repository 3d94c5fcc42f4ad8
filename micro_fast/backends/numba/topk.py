"""The blocked top-k similarity kernel of ``csrc/cpu``, JIT-compiled with numba for the CPU.

For queries ``X`` [M, d] and keys ``Y`` [N, d] (``Y = X`` when ``keys`` is ``None``), row ``i``
of the result holds the ``k`` best pairs ``(s_ij, j)``, ``s_ij = <x_i, y_j> = sum_p x_ip y_jp``,
over the admissible keys ``j`` (those not listed in row ``i`` of ``exclude``), under the total
order

    (s, j) > (s', j')  <=>  s > s'  or  (s = s' and j < j'),

best first, padded with ``(-inf, -1)`` when fewer than ``k`` keys are admissible.

``S = X Y^T`` is never materialized. Rows and keys are split into blocks of ``B`` and each block
pair yields a tile ``S_IJ = X_I Y_J^T``: the block of queries is packed transposed (``X_I^T``, kept
while a worker's consecutive tiles share it), the rows of the other block stream through it
``P = 16`` at a time, and each panel of ``S`` is selected from while it sits in L1. Extra memory
is ``O(threads * B * (P + d))`` besides the lists.

Each row keeps a bounded heap of ``k`` entries whose root is its worst, and a threshold: ``-inf``
until the heap is full, then its root value. Tile entries below their row's threshold are dropped
by a vectorized compare; the survivors meet the exact order and, if they would be kept, the
binary search in the row's sorted exclude list. As the order is total, the kept set depends
neither on the order in which tiles are visited nor on the thread count, and neither do the
values: every ``s_ij`` is summed over ``p`` in order, by one and the same arithmetic.

In the symmetric case each block pair ``(I, J >= I)`` is computed once: ``S_IJ`` feeds the lists
of the rows of ``J`` (keys ``i``) and, when ``J != I``, those of the rows of ``I`` (keys ``j``,
as ``s_ji = s_ij``). A tile thus touches rows other workers also update, so each worker fills
private lists for all rows, merged at the end; the thresholds are shared, since any list's root
bounds what can make the final top k (see ``_offer``). The merge offers entries already
filtered, so it needs no exclusion checks.
"""

from __future__ import annotations

import numpy as np
import torch

from micro_fast.backends.numba._jit import LEAF, njit, prange, workers
from micro_fast.backends.numba.order import better, in_sorted

# Block sizes tried by default, largest first: larger blocks mean fewer tiles, hence fewer passes
# of the selection over each row; smaller ones more tasks to balance over the workers.
_BLOCKS = (512, 256, 128, 64)
# Feature-dimension chunk: the rows of a packed block that one pass reads stay in L1/L2.
_CHUNK = 64
# Entries per vectorized probe when looking for the candidates of a tile row.
_SEG = 16
# Rows of S computed, then selected, at a time.
_PANEL = 16
# Private per-worker lists are used only while they stay this small.
_PRIVATE_LIST_BUDGET = 256 << 20

_EMPTY = np.zeros(0, dtype=np.int64)

_better = njit(cache=True, nogil=True)(better)
_in_sorted = njit(**LEAF)(in_sorted)


@njit(**LEAF)
def _excluded(ex_ptr, ex_idx, row, col):
    if ex_ptr.shape[0] == 0:
        return False
    return _in_sorted(ex_idx, ex_ptr[row], ex_ptr[row + 1], col)


@njit(**LEAF)
def _sift_down(hv, hi, row, end, v, j):
    """Places ``(v, j)`` at the root of ``row``'s heap ``[0, end)`` and sifts it down."""
    pos = 0
    while True:
        c = 2 * pos + 1
        if c >= end:
            break
        if c + 1 < end and _better(hv[row, c], hi[row, c], hv[row, c + 1], hi[row, c + 1]):
            c += 1  # the worse child
        if not _better(v, j, hv[row, c], hi[row, c]):
            break
        hv[row, pos] = hv[row, c]
        hi[row, pos] = hi[row, c]
        pos = c
    hv[row, pos] = v
    hi[row, pos] = j


@njit(**LEAF)
def _offer(hv, hi, cnt, thr, row, v, j, ex_ptr, ex_idx):
    """Offers ``(v, j)`` to the list of ``row``, raising ``thr[row]`` to its root once full.

    ``thr`` may be shared by workers whose lists hold different candidates of the same rows:
    any list's root is a bound below which no candidate can make the final top k, and such
    bounds only rise, so a racy write loses at worst the larger of two valid bounds.
    """
    k = hv.shape[1]
    n = cnt[row]
    if n == k and not _better(v, j, hv[row, 0], hi[row, 0]):
        return
    # the binary search runs only for candidates that would be kept: they are few
    if _excluded(ex_ptr, ex_idx, row, j):
        return
    if n < k:
        pos = n
        while pos > 0:
            parent = (pos - 1) >> 1
            # the parent must stay the worse of the two
            if not _better(hv[row, parent], hi[row, parent], v, j):
                break
            hv[row, pos] = hv[row, parent]
            hi[row, pos] = hi[row, parent]
            pos = parent
        hv[row, pos] = v
        hi[row, pos] = j
        cnt[row] = n + 1
        if n + 1 == k and hv[row, 0] > thr[row]:
            thr[row] = hv[row, 0]
        return
    _sift_down(hv, hi, row, k, v, j)
    if hv[row, 0] > thr[row]:
        thr[row] = hv[row, 0]


@njit(**LEAF)
def _finish_row(hv, hi, cnt, row):
    """Heap-sorts the list of ``row`` best first and pads it with ``(-inf, -1)``."""
    k = hv.shape[1]
    n = cnt[row]
    for end in range(n - 1, 0, -1):
        v0 = hv[row, 0]
        j0 = hi[row, 0]
        _sift_down(hv, hi, row, end, hv[row, end], hi[row, end])
        hv[row, end] = v0
        hi[row, end] = j0
    for e in range(k):
        # a product that overflowed to -inf reads as padding, as in the reference
        if e >= n or hv[row, e] == -np.inf:
            hv[row, e] = -np.inf
            hi[row, e] = -1


@njit(**LEAF)
def _pack(x, i0, mb, pt):
    """``pt[:, :mb] = x[i0:i0+mb].T``: the packed operand, read at unit stride over its rows."""
    d = x.shape[1]
    for c in range(mb):
        xrow = x[i0 + c]
        for p in range(d):
            pt[p, c] = xrow[p]


@njit(**LEAF)
def _gemm4(s, r, a, ar, pt, q0, q1, np_):
    """``s[r:r+4, :np_] += a[ar:ar+4, q0:q1] @ pt[q0:q1, :np_]``, summing in feature order.

    The innermost loops run at unit stride over the packed rows: they vectorize without
    reassociating sums. Four rows share each loaded vector of ``pt`` and eight features each
    load and store of ``s``, which a one-row axpy is bound by; every dot product is still summed
    one feature at a time, left to right, so the values are those of the plain loop wherever a
    pair falls in a tile, and depend neither on the blocking nor on the thread count.
    """
    s0 = s[r]
    s1 = s[r + 1]
    s2 = s[r + 2]
    s3 = s[r + 3]
    x0 = a[ar]
    x1 = a[ar + 1]
    x2 = a[ar + 2]
    x3 = a[ar + 3]
    q = q0
    while q + 8 <= q1:
        b0 = pt[q]
        b1 = pt[q + 1]
        b2 = pt[q + 2]
        b3 = pt[q + 3]
        b4 = pt[q + 4]
        b5 = pt[q + 5]
        b6 = pt[q + 6]
        b7 = pt[q + 7]
        a00, a01, a02, a03 = x0[q], x0[q + 1], x0[q + 2], x0[q + 3]
        a04, a05, a06, a07 = x0[q + 4], x0[q + 5], x0[q + 6], x0[q + 7]
        a10, a11, a12, a13 = x1[q], x1[q + 1], x1[q + 2], x1[q + 3]
        a14, a15, a16, a17 = x1[q + 4], x1[q + 5], x1[q + 6], x1[q + 7]
        a20, a21, a22, a23 = x2[q], x2[q + 1], x2[q + 2], x2[q + 3]
        a24, a25, a26, a27 = x2[q + 4], x2[q + 5], x2[q + 6], x2[q + 7]
        a30, a31, a32, a33 = x3[q], x3[q + 1], x3[q + 2], x3[q + 3]
        a34, a35, a36, a37 = x3[q + 4], x3[q + 5], x3[q + 6], x3[q + 7]
        for c in range(np_):
            c0 = b0[c]
            c1 = b1[c]
            c2 = b2[c]
            c3 = b3[c]
            c4 = b4[c]
            c5 = b5[c]
            c6 = b6[c]
            c7 = b7[c]
            v = s0[c] + a00 * c0 + a01 * c1 + a02 * c2 + a03 * c3
            s0[c] = v + a04 * c4 + a05 * c5 + a06 * c6 + a07 * c7
            v = s1[c] + a10 * c0 + a11 * c1 + a12 * c2 + a13 * c3
            s1[c] = v + a14 * c4 + a15 * c5 + a16 * c6 + a17 * c7
            v = s2[c] + a20 * c0 + a21 * c1 + a22 * c2 + a23 * c3
            s2[c] = v + a24 * c4 + a25 * c5 + a26 * c6 + a27 * c7
            v = s3[c] + a30 * c0 + a31 * c1 + a32 * c2 + a33 * c3
            s3[c] = v + a34 * c4 + a35 * c5 + a36 * c6 + a37 * c7
        q += 8
    while q < q1:
        b0 = pt[q]
        a0, a1, a2, a3 = x0[q], x1[q], x2[q], x3[q]
        for c in range(np_):
            c0 = b0[c]
            s0[c] += a0 * c0
            s1[c] += a1 * c0
            s2[c] += a2 * c0
            s3[c] += a3 * c0
        q += 1


@njit(**LEAF)
def _scan(srow, np_, t, tcols, to_cols, hits, hv, hi, cnt, thr, arow, p0, ex_ptr, ex_idx):
    """Offers the ``hits`` entries of ``srow[:np_]`` that passed their threshold when counted.

    Entry ``c`` is the pair (``arow``, ``p0 + c``). Offered to the list of ``arow``, it was
    counted against ``t``, that row's threshold; offered to the list of ``p0 + c`` (``to_cols``)
    against ``tcols[c]``, that row's, which no other entry of this scan can raise. Thresholds
    only rise, so the entries that passed then are all the candidates: they are located 16 at a
    time with a vectorized count, then one by one, and the scan stops after the last. (Should
    another worker raise a ``tcols[c]`` meanwhile, the scan merely runs to the end of the row.)
    """
    c0 = 0
    while hits > 0 and c0 < np_:
        if not to_cols and thr[arow] > t:
            # The row's threshold rose (from -inf, when this scan filled its list, or by another
            # worker): recounting the rest is one vector pass, rescanning it one entry at a time.
            t = thr[arow]
            rest = srow[c0:np_]
            hits = 0
            for c in range(np_ - c0):
                if rest[c] >= t:
                    hits += 1
            if hits == 0:
                break
        c1 = min(np_, c0 + _SEG)
        if c1 - c0 == _SEG:
            seg = srow[c0:c1]
            h = 0
            if to_cols:
                tseg = tcols[c0:c1]
                for q in range(_SEG):
                    if seg[q] >= tseg[q]:
                        h += 1
            else:
                for q in range(_SEG):
                    if seg[q] >= t:
                        h += 1
            if h == 0:
                c0 = c1
                continue
        for c in range(c0, c1):
            v = srow[c]
            if to_cols:
                if v >= tcols[c]:
                    hits -= 1
                    _offer(hv, hi, cnt, thr, p0 + c, v, arow, ex_ptr, ex_idx)
            elif v >= t:
                hits -= 1
                if v >= thr[arow]:  # the row's threshold rises as its entries are kept
                    _offer(hv, hi, cnt, thr, arow, v, p0 + c, ex_ptr, ex_idx)
        c0 = c1


# --- one tile ------------------------------------------------------------------------------------


@njit(**LEAF)
def _tile(a, a0, ma, pt, p0, np_, s, hv, hi, cnt, thr, to_rows, to_cols, ex_ptr, ex_idx):
    """Folds the tile ``T = a[a0:a0+ma] P^T`` into the lists, ``P^T`` being packed in ``pt``.

    ``T[r, c]`` is the similarity of rows ``a0 + r`` (of ``a``) and ``p0 + c`` (of the packed
    block); ``to_rows`` offers it to the list of ``a0 + r`` with key ``p0 + c``, ``to_cols`` to
    the list of ``p0 + c`` with key ``a0 + r``. When both are set the two blocks are disjoint,
    so the two directions never update the same row.
    """
    d = a.shape[1]
    # thr[p0 + c] would be a gather: numba wraps negative indices, and LLVM cannot prove
    # p0 + c >= 0; a slice indexed by the loop counter is a plain vector load
    tcols = thr[p0:p0 + np_]
    # A panel of rows at a time, so that the selection rereads T from L1.
    for r0 in range(0, ma, _PANEL):
        pr = min(_PANEL, ma - r0)
        for r in range(pr):
            srow = s[r]
            for c in range(np_):
                srow[c] = 0
        for q0 in range(0, d, _CHUNK):
            q1 = min(d, q0 + _CHUNK)
            r = 0
            while r + 4 <= pr:
                _gemm4(s, r, a, a0 + r0 + r, pt, q0, q1, np_)
                r += 4
            while r < pr:
                arow = a[a0 + r0 + r]
                srow = s[r]
                for q in range(q0, q1):
                    x = arow[q]
                    prow = pt[q]
                    for c in range(np_):
                        srow[c] += x * prow[c]
                r += 1
        for r in range(pr):
            srow = s[r]
            i = a0 + r0 + r
            # Branch-free counts vectorize; the scans run only for rows with candidates.
            hits = 0
            chits = 0
            t = thr[i if to_rows else p0]  # read even when unused, to keep one dtype
            if to_rows and to_cols:
                for c in range(np_):
                    v = srow[c]
                    if v >= t:
                        hits += 1
                    if v >= tcols[c]:
                        chits += 1
            elif to_rows:
                for c in range(np_):
                    if srow[c] >= t:
                        hits += 1
            else:
                for c in range(np_):
                    if srow[c] >= tcols[c]:
                        chits += 1
            if hits > 0:
                _scan(srow, np_, t, tcols, False, hits, hv, hi, cnt, thr, i, p0, ex_ptr, ex_idx)
            if chits > 0:
                _scan(srow, np_, t, tcols, True, chits, hv, hi, cnt, thr, i, p0, ex_ptr, ex_idx)


# --- drivers -------------------------------------------------------------------------------------
#
# The packed operand of a tile is a block of queries: consecutive tiles of a worker share it, so
# it is packed once per run of tiles, and the other block streams through row by row.


@njit(cache=True, nogil=True, parallel=True)
def _run_rows(x, y, k, block, ex_ptr, ex_idx):
    """Row-parallel: each query block belongs to one worker, whose lists are the outputs."""
    m, d = x.shape
    n = y.shape[0]
    vals = np.empty((m, k), dtype=x.dtype)
    idx = np.empty((m, k), dtype=np.int64)
    cnt = np.zeros(m, dtype=np.int64)
    thr = np.full(m, -np.inf, dtype=x.dtype)
    row_blocks = (m + block - 1) // block
    for bi in prange(row_blocks):
        pt = np.empty((d, block), dtype=x.dtype)
        s = np.empty((_PANEL, block), dtype=x.dtype)
        i0 = bi * block
        mb = min(block, m - i0)
        _pack(x, i0, mb, pt)
        for j0 in range(0, n, block):
            nb = min(block, n - j0)
            _tile(y, j0, nb, pt, i0, mb, s, vals, idx, cnt, thr, False, True, ex_ptr, ex_idx)
        for r in range(i0, i0 + mb):
            _finish_row(vals, idx, cnt, r)
    return vals, idx


@njit(cache=True, nogil=True, parallel=True)
def _run_pairs(x, y, symmetric, k, block, workers, ex_ptr, ex_idx):
    """Pair-parallel with private lists per worker, merged into worker 0's at the end."""
    m, d = x.shape
    n = y.shape[0]
    vals = np.empty((workers, m, k), dtype=x.dtype)
    idx = np.empty((workers, m, k), dtype=np.int64)
    cnt = np.zeros((workers, m), dtype=np.int64)
    # one threshold per row for all workers: see _offer
    thr = np.full(m, -np.inf, dtype=x.dtype)
    row_blocks = (m + block - 1) // block
    key_blocks = (n + block - 1) // block
    # Tasks are dealt round-robin in a fixed order rather than by thread id: the assignment is
    # static and balanced (tiles cost about the same), and a worker's consecutive tasks share
    # their query block.
    for w in prange(workers):
        pt = np.empty((d, block), dtype=x.dtype)
        s = np.empty((_PANEL, block), dtype=x.dtype)
        hv, hi, hc = vals[w], idx[w], cnt[w]
        packed = -1
        t = 0
        for bi in range(row_blocks):
            i0 = bi * block
            mb = min(block, m - i0)
            for bj in range(bi if symmetric else 0, key_blocks):
                if t % workers == w:
                    if packed != bi:
                        _pack(x, i0, mb, pt)
                        packed = bi
                    j0 = bj * block
                    nb = min(block, n - j0)
                    # symmetric: the rows of J get keys of I, and those of I keys of J unless
                    # J = I, where one direction already covers every pair
                    _tile(y, j0, nb, pt, i0, mb, s, hv, hi, hc, thr, symmetric,
                          not symmetric or bj != bi, ex_ptr, ex_idx)
                t += 1
    out_v, out_i, out_c = vals[0], idx[0], cnt[0]
    for r in prange(m):
        for w in range(1, workers):
            for e in range(cnt[w, r]):
                _offer(out_v, out_i, out_c, thr, r, vals[w, r, e], idx[w, r, e], _EMPTY, _EMPTY)
        _finish_row(out_v, out_i, out_c, r)
    if workers == 1:
        return out_v, out_i
    return out_v.copy(), out_i.copy()


def _default_block(m: int, n: int, symmetric: bool, workers: int) -> int:
    """The largest of ``_BLOCKS`` that still gives every worker several tiles."""
    for block in _BLOCKS:
        rows, keys = -(-m // block), -(-n // block)
        tiles = rows * (rows + 1) // 2 if symmetric else rows * keys
        if tiles >= 8 * workers:
            return block
    return _BLOCKS[-1]


def topk_similarity(queries: torch.Tensor, keys: torch.Tensor | None, k: int,
                    exclude: tuple[torch.Tensor, torch.Tensor] | None,
                    block_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    x = queries.detach().numpy()
    symmetric = keys is None
    y = x if symmetric else keys.detach().numpy()
    if exclude is None:
        ex_ptr, ex_idx = _EMPTY, _EMPTY
    else:
        ex_ptr, ex_idx = exclude[0].detach().numpy(), exclude[1].detach().numpy()
    m, k = x.shape[0], int(k)
    n = m if symmetric else y.shape[0]
    n_workers = workers()
    block = max(1, int(block_size)) if block_size else _default_block(m, n, symmetric, n_workers)

    row_blocks = (m + block - 1) // block
    list_bytes = m * k * (x.itemsize + 8)
    private_fits = (n_workers - 1) * list_bytes <= _PRIVATE_LIST_BUDGET
    # Pair tasks balance the load when a tile updates two row blocks (symmetric) or when there
    # are too few row blocks to keep every worker busy; they cost private lists and a merge.
    if private_fits and (symmetric or (n_workers > 1 and row_blocks < 4 * n_workers)):
        values, indices = _run_pairs(x, y, symmetric, k, block, n_workers, ex_ptr, ex_idx)
    else:
        values, indices = _run_rows(x, y, k, block, ex_ptr, ex_idx)
    return torch.from_numpy(values), torch.from_numpy(indices)


