r"""Contrastive loss of every view against the views' weighted fusion (MICRO's fusion loss).

For views :math:`H_1..H_M` [N, d] and per-item weights :math:`a` [N, M], with the fused view
:math:`h_j = \sum_k a_{jk} H_{k,j}`:

.. math:: L = \sum_m \mathrm{contrastive\_loss}(H_m, h)

(one direction, view -> fused, as published; see ``contrastive_loss``). This is exactly what
``sum(contrastive_loss(H_m, h) for m)`` computes, but the fused view is a per-row combination
of the views, so with :math:`u_m = H_m / \lVert H_m \rVert` the normalized fused view is
:math:`\hat h_j = \sum_k c_{jk} u_{k,j}`, :math:`c_{jk} = a_{jk} \lVert H_{k,j} \rVert /
\lVert h_j \rVert`, and every score the loss needs is a combination of the Gram blocks
:math:`u_m u_k^T`:

.. math:: \langle u_{m,i}, \hat h_j \rangle = \sum_k c_{jk} \langle u_{m,i}, u_{k,j} \rangle .

A backend with a fused kernel (``contrastive_fusion_forward``) multiplies each unordered pair of
row blocks of the stacked views once: :math:`M^2 N^2 d / 2` multiply-adds forward and
:math:`3 M^2 N^2 d / 2` backward (its recomputation included), 8 :math:`N^2 d` in all for two
views against :math:`6 M N^2 d` = 12 for M separate losses. Gradients reach :math:`u` and
:math:`c` from the kernel, and from there ``views`` and
``weights`` through torch. Other backends, ``symmetric=True``, ``tau < 0.05`` (where the
fused kernel's fixed exponent shift could underflow) and more than ``MAX_FUSED_VIEWS`` views
(the kernel keeps :math:`M^2` scores per item pair in registers) compute the sum of separate
losses.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.autograd.function import once_differentiable

from micro_fast import dispatch, memory
from micro_fast.errors import InputError, InputTypeError
from micro_fast.ops._checks import (
    any_true,
    check_block_size,
    check_float_2d,
    check_nonzero_rows,
    check_tau,
    check_values,
    normalize_rows,
)
from micro_fast.ops.contrastive_loss import RankShard, contrastive_loss, lse_shift, shard_args

#: Smallest tau the fused kernels take (their exponent shift is fixed at 1 / tau).
FUSED_MIN_TAU = 0.05
#: Most views the fused kernels take.
MAX_FUSED_VIEWS = 8
STRATEGIES = ("auto", "fused", "separate")


class _FusionLSE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, coef, tau, block_size, impl, shard):  # noqa: D102
        u, coef = u.detach().contiguous(), coef.detach().contiguous()
        count, split = shard_args(shard, impl)
        if split is None:
            lse = impl.contrastive_fusion_forward(u, coef, tau, block_size).to(u.device)
        else:
            lse = shard.logsumexp(impl.contrastive_fusion_forward(u, coef, tau, block_size,
                                                                  shard=split).to(u.device),
                                  lse_shift(tau))
        ctx.save_for_backward(u, coef, lse)
        ctx.tau, ctx.block_size, ctx.impl, ctx.count, ctx.split = (tau, block_size, impl, count,
                                                                    split)
        return lse

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # noqa: D102
        u, coef, lse = ctx.saved_tensors
        g = grad.to(u.dtype)
        kwargs = {}
        if ctx.split is not None:
            # this process visits 1 / count of the tiles, each with the full loss's weight
            g, kwargs = g * ctx.count, {"shard": ctx.split}
        grad_u, grad_coef = ctx.impl.contrastive_fusion_backward(
            u, coef, ctx.tau, lse, g.contiguous(), ctx.block_size, **kwargs)
        return grad_u.to(u.device), grad_coef.to(u.device), None, None, None, None


def check_fusion_values(views: list[torch.Tensor], weights: torch.Tensor,
                        fused_norm: torch.Tensor) -> None:
    """NaN / inf and zero-norm rows in the views, NaN / inf in the weights, zero-norm rows of
    the fused view (on a GPU as asynchronous device assertions, see ``_checks``)."""
    for m, v in enumerate(views):
        check_values(f"views[{m}]", v)
        check_nonzero_rows(f"views[{m}]", v)
    check_values("weights", weights)
    zero = fused_norm.detach() == 0
    if fused_norm.device.type != "cpu":
        torch._assert_async(~zero.any(), "the fused view (weights x views) has zero-norm rows")
    elif any_true(zero):
        rows = torch.nonzero(zero.flatten()).flatten()[:5].tolist()
        raise InputError(f"the fused view (weights x views) has zero-norm rows (e.g. {rows}); "
                         "cosine similarity is undefined for them")


@torch.library.custom_op("micro_fast::contrastive_fusion_lse", mutates_args=())
def fusion_lse_kernel(views: list[torch.Tensor], weights: torch.Tensor, u: torch.Tensor,
                      coef: torch.Tensor, fused_norm: torch.Tensor, tau: float,
                      block_size: int | None, backend: str) -> torch.Tensor:
    """The log-sum-exps [M, N] of every view's rows against the fused view, from the stacked
    normalized views ``u`` [M, N, d] and the fused view's coefficients ``coef`` [N, M]. The raw
    ``views``, ``weights`` and the fused view's norms [N, 1] are only checked here (out of the
    compiler's sight)."""
    check_fusion_values(views, weights, fused_norm)
    impl = dispatch.module(backend)
    return impl.contrastive_fusion_forward(u.detach().contiguous(), coef.detach().contiguous(),
                                           tau, block_size).to(u.device)


