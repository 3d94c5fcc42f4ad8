"""LATTICE's training step and evaluation scores as MMRec's port computes them, re-expressed in
plain torch, for the parity tests (tests/test_lattice.py): dense N x N similarity matrices,
``torch.topk`` scattered into a dense kNN matrix, the dense normalized Laplacian of the weighted
sum of the learned graphs, ``torch.mm`` with the dense item graph, and ``torch.sparse.mm`` over
the D^-1 (A + I) user-item graph. Nothing in the library uses it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812


def dense_knn(x: torch.Tensor, k: int) -> torch.Tensor:
    """The N x N matrix keeping each row's k largest cosine similarities (self included)."""
    xn = x / x.norm(dim=1, keepdim=True)
    sim = xn @ xn.T
    values, idx = torch.topk(sim, k, dim=1)
    return torch.zeros_like(sim).scatter(1, idx, values)


def laplacian(adj: torch.Tensor) -> torch.Tensor:
    d = adj.sum(dim=1).pow(-0.5)
    d = torch.where(torch.isinf(d), torch.zeros_like(d), d)
    return torch.diagflat(d) @ adj @ torch.diagflat(d)


class ReferenceLATTICE:
    """MMRec's LATTICE with the weights of a ``micro_fast.models.LATTICE`` (copied as leaf
    tensors), over the user-item graph ``ui`` (a torch sparse tensor)."""

    def __init__(self, model, ui: torch.Tensor) -> None:
        def leaf(t):
            return t.detach().clone().requires_grad_()

        self.model_args = (model.n_users, model.k, model.lambda_coeff, model.item_layers,
                           model.ui_layers, model.reg_weight, model.batch_size)
        self.user_emb, self.item_emb = leaf(model.user_embedding), leaf(model.item_embedding)
        self.feats = {m: leaf(x) for m, x in model.features.items()}
        self.trs = {m: (leaf(p.weight), leaf(p.bias)) for m, p in model.projections.items()}
        self.modal_weight = leaf(model.modal_weight)
        k = model.k
        self.original = [laplacian(dense_knn(x.detach(), k)) for x in self.feats.values()]
        self.ui = ui
        self.item_adj = None

    def parameters(self) -> list[torch.Tensor]:
        return [self.user_emb, self.item_emb, *self.feats.values(),
                *(t for pair in self.trs.values() for t in pair), self.modal_weight]

    def forward(self, build: bool) -> tuple[torch.Tensor, torch.Tensor]:
        n_users, k, lam, item_layers, ui_layers, _, _ = self.model_args
        if build:
            feats = [self.feats[m] @ w.T + b for m, (w, b) in self.trs.items()]
            learned = [dense_knn(z, k) for z in feats]
            if len(learned) == 2:
                w = torch.softmax(self.modal_weight, dim=0)
                learned_adj = w[0] * learned[0] + w[1] * learned[1]
                original_adj = w[0] * self.original[0] + w[1] * self.original[1]
            else:
                learned_adj, original_adj = learned[0], self.original[0]
            self.item_adj = (1 - lam) * laplacian(learned_adj) + lam * original_adj
        else:
            self.item_adj = self.item_adj.detach()
        h = self.item_emb
        for _ in range(item_layers):
            h = self.item_adj @ h
        ego = torch.cat([self.user_emb, self.item_emb])
        layers = [ego]
        for _ in range(ui_layers):
            ego = torch.sparse.mm(self.ui, ego)
            layers.append(ego)
        out = torch.stack(layers, dim=1).mean(dim=1)
        return out[:n_users], out[n_users:] + F.normalize(h, p=2, dim=1)

    def loss(self, users, pos, neg, build: bool) -> torch.Tensor:
        reg_weight, batch_size = self.model_args[5], self.model_args[6]
        ua, ia = self.forward(build)
        u, p, n = ua[users], ia[pos], ia[neg]
        mf = -F.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()
        reg = 0.5 * (u.square().sum() + p.square().sum() + n.square().sum()) / batch_size
        return mf + reg_weight * reg

    def scores(self) -> torch.Tensor:
        with torch.no_grad():
            u, i = self.forward(True)
            return u @ i.T
