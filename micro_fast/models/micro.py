r"""MICRO (latent structure mining with contrastive modality fusion), as the published code
computes it (see MICRO.md), built from this library's ops.

Per modality :math:`m`: the mixed kNN item graph :math:`A_m` (``KNNGraphLearner``) propagates
the item ID embeddings, :math:`H_m = A_m^{L} E_{item}`. Attention fusion gives
:math:`h = \sum_m \mathrm{softmax}_m(q(H_m)) H_m`. LightGCN over the user-item graph gives
:math:`(e_u, e_i)`; the final item representation is :math:`e_i + h_i / \lVert h_i \rVert`
and the score is :math:`\langle e_u, e_i \rangle`. The training loss is

.. math:: \mathrm{BPR} + \mathrm{reg}\,\frac{\lVert u \rVert^2 + \lVert i^+ \rVert^2 +
          \lVert i^- \rVert^2}{2 B} + w_c \sum_m \mathrm{InfoNCE}(H_m, h)

The learned graphs are rebuilt (with gradient) only when asked, on the first batch of an epoch;
other batches reuse them detached and skip projecting the raw features, which the published
forward recomputes and discards (same losses and gradients). ``contrastive_weight=0`` is the
LATTICE-style variant; no modalities at all is plain LightGCN.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from micro_fast.errors import InputError
from micro_fast.graph import CSRGraph
from micro_fast.nn.fusion import ContrastiveFusion, fuse_views
from micro_fast.nn.graph_learner import KNNBuilder, KNNGraphLearner
from micro_fast.nn.propagation import LightGCN
from micro_fast.ops.contrastive_loss import RankShard
from micro_fast.ops.knn_graph import knn_graph


class MICROOutput(NamedTuple):
    users: torch.Tensor            # [U, dim] final user representations
    items: torch.Tensor            # [I, dim] final item representations
    views: list[torch.Tensor]      # per modality H_m [I, dim]
    fused: torch.Tensor | None     # h [I, dim] (None without modalities)
    weights: torch.Tensor | None   # attention a [I, M] with h = sum_m a[:, m] H_m


class MICRO(nn.Module):
    """The MICRO recommender; published defaults as keyword defaults.

    Args:
        n_users, n_items: sizes.
        features: modality name -> float [n_items, d_m] raw features (trainable by default);
            empty or ``None`` gives plain LightGCN.
        dim: ID embedding size (64). feat_dim: projection size of each modality (64).
        k: kNN neighbours (10). lambda_coeff: weight of the original graph (0.9).
        knn_normalization: ``"sym"`` (published default), ``"rw"`` or ``"none"``.
        item_layers: item graph convolution layers (1). ui_layers: LightGCN layers (2).
        contrastive_weight: weight of the contrastive loss (0.03; 0 = LATTICE-style variant).
        tau: temperature (0.5). symmetric_contrastive: GRACE's two-direction form.
        reg_weight: embedding regularization (1e-5).
        trainable_features: update the raw features with the optimizer (published: yes).
        backend: kernel backend for every op.
        knn: the kNN graph builder of the item graphs (``ops.knn_graph``; pass
            ``micro_fast.distributed.knn_graph`` to split the searches over ranks).
    """

    def __init__(self, n_users: int, n_items: int,
                 features: Mapping[str, torch.Tensor] | None = None, *, dim: int = 64,
                 feat_dim: int = 64, k: int = 10, lambda_coeff: float = 0.9,
                 knn_normalization: str = "sym", item_layers: int = 1, ui_layers: int = 2,
                 contrastive_weight: float = 0.03, tau: float = 0.5,
                 symmetric_contrastive: bool = False, reg_weight: float = 1e-5,
                 trainable_features: bool = True, backend: str = "auto",
                 knn: KNNBuilder = knn_graph) -> None:
        super().__init__()
        if n_users < 1 or n_items < 1:
            raise InputError(f"n_users and n_items must be >= 1, got {n_users}, {n_items}")
        if contrastive_weight < 0 or reg_weight < 0:
            raise InputError("contrastive_weight and reg_weight must be >= 0")
        if item_layers < 0 or ui_layers < 0:
            raise InputError("item_layers and ui_layers must be >= 0")
        features = dict(features or {})
        for name, f in features.items():
            if not isinstance(f, torch.Tensor) or f.dim() != 2 or f.shape[0] != n_items:
                shape = tuple(f.shape) if isinstance(f, torch.Tensor) else type(f).__name__
                raise InputError(f"features[{name!r}] must be [n_items={n_items}, d], got {shape}")
        self.n_users, self.n_items = n_users, n_items
        self.item_layers, self.contrastive_weight = item_layers, float(contrastive_weight)
        self.reg_weight, self.backend = float(reg_weight), backend
        self.backbone = LightGCN(n_users, n_items, dim, ui_layers, backend=backend)
        self.learners = nn.ModuleDict({
            name: KNNGraphLearner(f, feat_dim, k=min(k, n_items), normalization=knn_normalization,
                                  lambda_coeff=lambda_coeff,
                                  trainable_features=trainable_features, backend=backend,
                                  knn=knn)
            for name, f in features.items()})
        self.fusion = (ContrastiveFusion(dim, tau=tau, symmetric=symmetric_contrastive,
                                         backend=backend) if features else None)
        self._graphs: dict[str, CSRGraph] | None = None

    @property
    def modalities(self) -> list[str]:
        return list(self.learners.keys())

    @property
    def user_embedding(self) -> nn.Embedding:
        return self.backbone.user_embedding

    @property
    def item_id_embedding(self) -> nn.Embedding:
        return self.backbone.item_embedding

    def item_graphs(self, build: bool) -> dict[str, CSRGraph]:
        """The learned graph of each modality: rebuilt when ``build`` (or never built yet),
        else the last one, detached."""
        if build or self._graphs is None:
            self._graphs = {m: learner.learn() for m, learner in self.learners.items()}
        else:
            self._graphs = {m: g.detach() for m, g in self._graphs.items()}
        return self._graphs

    def forward(self, ui_graph: CSRGraph, *, build_item_graph: bool = True) -> MICROOutput:
        """ui_graph: (U+I, U+I) ``CSRGraph`` (see ``bipartite_graph``)."""
        users, items = self.backbone(ui_graph)
        if not self.learners:
            return MICROOutput(users, items, [], None, None)
        graphs = self.item_graphs(build_item_graph)
        e_item = self.item_id_embedding.weight
        views = [self.learners[m].propagate(graphs[m], e_item, self.item_layers)
                 for m in self.learners]
        weights = self.fusion.attention(views)
        fused = fuse_views(views, weights)
        return MICROOutput(users, items + F.normalize(fused, p=2, dim=1), views, fused, weights)

    def loss(self, ui_graph: CSRGraph, users: torch.Tensor, pos: torch.Tensor,
             neg: torch.Tensor, *, build_item_graph: bool = False, batch_weight: float = 1.0,
             contrastive_shard: RankShard | None = None,
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss of one BPR batch (users, pos, neg: int64 [B]).

        ``batch_weight`` multiplies the batch terms (BPR and regularization), e.g. a rank's
        share of a global batch under data parallelism. With ``contrastive_shard`` this process
        computes its part of the all-item contrastive loss only, and the contrastive term is
        ``shard.count`` x that part: the full value, with this process's share of the
        gradient scaled so that averaging the gradients over the processes (as
        DistributedDataParallel does) gives the full one.

        Returns ``(loss, parts)``; ``parts`` holds the detached ``bpr``, ``reg`` (unweighted)
        and (weighted) ``contrastive`` terms (tensors, so that logging does not synchronize a
        GPU).
        """
        out = self(ui_graph, build_item_graph=build_item_graph)
        # index_select: reproducible backward with repeated ids (advanced indexing is not)
        u = out.users.index_select(0, users)
        p, n = out.items.index_select(0, pos), out.items.index_select(0, neg)
        bpr = -F.logsigmoid((u * p).sum(1) - (u * n).sum(1)).mean()
        reg = self.reg_weight * 0.5 * ((u * u).sum() + (p * p).sum() + (n * n).sum()) / len(users)
        total = (bpr + reg) * batch_weight if batch_weight != 1.0 else bpr + reg
        contrast = torch.zeros((), dtype=total.dtype, device=total.device)
        if out.views and self.contrastive_weight > 0:
            part = self.fusion.loss(out.views, out.weights, shard=contrastive_shard)
            if contrastive_shard is not None:
                part = part * contrastive_shard.count
            contrast = self.contrastive_weight * part
            total = total + contrast
        return total, {"bpr": bpr.detach(), "reg": reg.detach(), "contrastive": contrast.detach()}

    @torch.no_grad()
    def embeddings(self, ui_graph: CSRGraph) -> tuple[torch.Tensor, torch.Tensor]:
        """(users [U, dim], items [I, dim]) for evaluation, learned graphs rebuilt without
        gradient (as published)."""
        out = self(ui_graph, build_item_graph=True)
        return out.users, out.items

    def extra_repr(self) -> str:
        return (f"users={self.n_users}, items={self.n_items}, modalities={self.modalities}, "
                f"contrastive_weight={self.contrastive_weight}, reg_weight={self.reg_weight}")
