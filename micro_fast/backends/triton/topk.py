r"""Certified top-k search: a low-precision Triton screen, then exact fp32 rescoring.

``topk_similarity(queries, keys, k, exclude, block_size)`` follows the array contract of
``micro_fast.backends`` and returns what ``torch_ref.topk_similarity`` returns: for every query
row the k largest inner products with the admissible keys, best first, ties to the smaller key
index, rows with fewer than k admissible keys padded with ``(-inf, -1)``. The values are exact
fp32 inner products (computed by the rescoring kernel below); the indices are the exact top-k
of those values over *all* admissible keys. The fast screen only decides which keys are worth
rescoring, and a proven error bound makes sure it never drops one that belongs to the result.

The certificate
---------------
Let :math:`s_{ij} = \langle q_i, k_j \rangle` (real arithmetic), :math:`\hat s_{ij}` the screen's
value (inputs rounded to a format with unit roundoff :math:`u`, products accumulated in fp32)
and :math:`r_{ij}` the rescored fp32 value the result is ranked by. With
:math:`\gamma_d(v) = d v / (1 - d v)`:

* input rounding: :math:`\tilde q = q + \delta q`, :math:`|\delta q_l| \le u |q_l|` (same for
  k), so by Cauchy-Schwarz :math:`|\tilde q \cdot \tilde k - q \cdot k| \le (2u + u^2)
  \lVert q \rVert \lVert k \rVert`;
* screen accumulation: :math:`|\hat s - \tilde q \cdot \tilde k| \le \gamma_d(u_{acc})
  (1 + u)^2 \lVert q \rVert \lVert k \rVert` (products of rounded tf32/bf16 inputs are exact
  in fp32; ``u_acc = 2^-22`` is deliberately 4x fp32's ``2^-24`` to cover tensor cores'
  truncating, block-aligned accumulation);
* rescoring: :math:`|r - s| \le \gamma_d(2^{-24}) \lVert q \rVert \lVert k \rVert` for any
  summation order;
* the kernel's own fp32 arithmetic on the bounds (``s_hat +- b`` and the product of norms) adds
  a slack of :math:`2^{-21} \lVert q \rVert \lVert k \rVert`; norms are computed in float64
  and rounded up; a tiny absolute term :math:`2^{-100} (1 + \lVert q \rVert + \lVert k \rVert)`
  (only where both rows are non-zero) covers subnormal inputs and flush-to-zero.

So :math:`|\hat s_{ij} - r_{ij}| \le b_{ij}` with ``b_ij = c_rel |q_i| |k_j| + abs_ij``,
``c_rel = ((2u + u^2) + (1+u)^2 gamma_d(2^-22) + gamma_d(2^-24) + 2^-21)(1 + 2^-18)``
(``certificate_factor``), :math:`u = 2^{-10}` for TF32 (hardware may truncate: one full ulp of
an 11-bit significand), :math:`2^{-8}` for bf16 (round to nearest even), 0 for ``"ieee"``.

Per row let :math:`L_i` be the k-th largest lower bound :math:`\hat s_{ij} - b_{ij}` over the
admissible keys (``-inf`` if there are fewer than k). Those k keys have :math:`r \ge L_i`, so
the k-th largest rescored value :math:`R_i \ge L_i`. Every key of the result has
:math:`r_{ij} \ge R_i`, hence its upper bound :math:`\hat s_{ij} + b_{ij} \ge r_{ij} \ge L_i`.
The candidates :math:`\{ j : \hat s_{ij} + b_{ij} \ge L_i \}` therefore contain every key of the
exact result *and every key tied with its last value*, so the top-k of the rescored candidates
(value descending, index ascending) is exactly the top-k of the rescored values over all keys.
The two passes may even see different :math:`\hat s` (each is within its bound). A NaN or
infinite screen value or bound only widens the set (lower ``-inf``, upper ``+inf``).

Passes (per chunk of ``block_size`` query rows, default ``DEFAULT_ROWS``)
-------------------------------------------------------------------------
1. ``micro_fast_topk_threshold_kernel`` (grid: row blocks x column splits): screen tiles with
   ``tl.dot``;
   exclusions applied in the screen (binary search of each tile column in the row's sorted
   excluded list), so that :math:`L_i` is over admissible keys; a running per-row top-KP
   (KP = next power of two >= k) of the lower bounds, merged per tile by ``tl.topk`` and a
   bitonic max/flip step. Output [rows, splits, KP]; torch takes the k-th largest per row.
2. ``micro_fast_topk_collect_kernel``: the same screen; admissible keys whose upper bound reaches
   :math:`L_i` are appended to a per-row buffer of capacity C (a per-row int32 counter, one
   ``atomic_add`` per row and tile reserves the slots, a ``tl.cumsum`` places them). The
   counter keeps counting past C. The candidate set does not depend on scheduling; the buffer
   is sorted by index afterwards, so the result is deterministic.
3. ``micro_fast_topk_rescore_kernel`` (one program per row): exact fp32 dots of the
   candidates; then torch ranks them (stable sort: value descending, index ascending) and pads.
4. Rows whose counter exceeded C are recomputed by the exact blocked torch search
   (``torch_ref``) for those rows only; their number is in the stats (``last_stats`` /
   ``topk_similarity_stats``).

The score matrix is never written: memory per chunk of R rows is R x (splits x KP + 3 C) x 4
bytes plus R x C x 12 for the final sort (C defaults to ``default_capacity(k)``), plus the
overflow rows' torch blocks (``workspace_bytes``).

What runs where: CUDA tensors run the kernels compiled (TF32 ``tl.dot`` or bf16 operands);
with ``TRITON_INTERPRET=1`` they run on CPU tensors in Triton's interpreter, whose ``tl.dot`` is
numpy's fp32 matmul whatever the requested precision, so there the rounding of the inputs is
emulated bit by bit before the dot (``emulate``; bf16: round to nearest even, TF32: truncation,
the worst case the certificate covers) and the certification logic is what the tests check.
float64 inputs, k > ``MAX_K`` and very wide rows run the exact torch search (``stats["path"]``).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from micro_fast.backends import torch_ref
from micro_fast.errors import InputError, UnavailableError

# unit roundoff of the screen's input format (TF32: a full ulp of 11 bits, truncation allowed)
SCREEN_UNIT = {"ieee": 0.0, "tf32": 2.0**-10, "bf16": 2.0**-8}
_SCREEN_CODE = {"ieee": 0, "tf32": 1, "bf16": 2}
_U_ACC = 2.0**-22     # screen accumulation (tensor cores may truncate)
_U_FP32 = 2.0**-24    # exact rescoring
_SLACK = 2.0**-21     # the kernels' fp32 arithmetic on s_hat +- b
_C_ABS = 2.0**-100    # subnormals / flush-to-zero
MAX_K = 256           # larger k: the exact torch search (the running top-KP lives in registers)
MAX_D = 1 << 16       # wider rows: gamma_d would no longer be small
DEFAULT_ROWS = 8192   # query rows per chunk when block_size is None
MAX_SPLITS = 64

# statistics of the last call in this process (``topk_similarity_stats`` returns its own)
last_stats: dict = {}


def interpreted() -> bool:
    """Whether Triton runs in its interpreter (kept here, not imported from the package, so
    that the package may import this module at any point of its own import)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _gamma(d: int, unit: float) -> float:
    return d * unit / (1.0 - d * unit)


