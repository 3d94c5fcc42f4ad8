r"""Arithmetic on ``CSRGraph``: what its ``*``, ``/``, unary ``-``, ``+`` and ``-`` run.

* ``s * A``, ``A * s``, ``A / s`` for a real scalar ``s`` (a Python number or a 0-dim tensor,
  which may require grad): the same structure (and cached transpose), values scaled.
* ``-A``: values negated, structure shared.
* ``A + B``, ``A - B`` for graphs of the same shape, dtype and device: the matrix sum
  :math:`C = A \pm B` stored on the union of the two structures,

  .. math:: c_{ij} = a_{ij} \pm b_{ij} \quad ((i, j) \in S_A \cup S_B;
            \text{a missing entry counts as } 0),

  differentiable w.r.t. both operands' values: :math:`\partial L / \partial a_{ij} =
  \partial L / \partial c_{ij}` and :math:`\partial L / \partial b_{ij} = \pm \partial L /
  \partial c_{ij}`. An entry present in both is kept even when it sums to zero (as
  ``torch.sparse`` does), so the structure never depends on the values.

Operands that share one structure object (``g.with_values(...)``, ``s * g``, ``g.to(dtype)``)
take a fast path: only the values are added and the result keeps the structure and its cached
transpose. Otherwise the union is built vectorized from the entries' keys ``row * n_cols + col``:
both key lists concatenated, sorted and made unique (``torch.unique``, whose inverse says where
each operand's entries land), row pointers found by binary search of the row starts in the
sorted keys, and each operand's values scattered into the union with ``index_add``. The last
union built for a structure is cached with it (with the operand structure it pairs with), so
MICRO's ``(1 - lam) * learned + lam * orig`` re-run on the same two structures builds nothing,
and the cached union keeps its own transpose for the backward of the product. Each structure
keeps at most one such partner alive.
"""

from __future__ import annotations

import numbers
from typing import Any

import torch

from micro_fast.errors import InputError, InputTypeError
from micro_fast.graph import CSRGraph, _Structure

#: key of the last union in a structure's derived cache: (other structure, union, positions of
#: this structure's entries in it, positions of the other's)
_UNION_KEY = "arith.union"


def _scalar(s: Any) -> bool:
    """A real scalar a graph can be scaled by: a non-complex number or a 0-dim real tensor."""
    if isinstance(s, torch.Tensor):
        return s.dim() == 0 and not s.is_complex() and s.dtype != torch.bool
    return isinstance(s, numbers.Real) and not isinstance(s, bool)


def scale(g: CSRGraph, s: Any) -> CSRGraph:
    """``s * g`` (the structure, its transpose and the symmetry flag kept); ``NotImplemented``
    for anything but a real scalar, so Python reports the unsupported operand."""
    if not _scalar(s):
        return NotImplemented
    return CSRGraph._from_structure(g._s, g.values * s, g.symmetric)


def divide(g: CSRGraph, s: Any) -> CSRGraph:
    """``g / s`` for a real scalar ``s`` (``NotImplemented`` otherwise)."""
    if not _scalar(s):
        return NotImplemented
    return CSRGraph._from_structure(g._s, g.values / s, g.symmetric)


def negate(g: CSRGraph) -> CSRGraph:
    """``-g``."""
    return CSRGraph._from_structure(g._s, -g.values, g.symmetric)


def add(a: CSRGraph, b: Any, *, subtract: bool = False) -> CSRGraph:
    """``a + b`` (``a - b`` when ``subtract``) for two graphs of the same shape, dtype and
    device, on the union of their structures (see the module docstring); ``NotImplemented``
    when ``b`` is not a ``CSRGraph``."""
    if not isinstance(b, CSRGraph):
        return NotImplemented
    op = "-" if subtract else "+"
    if a.shape != b.shape:
        raise InputError(f"graph {op} graph: the left operand has shape {a.shape} but the "
                         f"right operand has shape {b.shape}")
    if a.device != b.device:
        raise InputError(f"graph {op} graph: the left operand is on {a.device} but the right "
                         f"operand is on {b.device}")
    if a.dtype != b.dtype:
        raise InputTypeError(f"graph {op} graph: the left operand's values are {a.dtype} but "
                             f"the right operand's are {b.dtype}")
    vb = -b.values if subtract else b.values
    symmetric = True if a.symmetric and b.symmetric else None
    if a._s is b._s:  # same structure object: the union is the structure itself
        return CSRGraph._from_structure(a._s, a.values + vb, symmetric)
    s, pos_a, pos_b = union(a._s, b._s)
    values = torch.zeros(s.indices.numel(), dtype=a.dtype, device=a.device)
    # out-of-place index_add keeps both operands' values in the autograd graph
    values = values.index_add(0, pos_a, a.values).index_add(0, pos_b, vb)
    return CSRGraph._from_structure(s, values, symmetric)


def entry_keys(s: _Structure) -> torch.Tensor:
    """``row * n_cols + col`` of every stored entry, int64 [nnz]: sorted and unique, since a
    structure's rows ascend and its columns strictly increase within a row."""
    return s.rows() * max(s.shape[1], 1) + s.indices


def structure_from_keys(keys: torch.Tensor, shape: tuple[int, int]) -> _Structure:
    """The structure whose entries have the sorted, unique keys ``row * n_cols + col``."""
    n_rows, n_cols = shape
    w = max(n_cols, 1)
    rows = torch.div(keys, w, rounding_mode="floor")
    # row r starts at the first key >= r * n_cols: no bincount, no host read-back
    indptr = torch.searchsorted(keys, torch.arange(n_rows + 1, device=keys.device) * w)
    s = _Structure(indptr, keys - rows * w, shape)
    s._rows = rows  # known here; rows() would rebuild it from indptr
    return s


def union(sa: _Structure, sb: _Structure) -> tuple[_Structure, torch.Tensor, torch.Tensor]:
    """The union ``S`` of two structures of one shape, and where each operand's entries lie in
    it: ``(S, pos_a int64 [nnz_a], pos_b int64 [nnz_b])``. Cached on ``sa`` for the last
    ``sb`` it was built with (not while compiling, where the cache would be a guard)."""
    compiling = torch.compiler.is_compiling()
    cached = sa._derived.get(_UNION_KEY)
    if not compiling and cached is not None and cached[0] is sb:
        return cached[1:]
    ka, kb = entry_keys(sa), entry_keys(sb)
    na, nb = ka.numel(), kb.numel()
    if na == 0 or nb == 0 or (na == nb and torch.equal(ka, kb)):
        # one structure holds the other: reuse it, with its cached transpose
        s = sb if na == 0 else sa
        result = (s, torch.arange(na, device=ka.device), torch.arange(nb, device=kb.device))
    else:
        # one sort of both key lists (torch.unique), not a merge by binary search: two
        # searchsorted calls over 200k keys take 3 times as long on a CPU
        keys, inverse = torch.unique(torch.cat([ka, kb]), sorted=True, return_inverse=True)
        pos_a, pos_b = inverse[:na], inverse[na:]
        result = (structure_from_keys(keys, sa.shape), pos_a, pos_b)
    if not compiling and result[0] is not sa:  # (sa holding itself would be a cycle)
        sa._derived[_UNION_KEY] = (sb, *result)
    return result
