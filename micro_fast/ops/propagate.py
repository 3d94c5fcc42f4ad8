r"""Multi-layer propagation over a graph: the item graph convolution of MICRO / LATTICE and
the LightGCN backbone.

With :math:`H_0 = X` and :math:`H_{l+1} = A H_l` for :math:`l < L`:

* ``combine="last"``: :math:`H_L`
* ``combine="mean"``: :math:`\frac{1}{L+1} \sum_{l=0}^{L} H_l` (LightGCN's layer average,
  layer 0 included)

One autograd node covers all layers. Backward walks the layers in reverse,
:math:`G_l = c_l \bar G + A^T G_{l+1}` (:math:`c_l` the layer's weight in the combination), and
adds :math:`\langle G_{l+1}, H_l \rangle` at the stored entries when the values require grad;
the intermediate layers are kept only in that case.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from micro_fast import backends, memory, tuning
from micro_fast.errors import InputError
from micro_fast.graph import CSRGraph
from micro_fast.ops.spmm import check_operands, transpose_product

COMBINES = ("last", "mean")


class _Propagate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, x, graph, impl, layers, combine):  # noqa: D102
        v = values.detach().contiguous()
        h = x.detach().contiguous()
        keep = ctx.needs_input_grad[0]
        hs = [h] if keep else []
        total = h.clone() if combine == "mean" else None
        for _ in range(layers):
            h = impl.spmm(graph.indptr, graph.indices, v, h)
            if total is not None:
                total += h
            if keep:
                hs.append(h)
        ctx.graph, ctx.impl, ctx.layers, ctx.combine = graph, impl, layers, combine
        if keep:
            ctx.save_for_backward(*hs[:-1])
        return total / (layers + 1) if total is not None else h

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):  # noqa: D102
        graph, impl, layers = ctx.graph, ctx.impl, ctx.layers
        g_bar = grad_out.contiguous()
        mean = ctx.combine == "mean"
        if mean:
            g_bar = g_bar / (layers + 1)
        hs = ctx.saved_tensors if ctx.needs_input_grad[0] else ()
        grad_values = None
        g = g_bar  # gradient w.r.t. H_L
        for layer in range(layers - 1, -1, -1):
            # g is the gradient w.r.t. H_{layer+1}
            if ctx.needs_input_grad[0]:
                gv = impl.sddmm(graph.indptr, graph.indices, g, hs[layer])
                grad_values = gv if grad_values is None else grad_values + gv
            g = transpose_product(impl, graph, g)
            if mean:
                g = g + g_bar
        return grad_values, (g if ctx.needs_input_grad[1] else None), None, None, None, None


def propagate(graph: CSRGraph, x: torch.Tensor, layers: int, *, combine: str = "last",
              backend: str = "auto") -> torch.Tensor:
    """``layers`` rounds of ``graph @ h`` starting from ``x``, combined as ``combine``.

    Args:
        graph: square ``CSRGraph`` (N, N); ``values`` may require grad.
        x: float32/float64 [N, d].
        layers: number of products, >= 0 (0 returns ``x``).
        combine: ``"last"`` or ``"mean"`` (see the module docstring).

    Returns:
        [N, d] tensor.
    """
    check_operands(graph, x)
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 0:
        raise InputError(f"layers must be a non-negative int, got {layers!r}")
    if combine not in COMBINES:
        raise InputError(f"combine must be one of {COMBINES}, got {combine!r}")
    if layers and graph.shape[0] != graph.shape[1]:
        raise InputError(f"graph must be square to propagate, got shape {graph.shape}")
    if layers == 0:
        return x
    memory.check("propagate", (layers + 2) * graph.shape[0] * x.shape[1] * x.element_size()
                 + graph.nnz * 24, f"{layers} layers of [{graph.shape[0]}, {x.shape[1]}]")
    impl = backends.get(tuning.backend_for("spmm", backend, x.device), x.device, op="spmm")
    return _Propagate.apply(graph.values, x, graph, impl, layers, combine)
