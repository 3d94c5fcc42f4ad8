r"""MICRO's all-pairs contrastive (InfoNCE) loss as fused Triton kernels.

The contract is ``micro_fast.backends``' ``contrastive_forward`` / ``contrastive_backward``
(ground truth: ``torch_ref``); the math is the one of ``csrc/cuda/contrastive.cu``.

Math
----
For row-normalized ``n1``, ``n2`` [N, d] and ``tau > 0``, with s11 = n1 n1^T, s12 = n1 n2^T,
s22 = n2 n2^T (never stored)::

    lse1_i = log( sum_{j != i} exp(s11_ij / tau) + sum_j exp(s12_ij / tau) )
    lse2_j = log( sum_{i != j} exp(s22_ij / tau) + sum_i exp(s12_ij / tau) )   (symmetric)

Both are the row log-sum-exp of one "side" (x, z) = (n1, n2) or (n2, n1): the rows of
[x x^T without its diagonal | x z^T]. The gradients of L = sum_i g1_i lse1_i (+ sum_j g2_j
lse2_j) are, side by side::

    grad_x = A_xx x + W_xz z
    A_xx[a, b] = (g_x[a] e^{s_xx[a,b]/tau - lse_x[a]} + g_x[b] e^{s_xx[a,b]/tau - lse_x[b]}) / tau,
                 0 for a = b                                     (only for a side with an lse)
    W_xz[a, b] = (g_x[a] e^{s_xz[a,b]/tau - lse_x[a]} + g_z[b] e^{s_xz[a,b]/tau - lse_z[b]}) / tau

(a term is present only where its side has an lse: without ``symmetric`` side 2 has no self
part and only the g_z term.) W_21 = W_12^T, so side 1 gives ``grad_n1 = A11 n1 + W12 n2`` and
side 2 ``grad_n2 = A22 n2 + W12^T n1``, as in contrastive.cu. Both terms of every weight are
computable from the row block of a and the column block of b (lse and g are loaded for both),
so no transposed pass exists.

Kernels
-------
The two views are stacked into one [2, N, d] buffer (and lse, g into [2, N]) so that a side is
an offset: ``x = v[side]``, ``z = v[1 - side]``. Grid: (row blocks of BLOCK_M rows, sides): one
launch per kernel, except the one-direction backward, which launches side 1 (self and cross
part) and side 2 (cross part, g1 terms only) separately with different constexpr flags.

``micro_fast_lse_kernel`` (forward): a program loads its x row block once and walks the column
blocks (BLOCK_N rows) of z, then of x (diagonal masked); each score tile is one ``tl.dot`` kept
in registers, folded into per-row running (max, sum) pairs: online log-sum-exp with the real
maxima, so any tau > 0 is safe. Exponentials are ``exp2`` with log2(e) / tau folded into one
multiplier (loaded from a one-element tensor of the input dtype, so float64 keeps its
precision), and the kernel writes lse in base 2; the host multiplies by ln 2. The cross part is
walked first: column 0 is valid for every row, so the running maxima are finite from the first
tile on (no -inf - -inf).

``micro_fast_grad_kernel`` (backward): a program owns the gradient rows of its x row block,
accumulates them in registers ([BLOCK_M, BLOCK_D]) over all column blocks of the self part and
of the cross part, each tile: recompute the scores (``tl.dot``), form the weights above (two
exp2 per entry, g / tau and lse * log2(e) precomputed per row on the host), add
``tl.dot(weights, y)``. The rows are written once, by their owner.

Determinism and the cost of it: every output element is owned by exactly one program and summed
in a fixed order (column blocks ascending), with no atomics and no partial buffers, so results
are bitwise reproducible for a given tile size. The price: the cross score tiles s12 are
computed twice in the backward, once by side 1 (for grad_n1's rows) and once by side 2 (as s21,
for grad_n2's rows), and every self tile pair (a-block, b-block) is computed once from each
block's side; getting each tile once would need the column-side sums (W12^T n1, the transposed
half of A) to be added across programs: float atomics (order-dependent) or per-row-block partial
buffers of O(N^2 d / BLOCK_M) memory. This is the FlashAttention-2-style split (dQ and dK/dV by
separate owners).

Multiply-adds (N rows, d columns)
---------------------------------
forward: 2 N^2 d (one direction), 4 N^2 d (symmetric); one exp2 per score.
backward: per side with an lse, self part N^2 d (scores) + N^2 d (A x), cross part N^2 d +
N^2 d (W z): 8 N^2 d symmetric, 6 N^2 d one direction (side 2 has the cross part only); two
exp2 per score (one for side 2's cross part without ``symmetric``). ``torch_ref`` /
contrastive.cu do 6 / 4.5 N^2 d (upper-triangle self tiles, W12 shared) with materialized
weight tiles.

Memory: O(N d): the stacked views (2 N d), lse / g (4 N), the stacked gradients (the outputs);
the scores exist only as register tiles.

Precision: ``precision="exact"`` (default): ``tl.dot(..., input_precision="ieee")``, exact fp32
products with fp32 accumulation (fp64 for float64 inputs), results within fp32 rounding of
torch_ref. Opt-in ``"tf32"`` (tensor-core TF32 inputs, ~1e-3 relative error per score, float32
only) and ``"bf16"`` (operands rounded to bfloat16, fp32 accumulation, ~4e-3 relative per
score, float32 only); these change the loss by about |s| / tau times those errors. The
interpreter runs "tf32" in full fp32 (its error is not seen there), and "bf16" with the
operands rounded to bfloat16 and multiplied in fp32 (its ``tl.dot`` on bfloat16 operands
multiplies their raw bits in triton 3.9), which gives the bf16 numbers but not the GPU's code.

Limits: d <= ``MAX_D`` (256) in one tile (d is padded to a power of two >= 16 with masks);
larger d raises ``InputError`` for now (it needs a loop over d blocks with the gradient
accumulator split by d blocks). float32 and float64 inputs.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from micro_fast.backends.triton import interpreted
from micro_fast.errors import InputError, InputTypeError

#: Largest feature dimension handled (one [BLOCK_*, d] tile per operand).
MAX_D = 256
#: Accepted ``precision`` values and the ``tl.dot`` mode each runs.
PRECISIONS = {"exact": "ieee", "tf32": "tf32", "bf16": "bf16"}
_LOG2E = 1.0 / math.log(2.0)
_LN2 = math.log(2.0)


@triton.jit
def _mm(a, b, PREC: tl.constexpr):
    """``a @ b`` with fp32 (fp64 for double) accumulation, in the chosen input precision."""
    if PREC == "bf16":
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), out_dtype=tl.float32)
    elif PREC == "bf16_emulated":  # the interpreter: bf16 operands, exact fp32 products
        return tl.dot(a.to(tl.bfloat16).to(tl.float32), b.to(tl.bfloat16).to(tl.float32),
                      input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _online_lse(m, acc, t):
    """Folds the base-2 scores ``t`` [BM, BN] (-inf where masked) into the running maxima
    ``m`` and sums ``acc`` of exp2(t - m); ``m`` must be finite after the first tile (see the
    module doc)."""
    m_new = tl.maximum(m, tl.max(t, axis=1))
    acc = acc * tl.exp2(m - m_new) + tl.sum(tl.exp2(t - m_new[:, None]), axis=1)
    return m_new, acc


@triton.jit
def micro_fast_lse_kernel(v_ptr, scale_ptr, out_ptr, N, D, side_offset,
                SELF: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_D: tl.constexpr, PREC: tl.constexpr):
    side = (tl.program_id(1) + side_offset).to(tl.int64)
    x_ptr = v_ptr + side * N * D
    z_ptr = v_ptr + (1 - side) * N * D
    scale = tl.load(scale_ptr)  # log2(e) / tau
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dd = tl.arange(0, BLOCK_D)
    d_ok = dd < D
    row_ok = rows < N
    x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * D + dd[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    m = tl.full([BLOCK_M], float("-inf"), x.dtype)
    acc = tl.zeros([BLOCK_M], x.dtype)
    # cross part first: column 0 is valid for every row, so m is finite after one tile
    for c0 in range(0, N, BLOCK_N):
        cols = c0 + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        y = tl.load(z_ptr + cols.to(tl.int64)[:, None] * D + dd[None, :],
                    mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        t = _mm(x, tl.trans(y), PREC).to(x.dtype) * scale
        t = tl.where(col_ok[None, :], t, float("-inf"))
        m, acc = _online_lse(m, acc, t)
    if SELF:
        for c0 in range(0, N, BLOCK_N):
            cols = c0 + tl.arange(0, BLOCK_N)
            col_ok = cols < N
            y = tl.load(x_ptr + cols.to(tl.int64)[:, None] * D + dd[None, :],
                        mask=col_ok[:, None] & d_ok[None, :], other=0.0)
            t = _mm(x, tl.trans(y), PREC).to(x.dtype) * scale
            keep = col_ok[None, :] & (cols[None, :] != rows[:, None])
            t = tl.where(keep, t, float("-inf"))
            m, acc = _online_lse(m, acc, t)
    tl.store(out_ptr + side * N + rows, m + tl.log2(acc), mask=row_ok)


@triton.jit
def micro_fast_grad_kernel(v_ptr, lse_ptr, g_ptr, scale_ptr, out_ptr, N, D, side_offset,
                 SELF: tl.constexpr, X_TERM: tl.constexpr, Z_TERM: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                 PREC: tl.constexpr):
    # lse_ptr: [2, N] base-2 lse (lse * log2 e); g_ptr: [2, N] g / tau
    side = (tl.program_id(1) + side_offset).to(tl.int64)
    x_ptr = v_ptr + side * N * D
    z_ptr = v_ptr + (1 - side) * N * D
    lx_ptr = lse_ptr + side * N
    lz_ptr = lse_ptr + (1 - side) * N
    gx_ptr = g_ptr + side * N
    gz_ptr = g_ptr + (1 - side) * N
    scale = tl.load(scale_ptr)  # log2(e) / tau
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    dd = tl.arange(0, BLOCK_D)
    d_ok = dd < D
    row_ok = rows < N
    x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * D + dd[None, :],
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    la = tl.load(lx_ptr + rows, mask=row_ok, other=0.0)
    ga = tl.load(gx_ptr + rows, mask=row_ok, other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_D], x.dtype)
    if SELF:  # A_xx x: both terms of A from this (row block, column block) tile
        for c0 in range(0, N, BLOCK_N):
            cols = c0 + tl.arange(0, BLOCK_N)
            col_ok = cols < N
            y = tl.load(x_ptr + cols.to(tl.int64)[:, None] * D + dd[None, :],
                        mask=col_ok[:, None] & d_ok[None, :], other=0.0)
            lb = tl.load(lx_ptr + cols, mask=col_ok, other=0.0)
            gb = tl.load(gx_ptr + cols, mask=col_ok, other=0.0)
            t = _mm(x, tl.trans(y), PREC).to(x.dtype) * scale
            w = ga[:, None] * tl.exp2(t - la[:, None]) + gb[None, :] * tl.exp2(t - lb[None, :])
            keep = col_ok[None, :] & (cols[None, :] != rows[:, None])
            w = tl.where(keep, w, 0.0)
            acc += _mm(w, y, PREC).to(x.dtype)
    for c0 in range(0, N, BLOCK_N):  # W_xz z
        cols = c0 + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        y = tl.load(z_ptr + cols.to(tl.int64)[:, None] * D + dd[None, :],
                    mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        t = _mm(x, tl.trans(y), PREC).to(x.dtype) * scale
        w = tl.zeros([BLOCK_M, BLOCK_N], x.dtype)
        if X_TERM:
            w += ga[:, None] * tl.exp2(t - la[:, None])
        if Z_TERM:
            lb = tl.load(lz_ptr + cols, mask=col_ok, other=0.0)
            gb = tl.load(gz_ptr + cols, mask=col_ok, other=0.0)
            w += gb[None, :] * tl.exp2(t - lb[None, :])
        w = tl.where(col_ok[None, :], w, 0.0)
        acc += _mm(w, y, PREC).to(x.dtype)
    tl.store(out_ptr + side * N * D + rows.to(tl.int64)[:, None] * D + dd[None, :], acc,
             mask=row_ok[:, None] & d_ok[None, :])


def _blocks(d: int, block_size: int | None) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_D): d padded to a power of two >= 16 (``tl.dot``'s minimum);
    ``block_size`` (rows per tile) rounded to a power of two in [16, 128] for both row and
    column blocks, else 64 rows for d <= 64, 32 above (registers: x, y and the accumulator are
    [block, BLOCK_D] tiles)."""
    block_d = max(16, triton.next_power_of_2(d))
    if block_size is not None:
        b = min(128, max(16, triton.next_power_of_2(int(block_size))))
        return b, b, block_d
    b = 64 if block_d <= 64 else 32
    return b, b, block_d


