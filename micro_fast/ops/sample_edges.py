r"""Weighted sampling without replacement: FREEDOM's degree-sensitive edge pruning.

``sample_edges(weights, m)`` draws :math:`m` distinct ids of :math:`0..n-1`, one after another,
each with probability :math:`w_i / \sum_{j \text{ not drawn}} w_j`: the law of
``torch.multinomial(weights, m, replacement=False)``. It is computed in one O(n) pass as the
:math:`m` smallest exponential keys :math:`-\log(u_i) / w_i` (Efraimidis and Spirakis), with
:math:`u_i` a counter-based hash of ``(seed, i)``: the draw is a function of the seed alone,
the same on every backend and thread count. Ids are returned ascending. The kernel is the
custom operator ``torch.ops.micro_fast.sample_edges``; its value checks run inside it.
"""

from __future__ import annotations

import torch

from micro_fast import dispatch
from micro_fast.errors import InputError, InputTypeError
from micro_fast.ops._checks import FLOAT_DTYPES, any_true


@torch.library.custom_op("micro_fast::sample_edges", mutates_args=())
def sample_edges_kernel(weights: torch.Tensor, m: int, seed: int, backend: str) -> torch.Tensor:
    """The draw (``sample_edges``'s contract); weights finite, non-negative, with at least
    ``m`` positive entries (checked here, out of the compiler's sight)."""
    w = weights.detach()
    if w.numel() and any_true(~torch.isfinite(w) | (w < 0)):
        raise InputError("weights must be finite and non-negative")
    positive = int((w > 0).sum())
    if positive < m:
        raise InputError(f"weights has {positive} positive entries, fewer than m = {m}")
    impl = dispatch.module(backend)
    return impl.sample_edges(w.double().contiguous(), m, seed).to(weights.device)


@sample_edges_kernel.register_fake
def _(weights, m, seed, backend):
    return weights.new_empty(m, dtype=torch.int64)


def sample_edges(weights: torch.Tensor, m: int, *, seed: int | None = None,
                 generator: torch.Generator | None = None,
                 backend: str = "auto") -> torch.Tensor:
    """``m`` distinct ids drawn with probability proportional to ``weights``.

    Args:
        weights: float32/float64 [n], finite and >= 0, with at least ``m`` positive entries.
        m: how many ids, 0 <= m <= n.
        seed: the draw's seed (a non-negative int); ``None`` draws one from ``generator``
            (torch's default generator when that is ``None``, so ``torch.manual_seed`` fixes
            it).
        backend: ``"auto"`` or a name from ``micro_fast.backends.BACKENDS``.

    Returns:
        int64 [m], ascending, on the device of ``weights``.
    """
    if not isinstance(weights, torch.Tensor):
        raise InputTypeError(f"weights must be a torch.Tensor, got {type(weights).__name__}")
    if weights.dim() != 1:
        raise InputError(f"weights must be 1-D, got shape {tuple(weights.shape)}")
    if weights.dtype not in FLOAT_DTYPES:
        raise InputTypeError(f"weights must be float32 or float64, got {weights.dtype}")
    n = weights.numel()
    if isinstance(m, bool) or not isinstance(m, int) or not 0 <= m <= n:
        raise InputError(f"m must be an int in [0, {n}] (the number of weights), got {m!r}")
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    elif isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"seed must be a non-negative int, got {seed!r}")
    elif seed >= 2**63:
        raise InputError(f"seed must be below 2**63, got {seed!r}")
    name = dispatch.plan("sample_edges", backend, weights.device).backend
    return sample_edges_kernel(weights, m, seed, name)
