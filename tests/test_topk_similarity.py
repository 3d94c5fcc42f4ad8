"""topk_similarity: every backend (torch_ref included) and every cpp SIMD build against the exact
ranking of the dense float64 scores (``oracles.assert_topk``), gradients, bad cases."""

from __future__ import annotations

import pytest
import torch
from bounds import assert_close
from hypothesis import given
from hypothesis import strategies as st
from oracles import assert_topk, similarity_grads

from micro_fast import CSRGraph, backends, topk_similarity

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@st.composite
def problems(draw, max_rows=48, max_dim=24):
    symmetric = draw(st.booleans())
    m = draw(st.integers(1, max_rows))
    n = m if symmetric else draw(st.integers(1, max_rows))
    d = draw(st.integers(1, max_dim))
    k = draw(st.integers(1, n))
    dtype = DTYPES[draw(st.sampled_from(sorted(DTYPES)))]
    kind = draw(st.sampled_from(["integer", "normal", "duplicates", "constant"]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)

    def make(rows):
        if kind == "integer":
            return torch.randint(-3, 4, (rows, d), generator=gen).to(dtype)
        if kind == "constant":
            return torch.full((rows, d), 0.5, dtype=dtype)
        x = torch.randn(rows, d, generator=gen, dtype=dtype)
        if kind == "duplicates":
            x = x[torch.randint(0, max(1, rows // 3), (rows,), generator=gen)]
        return x

    queries = make(m)
    keys = None if symmetric else make(n)
    if draw(st.booleans()):  # a non-contiguous view of the same values
        queries = queries.T.contiguous().T
    exclude = None
    if draw(st.booleans()):
        density = draw(st.sampled_from([0.05, 0.3, 0.9]))
        mask = torch.rand(m, n, generator=gen) < density
        exclude = CSRGraph.from_dense(mask.to(torch.float32))
    normalize = draw(st.booleans()) and kind != "constant" and kind != "integer"
    if normalize:
        queries = queries + 0.01  # no zero rows
        keys = None if keys is None else keys + 0.01
    return queries, keys, k, exclude, normalize


def _check(backend, problem, block_size=None):
    """Integer and constant rows are scored exactly, so there the indices must be the exact
    ranking's, ties to the smaller index; elsewhere a position may differ only by a near tie
    certified from the exact scores."""
    queries, keys, k, exclude, normalize = problem
    v, i = topk_similarity(queries, keys, k, exclude=exclude, normalize=normalize,
                           block_size=block_size, backend=backend)
    assert_topk(v, i, queries, keys, k, exclude=exclude, normalize=normalize)


@pytest.mark.parametrize("backend", backends.available("cpu"))
@given(problem=problems())
def test_backend_matches_exact_ranking(backend, problem):
    _check(backend, problem)


@given(problem=problems(max_rows=80), block=st.sampled_from([1, 7, 32, 64]))
def test_block_size_does_not_change_results(problem, block):
    _check("cpp" if "cpp" in backends.available() else "torch_ref", problem, block_size=block)


@given(problem=problems())
def test_every_simd_kernel_matches_reference(simd_isa, problem):
    _check("cpp", problem)


@pytest.mark.parametrize("backend", ["torch_ref", *[b for b in ("cpp", "numba")
                                                   if b in backends.available()]])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("normalize", [True, False])
def test_gradcheck(backend, symmetric, normalize):
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(30, 5, dtype=torch.float64, generator=gen, requires_grad=True)
    keys = None if symmetric else torch.randn(25, 5, dtype=torch.float64, generator=gen,
                                              requires_grad=True)

    def fn(*args):
        return topk_similarity(args[0], None if symmetric else args[1], 4, normalize=normalize,
                               backend=backend)[0]

    inputs = (q,) if symmetric else (q, keys)
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("backend", backends.available("cpu"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_is_sparse_and_matches_the_exact_gradient(backend, dtype):
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(300, 16, generator=gen, dtype=dtype, requires_grad=True)
    keys = torch.randn(200, 16, generator=gen, dtype=dtype, requires_grad=True)
    ex = CSRGraph.from_dense((torch.rand(300, 200, generator=gen) < 0.5).double())
    v, i = topk_similarity(q, keys, 7, exclude=ex, backend=backend)
    w = torch.randn(v.shape, generator=gen, dtype=dtype)
    (v * w).sum().backward()
    gq, gk = similarity_grads(q, keys, i, w, normalize=False)
    assert_close(q.grad, gq, what="queries gradient")
    assert_close(keys.grad, gk, what="keys gradient")


@pytest.mark.parametrize("backend", backends.available("cpu"))
def test_padded_entries_take_no_gradient(backend):
    """Rows with fewer admissible keys than k are padded with (-inf, -1): a gradient arriving
    at a padded entry reaches no key."""
    gen = torch.Generator().manual_seed(6)
    q = torch.randn(40, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    keys = torch.randn(30, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(40, 30, generator=gen) < 0.8  # most rows keep fewer than 10 keys
    v, i = topk_similarity(q, keys, 10, exclude=CSRGraph.from_dense(mask.double()),
                           backend=backend)
    assert bool((i < 0).any())
    w = torch.randn(v.shape, generator=gen, dtype=torch.float64)  # nonzero on padding too
    gq, gk = torch.autograd.grad(v, (q, keys), grad_outputs=w)
    eq, ek = similarity_grads(q, keys, i, w, normalize=False)
    assert_close(gq, eq, what="queries gradient")
    assert_close(gk, ek, what="keys gradient")


def test_backward_row_chunks_cover_every_row(monkeypatch):
    """The backward gathers the keys of a few thousand rows at a time: every row of every
    chunk gets its gradient (chunks of 7 rows here)."""
    import importlib

    op = importlib.import_module("micro_fast.ops.topk_similarity")  # the module, not the op
    monkeypatch.setattr(op, "_BACKWARD_ROWS", 7)
    gen = torch.Generator().manual_seed(7)
    for keys in (None, torch.randn(25, 4, generator=gen, dtype=torch.float64)):
        q = torch.randn(50, 4, generator=gen, dtype=torch.float64, requires_grad=True)
        ks = None if keys is None else keys.clone().requires_grad_()
        v, i = topk_similarity(q, ks, 3)
        w = torch.randn(v.shape, generator=gen, dtype=torch.float64)
        grads = torch.autograd.grad(v, [q] if ks is None else [q, ks], grad_outputs=w)
        expected = [e for e in similarity_grads(q, ks, i, w, normalize=False) if e is not None]
        for g, e in zip(grads, expected, strict=True):
            assert_close(g, e)


def test_rows_with_too_few_candidates_are_padded(cpu_backend):
    x = torch.randn(6, 3)
    eye = CSRGraph.from_dense(torch.ones(6, 6) - torch.eye(6))  # only the diagonal remains
    v, i = topk_similarity(x, None, 3, exclude=eye, backend=cpu_backend)
    assert torch.equal(i[:, 0], torch.arange(6))
    assert bool((i[:, 1:] == -1).all()) and bool(torch.isneginf(v[:, 1:]).all())


def test_ties_go_to_the_smaller_index(cpu_backend):
    x = torch.ones(50, 4)
    v, i = topk_similarity(x, None, 5, backend=cpu_backend)
    assert torch.equal(i, torch.arange(5).expand(50, 5))


def test_large_problem_matches_exact_ranking(cpu_backend):
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(1500, 40, generator=gen)
    y = torch.randn(1100, 40, generator=gen)
    for keys in (None, y):
        v, i = topk_similarity(x, keys, 10, normalize=True, backend=cpu_backend)
        assert_topk(v, i, x, keys, 10, normalize=True)


def test_feature_dim_spanning_several_chunks(cpu_backend):
    """Integer rows: exact scores, so the exact ranking, ties to the smaller index."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randint(-2, 3, (130, 300), generator=gen).float()
    v, i = topk_similarity(x, None, 6, backend=cpu_backend)
    assert_topk(v, i, x, None, 6)


def test_results_do_not_depend_on_thread_count(cpu_backend):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(700, 24, generator=gen)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        v1, i1 = topk_similarity(x, None, 8, backend=cpu_backend)
        torch.set_num_threads(2)
        v2, i2 = topk_similarity(x, None, 8, backend=cpu_backend)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(i1, i2) and torch.equal(v1, v2)


def test_auto_picks_a_compiled_backend_on_cpu():
    from micro_fast import dispatch

    assert dispatch.plan("topk_similarity", "auto", "cpu").backend == backends.available("cpu")[0]