def _check(n1: torch.Tensor, n2: torch.Tensor, tau: float, precision: str) -> str:
    if n1.dtype not in (torch.float32, torch.float64):
        raise InputTypeError(f"the Triton contrastive kernels take float32 or float64, got "
                             f"{n1.dtype}")
    if n2.dtype != n1.dtype:
        raise InputTypeError(f"n2 dtype {n2.dtype} differs from n1 dtype {n1.dtype}")
    if n1.dim() != 2 or n1.shape != n2.shape:
        raise InputError(f"n1 and n2 must be [N, d] of one shape, got {tuple(n1.shape)} and "
                         f"{tuple(n2.shape)}")
    if n1.device != n2.device:
        raise InputError(f"n2 is on {n2.device} but n1 is on {n1.device}")
    if n1.device.type != "cuda" and not interpreted():
        raise InputError(f"the Triton backend runs CUDA tensors (CPU tensors only with "
                         f"TRITON_INTERPRET=1), got {n1.device}")
    if n1.shape[1] > MAX_D:
        raise InputError(f"the Triton contrastive kernels take d <= {MAX_D}, got "
                         f"d = {n1.shape[1]}")
    if not tau > 0:
        raise InputError(f"tau must be > 0, got {tau}")
    if precision not in PRECISIONS:
        raise InputError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    if precision != "exact" and n1.dtype != torch.float32:
        raise InputError(f"precision={precision!r} is for float32 inputs, got {n1.dtype}")
    if precision == "bf16" and interpreted():
        # triton 3.9's interpreter multiplies the raw bits of bfloat16 dot operands
        return "bf16_emulated"
    return PRECISIONS[precision]


