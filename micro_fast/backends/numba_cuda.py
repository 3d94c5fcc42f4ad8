"""numba.cuda backend: the CSR products and the masked top-k similarity as numba.cuda kernels,
on torch's CUDA tensors (zero copy) and torch's current stream.

The math is the contract of ``micro_fast.backends``:

* ``spmm``: ``y[r, :] = sum_{e in [indptr[r], indptr[r+1])} values[e] x[indices[e], :]``;
* ``sddmm``: ``out[e] = <a[row(e)], b[indices[e]]> = sum_p a[row(e), p] b[indices[e], p]``;
* ``topk_similarity``: for queries ``Q`` [M, d] and keys ``Y`` [N, d] (``Y = Q`` when ``keys`` is
  ``None``), row ``i`` holds the ``k`` best pairs ``(s_ij, j)``, ``s_ij = <q_i, y_j>``, over the
  admissible keys ``j`` (those not listed in row ``i`` of ``exclude``), under the total order

      (s, j) > (s', j')  <=>  s > s'  or  (s = s' and j < j'),

  best first, padded with ``(-inf, -1)`` when fewer than ``k`` keys are admissible.

Sums run in the input dtype. ``spmm`` and ``topk`` sum each output in index order (``e``, resp.
``p``); ``sddmm`` sums strided partials and then a fixed tree. No atomics anywhere, so every
result is deterministic.

Design:

* ``spmm``: a 2-D thread block ``(tx, ty)``; each of its ``ty`` rows of threads owns one CSR row
  and its ``tx`` threads stride over the feature dim, so the reads of ``x[indices[e], :]`` are
  coalesced and ``indices[e]``, ``values[e]`` are broadcast. ``tx`` is the power of two at least
  ``d`` (at most 128): a warp per row for ``d = 32``, a 128-thread block per row for
  ``d >= 128``, several rows per warp for small ``d``.
* ``sddmm``: the same layout over nonzeros: each row ``ty`` of threads owns one entry ``e``,
  finds ``row(e)`` by a binary search of ``indptr`` (every entry costs the same, whatever the
  row lengths), its ``tx`` threads (a power of two, a warp for ``d >= 32``) sum strided partial
  products, and a shared-memory tree reduces them.
* ``topk_similarity``: one thread block of ``T`` threads per query row. The keys are scanned in
  chunks of ``T``: thread ``t`` scores key ``c0 + t`` (a dot product over ``d``), drops it if it
  is excluded (a binary search of the row's sorted exclude list) or if the row's list is full and
  its worst entry beats it; a block vote skips chunks without survivors. The survivors are merged
  into the row's sorted list in parallel by ranks: a survivor's new position is the number of
  survivors better than it plus the number of list entries better than it (a binary search of
  the sorted list); a list entry's is its position plus the survivors better than it. Keys are
  distinct and the order is total, so the ranks are distinct and the merged list, truncated to
  ``k``, is written into a second buffer (the lists ping-pong between the output row and a
  scratch row, so ``k`` is not bounded by shared memory). The list starts empty and never holds
  an excluded key, so short rows end padded. Rows are launched in blocks of ``block_size`` rows
  (default: a scratch of about ``SCRATCH_ELEMS`` entries).

Layers: ``launch_spmm`` / ``launch_sddmm`` / ``launch_topk`` take numba device arrays or NumPy
arrays (which numba copies to the device and back: that is how the CUDA simulator,
``NUMBA_ENABLE_CUDASIM=1``, tests them), outputs and scratch preallocated by the caller.
``spmm`` / ``sddmm`` / ``topk_similarity`` are the backend functions: they take CUDA torch
tensors (already validated by the ops layer), allocate every output and scratch buffer with torch
(its caching allocator, ordered on its current stream), view them with
``numba.cuda.as_cuda_array`` (zero copy) and launch on
``numba.cuda.external_stream(torch.cuda.current_stream().cuda_stream)``; nothing synchronizes.
Empty problems return without a launch. ``numba.cuda`` is imported on first use only.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from functools import cache
from types import SimpleNamespace

import numpy as np
import torch

from micro_fast.backends.numba import order
from micro_fast.errors import InputError

#: ``numba.cuda``, imported by ``_cuda()`` on first use. The kernels name it as this module
#: global: the simulator swaps a kernel's global ``cuda`` for its fake module while it runs.
cuda = None

#: Most threads per block of any kernel (the static shared arrays hold this many entries).
MAX_THREADS = 256
#: Threads per block of ``spmm`` and ``sddmm`` when not given.
CSR_THREADS = 128
#: Widest ``tx`` (threads over the feature dim) of ``spmm``; of ``sddmm``: a warp.
SPMM_MAX_TX = 128
SDDMM_MAX_TX = 32
#: Threads per query row (keys per chunk) of ``topk_similarity`` when not given.
TOPK_THREADS = 128
#: Scratch entries (rows x k, values and indices) one ``topk_similarity`` launch aims at.
SCRATCH_ELEMS = 1 << 22


def _cuda():
    global cuda
    if cuda is None:
        from numba import cuda as numba_cuda

        cuda = numba_cuda
    return cuda


@cache
def is_available() -> tuple[bool, str]:
    try:
        from numba import config

        cu = _cuda()
    except ImportError as exc:  # numba is optional: the library falls back
        return False, f"numba.cuda did not import: {exc}"
    if config.ENABLE_CUDASIM:
        return True, ""
    if not torch.cuda.is_available():
        # checked first: it does not initialize a CUDA context, and without CUDA tensors
        # there is nothing to run on
        return False, "torch sees no CUDA device"
    try:
        ok = cu.is_available()  # the driver and libNVVM
    except Exception as exc:  # a broken driver is a reason, not a crash
        return False, f"numba.cuda is not usable: {type(exc).__name__}: {exc}"
    if not ok:
        err = cu.cuda_error()
        if err:
            return False, f"numba.cuda cannot use the CUDA driver: {err}"
        return False, ("numba.cuda finds no libNVVM: install a CUDA toolkit or the "
                       "nvidia-cuda-nvcc wheel")
    return True, ""


def supports(device: torch.device) -> bool:
    return device.type == "cuda"


# --- kernels -----------------------------------------------------------------------------------


@cache
def _kernels(dtype: np.dtype) -> SimpleNamespace:
    """The kernels for one value dtype (float32 or float64): the shared arrays need it."""
    from numba import types
    from numba.np.numpy_support import from_dtype

    _cuda()
    elem = from_dtype(np.dtype(dtype))
    i64 = types.int64
    maxt = MAX_THREADS

    better = cuda.jit(device=True)(order.better)
    excluded = cuda.jit(device=True)(order.in_sorted)

    @cuda.jit(device=True)
    def merge(src_v, src_i, srow, dst_v, dst_i, drow, cnt, k, cand_v, cand_j, nthreads, tid):
        """Writes the first ``k`` of (list ``src[srow, :cnt]`` + the candidates whose index is
        not -1), in order, to ``dst[drow]``."""
        j = cand_j[tid]
        if j >= 0:
            v = cand_v[tid]
            rank = 0
            for t in range(nthreads):
                jt = cand_j[t]
                if jt >= 0 and better(cand_v[t], jt, v, j):
                    rank += 1
            lo = 0
            hi = cnt
            while lo < hi:  # list entries better than (v, j): a prefix of the sorted list
                mid = (lo + hi) // 2
                if better(src_v[srow, mid], src_i[srow, mid], v, j):
                    lo = mid + 1
                else:
                    hi = mid
            rank += lo
            if rank < k:
                dst_v[drow, rank] = v
                dst_i[drow, rank] = j
        for e in range(tid, cnt, nthreads):
            v = src_v[srow, e]
            j = src_i[srow, e]
            rank = e
            for t in range(nthreads):
                jt = cand_j[t]
                if jt >= 0 and better(cand_v[t], jt, v, j):
                    rank += 1
            if rank < k:
                dst_v[drow, rank] = v
                dst_i[drow, rank] = j

    @cuda.jit
    def topk(q, keys, k, ex_ptr, ex_idx, has_ex, r0, out_v, out_i, tmp_v, tmp_i, zero, neg_inf):
        cand_v = cuda.shared.array(maxt, elem)
        cand_j = cuda.shared.array(maxt, i64)
        b = cuda.blockIdx.x
        row = r0 + b
        tid = cuda.threadIdx.x
        nthreads = cuda.blockDim.x
        n = keys.shape[0]
        d = q.shape[1]
        ex_lo = 0
        ex_hi = 0
        if has_ex:
            ex_lo = ex_ptr[row]
            ex_hi = ex_ptr[row + 1]
        cnt = 0  # entries in the row's list: the same in every thread
        in_tmp = False  # whether the list is in tmp[b] (else in out[row])
        for c0 in range(0, n, nthreads):  # the same trip count in every thread
            j = c0 + tid
            s = neg_inf
            ok = False
            if j < n:
                acc = zero
                for p in range(d):
                    acc += q[row, p] * keys[j, p]
                s = acc
                ok = acc > neg_inf  # an overflow to -inf reads as padding, as in the reference
                if ok and ex_lo < ex_hi:
                    ok = not excluded(ex_idx, ex_lo, ex_hi, j)
            if ok and cnt == k:  # a full list: only what beats its worst entry is a candidate
                if in_tmp:
                    ok = better(s, j, tmp_v[b, k - 1], tmp_i[b, k - 1])
                else:
                    ok = better(s, j, out_v[row, k - 1], out_i[row, k - 1])
            cand_v[tid] = s
            cand_j[tid] = j if ok else -1
            survivors = cuda.syncthreads_count(1 if ok else 0)
            if survivors > 0:
                if in_tmp:
                    merge(tmp_v, tmp_i, b, out_v, out_i, row, cnt, k, cand_v, cand_j,
                          nthreads, tid)
                else:
                    merge(out_v, out_i, row, tmp_v, tmp_i, b, cnt, k, cand_v, cand_j,
                          nthreads, tid)
                cnt += survivors  # not min(): numba 0.68 fails to compile min(int, int) for CUDA
                if cnt > k:
                    cnt = k
                in_tmp = not in_tmp
                cuda.syncthreads()
        for e in range(tid, k, nthreads):
            if e >= cnt:
                out_v[row, e] = neg_inf
                out_i[row, e] = -1
            elif in_tmp:
                out_v[row, e] = tmp_v[b, e]
                out_i[row, e] = tmp_i[b, e]

    @cuda.jit
    def spmm(indptr, indices, values, x, y, zero):
        row = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
        if row < y.shape[0]:
            lo = indptr[row]
            hi = indptr[row + 1]
            for j in range(cuda.threadIdx.x, y.shape[1], cuda.blockDim.x):
                acc = zero
                for e in range(lo, hi):
                    acc += values[e] * x[indices[e], j]
                y[row, j] = acc

    @cuda.jit
    def sddmm(indptr, indices, a, b, out, zero):
        partial = cuda.shared.array(maxt, elem)
        tx = cuda.threadIdx.x
        ntx = cuda.blockDim.x
        e = cuda.blockIdx.x * cuda.blockDim.y + cuda.threadIdx.y
        acc = zero
        if e < out.shape[0]:
            lo = 0  # row(e): the last row r with indptr[r] <= e (empty rows are skipped)
            hi = indptr.shape[0] - 2
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if indptr[mid] <= e:
                    lo = mid
                else:
                    hi = mid - 1
            c = indices[e]
            for p in range(tx, a.shape[1], ntx):
                acc += a[lo, p] * b[c, p]
        slot = cuda.threadIdx.y * ntx + tx
        partial[slot] = acc
        cuda.syncthreads()
        step = ntx // 2
        while step > 0:  # every thread takes part: the barriers need the whole block
            if tx < step:
                partial[slot] += partial[slot + step]
            cuda.syncthreads()
            step //= 2
        if tx == 0 and e < out.shape[0]:
            out[e] = partial[slot]

    return SimpleNamespace(topk=topk, spmm=spmm, sddmm=sddmm)


# --- launchers: numba device arrays or NumPy arrays ---------------------------------------------


def _pow2_at_least(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def _csr_threads(d: int, threads: tuple[int, int] | None, max_tx: int) -> tuple[int, int]:
    if threads is None:
        tx = min(max_tx, _pow2_at_least(d))
        return tx, max(1, CSR_THREADS // tx)
    tx, ty = (int(t) for t in threads)
    if tx < 1 or ty < 1 or tx * ty > MAX_THREADS:
        raise InputError(f"threads must be (tx, ty) >= 1 with tx * ty <= {MAX_THREADS}, "
                         f"got {threads}")
    return tx, ty


@contextmanager
def _quiet():
    """Small grids and host arrays are expected here: numba's performance warnings are noise."""
    from numba.core.errors import NumbaPerformanceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NumbaPerformanceWarning)
        yield


