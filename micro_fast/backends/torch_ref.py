"""Pure-torch reference backend: the ground truth of every kernel, on any device."""

from __future__ import annotations

import torch

from micro_fast.errors import InputError

DEFAULT_BLOCK = 1024


def workspace_bytes(op: str, *, m: int = 0, n: int = 0, elem: int = 4, **_: int) -> int:
    """The dense [block, N] score blocks this backend computes in (see
    ``micro_fast.backends``)."""
    if op == "topk_similarity":
        return 3 * min(m, DEFAULT_BLOCK) * n * elem
    if op == "contrastive_loss":
        return 4 * min(n, DEFAULT_BLOCK) * n * elem
    return 0


def is_available() -> tuple[bool, str]:
    return True, ""


def supports(device: torch.device) -> bool:
    return True


def _exclude_mask(indptr: torch.Tensor, indices: torch.Tensor, r0: int, r1: int, n: int,
                  device: torch.device) -> torch.Tensor:
    lo, hi = int(indptr[r0]), int(indptr[r1])
    counts = indptr[r0 + 1 : r1 + 1] - indptr[r0:r1]
    rows = torch.repeat_interleave(torch.arange(r1 - r0, device=device), counts)
    mask = torch.zeros((r1 - r0, n), dtype=torch.bool, device=device)
    mask[rows, indices[lo:hi]] = True
    return mask


