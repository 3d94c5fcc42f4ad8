r"""MICRO's all-pairs contrastive (InfoNCE) loss between two views, blockwise.

With :math:`\hat z` the L2-normalized rows, :math:`s^{ab}_{ij} = \langle \hat z^a_i,
\hat z^b_j \rangle`, the per-item loss of direction 1 -> 2 is (MICRO.md; GRACE's semi-loss)

.. math:: \ell^{1}_i = -\log \frac{e^{s^{12}_{ii}/\tau}}
          {\sum_{j \ne i} e^{s^{11}_{ij}/\tau} + \sum_j e^{s^{12}_{ij}/\tau}}
          = \mathrm{lse}^1_i - s^{12}_{ii} / \tau

and the loss is :math:`\frac1N \sum_i \ell^1_i` (``symmetric=False``, as published) or
:math:`\frac1{2N} \sum_i (\ell^1_i + \ell^2_i)` (``symmetric=True``, GRACE's two-direction form,
:math:`\ell^2` the same with the views swapped). The published code writes the denominator as
:math:`\sum_j e^{s^{11}_{ij}/\tau} + \sum_j e^{s^{12}_{ij}/\tau} - e^{s^{11}_{ii}/\tau}`; leaving
the diagonal out of the sum instead is the same number without the cancellation.

Only the row statistics :math:`\mathrm{lse}` are kept: the forward visits the score matrices in
tiles with running maxima (any :math:`\tau > 0` is safe), the backward recomputes the tiles and
turns them into the weights :math:`g_i e^{s_{ij}/\tau - \mathrm{lse}_i} / \tau`, so memory is
O(block x N) at most and the intra-view tiles, being symmetric, are computed once. Gradients
flow to ``z1`` and ``z2`` through the normalization (done in torch, as published). Rows of zero
norm are an error: their cosine is undefined, and the published ``F.normalize`` (a norm clamped
at 1e-12) turns them into gradients of rounding noise times 1e12.

With ``shard`` (a ``RankShard``, e.g. from ``micro_fast.distributed``) the call is one
process's part of the loss: the backends with a shard form (cpp) visit every ``count``-th tile
task only, the processes combine their partial row statistics into the full ``lse`` (one
log-sum-exp collective), and the call returns ``loss / count`` with this process's share of the
gradients, so that the values and the gradients summed over the processes are the
single-process ones. Other backends compute the whole loss on every process and return the same
``1 / count`` share.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch.autograd.function import once_differentiable

from micro_fast import dispatch, memory
from micro_fast.errors import InputError, InputTypeError
from micro_fast.ops._checks import (
    check_block_size,
    check_float_2d,
    check_nonzero_rows,
    check_tau,
    check_values,
    normalize_rows,
)


class RankShard(Protocol):
    """One process's part of a loss split over ``count`` cooperating processes."""

    index: int
    count: int

    def logsumexp(self, partial: torch.Tensor, shift: float | None = None) -> torch.Tensor:
        """Elementwise log of the sum over the processes of ``exp(partial)``; the same tensor
        on every process. ``shift``, when given, is a value every finite ``partial`` lies
        within 80 of, so that ``exp(partial - shift)`` neither overflows nor underflows."""


def lse_shift(tau: float) -> float | None:
    """A shift for ``RankShard.logsumexp`` of the losses' partial log-sum-exps: every term is
    exp(s / tau) with |s| <= 1, so a partial of up to 2^40 terms lies within 2 / tau + 28 of
    1 / tau, which is within 80 when tau >= 0.05 (the fused kernels' own limit)."""
    return 1.0 / tau if tau >= 0.05 else None


def shard_args(shard: RankShard | None, impl: object) -> tuple[int, tuple[int, int] | None]:
    """(processes, the ``shard=`` argument of a backend that splits its tiles, else None)."""
    if shard is None:
        return 1, None
    if getattr(impl, "CONTRASTIVE_SHARDS", False):
        return shard.count, (shard.index, shard.count)
    return shard.count, None


