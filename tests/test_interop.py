"""Graphs as users hold them: torch sparse COO/CSR tensors and scipy matrices through the ops
(converted once, cached, differentiable w.r.t. a sparse tensor's values), torch's matmul entry
points on a CSRGraph (__torch_function__), torch.compile, and GraphBuffer in a module."""

from __future__ import annotations

import gc
import warnings
import weakref

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import micro_fast as mf
from micro_fast import CSRGraph, interop
from micro_fast.errors import InputError, InputTypeError
from micro_fast.graph import _Structure
from micro_fast.nn import GraphBuffer, GraphPropagation, KNNGraphLearner, LightGCN

D = torch.float64
# torch warns once per process that sparse CSR support is beta and invariant checks are off
pytestmark = pytest.mark.filterwarnings("ignore:Sparse:UserWarning")


def _coo(seed: int = 0, n_rows: int = 7, n_cols: int = 6, nnz: int = 18,
         requires_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An uncoalesced COO problem: (indices [2, nnz] in random order with duplicates, values
    [nnz] float64, the last row empty)."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, n_rows - 1, (nnz,), generator=gen)  # row n_rows - 1 stays empty
    cols = torch.randint(0, n_cols, (nnz,), generator=gen)
    rows[1], cols[1] = rows[0], cols[0]                          # at least one duplicate
    values = torch.randn(nnz, generator=gen, dtype=D).requires_grad_(requires_grad)
    return torch.stack([rows, cols]), values, torch.tensor([n_rows, n_cols])


def _sparse(kind: str, indices: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    t = torch.sparse_coo_tensor(indices, values, tuple(shape.tolist()))
    if kind == "coo":
        return t
    if kind == "coo_coalesced":
        return t.coalesce()
    return t.coalesce().to_sparse_csr()


KINDS = ["coo", "coo_coalesced", "csr"]


def _x(n: int, d: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, d, dtype=D, generator=torch.Generator().manual_seed(seed),
                       requires_grad=True)


# --- forward, gradients, cache ---------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_torch_sparse_forward_and_gradients_match_torch(kind):
    indices, values, shape = _coo()
    t = _sparse(kind, indices, values, shape)
    x = _x(int(shape[1]))
    y = mf.spmm(t, x)
    ref = torch.sparse.mm(t, x)
    torch.testing.assert_close(y, ref)
    gy = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, x, gy)[0],
                               torch.autograd.grad(ref, x, gy)[0])
    assert torch.autograd.gradcheck(lambda x: mf.spmm(t, x), (x,))


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_wrt_the_sparse_tensors_values(kind):
    indices, values, shape = _coo(requires_grad=True)
    x = _x(int(shape[1]))

    def ours(v, x):
        return mf.spmm(_sparse(kind, indices, v, shape), x)

    assert torch.autograd.gradcheck(ours, (values, x))
    gy = torch.randn(int(shape[0]), 4, dtype=D)
    got = torch.autograd.grad(ours(values, x), values, gy)[0]
    want = torch.autograd.grad(torch.sparse.mm(_sparse(kind, indices, values, shape), x),
                               values, gy)[0]
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_of_a_leaf_sparse_tensor(kind):
    indices, values, shape = _coo()
    x = _x(int(shape[1]))
    grads = []
    for mm in (mf.spmm, torch.sparse.mm):
        leaf = _sparse(kind, indices, values, shape).detach().requires_grad_()
        (mm(leaf, x) ** 2).sum().backward()
        assert leaf.grad.layout == leaf.layout
        grads.append(leaf.grad.to_dense())
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("kind", KINDS)
def test_converted_once_and_transpose_built_once(kind):
    indices, values, shape = _coo()
    t = _sparse(kind, indices, values, shape)
    x = _x(int(shape[1]))
    before = interop.conversions
    mf.propagate(_sparse(kind, *_coo(n_cols=7)), _x(7), 2)  # another tensor: one more
    mf.spmm(t, x).sum().backward()
    built = _Structure.transposes_built
    for _ in range(3):
        mf.spmm(t, x).sum().backward()
    mf.spmm(t, x.detach())
    assert interop.conversions == before + 2
    assert _Structure.transposes_built == built


@pytest.mark.parametrize("kind", KINDS)
def test_cache_rebuilds_values_that_require_grad_on_every_call(kind):
    """With grad on, only the structure is cached: each call's values are that call's, so two
    backward passes on one tensor both work and the cache holds no autograd graph."""
    indices, values, shape = _coo(requires_grad=True)
    t = _sparse(kind, indices, values, shape)
    x = _x(int(shape[1]))
    before = interop.conversions
    for _ in range(2):
        mf.spmm(t, x).sum().backward(retain_graph=True)
    assert interop.conversions == before + 1
    want = values.detach().clone().requires_grad_()
    for _ in range(2):
        torch.sparse.mm(_sparse(kind, indices, want, shape), x).sum().backward()
    torch.testing.assert_close(values.grad, want.grad)
    entry = interop._cache[id(t)]
    assert entry.graph.values.grad_fn is None and not entry.graph.values.requires_grad


