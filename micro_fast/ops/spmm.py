r"""Sparse x dense product with a CSR graph, differentiable w.r.t. the dense input and the
graph's values.

For :math:`A \in R^{M \times N}` (a ``CSRGraph``) and :math:`X \in R^{N \times d}`:

.. math:: Y = A X, \qquad \frac{\partial L}{\partial X} = A^T \frac{\partial L}{\partial Y},
          \qquad \frac{\partial L}{\partial a_{ij}} = \Big\langle \frac{\partial L}
          {\partial Y}_{i,:}, X_{j,:} \Big\rangle

The backward w.r.t. :math:`X` runs the same kernel on the graph's transpose, built once per
graph structure by a counting sort and cached (a graph declared ``symmetric`` uses itself); the
backward w.r.t. the values is a sampled dense-dense product at the stored entries only.
NaN or inf in ``x`` propagate as in dense arithmetic; they are not checked on this hot path.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from micro_fast import backends, memory, tuning
from micro_fast.errors import InputError, InputTypeError
from micro_fast.graph import CSRGraph
from micro_fast.ops._checks import check_float_2d


def transpose_product(impl, graph: CSRGraph, g: torch.Tensor) -> torch.Tensor:
    """``A^T g`` with the cached transpose (or ``A g`` for a symmetric graph)."""
    if graph.symmetric:
        return impl.spmm(graph.indptr, graph.indices, graph.values.detach(), g)
    t_indptr, t_indices = graph.transposed_structure()
    return impl.spmm(t_indptr, t_indices, graph.transposed_values(), g)


class _SpMM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, x, graph, impl):  # noqa: D102
        x_c = x.detach().contiguous()
        y = impl.spmm(graph.indptr, graph.indices, values.detach().contiguous(), x_c)
        ctx.graph, ctx.impl = graph, impl
        ctx.save_for_backward(x_c if ctx.needs_input_grad[0] else None)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):  # noqa: D102
        graph, impl = ctx.graph, ctx.impl
        grad_y = grad_y.contiguous()
        grad_values = grad_x = None
        if ctx.needs_input_grad[0]:
            (x,) = ctx.saved_tensors
            grad_values = impl.sddmm(graph.indptr, graph.indices, grad_y, x)
        if ctx.needs_input_grad[1]:
            grad_x = transpose_product(impl, graph, grad_y)
        return grad_values, grad_x, None, None


def check_operands(graph: object, x: object) -> None:
    if not isinstance(graph, CSRGraph):
        raise InputTypeError(f"graph must be a CSRGraph, got {type(graph).__name__}")
    check_float_2d("x", x)
    if x.dtype != graph.dtype:
        raise InputTypeError(f"x dtype {x.dtype} differs from graph values dtype {graph.dtype}")
    if x.device != graph.device:
        raise InputError(f"x is on {x.device} but graph is on {graph.device}")
    if x.shape[0] != graph.shape[1]:
        raise InputError(f"x has {x.shape[0]} rows but graph has {graph.shape[1]} columns")


def spmm(graph: CSRGraph, x: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """``graph @ x``.

    Args:
        graph: ``CSRGraph`` of shape (M, N); its ``values`` may require grad.
        x: float32/float64 [N, d], same dtype and device as ``graph.values``.
        backend: ``"auto"`` (on CPU tensors the backend measured fastest here, see
            ``micro_fast.tuning``) or a name from ``micro_fast.backends.BACKENDS``.

    Returns:
        [M, d] tensor of ``x``'s dtype.
    """
    check_operands(graph, x)
    impl = backends.get(tuning.backend_for("spmm", backend, x.device), x.device, op="spmm")
    # output, and in backward the gradient of x and the transposed structure
    memory.check("spmm", (graph.shape[0] + x.shape[0]) * x.shape[1] * x.element_size()
                 + graph.nnz * 24, f"[{graph.shape[0]}, {x.shape[1]}] output, {graph.nnz} nonzeros")
    return _SpMM.apply(graph.values, x, graph, impl)