class _ContrastiveLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, n1, n2, tau, symmetric, block_size, impl, shard):  # noqa: D102
        n1c, n2c = n1.detach().contiguous(), n2.detach().contiguous()
        count, split = shard_args(shard, impl)
        if split is None:
            lse1, lse2 = impl.contrastive_forward(n1c, n2c, tau, symmetric, block_size)
        else:
            lse1, lse2 = impl.contrastive_forward(n1c, n2c, tau, symmetric, block_size,
                                                  shard=split)
            if symmetric:
                lse1, lse2 = shard.logsumexp(torch.stack([lse1, lse2]), lse_shift(tau))
            else:
                lse1 = shard.logsumexp(lse1, lse_shift(tau))
        diag = (n1c * n2c).sum(dim=1) / tau
        rows = lse1 - diag
        if symmetric:
            rows = (rows + lse2 - diag) / 2
        ctx.save_for_backward(n1c, n2c, lse1, lse2)
        ctx.tau, ctx.symmetric, ctx.block_size, ctx.impl = tau, symmetric, block_size, impl
        ctx.count, ctx.split = count, split
        return rows.mean() / count

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):  # noqa: D102
        n1, n2, lse1, lse2 = ctx.saved_tensors
        n, tau = n1.shape[0], ctx.tau
        weight = grad.to(n1.dtype) / ((2 * n if ctx.symmetric else n) * ctx.count)
        # a split kernel visits 1 / count of the tiles: each with the full loss's weight
        g = (weight * (ctx.count if ctx.split else 1)).expand(n).contiguous()
        kwargs = {} if ctx.split is None else {"shard": ctx.split}
        grad1, grad2 = ctx.impl.contrastive_backward(n1, n2, tau, lse1, lse2 if ctx.symmetric
                                                     else None, g, g if ctx.symmetric else None,
                                                     ctx.block_size, **kwargs)
        # the -s12_ii / tau terms of every row used
        diag_weight = weight * (2 if ctx.symmetric else 1) / tau
        grad1 = grad1.to(n1.device) - diag_weight * n2
        grad2 = grad2.to(n2.device) - diag_weight * n1
        return grad1, grad2, None, None, None, None, None


def _rows_loss(n1, n2, lse1, lse2, tau: float, symmetric: bool) -> torch.Tensor:
    diag = (n1 * n2).sum(dim=1) / tau
    rows = lse1 - diag
    if symmetric:
        rows = (rows + lse2 - diag) / 2
    return rows.mean()


@torch.library.custom_op("micro_fast::contrastive_loss", mutates_args=())
def contrastive_loss_kernel(z1: torch.Tensor, z2: torch.Tensor, n1: torch.Tensor,
                            n2: torch.Tensor, tau: float, symmetric: bool,
                            block_size: int | None, backend: str, label1: str, label2: str,
                            zero_rows_ok: bool = False,
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, lse1, lse2)`` of the normalized views ``n1``, ``n2`` (``lse2`` empty unless
    ``symmetric``). The raw views ``z1``, ``z2`` are only checked here (NaN / inf, and zero-norm
    rows unless ``zero_rows_ok``; ``label1`` and ``label2`` name them in the errors), out of the
    compiler's sight; the normalization stays in torch."""
    for label, z in ((label1, z1), (label2, z2)):
        check_values(label, z)
        if not zero_rows_ok:
            check_nonzero_rows(label, z)
    impl = dispatch.module(backend)
    n1, n2 = n1.detach().contiguous(), n2.detach().contiguous()
    lse1, lse2 = impl.contrastive_forward(n1, n2, tau, symmetric, block_size)
    lse1 = lse1.to(n1.device)
    lse2 = lse2.to(n1.device) if symmetric else n1.new_empty(0)
    return _rows_loss(n1, n2, lse1, lse2, tau, symmetric), lse1, lse2


@contrastive_loss_kernel.register_fake
def _(z1, z2, n1, n2, tau, symmetric, block_size, backend, label1, label2, zero_rows_ok=False):
    n = n1.shape[0]
    return n1.new_empty(()), n1.new_empty(n), n1.new_empty(n if symmetric else 0)