@fusion_lse_kernel.register_fake
def _(views, weights, u, coef, fused_norm, tau, block_size, backend):
    return u.new_empty(u.shape[0], u.shape[1])


@torch.library.custom_op("micro_fast::contrastive_fusion_lse_backward", mutates_args=())
def fusion_lse_backward_kernel(u: torch.Tensor, coef: torch.Tensor, lse: torch.Tensor,
                               grad: torch.Tensor, tau: float, block_size: int | None,
                               backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of ``sum(grad * lse)`` w.r.t. ``u`` and ``coef`` (recomputing backward)."""
    impl = dispatch.module(backend)
    grad_u, grad_coef = impl.contrastive_fusion_backward(
        u.contiguous(), coef.contiguous(), tau, lse, grad.to(u.dtype).contiguous(), block_size)
    return grad_u.to(u.device), grad_coef.to(u.device)


@fusion_lse_backward_kernel.register_fake
def _(u, coef, lse, grad, tau, block_size, backend):
    return torch.empty_like(u), torch.empty_like(coef)


def _setup_fusion(ctx, inputs, output):
    views, _, u, coef, _, tau, block_size, backend = inputs
    ctx.save_for_backward(u, coef, output)
    ctx.args, ctx.n_views = (tau, block_size, backend), len(views)


def _fusion_backward(ctx, grad):
    u, coef, lse = ctx.saved_tensors
    grad_u, grad_coef = fusion_lse_backward_kernel(u, coef, lse, grad, *ctx.args)
    return [None] * ctx.n_views, None, grad_u, grad_coef, None, None, None, None


fusion_lse_kernel.register_autograd(_fusion_backward, setup_context=_setup_fusion)


def fuse_views(views: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """The fused view :math:`h = \\sum_k a_{:,k} H_k` [N, d]."""
    return sum(weights[:, k:k + 1] * v for k, v in enumerate(views))


def contrastive_fusion_loss(views: Sequence[torch.Tensor], weights: torch.Tensor, *,
                            tau: float = 0.5, symmetric: bool = False,
                            block_size: int | None = None, backend: str = "auto",
                            strategy: str = "auto", shard: RankShard | None = None,
                            ) -> torch.Tensor:
    """:math:`\\sum_m` ``contrastive_loss(views[m], h)`` with ``h = sum_k weights[:, k] views[k]``.

    Args:
        views: M >= 1 float32/float64 tensors [N, d] of one shape, dtype and device.
        weights: [N, M] fusion weights (e.g. MICRO's attention softmax), same dtype and device.
        tau: temperature, > 0.
        symmetric: GRACE's two-direction form of each term (no fused kernel).
        block_size: rows per tile; ``None``: the size measured fastest here
            (``micro_fast.tuning``) or the backend's default.
        backend: ``"auto"`` or a name from ``micro_fast.backends.BACKENDS``.
        strategy: ``"fused"`` (the fused-view kernel, where the backend has one),
            ``"separate"`` (the sum of separate losses) or ``"auto"`` (whichever was measured
            faster on this machine, ``micro_fast.tuning``; the fused kernel with ``shard``).
            Both give the same loss and gradients within float rounding.
        shard: this process's part of a loss split over processes (see
            ``contrastive_loss``); the result is then ``loss / shard.count`` with this
            process's share of the gradients.

    Returns:
        scalar tensor, differentiable w.r.t. ``views`` and ``weights``.
    """
    views = list(views) if not isinstance(views, torch.Tensor) else [views]
    if len(views) == 0:
        raise InputError("views must hold at least one [N, d] tensor")
    for m, v in enumerate(views):
        check_float_2d(f"views[{m}]", v)
        if v.shape != views[0].shape:
            raise InputError(f"views[{m}] has shape {tuple(v.shape)}, views[0] has "
                             f"{tuple(views[0].shape)}")
        if v.dtype != views[0].dtype:
            raise InputTypeError(f"views[{m}] dtype {v.dtype} differs from views[0] dtype "
                            f"{views[0].dtype}")
        if v.device != views[0].device:
            raise InputError(f"views[{m}] is on {v.device} but views[0] is on {views[0].device}")
    n, nviews = views[0].shape[0], len(views)
    if n == 0 or views[0].shape[1] == 0:
        raise InputError(f"views[0] must be non-empty, got shape {tuple(views[0].shape)}")
    check_float_2d("weights", weights)
    if tuple(weights.shape) != (n, nviews):
        raise InputError(f"weights must be [N, M] = [{n}, {nviews}], got {tuple(weights.shape)}")
    if weights.dtype != views[0].dtype or weights.device != views[0].device:
        raise InputTypeError(f"weights must have the views' dtype and device ({views[0].dtype}, "
                        f"{views[0].device}), got {weights.dtype} on {weights.device}")
    tau = check_tau(tau)
    block_size = check_block_size(block_size)
    if strategy not in STRATEGIES:
        raise InputError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    plan = dispatch.plan("contrastive_fusion", backend, views[0].device, rows=n,
                         strategy=strategy, sharded=shard is not None)
    name, measured = plan.backend, plan.block_size
    impl = plan.module if plan.strategy == "fused" else None
    d, elem = views[0].shape[1], views[0].element_size()
    # stacked normalized views and their gradients, and the backend's working memory
    memory.check("contrastive_fusion_loss",
                 3 * nviews * n * d * elem
                 + memory.workspace(impl, "contrastive_fusion_loss", n=n, d=d, views=nviews,
                                    elem=elem), f"{nviews} x [{n}, {d}]")
    fused = fuse_views(views, weights)
    if impl is None or symmetric or tau < FUSED_MIN_TAU or nviews > MAX_FUSED_VIEWS:
        # each loss checks its view and the fused one (NaN / inf in weights surface there)
        return sum(contrastive_loss(v, fused, tau=tau, symmetric=symmetric,
                                    block_size=block_size, backend=backend, shard=shard,
                                    labels=(f"views[{m}]", "the fused view (weights x views)"))
                   for m, v in enumerate(views))
    u = torch.stack([normalize_rows(v) for v in views])  # [M, N, d]
    norms = torch.stack([torch.linalg.vector_norm(v, dim=1) for v in views], dim=1)  # [N, M]
    fused_norm = torch.linalg.vector_norm(fused, dim=1, keepdim=True)
    # sum_k coef[:, k] u_k is exactly fused / |fused|
    coef = weights * norms / fused_norm
    if shard is None:
        lse = fusion_lse_kernel(views, weights, u, coef, fused_norm, tau,
                                block_size or measured, name)  # [M, N]
    else:
        # split over processes: the collectives run between the kernel calls, in eager mode
        check_fusion_values(views, weights, fused_norm)
        lse = _FusionLSE.apply(u, coef, tau, block_size, impl, shard)
    diag = (u * (fused / fused_norm)).sum(dim=2) / tau  # <u_m,i, h_i / |h_i|> / tau
    loss = (lse - diag).mean(dim=1).sum()
    return loss if shard is None else loss / shard.count