def _scale(n1: torch.Tensor, tau: float) -> torch.Tensor:
    return torch.tensor([_LOG2E / tau], dtype=n1.dtype, device=n1.device)


def contrastive_forward(n1: torch.Tensor, n2: torch.Tensor, tau: float, symmetric: bool,
                        block_size: int | None, *, precision: str = "exact",
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(lse1, lse2 | None)`` of the row-normalized views (see the module docstring)."""
    prec = _check(n1, n2, tau, precision)
    n, d = n1.shape
    if n == 0:
        empty = n1.new_empty(0)
        return empty, (n1.new_empty(0) if symmetric else None)
    bm, bn, bd = _blocks(d, block_size)
    v = torch.stack([n1, n2]).contiguous()
    out = torch.empty((2 if symmetric else 1, n), dtype=n1.dtype, device=n1.device)
    grid = (triton.cdiv(n, bm), 2 if symmetric else 1)
    micro_fast_lse_kernel[grid](v, _scale(n1, tau), out, n, d, 0, SELF=True, BLOCK_M=bm, BLOCK_N=bn,
                      BLOCK_D=bd, PREC=prec)
    out *= _LN2
    return (out[0], out[1]) if symmetric else (out[0], None)


def contrastive_backward(n1: torch.Tensor, n2: torch.Tensor, tau: float, lse1: torch.Tensor,
                         lse2: torch.Tensor | None, g1: torch.Tensor, g2: torch.Tensor | None,
                         block_size: int | None, *, precision: str = "exact",
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of ``sum g1 * lse1 (+ g2 * lse2)`` w.r.t. ``n1`` and ``n2`` (symmetric
    when ``lse2`` is given), deterministic (see the module docstring)."""
    prec = _check(n1, n2, tau, precision)
    n, d = n1.shape
    symmetric = lse2 is not None
    if symmetric and g2 is None:
        raise InputError("g2 is required with lse2")
    grads = torch.zeros((2, n, d), dtype=n1.dtype, device=n1.device)
    if n == 0:
        return grads[0], grads[1]
    bm, bn, bd = _blocks(d, block_size)
    v = torch.stack([n1, n2]).contiguous()
    lse = torch.zeros((2, n), dtype=n1.dtype, device=n1.device)
    g = torch.zeros((2, n), dtype=n1.dtype, device=n1.device)
    lse[0] = lse1 * _LOG2E
    g[0] = g1 / tau
    if symmetric:
        lse[1] = lse2 * _LOG2E
        g[1] = g2 / tau
    scale = _scale(n1, tau)
    rows = triton.cdiv(n, bm)
    meta = dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, PREC=prec)
    if symmetric:  # both sides in one launch
        micro_fast_grad_kernel[(rows, 2)](v, lse, g, scale, grads, n, d, 0, SELF=True, X_TERM=True,
                                Z_TERM=True, **meta)
    else:  # side 1: A11 n1 + (g1 terms of W12) n2; side 2: (g1 terms of W12)^T n1 only
        micro_fast_grad_kernel[(rows, 1)](v, lse, g, scale, grads, n, d, 0, SELF=True,
                                          X_TERM=True, Z_TERM=False, **meta)
        micro_fast_grad_kernel[(rows, 1)](v, lse, g, scale, grads, n, d, 1, SELF=False,
                                          X_TERM=False, Z_TERM=True, **meta)
    return grads[0], grads[1]


def workspace_bytes(op: str, *, n: int = 0, d: int = 0, elem: int = 4, **_: int) -> int:
    """Memory beyond the outputs (see ``micro_fast.backends``): the stacked views and the
    per-row lse / g buffers of the backward."""
    if op == "contrastive_loss":
        return 2 * n * d * elem + 4 * n * elem
    return 0
