"""MICRO's contrastive modality fusion as a drop-in module."""

from __future__ import annotations

import torch
from torch import nn

from micro_fast.errors import InputError
from micro_fast.ops.contrastive_fusion import contrastive_fusion_loss, fuse_views
from micro_fast.ops.contrastive_loss import RankShard, contrastive_loss


class ContrastiveFusion(nn.Module):
    """Attention fusion of modality views plus the contrastive loss of each view against it.

    For views :math:`H_1..H_M` [N, d]: :math:`a_m = q(H_m)` with
    ``q = Linear(d, d) -> tanh -> Linear(d, 1, bias=False)``, softmax over the modalities per
    item, :math:`h = \\sum_m a_m H_m`; the loss is
    :math:`\\sum_m \\mathrm{contrastive\\_loss}(H_m, h)` (MICRO.md; the model scales it by its
    contrastive weight). ``forward`` returns ``(h [N, d], loss scalar)``.
    """

    def __init__(self, dim: int = 64, *, tau: float = 0.5, symmetric: bool = False,
                 block_size: int | None = None, backend: str = "auto") -> None:
        super().__init__()
        self.query = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1, bias=False))
        self.tau, self.symmetric = tau, symmetric
        self.block_size, self.backend = block_size, backend

    def attention(self, views: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The fusion weights [N, M]: a softmax over the views of q(H_m)."""
        if len(views) == 0:
            raise InputError("views must hold at least one [N, d] tensor")
        return torch.softmax(torch.cat([self.query(v) for v in views], dim=-1), dim=-1)

    def fuse(self, views: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
        """The attention-weighted sum of the views (no loss)."""
        return fuse_views(views, self.attention(views))

    def loss(self, views: list[torch.Tensor] | tuple[torch.Tensor, ...],
             weights: torch.Tensor, *, shard: RankShard | None = None) -> torch.Tensor:
        """:math:`\\sum_m` contrastive_loss(H_m, h) for ``h = fuse_views(views, weights)``, by
        ``contrastive_fusion_loss`` (one pass over the Gram blocks of the views); with
        ``shard``, this process's part of it (see ``ops.contrastive_loss``)."""
        return contrastive_fusion_loss(views, weights, tau=self.tau, symmetric=self.symmetric,
                                       block_size=self.block_size, backend=self.backend,
                                       shard=shard)

    def contrastive(self, view: torch.Tensor, fused: torch.Tensor) -> torch.Tensor:
        """The contrastive loss of one view [N, d] against the fused view [N, d] (scalar)."""
        return contrastive_loss(view, fused, tau=self.tau, symmetric=self.symmetric,
                                block_size=self.block_size, backend=self.backend)

    def forward(self, views: list[torch.Tensor] | tuple[torch.Tensor, ...],
                with_loss: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        weights = self.attention(views)
        h = fuse_views(views, weights)
        if not with_loss:
            return h, None
        return h, self.loss(views, weights)
