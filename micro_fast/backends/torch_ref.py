"""Pure-torch reference backend: the ground truth of every kernel, on any device."""

from __future__ import annotations

import torch

DEFAULT_BLOCK = 1024


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
