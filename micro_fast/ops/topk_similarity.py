r"""Fused similarity + top-k: the k most similar keys of every query, never forming Q K^T.

For queries :math:`Q \in R^{M \times d}` and keys :math:`K \in R^{N \times d}`
(``keys=None``: :math:`K = Q`), row :math:`i` of the result holds the :math:`k` largest

.. math:: s_{ij} = \langle q_i, k_j \rangle
          \quad (\text{or } \langle q_i / \lVert q_i \rVert, k_j / \lVert k_j \rVert \rangle
          \text{ with } normalize)

over the admissible :math:`j` (those not in row :math:`i` of ``exclude``), sorted descending with
ties going to the smaller :math:`j`. The work is done in row blocks: the extra memory is
O(block x N) in the torch reference and O(threads x block x (block + d)) in the compiled kernels.

Gradients flow through ``values`` (the indices are constants):
:math:`\partial L / \partial q_i = \sum_r g_{ir} k_{j_{ir}}` and
:math:`\partial L / \partial k_j = \sum_{(i, r): j_{ir} = j} g_{ir} q_i`, computed from the
M x k index list only (a sparse backward; no M x N gradient is formed).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

from micro_fast import dispatch, memory
from micro_fast.errors import InputError, InputTypeError
from micro_fast.graph import CSRGraph
from micro_fast.ops._checks import (
    check_block_size,
    check_float_2d,
    check_k,
    check_matrix,
    check_no_overflow,
    check_nonzero_rows,
    check_values,
    l2_normalize,
    normalize_rows,
)

# Rows per chunk in the backward, so its gathered [rows, k, d] buffer stays small.
_BACKWARD_ROWS = 4096


@torch.library.custom_op("micro_fast::topk_similarity", mutates_args=())
def topk_kernel(queries: torch.Tensor, keys: torch.Tensor | None, raw_queries: torch.Tensor,
                raw_keys: torch.Tensor | None, k: int, exclude_indptr: torch.Tensor | None,
                exclude_indices: torch.Tensor | None, block_size: int | None, backend: str,
                normalized: bool, query_name: str, key_name: str,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values [M, k], indices [M, k])`` of ``queries`` against ``keys`` (``None``: the
    queries themselves). The value checks run here, out of the compiler's sight: NaN / inf in
    the raw inputs, their zero rows when ``normalized``, inner products that could overflow."""
    for name, raw in ((query_name, raw_queries), (key_name, raw_keys)):
        if raw is not None:
            check_values(name, raw)
            if normalized:
                check_nonzero_rows(name, raw)
    check_no_overflow(queries, queries if keys is None else keys)
    impl = dispatch.module(backend)
    exclude = None if exclude_indptr is None else (exclude_indptr, exclude_indices)
    values, indices = impl.topk_similarity(
        queries.detach().contiguous(), None if keys is None else keys.detach().contiguous(),
        k, exclude, block_size)
    return values.to(queries.device), indices.to(queries.device)


@topk_kernel.register_fake
def _(queries, keys, raw_queries, raw_keys, k, exclude_indptr, exclude_indices, block_size,
      backend, normalized, query_name, key_name):
    m = queries.shape[0]
    return queries.new_empty(m, k), queries.new_empty(m, k, dtype=torch.int64)


def _setup_topk(ctx, inputs, output):
    queries, keys = inputs[0], inputs[1]
    _, indices = output
    ctx.mark_non_differentiable(indices)
    ctx.symmetric = keys is None
    ctx.save_for_backward(queries, queries if keys is None else keys, indices)


def _topk_backward(ctx, grad_values, _grad_indices):
    queries, keys, indices = ctx.saved_tensors
    need_q = ctx.needs_input_grad[0]
    need_k = ctx.symmetric and need_q or not ctx.symmetric and ctx.needs_input_grad[1]
    grad_q, grad_k = similarity_backward(queries, keys, indices, grad_values, need_q, need_k)
    if ctx.symmetric:  # keys are the queries: both parts land on them
        grad_q, grad_k = (None if grad_q is None else grad_q + grad_k), None
    return (grad_q, grad_k) + (None,) * 10


