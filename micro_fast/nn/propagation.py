"""Drop-in modules for the graph-propagation loops of MICRO / LATTICE / LightGCN.

Their graph arguments may be a ``CSRGraph``, a torch sparse COO/CSR tensor or a scipy.sparse
matrix (``micro_fast.interop.as_graph``: converted once per object, cached).
"""

from __future__ import annotations

import torch
from torch import nn

from micro_fast.errors import InputError
from micro_fast.interop import GraphLike, as_graph
from micro_fast.ops.propagate import COMBINES, propagate


class GraphPropagation(nn.Module):
    r"""``layers`` rounds of ``graph @ h`` combined as ``"last"`` or ``"mean"``.

    With :math:`H_0 = X` and :math:`H_{l+1} = A H_l`:

    .. math:: \mathrm{last}: H_L, \qquad \mathrm{mean}: \frac{1}{L+1} \sum_{l=0}^{L} H_l

    Replaces the published ``for i in range(layers): h = torch.sparse.mm(adj, h)`` loops
    (``combine="last"``, MICRO's item graph convolution) and LightGCN's layer average
    (``combine="mean"``); differentiable w.r.t. ``x`` and the graph's values
    (``ops.propagate``).
    """

    def __init__(self, layers: int = 1, combine: str = "last", backend: str = "auto") -> None:
        super().__init__()
        if combine not in COMBINES:
            raise InputError(f"combine must be one of {COMBINES}, got {combine!r}")
        self.layers, self.combine, self.backend = layers, combine, backend

    def forward(self, graph: GraphLike, x: torch.Tensor) -> torch.Tensor:
        """graph: (N, N) ``CSRGraph``, torch sparse COO/CSR tensor or scipy.sparse matrix
        (converted once, cached: ``micro_fast.interop``); x: [N, d] -> [N, d]."""
        return propagate(graph, x, self.layers, combine=self.combine, backend=self.backend)

    def extra_repr(self) -> str:
        return f"layers={self.layers}, combine={self.combine!r}"


class LightGCN(nn.Module):
    r"""User and item ID embeddings propagated over the user-item graph, layers averaged.

    For the (U+I) x (U+I) graph :math:`A` and :math:`E = [E_{users}; E_{items}]`:

    .. math:: [e_u; e_i] = \frac{1}{L+1} \sum_{l=0}^{L} A^l E

    as the published MICRO / LATTICE / LightGCN code computes it with ``torch.sparse.mm``.
    Build ``graph`` with ``micro_fast.bipartite_graph``: ``"sym"``, :math:`A = D^{-1/2} R_b
    D^{-1/2}` for LightGCN, or ``"rw"`` with self loops, :math:`A = D^{-1} (R_b + I)` for the
    published MICRO code (:math:`R_b = [[0, R], [R^T, 0]]`).
    """

    def __init__(self, n_users: int, n_items: int, dim: int = 64, layers: int = 2,
                 backend: str = "auto") -> None:
        super().__init__()
        self.n_users, self.n_items, self.layers, self.backend = n_users, n_items, layers, backend
        self.user_embedding = nn.Embedding(n_users, dim)
        self.item_embedding = nn.Embedding(n_items, dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)

    def forward(self, graph: GraphLike) -> tuple[torch.Tensor, torch.Tensor]:
        """graph: (U+I, U+I) ``CSRGraph`` (or torch sparse tensor / scipy.sparse matrix,
        converted once, cached) -> (users [U, dim], items [I, dim])."""
        graph = as_graph(graph, "graph")
        n = self.n_users + self.n_items
        if graph.shape != (n, n):
            raise InputError(f"graph must have shape ({n}, {n}) (users + items), "
                             f"got {graph.shape}")
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        out = propagate(graph, ego, self.layers, combine="mean", backend=self.backend)
        users, items = torch.split(out, [self.n_users, self.n_items])
        return users, items
