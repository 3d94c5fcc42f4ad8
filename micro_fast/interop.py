"""Graphs as users hold them: torch sparse tensors and scipy matrices in, ``CSRGraph`` out.

``as_graph(obj)`` is what the ops (``spmm``, ``propagate``) and the ``nn`` layers call on their
graph argument. It accepts

* a ``CSRGraph``: returned as is;
* a torch sparse COO tensor (2-D, any device; uncoalesced entries are summed, as
  ``torch.sparse.mm`` does) or a torch sparse CSR tensor (column indices sorted and unique
  within each row, torch's CSR invariant);
* a ``scipy.sparse`` matrix or array of any format (duplicates summed);

with float32 or float64 values. A conversion builds the CSR structure (a sort of the entries'
keys when a COO tensor is not already in row-major order) once per object; the resulting graph
is cached and kept, with its cached transpose, so repeated calls and backward passes build
nothing. ``conversions`` counts the conversions made in this process.

The cache holds no reference to the converted object (a weak reference, dropped when the object
dies) and is keyed by

* for a torch tensor: the object and its version counter ``t._version``. In torch 2.13 every
  in-place update made through the sparse tensor bumps it, and a new conversion follows:
  ``t.mul_(s)``, ``t.add_(u)``, ``t.zero_()``, ``t.copy_(u)``, ``t.div_(s)`` (COO), and writes
  through its own accessors, ``t.values().mul_(s)``, ``t._values()[i] = v`` (COO),
  ``t.indices()`` / ``t.crow_indices()`` / ``t.col_indices()`` updates. Not seen: writes through
  the dense tensor the sparse tensor was built from (``torch.sparse_coo_tensor(i, v)`` aliases
  ``v`` without sharing its version counter, so ``v.mul_(2)`` changes the matrix unseen), through
  ``.data`` or through numpy views; update the sparse tensor itself, or call ``forget(t)``;
* for a scipy matrix: the object, its format, the address of its ``data`` buffer, ``nnz`` and
  ``shape``. Replacing ``m.data``, adding or removing entries and ``m.resize`` are seen; writes
  into the existing ``m.data`` buffer (``m.data *= 2``, ``m[i, j] = v`` on a stored entry) are
  not (numpy keeps no version counter): call ``forget(m)`` after them.

Gradients: when a torch sparse tensor requires grad (built from values that require grad, or a
leaf with ``requires_grad``) and grad mode is on, only the structure comes from the cache; the
values are taken from the tensor again on every call through a differentiable path
(``t.values()`` for a coalesced COO or a CSR tensor; for an uncoalesced COO tensor a gather of
its raw values, duplicates summed with the cached permutation, whose backward hands the tensor a
coalesced sparse gradient), so the product is differentiable w.r.t. them as with
``torch.sparse.mm``, and the cache never holds an autograd graph. scipy matrices give constant
graphs.

``torch_function`` is what ``CSRGraph.__torch_function__`` runs: ``torch.sparse.mm(g, x)``,
``torch.mm(g, x)``, ``torch.matmul(g, x)`` and ``torch.spmm(g, x)`` for a ``CSRGraph`` ``g`` and a
dense ``x`` are ``micro_fast.spmm(g, x)``, with its backward; any other torch function given a
``CSRGraph`` returns ``NotImplemented``, so torch raises its TypeError.

Under ``torch.compile`` (torch 2.13): ``micro_fast.spmm``, ``torch.mm`` and ``torch.matmul`` on a
``CSRGraph`` trace without graph breaks, for graphs passed in and graphs made in the compiled
function (``g.t()``, ``s * g``). ``torch.sparse.mm(g, x)`` breaks the graph, and so does
``g @ x`` at least when the values require grad (dynamo neither dispatches ``torch.sparse.mm``
to a non-tensor's ``__torch_function__`` nor calls its ``__matmul__``; it hands it
``x.matmul(g)``): the product runs eagerly there, with the same result. Converting a torch
sparse tensor or scipy matrix always runs eagerly (``torch.compiler.disable``).
"""

