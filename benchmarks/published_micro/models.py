"""The published MICRO model's computation (``Models.py``, LightGCN backbone), configured by the
module-level ``args`` as the published module is by its command line."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from .norm import build_knn_normalized_graph, build_sim

#: the published defaults that the model reads
args = SimpleNamespace(topk=10, sparse=1, norm_type="sym", lambda_coeff=0.9, layers=1,
                       embed_size=64)


class MICRO(nn.Module):
    def __init__(self, n_users, n_items, embedding_dim, weight_size, dropout_list, image_feats,
                 text_feats, dtype=torch.float32):
        super().__init__()
        del dropout_list  # NGCF only
        self.n_users, self.n_items = n_users, n_items
        self.n_ui_layers = len(weight_size)
        self.user_embedding = nn.Embedding(n_users, embedding_dim, dtype=dtype)
        self.item_id_embedding = nn.Embedding(n_items, embedding_dim, dtype=dtype)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_id_embedding.weight)
        self.image_embedding = nn.Embedding.from_pretrained(
            torch.as_tensor(image_feats, dtype=dtype), freeze=False)
        self.text_embedding = nn.Embedding.from_pretrained(
            torch.as_tensor(text_feats, dtype=dtype), freeze=False)
        self.image_original_adj = build_knn_normalized_graph(
            build_sim(self.image_embedding.weight.detach()), topk=args.topk,
            is_sparse=args.sparse, norm_type=args.norm_type)
        self.text_original_adj = build_knn_normalized_graph(
            build_sim(self.text_embedding.weight.detach()), topk=args.topk,
            is_sparse=args.sparse, norm_type=args.norm_type)
        self.image_trs = nn.Linear(image_feats.shape[1], args.embed_size, dtype=dtype)
        self.text_trs = nn.Linear(text_feats.shape[1], args.embed_size, dtype=dtype)
        self.softmax = nn.Softmax(dim=-1)
        self.query = nn.Sequential(nn.Linear(embedding_dim, embedding_dim, dtype=dtype),
                                   nn.Tanh(),
                                   nn.Linear(embedding_dim, 1, bias=False, dtype=dtype))
        self.tau = 0.5

    def mm(self, x, y):
        return torch.sparse.mm(x, y) if args.sparse else torch.mm(x, y)

    def sim(self, z1, z2):
        return torch.mm(F.normalize(z1), F.normalize(z2).t())

    def batched_contrastive_loss(self, z1, z2, batch_size=4096):
        n = z1.size(0)
        f = lambda x: torch.exp(x / self.tau)  # noqa: E731
        losses = []
        for b in range((n - 1) // batch_size + 1):
            rows = slice(b * batch_size, (b + 1) * batch_size)
            refl = f(self.sim(z1[rows], z1))
            between = f(self.sim(z1[rows], z2))
            losses.append(-torch.log(between[:, rows].diag()
                                     / (refl.sum(1) + between.sum(1) - refl[:, rows].diag())))
        return torch.cat(losses).mean()

    def _mixed(self, feats, original):
        learned = build_knn_normalized_graph(build_sim(feats), topk=args.topk,
                                             is_sparse=args.sparse, norm_type=args.norm_type)
        return (1 - args.lambda_coeff) * learned + args.lambda_coeff * original

    def forward(self, adj, build_item_graph=False):
        image_feats = self.image_trs(self.image_embedding.weight)
        text_feats = self.text_trs(self.text_embedding.weight)
        if build_item_graph:
            self.image_adj = self._mixed(image_feats, self.image_original_adj)
            self.text_adj = self._mixed(text_feats, self.text_original_adj)
        else:
            self.image_adj = self.image_adj.detach()
            self.text_adj = self.text_adj.detach()
        image_item = text_item = self.item_id_embedding.weight
        for _ in range(args.layers):
            image_item = self.mm(self.image_adj, image_item)
        for _ in range(args.layers):
            text_item = self.mm(self.text_adj, text_item)
        weight = self.softmax(torch.cat([self.query(image_item), self.query(text_item)],
                                        dim=-1))
        h = weight[:, 0].unsqueeze(1) * image_item + weight[:, 1].unsqueeze(1) * text_item
        ego = torch.cat((self.user_embedding.weight, self.item_id_embedding.weight), dim=0)
        layers = [ego]
        for _ in range(self.n_ui_layers):
            ego = torch.sparse.mm(adj, ego)
            layers.append(ego)
        mean = torch.stack(layers, dim=1).mean(dim=1)
        users, items = torch.split(mean, [self.n_users, self.n_items], dim=0)
        return users, items + F.normalize(h, p=2, dim=1), image_item, text_item, h
