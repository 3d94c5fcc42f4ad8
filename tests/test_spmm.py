"""spmm / propagate / bipartite_graph: every backend (torch_ref included) against the dense float64
statements of ``oracles.py``, forward and both backwards, gradchecks, transpose caching, and bad
input."""

from __future__ import annotations

import pytest
import torch
from bounds import assert_close
from hypothesis import given
from hypothesis import strategies as st
from oracles import bipartite_exact, propagate_exact, spmm_exact

import micro_fast as mf
from micro_fast import CSRGraph, backends
from micro_fast.graph import _Structure

DTYPES = [torch.float32, torch.float64]


def device_of(backend: str) -> torch.device:
    return torch.device("cuda" if backend == "cuda" else "cpu")


def require(backend: str, op: str = "spmm") -> None:
    if backend not in backends.available():
        pytest.skip(f"{backend} not available")
    if not hasattr(backends.get(backend, device_of(backend), op=op if backend == "torch_ref"
                                else "topk_similarity"), op):
        pytest.skip(f"{backend} has no {op} kernel")


@st.composite
def graphs(draw, square=None):
    m = draw(st.integers(1, 40))
    sq = draw(st.booleans()) if square is None else square
    n = m if sq else draw(st.integers(1, 40))
    kind = draw(st.sampled_from(["uniform", "empty_rows", "skewed", "self_loops", "empty"]))
    seed = draw(st.integers(0, 2**31 - 1))
    dtype = draw(st.sampled_from(DTYPES))
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(m, n, generator=gen) < draw(st.sampled_from([0.05, 0.2, 0.6]))
    if kind == "empty_rows":
        mask[torch.rand(m, generator=gen) < 0.5] = False
    elif kind == "skewed":
        mask[:] = False
        mask[0, :] = True  # one dense row and one dense column
        mask[:, 0] = True
    elif kind == "self_loops" and sq:
        mask |= torch.eye(m, dtype=torch.bool)
    elif kind == "empty":
        mask[:] = False
    dense = torch.randn(m, n, generator=gen, dtype=dtype) * mask
    dense[mask & (dense == 0)] = 1.0
    return CSRGraph.from_dense(dense), dense


def _upstream(shape, dtype):
    return torch.randn(shape, generator=torch.Generator().manual_seed(7), dtype=dtype)


def _run(graph, x, backend, values_grad=True):
    dev = device_of(backend)
    graph, x = graph.to(dev), x.to(dev)
    v = graph.values.clone().requires_grad_(values_grad)
    xr = x.clone().requires_grad_()
    y = mf.spmm(graph.with_values(v), xr, backend=backend)
    (y * _upstream(y.shape, y.dtype).to(dev)).sum().backward()
    return y.cpu(), xr.grad.cpu(), None if v.grad is None else v.grad.cpu()


def _assert_exact(got, dense, x):
    y, gx, gv = got
    ey, egx, egv = spmm_exact(dense, x, _upstream((dense.shape[0], x.shape[1]), x.dtype))
    assert_close(y, ey, what="y")
    assert_close(gx, egx, what="x gradient")
    assert_close(gv, egv, what="values gradient")


@pytest.mark.parametrize("backend", ["cuda", "cpp", "numba", "torch_ref"])
@given(g=graphs(), d=st.sampled_from([1, 3, 16, 17, 64, 70, 130]), seed=st.integers(0, 2**31 - 1))
def test_spmm_matches_exact(backend, g, d, seed):
    require(backend)
    graph, dense = g
    x = torch.randn(graph.shape[1], d, generator=torch.Generator().manual_seed(seed),
                    dtype=dense.dtype)
    _assert_exact(_run(graph, x, backend), dense, x)


@given(g=graphs(), d=st.sampled_from([1, 5, 16, 33, 64, 100, 130]), seed=st.integers(0, 2**31 - 1))
def test_every_simd_kernel(simd_isa, g, d, seed):
    graph, dense = g
    x = torch.randn(graph.shape[1], d, generator=torch.Generator().manual_seed(seed),
                    dtype=dense.dtype)
    _assert_exact(_run(graph, x, "cpp"), dense, x)


