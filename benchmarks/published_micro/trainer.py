"""The published data handling and training step (``utility/load_data.py``, ``main.py``): the
user-item matrix as a dok matrix (a repeated pair counts once), the normalized adjacency
D^-1 (A + I) with scipy, its conversion to a torch tensor, and one BPR + contrastive step."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F  # noqa: N812


class Data:
    """Interactions as the published loader keeps them: ``train_items``, ``val_set``,
    ``test_set`` (user -> item list), ``R`` (dok, 1 per interacting pair)."""

    def __init__(self, train: dict, val: dict, test: dict, n_users: int, n_items: int):
        self.n_users, self.n_items = n_users, n_items
        self.train_items, self.val_set, self.test_set = train, val, test
        self.R = sp.dok_matrix((n_users, n_items), dtype=np.float32)
        for u, items in train.items():
            for i in items:
                self.R[u, i] = 1.0

    def norm_adj(self):
        n = self.n_users + self.n_items
        adj = sp.dok_matrix((n, n), dtype=np.float32).tolil()
        r = self.R.tolil()
        adj[:self.n_users, self.n_users:] = r
        adj[self.n_users:, :self.n_users] = r.T
        adj = adj.todok() + sp.eye(n)
        d_inv = np.power(np.array(adj.sum(1)), -1).flatten()
        d_inv[np.isinf(d_inv)] = 0.0
        return sp.diags(d_inv).dot(adj).tocoo().tocsr()


class Trainer:
    def __init__(self, model, norm_adj, decay=1e-5, loss_ratio=0.03, batch_size=1024,
                 lr=5e-4, dtype=torch.float32):
        self.model = model
        self.decay, self.loss_ratio, self.batch_size = decay, loss_ratio, batch_size
        self.norm_adj = self.sparse_mx_to_torch_sparse_tensor(norm_adj).to(dtype)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    def sparse_mx_to_torch_sparse_tensor(self, sparse_mx):
        coo = sparse_mx.tocoo().astype(np.float32)
        index = torch.from_numpy(np.vstack((coo.row, coo.col)).astype(np.int64))
        return torch.sparse_coo_tensor(index, torch.from_numpy(coo.data), coo.shape,
                                       check_invariants=False)

    def bpr_loss(self, users, pos_items, neg_items):
        pos = torch.sum(users * pos_items, dim=1)
        neg = torch.sum(users * neg_items, dim=1)
        reg = ((users ** 2).sum() + (pos_items ** 2).sum() + (neg_items ** 2).sum()) / 2
        return -torch.mean(F.logsigmoid(pos - neg)), self.decay * reg / self.batch_size

    def loss(self, users, pos, neg, build_item_graph):
        ua, ia, image_item, text_item, h = self.model(self.norm_adj,
                                                      build_item_graph=build_item_graph)
        mf, emb = self.bpr_loss(ua[users], ia[pos], ia[neg])
        contrastive = (self.model.batched_contrastive_loss(image_item, h)
                       + self.model.batched_contrastive_loss(text_item, h))
        return mf + emb + self.loss_ratio * contrastive

    def step(self, users, pos, neg, build_item_graph):
        self.optimizer.zero_grad()
        loss = self.loss(users, pos, neg, build_item_graph)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())
