"""The published MICRO training step re-implemented in plain torch, for the speed comparison
(bench_train.py) and the parity test (tests/test_models.py). It follows the published code's
computation (MICRO.md): dense cosine matrices, ``torch.topk``, a Python loop building the COO
index list, scatter-add degrees, ``torch.sparse.mm`` on COO tensors (item graphs and the
user-item graph), and the contrastive loss over all items in 4096-row chunks on every batch.
Nothing in the library uses it.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F  # noqa: N812
from peers import official_knn_graph, published_contrastive
from torch import nn


def published_norm_adj(users: np.ndarray, items: np.ndarray, n_users: int,
                       n_items: int, dtype: type = np.float32) -> torch.Tensor:
    """D^-1 (A + I) of the user-item graph, built with scipy as published (a repeated pair
    counts once), as a COO tensor of ``dtype`` (float32 as published; float64 for parity
    tests in float64)."""
    r = sp.dok_matrix((n_users, n_items), dtype=np.float32)
    for u, i in zip(users.tolist(), items.tolist(), strict=True):
        r[u, i] = 1.0
    n = n_users + n_items
    adj = sp.dok_matrix((n, n), dtype=np.float32).tolil()
    r = r.tolil()
    adj[:n_users, n_users:] = r
    adj[n_users:, :n_users] = r.T
    adj = adj.todok() + sp.eye(n)
    rowsum = np.array(adj.sum(1))
    d_inv = np.power(rowsum, -1).flatten()
    d_inv[np.isinf(d_inv)] = 0.0
    norm = sp.diags(d_inv).dot(adj).tocoo().astype(dtype)
    idx = torch.from_numpy(np.vstack((norm.row, norm.col)).astype(np.int64))
    return torch.sparse_coo_tensor(idx, torch.from_numpy(norm.data), (n, n))


class ReferenceMICRO(nn.Module):
    """Published MICRO forward (any number of modalities, in the order given)."""

    def __init__(self, n_users: int, n_items: int, features: list[np.ndarray | torch.Tensor],
                 dim: int = 64, feat_dim: int = 64, topk: int = 10, lambda_coeff: float = 0.9,
                 n_layers: int = 1, ui_layers: int = 2,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.n_users, self.n_items = n_users, n_items
        self.topk, self.lambda_coeff = topk, lambda_coeff
        self.n_layers, self.ui_layers = n_layers, ui_layers
        self.user_embedding = nn.Embedding(n_users, dim)
        self.item_id_embedding = nn.Embedding(n_items, dim)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)
        self.feat_embeddings = nn.ModuleList(
            nn.Embedding.from_pretrained(torch.as_tensor(f).to(dtype), freeze=False)
            for f in features)
        self.original_adj = [official_knn_graph(e.weight.detach(), topk)
                             for e in self.feat_embeddings]
        self.trs = nn.ModuleList(nn.Linear(f.shape[1], feat_dim) for f in features)
        self.query = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1, bias=False))
        self.to(dtype)
        self.item_adj: list[torch.Tensor] = []

    def forward(self, adj: torch.Tensor, build_item_graph: bool = False):
        # the published forward projects the raw features on every batch
        feats = [trs(e.weight) for trs, e in zip(self.trs, self.feat_embeddings, strict=True)]
        if build_item_graph:
            self.item_adj = [
                (1 - self.lambda_coeff) * official_knn_graph(f, self.topk)
                + self.lambda_coeff * orig.to(f.dtype)
                for f, orig in zip(feats, self.original_adj, strict=True)]
        else:
            self.item_adj = [a.detach() for a in self.item_adj]
        views = []
        for a in self.item_adj:
            h = self.item_id_embedding.weight
            for _ in range(self.n_layers):
                h = torch.sparse.mm(a, h)
            views.append(h)
        att = torch.cat([self.query(v) for v in views], dim=-1)
        weight = torch.softmax(att, dim=-1)
        h = sum(weight[:, m].unsqueeze(1) * v for m, v in enumerate(views))
        ego = torch.cat((self.user_embedding.weight, self.item_id_embedding.weight), dim=0)
        all_embeddings = [ego]
        for _ in range(self.ui_layers):
            ego = torch.sparse.mm(adj, ego)
            all_embeddings.append(ego)
        all_embeddings = torch.stack(all_embeddings, dim=1).mean(dim=1)
        u_g, i_g = torch.split(all_embeddings, [self.n_users, self.n_items], dim=0)
        i_g = i_g + F.normalize(h, p=2, dim=1)
        return u_g, i_g, views, h


def reference_loss(model: ReferenceMICRO, adj: torch.Tensor, users, pos, neg, *,
                   batch_size: int, decay: float = 1e-5, loss_ratio: float = 0.03,
                   build_item_graph: bool = False) -> torch.Tensor:
    """The published batch loss: BPR + decay x regularizer + loss_ratio x contrastive."""
    u_all, i_all, views, h = model(adj, build_item_graph=build_item_graph)
    u, p, n = u_all[users], i_all[pos], i_all[neg]
    pos_scores = torch.sum(torch.mul(u, p), dim=1)
    neg_scores = torch.sum(torch.mul(u, n), dim=1)
    regularizer = 1.0 / 2 * (u ** 2).sum() + 1.0 / 2 * (p ** 2).sum() + 1.0 / 2 * (n ** 2).sum()
    regularizer = regularizer / batch_size
    mf_loss = -torch.mean(F.logsigmoid(pos_scores - neg_scores))
    emb_loss = decay * regularizer
    contrastive = 0
    for v in views:
        contrastive = contrastive + published_contrastive(v, h)
    return mf_loss + emb_loss + loss_ratio * contrastive


def copy_weights(ours, ref: ReferenceMICRO) -> None:
    """Loads the weights of a ``micro_fast.models.MICRO`` into the reference (same modalities,
    in the same order)."""
    with torch.no_grad():
        ref.user_embedding.weight.copy_(ours.user_embedding.weight)
        ref.item_id_embedding.weight.copy_(ours.item_id_embedding.weight)
        for i, name in enumerate(ours.modalities):
            learner = ours.learners[name]
            ref.feat_embeddings[i].weight.copy_(learner.features)
            ref.trs[i].weight.copy_(learner.projection.weight)
            ref.trs[i].bias.copy_(learner.projection.bias)
        ref.query.load_state_dict(ours.fusion.query.state_dict())


def reference_gradients(ours, ref: ReferenceMICRO) -> dict[str, tuple]:
    """Pairs (ours, reference) of gradients, by our parameter names."""
    pairs = {
        "backbone.user_embedding.weight": ref.user_embedding.weight.grad,
        "backbone.item_embedding.weight": ref.item_id_embedding.weight.grad,
        "fusion.query.0.weight": ref.query[0].weight.grad,
        "fusion.query.0.bias": ref.query[0].bias.grad,
        "fusion.query.2.weight": ref.query[2].weight.grad,
    }
    for i, name in enumerate(ours.modalities):
        pairs[f"learners.{name}.features"] = ref.feat_embeddings[i].weight.grad
        pairs[f"learners.{name}.projection.weight"] = ref.trs[i].weight.grad
        pairs[f"learners.{name}.projection.bias"] = ref.trs[i].bias.grad
    params = dict(ours.named_parameters())
    return {k: (params[k].grad, v) for k, v in pairs.items()}
