"""The paths users run today, re-implemented for comparison (not used by the library)."""

from __future__ import annotations

import numpy as np
import torch


def _published_normalization(i: torch.Tensor, v: torch.Tensor, n: int,
                             norm_type: str) -> torch.Tensor:
    """The published degree normalization of the kNN list (row degrees by scatter-add)."""
    deg = torch.zeros(n, dtype=v.dtype, device=v.device).index_add(0, i[0], v)
    if norm_type == "sym":
        dinv = deg.pow(-0.5)
        dinv.masked_fill_(dinv == float("inf"), 0)
        v = dinv[i[0]] * v * dinv[i[1]]
    elif norm_type == "rw":
        dinv = 1.0 / deg
        dinv.masked_fill_(dinv == float("inf"), 0)
        v = dinv[i[0]] * v
    return torch.sparse_coo_tensor(i, v, (n, n))


def official_knn_graph(features: torch.Tensor, k: int, norm_type: str = "sym") -> torch.Tensor:
    """MICRO/LATTICE ``build_sim`` + ``build_knn_normalized_graph(..., is_sparse=True,
    norm_type)`` as published: dense cosine matrix, ``torch.topk``, the COO index list built
    in a Python loop, scatter-add degrees over rows, sparse COO result."""
    context_norm = features.div(torch.norm(features, p=2, dim=-1, keepdim=True))
    sim = torch.mm(context_norm, context_norm.transpose(1, 0))
    knn_val, knn_ind = torch.topk(sim, k, dim=-1)
    tuple_list = [[row, int(col)] for row in range(len(knn_ind)) for col in knn_ind[row]]
    row = [i[0] for i in tuple_list]
    col = [i[1] for i in tuple_list]
    i = torch.LongTensor([row, col]).to(features.device)
    v = knn_val.flatten()
    n = features.shape[0]
    return _published_normalization(i, v, n, norm_type)


def official_knn_graph_vectorized(features: torch.Tensor, k: int,
                                  norm_type: str = "sym") -> torch.Tensor:
    """``official_knn_graph`` with its Python loop replaced by tensor indexing: the published
    path's own kernels (dense cosine matrix, ``torch.topk``, degrees, normalization), what is
    left of it once nobody waits for the loop."""
    context_norm = features.div(torch.norm(features, p=2, dim=-1, keepdim=True))
    sim = torch.mm(context_norm, context_norm.transpose(1, 0))
    knn_val, knn_ind = torch.topk(sim, k, dim=-1)
    n = features.shape[0]
    rows = torch.arange(n, device=features.device).repeat_interleave(k)
    i = torch.stack([rows, knn_ind.reshape(-1)])
    v = knn_val.flatten()
    return _published_normalization(i, v, n, norm_type)


def index_add_spmm(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor,
                   x: torch.Tensor, n_rows: int) -> torch.Tensor:
    """A sparse product in plain torch, as a PyG-style message pass writes it: gather the
    source rows, scale them by the edge values, ``index_add_`` into the targets."""
    out = torch.zeros(n_rows, x.shape[1], dtype=x.dtype, device=x.device)
    return out.index_add_(0, rows, x.index_select(0, cols) * values.unsqueeze(1))


def blocked_torch_topk(features: torch.Tensor, k: int, block: int = 1024):
    """What a careful user writes with plain torch: row blocks of mm + torch.topk."""
    x = torch.nn.functional.normalize(features, dim=1)
    vals, idx = [], []
    for r0 in range(0, x.shape[0], block):
        v, i = torch.topk(x[r0:r0 + block] @ x.T, k, dim=1)
        vals.append(v)
        idx.append(i)
    return torch.cat(vals), torch.cat(idx)


def faiss_flat_ip(features: np.ndarray, k: int):
    """FAISS exact inner-product search of the normalized features against themselves."""
    import faiss

    x = np.ascontiguousarray(features, dtype=np.float32).copy()
    faiss.normalize_L2(x)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index.search(x, k)


def sklearn_cosine_knn(features: np.ndarray, k: int):
    """scikit-learn: the symmetric cosine product X X^T (``cosine_similarity`` with Y=None)
    followed by a per-row partial sort."""
    from sklearn.metrics.pairwise import cosine_similarity

    sim = cosine_similarity(features)
    part = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(sim, part, 1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(vals, order, 1), np.take_along_axis(part, order, 1)


def clothing_like_interactions(n_users: int = 39387, n_items: int = 23033, nnz: int = 278677,
                               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique (user, item) pairs with long-tailed user activity and item popularity (Zipf-like),
    the shape of the Amazon 5-core data."""
    gen = np.random.default_rng(seed)
    user_w = 1.0 / np.arange(1, n_users + 1) ** 0.6
    item_w = 1.0 / np.arange(1, n_items + 1) ** 0.8
    pairs = np.empty(0, dtype=np.int64)
    while pairs.size < nnz:
        u = gen.choice(n_users, size=2 * nnz, p=user_w / user_w.sum())
        i = gen.choice(n_items, size=2 * nnz, p=item_w / item_w.sum())
        pairs = np.unique(np.concatenate([pairs, u * n_items + i]))
    pairs = gen.permutation(pairs)[:nnz]
    return torch.from_numpy(pairs // n_items), torch.from_numpy(pairs % n_items)


def memory_copy_gbps(mbytes: int = 256, repeats: int = 5) -> float:
    """Measured copy bandwidth (bytes read + written per second), the ceiling for SpMM."""
    import time

    src = torch.ones(mbytes * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() * 4 / best / 1e9


def published_contrastive(z1: torch.Tensor, z2: torch.Tensor, tau: float = 0.5,
                          batch_size: int = 4096) -> torch.Tensor:
    """MICRO's contrastive loss as published: GRACE's batched semi-loss in 4096-row chunks,
    with the [chunk, N] exp-matrices kept for autograd, averaged over the items."""
    f = lambda x: torch.exp(x / tau)  # noqa: E731
    n1, n2 = torch.nn.functional.normalize(z1), torch.nn.functional.normalize(z2)
    n = z1.size(0)
    losses = []
    for i in range((n - 1) // batch_size + 1):
        sl = slice(i * batch_size, (i + 1) * batch_size)
        refl_sim = f(n1[sl] @ n1.t())
        between_sim = f(n1[sl] @ n2.t())
        losses.append(-torch.log(between_sim[:, sl].diag()
                                 / (refl_sim.sum(1) + between_sim.sum(1) - refl_sim[:, sl].diag())))
    return torch.cat(losses).mean()


def blocked_torch_search(queries: torch.Tensor, keys: torch.Tensor, k: int, block: int = 1024):
    """Row blocks of ``queries @ keys.T`` + ``torch.topk``: the plain-torch search of queries
    against other keys (inputs used as given, no normalization)."""
    vals, idx = [], []
    for r0 in range(0, queries.shape[0], block):
        v, i = torch.topk(queries[r0:r0 + block] @ keys.T, k, dim=1)
        vals.append(v)
        idx.append(i)
    return torch.cat(vals), torch.cat(idx)


def faiss_flat_ip_search(queries: np.ndarray, keys: np.ndarray, k: int):
    """FAISS exact inner-product search of ``queries`` against other ``keys`` (used as given):
    an ``IndexFlatIP`` over the keys, then every query against every key."""
    import faiss

    index = faiss.IndexFlatIP(keys.shape[1])
    index.add(np.ascontiguousarray(keys, dtype=np.float32))
    return index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
