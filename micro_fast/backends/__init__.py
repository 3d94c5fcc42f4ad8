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

A backend may lack an op (``hasattr``); ``get(..., op=...)`` then falls through to the next,
as it does for an op in the backend's ``AUTO_SKIP`` (one it has, but slower than the next).
``torch_ref`` is the ground truth every other backend is tested against.
"""

from __future__ import annotations

import importlib
from types import ModuleType

import torch

from micro_fast.errors import InputError, UnavailableError

#: Preference order of ``backend="auto"``.
BACKENDS: tuple[str, ...] = ("cuda", "numba_cuda", "cpp", "numba", "torch_ref")

_modules: dict[str, ModuleType] = {}


def _load(name: str) -> ModuleType:
    if name not in _modules:
        if name not in BACKENDS:
            raise InputError(f"backend must be one of {('auto', *BACKENDS)}, got {name!r}")
        _modules[name] = importlib.import_module(f"{__name__}.{name}")
    return _modules[name]


def status() -> dict[str, str]:
    """Maps every backend to ``"available"`` or the reason it is not."""
    out = {}
    for name in BACKENDS:
        try:
            ok, why = _load(name).is_available()
        except Exception as exc:  # an import failure is a reason, not a crash
            ok, why = False, f"{type(exc).__name__}: {exc}"
        out[name] = "available" if ok else why
    return out


def available(device: torch.device | str | None = None) -> list[str]:
    """Names of the backends that can run on this machine, in ``auto`` preference order; with
    ``device``, only those that run on its tensors (``"cpu"``: not ``cuda`` nor ``numba_cuda``,
    even where they are available)."""
    names = [name for name, why in status().items() if why == "available"]
    if device is not None:
        device = torch.device(device)
        names = [name for name in names if _load(name).supports(device)]
    return names


def get(backend: str, device: torch.device, op: str = "topk_similarity",
        fallback: str | None = None) -> ModuleType:
    """The backend module that runs ``op`` on tensors of ``device``; ``"auto"`` picks the
    fastest that has it. A named backend without ``op`` is an error, or with ``fallback``
    (``"torch_ref"``, for an op whose kernel is one dense product) that backend instead."""
    if backend == "auto":
        for name in BACKENDS:
            try:
                mod = _load(name)
                # supports() first: it is cheap, while is_available() may initialize a driver
                # (numba_cuda) that a CPU tensor never needs
                if (mod.supports(device) and mod.is_available()[0] and hasattr(mod, op)
                        and op not in getattr(mod, "AUTO_SKIP", ())):
                    return mod
            except ImportError:
                continue
        raise RuntimeError(f"no backend runs {op} on device {device}")  # torch_ref runs all
    mod = _load(backend)
    ok, why = mod.is_available()
    if not ok:
        raise UnavailableError(f"backend {backend!r} is not available: {why}")
    if not mod.supports(device):
        raise InputError(f"backend {backend!r} does not run on {device.type} tensors")
    if not hasattr(mod, op):
        if fallback is not None:
            return get(fallback, device, op)
        raise InputError(f"backend {backend!r} has no {op} kernel")
    return mod
