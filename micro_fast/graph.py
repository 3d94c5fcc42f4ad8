"""``CSRGraph``: a compressed-sparse-row matrix that the ops read, with a cached transpose.

A graph of shape ``(n_rows, n_cols)`` with ``nnz`` stored entries is

* ``indptr``  int64 [n_rows + 1]: row ``r`` owns entries ``indptr[r]:indptr[r + 1]``;
* ``indices`` int64 [nnz]: column of each entry, strictly increasing within a row;
* ``values``  float [nnz]: entry weights; may require grad (a learned graph), in which case the
  ops differentiate through them.

The structure (indptr, indices) is immutable; ``with_values`` makes a graph with new weights that
shares the structure and its cached transpose permutation, so a graph re-weighted every step
never recomputes it.

``torch.sparse.mm / mm / matmul / spmm (g, x)`` and ``g @ x`` run ``micro_fast.spmm``
(``micro_fast.interop``, which also converts torch sparse tensors and scipy matrices, cached);
``s * g``, ``g / s``, ``-g``, ``g + h``, ``g - h`` are graphs (``micro_fast.graph_arith``);
``micro_fast.nn.GraphBuffer`` holds a graph in an ``nn.Module``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from micro_fast.errors import InputError, InputTypeError

_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def _as_index(name: str, t: Any, device: torch.device | None = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(np.asarray(t))
    if t.dtype not in _INT_DTYPES:
        raise InputTypeError(f"{name} must be an integer tensor, got dtype {t.dtype}")
    if t.dim() != 1:
        raise InputError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise InputError(f"{name} is on {t.device} but indptr is on {device}")
    return t.to(torch.int64).contiguous()


class _Structure:
    """The sparsity pattern and what is derived from it once (row ids, transpose, what a
    backend derives, such as the cuda backend's work partition)."""

    __slots__ = ("indptr", "indices", "shape", "_rows", "_transpose", "_derived")

    #: how many transposes were built, process-wide (tests check that caching holds)
    transposes_built = 0

    def __init__(self, indptr: torch.Tensor, indices: torch.Tensor, shape: tuple[int, int]):
        self.indptr = indptr
        self.indices = indices
        self.shape = shape
        self._rows: torch.Tensor | None = None
        self._transpose: tuple[_Structure, torch.Tensor] | None = None
        self._derived: dict[str, Any] = {}

    def derived(self, key: str, build: Callable[[torch.Tensor, torch.Tensor], Any]) -> Any:
        """``build(indptr, indices)``, computed on first use and cached under ``key`` for the
        life of the structure (like the transpose)."""
        if key not in self._derived:
            self._derived[key] = build(self.indptr, self.indices)
        return self._derived[key]

    def rows(self) -> torch.Tensor:
        if self._rows is None:
            counts = self.indptr[1:] - self.indptr[:-1]
            # output_size keeps the shape static (nnz) for torch.compile
            self._rows = torch.repeat_interleave(
                torch.arange(self.shape[0], device=self.indptr.device), counts,
                output_size=self.indices.shape[0])
        return self._rows

    def transpose(self) -> tuple[_Structure, torch.Tensor]:
        """The transposed structure and the permutation taking values to its entry order: a
        stable sort of the entries by column (on any device), so each column lists its rows
        ascending. Built once per structure, then cached."""
        if self._transpose is None:
            n_cols = self.shape[1]
            perm = torch.sort(self.indices, stable=True).indices
            indices = self.rows()[perm]
            indptr = torch.zeros(n_cols + 1, dtype=torch.int64, device=self.indptr.device)
            # entries per column; index_add, unlike bincount, has a shape known before it runs
            counts = torch.zeros(n_cols, dtype=torch.int64, device=self.indptr.device)
            counts.index_add_(0, self.indices, torch.ones_like(self.indices))
            torch.cumsum(counts, 0, out=indptr[1:])
            t = _Structure(indptr, indices, (n_cols, self.shape[0]))
            # the transpose of the transpose is this structure again
            inverse = torch.empty_like(perm)
            inverse[perm] = torch.arange(perm.numel(), device=perm.device)
            t._transpose = (self, inverse)
            self._transpose = (t, perm)
            if not torch.compiler.is_compiling():  # global state would become a guard
                _Structure.transposes_built += 1
        return self._transpose


class CSRGraph:
    """A sparse matrix in CSR form; see the module docstring for the layout.

    Args:
        indptr: integer [n_rows + 1], non-decreasing, starting at 0 and ending at nnz.
        indices: integer [nnz], columns in [0, n_cols), strictly increasing within each row.
        values: float [nnz] or ``None`` (all ones, float32).
        shape: ``(n_rows, n_cols)``; ``n_rows`` defaults to ``len(indptr) - 1`` and ``n_cols``
            to ``n_rows`` (a square graph).
        symmetric: declare that the matrix equals its transpose (structure and values), which lets
            the ops skip building the transpose; ``None`` means unknown.
        validate: check the arrays (O(nnz)). The kernels trust a CSRGraph's structure, so
            ``validate=False`` is for arrays known to be valid (graphs built by this library);
            invalid ones then give undefined results.

    Raises:
        TypeError / ValueError naming the offending argument.
    """

    __slots__ = ("_s", "values", "symmetric", "_tvalues")

    def __init__(self, indptr: Any, indices: Any, values: Any = None,
                 shape: tuple[int, int] | None = None, *, symmetric: bool | None = None,
                 validate: bool = True) -> None:
        indptr = _as_index("indptr", indptr)
        indices = _as_index("indices", indices, indptr.device)
        n_rows = indptr.numel() - 1
        if shape is None:
            shape = (n_rows, n_rows)
        if len(shape) != 2 or any(int(s) != s or s < 0 for s in shape):
            raise InputError(f"shape must be two non-negative integers, got {shape}")
        shape = (int(shape[0]), int(shape[1]))
        if values is None:
            values = torch.ones(indices.numel(), dtype=torch.float32, device=indptr.device)
        elif not isinstance(values, torch.Tensor):
            values = torch.as_tensor(np.asarray(values))
        self._s = _Structure(indptr, indices, shape)
        self.values: torch.Tensor = values
        self.symmetric = symmetric
        self._tvalues: tuple | None = None
        if validate:
            self.validate()

    # --- construction ----------------------------------------------------------------
    @classmethod
    def _from_structure(cls, s: _Structure, values: torch.Tensor,
                        symmetric: bool | None) -> CSRGraph:
        g = cls.__new__(cls)
        g._s = s
        g.values = values
        g.symmetric = symmetric
        g._tvalues = None
        return g

    def with_values(self, values: torch.Tensor) -> CSRGraph:
        """Same structure (and cached transpose), new weights [nnz]."""
        if values.shape != (self.nnz,):
            raise InputError(f"values must have shape ({self.nnz},), got {tuple(values.shape)}")
        return CSRGraph._from_structure(self._s, values, None)

    @classmethod
    def from_coo(cls, rows: Any, cols: Any, values: Any = None,
                 shape: tuple[int, int] | None = None, *, duplicates: str = "sum") -> CSRGraph:
        """From coordinate lists in any order. ``duplicates="sum"`` adds repeated (row, col)
        entries, ``"error"`` rejects them."""
        rows = _as_index("rows", rows)
        cols = _as_index("cols", cols, rows.device)
        if rows.numel() != cols.numel():
            raise InputError(f"rows and cols differ in length ({rows.numel()} vs {cols.numel()})")
        if values is None:
            values = torch.ones(rows.numel(), dtype=torch.float32, device=rows.device)
        elif not isinstance(values, torch.Tensor):
            values = torch.as_tensor(np.asarray(values))
        if values.shape != rows.shape:
            raise InputError(f"values must have shape ({rows.numel()},), got {tuple(values.shape)}")
        if shape is None:
            n = int(max(rows.max(), cols.max())) + 1 if rows.numel() else 0
            shape = (n, n)
        n_rows, n_cols = int(shape[0]), int(shape[1])
        if rows.numel():
            if int(rows.min()) < 0 or int(rows.max()) >= n_rows:
                raise InputError(f"rows: index out of range for {n_rows} rows")
            if int(cols.min()) < 0 or int(cols.max()) >= n_cols:
                raise InputError(f"cols: index out of range for {n_cols} columns")
        key = rows * max(n_cols, 1) + cols
        key, order = torch.sort(key, stable=True)
        values = values[order]
        uniq, inverse = torch.unique_consecutive(key, return_inverse=True)
        if uniq.numel() != key.numel():
            if duplicates == "error":
                raise InputError("rows/cols: duplicate (row, col) entries")
            if duplicates != "sum":
                raise InputError(f"duplicates must be 'sum' or 'error', got {duplicates!r}")
            summed = torch.zeros(uniq.numel(), dtype=values.dtype, device=values.device)
            values = summed.index_add(0, inverse, values)
        r = torch.div(uniq, max(n_cols, 1), rounding_mode="floor")
        c = uniq - r * max(n_cols, 1)
        indptr = torch.zeros(n_rows + 1, dtype=torch.int64, device=rows.device)
        torch.cumsum(torch.bincount(r, minlength=n_rows), 0, out=indptr[1:])
        return cls(indptr, c, values, (n_rows, n_cols), validate=False)

    @classmethod
    def from_edge_index(cls, edge_index: Any, values: Any = None,
                        shape: tuple[int, int] | None = None, *,
                        duplicates: str = "sum") -> CSRGraph:
        """From a PyG-style ``edge_index`` [2, nnz] (row 0: sources = rows, row 1: targets)."""
        ei = edge_index if isinstance(edge_index, torch.Tensor) else torch.as_tensor(edge_index)
        if ei.dim() != 2 or ei.shape[0] != 2:
            raise InputError(f"edge_index must have shape [2, nnz], got {tuple(ei.shape)}")
        return cls.from_coo(ei[0], ei[1], values, shape, duplicates=duplicates)

    @classmethod
    def from_torch(cls, t: torch.Tensor) -> CSRGraph:
        """From a torch sparse COO or CSR tensor (2-D)."""
        if t.layout == torch.sparse_csr:
            return cls(t.crow_indices(), t.col_indices(), t.values(), tuple(t.shape))
        if t.layout == torch.sparse_coo:
            t = t.coalesce()
            i = t.indices()
            return cls.from_coo(i[0], i[1], t.values(), tuple(t.shape))
        raise InputTypeError(f"t must be a sparse COO or CSR tensor, got layout {t.layout}")

    @classmethod
    def from_scipy(cls, m: Any) -> CSRGraph:
        """From any scipy.sparse matrix or array (converted to canonical CSR)."""
        import scipy.sparse as sp

        if not sp.issparse(m):
            raise InputTypeError(f"m must be a scipy.sparse matrix, got {type(m).__name__}")
        csr = sp.csr_matrix(m)
        csr.sum_duplicates()
        csr.sort_indices()
        return cls(torch.from_numpy(csr.indptr.astype(np.int64)),
                   torch.from_numpy(csr.indices.astype(np.int64)),
                   torch.from_numpy(np.ascontiguousarray(csr.data)), csr.shape)

    @classmethod
    def from_dense(cls, dense: torch.Tensor) -> CSRGraph:
        """The nonzeros of a dense 2-D tensor."""
        if dense.dim() != 2:
            raise InputError(f"dense must be 2-D, got shape {tuple(dense.shape)}")
        r, c = torch.nonzero(dense, as_tuple=True)
        return cls.from_coo(r, c, dense[r, c], tuple(dense.shape))

    # --- properties --------------------------------------------------------------------
    @property
    def indptr(self) -> torch.Tensor:
        return self._s.indptr

    @property
    def indices(self) -> torch.Tensor:
        return self._s.indices

    @property
    def shape(self) -> tuple[int, int]:
        return self._s.shape

    @property
    def nnz(self) -> int:
        return self._s.indices.numel()

    @property
    def device(self) -> torch.device:
        return self._s.indptr.device

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    def row_indices(self) -> torch.Tensor:
        """Row of every stored entry, int64 [nnz] (cached)."""
        return self._s.rows()

    def degrees(self) -> torch.Tensor:
        """Stored entries per row, int64 [n_rows]."""
        return self.indptr[1:] - self.indptr[:-1]

    # --- transpose ---------------------------------------------------------------------
    def select_rows(self, rows: torch.Tensor) -> CSRGraph:
        """The (len(rows), n_cols) graph of the given rows (int64 [R], any order, repeats
        allowed), all columns kept."""
        rows = rows.to(self.device)
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        counts = ends - starts
        indptr = torch.zeros(rows.numel() + 1, dtype=torch.int64, device=self.device)
        torch.cumsum(counts, 0, out=indptr[1:])
        offsets = torch.repeat_interleave(starts - indptr[:-1], counts)
        pos = torch.arange(int(indptr[-1]), device=self.device) + offsets
        return CSRGraph(indptr, self.indices[pos], self.values[pos],
                        (rows.numel(), self.shape[1]), validate=False)

    def transpose(self) -> CSRGraph:
        """The transpose, as a CSRGraph; its structure is computed once per structure."""
        if self.symmetric:
            return self
        t, perm = self._s.transpose()
        return CSRGraph._from_structure(t, self.values[perm], self.symmetric)

    @property
    def T(self) -> CSRGraph:  # noqa: N802 - mirrors torch/numpy
        return self.transpose()

    def transposed_structure(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(indptr, indices)`` of the transpose (cached per structure)."""
        t, _ = self._s.transpose()
        return t.indptr, t.indices

    def derived(self, key: str, build: Callable[[torch.Tensor, torch.Tensor], Any], *,
                transposed: bool = False) -> Any:
        """``build(indptr, indices)`` of the structure (of its transpose when ``transposed``;
        the structure itself when the graph is declared symmetric), computed on first use and
        cached with the structure like the transpose, so re-weighted graphs (``with_values``)
        and backward passes reuse it. ``key`` names what ``build`` makes (e.g. the cuda
        backend's work partition)."""
        s = self._s.transpose()[0] if transposed and not self.symmetric else self._s
        return s.derived(key, build)

    def transposed_values(self) -> torch.Tensor:
        """The values in the transpose's entry order, detached; cached until ``values``
        changes (in-place updates included), so a constant graph gathers them once (under
        ``torch.compile``, where tensor versions are not visible, gathered on every call)."""
        v = self.values
        if torch.compiler.is_compiling():
            return v.detach()[self._s.transpose()[1]]
        key = (v.data_ptr(), v._version, v.dtype, v.numel())
        if self._tvalues is None or self._tvalues[0] != key:
            _, perm = self._s.transpose()
            self._tvalues = (key, v.detach()[perm])
        return self._tvalues[1]

    t = transpose  # as torch.Tensor.t

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        """``graph @ x`` is ``micro_fast.spmm(graph, x)``."""
        from micro_fast.ops.spmm import spmm  # the op layer sits above this module

        return spmm(self, x)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        # torch.sparse.mm / mm / matmul / spmm (graph, x) -> spmm; others NotImplemented
        return _interop.torch_function(func, types, args, kwargs)

    # arithmetic (micro_fast.graph_arith): by a real scalar, and of two graphs of one shape
    def __mul__(self, s: Any) -> CSRGraph:
        return _arith.scale(self, s)

    __rmul__ = __mul__

    def __truediv__(self, s: Any) -> CSRGraph:
        return _arith.divide(self, s)

    def __neg__(self) -> CSRGraph:
        return _arith.negate(self)

    def __add__(self, other: Any) -> CSRGraph:
        return _arith.add(self, other)

    def __sub__(self, other: Any) -> CSRGraph:
        return _arith.add(self, other, subtract=True)

    def is_symmetric(self, atol: float = 0.0) -> bool:
        """Whether the matrix equals its transpose (structure, and values within ``atol``)."""
        if self.shape[0] != self.shape[1]:
            return False
        t, perm = self._s.transpose()
        if not (torch.equal(t.indptr, self.indptr) and torch.equal(t.indices, self.indices)):
            return False
        return bool(torch.allclose(self.values[perm], self.values, rtol=0.0, atol=atol))

    # --- validation ----------------------------------------------------------------------
    def validate(self) -> CSRGraph:
        """Checks the arrays; raises TypeError/ValueError naming the argument. Returns self."""
        indptr, indices, values = self.indptr, self.indices, self.values
        n_rows, n_cols = self.shape
        nnz = indices.numel()
        if indptr.numel() != n_rows + 1:
            raise InputError(f"indptr must have n_rows + 1 = {n_rows + 1} entries, "
                             f"got {indptr.numel()}")
        if int(indptr[0]) != 0 or int(indptr[-1]) != nnz:
            raise InputError(f"indptr must start at 0 and end at nnz = {nnz}, got "
                             f"{int(indptr[0])} and {int(indptr[-1])}")
        if n_rows and bool((indptr[1:] < indptr[:-1]).any()):
            raise InputError("indptr must be non-decreasing")
        if nnz:
            if int(indices.min()) < 0 or int(indices.max()) >= n_cols:
                raise InputError(f"indices: column index out of range [0, {n_cols})")
            same_row = self.row_indices()[1:] == self.row_indices()[:-1]
            if bool((same_row & (indices[1:] <= indices[:-1])).any()):
                raise InputError("indices must be strictly increasing within each row "
                                 "(sorted, no duplicates); build with CSRGraph.from_coo to sort")
        if not isinstance(values, torch.Tensor) or not values.is_floating_point():
            raise InputTypeError(f"values must be a floating-point tensor, got "
                            f"{getattr(values, 'dtype', type(values).__name__)}")
        if values.shape != (nnz,):
            raise InputError(f"values must have shape ({nnz},), got {tuple(values.shape)}")
        if values.device != indptr.device:
            raise InputError(f"values is on {values.device} but indptr is on {indptr.device}")
        if nnz and not bool(torch.isfinite(values.detach()).all()):
            raise InputError("values must be finite (found NaN or inf)")
        return self

    # --- conversions ---------------------------------------------------------------------
    def to(self, *args: Any, **kwargs: Any) -> CSRGraph:
        """The graph on another device and/or with values of another dtype, with the
        signatures of ``torch.Tensor.to``: ``to(device)``, ``to(dtype)``, ``to(device, dtype)``,
        ``to(tensor)`` (its device and dtype), ``to(device=..., dtype=...)``; ``non_blocking``
        is passed on. The structure (and its cached transpose) is shared when the device stays.
        """
        device, dtype = None, None
        non_blocking = bool(kwargs.pop("non_blocking", False))
        kwargs.pop("copy", None)
        if "device" in kwargs:
            device = kwargs.pop("device")
        if "dtype" in kwargs:
            dtype = kwargs.pop("dtype")
        if kwargs:
            raise InputTypeError(f"CSRGraph.to() got unexpected arguments {sorted(kwargs)}")
        for a in args:
            if isinstance(a, torch.dtype):
                dtype = a
            elif isinstance(a, torch.Tensor):
                device, dtype = a.device, a.dtype
            elif isinstance(a, torch.device | str | int):
                device = a
            elif a is not None:
                raise InputTypeError(f"CSRGraph.to() takes a device, a dtype or a tensor, "
                                     f"got {a!r}")
        device = torch.device(device) if device is not None else self.device
        dtype = dtype if dtype is not None else self.values.dtype
        if dtype not in (torch.float32, torch.float64):
            raise InputTypeError(f"CSRGraph values must be float32 or float64, got {dtype}")
        values = self.values.to(device=device, dtype=dtype, non_blocking=non_blocking)
        if device == self.device:
            return CSRGraph._from_structure(self._s, values, self.symmetric)
        s = _Structure(self.indptr.to(device, non_blocking=non_blocking),
                       self.indices.to(device, non_blocking=non_blocking), self.shape)
        return CSRGraph._from_structure(s, values, self.symmetric)

    def float(self) -> CSRGraph:
        return self.to(torch.float32)

    def double(self) -> CSRGraph:
        return self.to(torch.float64)

    def cpu(self) -> CSRGraph:
        return self.to("cpu")

    def cuda(self, device: int | str | torch.device | None = None) -> CSRGraph:
        return self.to(torch.device("cuda") if device is None else torch.device("cuda", device)
                       if isinstance(device, int) else device)

    def detach(self) -> CSRGraph:
        return CSRGraph._from_structure(self._s, self.values.detach(), self.symmetric)

    def to_edge_index(self) -> torch.Tensor:
        """PyG-style ``edge_index`` int64 [2, nnz] (rows, cols); weights are ``values``."""
        return torch.stack([self.row_indices(), self.indices])

    def to_torch_coo(self) -> torch.Tensor:
        return torch.sparse_coo_tensor(self.to_edge_index(), self.values, self.shape,
                                       is_coalesced=True, check_invariants=False)

    def to_torch_csr(self) -> torch.Tensor:
        return torch.sparse_csr_tensor(self.indptr, self.indices, self.values, self.shape,
                                       check_invariants=False)

    def to_scipy(self) -> Any:
        """A ``scipy.sparse.csr_matrix`` (values detached, on the CPU)."""
        import scipy.sparse as sp

        return sp.csr_matrix((self.values.detach().cpu().numpy(), self.indices.cpu().numpy(),
                              self.indptr.cpu().numpy()), shape=self.shape)

    def to_dense(self) -> torch.Tensor:
        dense = torch.zeros(self.shape, dtype=self.values.dtype, device=self.device)
        return dense.index_put((self.row_indices(), self.indices), self.values, accumulate=True)

    def __repr__(self) -> str:
        return (f"CSRGraph(shape={self.shape}, nnz={self.nnz}, dtype={self.dtype}, "
                f"device={self.device}, requires_grad={self.values.requires_grad})")


def graph_on(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor,
             shape: tuple[int, int], cache: CSRGraph | None = None) -> CSRGraph:
    """A graph over these arrays, known valid (a module's buffers holding a graph this library
    built). ``cache``, a graph returned by an earlier call, is reused (re-weighted when
    ``values`` is another tensor) while it is over the same ``indptr`` and ``indices`` tensors,
    so its cached transpose survives from call to call."""
    if cache is not None and cache.indptr is indptr and cache.indices is indices \
            and cache.shape == shape:
        return cache if cache.values is values else cache.with_values(values)
    return CSRGraph(indptr, indices, values, shape, validate=False)


# --- torch.compile / torch.export -------------------------------------------------------------
# A CSRGraph is a pytree of its tensors (and those of its transpose once built), so that it
# passes into and out of compiled and exported functions; shape and symmetry are static.

def _flatten(g: CSRGraph) -> tuple[list[torch.Tensor], tuple]:
    s = g._s
    leaves = [s.indptr, s.indices, g.values]
    if s._transpose is not None:
        t, perm = s._transpose
        leaves += [t.indptr, t.indices, perm]
    return leaves, (s.shape, g.symmetric, s._transpose is not None)


def _unflatten(leaves: list[torch.Tensor], context: tuple) -> CSRGraph:
    shape, symmetric, has_transpose = context
    s = _Structure(leaves[0], leaves[1], shape)
    if has_transpose:
        t_indptr, t_indices, perm = leaves[3:6]
        t = _Structure(t_indptr, t_indices, (shape[1], shape[0]))
        s._transpose = (t, perm)
    return CSRGraph._from_structure(s, leaves[2], symmetric)


def _flatten_with_keys(g: CSRGraph):
    leaves, context = _flatten(g)
    names = ("indptr", "indices", "values", "t_indptr", "t_indices", "t_perm")
    keyed = zip(names[:len(leaves)], leaves, strict=True)
    return [(torch.utils._pytree.GetAttrKey(n), leaf) for n, leaf in keyed], context


torch.utils._pytree.register_pytree_node(
    CSRGraph, _flatten, _unflatten, serialized_type_name="micro_fast.graph.CSRGraph",
    flatten_with_keys_fn=_flatten_with_keys)

# the dunders' implementations import CSRGraph from this module, so they come after it
from micro_fast import graph_arith as _arith  # noqa: E402
from micro_fast import interop as _interop  # noqa: E402
