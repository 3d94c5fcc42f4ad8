"""Bad input gives a clear exception naming the argument, on every backend."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from micro_fast import CSRGraph, backends, knn_graph, topk_similarity

BACKENDS = backends.available("cpu")
x = torch.randn(10, 4)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call,exc,match", [
    (lambda b: topk_similarity(x, None, 0, backend=b), ValueError, "k must be in"),
    (lambda b: topk_similarity(x, None, 11, backend=b), ValueError, "k must be in"),
    (lambda b: topk_similarity(x, torch.randn(3, 4), 4, backend=b), ValueError, "k must be in"),
    (lambda b: topk_similarity(x, None, 2.0, backend=b), TypeError, "k must be an int"),
    (lambda b: topk_similarity(torch.randn(10), None, 2, backend=b), ValueError, "queries.*2-D"),
    (lambda b: topk_similarity(torch.randn(0, 4), None, 1, backend=b), ValueError,
     "queries.*non-empty"),
    (lambda b: topk_similarity(x, torch.randn(0, 4), 1, backend=b), ValueError,
     "keys.*non-empty"),
    (lambda b: topk_similarity(torch.ones(3, 2, dtype=torch.int64), None, 1, backend=b),
     TypeError, "queries.*float"),
    (lambda b: topk_similarity(x.half(), None, 1, backend=b), TypeError, "queries.*float"),
    (lambda b: topk_similarity(x, x.double(), 1, backend=b), TypeError, "dtype"),
    (lambda b: topk_similarity(x, torch.randn(5, 3), 1, backend=b), ValueError, "columns"),
    (lambda b: topk_similarity(torch.tensor([[1.0, float("nan")]]), None, 1, backend=b),
     ValueError, "queries contains NaN"),
    (lambda b: topk_similarity(x, torch.tensor([[1.0, 2, 3, float("inf")]]), 1, backend=b),
     ValueError, "keys contains NaN or inf"),
    (lambda b: topk_similarity(torch.zeros(3, 2), None, 1, normalize=True, backend=b),
     ValueError, "queries has zero-norm rows"),
    (lambda b: topk_similarity(x, torch.zeros(3, 4), 1, normalize=True, backend=b),
     ValueError, "keys has zero-norm rows"),
    (lambda b: topk_similarity(torch.full((2, 2), 1e30), None, 1, backend=b), ValueError,
     "overflow"),
    (lambda b: topk_similarity(x, None, 2, exclude=CSRGraph.from_dense(torch.eye(9)),
                               backend=b), ValueError, "exclude must have shape"),
    (lambda b: topk_similarity(x, None, 2, exclude=torch.eye(10), backend=b), TypeError,
     "exclude must be a CSRGraph"),
    (lambda b: topk_similarity(x, None, 2, block_size=0, backend=b), ValueError, "block_size"),
    (lambda b: knn_graph(x, 3, normalization="bogus", backend=b), ValueError, "normalization"),
    (lambda b: knn_graph(x, 30, backend=b), ValueError, "k must be in"),
    (lambda b: knn_graph(torch.zeros(4, 2), 2, backend=b), ValueError, "zero-norm"),
])
def test_bad_input_raises(backend, call, exc, match):
    with pytest.raises(exc, match=match):
        call(backend)


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend must be one of"):
        topk_similarity(x, None, 2, backend="nope")


def test_negative_degree_under_sym_normalization_is_an_error():
    f = torch.tensor([[1.0, 0.0], [-1.0, 0.01], [-1.0, -0.01]])
    with pytest.raises(ValueError, match="negative degree"):
        knn_graph(f, 3, normalization="sym")


@pytest.mark.skipif("cpp" not in BACKENDS, reason="cpp backend not built")
def test_compiled_entry_point_rejects_malformed_exclude():
    from micro_fast import _C

    q = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    i64 = np.int64
    bad = [
        (np.array([0, 1, 2, 3, 9], i64), np.array([0, 1, 2], i64), "end at nnz"),
        (np.array([0, 1, 1, 1, 1], i64), np.array([7], i64), "out of range"),
        (np.array([0, 2, 2, 2, 2], i64), np.array([1, 0], i64), "sorted"),
        (np.array([0, 1], i64), np.array([0], i64), "one entry per query row"),
    ]
    for indptr, indices, match in bad:
        with pytest.raises(ValueError, match=match):
            _C.topk_similarity(q, None, 2, indptr, indices, 0, 1)
    with pytest.raises(ValueError, match="k must be"):
        _C.topk_similarity(q, None, 5, None, None, 0, 1)
    with pytest.raises(TypeError):
        _C.topk_similarity(q.astype(np.int32), None, 1, None, None, 0, 1)