def certificate_factor(screen: str, d: int) -> float:
    """``c_rel``: |screen - rescored| <= c_rel |q| |k| (+ the absolute term) for rows of width d."""
    u = SCREEN_UNIT[screen]
    rel = (2 * u + u * u) + (1 + u) ** 2 * _gamma(d, _U_ACC) + _gamma(d, _U_FP32) + _SLACK
    return rel * (1 + 2.0**-18)


def default_capacity(k: int) -> int:
    return max(4 * k, k + 64)


def _next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


# ---------------------------------------------------------------------------------------------
# kernels


@triton.jit
def _round_input(x, SCREEN: tl.constexpr):
    """The screen format's rounding of fp32 ``x`` (emulation): bf16 round to nearest even,
    TF32 truncation to 10 stored mantissa bits."""
    bits = x.to(tl.uint32, bitcast=True)
    if SCREEN == 2:
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    else:
        bits = bits & 0xFFFFE000
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _screen_tile(q_ptr, k_ptr, rows, cols, m, n, d,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                 SCREEN: tl.constexpr, EMULATE: tl.constexpr):
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    rmask = rows < m
    cmask = cols < n
    r64 = rows.to(tl.int64)
    c64 = cols.to(tl.int64)
    for d0 in range(0, d, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        dmask = dd < d
        q = tl.load(q_ptr + r64[:, None] * d + dd[None, :],
                    mask=rmask[:, None] & dmask[None, :], other=0.0)
        kt = tl.load(k_ptr + c64[None, :] * d + dd[:, None],
                     mask=cmask[None, :] & dmask[:, None], other=0.0)
        if EMULATE:
            if SCREEN != 0:
                q = _round_input(q, SCREEN)
                kt = _round_input(kt, SCREEN)
            acc = tl.dot(q, kt, acc, input_precision="ieee")
        else:
            if SCREEN == 2:
                acc = tl.dot(q.to(tl.bfloat16), kt.to(tl.bfloat16), acc)
            elif SCREEN == 1:
                acc = tl.dot(q, kt, acc, input_precision="tf32")
            else:
                acc = tl.dot(q, kt, acc, input_precision="ieee")
    return acc


@triton.jit
def _bound_tile(nq_ptr, nk_ptr, rows, cols, m, n, c_rel, c_abs):
    nq = tl.load(nq_ptr + rows, mask=rows < m, other=0.0)
    nk = tl.load(nk_ptr + cols, mask=cols < n, other=0.0)
    both = (nq[:, None] > 0) & (nk[None, :] > 0)
    tiny = tl.where(both, c_abs * (1.0 + nq[:, None] + nk[None, :]), 0.0)
    return c_rel * nq[:, None] * nk[None, :] + tiny


@triton.jit
def _admissible(ex_ptr, ex_idx, rows, cols, m, n,
                HAS_EXCL: tl.constexpr, STEPS: tl.constexpr):
    """[BM, BN] mask: in range and not excluded (lower-bound binary search of each column in
    its row's sorted excluded columns)."""
    rmask = rows < m
    ok = rmask[:, None] & (cols < n)[None, :]
    if HAS_EXCL:
        start = tl.load(ex_ptr + rows, mask=rmask, other=0)
        end = tl.load(ex_ptr + rows + 1, mask=rmask, other=0)
        c = cols.to(tl.int64)[None, :]
        lo = start[:, None] + tl.zeros_like(c)
        hi = end[:, None] + tl.zeros_like(c)
        for _ in tl.static_range(STEPS):
            active = lo < hi
            mid = (lo + hi) >> 1
            v = tl.load(ex_idx + mid, mask=active, other=0)
            right = active & (v < c)
            lo = tl.where(right, mid + 1, lo)
            hi = tl.where(active & (v >= c), mid, hi)
        inside = lo < end[:, None]
        hit = tl.load(ex_idx + lo, mask=inside, other=-1)
        ok = ok & ~(inside & (hit == c))
    return ok


@triton.jit
def _screened_block(q_ptr, k_ptr, nq_ptr, nk_ptr, ex_ptr, ex_idx, rows, cb, m, n, d, c_rel,
                    c_abs, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    BLOCK_D: tl.constexpr, SCREEN: tl.constexpr, EMULATE: tl.constexpr,
                    HAS_EXCL: tl.constexpr, STEPS: tl.constexpr):
    """Column block ``cb`` of the screen: its columns, the screened scores, their bounds and
    which pairs are admissible. Both passes take their tiles from here: the certificate needs
    the threshold pass and the collect pass to see the same screened scores."""
    cols = cb * BLOCK_N + tl.arange(0, BLOCK_N)
    s = _screen_tile(q_ptr, k_ptr, rows, cols, m, n, d, BLOCK_M, BLOCK_N, BLOCK_D,
                     SCREEN, EMULATE)
    b = _bound_tile(nq_ptr, nk_ptr, rows, cols, m, n, c_rel, c_abs)
    ok = _admissible(ex_ptr, ex_idx, rows, cols, m, n, HAS_EXCL, STEPS)
    return cols, s, b, ok


@triton.jit
def micro_fast_topk_threshold_kernel(q_ptr, k_ptr, nq_ptr, nk_ptr, ex_ptr, ex_idx, out_ptr,
                      m, n, d, blocks_per_split, c_rel, c_abs,
                      KP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_D: tl.constexpr, SCREEN: tl.constexpr, EMULATE: tl.constexpr,
                      HAS_EXCL: tl.constexpr, STEPS: tl.constexpr):
    """Per (row block, column split): the KP largest lower bounds of admissible keys."""
    pid = tl.program_id(0)
    split = tl.program_id(1)
    nsplit = tl.num_programs(1)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    running = tl.full([BLOCK_M, KP], float("-inf"), dtype=tl.float32)
    n_blocks = tl.cdiv(n, BLOCK_N)
    first = split * blocks_per_split
    last = tl.minimum(first + blocks_per_split, n_blocks)
    for cb in range(first, last):
        _, s, b, ok = _screened_block(q_ptr, k_ptr, nq_ptr, nk_ptr, ex_ptr, ex_idx, rows, cb, m,
                                      n, d, c_rel, c_abs, BLOCK_M, BLOCK_N, BLOCK_D, SCREEN,
                                      EMULATE, HAS_EXCL, STEPS)
        lower = s - b
        lower = tl.where(ok & (lower == lower), lower, float("-inf"))
        top = tl.topk(lower, KP, dim=1)
        # max(desc, asc) of two sorted lists holds the KP largest of their union, as a
        # bitonic sequence: one merge network sorts it
        running = tl.bitonic_merge(tl.maximum(running, tl.flip(top, 1)), dim=1,
                                   descending=True)
    slot = tl.arange(0, KP)
    offs = (rows.to(tl.int64)[:, None] * nsplit + split) * KP + slot[None, :]
    tl.store(out_ptr + offs, running, mask=(rows < m)[:, None])


@triton.jit
def micro_fast_topk_collect_kernel(q_ptr, k_ptr, nq_ptr, nk_ptr, ex_ptr, ex_idx, thr_ptr,
                                   count_ptr, cand_ptr,
                    m, n, d, blocks_per_split, c_rel, c_abs, capacity,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                    SCREEN: tl.constexpr, EMULATE: tl.constexpr,
                    HAS_EXCL: tl.constexpr, STEPS: tl.constexpr):
    """Appends every admissible key whose upper bound reaches the row's threshold."""
    pid = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < m
    thr = tl.load(thr_ptr + rows, mask=rmask, other=float("inf"))
    n_blocks = tl.cdiv(n, BLOCK_N)
    first = split * blocks_per_split
    last = tl.minimum(first + blocks_per_split, n_blocks)
    for cb in range(first, last):
        cols, s, b, ok = _screened_block(q_ptr, k_ptr, nq_ptr, nk_ptr, ex_ptr, ex_idx, rows, cb,
                                         m, n, d, c_rel, c_abs, BLOCK_M, BLOCK_N, BLOCK_D,
                                         SCREEN, EMULATE, HAS_EXCL, STEPS)
        upper = s + b
        upper = tl.where(upper == upper, upper, float("inf"))
        cand = ok & (upper >= thr[:, None])
        ci = cand.to(tl.int32)
        tile_count = tl.sum(ci, axis=1)
        base = tl.atomic_add(count_ptr + rows, tile_count, mask=rmask & (tile_count > 0))
        pos = base[:, None] + tl.cumsum(ci, axis=1) - ci
        offs = rows.to(tl.int64)[:, None] * capacity + pos
        tl.store(cand_ptr + offs, cols[None, :], mask=cand & (pos < capacity))


@triton.jit
def micro_fast_topk_rescore_kernel(q_ptr, k_ptr, cand_ptr, out_ptr, d, capacity,
                    CP: tl.constexpr, BLOCK_D: tl.constexpr):
    """Exact fp32 inner products of one row's candidates (``-inf`` in empty slots)."""
    row = tl.program_id(0).to(tl.int64)
    slot = tl.arange(0, CP)
    smask = slot < capacity
    idx = tl.load(cand_ptr + row * capacity + slot, mask=smask, other=-1)
    has = idx >= 0
    i64 = tl.where(has, idx, 0).to(tl.int64)
    acc = tl.zeros([CP], dtype=tl.float32)
    for d0 in range(0, d, BLOCK_D):
        dd = d0 + tl.arange(0, BLOCK_D)
        dmask = dd < d
        qv = tl.load(q_ptr + row * d + dd, mask=dmask, other=0.0)
        kv = tl.load(k_ptr + i64[:, None] * d + dd[None, :], mask=has[:, None] & dmask[None, :],
                     other=0.0)
        acc += tl.sum(kv * qv[None, :], axis=1)
    tl.store(out_ptr + row * capacity + slot, tl.where(has, acc, float("-inf")), mask=smask)


# ---------------------------------------------------------------------------------------------
# host side


def workspace_bytes(op: str, *, m: int = 0, n: int = 0, d: int = 0, k: int = 0, elem: int = 4,
                    **_: int) -> int:
    """Working memory of ``topk_similarity`` beyond its outputs (``micro_fast.backends``)."""
    if op != "topk_similarity":
        return 0
    if elem != 4 or k > MAX_K or d > MAX_D:
        return torch_ref.workspace_bytes(op, m=m, n=n, elem=elem)
    rows = min(m, DEFAULT_ROWS)
    kp = max(2, _next_pow2(k))
    cap = default_capacity(k)
    per_row = MAX_SPLITS * kp * 4 + 16 + cap * (4 + 4 + 4 + 4 + 8 + 8)
    fallback = torch_ref.workspace_bytes(op, m=rows, n=n, elem=elem)  # overflowing rows
    return (m + n) * 4 + rows * per_row + fallback


def _norms(x: torch.Tensor) -> torch.Tensor:
    """fp32 row norms rounded up (float64 norms, inflated past fp32's rounding)."""
    out = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    for r in range(0, x.shape[0], 65536):
        nrm = torch.linalg.vector_norm(x[r:r + 65536].double(), dim=1)
        out[r:r + 65536] = (nrm * (1 + 2.0**-20)).float()
    return out


def _sub_exclude(exclude, rows: torch.Tensor):
    """The excluded pairs of ``rows`` (sorted row ids) as a CSR of their own."""
    if exclude is None:
        return None
    indptr, indices = exclude
    starts, ends = indptr[rows], indptr[rows + 1]
    counts = ends - starts
    sub_ptr = torch.zeros(rows.numel() + 1, dtype=torch.int64, device=indptr.device)
    sub_ptr[1:] = torch.cumsum(counts, 0)
    total = int(sub_ptr[-1])
    owner = torch.repeat_interleave(torch.arange(rows.numel(), device=indptr.device), counts)
    pos = starts[owner] + torch.arange(total, device=indptr.device) - sub_ptr[owner]
    return sub_ptr, indices[pos]


def _defaults(device: torch.device, kp: int, d: int) -> tuple[int, int, int]:
    if interpreted() or device.type != "cuda":
        # the interpreter pays per element of a sorting network and per helper call: narrow
        # tiles, one d chunk
        return 16, max(16, kp), min(64, max(16, _next_pow2(d)))
    return (64 if kp <= 64 else 32 if kp <= 128 else 16), max(64, kp), 32


def _splits(device: torch.device, row_blocks: int, col_blocks: int) -> int:
    if interpreted() or device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(col_blocks, MAX_SPLITS, -(-4 * sms // max(1, row_blocks))))


def topk_similarity_stats(queries: torch.Tensor, keys: torch.Tensor | None, k: int,
                          exclude: tuple[torch.Tensor, torch.Tensor] | None = None,
                          block_size: int | None = None, *, screen: str = "tf32",
                          capacity: int | None = None, emulate: bool | None = None,
                          splits: int | None = None, block_m: int | None = None,
                          block_n: int | None = None, block_d: int | None = None,
                          bound_scale: float = 1.0,
                          ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``topk_similarity`` with its statistics: ``(values, indices, stats)``.

    ``screen``: ``"tf32"``, ``"bf16"`` or ``"ieee"``; ``capacity``: candidates per row (C);
    ``emulate``: round the screen's inputs explicitly (default: in the interpreter);
    ``splits``/``block_*``: launch shape; ``bound_scale`` scales the certificate (tests only:
    anything below 1 voids the guarantee). ``stats``: ``path`` ("triton" or why the exact torch
    search ran), ``rows``, ``overflow_rows`` (rows recomputed exactly), ``max_candidates``,
    ``mean_candidates``, ``capacity``, ``screen``, ``c_rel``, ``splits``.
    """
    if screen not in SCREEN_UNIT:
        raise InputError(f"screen must be one of {sorted(SCREEN_UNIT)}, got {screen!r}")
    sym = keys is None
    keys_t = queries if sym else keys
    m, d = queries.shape
    n = keys_t.shape[0]
    stats = {"path": "triton", "rows": m, "overflow_rows": 0, "max_candidates": 0,
             "mean_candidates": 0.0, "capacity": 0, "screen": screen, "c_rel": 0.0,
             "splits": 0}
    reason = ("float64 inputs: exact torch search" if queries.dtype != torch.float32 else
              f"k > {MAX_K}: exact torch search" if k > MAX_K else
              f"d > {MAX_D}: exact torch search" if d > MAX_D else
              "more than 2^31 keys: exact torch search" if n >= 2**31 - 1 else "")
    if reason:
        stats["path"] = reason
        values, indices = torch_ref.topk_similarity(queries, keys, k, exclude, block_size)
        return values, indices, stats
    device = queries.device
    if device.type != "cuda" and not interpreted():
        raise UnavailableError("the triton backend runs CUDA tensors (or CPU tensors with "
                               "TRITON_INTERPRET=1)")
    emulate = interpreted() if emulate is None else bool(emulate)
    kp = max(2, _next_pow2(k))
    bm, bn, bd = _defaults(device, kp, d)
    bm = block_m or bm
    bn = max(block_n or bn, kp)
    bd = block_d or bd
    cap = int(capacity or default_capacity(k))
    if cap < 1:
        raise InputError(f"capacity must be >= 1, got {cap}")
    cp = max(2, _next_pow2(cap))
    c_rel = certificate_factor(screen, d) * bound_scale
    c_rel = float(torch.tensor(c_rel * (1 + 2.0**-20), dtype=torch.float32))
    stats.update(capacity=cap, c_rel=c_rel)
    nq = _norms(queries)
    nk = nq if sym else _norms(keys_t)
    if exclude is not None:
        ex_ptr, ex_idx = exclude
        longest = int((ex_ptr[1:] - ex_ptr[:-1]).max()) if m else 0
        steps, has_excl = max(1, longest.bit_length()), longest > 0
    else:
        has_excl, steps = False, 1
    if not has_excl:
        ex_ptr = ex_idx = torch.zeros(2, dtype=torch.int64, device=device)
    chunk = max(1, int(block_size or DEFAULT_ROWS))
    col_blocks = triton.cdiv(n, bn)
    values = torch.empty((m, k), dtype=torch.float32, device=device)
    indices = torch.empty((m, k), dtype=torch.int64, device=device)
    overflow_all, cand_max, cand_sum = [], 0, 0
    code = _SCREEN_CODE[screen]
    ctx = torch.cuda.device(device) if device.type == "cuda" else _Null()
    with ctx:
        for r0 in range(0, m, chunk):
            r1 = min(m, r0 + chunk)
            rows = r1 - r0
            q = queries[r0:r1]
            row_blocks = triton.cdiv(rows, bm)
            ns = max(1, min(int(splits or _splits(device, row_blocks, col_blocks)), col_blocks))
            per_split = triton.cdiv(col_blocks, ns)
            ns = triton.cdiv(col_blocks, per_split)
            stats["splits"] = ns
            ptr = ex_ptr[r0:r1 + 1] if has_excl else ex_ptr
            grid = (row_blocks, ns)
            tops = torch.empty((rows, ns, kp), dtype=torch.float32, device=device)
            micro_fast_topk_threshold_kernel[grid](q, keys_t, nq[r0:r1], nk, ptr, ex_idx, tops,
                                    rows, n, d, per_split, c_rel, _C_ABS,
                                    KP=kp, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, SCREEN=code,
                                    EMULATE=emulate, HAS_EXCL=has_excl, STEPS=steps)
            thr = tops.view(rows, ns * kp).topk(k, dim=1).values[:, k - 1].contiguous()
            del tops
            counts = torch.zeros(rows, dtype=torch.int32, device=device)
            cand = torch.full((rows, cap), -1, dtype=torch.int32, device=device)
            micro_fast_topk_collect_kernel[grid](q, keys_t, nq[r0:r1], nk, ptr, ex_idx, thr,
                                                 counts, cand,
                                  rows, n, d, per_split, c_rel, _C_ABS, cap,
                                  BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, SCREEN=code,
                                  EMULATE=emulate, HAS_EXCL=has_excl, STEPS=steps)
            # a deterministic order: the candidates by index (empty slots last)
            big = torch.iinfo(torch.int32).max
            cand = torch.sort(cand.masked_fill(cand < 0, big), dim=1).values
            cand = cand.masked_fill(cand == big, -1)
            scores = torch.empty((rows, cap), dtype=torch.float32, device=device)
            micro_fast_topk_rescore_kernel[(rows,)](q, keys_t, cand, scores, d, cap, CP=cp,
                                                    BLOCK_D=bd)
            if cap < k:  # room for the padding
                scores = torch.cat([scores, scores.new_full((rows, k - cap), float("-inf"))], 1)
                cand = torch.cat([cand, cand.new_full((rows, k - cap), -1)], 1)
            # stable: among equal values the smaller index (earlier slot) comes first
            v, order = torch.sort(scores, dim=1, descending=True, stable=True)
            v = v[:, :k]
            i = torch.gather(cand, 1, order[:, :k]).long()
            values[r0:r1] = v
            indices[r0:r1] = i.masked_fill(v == float("-inf"), -1)
            over = torch.nonzero(counts > cap).flatten()
            if over.numel():
                overflow_all.append(over + r0)
            cand_max = max(cand_max, int(counts.max()))
            cand_sum += int(counts.sum())
        if overflow_all:
            over = torch.cat(overflow_all)
            sub = _sub_exclude(exclude, over)
            v, i = torch_ref.topk_similarity(queries[over].contiguous(), keys_t, k, sub,
                                             block_size)
            values[over] = v
            indices[over] = i
            stats["overflow_rows"] = int(over.numel())
    stats.update(max_candidates=cand_max, mean_candidates=cand_sum / max(1, m))
    return values, indices, stats


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def topk_similarity(queries: torch.Tensor, keys: torch.Tensor | None, k: int,
                    exclude: tuple[torch.Tensor, torch.Tensor] | None,
                    block_size: int | None, **options) -> tuple[torch.Tensor, torch.Tensor]:
    """The backend contract's top-k search (see the module docstring); ``options`` go to
    ``topk_similarity_stats``. The statistics of the call are left in ``last_stats``."""
    values, indices, stats = topk_similarity_stats(queries, keys, k, exclude, block_size,
                                                   **options)
    last_stats.clear()
    last_stats.update(stats)
    return values, indices