def topk_similarity(queries: torch.Tensor, keys: torch.Tensor | None, k: int,
                    exclude: tuple[torch.Tensor, torch.Tensor] | None,
                    block_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    keys = queries if keys is None else keys
    m, n = queries.shape[0], keys.shape[0]
    block = block_size or DEFAULT_BLOCK
    values = torch.empty((m, k), dtype=queries.dtype, device=queries.device)
    indices = torch.empty((m, k), dtype=torch.int64, device=queries.device)
    neg_inf = float("-inf")
    for r0 in range(0, m, block):
        r1 = min(m, r0 + block)
        sim = queries[r0:r1] @ keys.T
        if exclude is not None:
            sim.masked_fill_(_exclude_mask(exclude[0], exclude[1], r0, r1, n, sim.device), neg_inf)
        # a stable descending sort keeps equal values in index order: ties go to the smaller index
        v, i = torch.sort(sim, dim=1, descending=True, stable=True)
        v, i = v[:, :k], i[:, :k]
        i = i.masked_fill(v == neg_inf, -1)
        values[r0:r1] = v
        indices[r0:r1] = i
    return values, indices


def _rows(indptr: torch.Tensor) -> torch.Tensor:
    counts = indptr[1:] - indptr[:-1]
    return torch.repeat_interleave(torch.arange(counts.numel(), device=indptr.device), counts)


def spmm(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor,
         x: torch.Tensor) -> torch.Tensor:
    y = torch.zeros((indptr.numel() - 1, x.shape[1]), dtype=x.dtype, device=x.device)
    return y.index_add_(0, _rows(indptr), values.unsqueeze(1) * x[indices])


def sddmm(indptr: torch.Tensor, indices: torch.Tensor, a: torch.Tensor,
          b: torch.Tensor) -> torch.Tensor:
    return (a[_rows(indptr)] * b[indices]).sum(dim=1)


def _u64(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN, _MIX1, _MIX2 = _u64(0x9E3779B97F4A7C15), _u64(0xBF58476D1CE4E5B9), _u64(0x94D049BB133111EB)


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 words (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64 on int64 words, wrapping as the unsigned arithmetic of csrc/cpu does."""
    x = x + _GOLDEN
    x = (x ^ _shr(x, 30)) * _MIX1
    x = (x ^ _shr(x, 27)) * _MIX2
    return x ^ _shr(x, 31)


def project_rows_forward(x: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None) -> torch.Tensor:
    xr = x.index_select(0, rows)
    return xr @ weight.t() if bias is None else torch.addmm(bias, xr, weight.t())


def project_rows_backward(x: torch.Tensor, rows: torch.Tensor, weight: torch.Tensor,
                          grad: torch.Tensor, need_x: bool, need_weight: bool,
                          ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    grad_x = grad_w = None
    if need_x:
        grad_x = torch.zeros_like(x).index_copy_(0, rows, grad @ weight)
    if need_weight:
        grad_w = grad.t() @ x.index_select(0, rows)
    return grad_x, grad_w


def sample_edges(weights: torch.Tensor, m: int, seed: int) -> torch.Tensor:
    n = weights.numel()
    base = _mix(torch.tensor([_u64(seed % (1 << 64))], dtype=torch.int64))
    words = _mix(base ^ _mix(torch.arange(n, dtype=torch.int64, device=weights.device)))
    u = (_shr(words, 11).double() + 0.5) * 2.0 ** -53
    w = weights.double()
    keys = torch.where(w > 0, -torch.log(u) / w, torch.full_like(w, float("inf")))
    # the m smallest keys, ties to the smaller id (a stable sort)
    order = torch.sort(keys, stable=True).indices[:m]
    return torch.sort(order).values


def bipartite_graph(users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int,
                    normalization: str, self_loops: bool, duplicates: str,
                    dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = n_users + n_items
    dev = users.device
    key = torch.unique(users * max(n_items, 1) + items, return_counts=True)
    pairs, counts = key
    if duplicates == "error" and bool((counts > 1).any()):
        raise InputError("users/items: duplicate interaction")
    u = torch.div(pairs, max(n_items, 1), rounding_mode="floor")
    i = pairs - u * max(n_items, 1)
    w = counts.to(dtype)
    rows = [u, i + n_users]
    cols = [i + n_users, u]
    vals = [w, w]
    if self_loops:
        diag = torch.arange(n, device=dev)
        rows.append(diag)
        cols.append(diag)
        vals.append(torch.ones(n, dtype=dtype, device=dev))
    r, c, v = torch.cat(rows), torch.cat(cols), torch.cat(vals)
    order = torch.argsort(r * max(n, 1) + c)
    r, c, v = r[order], c[order], v[order]
    deg = torch.zeros(n, dtype=dtype, device=dev).index_add_(0, r, v)
    if normalization != "none":
        power = 0.5 if normalization == "sym" else 1.0
        scale = torch.where(deg == 0, torch.zeros_like(deg), deg.clamp_min(1e-300).pow(-power))
        v = v * scale[r] * (scale[c] if normalization == "sym" else 1)
    indptr = torch.zeros(n + 1, dtype=torch.int64, device=dev)
    torch.cumsum(torch.bincount(r, minlength=n), 0, out=indptr[1:])
    return indptr, c, v


def _lse_blocks(x: torch.Tensor, y: torch.Tensor, tau: float, skip_diag: bool,
                block: int) -> torch.Tensor:
    """log sum_j exp(<x_i, y_j> / tau) per row i, optionally without j == i, in row blocks."""
    out = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for r0 in range(0, x.shape[0], block):
        s = x[r0:r0 + block] @ y.T / tau
        if skip_diag:
            rows = torch.arange(s.shape[0], device=x.device)
            s[rows, rows + r0] = float("-inf")
        out[r0:r0 + block] = torch.logsumexp(s, dim=1)
    return out


def contrastive_forward(n1: torch.Tensor, n2: torch.Tensor, tau: float, symmetric: bool,
                        block_size: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    block = block_size or DEFAULT_BLOCK
    lse1 = torch.logaddexp(_lse_blocks(n1, n1, tau, True, block),
                           _lse_blocks(n1, n2, tau, False, block))
    if not symmetric:
        return lse1, None
    lse2 = torch.logaddexp(_lse_blocks(n2, n2, tau, True, block),
                           _lse_blocks(n2, n1, tau, False, block))
    return lse1, lse2


def _weights(x: torch.Tensor, y: torch.Tensor, tau: float, lse: torch.Tensor, g: torch.Tensor,
             r0: int, skip_diag: bool) -> torch.Tensor:
    w = torch.exp(x @ y.T / tau - lse[r0:r0 + x.shape[0], None]) * (g[r0:r0 + x.shape[0], None]
                                                                    / tau)
    if skip_diag:
        rows = torch.arange(w.shape[0], device=w.device)
        w[rows, rows + r0] = 0
    return w


def contrastive_backward(n1: torch.Tensor, n2: torch.Tensor, tau: float, lse1: torch.Tensor,
                         lse2: torch.Tensor | None, g1: torch.Tensor, g2: torch.Tensor | None,
                         block_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    block = block_size or DEFAULT_BLOCK
    grad1, grad2 = torch.zeros_like(n1), torch.zeros_like(n2)
    views = [(n1, n2, lse1, g1, grad1, grad2)]
    if lse2 is not None:
        views.append((n2, n1, lse2, g2, grad2, grad1))
    for x, y, lse, g, gx, gy in views:  # direction x -> y, rows of x own the sums
        for r0 in range(0, x.shape[0], block):
            xb = x[r0:r0 + block]
            w_intra = _weights(xb, x, tau, lse, g, r0, True)
            gx[r0:r0 + block] += w_intra @ x
            gx += w_intra.T @ xb
            w_cross = _weights(xb, y, tau, lse, g, r0, False)
            gx[r0:r0 + block] += w_cross @ y
            gy += w_cross.T @ xb
    return grad1, grad2
