"""Assertions shared by the tests."""

from __future__ import annotations

import torch


def dense_similarity(queries, keys, normalize=False):
    q, k = queries.detach().double(), keys.detach().double()
    if normalize:
        q = q / q.norm(dim=1, keepdim=True)
        k = k / k.norm(dim=1, keepdim=True)
    return q @ k.T


def assert_topk_equal(values, indices, ref_values, ref_indices, sim, exclude_mask=None,
                      exact=False, rtol=1e-5):
    """Checks a top-k result against the reference.

    Values agree within ``rtol`` relative to the similarity scale. Indices are identical; where
    ``exact`` is false, a position may hold another key only when both keys' true similarities
    (``sim``, float64) are tied within the tolerance, since two correct kernels may round a near
    tie differently. Every returned pair is admissible and no key repeats in a row.
    """
    assert values.shape == ref_values.shape and indices.shape == ref_indices.shape
    assert indices.dtype == torch.int64 and values.dtype == ref_values.dtype
    scale = max(1.0, float(sim.abs().max())) if sim.numel() else 1.0
    tol = rtol * scale
    pad, ref_pad = indices < 0, ref_indices < 0
    assert torch.equal(pad, ref_pad), "padding (-1) positions differ"
    assert bool(torch.isneginf(values[pad]).all())
    v, rv = values[~pad].double(), ref_values[~pad].double()
    assert torch.allclose(v, rv, rtol=0, atol=tol), f"values differ by {(v - rv).abs().max()}"
    if exact:
        assert torch.equal(indices, ref_indices), "indices differ"
    else:
        diff = (indices != ref_indices) & ~pad
        if bool(diff.any()):
            rows = torch.nonzero(diff)[:, 0]
            s_got = sim[rows, indices[diff]]
            s_ref = sim[rows, ref_indices[diff]]
            assert torch.allclose(s_got, s_ref, rtol=0, atol=4 * tol), (
                "indices differ beyond a near tie")
    safe = indices.clamp_min(0)
    true_vals = torch.gather(sim, 1, safe)
    assert torch.allclose(true_vals[~pad], values[~pad].double(), rtol=0, atol=4 * tol)
    for r in range(indices.shape[0]):
        row = indices[r][indices[r] >= 0]
        assert row.unique().numel() == row.numel(), f"row {r} repeats a key"
    if exclude_mask is not None and bool((~pad).any()):
        rows = torch.nonzero(~pad)[:, 0]
        assert not bool(exclude_mask[rows, indices[~pad]].any()), "an excluded pair was returned"


def projection_problem(n: int, d: int, f: int, rows: list[int], seed: int):
    """float64 ``(x [n, d], weight [f, d], bias [f])`` requiring grad, and int64 ``rows``: a
    small ``project_rows`` problem for gradchecks and opchecks."""
    gen = torch.Generator().manual_seed(seed)
    x, w, b = (torch.randn(*shape, dtype=torch.float64, generator=gen).requires_grad_()
               for shape in ((n, d), (f, d), (f,)))
    return x, w, b, torch.tensor(rows)
