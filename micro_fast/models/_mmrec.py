"""What the MMRec-style models share: argument checks and the ID embeddings, trainable raw
features and their linear projections, initialized as MMRec does (xavier-uniform IDs), and the
projection of some rows of the features."""

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


class _ProjectRows(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, rows):  # noqa: D102
        xr = x.index_select(0, rows)
        ctx.save_for_backward(xr, weight, rows)
        ctx.n_rows = x.shape[0]
        return torch.addmm(bias, xr, weight.t())

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        xr, weight, rows = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # the rows of x that were not projected get zero gradient (as a dense tensor,
            # which is what the full product would give); the indices are distinct, so a copy
            grad_x = grad.new_zeros(ctx.n_rows, xr.shape[1])
            grad_x.index_copy_(0, rows, grad @ weight)
        if ctx.needs_input_grad[1]:
            grad_w = grad.t() @ xr
        if ctx.needs_input_grad[2]:
            grad_b = grad.sum(0)
        return grad_x, grad_w, grad_b, None


def project_rows(x: torch.Tensor, linear: nn.Linear, rows: torch.Tensor) -> torch.Tensor:
    """``linear(x[rows])`` [len(rows), out] for distinct ``rows`` (int64), with the gradient
    w.r.t. ``x`` that ``linear(x)[rows]`` has (dense, zero outside ``rows``) but without
    projecting the other rows."""
    return _ProjectRows.apply(x, linear.weight, linear.bias, rows)