def _zeros_like_memory(like, shape: tuple[int, ...], dtype) -> object:
    """An array on the same side (host NumPy or device) as ``like``."""
    if isinstance(like, np.ndarray):
        return np.zeros(shape, dtype=dtype)
    return _cuda().device_array(shape, dtype=dtype)


def launch_spmm(indptr, indices, values, x, y, *, threads: tuple[int, int] | None = None,
                stream=0):
    """``y[:] = A x`` for the CSR matrix ``A`` (``indptr`` [M+1], ``indices``, ``values``
    [nnz]); ``x`` [N, d] and ``y`` [M, d] of the values' dtype. ``threads``: ``(tx, ty)``,
    feature lanes per row and rows per block. Returns ``y``."""
    m, d = y.shape
    if m == 0 or d == 0:
        return y
    tx, ty = _csr_threads(d, threads, SPMM_MAX_TX)
    kernel = _kernels(np.dtype(y.dtype)).spmm
    with _quiet():
        kernel[(m + ty - 1) // ty, (tx, ty), stream](indptr, indices, values, x, y,
                                                     np.dtype(y.dtype).type(0))
    return y


def launch_sddmm(indptr, indices, a, b, out, *, threads: tuple[int, int] | None = None,
                 stream=0):
    """``out[e] = <a[row(e)], b[indices[e]]>`` for the CSR structure ``indptr`` [M+1],
    ``indices`` [nnz]; ``a`` [M, d], ``b`` [N, d], ``out`` [nnz]. ``threads``: ``(tx, ty)``,
    lanes per entry (a power of two) and entries per block. Returns ``out``."""
    nnz = out.shape[0]
    if nnz == 0:
        return out
    tx, ty = _csr_threads(a.shape[1], threads, SDDMM_MAX_TX)
    if tx & (tx - 1):
        raise InputError(f"sddmm lanes per entry (tx) must be a power of two, got {tx}")
    kernel = _kernels(np.dtype(out.dtype)).sddmm
    with _quiet():
        kernel[(nnz + ty - 1) // ty, (tx, ty), stream](indptr, indices, a, b, out,
                                                       np.dtype(out.dtype).type(0))
    return out


