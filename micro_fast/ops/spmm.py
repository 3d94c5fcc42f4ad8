r"""Sparse x dense product with a CSR graph, differentiable w.r.t. the dense input and the
graph's values.

For :math:`A \in R^{M \times N}` (a ``CSRGraph``) and :math:`X \in R^{N \times d}`:

.. math:: Y = A X, \qquad \frac{\partial L}{\partial X} = A^T \frac{\partial L}{\partial Y},
          \qquad \frac{\partial L}{\partial a_{ij}} = \Big\langle \frac{\partial L}
          {\partial Y}_{i,:}, X_{j,:} \Big\rangle

The backward w.r.t. :math:`X` runs the same kernel on the graph's transpose, built once per
graph structure by a stable sort and cached (a graph declared ``symmetric`` uses itself); the
backward w.r.t. the values is a sampled dense-dense product at the stored entries only.
NaN or inf in ``x`` propagate as in dense arithmetic; they are not checked on this hot path.

The kernels are the custom operators ``torch.ops.micro_fast.spmm`` and
``torch.ops.micro_fast.sddmm`` (with fake implementations and a registered backward), so
``torch.compile`` traces ``spmm`` without graph breaks and ``torch.library.opcheck`` checks them.
Eager calls on plain tensors run the same kernels and backward without the dispatcher, whose
overhead is about half of a small product's time.

The graph may also be a torch sparse COO/CSR tensor or a scipy.sparse matrix: converted to a
``CSRGraph`` once per object and cached (``micro_fast.interop.as_graph``), differentiable w.r.t.
a torch sparse tensor's values as ``torch.sparse.mm`` is.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable
from torch.utils._python_dispatch import _get_current_dispatch_mode as _current_dispatch_mode

from micro_fast import dispatch, memory
from micro_fast.errors import InputError, InputTypeError
from micro_fast.graph import CSRGraph
from micro_fast.interop import GraphLike, as_graph
from micro_fast.ops._checks import check_float_2d


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend ``backend`` runs spmm with on ``device`` (``micro_fast.dispatch``)."""
    return dispatch.plan("spmm", backend, device).backend


@torch.library.custom_op("micro_fast::spmm", mutates_args=())
def spmm_kernel(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor,
                x: torch.Tensor, t_indptr: torch.Tensor, t_indices: torch.Tensor,
                t_values: torch.Tensor, backend: str) -> torch.Tensor:
    """``A x`` for the CSR arrays of A; ``t_*`` are the arrays of A^T (the same tensors for a
    symmetric A), used by the backward only. Operands are checked by ``spmm``."""
    return _product(indptr, indices, values, x, backend)


def _product(indptr, indices, values, x, backend: str, partition=None) -> torch.Tensor:
    impl = dispatch.module(backend)
    args = (indptr, indices, values.detach().contiguous(), x.detach().contiguous())
    # partition: the cuda backend's cached work partition of the structure (only cuda takes it)
    return impl.spmm(*args) if partition is None else impl.spmm(*args, partition)


def _sampled(indptr, indices, a, b, backend: str, partition=None) -> torch.Tensor:
    impl = dispatch.module(backend)
    args = (indptr, indices, a.contiguous(), b.contiguous())
    return impl.sddmm(*args) if partition is None else impl.sddmm(*args, partition)


#: Key of the cuda backend's work partition in a structure's cache (``CSRGraph.derived``).
_PARTITION_KEY = "cuda.csr_partition"


def _partitions(graph: CSRGraph, backend: str, transposed: bool) -> tuple | None:
    """For the cuda backend, the work partitions of the graph's structure and (when
    ``transposed``, for a backward w.r.t. x) of its transpose: built on first use and cached
    with the structure, like the transpose. ``None`` for the other backends."""
    if backend != "cuda":
        return None
    build = dispatch.module(backend).csr_partition
    return (graph.derived(_PARTITION_KEY, build),
            graph.derived(_PARTITION_KEY, build, transposed=True) if transposed else None)


@spmm_kernel.register_fake
def _(indptr, indices, values, x, t_indptr, t_indices, t_values, backend):
    return x.new_empty(indptr.shape[0] - 1, x.shape[1])


@torch.library.custom_op("micro_fast::sddmm", mutates_args=())
def sddmm_kernel(indptr: torch.Tensor, indices: torch.Tensor, a: torch.Tensor,
                 b: torch.Tensor, backend: str) -> torch.Tensor:
    """``<a[r], b[c]>`` at every stored entry (r, c) of the CSR structure: [nnz]."""
    return _sampled(indptr, indices, a, b, backend)


@sddmm_kernel.register_fake
def _(indptr, indices, a, b, backend):
    return a.new_empty(indices.shape[0])


def _setup_spmm(ctx, inputs, output):
    indptr, indices, values, x, t_indptr, t_indices, t_values, backend = inputs
    ctx.backend = backend
    ctx.save_for_backward(indptr, indices, values.detach(),
                          x if ctx.needs_input_grad[2] else None, t_indptr, t_indices, t_values)


