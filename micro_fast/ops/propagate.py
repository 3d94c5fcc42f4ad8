r"""Multi-layer propagation over a graph: the item graph convolution of MICRO / LATTICE and
the LightGCN backbone.

With :math:`H_0 = X` and :math:`H_{l+1} = A H_l` for :math:`l < L`:

* ``combine="last"``: :math:`H_L`
* ``combine="mean"``: :math:`\frac{1}{L+1} \sum_{l=0}^{L} H_l` (LightGCN's layer average,
  layer 0 included)

Each product is one ``micro_fast::spmm`` operator, so backward walks the layers in reverse,
:math:`G_l = c_l \bar G + A^T G_{l+1}` (:math:`c_l` the layer's weight in the combination), and
adds :math:`\langle G_{l+1}, H_l \rangle` at the stored entries when the values require grad;
the intermediate layers are kept only in that case. ``torch.compile`` traces it without graph
breaks. The graph may be a torch sparse tensor or scipy matrix, converted once (cached) by
``micro_fast.interop.as_graph``.
"""

from __future__ import annotations

import torch

from micro_fast import memory
from micro_fast.errors import InputError
from micro_fast.interop import GraphLike
from micro_fast.ops.spmm import apply_spmm, check_operands, resolve_backend

COMBINES = ("last", "mean")


def propagate(graph: GraphLike, x: torch.Tensor, layers: int, *, combine: str = "last",
              backend: str = "auto") -> torch.Tensor:
    """``layers`` rounds of ``graph @ h`` starting from ``x``, combined as ``combine``.

    Args:
        graph: square ``CSRGraph`` (N, N), or a torch sparse COO/CSR tensor or scipy.sparse
            matrix (converted once, cached: ``micro_fast.interop``); values may require grad.
        x: float32/float64 [N, d].
        layers: number of products, >= 0 (0 returns ``x``).
        combine: ``"last"`` or ``"mean"`` (see the module docstring).

    Returns:
        [N, d] tensor.
    """
    graph = check_operands(graph, x)
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
    name = resolve_backend(backend, x.device)
    # each product is one micro_fast::spmm node: its backward saves its input only when the
    # graph's values need a gradient, as one fused node would
    h = x
    total = x if combine == "mean" else None
    for _ in range(layers):
        h = apply_spmm(graph, h, name)
        if total is not None:
            total = total + h
    return total / (layers + 1) if total is not None else h
