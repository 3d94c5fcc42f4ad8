"""Triton backend: tensor-core kernels for the two hot ops on CUDA tensors.

* ``contrastive``  (micro_fast/backends/triton/contrastive.py): the fused InfoNCE loss,
  forward (online log-sum-exp) and a deterministic backward;
* ``topk``         (micro_fast/backends/triton/topk.py): the certified top-k search, a
  tensor-core screen whose candidates are rescored exactly.

The module follows the array contract of ``micro_fast.backends``. It runs CUDA tensors; with
``TRITON_INTERPRET=1`` (set before triton is imported) the same kernels run on CPU tensors in
Triton's interpreter, which is how the tests check them without a GPU. Triton itself is imported
on the first kernel call, not with this module: planning an op on a CPU tensor never pays for
it.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

import torch


def interpreted() -> bool:
    """Whether Triton runs its kernels in the interpreter (CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def is_available() -> tuple[bool, str]:
    if importlib.util.find_spec("triton") is None:
        return False, "triton is not installed (pip install triton)"
    if interpreted():
        return True, ""
    if not torch.cuda.is_available():
        return False, "torch sees no CUDA device"
    return True, ""


def supports(device: torch.device) -> bool:
    # the interpreter is for tests, which call the kernels directly: auto never plans it on CPU
    return device.type == "cuda"


def _contrastive():
    from micro_fast.backends.triton import contrastive

    return contrastive


def contrastive_forward(*args: Any, **kwargs: Any):
    """See ``micro_fast.backends.triton.contrastive.contrastive_forward``."""
    return _contrastive().contrastive_forward(*args, **kwargs)


def contrastive_backward(*args: Any, **kwargs: Any):
    """See ``micro_fast.backends.triton.contrastive.contrastive_backward``."""
    return _contrastive().contrastive_backward(*args, **kwargs)


def topk_similarity(*args: Any, **kwargs: Any):
    """See ``micro_fast.backends.triton.topk.topk_similarity`` (the certified search)."""
    from micro_fast.backends.triton import topk

    return topk.topk_similarity(*args, **kwargs)


def workspace_bytes(op: str, **sizes: int) -> int:
    """The kernels' working memory (see ``micro_fast.backends``)."""
    if op == "contrastive_loss":
        return _contrastive().workspace_bytes(op, **sizes)
    if op == "topk_similarity":
        from micro_fast.backends.triton import topk

        return topk.workspace_bytes(op, **sizes)
    return 0