UPDATES = {
    "coo": ["t.mul_(2)", "t._values().mul_(2)", "t.add_(t)"],
    "coo_coalesced": ["t.mul_(2)", "t.values().mul_(2)", "t._values()[0] = 5", "t.div_(2)"],
    "csr": ["t.mul_(2)", "t.values().mul_(2)", "t.values()[0] = 5", "t.add_(t)"],
}


@pytest.mark.parametrize(("kind", "update"),
                         [(k, u) for k, updates in UPDATES.items() for u in updates])
def test_in_place_updates_of_the_tensor_are_seen(kind, update):
    indices, values, shape = _coo()
    t = _sparse(kind, indices, values, shape)
    x = _x(int(shape[1]))
    mf.spmm(t, x)
    before = interop.conversions
    with torch.no_grad():
        exec(update, {}, {"t": t})
    y = mf.spmm(t, x)
    assert interop.conversions == before + 1
    torch.testing.assert_close(y, torch.sparse.mm(t, x))
    gy = torch.randn_like(y)  # the backward uses the new transposed values too
    torch.testing.assert_close(torch.autograd.grad(y, x, gy)[0],
                               torch.autograd.grad(torch.sparse.mm(t, x), x, gy)[0])


def test_updates_through_the_source_tensor_need_forget():
    """torch aliases the values a sparse tensor is built from without sharing their version
    counter: such an update is not seen until ``interop.forget``."""
    indices, values, shape = _coo()
    t = _sparse("coo", indices, values, shape)
    x = _x(int(shape[1])).detach()
    mf.spmm(t, x)
    values.mul_(0)  # t changes too (torch aliases the values), its version does not
    assert t._version == 0
    interop.forget(t)
    torch.testing.assert_close(mf.spmm(t, x), torch.sparse.mm(t, x))


def test_the_cache_keeps_no_tensor_alive():
    indices, values, shape = _coo()
    t = _sparse("coo", indices, values, shape)
    mf.spmm(t, _x(int(shape[1])))
    assert id(t) in interop._cache
    ref = weakref.ref(t)
    key = id(t)
    del t
    gc.collect()
    assert ref() is None
    assert key not in interop._cache


@pytest.mark.parametrize("fmt", ["csr", "coo", "csc"])
def test_scipy_input(fmt):
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 6, 20), rng.integers(0, 5, 20)
    m = sp.coo_matrix((rng.standard_normal(20), (rows, cols)), shape=(7, 5)).asformat(fmt)
    dense = torch.from_numpy(m.toarray())
    x = _x(5)
    before = interop.conversions
    y = mf.spmm(m, x)
    torch.testing.assert_close(y, dense @ x)
    assert torch.autograd.gradcheck(lambda x: mf.spmm(m, x), (x,))
    assert interop.conversions == before + 1
    # a new data buffer (or another nnz) is seen; a write into the same buffer needs forget
    m.data = m.data * 2
    torch.testing.assert_close(mf.spmm(m, x), 2 * dense @ x)
    m.data *= 2
    interop.forget(m)
    torch.testing.assert_close(mf.spmm(m, x), 4 * dense @ x)
    assert interop.conversions == before + 3


def test_scipy_conversion_leaves_the_callers_arrays_alone():
    m = sp.csr_matrix((np.array([1.0, 2.0, 3.0]), np.array([2, 0, 0]), np.array([0, 3, 3])),
                      shape=(2, 3))  # unsorted, with a duplicate
    indices = m.indices.copy()
    g = interop.as_graph(m)
    assert np.array_equal(m.indices, indices)
    torch.testing.assert_close(g.to_dense(), torch.tensor([[5.0, 0, 1.0], [0, 0, 0]], dtype=D))


def test_csrgraph_passes_through():
    g = CSRGraph.from_dense(torch.eye(3, dtype=D))
    before = interop.conversions
    assert interop.as_graph(g) is g
    assert interop.conversions == before


@pytest.mark.parametrize("kind", KINDS + ["scipy"])
def test_nn_layers_take_every_graph_form(kind):
    gen = torch.Generator().manual_seed(3)
    dense = torch.rand(6, 6, generator=gen, dtype=D) * (torch.rand(6, 6, generator=gen) < 0.4)
    g = CSRGraph.from_dense(dense)
    obj = sp.csr_matrix(dense.numpy()) if kind == "scipy" else \
        _sparse(kind, g.to_edge_index(), g.values, torch.tensor(g.shape))
    x = _x(6)
    for layer in (GraphPropagation(2), GraphPropagation(2, combine="mean")):
        torch.testing.assert_close(layer(obj, x), layer(g, x))
    lightgcn = LightGCN(2, 4, dim=3).double()
    for a, b in zip(lightgcn(obj), lightgcn(g), strict=True):
        torch.testing.assert_close(a, b)
    learner = KNNGraphLearner(torch.randn(6, 5, dtype=D, generator=gen), dim=4, k=2)
    torch.testing.assert_close(learner.propagate(obj, x, 2), learner.propagate(g, x, 2))


