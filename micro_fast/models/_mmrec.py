"""What the MMRec-style models share: argument checks and the ID embeddings, trainable raw
features and their linear projections, initialized as MMRec does (xavier-uniform IDs)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from micro_fast.errors import InputError


def check_positive_ints(**values: object) -> None:
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise InputError(f"{name} must be a positive int, got {v!r}")


def check_features(features: Mapping[str, torch.Tensor], n_items: int) -> None:
    for name, x in features.items():
        if x.dim() != 2 or x.shape[0] != n_items:
            raise InputError(f"features[{name!r}] must be [n_items, d], got {tuple(x.shape)}")


def add_embeddings(module: nn.Module, n_users: int, n_items: int,
                   features: Mapping[str, torch.Tensor], dim: int, feat_dim: int) -> None:
    """``user_embedding`` [U, dim], ``item_embedding`` [I, dim], ``features`` (trainable
    copies in the default dtype) and ``projections`` (one ``Linear(d_m, feat_dim)`` each)."""
    module.user_embedding = nn.Parameter(torch.empty(n_users, dim))
    module.item_embedding = nn.Parameter(torch.empty(n_items, dim))
    nn.init.xavier_uniform_(module.user_embedding)
    nn.init.xavier_uniform_(module.item_embedding)
    dtype = torch.get_default_dtype()
    module.features = nn.ParameterDict({m: nn.Parameter(x.detach().to(dtype).clone())
                                        for m, x in features.items()})
    module.projections = nn.ModuleDict({m: nn.Linear(x.shape[1], feat_dim)
                                        for m, x in features.items()})

