"""MICRO's contrastive loss statistics, by row blocks against all items (O(block x N)
scratch), JIT-compiled with numba for the CPU (see ``ops.contrastive_loss``)."""

from __future__ import annotations

import numpy as np
import torch

from micro_fast.backends.numba._jit import njit

#: Rows of a dense score block.
CONTRASTIVE_BLOCK = 1024


@njit(cache=True, nogil=True)
def _lse_rows(x, y, r0, inv_tau, skip_diag):
    s = np.dot(x, y.T) * inv_tau
    out = np.empty(x.shape[0], dtype=np.float64)
    for i in range(x.shape[0]):
        if skip_diag:
            s[i, r0 + i] = -np.inf
        m = s[i].max()
        out[i] = -np.inf if m == -np.inf else m + np.log(np.exp(s[i] - m).sum())
    return out


@njit(cache=True, nogil=True)
def _contrastive_forward_kernel(n1, n2, inv_tau, block, symmetric, lse1, lse2):
    n = n1.shape[0]
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        a = _lse_rows(n1[r0:r1], n1, r0, inv_tau, True)
        b = _lse_rows(n1[r0:r1], n2, r0, inv_tau, False)
        for i in range(r1 - r0):
            lse1[r0 + i] = np.logaddexp(a[i], b[i])
        if symmetric:
            a = _lse_rows(n2[r0:r1], n2, r0, inv_tau, True)
            b = _lse_rows(n2[r0:r1], n1, r0, inv_tau, False)
            for i in range(r1 - r0):
                lse2[r0 + i] = np.logaddexp(a[i], b[i])


@njit(cache=True, nogil=True)
def _contrastive_direction(x, y, lse, g, inv_tau, block, gx, gy):
    n = x.shape[0]
    for r0 in range(0, n, block):
        r1 = min(n, r0 + block)
        xb = x[r0:r1]
        for view in range(2):
            other = x if view == 0 else y
            w = np.dot(xb, other.T) * inv_tau
            for i in range(r1 - r0):
                scale = g[r0 + i] * inv_tau
                w[i] = np.exp(w[i] - lse[r0 + i]) * scale
                if view == 0:
                    w[i, r0 + i] = 0.0
            gx[r0:r1] += np.dot(w, other)
            if view == 0:
                gx += np.dot(w.T, xb)
            else:
                gy += np.dot(w.T, xb)


def contrastive_forward(n1: torch.Tensor, n2: torch.Tensor, tau: float, symmetric: bool,
                        block_size: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    a, b = n1.detach().numpy(), n2.detach().numpy()
    lse1 = np.empty(a.shape[0], dtype=a.dtype)
    lse2 = np.empty(a.shape[0] if symmetric else 0, dtype=a.dtype)
    _contrastive_forward_kernel(a, b, a.dtype.type(1.0 / tau), int(block_size or CONTRASTIVE_BLOCK),
                                bool(symmetric), lse1, lse2)
    return torch.from_numpy(lse1), torch.from_numpy(lse2) if symmetric else None


def contrastive_backward(n1: torch.Tensor, n2: torch.Tensor, tau: float, lse1: torch.Tensor,
                         lse2: torch.Tensor | None, g1: torch.Tensor, g2: torch.Tensor | None,
                         block_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = n1.detach().numpy(), n2.detach().numpy()
    grad1, grad2 = np.zeros_like(a), np.zeros_like(b)
    inv_tau = a.dtype.type(1.0 / tau)
    block = int(block_size or CONTRASTIVE_BLOCK)
    _contrastive_direction(a, b, lse1.numpy(), g1.numpy(), inv_tau, block, grad1, grad2)
    if lse2 is not None:
        _contrastive_direction(b, a, lse2.numpy(), g2.numpy(), inv_tau, block, grad2, grad1)
    return torch.from_numpy(grad1), torch.from_numpy(grad2)

