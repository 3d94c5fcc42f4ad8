r"""A linear projection of some rows of a matrix: MMRec's models project trainable raw features
(FREEDOM's 4096-d image features) and use only the rows of a batch's items.

.. math:: z_r = x_{\mathrm{rows}_r} W^T + b, \qquad r < R

for ``x`` [N, D], distinct ascending ``rows`` [R], ``weight`` W [F, D] and ``bias`` b [F]. It is
``torch.nn.functional.linear(x, weight, bias)[rows]`` without projecting the other rows, and
its gradients are that expression's: :math:`\partial L / \partial x` is dense [N, D] (what
autograd accumulates into ``x.grad``), :math:`G W` at the rows ``rows`` and zero elsewhere;
:math:`\partial L / \partial W = G^T x_{\mathrm{rows}}`; :math:`\partial L / \partial b =
\sum_r G_r`. The compiled backend reads and writes the rows in place through row pointer
tables (no gathered copy of ``x``); the kernels are the custom operators
``torch.ops.micro_fast.project_rows`` and ``project_rows_backward``; backends without them
(numba, the GPU ones) run torch's products. Values of ``x`` are not
scanned (a hot path over a features-sized matrix); NaN or inf reaching the projected rows is an
error naming the inputs.
"""

from __future__ import annotations

import torch

from micro_fast import dispatch
from micro_fast.errors import InputError, InputTypeError
from micro_fast.ops._checks import any_true, check_float_2d


def _impl(backend: str, device: torch.device):
    # a backend without the kernel (numba, the GPU ones) runs torch's: one dense product
    # (micro_fast.dispatch.NAMED_FALLBACK)
    return dispatch.plan("project_rows", backend, device).module


def _check_rows(rows: torch.Tensor, n: int) -> None:
    if not rows.numel():
        return
    bad_order = (rows[1:] <= rows[:-1]).any()
    bad_range = (rows[:1] < 0) | (rows[-1:] >= n)
    if rows.device.type != "cpu":
        torch._assert_async(~bad_order, "rows must be strictly increasing (distinct, ascending)")
        torch._assert_async(~bad_range.any(), f"rows must be in [0, {n}) (the rows of x)")
        return
    if any_true(bad_order):
        raise InputError("rows must be strictly increasing (distinct, ascending)")
    if any_true(bad_range):
        raise InputError(f"rows must be in [0, {n}) (the rows of x)")


@torch.library.custom_op("micro_fast::project_rows", mutates_args=())
def project_rows_kernel(x: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor | None, backend: str) -> torch.Tensor:
    """``x[rows] weight^T + bias`` [R, F]; ``rows`` out of order or range and non-finite
    results are errors (checked here, out of the compiler's sight)."""
    _check_rows(rows, x.shape[0])
    impl = _impl(backend, x.device)
    z = impl.project_rows_forward(x.detach().contiguous(), rows.contiguous(),
                                  weight.detach().contiguous(),
                                  None if bias is None else bias.detach().contiguous())
    z = z.to(x.device)
    bad = ~torch.isfinite(z)
    message = "x[rows], weight or bias contains NaN or inf (the projected rows are not finite)"
    if z.device.type != "cpu":
        torch._assert_async(~bad.any(), message)
    elif z.numel() and any_true(bad):
        raise InputError(message)
    return z


@project_rows_kernel.register_fake
def _(x, rows, weight, bias, backend):
    return x.new_empty(rows.shape[0], weight.shape[0])


@torch.library.custom_op("micro_fast::project_rows_backward", mutates_args=())
def project_rows_backward_kernel(x: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor,
                                 grad: torch.Tensor, need_x: bool, need_weight: bool,
                                 backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(grad_x [N, D], grad_weight [F, D])`` of ``sum(grad * z)`` (empty [0] when not
    needed)."""
    impl = _impl(backend, x.device)
    gx, gw = impl.project_rows_backward(x.detach().contiguous(), rows.contiguous(),
                                        weight.detach().contiguous(),
                                        grad.detach().contiguous(), need_x, need_weight)
    empty = x.new_empty(0)
    return (empty if gx is None else gx.to(x.device)), (empty if gw is None
                                                       else gw.to(x.device))


@project_rows_backward_kernel.register_fake
def _(x, rows, weight, grad, need_x, need_weight, backend):
    return (torch.empty_like(x) if need_x else x.new_empty(0),
            torch.empty_like(weight) if need_weight else x.new_empty(0))


def _setup(ctx, inputs, output):
    x, rows, weight, bias, backend = inputs
    ctx.save_for_backward(x, rows, weight)
    ctx.backend, ctx.has_bias = backend, bias is not None


def _backward(ctx, grad):
    x, rows, weight = ctx.saved_tensors
    need_x, need_w, need_b = (ctx.needs_input_grad[0], ctx.needs_input_grad[2],
                              ctx.has_bias and ctx.needs_input_grad[3])
    grad_x = grad_w = grad_b = None
    if need_x or need_w:
        gx, gw = project_rows_backward_kernel(x, rows, weight, grad, need_x, need_w,
                                              ctx.backend)
        grad_x, grad_w = (gx if need_x else None), (gw if need_w else None)
    if need_b:
        grad_b = grad.sum(dim=0)
    return grad_x, None, grad_w, grad_b, None


project_rows_kernel.register_autograd(_backward, setup_context=_setup)


def project_rows(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 rows: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """``torch.nn.functional.linear(x, weight, bias)[rows]``, projecting only ``rows``.

    Args:
        x: float32/float64 [N, D].
        weight: [F, D], same dtype and device. bias: [F] or ``None``.
        rows: int64 [R], strictly increasing, in [0, N) (e.g. ``torch.unique`` of a batch's
            items), on the device of ``x``.
        backend: ``"auto"`` or a name from ``micro_fast.backends.BACKENDS``.

    Returns:
        [R, F], differentiable w.r.t. ``x``, ``weight`` and ``bias``.
    """
    check_float_2d("x", x)
    check_float_2d("weight", weight)
    if weight.shape[1] != x.shape[1]:
        raise InputError(f"weight must be [F, {x.shape[1]}] (x has {x.shape[1]} columns), "
                         f"got {tuple(weight.shape)}")
    if weight.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(f"x and weight must have columns and weight rows, got x "
                         f"{tuple(x.shape)} and weight {tuple(weight.shape)}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise InputTypeError(f"{name} must have the dtype and device of x ({x.dtype}, "
                                 f"{x.device}), got {t.dtype} on {t.device}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise InputError(f"bias must be [{weight.shape[0]}], got {tuple(bias.shape)}")
    if not isinstance(rows, torch.Tensor) or rows.dtype != torch.int64 or rows.dim() != 1:
        raise InputTypeError("rows must be a 1-D int64 tensor")
    if rows.device != x.device:
        raise InputError(f"rows is on {rows.device} but x is on {x.device}")
    # "auto" on a CPU: whichever of the compiled kernels and torch's was measured faster here
    plan = dispatch.plan("project_rows", backend, x.device)
    return project_rows_kernel(x, rows, weight, bias, plan.backend)