@pytest.mark.parametrize("backend", ["cpp", "numba", "torch_ref"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_gradcheck_spmm_and_propagate(backend, symmetric):
    require(backend)
    gen = torch.Generator().manual_seed(0)
    dense = torch.randn(12, 12, generator=gen, dtype=torch.float64)
    dense = dense * (torch.rand(12, 12, generator=gen) < 0.3)
    if symmetric:
        dense = dense + dense.T
    g = CSRGraph.from_dense(dense)
    g.symmetric = symmetric or None
    v = g.values.clone().requires_grad_()
    x = torch.randn(12, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    fns = [lambda v, x: mf.spmm(g.with_values(v), x, backend=backend)]
    if not symmetric:  # a declared-symmetric graph's values cannot vary independently
        for combine in ("last", "mean"):
            fns.append(lambda v, x, c=combine: mf.propagate(g.with_values(v), x, 3, combine=c,
                                                            backend=backend))
    for fn in fns:
        assert torch.autograd.gradcheck(fn, (v, x))
    for combine in ("last", "mean"):
        assert torch.autograd.gradcheck(
            lambda x, c=combine: mf.propagate(g, x, 2, combine=c, backend=backend), (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_propagate_matches_official_loops(dtype):
    """Our propagate and the published torch.sparse.mm loops are both the exact products."""
    gen = torch.Generator().manual_seed(1)
    users = torch.randint(0, 30, (200,), generator=gen)
    items = torch.randint(0, 20, (200,), generator=gen)
    g = mf.bipartite_graph(users, items, 30, 20, normalization="rw", self_loops=True,
                           dtype=dtype)
    adj = g.to_torch_coo()
    ego = torch.randn(50, 8, generator=gen, dtype=dtype)
    outs, h = [ego], ego
    for _ in range(2):
        h = torch.sparse.mm(adj, h)
        outs.append(h)
    published = {"mean": torch.stack(outs, dim=1).mean(dim=1), "last": h}
    dense = g.to_dense()
    for combine in ("mean", "last"):
        exact, _ = propagate_exact(dense, ego, 2, combine)
        assert_close(mf.propagate(g, ego, 2, combine=combine), exact, what=combine)
        assert_close(published[combine], exact, what=f"published {combine}")
    exact, _ = propagate_exact(dense, ego, 1, "last")
    assert_close(g @ ego, exact, what="g @ x")
    assert_close(torch.sparse.mm(adj, ego), exact, what="torch.sparse.mm")


def test_lightgcn_module_matches_published_forward():
    gen = torch.Generator().manual_seed(2)
    users = torch.randint(0, 15, (80,), generator=gen)
    items = torch.randint(0, 10, (80,), generator=gen)
    g = mf.bipartite_graph(users, items, 15, 10, normalization="sym", dtype=torch.float64)
    torch.manual_seed(2)
    model = mf.nn.LightGCN(15, 10, dim=6, layers=2).double()
    u, i = model(g)
    ego = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    exact, _ = propagate_exact(g.to_dense(), ego, 2, "mean")
    assert_close(torch.cat([u, i]), exact, what="LightGCN embeddings")
    adj, outs = g.to_torch_coo(), [ego]
    for _ in range(2):
        ego = torch.sparse.mm(adj, ego)
        outs.append(ego)
    assert_close(torch.stack(outs, 1).mean(1), exact, what="published loop")
    (u.sum() + i.square().sum()).backward()
    assert model.user_embedding.weight.grad is not None
    prop = mf.nn.GraphPropagation(layers=1)
    x = torch.randn(25, 3, generator=gen, dtype=torch.float64)
    assert_close(prop(g, x), propagate_exact(g.to_dense(), x, 1, "last")[0], what="module")


@pytest.mark.parametrize("backend", ["cpp", "numba", "torch_ref"])
@pytest.mark.parametrize("normalization", ["sym", "rw"])
def test_backward_through_declared_graphs(backend, normalization):
    """bipartite_graph declares its result symmetric ("sym": its own transpose) or not ("rw"):
    the backward must use the transpose exactly when it differs."""
    require(backend)
    gen = torch.Generator().manual_seed(8)
    users = torch.randint(0, 20, (90,), generator=gen)
    items = torch.randint(0, 15, (90,), generator=gen)
    g = mf.bipartite_graph(users, items, 20, 15, normalization=normalization,
                           self_loops=True, dtype=torch.float64)
    assert g.symmetric is (normalization == "sym")
    x = torch.randn(35, 6, generator=gen, dtype=torch.float64)
    xs = x.clone().requires_grad_()
    y = mf.spmm(g, xs, backend=backend)  # the graph itself: with_values forgets the flag
    up = _upstream(y.shape, y.dtype)
    (y * up).sum().backward()
    exact_y, exact_grad, _ = spmm_exact(g.to_dense(), x, up)
    assert_close(y.detach(), exact_y, what="y")
    assert_close(xs.grad, exact_grad, what="x gradient")


def test_transpose_is_correct_and_built_once():
    gen = torch.Generator().manual_seed(3)
    dense = torch.randn(30, 20, generator=gen) * (torch.rand(30, 20, generator=gen) < 0.2)
    g = CSRGraph.from_dense(dense)
    before = _Structure.transposes_built
    x = torch.randn(20, 5, requires_grad=True)
    for _ in range(3):
        mf.spmm(g, x).sum().backward()
    assert _Structure.transposes_built == before + 1
    assert torch.equal(g.transpose().to_dense(), dense.T)
    g2 = g.with_values(g.values * 3)  # same structure: no new transpose
    mf.spmm(g2, x).sum().backward()
    assert _Structure.transposes_built == before + 1


def test_graph_learner_builds_each_transpose_once():
    """Batches that reuse the learned graph propagate through A^learn and the constant
    A^orig: each transpose is built on the first backward only, also after .to()."""
    gen = torch.Generator().manual_seed(5)
    learner = mf.nn.KNNGraphLearner(torch.randn(60, 12, generator=gen), 8, k=5)
    x = torch.randn(60, 4, generator=gen, requires_grad=True)
    learned = learner.learn()
    before = _Structure.transposes_built
    for _ in range(3):
        learner.propagate(learned.detach(), x).sum().backward()
    assert _Structure.transposes_built == before + 2
    learner.to(torch.float64)  # new value buffers, the same structure and transposes
    x64 = x.detach().double().requires_grad_()
    for _ in range(2):
        learner.propagate(learned.detach().to(torch.float64), x64).sum().backward()
    assert _Structure.transposes_built == before + 2
    assert learner.original().values.dtype == torch.float64


@pytest.mark.parametrize("backend", ["cpp", "torch_ref", "numba"])
@pytest.mark.parametrize("normalization", ["sym", "rw", "none"])
@pytest.mark.parametrize("self_loops", [False, True])
def test_bipartite_graph_matches_dense_formula(backend, normalization, self_loops):
    require(backend, "bipartite_graph")
    gen = torch.Generator().manual_seed(4)
    n_users, n_items = 25, 17
    users = torch.randint(0, n_users, (120,), generator=gen)
    items = torch.randint(0, n_items, (120,), generator=gen)
    g = mf.bipartite_graph(users, items, n_users, n_items, normalization=normalization,
                           self_loops=self_loops, dtype=torch.float64, backend=backend)
    g.validate()
    a = bipartite_exact(users, items, n_users, n_items, normalization, self_loops,
                        torch.float64)
    assert torch.equal(g.to_dense() != 0, a.value != 0)
    assert_close(g.to_dense(), a, what="adjacency")
    a = a.value
    assert g.is_symmetric(atol=1e-12) == (normalization != "rw" or not bool((a != a.T).any()))
    assert (g.symmetric is True) == (normalization != "rw")


@pytest.mark.parametrize("backend", ["cpp", "numba", "torch_ref"])
@given(n_users=st.integers(0, 12), n_items=st.integers(0, 12), nnz=st.integers(0, 60),
       normalization=st.sampled_from(["sym", "rw", "none"]), self_loops=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_bipartite_graph_equals_exact(backend, n_users, n_items, nnz, normalization,
                                      self_loops, seed):
    require(backend, "bipartite_graph")
    gen = torch.Generator().manual_seed(seed)
    # many repeats of few pairs: duplicates, users or items without interactions
    nnz = nnz if n_users and n_items else 0
    users = torch.randint(0, max(n_users, 1), (nnz,), generator=gen)
    items = torch.randint(0, max(n_items, 1), (nnz,), generator=gen)
    for dtype in (torch.float32, torch.float64):
        got = mf.bipartite_graph(users, items, n_users, n_items, normalization=normalization,
                                 self_loops=self_loops, dtype=dtype, backend=backend)
        exact = bipartite_exact(users, items, n_users, n_items, normalization, self_loops,
                                dtype)
        stored = exact.value != 0
        assert torch.equal(got.to_dense() != 0, stored)
        rows, cols = torch.nonzero(stored, as_tuple=True)
        assert_close(got.values, exact[rows, cols], what="values")


@pytest.mark.parametrize("backend", ["cpp", "torch_ref", "numba"])
def test_bipartite_graph_bad_input(backend):
    require(backend, "bipartite_graph")
    u, i = torch.tensor([0, 1]), torch.tensor([0, 0])
    with pytest.raises(ValueError, match="users"):
        mf.bipartite_graph(torch.tensor([0, 5]), i, 2, 2, backend=backend)
    with pytest.raises(ValueError, match="items"):
        mf.bipartite_graph(u, torch.tensor([0, -1]), 2, 2, backend=backend)
    with pytest.raises(ValueError, match="duplicate"):
        mf.bipartite_graph(torch.tensor([0, 0]), i, 2, 2, duplicates="error", backend=backend)
    with pytest.raises(TypeError, match="users"):
        mf.bipartite_graph(torch.tensor([0.0]), torch.tensor([0]), 2, 2, backend=backend)
    with pytest.raises(ValueError, match="differ in length"):
        mf.bipartite_graph(u, torch.tensor([0]), 2, 2, backend=backend)
    with pytest.raises(ValueError, match="normalization"):
        mf.bipartite_graph(u, i, 2, 2, normalization="left", backend=backend)
    with pytest.raises(ValueError, match="n_users"):
        mf.bipartite_graph(u, i, -1, 2, backend=backend)
    g = mf.bipartite_graph(torch.tensor([0, 0]), i, 2, 2, normalization="none", backend=backend)
    assert g.to_dense()[0, 2] == 2.0  # duplicates summed


def test_spmm_bad_input():
    g = CSRGraph.from_dense(torch.eye(4))
    with pytest.raises(ValueError, match="x has 3 rows but graph has 4 columns"):
        mf.spmm(g, torch.randn(3, 2))
    with pytest.raises(TypeError, match="x dtype"):
        mf.spmm(g, torch.randn(4, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="float32 or float64"):
        mf.spmm(g, torch.ones(4, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="2-D"):
        mf.spmm(g, torch.randn(4))
    with pytest.raises(ValueError, match="x is on meta"):
        mf.spmm(g, torch.randn(4, 2, device="meta"))
    with pytest.raises(TypeError, match="graph must be a CSRGraph"):
        mf.spmm(torch.eye(4), torch.randn(4, 2))
    with pytest.raises(ValueError, match="layers"):
        mf.propagate(g, torch.randn(4, 2), -1)
    with pytest.raises(ValueError, match="combine"):
        mf.propagate(g, torch.randn(4, 2), 1, combine="sum")
    rect = CSRGraph.from_dense(torch.ones(3, 4))
    with pytest.raises(ValueError, match="square"):
        mf.propagate(rect, torch.randn(4, 2), 2)
    with pytest.raises(ValueError, match="strictly increasing"):
        CSRGraph(torch.tensor([0, 2]), torch.tensor([1, 0]), shape=(1, 2))
    with pytest.raises(ValueError, match="out of range"):
        CSRGraph(torch.tensor([0, 1]), torch.tensor([3]), shape=(1, 2))
    with pytest.raises(ValueError, match="shape"):
        CSRGraph(torch.tensor([0, 1]), torch.tensor([0]), shape=(-1, 2))


@pytest.mark.skipif("cpp" not in backends.available(), reason="cpp backend not built")
def test_compiled_spmm_rejects_malformed_structure():
    import numpy as np

    from micro_fast import _C

    x = np.ones((3, 2), np.float32)
    v = np.ones(2, np.float32)
    i64 = np.int64
    with pytest.raises(ValueError, match="out of range"):
        _C.spmm(np.array([0, 2], i64), np.array([0, 9], i64), v, x)
    with pytest.raises(ValueError, match="out of range"):
        _C.spmm(np.array([0, 2], i64), np.array([0, -1], i64), v, x)
    with pytest.raises(ValueError, match="non-decreasing"):
        _C.spmm(np.array([0, 2, 1, 2], i64), np.array([0, 1], i64), v, x)
    with pytest.raises(ValueError, match="values"):
        _C.spmm(np.array([0, 2], i64), np.array([0, 1], i64), np.ones(3, np.float32), x)
