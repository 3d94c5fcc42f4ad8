"""Kernel backends behind one array-level contract.

Every backend module (``torch_ref``, ``cpp``, ``numba``, ``cuda``, ``numba_cuda``) exposes:

``is_available() -> tuple[bool, str]``
    whether it can run here, and why not.
``supports(device: torch.device) -> bool``
    whether it runs on tensors of that device.
``topk_similarity(queries, keys, k, exclude, block_size) -> (values, indices)``
    ``queries`` [M, d] and ``keys`` [N, d] (or ``None``: the queries themselves) are contiguous
    float32/float64 tensors on one device, already validated; ``exclude`` is ``None`` or
    ``(indptr [M+1], indices)`` int64 with sorted, unique, in-range columns per row. Returns the
    k largest inner products per row, best first, ties to the smaller key index, rows with fewer
    than k admissible keys padded with ``(-inf, -1)``; values in the input dtype, indices int64.
    No autograd: the ops layer above owns gradients.

``topk_similarity_shard(queries, k, exclude, block_size, shard, num_shards)`` (optional)
    the symmetric search (keys = queries) restricted to every ``num_shards``-th block pair from
    ``shard``: each row's top k among the candidates of those pairs, so that the lists of all
    shards merged by the same order are the full result (``micro_fast.distributed``).
``spmm(indptr, indices, values, x) -> y``
    ``y [M, d] = A x`` for the CSR matrix A (int64 indptr [M+1], indices [nnz], values [nnz])
    and contiguous ``x`` [N, d] of the values' dtype.
``sddmm(indptr, indices, a, b) -> out``
    ``out[e] = <a[row(e)], b[indices[e]]>``, [nnz]: the gradient of ``spmm`` w.r.t. values.
``bipartite_graph(users, items, n_users, n_items, normalization, self_loops, duplicates,
dtype) -> (indptr, indices, values)``
    the normalized (U+I) x (U+I) user-item adjacency (see ``ops.bipartite_graph``).
``project_rows_forward(x, rows, weight, bias) -> z`` and
``project_rows_backward(x, rows, weight, grad, need_x, need_weight) -> (grad_x, grad_weight)``
    ``z [R, F] = x[rows] weight^T (+ bias)`` for ``x`` [N, D], sorted distinct in-range
    ``rows`` (int64 [R]), ``weight`` [F, D], ``bias`` [F] or ``None``; the gradients of
    ``sum(grad * z)``: ``grad_x`` [N, D] dense, zero outside ``rows`` (``None`` unless
    ``need_x``), ``grad_weight = grad^T x[rows]`` (``None`` unless ``need_weight``).
``contrastive_forward(n1, n2, tau, symmetric, block_size) -> (lse1, lse2 | None)`` and
``contrastive_backward(n1, n2, tau, lse1, lse2, g1, g2, block_size) -> (grad1, grad2)``
    the row log-sum-exps of MICRO's contrastive loss for L2-normalized ``n1``, ``n2`` [N, d],
    and the gradients of ``sum g1 * lse1 (+ g2 * lse2)`` (see ``ops.contrastive_loss``).
``contrastive_fusion_forward(u, coef, tau, block_size) -> lse`` and
``contrastive_fusion_backward(u, coef, tau, lse, g, block_size) -> (grad_u, grad_coef)``
    the same statistics for every view ``u`` [M, N, d] against the fused view
    ``sum_k coef[:, k, None] * u[k]`` ([M, N]), from the views' Gram blocks, ``tau >= 0.05``
    (see ``ops.contrastive_fusion``).

A backend whose module sets ``CONTRASTIVE_SHARDS = True`` (cpp) also takes
``shard=(index, count)`` in those four: it then visits only every ``count``-th tile task from
``index`` (in a fixed order that does not depend on the ISA or thread count), returning each
row's log-sum-exp over those tasks alone (``-inf`` for a row none touches) and their share of
the gradients, so that ``count`` processes' partial results combine into the whole
(``micro_fast.distributed``).

``workspace_bytes(op, **sizes) -> int`` (optional)
    the memory the backend's kernel for ``op`` allocates beyond the op's outputs, for the sizes
    the op passes (``m``, ``n``, ``d``, ``k``, ``nnz``, ``views``, ``elem`` = bytes per value),
    which the ops add to their budget check (``micro_fast.memory``).

Which backend runs an op, and with which tile size, is decided in one place:
``micro_fast.dispatch`` (each backend's offers, ``auto``'s order, the measured choices).
``torch_ref`` is the ground truth every other backend is tested against.
"""

from __future__ import annotations

from types import ModuleType

import torch

from micro_fast.errors import InputError


def __getattr__(name: str):
    if name == "BACKENDS":  # the registered backends, in auto's order (micro_fast.dispatch)
        from micro_fast import dispatch

        return dispatch.names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def status() -> dict[str, str]:
    """Maps every backend to ``"available"`` or the reason it is not."""
    from micro_fast import dispatch

    return dispatch.status()


def available(device: torch.device | str | None = None) -> list[str]:
    """Names of the backends that can run on this machine, in ``auto`` preference order; with
    ``device``, only those that run on its tensors (``"cpu"``: not ``cuda`` nor ``numba_cuda``,
    even where they are available)."""
    from micro_fast import dispatch

    names = [name for name, why in status().items() if why == "available"]
    if device is not None:
        device = torch.device(device)
        names = [name for name in names if dispatch.module(name).supports(device)]
    return names


def get(backend: str, device: torch.device, op: str = "topk_similarity") -> ModuleType:
    """The backend module that runs ``op`` (an op of ``micro_fast.dispatch.OPS`` or one of its
    kernels, e.g. ``"contrastive_forward"``) on tensors of ``device``: for ``"auto"`` the one
    ``micro_fast.dispatch.plan`` chooses; a named backend is checked (available, runs on the
    device, offers the op)."""
    from micro_fast import dispatch

    name = dispatch.OP_OF_KERNEL.get(op, op)
    if name not in dispatch.KERNELS:
        raise InputError(f"op must be one of {dispatch.OPS} or their kernels, got {op!r}")
    return dispatch.plan(name, backend, device).module