# --- bad input -----------------------------------------------------------------------------

def test_bad_graphs_name_the_argument():
    x = torch.randn(4, 2)
    with pytest.raises(InputTypeError, match="graph must be a CSRGraph, a torch sparse"):
        mf.spmm(torch.eye(4), x)
    with pytest.raises(InputTypeError, match="graph must be a CSRGraph"):
        mf.propagate(np.eye(4), x, 1)
    with pytest.raises(InputTypeError, match="graph must be"):
        GraphPropagation(1)(torch.eye(4), x)
    with pytest.raises(InputTypeError, match="graph must be"):
        LightGCN(2, 2)(torch.eye(4))
    learner = KNNGraphLearner(torch.randn(4, 3), dim=2, k=2)
    with pytest.raises(InputTypeError, match="learned must be"):
        learner.propagate(torch.eye(4), x)
    with pytest.raises(InputTypeError, match="sparse_csc"):
        mf.spmm(torch.eye(4).to_sparse_csc(), x)
    coo = torch.eye(4).to_sparse()
    with pytest.raises(InputError, match="x has 3 rows but graph has 4 columns"):
        mf.spmm(coo, torch.randn(3, 2))
    with pytest.raises(InputTypeError, match="x dtype"):
        mf.spmm(coo, torch.randn(4, 2, dtype=D))
    with pytest.raises(InputTypeError, match="graph values must be float32 or float64"):
        mf.spmm(torch.eye(4, dtype=torch.int64).to_sparse(), x)
    with pytest.raises(InputTypeError, match="graph values must be float32 or float64"):
        mf.spmm(sp.eye(4, dtype=np.int64, format="csr"), x)
    with pytest.raises(InputError, match="graph must be a 2-D sparse matrix"):
        mf.spmm(torch.ones(2, 4, 4).to_sparse(), x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bad = torch.sparse_coo_tensor(torch.tensor([[0], [9]]), torch.ones(1), (4, 4),
                                      check_invariants=False)
        unsorted = torch.sparse_csr_tensor(torch.tensor([0, 2, 2, 2, 2]), torch.tensor([3, 1]),
                                           torch.ones(2), (4, 4), check_invariants=False)
    with pytest.raises(InputError, match="graph: column index out of range"):
        mf.spmm(bad, x)
    with pytest.raises(InputError, match="sorted and unique"):
        mf.spmm(unsorted, x)


# --- torch functions on a CSRGraph ---------------------------------------------------------

def _graph(seed: int = 0) -> CSRGraph:
    gen = torch.Generator().manual_seed(seed)
    dense = torch.randn(7, 5, generator=gen, dtype=D) * (torch.rand(7, 5, generator=gen) < 0.5)
    dense[3] = 0
    g = CSRGraph.from_dense(dense)
    g.values.requires_grad_()
    return g


ENTRY_POINTS = {
    "torch.sparse.mm": (lambda g, x: torch.sparse.mm(g, x), torch.sparse.mm),
    "torch.sparse.mm sum": (lambda g, x: torch.sparse.mm(g, x, "sum"), torch.sparse.mm),
    "torch.mm": (lambda g, x: torch.mm(g, x), torch.mm),
    "torch.matmul": (lambda g, x: torch.matmul(g, x), torch.matmul),
    "torch.spmm": (lambda g, x: torch.spmm(g, x), None),  # torch 2.13 hands over torch.mm
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_torch_entry_points_dispatch_to_spmm(entry, monkeypatch):
    call, func = ENTRY_POINTS[entry]
    seen = []
    original = interop.torch_function

    def spy(f, types, args=(), kwargs=None):
        seen.append(f)
        return original(f, types, args, kwargs)

    monkeypatch.setattr(interop, "torch_function", spy)
    g, x = _graph(), _x(5)
    y = call(g, x)
    assert len(seen) == 1 and (func is None or seen[0] is func)
    ref = mf.spmm(g, x)
    torch.testing.assert_close(y, ref)
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, (g.values, x), gy)
    want = torch.autograd.grad(ref, (g.values, x), gy)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)
    assert torch.autograd.gradcheck(lambda v, x: call(g.with_values(v), x),
                                    (g.values.detach().requires_grad_(), x))


