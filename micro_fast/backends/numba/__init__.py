"""Numba backend: the CPU kernels of ``csrc/cpu`` JIT-compiled with numba, one module per
concern as there (``topk``: the blocked top-k similarity; ``sparse``: CSR products and the
bipartite graph; ``contrastive``: the contrastive loss statistics; ``order``: the result
order that ``numba_cuda`` compiles too). The portable backend where no compiled extension is
present; numba itself is optional.
"""

from __future__ import annotations

import torch

from micro_fast.backends.numba._jit import import_error, numba
from micro_fast.backends.numba.contrastive import (
    CONTRASTIVE_BLOCK,
    contrastive_backward,
    contrastive_forward,
)
from micro_fast.backends.numba.sparse import bipartite_graph, sddmm, spmm
from micro_fast.backends.numba.topk import topk_similarity

__all__ = ["bipartite_graph", "contrastive_backward", "contrastive_forward",
           "is_available", "sddmm", "spmm", "supports", "topk_similarity"]


def is_available() -> tuple[bool, str]:
    if numba is not None:
        return True, ""
    return False, f"numba did not import: {import_error}"


def supports(device: torch.device) -> bool:
    return device.type == "cpu"


def workspace_bytes(op: str, *, m: int = 0, n: int = 0, d: int = 0, k: int = 0,
                    elem: int = 4, **_: int) -> int:
    """The numba kernels' working memory (see ``micro_fast.backends``)."""
    if op == "topk_similarity":  # private lists of the other workers, panel tiles
        return min((torch.get_num_threads() - 1) * m * k * (elem + 8), 256 << 20) \
            + torch.get_num_threads() * 16 * 512 * elem
    if op == "contrastive_loss":  # the dense [block, N] score blocks of both views
        return 2 * min(n, CONTRASTIVE_BLOCK) * n * elem + 2 * n * d * elem
    return 0
