"""knn_graph against a dense re-implementation of the published build_sim +
build_knn_normalized_graph, gradients, and backends."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from micro_fast import knn_graph

official_knn_graph = pytest.importorskip("peers").official_knn_graph




@pytest.mark.parametrize("normalization", ["sym", "rw", "none"])
@given(n=st.integers(2, 60), d=st.integers(1, 16), kfrac=st.floats(0, 1),
       seed=st.integers(0, 2**31 - 1), double=st.booleans())
def test_matches_official_dense_path(cpu_backend, normalization, n, d, kfrac, seed, double):
    gen = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if double else torch.float32
    # positive features keep every similarity (and so every degree) positive, as with CNN and
    # sentence features
    features = torch.rand(n, d, generator=gen, dtype=dtype) + 0.05
    k = max(1, min(n, round(kfrac * n)))
    sim = torch.nn.functional.normalize(features.double(), dim=1)
    sim = sim @ sim.T
    # torch.topk may order exact ties either way; only tie-free problems are comparable
    top = torch.sort(sim, dim=1, descending=True).values
    if k < n and bool(((top[:, k - 1] - top[:, k]).abs() < 1e-6).any()):
        return
    g = knn_graph(features, k, normalization=normalization, backend=cpu_backend)
    assert g.shape == (n, n) and g.nnz == n * k
    g.validate()
    expected = official_knn_graph(features, k, normalization).to_dense()
    tol = 1e-5 if double else 2e-5
    assert torch.allclose(g.to_dense(), expected, atol=tol, rtol=tol)


@pytest.mark.parametrize("normalization", ["sym", "rw", "none"])
@pytest.mark.parametrize("backend", ["torch_ref", "cpp", "numba"])
def test_gradcheck(backend, normalization):
    from micro_fast import backends

    if backend not in backends.available():
        pytest.skip(f"{backend} not available")
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(25, 6, generator=gen, dtype=torch.float64) + 0.1).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda f: knn_graph(f, 5, normalization=normalization, backend=backend).values, (x,))


def test_every_item_keeps_itself():
    x = torch.rand(200, 12) + 0.01
    g = knn_graph(x, 10)
    rows = g.row_indices()
    assert int((g.indices == rows).sum()) == 200


def test_graph_trains_end_to_end():
    x = (torch.rand(100, 8) + 0.1).requires_grad_()
    g = knn_graph(x, 5)
    emb = torch.randn(100, 4)
    out = torch.zeros(100, 4).index_add(0, g.row_indices(), g.values[:, None] * emb[g.indices])
    out.square().sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and x.grad.abs().sum() > 0