def _spmm_backward(ctx, grad_y):
    indptr, indices, values, x, t_indptr, t_indices, t_values = ctx.saved_tensors
    grad_values = grad_x = None
    if ctx.needs_input_grad[2]:
        grad_values = sddmm_kernel(indptr, indices, grad_y, x, ctx.backend)
    if ctx.needs_input_grad[3]:
        # A^T grad_y; A is the transpose of A^T (for a backward of this backward)
        grad_x = spmm_kernel(t_indptr, t_indices, t_values.detach(), grad_y, indptr, indices,
                             values, ctx.backend)
    return None, None, grad_values, grad_x, None, None, None, None


spmm_kernel.register_autograd(_spmm_backward, setup_context=_setup_spmm)


class _EagerSpMM(torch.autograd.Function):
    """The same kernels and backward as ``micro_fast::spmm``, without the dispatcher's 30 to
    40 microseconds a call (half of a small product's time): what eager calls run."""

    @staticmethod
    def forward(ctx, values, x, indptr, indices, t_indptr, t_indices, t_values, backend,  # noqa: D102
                parts=None):
        ctx.backend = backend
        ctx.parts = parts or (None, None)  # (partition, transposed partition): cuda only
        ctx.save_for_backward(indptr, indices, x.detach() if ctx.needs_input_grad[0] else None,
                              t_indptr, t_indices, t_values)
        return _product(indptr, indices, values, x, backend, ctx.parts[0])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):  # noqa: D102
        indptr, indices, x, t_indptr, t_indices, t_values = ctx.saved_tensors
        grad_y = grad_y.contiguous()
        part, t_part = ctx.parts
        grad_values = _sampled(indptr, indices, grad_y, x, ctx.backend, part) \
            if ctx.needs_input_grad[0] else None
        grad_x = _product(t_indptr, t_indices, t_values, grad_y, ctx.backend, t_part) \
            if ctx.needs_input_grad[1] else None
        return grad_values, grad_x, None, None, None, None, None, None, None


def eager_call(*tensors: torch.Tensor) -> bool:
    """Whether a call runs eagerly on plain tensors (no compiler, tracer or tensor subclass),
    where the ops may skip the dispatcher and call their kernels directly."""
    return (not torch.compiler.is_compiling() and _current_dispatch_mode() is None
            and all(type(t) in (torch.Tensor, torch.nn.Parameter) for t in tensors))


def transposed_arrays(graph: CSRGraph) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(indptr, indices, values)`` of the graph's transpose, detached (the graph's own
    arrays when it is symmetric); built once per structure and cached."""
    if graph.symmetric:
        return graph.indptr, graph.indices, graph.values.detach()
    t_indptr, t_indices = graph.transposed_structure()
    return t_indptr, t_indices, graph.transposed_values()


def apply_spmm(graph: CSRGraph, x: torch.Tensor, backend: str) -> torch.Tensor:
    """``graph @ x`` with the resolved backend name, operands already checked."""
    if eager_call(graph.values, x):
        parts = _partitions(graph, backend, x.requires_grad and torch.is_grad_enabled())
        return _EagerSpMM.apply(graph.values, x, graph.indptr, graph.indices,
                                *transposed_arrays(graph), backend, parts)
    return spmm_kernel(graph.indptr, graph.indices, graph.values, x, *transposed_arrays(graph),
                       backend)


def check_operands(graph: GraphLike, x: object) -> CSRGraph:
    """``graph`` as a ``CSRGraph`` (``interop.as_graph``: a torch sparse tensor or scipy matrix
    is converted once and cached), checked against ``x``."""
    graph = as_graph(graph, "graph")
    check_float_2d("x", x)
    if x.dtype != graph.dtype:
        raise InputTypeError(f"x dtype {x.dtype} differs from graph values dtype {graph.dtype}")
    if x.device != graph.device:
        raise InputError(f"x is on {x.device} but graph is on {graph.device}")
    if x.shape[0] != graph.shape[1]:
        raise InputError(f"x has {x.shape[0]} rows but graph has {graph.shape[1]} columns")
    return graph


def spmm(graph: GraphLike, x: torch.Tensor, *, backend: str = "auto") -> torch.Tensor:
    """``graph @ x``.

    Args:
        graph: ``CSRGraph`` of shape (M, N), or a torch sparse COO/CSR tensor or scipy.sparse
            matrix (converted once and cached, see ``micro_fast.interop``); its values may
            require grad.
        x: float32/float64 [N, d], same dtype and device as ``graph.values``.
        backend: ``"auto"`` (on CPU tensors the backend measured fastest here, see
            ``micro_fast.tuning``) or a name from ``micro_fast.backends.BACKENDS``.

    Returns:
        [M, d] tensor of ``x``'s dtype.
    """
    graph = check_operands(graph, x)
    name = resolve_backend(backend, x.device)
    # output, and in backward the gradient of x and the transposed structure; the kernel's
    # scratch (the cuda backend's partials and work partition)
    memory.check("spmm", (graph.shape[0] + x.shape[0]) * x.shape[1] * x.element_size()
                 + graph.nnz * 24
                 + memory.workspace(dispatch.module(name), "spmm", m=graph.shape[0],
                                    n=x.shape[0], d=x.shape[1], nnz=graph.nnz,
                                    elem=x.element_size()),
                 f"[{graph.shape[0]}, {x.shape[1]}] output, {graph.nnz} nonzeros")
    return apply_spmm(graph, x, name)