def test_matmul_operator_and_transpose():
    g, x = _graph(), _x(5)
    torch.testing.assert_close(g @ x, mf.spmm(g, x))
    torch.testing.assert_close(g.t().to_dense(), g.to_dense().T)
    torch.testing.assert_close(torch.sparse.mm(g.t(), _x(7)), g.to_dense().T @ _x(7))


def test_other_torch_functions_raise_type_error():
    g, x = _graph(), _x(5)
    with pytest.raises(TypeError):
        torch.add(g, x)
    with pytest.raises(TypeError):
        x.T @ g  # the graph as the right operand: not a product spmm computes
    with pytest.raises(TypeError):
        torch.mm(x.T, g)
    with pytest.raises(TypeError):
        torch.sparse.mm(g, x, "max")
    with pytest.raises(TypeError):
        torch.sparse.mm(g, g)


# --- torch.compile -------------------------------------------------------------------------

def _compile_parity(fn, g, x, *, fullgraph: bool) -> None:
    torch._dynamo.reset()
    eager = fn(g, x)
    want = torch.autograd.grad(eager, (g.values, x))
    out = torch.compile(fn, fullgraph=fullgraph)(g, x)
    got = torch.autograd.grad(out, (g.values, x))
    torch.testing.assert_close(out, eager)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b)


def test_compile_spmm_mm_and_matmul_without_graph_breaks():
    def step(g, x):
        return ((mf.spmm(g.t(), mf.spmm(g, x)) + torch.mm(g.t(), torch.matmul(g, x))
                 + mf.spmm(0.5 * g.t(), torch.mm(-g, x))) ** 2).sum()

    _compile_parity(step, _graph(), _x(5), fullgraph=True)


@pytest.mark.parametrize("product", ["torch.sparse.mm", "operator"])
def test_compile_sparse_mm_and_operator_break_the_graph_but_run(product):
    """dynamo (torch 2.13) neither dispatches torch.sparse.mm to a non-tensor's
    __torch_function__ nor calls its __matmul__ (it hands ``x.matmul(g)`` to it instead): the
    graph breaks there, the product runs eagerly, results unchanged."""
    def step(g, x):
        y = torch.sparse.mm(g, x.relu()) if product == "torch.sparse.mm" else g @ x.relu()
        return (y ** 2).sum()

    _compile_parity(step, _graph(), _x(5), fullgraph=False)


# --- GraphBuffer -----------------------------------------------------------------------------

class _Model(torch.nn.Module):
    def __init__(self, graph) -> None:
        super().__init__()
        self.adj = GraphBuffer(graph)
        self.lin = torch.nn.Linear(3, 3)

    def forward(self, x):
        return self.adj(self.lin(x))


def test_graph_buffer_moves_converts_and_reuses_the_structure():
    g = _graph().detach()
    square = CSRGraph.from_dense(torch.rand(5, 5) * (torch.rand(5, 5) < 0.5))
    model = _Model(square)
    assert {"adj.indptr", "adj.indices", "adj.values"} <= set(model.state_dict())
    x = torch.randn(5, 3)
    first = model.adj.graph
    assert model.adj.graph is first
    model.to(torch.float64)
    assert model.adj.values.dtype == D and model.adj.indptr.dtype == torch.int64
    g64 = model.adj.graph
    assert g64.dtype == D and g64._s is first._s  # transpose cache kept across .to(dtype)
    xd = x.double().requires_grad_()
    model(xd).sum().backward()
    built = _Structure.transposes_built
    model(xd).sum().backward()
    assert _Structure.transposes_built == built
    torch.testing.assert_close(model(xd), square.double().to_dense() @ model.lin(xd))
    model.to("meta")
    assert model.adj.indptr.device.type == "meta" and model.adj.graph.device.type == "meta"
    buf = GraphBuffer(g.to_torch_coo())
    torch.testing.assert_close(buf(_x(5)), g.to_dense() @ _x(5))


def test_graph_buffer_state_dict_round_trip_into_a_fresh_module(tmp_path):
    gen = torch.Generator().manual_seed(5)
    square = CSRGraph.from_dense(torch.rand(6, 6, generator=gen)
                                 * (torch.rand(6, 6, generator=gen) < 0.5))
    square.symmetric = False
    model = _Model(square)
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    fresh = _Model(None)
    assert fresh.adj.graph.shape == (0, 0)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert fresh.adj.shape == (6, 6) and fresh.adj.symmetric is False
    x = torch.randn(6, 3)
    torch.testing.assert_close(fresh(x), model(x))
    # same sizes, another structure: loaded in place, the cached graph is not reused
    other = _Model(CSRGraph.from_dense(square.to_dense().T.contiguous()))
    stale = other.adj.graph.transposed_structure()
    other.load_state_dict(model.state_dict(), strict=False)
    assert other.adj.graph.transposed_structure()[1] is not stale[1]
    torch.testing.assert_close(other.adj.graph.to_dense(), square.to_dense())