topk_kernel.register_autograd(_topk_backward, setup_context=_setup_topk)


def similarity_backward(queries: torch.Tensor, keys: torch.Tensor, indices: torch.Tensor,
                        grad_values: torch.Tensor, need_q: bool = True, need_k: bool = True,
                        ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of :math:`\\sum_{i,r} g_{ir} \\langle q_i, k_{j_{ir}} \\rangle` w.r.t.
    ``queries`` [M, d] and ``keys`` [N, d] for ``indices`` [M, k] (-1 entries contribute
    nothing), from the index list only."""
    grad_q = torch.zeros_like(queries) if need_q else None
    grad_k = torch.zeros_like(keys) if need_k else None
    valid = indices >= 0
    grad_values = grad_values.to(queries.dtype).masked_fill(~valid, 0)
    safe = indices.clamp_min(0)
    for r0 in range(0, queries.shape[0], _BACKWARD_ROWS):
        r1 = min(queries.shape[0], r0 + _BACKWARD_ROWS)
        g, idx = grad_values[r0:r1], safe[r0:r1]
        if need_q:
            grad_q[r0:r1] = torch.bmm(g.unsqueeze(1), keys[idx]).squeeze(1)
        if need_k:
            contrib = g.unsqueeze(2) * queries[r0:r1].unsqueeze(1)
            grad_k.index_add_(0, idx.reshape(-1), contrib.reshape(-1, queries.shape[1]))
    return grad_q, grad_k


class _KnownSimilarity(torch.autograd.Function):
    @staticmethod
    def forward(ctx, queries, keys, indices, values):  # noqa: D102
        ctx.save_for_backward(queries, keys, indices)
        return values.detach().clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_values):  # noqa: D102
        queries, keys, indices = ctx.saved_tensors
        grad_q, grad_k = similarity_backward(queries, keys, indices, grad_values,
                                             ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return grad_q, grad_k, None, None


def with_similarity_grad(queries: torch.Tensor, keys: torch.Tensor, indices: torch.Tensor,
                         values: torch.Tensor) -> torch.Tensor:
    """``values`` [M, k], already computed as :math:`\\langle q_i, k_{j_{ir}} \\rangle` (e.g.
    by another process), made differentiable w.r.t. ``queries`` and ``keys`` as
    ``topk_similarity``'s values are. ``keys`` may be ``queries`` itself."""
    return _KnownSimilarity.apply(queries, keys, indices, values)


def check_exclude(exclude: object, m: int, n: int, device: torch.device):
    if exclude is None:
        return None
    if not isinstance(exclude, CSRGraph):
        raise InputTypeError(f"exclude must be a CSRGraph or None, got {type(exclude).__name__}")
    if exclude.shape != (m, n):
        raise InputError(f"exclude must have shape (queries, keys) = ({m}, {n}), "
                         f"got {exclude.shape}")
    if exclude.device != device:
        raise InputError(f"exclude is on {exclude.device} but queries are on {device}")
    return exclude.indptr, exclude.indices


class TopkInputs(NamedTuple):
    """Validated inputs of a top-k search (``prepare``)."""

    queries: torch.Tensor        # normalized when asked
    keys: torch.Tensor           # ``queries`` itself for the symmetric search
    symmetric: bool
    k: int
    exclude: tuple[torch.Tensor, torch.Tensor] | None
    block_size: int | None
    impl: object                 # the backend module
    backend: str                 # its name (micro_fast.dispatch)


def prepare(queries: torch.Tensor, keys: torch.Tensor | None, k: int,
            exclude: CSRGraph | None, normalize: bool, block_size: int | None,
            backend: str, *, eager_checks: bool = True,
            names: tuple[str, str] = ("queries", "keys")) -> TopkInputs:
    """The checks (the memory budget's among them) and preparation of ``topk_similarity``'s
    arguments, shared with the sharded search of ``micro_fast.distributed``. Without
    ``eager_checks`` only shapes, dtypes and options are checked here (the operator checks
    the values)."""
    check_float_2d(names[0], queries)
    if queries.shape[0] == 0 or queries.shape[1] == 0:
        raise InputError(f"{names[0]} must be non-empty, got shape {tuple(queries.shape)}")
    symmetric = keys is None or keys is queries
    if not symmetric:
        check_float_2d(names[1], keys)
        if keys.shape[0] == 0:
            raise InputError(f"{names[1]} must be non-empty, got shape {tuple(keys.shape)}")
        if keys.dtype != queries.dtype:
            raise InputTypeError(f"keys dtype {keys.dtype} differs from queries dtype "
                                 f"{queries.dtype}")
        if keys.device != queries.device:
            raise InputError(f"keys are on {keys.device} but queries are on {queries.device}")
        if keys.shape[1] != queries.shape[1]:
            raise InputError(f"keys have {keys.shape[1]} columns but queries have "
                             f"{queries.shape[1]}")
    n = queries.shape[0] if symmetric else keys.shape[0]
    check_k(k, n)
    block_size = check_block_size(block_size)
    excl = check_exclude(exclude, queries.shape[0], n, queries.device)
    m, elem = queries.shape[0], queries.element_size()
    plan = dispatch.plan("topk_similarity", backend, queries.device, rows=m,
                         work=m * n * queries.shape[1])
    impl = plan.module
    block_size = block_size or plan.block_size
    # the [M, k] outputs and the backend's working memory, before anything is allocated
    memory.check("topk_similarity",
                 m * k * (elem + 8) + memory.workspace(impl, "topk_similarity", m=m, n=n,
                                                       d=queries.shape[1], k=k, elem=elem),
                 f"{m} x {k} results over {n} keys")
    if eager_checks:
        check_matrix(names[0], queries)
        if not symmetric:
            check_matrix(names[1], keys)
    if normalize:
        queries = l2_normalize(names[0], queries) if eager_checks else normalize_rows(queries)
        if not symmetric:
            keys = l2_normalize(names[1], keys) if eager_checks else normalize_rows(keys)
    if symmetric:
        keys = queries
    if eager_checks and not normalize:  # unit rows: every inner product is at most 1 in size
        check_no_overflow(queries, keys)
    return TopkInputs(queries, keys, symmetric, k, excl, block_size, impl, plan.backend)


def topk_similarity(queries: torch.Tensor, keys: torch.Tensor | None = None, k: int = 10, *,
                    exclude: CSRGraph | None = None, normalize: bool = False,
                    block_size: int | None = None, backend: str = "auto",
                    names: tuple[str, str] = ("queries", "keys"),
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` largest inner products (cosine if ``normalize``) of each query with the keys.

    Args:
        queries: float32/float64 [M, d].
        keys: same dtype and device, [N, d]; ``None`` (or ``queries`` itself) searches the
            queries against themselves, which computes each pair once.
        k: 1 <= k <= N.
        exclude: ``CSRGraph`` of shape (M, N) whose stored (row, column) pairs are skipped,
            e.g. seen items in evaluation or the diagonal. Rows left with fewer than ``k``
            admissible keys are padded with value ``-inf`` and index ``-1``.
        normalize: L2-normalize the rows first (differentiably); zero rows are an error.
        block_size: rows per block (memory/speed trade-off); ``None``: the size measured
            fastest here (``micro_fast.tuning``) or the backend's default.
        backend: ``"auto"`` (``micro_fast.dispatch``) or one of ``micro_fast.backends.BACKENDS``.
        names: what ``queries`` and ``keys`` are called in error messages.

    Returns:
        ``(values [M, k] in the input dtype, indices [M, k] int64)``, best first.
    """
    t = prepare(queries, keys, k, exclude, normalize, block_size, backend, eager_checks=False,
                names=names)
    excl = t.exclude or (None, None)
    return topk_kernel(t.queries, None if t.symmetric else t.keys, queries,
                       None if t.symmetric else keys, k, excl[0], excl[1], t.block_size,
                       t.backend, bool(normalize), *names)