from __future__ import annotations

import functools
import threading
import weakref
from typing import Any

import numpy as np
import torch

from micro_fast.errors import InputError, InputTypeError
from micro_fast.graph import CSRGraph, _Structure
from micro_fast.graph_arith import structure_from_keys

#: conversions made by ``as_graph`` in this process (cache misses); the tests read it
conversions = 0

#: what a graph argument may be
GraphLike = Any  # CSRGraph | torch.Tensor (sparse COO/CSR) | scipy.sparse matrix or array

_ACCEPTED = "a CSRGraph, a torch sparse COO or CSR tensor or a scipy.sparse matrix"
_FLOATS = (torch.float32, torch.float64)


class _Entry:
    """A cached conversion: the graph (structure and constant values) and, for a COO tensor
    not in row-major order, the sort ``order`` of its entries and the slot of each sorted entry
    in the graph (``inverse``), to gather differentiable values again."""

    __slots__ = ("ref", "key", "graph", "order", "inverse")

    def __init__(self, key: tuple, graph: CSRGraph, order: torch.Tensor | None = None,
                 inverse: torch.Tensor | None = None) -> None:
        self.ref: weakref.ref | None = None
        self.key, self.graph, self.order, self.inverse = key, graph, order, inverse


# id(object) -> entry. Keyed by id with the weak reference checked on lookup (a
# WeakKeyDictionary would compare tensors with ==). Re-entrant: a weakref callback can run from
# a garbage collection triggered while the lock is held.
_cache: dict[int, _Entry] = {}
_lock = threading.RLock()


def as_graph(obj: GraphLike, name: str = "graph") -> CSRGraph:
    """``obj`` as a ``CSRGraph`` (see the module docstring for what is accepted and cached).

    Args:
        obj: a ``CSRGraph``, a 2-D torch sparse COO or CSR tensor, or a scipy.sparse matrix,
            with float32/float64 values.
        name: the argument's name in error messages.

    Returns:
        The ``CSRGraph`` (``obj`` itself for a ``CSRGraph``), of ``obj``'s shape, dtype and
        device.

    Raises:
        InputTypeError: ``obj`` is none of these (a dense tensor included), or its values are
            not float32/float64.
        InputError: ``obj`` is not 2-D, or holds indices out of range or an invalid CSR layout.
    """
    if isinstance(obj, CSRGraph):
        return obj
    if isinstance(obj, torch.Tensor):
        if obj.layout in (torch.sparse_coo, torch.sparse_csr):
            return _from_torch(obj, name)
        hint = ("; build one with CSRGraph.from_dense" if obj.layout == torch.strided
                else "; convert it with .to_sparse_csr()")
        raise InputTypeError(f"{name} must be {_ACCEPTED}, got a torch.Tensor of layout "
                             f"{obj.layout}{hint}")
    if _is_scipy_sparse(obj):
        return _from_scipy(obj, name)
    raise InputTypeError(f"{name} must be {_ACCEPTED}, got {type(obj).__name__}")


def forget(obj: Any) -> None:
    """Drops the cached conversion of ``obj`` (after an update the cache cannot see)."""
    with _lock:
        _cache.pop(id(obj), None)


def clear() -> None:
    """Drops every cached conversion."""
    with _lock:
        _cache.clear()


def cached() -> int:
    """How many conversions the cache holds (one per live object converted)."""
    return len(_cache)


def _lookup(obj: Any, key: tuple) -> _Entry | None:
    entry = _cache.get(id(obj))
    if entry is not None and entry.ref is not None and entry.ref() is obj and entry.key == key:
        return entry
    return None


def _store(obj: Any, entry: _Entry) -> None:
    global conversions
    oid = id(obj)
    entry.ref = weakref.ref(obj, functools.partial(_drop, oid))
    with _lock:
        _cache[oid] = entry
        conversions += 1