def launch_topk(queries, keys, k: int, out_values, out_indices, *, exclude=None,
                block_rows: int | None = None, threads: int | None = None, scratch=None,
                stream=0):
    """Fills ``out_values`` [M, k] and ``out_indices`` [M, k] (int64) with the top ``k`` of
    every query row (see the module docstring). ``keys`` ``None`` searches the queries
    themselves; ``exclude``: ``None`` or ``(indptr [M+1], indices)`` int64, sorted per row.
    ``threads``: keys per chunk (threads per row, at most ``MAX_THREADS``); ``block_rows``:
    rows per launch; ``scratch``: ``(values, indices)`` [rows, k] buffers, whose rows then set
    the rows per launch (allocated like the outputs when ``None``)."""
    m = queries.shape[0]
    k = int(k)
    if m == 0 or k == 0:
        return out_values, out_indices
    keys = queries if keys is None else keys
    n = keys.shape[0]
    nthreads = int(threads) if threads else min(TOPK_THREADS, max(32, -(-n // 32) * 32))
    if not 1 <= nthreads <= MAX_THREADS:
        raise InputError(f"threads must be in [1, {MAX_THREADS}], got {threads}")
    dtype = np.dtype(out_values.dtype)
    if scratch is None:
        rows = min(m, int(block_rows) if block_rows else max(1, SCRATCH_ELEMS // k))
        scratch = (_zeros_like_memory(out_values, (rows, k), dtype),
                   _zeros_like_memory(out_indices, (rows, k), np.int64))
    tmp_v, tmp_i = scratch
    rows = min(m, tmp_v.shape[0])
    if exclude is not None and exclude[1].shape[0] > 0:
        ex_ptr, ex_idx = exclude
        has_ex = True
    else:  # never read; a host dummy must not alias an output (numba copies host args back)
        ex_ptr = ex_idx = (np.zeros(1, np.int64) if isinstance(out_indices, np.ndarray)
                           else out_indices[0])
        has_ex = False
    kernel = _kernels(dtype).topk
    with _quiet():
        for r0 in range(0, m, rows):
            kernel[min(rows, m - r0), nthreads, stream](
                queries, keys, k, ex_ptr, ex_idx, has_ex, r0, out_values, out_indices, tmp_v,
                tmp_i, dtype.type(0), dtype.type(-np.inf))
    return out_values, out_indices


# --- torch-facing backend functions: CUDA tensors, torch's current stream -----------------------


def _array(t: torch.Tensor):
    """A zero-copy numba view of a CUDA tensor (no stream sync: the launch is ordered on
    torch's stream anyway)."""
    return _cuda().as_cuda_array(t.detach().contiguous(), sync=False)


@contextmanager
def _on(device: torch.device):
    """Makes ``device`` numba's current device and yields torch's current stream on it."""
    cu = _cuda()
    index = device.index if device.index is not None else torch.cuda.current_device()
    with cu.gpus[index]:
        yield cu.external_stream(torch.cuda.current_stream(index).cuda_stream)


def spmm(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor,
         x: torch.Tensor) -> torch.Tensor:
    """``y [M, d] = A x`` (see ``micro_fast.backends``); deterministic."""
    m, d = indptr.numel() - 1, x.shape[1]
    if m == 0 or d == 0 or indices.numel() == 0:
        return torch.zeros((m, d), dtype=x.dtype, device=x.device)
    y = torch.empty((m, d), dtype=x.dtype, device=x.device)
    with _on(x.device) as stream:
        launch_spmm(_array(indptr), _array(indices), _array(values), _array(x), _array(y),
                    stream=stream)
    return y


def sddmm(indptr: torch.Tensor, indices: torch.Tensor, a: torch.Tensor,
          b: torch.Tensor) -> torch.Tensor:
    """``out[e] = <a[row(e)], b[indices[e]]>`` [nnz] (see ``micro_fast.backends``);
    deterministic."""
    nnz = indices.numel()
    if nnz == 0 or a.shape[1] == 0:
        return torch.zeros(nnz, dtype=a.dtype, device=a.device)
    out = torch.empty(nnz, dtype=a.dtype, device=a.device)
    with _on(a.device) as stream:
        launch_sddmm(_array(indptr), _array(indices), _array(a), _array(b), _array(out),
                     stream=stream)
    return out


def topk_similarity(queries: torch.Tensor, keys: torch.Tensor | None, k: int,
                    exclude: tuple[torch.Tensor, torch.Tensor] | None,
                    block_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """See ``micro_fast.backends``. ``block_size``: query rows per launch (default: a scratch
    of about ``SCRATCH_ELEMS`` entries)."""
    device = queries.device
    m, d = queries.shape
    k = int(k)
    values = torch.empty((m, k), dtype=queries.dtype, device=device)
    indices = torch.empty((m, k), dtype=torch.int64, device=device)
    if m == 0 or k == 0:
        return values, indices
    if d == 0:  # all inner products are 0; one zero feature gives the same, with real pointers
        n = m if keys is None else keys.shape[0]
        queries = queries.new_zeros((m, 1))
        keys = None if keys is None else keys.new_zeros((n, 1))
    rows = min(m, int(block_size) if block_size else max(1, SCRATCH_ELEMS // k))
    tmp_v = torch.empty((rows, k), dtype=queries.dtype, device=device)
    tmp_i = torch.empty((rows, k), dtype=torch.int64, device=device)
    with _on(device) as stream:
        ex = None
        if exclude is not None and exclude[1].numel() > 0:
            ex = (_array(exclude[0]), _array(exclude[1]))
        launch_topk(_array(queries), None if keys is None else _array(keys), k, _array(values),
                    _array(indices), exclude=ex, scratch=(_array(tmp_v), _array(tmp_i)),
                    stream=stream)
    return values, indices