@torch.library.custom_op("micro_fast::contrastive_loss_backward", mutates_args=())
def contrastive_loss_backward_kernel(n1: torch.Tensor, n2: torch.Tensor, lse1: torch.Tensor,
                                     lse2: torch.Tensor, grad: torch.Tensor, tau: float,
                                     symmetric: bool, block_size: int | None, backend: str,
                                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of ``grad * loss`` w.r.t. the normalized views (the kernel's recomputing
    backward and the diagonal terms)."""
    impl = dispatch.module(backend)
    n = n1.shape[0]
    n1, n2 = n1.contiguous(), n2.contiguous()
    weight = grad.to(n1.dtype) / (2 * n if symmetric else n)
    g = weight.expand(n).contiguous()
    grad1, grad2 = impl.contrastive_backward(n1, n2, tau, lse1, lse2 if symmetric else None, g,
                                             g if symmetric else None, block_size)
    # the -s12_ii / tau terms of every row used
    diag_weight = weight * (2 if symmetric else 1) / tau
    return grad1.to(n1.device) - diag_weight * n2, grad2.to(n2.device) - diag_weight * n1


@contrastive_loss_backward_kernel.register_fake
def _(n1, n2, lse1, lse2, grad, tau, symmetric, block_size, backend):
    return torch.empty_like(n1), torch.empty_like(n2)


def _setup_contrastive(ctx, inputs, output):
    _, _, n1, n2, tau, symmetric, block_size, backend, _, _, _ = inputs
    _, lse1, lse2 = output
    ctx.mark_non_differentiable(lse1, lse2)
    ctx.save_for_backward(n1, n2, lse1, lse2)
    ctx.args = (tau, symmetric, block_size, backend)


def _contrastive_backward(ctx, grad, _grad_lse1, _grad_lse2):
    n1, n2, lse1, lse2 = ctx.saved_tensors
    g1, g2 = contrastive_loss_backward_kernel(n1, n2, lse1, lse2, grad, *ctx.args)
    return None, None, g1, g2, None, None, None, None, None, None, None


contrastive_loss_kernel.register_autograd(_contrastive_backward,
                                          setup_context=_setup_contrastive)


def contrastive_loss(z1: torch.Tensor, z2: torch.Tensor, *, tau: float = 0.5,
                     symmetric: bool = False, block_size: int | None = None,
                     backend: str = "auto", shard: RankShard | None = None,
                     labels: tuple[str, str] = ("z1", "z2"),
                     zero_rows: str = "error") -> torch.Tensor:
    """MICRO's contrastive loss between views ``z1`` and ``z2`` (see the module docstring).

    Args:
        z1, z2: float32/float64 [N, d], same shape, dtype and device (row i of each is item i).
        tau: temperature, > 0.
        symmetric: ``False`` (published, one direction z1 -> z2) or ``True`` (both directions,
            averaged).
        block_size: rows per tile; ``None``: the size measured fastest here
            (``micro_fast.tuning``) or the backend's default (always the default with
            ``shard``, so that every process splits the work alike).
        backend: ``"auto"`` or a name from ``micro_fast.backends.BACKENDS``.
        shard: this process's part of a loss split over processes (see the module
            docstring); every process must call with the same inputs and arguments.
        labels: the names of ``z1`` and ``z2`` in error messages.
        zero_rows: ``"error"`` (default: a row of zero norm raises, its cosine being undefined)
            or ``"zero"``: rows are normalized as the published code does (``F.normalize``, the
            norm clamped at 1e-12), so a zero row is a zero vector whose scores are all 0
            (``micro_fast.integrations`` use it for parity with the published code).

    Returns:
        scalar tensor, differentiable w.r.t. ``z1`` and ``z2`` (``loss / shard.count`` with
        this process's share of the gradients when ``shard`` is given).
    """
    check_float_2d("z1", z1)
    check_float_2d("z2", z2)
    if z1.shape != z2.shape:
        raise InputError(f"z1 and z2 must have the same shape, got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
    if z1.dtype != z2.dtype:
        raise InputTypeError(f"z2 dtype {z2.dtype} differs from z1 dtype {z1.dtype}")
    if z1.device != z2.device:
        raise InputError(f"z2 is on {z2.device} but z1 is on {z1.device}")
    if z1.shape[0] == 0 or z1.shape[1] == 0:
        raise InputError(f"z1 must be non-empty, got shape {tuple(z1.shape)}")
    tau = check_tau(tau)
    block_size = check_block_size(block_size)
    n, d, elem = z1.shape[0], z1.shape[1], z1.element_size()
    plan = dispatch.plan("contrastive", backend, z1.device, rows=n)
    impl, name, measured = plan.module, plan.backend, plan.block_size
    # normalized views and their gradients, and the backend's working memory
    memory.check("contrastive_loss", 4 * n * d * elem
                 + memory.workspace(impl, "contrastive_loss", n=n, d=d, elem=elem),
                 f"N = {n}, d = {d}")
    if zero_rows not in ("error", "zero"):
        raise InputError(f"zero_rows must be 'error' or 'zero', got {zero_rows!r}")
    zero_ok = zero_rows == "zero"
    # zero rows are an error by default: their cosine is undefined, and normalizing them with a
    # clamped norm (F.normalize) scales rounding noise in the gradient by 1 / eps
    if zero_ok:
        n1 = torch.nn.functional.normalize(z1, dim=1)
        n2 = torch.nn.functional.normalize(z2, dim=1)
    else:
        n1, n2 = normalize_rows(z1), normalize_rows(z2)
    if shard is None:
        loss, _, _ = contrastive_loss_kernel(z1, z2, n1, n2, float(tau), bool(symmetric),
                                             block_size or measured, name, *labels, zero_ok)
        return loss
    # split over processes: the collectives run between the kernel calls, in eager mode
    for label, z in zip(labels, (z1, z2), strict=True):
        check_values(label, z)
        if not zero_ok:
            check_nonzero_rows(label, z)
    return _ContrastiveLoss.apply(n1, n2, float(tau), bool(symmetric), block_size, impl, shard)