def _drop(oid: int, ref: weakref.ref) -> None:
    # only the entry of the dead object: its id may already belong to a newer entry's object
    with _lock:
        entry = _cache.get(oid)
        if entry is not None and entry.ref is ref:
            del _cache[oid]


# --- torch sparse tensors ------------------------------------------------------------------

@torch.compiler.disable  # a Python cache keyed by versions: run eagerly, never traced
def _from_torch(t: torch.Tensor, name: str) -> CSRGraph:
    key = (t._version, tuple(t.shape))
    entry = _lookup(t, key)
    if entry is None:
        entry = _convert_torch(t, name, key)
        _store(t, entry)
    if not (t.requires_grad and torch.is_grad_enabled()):
        return entry.graph
    # the values again, in the autograd graph of this call (never cached)
    if t.layout == torch.sparse_csr or (entry.order is None and t.is_coalesced()):
        values = t.values()
    else:
        values = _CoalescedValues.apply(t, entry.graph, entry.order, entry.inverse)
    return entry.graph.with_values(values)


def _convert_torch(t: torch.Tensor, name: str, key: tuple) -> _Entry:
    if t.dim() != 2 or t.dense_dim() != 0:
        raise InputError(f"{name} must be a 2-D sparse matrix, got a sparse tensor of shape "
                         f"{tuple(t.shape)} ({t.dense_dim()} dense dimensions)")
    if t.dtype not in _FLOATS:
        raise InputTypeError(f"{name} values must be float32 or float64, got {t.dtype}")
    shape = (int(t.shape[0]), int(t.shape[1]))
    n_rows, n_cols = shape
    with torch.no_grad():
        if t.layout == torch.sparse_coo:
            rows, cols = t._indices()
            raw = t._values()
        else:
            crow = t.crow_indices().to(torch.int64)
            cols = t.col_indices().to(torch.int64)
            raw = t.values().detach()
            _check_crow(name, crow, n_rows, cols.numel())
            rows = torch.repeat_interleave(torch.arange(n_rows, device=crow.device),
                                           crow[1:] - crow[:-1], output_size=cols.numel())
        nnz = cols.numel()
        if nnz:
            if int(rows.min()) < 0 or int(rows.max()) >= n_rows:
                raise InputError(f"{name}: row index out of range for {n_rows} rows")
            if int(cols.min()) < 0 or int(cols.max()) >= n_cols:
                raise InputError(f"{name}: column index out of range for {n_cols} columns")
        keys = rows * max(n_cols, 1) + cols
        if nnz < 2 or bool((keys[1:] > keys[:-1]).all()):  # row-major, no duplicates
            if t.layout == torch.sparse_csr:
                s = _Structure(crow, cols, shape)
                s._rows = rows
            else:
                s = structure_from_keys(keys, shape)
            # the tensor's own values (an alias sharing its version counter), not a copy
            return _Entry(key, CSRGraph._from_structure(s, raw, None))
        if t.layout == torch.sparse_csr:
            raise InputError(f"{name}: CSR column indices must be sorted and unique within "
                             "each row (torch's CSR invariant)")
        order = torch.sort(keys, stable=True).indices
        uniq, inverse = torch.unique_consecutive(keys[order], return_inverse=True)
        values = torch.zeros(uniq.numel(), dtype=raw.dtype, device=raw.device)
        values.index_add_(0, inverse, raw[order])
        graph = CSRGraph._from_structure(structure_from_keys(uniq, shape), values, None)
        return _Entry(key, graph, order, inverse)


def _check_crow(name: str, crow: torch.Tensor, n_rows: int, nnz: int) -> None:
    if crow.numel() != n_rows + 1 or int(crow[0]) != 0 or int(crow[-1]) != nnz \
            or bool((crow[1:] < crow[:-1]).any()):
        raise InputError(f"{name}: crow_indices must have {n_rows + 1} non-decreasing entries "
                         f"from 0 to nnz = {nnz}")


