r"""LATTICE (Zhang et al., "Mining Latent Structures for Multimedia Recommendation", ACM MM 2021)
as MMRec's port computes it, on this library's sparse ops.

Per modality :math:`m` (in the order given, MMRec's image then text): the original graph
:math:`O_m`, the cosine kNN graph of the raw features with its similarities as weights,
normalized :math:`D^{-1/2} S D^{-1/2}` (row sums, built once), and on rebuilding batches the
learned graph :math:`S_m`, the same kNN graph of the projected features
:math:`W_m x^m + b_m`. With :math:`w = \mathrm{softmax}(\theta)` (a trainable 2-vector, one
weight per modality) the item graph is

.. math:: A = (1 - \lambda)\, L\Big(\sum_m w_m S_m\Big) + \lambda \sum_m w_m O_m,
          \qquad L(S) = D^{-1/2} S D^{-1/2},\ D = \mathrm{diag}(S \mathbf 1)

normalized *after* the weighted sum. MMRec forms these as dense N x N matrices; here
:math:`L(\sum_m w_m S_m) h = d \odot \sum_m w_m S_m (d \odot h)` with the per-modality CSR
graphs, the same numbers without the N x N matrix. Between rebuilds the graph is reused
detached (its weights included). Items: :math:`e_i + h_i / \lVert h_i \rVert`, with
:math:`h = A^{L} E_{item}` and :math:`(e_u, e_i)` LightGCN (layer mean) over
:math:`D^{-1}(A_{ui} + I)`. Loss: BPR plus ``reg_weight`` x the squared norms of the batch's
representations over ``2 x batch_size``. Evaluation rebuilds the graph first, as MMRec does.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from micro_fast.errors import InputError
from micro_fast.graph import CSRGraph
from micro_fast.models._mmrec import add_embeddings, check_features, check_positive_ints
from micro_fast.ops.knn_graph import graph_from_topk, knn_graph
from micro_fast.ops.propagate import propagate
from micro_fast.ops.spmm import spmm
from micro_fast.ops.topk_similarity import topk_similarity


class LATTICE(nn.Module):
    """LATTICE with MMRec's defaults as keyword defaults.

    Args:
        n_users, n_items: sizes.
        features: modality name -> float [n_items, d_m] raw features, one or two modalities
            (trainable, as in MMRec).
        dim: ID embedding size (64). feat_dim: projection size (64).
        k: kNN neighbours (10). lambda_coeff: weight of the original graphs (0.9).
        item_layers: propagations over the item graph (``n_layers``, 1).
        ui_layers: LightGCN layers (``len(weight_size)``, 2).
        reg_weight: weight of the embedding regularizer (MMRec's grid 0, 1e-5, 1e-4, 1e-3).
        batch_size: the configured batch size the regularizer is divided by (2048).
        backend: kernel backend for every op.
    """

    def __init__(self, n_users: int, n_items: int, features: Mapping[str, torch.Tensor], *,
                 dim: int = 64, feat_dim: int = 64, k: int = 10, lambda_coeff: float = 0.9,
                 item_layers: int = 1, ui_layers: int = 2, reg_weight: float = 1e-5,
                 batch_size: int = 2048, backend: str = "auto") -> None:
        super().__init__()
        check_positive_ints(n_users=n_users, n_items=n_items, dim=dim, feat_dim=feat_dim, k=k,
                            batch_size=batch_size)
        if not 1 <= len(features) <= 2:
            raise InputError(f"LATTICE takes one or two modalities, got {list(features)}")
        check_features(features, n_items)
        self.n_users, self.n_items, self.k = n_users, n_items, k
        self.lambda_coeff, self.item_layers, self.ui_layers = lambda_coeff, item_layers, ui_layers
        self.reg_weight, self.batch_size, self.backend = reg_weight, batch_size, backend
        self.modalities = list(features)
        add_embeddings(self, n_users, n_items, features, dim, feat_dim)
        # MMRec's two-entry modal weight, whatever the number of modalities
        self.modal_weight = nn.Parameter(torch.tensor([0.5, 0.5]))
        self.original = [knn_graph(x.detach(), k, normalization="sym", backend=backend)
                         for x in self.features.values()]
        self._graph: tuple | None = None  # the learned graph between rebuilds (detached)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self.original = [g.to(self.features[m].dtype).to(self.features[m].device)
                         for g, m in zip(self.original, self.features, strict=True)]
        self._graph = None
        return out

    # --- the item graph ---------------------------------------------------------------
    def build_graph(self) -> tuple[list[CSRGraph], torch.Tensor, torch.Tensor]:
        """``(learned S_m, w, d)`` of the current projections (differentiable)."""
        # one modality: its graphs unweighted (MMRec weights only a pair)
        w = torch.softmax(self.modal_weight, dim=0) if len(self.projections) == 2 \
            else torch.ones(1, dtype=self.modal_weight.dtype, device=self.modal_weight.device)
        learned, rowsum = [], 0.0
        for m, proj in self.projections.items():
            z = proj(self.features[m])
            values, indices = topk_similarity(z, None, self.k, normalize=True,
                                              backend=self.backend)
            learned.append(graph_from_topk(values, indices, "none"))
        for i, g in enumerate(learned):
            rowsum = rowsum + w[i] * g.values.reshape(self.n_items, self.k).sum(dim=1)
        # rowsum ** -0.5 with 0 -> 0 (MMRec's inf -> 0), without NaN gradients
        positive = rowsum > 0
        safe = torch.where(positive, rowsum, torch.ones_like(rowsum))
        d = torch.where(positive, safe.rsqrt(), torch.zeros_like(rowsum))
        return learned, w, d

    def item_propagation(self, graph: tuple, h: torch.Tensor) -> torch.Tensor:
        """:math:`A^{L} h` for the graph ``(learned, w, d)``."""
        learned, w, d = graph
        lam = self.lambda_coeff
        for _ in range(self.item_layers):
            scaled = d.unsqueeze(1) * h
            mixed = sum(w[i] * spmm(g, scaled, backend=self.backend)
                        for i, g in enumerate(learned))
            orig = sum(w[i] * spmm(g, h, backend=self.backend)
                       for i, g in enumerate(self.original))
            h = (1 - lam) * d.unsqueeze(1) * mixed + lam * orig
        return h

    # --- model ------------------------------------------------------------------------
    def forward(self, ui_graph: CSRGraph, build_item_graph: bool = False,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if build_item_graph or self._graph is None:
            graph = self.build_graph()
            learned, w, d = graph
            self._graph = ([g.detach() for g in learned], w.detach(), d.detach())
        else:
            graph = self._graph
        h = self.item_propagation(graph, self.item_embedding)
        ego = torch.cat([self.user_embedding, self.item_embedding])
        out = propagate(ui_graph, ego, self.ui_layers, combine="mean", backend=self.backend)
        return out[:self.n_users], out[self.n_users:] + F.normalize(h, p=2, dim=1)

    def embeddings(self, ui_graph: CSRGraph) -> tuple[torch.Tensor, torch.Tensor]:
        """Evaluation representations, the item graph rebuilt first (as MMRec does)."""
        with torch.no_grad():
            return self(ui_graph, build_item_graph=True)

    def loss(self, ui_graph: CSRGraph, users: torch.Tensor, pos: torch.Tensor,
             neg: torch.Tensor, *, build_item_graph: bool = False, batch_weight: float = 1.0,
             **_ignored: object) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss, parts)`` of one batch; the learned graph is rebuilt when asked."""
        u_all, i_all = self(ui_graph, build_item_graph)
        u, p, n = u_all[users], i_all[pos], i_all[neg]
        bpr = -F.logsigmoid((u * p).sum(dim=1) - (u * n).sum(dim=1)).mean()
        reg = self.reg_weight * 0.5 * (u.square().sum() + p.square().sum()
                                       + n.square().sum()) / self.batch_size
        loss = batch_weight * (bpr + reg)
        return loss, {"bpr": bpr.detach(), "reg": reg.detach(),
                      "contrastive": torch.zeros((), dtype=bpr.dtype)}
