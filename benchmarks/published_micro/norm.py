"""Graph builders as the published ``utility/norm.py`` computes them: a dense cosine matrix,
``torch.topk``, the COO index list from a Python loop, degree normalization by scatter-add."""

from __future__ import annotations

import torch


def build_sim(context: torch.Tensor) -> torch.Tensor:
    """[N, N] cosine similarities: the rows divided by their norms, times their transpose."""
    unit = context.div(torch.norm(context, p=2, dim=-1, keepdim=True))
    return torch.mm(unit, unit.transpose(1, 0))


def build_knn_normalized_graph(adj: torch.Tensor, topk: int, is_sparse: bool, norm_type: str):
    """Each row's ``topk`` largest entries of ``adj``, normalized: a COO tensor (``is_sparse``)
    or a dense matrix."""
    knn_val, knn_ind = torch.topk(adj, topk, dim=-1)
    if is_sparse:
        pairs = [[r, int(c)] for r in range(len(knn_ind)) for c in knn_ind[r]]
        index = torch.LongTensor([[p[0] for p in pairs], [p[1] for p in pairs]]).to(adj.device)
        index, weight = get_sparse_laplacian(index, knn_val.flatten(), num_nodes=adj.shape[0],
                                             normalization=norm_type)
        return torch.sparse_coo_tensor(index, weight, adj.shape, check_invariants=False)
    dense = torch.zeros_like(adj).scatter_(-1, knn_ind, knn_val)
    return get_dense_laplacian(dense, normalization=norm_type)


def get_sparse_laplacian(edge_index, edge_weight, num_nodes, normalization="none"):
    """Degree normalization of an edge list (row sums by scatter-add; 0 for a zero degree)."""
    row, col = edge_index[0], edge_index[1]
    deg = torch.zeros(num_nodes, dtype=edge_weight.dtype, device=edge_weight.device)
    deg = deg.index_add(0, row, edge_weight)
    if normalization == "sym":
        inv = deg.pow_(-0.5)
        inv.masked_fill_(inv == float("inf"), 0)
        edge_weight = inv[row] * edge_weight * inv[col]
    elif normalization == "rw":
        inv = 1.0 / deg
        inv.masked_fill_(inv == float("inf"), 0)
        edge_weight = inv[row] * edge_weight
    return edge_index, edge_weight


def get_dense_laplacian(adj: torch.Tensor, normalization: str = "none") -> torch.Tensor:
    if normalization == "sym":
        inv = torch.pow(torch.sum(adj, -1), -0.5)
        inv[torch.isinf(inv)] = 0.0
        return torch.mm(torch.mm(torch.diagflat(inv), adj), torch.diagflat(inv))
    if normalization == "rw":
        inv = torch.pow(torch.sum(adj, -1), -1)
        inv[torch.isinf(inv)] = 0.0
        return torch.mm(torch.diagflat(inv), adj)
    return adj
