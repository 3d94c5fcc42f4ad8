"""CSRGraph arithmetic (micro_fast.graph_arith): scalar products, negation, sums and differences
of graphs against dense arithmetic, their gradients, the shared-structure fast path, the union
cache, and the errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import micro_fast as mf
from micro_fast import CSRGraph, graph_arith
from micro_fast.errors import InputError, InputTypeError
from micro_fast.graph import _Structure

D = torch.float64


def _dense(gen: torch.Generator, shape, density: float, mask=None) -> torch.Tensor:
    keep = torch.rand(*shape, generator=gen) < density
    if mask is not None:
        keep &= mask
    return torch.randn(*shape, generator=gen, dtype=D) * keep


@st.composite
def graph_pairs(draw):
    """Two graphs of one shape: independent structures (empty rows likely), disjoint ones,
    one structure object shared (``with_values``), or equal structures in distinct objects."""
    m, n = draw(st.integers(0, 12)), draw(st.integers(0, 12))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    how = draw(st.sampled_from(["independent", "disjoint", "shared", "equal"]))
    a = _dense(gen, (m, n), draw(st.floats(0, 1)))
    if how == "independent":
        b = _dense(gen, (m, n), draw(st.floats(0, 1)))
    elif how == "disjoint":
        b = _dense(gen, (m, n), draw(st.floats(0, 1)), mask=a == 0)
    else:
        b = torch.randn(m, n, generator=gen, dtype=D) * (a != 0)
    ga = CSRGraph.from_dense(a)
    if how == "shared":
        gb = ga.with_values(b[ga.row_indices(), ga.indices])
    elif how == "equal":
        gb = CSRGraph(ga.indptr.clone(), ga.indices.clone(), b[ga.row_indices(), ga.indices],
                      ga.shape)
    else:
        gb = CSRGraph.from_dense(b)
    return ga, gb, a, b


def _check(g: CSRGraph, want: torch.Tensor) -> None:
    g.validate()  # sorted, duplicate-free, consistent like any CSRGraph
    torch.testing.assert_close(g.to_dense(), want)


@given(pair=graph_pairs(), s=st.floats(-3, 3, allow_nan=False))
def test_arithmetic_matches_dense(pair, s):
    ga, gb, a, b = pair
    _check(ga + gb, a + b)
    _check(ga - gb, a - b)
    _check(gb - ga, b - a)
    _check(s * ga, s * a)
    _check(ga * s, a * s)
    _check(ga * torch.tensor(s, dtype=D), a * s)
    _check(torch.tensor(s, dtype=D) * ga, a * s)
    _check(ga / 2.5, a / 2.5)
    _check(-ga, -a)
    _check((1 - 0.3) * ga + 0.3 * gb, 0.7 * a + 0.3 * b)
    union = (a != 0) | (b != 0)
    assert (ga + gb).nnz == int(union.sum())  # entries summing to zero are kept
    if ga._s is gb._s:
        assert (ga + gb)._s is ga._s


@given(pair=graph_pairs())
def test_products_with_sums_match_dense(pair):
    ga, gb, a, b = pair
    x = torch.randn(a.shape[1], 3, dtype=D)
    torch.testing.assert_close(mf.spmm(0.2 * ga + gb, x), (0.2 * a + b) @ x)
    torch.testing.assert_close(torch.sparse.mm(ga - gb, x), (a - b) @ x)


@pytest.mark.parametrize("how", ["independent", "shared"])
def test_gradcheck_through_sum_and_scalar_product(how):
    gen = torch.Generator().manual_seed(0)
    a = CSRGraph.from_dense(_dense(gen, (8, 6), 0.4))
    b = a if how == "shared" else CSRGraph.from_dense(_dense(gen, (8, 6), 0.4))
    va = a.values.clone().requires_grad_()
    vb = torch.randn(b.nnz, dtype=D, generator=gen, requires_grad=True)
    lam = torch.tensor(0.3, dtype=D, requires_grad=True)
    x = torch.randn(6, 3, dtype=D, generator=gen, requires_grad=True)

    def mix(va, vb, lam, x):
        g = (1 - lam) * a.with_values(va) + lam * b.with_values(vb) - b.with_values(vb) / 4
        return mf.spmm(g, x), g.values

    assert torch.autograd.gradcheck(mix, (va, vb, lam, x))


def test_micro_mixing_keeps_gradients_flowing_into_the_learned_values():
    feats = torch.randn(40, 8, dtype=D, generator=torch.Generator().manual_seed(1))
    orig = mf.knn_graph(feats, k=5)
    proj = torch.nn.Linear(8, 8, dtype=D)
    learned = mf.knn_graph(proj(feats), k=5)
    lam = 0.9
    x = torch.randn(40, 4, dtype=D, requires_grad=True)
    y = mf.propagate((1 - lam) * learned + lam * orig, x, 2)
    dense = (1 - lam) * learned.to_dense() + lam * orig.to_dense()
    want = dense @ (dense @ x)
    torch.testing.assert_close(y, want)
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, proj.weight), gy, retain_graph=True)
    ref = torch.autograd.grad(want, (x, proj.weight), gy)
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(g, r)
    assert float(got[1].abs().sum()) > 0


def test_union_is_cached_per_pair_of_structures():
    gen = torch.Generator().manual_seed(2)
    a = CSRGraph.from_dense(_dense(gen, (30, 30), 0.2))
    b = CSRGraph.from_dense(_dense(gen, (30, 30), 0.2))
    x = torch.randn(30, 4, dtype=D, requires_grad=True)
    first = a + b
    again = 0.5 * a + 2 * b  # rescaling shares the structures: same pair
    assert again._s is first._s
    (again @ x).sum().backward()
    built = _Structure.transposes_built
    for lam in (0.1, 0.2):
        mf.spmm((1 - lam) * a + lam * b, x).sum().backward()
    assert _Structure.transposes_built == built
    c = CSRGraph.from_dense(_dense(gen, (30, 30), 0.2))
    assert (a + c)._s is not first._s  # the cache holds the last partner only
    torch.testing.assert_close((a + b).to_dense(), a.to_dense() + b.to_dense())


def test_equal_structures_in_distinct_objects_reuse_one():
    a = CSRGraph.from_dense(torch.tensor([[0, 1.0], [2.0, 0]], dtype=D))
    b = CSRGraph(a.indptr.clone(), a.indices.clone(), torch.tensor([3.0, 4.0], dtype=D))
    assert (a + b)._s is a._s
    empty = CSRGraph(torch.zeros(3, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
                     torch.zeros(0, dtype=D), (2, 2))
    assert (empty + a)._s is a._s and (a - empty)._s is a._s


def test_symmetry_flag():
    m = torch.rand(10, 10, dtype=D) * (torch.rand(10, 10) < 0.3)
    a = CSRGraph.from_dense(m + m.T)
    a.symmetric = True
    assert (2 * a).symmetric and (-a).symmetric and (a / 2).symmetric
    assert (a + a).symmetric
    b = CSRGraph.from_dense(torch.eye(10, dtype=D))
    assert (a + b).symmetric is None


def test_errors_name_the_operands():
    a = CSRGraph.from_dense(torch.eye(3, dtype=D))
    with pytest.raises(InputError, match=r"left operand has shape \(3, 3\) but the right "
                                         r"operand has shape \(4, 4\)"):
        a + CSRGraph.from_dense(torch.eye(4, dtype=D))
    with pytest.raises(InputTypeError, match="left operand's values are torch.float64"):
        a - CSRGraph.from_dense(torch.eye(3))
    meta = CSRGraph(torch.zeros(4, dtype=torch.int64, device="meta"),
                    torch.zeros(0, dtype=torch.int64, device="meta"),
                    torch.zeros(0, dtype=D, device="meta"), (3, 3), validate=False)
    with pytest.raises(InputError, match="right operand is on meta"):
        a + meta
    for bad in (lambda: a + 1, lambda: a * a, lambda: a * torch.ones(3), lambda: 1 / a,
                lambda: a * True, lambda: a + torch.eye(3), lambda: a * 1j):
        with pytest.raises(TypeError):
            bad()


def test_union_positions_against_a_sort():
    """The union's keys are the sorted unique keys of both operands, and the positions say
    where each operand's entries land (the index_add targets)."""
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        a = CSRGraph.from_dense(_dense(gen, (15, 11), 0.3))
        b = CSRGraph.from_dense(_dense(gen, (15, 11), 0.3))
        s, pos_a, pos_b = graph_arith.union(a._s, b._s)
        keys = torch.cat([graph_arith.entry_keys(a._s), graph_arith.entry_keys(b._s)])
        uniq, inverse = torch.unique(keys, sorted=True, return_inverse=True)
        assert torch.equal(graph_arith.entry_keys(s), uniq)
        assert torch.equal(torch.cat([pos_a, pos_b]), inverse)
