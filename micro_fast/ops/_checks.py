"""Argument checks shared by the ops: every bad input becomes an exception naming it."""

from __future__ import annotations

import math

import torch

from micro_fast.errors import InputError, InputTypeError

FLOAT_DTYPES = (torch.float32, torch.float64)


def any_true(flags: torch.Tensor) -> bool:
    """``flags.any()`` read back to the host: the one place a CPU value check reads a value
    (the GPU paths assert on the device instead)."""
    return bool(flags.any())


def check_float_2d(name: str, t: object) -> torch.Tensor:
    """A 2-D float32/float64 tensor (no value checks)."""
    if not isinstance(t, torch.Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 2:
        raise InputError(f"{name} must be 2-D [rows, dim], got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise InputTypeError(f"{name} must be float32 or float64, got {t.dtype}")
    return t


def check_matrix(name: str, t: object) -> torch.Tensor:
    """A finite, non-empty, 2-D float32/float64 tensor."""
    check_float_2d(name, t)
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise InputError(f"{name} must be non-empty, got shape {tuple(t.shape)}")
    return check_values(name, t)


def check_values(name: str, t: torch.Tensor) -> torch.Tensor:
    """No NaN or inf in ``t``: an ``InputError`` on the CPU; on a GPU an asynchronous device
    assertion instead (``torch._assert_async``), which reads nothing back to the host and fails
    the next synchronizing call."""
    # one pass without a temporary as large as t: NaN and inf both surface in the extremes
    lo, hi = torch.aminmax(t.detach())
    ok = torch.isfinite(lo) & torch.isfinite(hi)
    if t.device.type == "cpu":
        if not bool(ok):
            raise InputError(f"{name} contains NaN or inf")
    else:
        torch._assert_async(ok, f"{name} contains NaN or inf")
    return t


def check_k(k: object, n: int, what: str = "keys") -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise InputTypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1 or k > n:
        raise InputError(f"k must be in [1, {n}] (the number of {what}), got {k}")
    return k


def check_tau(tau: object) -> float:
    if isinstance(tau, bool) or not isinstance(tau, int | float) or not math.isfinite(tau) \
            or tau <= 0:
        raise InputError(f"tau must be a positive finite number, got {tau!r}")
    return float(tau)


def check_block_size(block_size: object) -> int | None:
    if block_size is None:
        return None
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise InputError(f"block_size must be a positive int or None, got {block_size!r}")
    return block_size


def normalize_rows(t: torch.Tensor) -> torch.Tensor:
    """Rows divided by their L2 norm (differentiable; a zero row gives NaN: check it with
    ``check_nonzero_rows``)."""
    return t / torch.linalg.vector_norm(t, dim=1, keepdim=True)


def check_nonzero_rows(name: str, t: torch.Tensor) -> torch.Tensor:
    """No row of zero L2 norm in ``t`` (a cosine with it is undefined); on a GPU an asynchronous
    device assertion (see ``check_values``)."""
    _check_nonzero_norms(name, torch.linalg.vector_norm(t.detach(), dim=1))
    return t


def _check_nonzero_norms(name: str, norms: torch.Tensor) -> None:
    zero = norms == 0  # underflowing rows included
    if norms.device.type != "cpu":
        torch._assert_async(~zero.any(), f"{name} has zero-norm rows; cosine similarity is "
                            "undefined for them")
    elif bool(zero.any()):
        rows = torch.nonzero(zero).flatten()[:5].tolist()
        raise InputError(f"{name} has zero-norm rows (e.g. {rows}); cosine similarity is "
                         "undefined for them")


def l2_normalize(name: str, t: torch.Tensor) -> torch.Tensor:
    """Rows divided by their L2 norm (differentiable); a zero row is an error, not a NaN. The
    norms are computed once, for the check and the division (one pass fewer over ``t``)."""
    norms = torch.linalg.vector_norm(t, dim=1, keepdim=True)
    _check_nonzero_norms(name, norms.detach().squeeze(1))
    return t / norms


def check_no_overflow(queries: torch.Tensor, keys: torch.Tensor) -> None:
    """Rejects inputs whose inner products could overflow the dtype.

    By Cauchy-Schwarz every partial sum of <q, k> is bounded by |q| |k|, so bounding the product
    of the largest norms bounds every intermediate of every kernel. The cheap bound
    d max|q| max|k| settles almost every call; the row norms are computed (in float64, in row
    chunks) only when it does not. On a GPU both bounds are computed and asserted on the
    device (no read-back, see ``check_values``).
    """
    limit = torch.finfo(queries.dtype).max / 4

    def max_abs(t: torch.Tensor) -> torch.Tensor:
        lo, hi = torch.aminmax(t.detach())
        return torch.maximum(-lo, hi).double()

    def max_norm(t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        return torch.stack([torch.linalg.vector_norm(t[r:r + 4096].double(), dim=1).max()
                            for r in range(0, t.shape[0], 4096)]).max()

    qa = max_abs(queries)
    ka = qa if keys is queries else max_abs(keys)
    cheap = queries.shape[1] * qa * ka <= limit
    if queries.device.type != "cpu":
        qn = max_norm(queries)
        kn = qn if keys is queries else max_norm(keys)
        torch._assert_async(cheap | (qn * kn <= limit), "queries/keys magnitudes would "
                            "overflow the inner products; rescale the inputs")
        return
    if bool(cheap):
        return
    qn = max_norm(queries)
    kn = qn if keys is queries else max_norm(keys)
    if bool(qn * kn > limit):
        raise InputError(f"queries/keys magnitudes (max norms {float(qn):.3g}, {float(kn):.3g}) "
                         f"would overflow {queries.dtype} inner products; rescale the inputs")
