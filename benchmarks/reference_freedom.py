"""FREEDOM's training step and evaluation scores as MMRec computes them, re-expressed in plain
torch, for the speed comparison and the parity tests (tests/test_freedom.py). It follows that
computation: a dense cosine matrix and ``torch.topk`` per modality, degree normalizations with
``torch.sparse.sum`` and MMRec's 1e-7, the mixture as a sum of sparse COO tensors, the
per-epoch pruning as ``torch.multinomial`` without replacement (or given kept interaction ids),
and ``torch.sparse.mm`` on COO tensors. Nothing in the library uses it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

EPS = 1e-7


def _degree_normalized(indices: torch.Tensor, shape: tuple[int, int],
                       dtype: torch.dtype) -> torch.Tensor:
    """Values a_ij / sqrt((r_i + eps)(c_j + eps)) of the unit-weight matrix at ``indices``."""
    ones = torch.ones(indices.shape[1], dtype=dtype)
    adj = torch.sparse_coo_tensor(indices, ones, shape)
    rows = torch.sparse.sum(adj, 1).to_dense() + EPS
    cols = torch.sparse.sum(adj, 0).to_dense() + EPS
    return rows.pow(-0.5)[indices[0]] * cols.pow(-0.5)[indices[1]]


def knn_adjacency(features: torch.Tensor, k: int) -> torch.Tensor:
    """The unit-weight cosine kNN graph of ``features``, normalized with its row sums."""
    xn = features / features.norm(dim=1, keepdim=True)
    sim = xn @ xn.T
    _, idx = torch.topk(sim, k, dim=1)
    n = features.shape[0]
    indices = torch.stack([torch.arange(n).repeat_interleave(k), idx.reshape(-1)])
    ones = torch.ones(indices.shape[1], dtype=features.dtype)
    rows = torch.sparse.sum(torch.sparse_coo_tensor(indices, ones, (n, n)), 1).to_dense() + EPS
    dinv = rows.pow(-0.5)
    return torch.sparse_coo_tensor(indices, dinv[indices[0]] * dinv[indices[1]], (n, n))


class ReferenceFREEDOM:
    """MMRec's FREEDOM with the weights of a ``micro_fast.models.FREEDOM`` (copied, as leaf
    tensors), on the training interactions ``users``, ``items``."""

    def __init__(self, model, users: torch.Tensor, items: torch.Tensor, k: int = 10,
                 image_weight: float = 0.1) -> None:
        dtype = model.user_embedding.dtype
        self.n_users, self.n_items = model.n_users, model.n_items
        self.ui_layers, self.item_layers = model.ui_layers, model.item_layers
        self.reg_weight, self.dropout = model.reg_weight, model.dropout

        def leaf(t):
            return t.detach().clone().requires_grad_()

        self.user_emb, self.item_emb = leaf(model.user_embedding), leaf(model.item_embedding)
        self.feats = {m: leaf(x) for m, x in model.features.items()}
        self.trs = {m: (leaf(p.weight), leaf(p.bias)) for m, p in model.projections.items()}
        graphs = {m: knn_adjacency(x.detach(), k) for m, x in self.feats.items()}
        if len(graphs) == 1:
            self.mm_adj = next(iter(graphs.values()))
        else:
            other = next(m for m in graphs if m != "image")
            self.mm_adj = (image_weight * graphs["image"]
                           + (1.0 - image_weight) * graphs[other]).coalesce()
        self.edges = torch.stack([users, items])
        self.edge_values = _degree_normalized(self.edges, (self.n_users, self.n_items), dtype)
        self.norm_adj = self._bipartite(self.edges, dtype)

    def parameters(self) -> list[torch.Tensor]:
        return [self.user_emb, self.item_emb, *self.feats.values(),
                *(t for pair in self.trs.values() for t in pair)]

    def _bipartite(self, edges: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        values = _degree_normalized(edges, (self.n_users, self.n_items), dtype)
        shifted = torch.stack([edges[0], edges[1] + self.n_users])
        indices = torch.cat([shifted, shifted.flip(0)], dim=1)
        n = self.n_users + self.n_items
        return torch.sparse_coo_tensor(indices, torch.cat([values, values]), (n, n))

    def masked_adj(self, kept: torch.Tensor | None = None) -> torch.Tensor:
        """The epoch's pruned graph: the interactions ``kept``, or a multinomial draw."""
        if kept is None:
            m = int(self.edge_values.numel() * (1.0 - self.dropout))
            kept = torch.multinomial(self.edge_values, m)
        return self._bipartite(self.edges[:, kept], self.edge_values.dtype)

    def forward(self, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.item_emb
        for _ in range(self.item_layers):
            h = torch.sparse.mm(self.mm_adj, h)
        ego = torch.cat([self.user_emb, self.item_emb])
        layers = [ego]
        for _ in range(self.ui_layers):
            ego = torch.sparse.mm(adj, ego)
            layers.append(ego)
        out = torch.stack(layers, dim=1).mean(dim=1)
        return out[:self.n_users], out[self.n_users:] + h

    @staticmethod
    def bpr(u, pos, neg) -> torch.Tensor:
        return -F.logsigmoid((u * pos).sum(1) - (u * neg).sum(1)).mean()

    def loss(self, adj: torch.Tensor, users, pos, neg) -> torch.Tensor:
        ua, ia = self.forward(adj)
        loss = self.bpr(ua[users], ia[pos], ia[neg])
        modal = 0.0
        for m, (w, b) in self.trs.items():
            z = self.feats[m] @ w.T + b
            modal = modal + self.bpr(ua[users], z[pos], z[neg])
        return loss + self.reg_weight * modal

    def scores(self) -> torch.Tensor:
        """[U, I] full-ranking scores over the full graph."""
        with torch.no_grad():
            u, i = self.forward(self.norm_adj)
            return u @ i.T