class _CoalescedValues(torch.autograd.Function):
    """The values of an uncoalesced COO tensor in the graph's entry order, duplicates summed,
    differentiable w.r.t. the tensor. The gradient is handed back as a coalesced sparse tensor
    on the graph's structure: the derivative at a coordinate, which torch's sparse constructor
    gives to each duplicate of it, as ``torch.sparse.mm`` does."""

    @staticmethod
    def forward(ctx, t, graph, order, inverse):  # noqa: D102
        ctx.graph = graph
        raw = t._values()
        if order is None:
            return raw.clone()
        out = torch.zeros(graph.nnz, dtype=raw.dtype, device=raw.device)
        return out.index_add_(0, inverse, raw[order])

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        g = ctx.graph
        return (torch.sparse_coo_tensor(g.to_edge_index(), grad, g.shape, is_coalesced=True,
                                        check_invariants=False), None, None, None)


# --- scipy ---------------------------------------------------------------------------------

def _is_scipy_sparse(obj: Any) -> bool:
    # scipy is imported only when an object from it is passed
    if not type(obj).__module__.startswith("scipy.sparse"):
        return False
    import scipy.sparse as sp

    return bool(sp.issparse(obj))


@torch.compiler.disable  # as _from_torch
def _from_scipy(m: Any, name: str) -> CSRGraph:
    data = getattr(m, "data", None)
    address = data.__array_interface__["data"][0] if isinstance(data, np.ndarray) else None
    key = (m.format, address, int(m.nnz), tuple(m.shape))
    entry = _lookup(m, key)
    if entry is None:
        if m.ndim != 2:
            raise InputError(f"{name} must be a 2-D sparse matrix, got shape {m.shape}")
        if m.dtype not in (np.float32, np.float64):
            raise InputTypeError(f"{name} values must be float32 or float64, got {m.dtype}; "
                                 "convert with .astype(np.float32)")
        # a copy: canonicalizing in place would reorder the caller's arrays
        csr = m.tocsr(copy=True)
        csr.sum_duplicates()
        csr.sort_indices()
        graph = CSRGraph(torch.from_numpy(csr.indptr.astype(np.int64)),
                         torch.from_numpy(csr.indices.astype(np.int64)),
                         torch.from_numpy(np.ascontiguousarray(csr.data)), csr.shape,
                         validate=False)  # scipy's canonical CSR is valid
        entry = _Entry(key, graph)
        _store(m, entry)
    return entry.graph


# --- torch functions on a CSRGraph ---------------------------------------------------------

_MATMULS = frozenset(f for f in (torch.sparse.mm, torch.mm, torch.matmul,
                                 getattr(torch, "spmm", None)) if f is not None)


def torch_function(func: Any, types: tuple, args: tuple = (), kwargs: dict | None = None
                   ) -> Any:
    """``CSRGraph.__torch_function__``: ``micro_fast.spmm(graph, x)`` for the products of a
    graph (first operand) and a dense tensor (second); ``NotImplemented`` otherwise.
    ``torch.sparse.mm``'s ``reduce`` may be ``"sum"`` (the product itself)."""
    kwargs = kwargs or {}
    if func not in _MATMULS or len(args) < 2:
        return NotImplemented
    extra = list(args[2:]) + [kwargs[k] for k in kwargs if k == "reduce"]
    if len(kwargs) > ("reduce" in kwargs) or \
            (extra and (func is not torch.sparse.mm or extra not in (["sum"], [None]))):
        return NotImplemented
    graph, x = args[0], args[1]
    if not isinstance(graph, CSRGraph) or not isinstance(x, torch.Tensor) \
            or x.layout != torch.strided:
        return NotImplemented
    from micro_fast.ops.spmm import spmm  # the op layer sits above this module

    return spmm(graph, x)
