"""``GraphBuffer``: a graph held by an ``nn.Module``, so that it moves and saves with the model.

A ``CSRGraph`` is not a tensor, so a module attribute holding one is left behind by
``model.to(device)``, ``model.double()``, ``model.cuda()`` and ``state_dict``. ``GraphBuffer``
registers the graph's arrays as buffers instead:

* ``indptr`` int64 [n_rows + 1], ``indices`` int64 [nnz], ``values`` float [nnz];
* the shape and the symmetry flag as the module's extra state (saved in ``state_dict``).

``model.to(torch.float64)`` converts ``values`` only (module conversions touch floating-point
buffers only); a device move carries all three. ``buf.graph`` is the ``CSRGraph`` over the
current buffers: it reuses the structure (and so its cached transpose) while ``indptr`` and
``indices`` are the same tensors, re-weighting it when only ``values`` was replaced, so calling
it every step builds the transpose once per device. ``load_state_dict`` accepts a graph of any
nnz and shape (the buffers take the loaded sizes), so a fresh ``GraphBuffer()`` restores a saved
one. The values are buffers, not parameters: a constant graph. For trained weights keep a
parameter ``w`` [nnz] and use ``buf.graph.with_values(w)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from micro_fast.graph import CSRGraph, graph_on
from micro_fast.interop import GraphLike, as_graph
from micro_fast.ops.spmm import spmm

_ARRAYS = ("indptr", "indices", "values")


class GraphBuffer(nn.Module):
    """A graph as module buffers; ``buf(x)`` is ``spmm(buf.graph, x)``.

    Args:
        graph: a ``CSRGraph``, torch sparse COO/CSR tensor or scipy.sparse matrix
            (``micro_fast.interop.as_graph``; values detached), or ``None`` for an empty 0 x 0
            graph to ``load_state_dict`` into.
        backend: the spmm backend of ``forward``.
    """

    def __init__(self, graph: GraphLike | None = None, *, backend: str = "auto") -> None:
        super().__init__()
        if graph is None:
            graph = CSRGraph(torch.zeros(1, dtype=torch.int64),
                             torch.zeros(0, dtype=torch.int64), shape=(0, 0))
        graph = as_graph(graph, "graph")
        self.register_buffer("indptr", graph.indptr)
        self.register_buffer("indices", graph.indices)
        self.register_buffer("values", graph.values.detach())
        self.shape: tuple[int, int] = graph.shape
        self.symmetric: bool | None = graph.symmetric
        self.backend = backend
        # the graph over the buffers, kept so that its structure (with the transpose every
        # backward w.r.t. x needs) is reused while the buffers stay the same tensors
        self._graph: CSRGraph | None = graph.detach()

    @property
    def graph(self) -> CSRGraph:
        """The ``CSRGraph`` over the current buffers (structure reused, see the module
        docstring)."""
        g = graph_on(self.indptr, self.indices, self.values, self.shape, cache=self._graph)
        if g.symmetric != self.symmetric:
            g.symmetric = self.symmetric  # g is ours: graph_on built it or it is the cache
        if not torch.compiler.is_compiling():  # compiled code builds it in its graph, uncached
            self._graph = g
        return g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [n_cols, d] of the values' dtype and device -> ``graph @ x`` [n_rows, d]."""
        return spmm(self.graph, x, backend=self.backend)

    def get_extra_state(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "symmetric": self.symmetric}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.shape = (int(state["shape"][0]), int(state["shape"][1]))
        self.symmetric = state["symmetric"]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # the saved graph may have another nnz or size: the buffers take its sizes (keeping
        # their dtype and device), then the default loading copies the values in
        for name in _ARRAYS:
            saved = state_dict.get(prefix + name)
            own = self._buffers[name]
            if isinstance(saved, torch.Tensor) and saved.shape != own.shape:
                self._buffers[name] = own.new_empty(saved.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # loading copies into the buffers in place: the same tensors now hold another
        # structure, so the cached graph (and its transpose) must not be reused
        self._graph = None

    def extra_repr(self) -> str:
        return (f"shape={self.shape}, nnz={self.indices.numel()}, dtype={self.values.dtype}, "
                f"device={self.values.device}")
