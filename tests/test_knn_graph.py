"""knn_graph against the published build_sim + build_knn_normalized_graph (a dense
re-implementation, ``peers.official_knn_graph``) and the dense float64 statement of
``oracles.knn_graph_exact``, gradients, and backends."""

from __future__ import annotations

import pytest
import torch
from bounds import assert_close, tolerance
from hypothesis import assume, given
from hypothesis import strategies as st
from oracles import knn_graph_exact, similarity_scores
from peers import official_knn_graph

from micro_fast import backends, knn_graph


@pytest.mark.parametrize("backend", backends.available("cpu"))
@pytest.mark.parametrize("normalization", ["sym", "rw", "none"])
@given(n=st.integers(2, 60), d=st.integers(1, 16), kfrac=st.floats(0, 1),
       seed=st.integers(0, 2**31 - 1), double=st.booleans())
def test_matches_official_dense_path(backend, normalization, n, d, kfrac, seed, double):
    gen = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if double else torch.float32
    # positive features keep every similarity (and so every degree) positive, as with CNN and
    # sentence features
    features = torch.rand(n, d, generator=gen, dtype=dtype) + 0.05
    k = max(1, min(n, round(kfrac * n)))
    # the published path keeps torch.topk's choice among near ties: compare only problems
    # whose k-th and (k+1)-th exact cosines are further apart than their rounding
    scores = similarity_scores(features, None, True)
    tol = tolerance(scores, dtype)
    ranked, order = torch.sort(scores.value, dim=1, descending=True)
    if k < n:
        gap = ranked[:, k - 1] - ranked[:, k]
        assume(bool((gap > tol.gather(1, order[:, k - 1:k + 1]).sum(1)).all()))
    g = knn_graph(features, k, normalization=normalization, backend=backend)
    assert g.shape == (n, n) and g.nnz == n * k
    g.validate()
    official = official_knn_graph(features.double(), k, normalization).to_dense()
    assert torch.equal(g.to_dense() != 0, official != 0), "the neighbours differ"
    idx = g.indices.reshape(n, k)
    values, _ = knn_graph_exact(features, idx, normalization)
    assert_close(g.values.reshape(n, k), values, what="values")
    # the published computation is the oracle's statement (both in float64)
    values64, _ = knn_graph_exact(features.double(), idx, normalization)
    assert_close(official.gather(1, idx), values64, what="published values")


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
    x = torch.rand(200, 12, generator=torch.Generator().manual_seed(0)) + 0.01
    g = knn_graph(x, 10)
    rows = g.row_indices()
    assert int((g.indices == rows).sum()) == 200


def test_graph_trains_end_to_end():
    gen = torch.Generator().manual_seed(1)
    x = (torch.rand(100, 8, generator=gen) + 0.1).requires_grad_()
    g = knn_graph(x, 5)
    emb = torch.randn(100, 4, generator=gen)
    out = torch.zeros(100, 4).index_add(0, g.row_indices(), g.values[:, None] * emb[g.indices])
    out.square().sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all()) and x.grad.abs().sum() > 0
