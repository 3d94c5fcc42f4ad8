"""Fuzzing every public op on every CPU backend (torch_ref included) with adversarial inputs,
against the independent dense statements of ``oracles.py``.

Each op has two tests: one draws valid inputs, the other invalid ones. A valid case must return
the oracle's values within the tolerance its dtype, reductions and magnitudes allow
(``bounds.py``); raising on it is a failure. An invalid case must raise a
documented exception (ValueError / TypeError naming the argument, MemoryBudgetError), the same
class as torch_ref raises: never a crash, a hang, silent garbage or acceptance. Valid inputs:
empty and one-row tensors, k equal to the number of keys, all-equal and duplicated rows (ties
everywhere), integer, huge and tiny magnitudes, non-contiguous and transposed views, CSR graphs
with empty rows. Invalid ones: NaN / inf, zero rows where a cosine is taken, magnitudes whose
inner products overflow, k out of range, mixed dtypes, out-of-range ids, bad options.
Every case is counted (``hypothesis.event``, shown by ``--hypothesis-show-statistics``); a valid
test must compare values in at least half of its cases (a drawn case can turn out to be one the
op must reject, e.g. a negative degree under "sym"). The CI profile runs 30 examples per test
and backend; ``HYPOTHESIS_PROFILE=long`` runs 2000.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from bounds import Bounded, assert_close, tolerance
from helpers import run_shards
from hypothesis import assume, event, given
from hypothesis import strategies as st
from oracles import (
    assert_topk,
    assert_topk_sets,
    bipartite_exact,
    contrastive_exact,
    exact_topk,
    fusion_exact,
    knn_graph_exact,
    project_rows_exact,
    propagate_exact,
    ranking_metrics,
    similarity_grads,
    similarity_scores,
    spmm_exact,
)

import micro_fast as mf
from micro_fast import backends
from micro_fast.memory import MemoryBudgetError

BACKENDS = backends.available("cpu")
CPU = torch.device("cpu")


def backends_with(op: str) -> list[str]:
    """The CPU backends that have a kernel for ``op``."""
    return [b for b in BACKENDS if hasattr(backends.get(b, CPU), op)]

DOCUMENTED = (ValueError, TypeError, MemoryBudgetError)

VALID_KINDS = ("normal", "ties", "duplicates", "integers", "huge", "tiny")
INVALID_KINDS = ("nan", "inf", "zero_row")
LAYOUTS = ("contiguous", "transposed", "strided")
# huge / tiny magnitudes stay clear of overflow and of subnormal squares; "overflow" is past
# what an inner product of two rows can hold
SCALES = {torch.float32: {"huge": 1e17, "tiny": 1e-15, "overflow": 1e20},
          torch.float64: {"huge": 1e150, "tiny": 1e-150, "overflow": 1e160}}


def _matrix(draw, rows: int, cols: int, dtype: torch.dtype, kind: str, layout: str):
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    if kind == "ties":
        base = torch.randn(1, cols, generator=gen, dtype=dtype).expand(rows, cols).clone()
    elif kind == "duplicates":
        pool = torch.randn(max(1, rows // 3), cols, generator=gen, dtype=dtype)
        base = pool[torch.randint(0, pool.shape[0], (rows,), generator=gen)]
    elif kind == "integers":
        base = torch.randint(-2, 3, (rows, cols), generator=gen).to(dtype)
        base[(base == 0).all(dim=1)] = 1  # integer rows, none all zero (that is invalid)
    else:
        base = torch.randn(rows, cols, generator=gen, dtype=dtype)
        scale = SCALES[dtype].get(kind)
        if scale is not None:
            base = base * scale
    if rows and cols:
        r, c = draw(st.integers(0, rows - 1)), draw(st.integers(0, cols - 1))
        if kind == "nan":
            base[r, c] = float("nan")
        elif kind == "inf":
            base[r, c] = float("inf")
        elif kind == "zero_row":
            base[r] = 0
    if layout == "transposed":  # same values, column-major storage
        base = base.T.contiguous().T
    elif layout == "strided":
        wide = torch.zeros(rows, 2 * cols, dtype=dtype)
        wide[:, ::2] = base
        base = wide[:, ::2]
    return base


@st.composite
def matrices(draw, max_rows=40, max_cols=9, min_rows=0, dtype=None, kinds=VALID_KINDS):
    rows = draw(st.integers(min_rows, max_rows))
    cols = draw(st.integers(1, max_cols))
    dtype = dtype or draw(st.sampled_from([torch.float32, torch.float64]))
    return _matrix(draw, rows, cols, dtype, draw(st.sampled_from(kinds)),
                   draw(st.sampled_from(LAYOUTS)))


COMPARED, RAISED = "compared values", "raised"
_RAISED: Counter = Counter()  # the errors of the current test, shown when too few compared


def _run_cases(body, backend, valid: bool) -> None:
    """``body(data, backend, valid) -> outcome`` under hypothesis, counting the outcomes. A
    valid run must compare values in at least half of its cases (a valid draw may still turn
    out to be one the op must reject, e.g. a negative degree); an invalid run raises in all."""
    tally: Counter = Counter()
    _RAISED.clear()

    @given(data=st.data())
    def case(data):
        tally[body(data, backend, valid)] += 1

    case()
    if valid:
        assert 2 * tally[COMPARED] >= sum(tally.values()), (dict(tally), dict(_RAISED))
    else:
        assert tally[COMPARED] == 0, dict(tally)


def fuzz(body):
    """Two tests of ``body`` for the parametrized ``backend``: one drawing valid inputs, one
    drawing invalid ones (see ``_run_cases``)."""

    @pytest.mark.parametrize("valid", [True, False], ids=["valid", "invalid"])
    def run(backend, valid):
        _run_cases(body, backend, valid)

    run.__name__, run.__doc__ = body.__name__, body.__doc__
    return run


def fuzz_without_backend(body):
    """``fuzz`` for a body that involves no backend."""

    @pytest.mark.parametrize("valid", [True, False], ids=["valid", "invalid"])
    def run(valid):
        _run_cases(body, None, valid)

    run.__name__, run.__doc__ = body.__name__, body.__doc__
    return run


def valid_only(body):
    """A test of ``body`` on valid inputs only (a form that has no invalid inputs of its own:
    its arguments are validated by the op it shares them with)."""

    def run():
        _run_cases(body, None, True)

    run.__name__, run.__doc__ = body.__name__, body.__doc__
    return run


def _outcome(fn):
    """('ok', result) or ('error', the exception, when it is a documented one); anything
    undocumented propagates."""
    try:
        return "ok", fn()
    except DOCUMENTED as exc:
        return "error", exc


def _documented_class(exc: BaseException) -> type:
    return next(c for c in DOCUMENTED if isinstance(c, type) and isinstance(exc, c))


def expect(run, backend: str, valid: bool):
    """``run(backend)`` for a case known to be valid (it must succeed: the result is returned)
    or invalid (it must raise a documented error of the class torch_ref raises: ``None``)."""
    kind, result = _outcome(lambda: run(backend))
    if valid:
        assert kind == "ok", f"a valid input raised {type(result).__name__}: {result}"
        return result
    assert kind == "error", "an invalid input was accepted"
    if backend != "torch_ref":
        ref_kind, ref = _outcome(lambda: run("torch_ref"))
        assert ref_kind == "error", "torch_ref accepted an input the backend rejected"
        assert _documented_class(result) is _documented_class(ref), (result, ref)
    event(f"raised {_documented_class(result).__name__}")
    _RAISED[f"{type(result).__name__}: {result}"[:160]] += 1
    return None


@st.composite
def csr_graphs(draw, n_rows: int, n_cols: int, dtype=torch.float32):
    """A valid CSRGraph (empty rows likely) as (graph, dense mask)."""
    density = draw(st.sampled_from([0.0, 0.05, 0.3, 1.0]))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(n_rows, n_cols, generator=gen) < density
    if n_rows:
        mask[draw(st.integers(0, n_rows - 1))] = False  # at least one empty row
    vals = torch.randn(n_rows, n_cols, generator=gen, dtype=dtype) * mask
    vals[mask & (vals == 0)] = 1.0
    return mf.CSRGraph.from_dense(vals), mask


def _generator(data) -> torch.Generator:
    """A torch generator seeded from the example (so that a failing case replays)."""
    return torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))


def _bad_values(*tensors: torch.Tensor) -> bool:
    return any(t.numel() and not bool(torch.isfinite(t).all()) for t in tensors)


def _zero_rows(*tensors: torch.Tensor) -> bool:
    return any(t.numel() and bool((t.abs().sum(1) == 0).any()) for t in tensors)


def _overflows(q: torch.Tensor, keys: torch.Tensor) -> bool:
    """The documented overflow rule: the largest norms' product above a quarter of the
    dtype's largest value."""
    limit = torch.finfo(q.dtype).max / 4
    qn = float(torch.linalg.vector_norm(q.double(), dim=1).max())
    kn = float(torch.linalg.vector_norm(keys.double(), dim=1).max())
    return qn * kn > limit


@pytest.mark.parametrize("backend", BACKENDS)
@fuzz
def test_topk_similarity(data, backend, valid):
    fault = None if valid else data.draw(st.sampled_from(["values", "overflow", "k", "dtype"]),
                                         label="fault")
    kinds = INVALID_KINDS if fault == "values" else VALID_KINDS
    q = data.draw(matrices(min_rows=1, kinds=kinds), label="queries")
    keys = data.draw(st.one_of(st.none(), matrices(max_cols=q.shape[1], min_rows=1,
                                                   dtype=q.dtype, kinds=VALID_KINDS)),
                     label="keys")
    if keys is not None and keys.shape[1] != q.shape[1]:
        gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
        keys = torch.randn(keys.shape[0], q.shape[1], generator=gen, dtype=q.dtype)
    if fault == "overflow":
        big = SCALES[q.dtype]["overflow"]
        q = q / q.abs().max().clamp_min(1e-300) * big
        keys = None if keys is None else keys / keys.abs().max().clamp_min(1e-300) * big
    if fault == "dtype":
        keys = (q if keys is None else keys).to(
            torch.float64 if q.dtype == torch.float32 else torch.float32)
    n = q.shape[0] if keys is None else keys.shape[0]
    k = data.draw(st.sampled_from([0, n + 1]) if fault == "k" else st.integers(1, n),
                  label="k")
    # a zero row is invalid only when a cosine is taken
    normalize = fault == "values" or data.draw(st.booleans(), label="normalize")
    if fault == "overflow":
        normalize = False
        assert _overflows(q, q if keys is None else keys)
    exclude = mask = None
    if data.draw(st.booleans(), label="with exclude"):
        exclude, mask = data.draw(csr_graphs(q.shape[0], n), label="exclude")
    if valid:
        assert not _bad_values(q) and not _overflows(q, q if keys is None else keys)
    w = torch.randn(q.shape[0], max(k, 1), dtype=q.dtype, generator=_generator(data))

    def run(b):
        qs = q.clone().requires_grad_()
        ks = None if keys is None else keys.clone().requires_grad_()
        v, i = mf.topk_similarity(qs, ks, k, exclude=exclude, normalize=normalize, backend=b)
        # a gradient at padded entries too: it must reach no key
        grads = torch.autograd.grad(v, [qs] if ks is None else [qs, ks], grad_outputs=w)
        return v.detach(), i, grads

    result = expect(run, backend, valid)
    if result is None:
        return RAISED
    v, i, grads = result
    assert_topk(v, i, q, keys, k, exclude=mask, normalize=normalize)
    expected = similarity_grads(q, keys, i, w, normalize)
    for got, exp in zip(grads, [e for e in expected if e is not None], strict=True):
        assert_close(got, exp, what="gradient")
    return COMPARED


@pytest.mark.parametrize("backend", BACKENDS)
@fuzz
def test_knn_graph_values_and_gradients(data, backend, valid):
    fault = None if valid else data.draw(st.sampled_from(["values", "k", "normalization"]),
                                         label="fault")
    x = data.draw(matrices(max_rows=30, min_rows=1,
                           kinds=INVALID_KINDS if fault == "values" else VALID_KINDS),
                  label="features")
    k = data.draw(st.sampled_from([0, x.shape[0] + 1]) if fault == "k"
                  else st.integers(1, x.shape[0]), label="k")
    norm = "laplacian" if fault == "normalization" else data.draw(
        st.sampled_from(["sym", "rw", "none"]), label="normalization")
    w = torch.randn(max(x.shape[0], 1) * max(k, 1), dtype=x.dtype, generator=_generator(data))
    if valid and norm != "none":
        # a degree (a sum of kept cosines) within rounding of zero makes the normalization
        # ill-conditioned: not drawn; "sym" is undefined for a negative one (an error is due)
        scores = similarity_scores(x, None, True)
        _, top = exact_topk(scores.value, k, torch.ones_like(scores.value, dtype=torch.bool))
        deg = scores.value.gather(1, top).sum(1)
        slack = tolerance(scores, x.dtype).gather(1, top).sum(1)
        assume(not bool(((deg.abs() <= slack) & (deg != 0)).any()))
        if norm == "sym" and bool((deg < 0).any()):
            valid = False
            event("negative degree: an error is due")

    def run(b):
        xs = x.clone().requires_grad_()
        g = mf.knn_graph(xs, k, normalization=norm, backend=b)
        (g.values * w[:g.nnz]).sum().backward()
        return g, xs.grad

    result = expect(run, backend, valid)
    if result is None:
        return RAISED
    graph, grad = result
    n = x.shape[0]
    assert graph.shape == (n, n) and graph.nnz == n * k
    assert torch.equal(graph.indptr, torch.arange(0, n * k + 1, k))
    idx = graph.indices.reshape(n, k)
    assert bool((idx[:, 1:] > idx[:, :-1]).all()), "columns are not sorted within rows"
    assert_topk_sets(idx, similarity_scores(x, None, True), x.dtype)
    values, expected_grad = knn_graph_exact(x, idx, norm, w[:graph.nnz])
    assert_close(graph.values.detach().reshape(n, k), values, what="values")
    assert_close(grad, expected_grad, what="gradient")
    return COMPARED


@pytest.mark.parametrize("backend", BACKENDS)
@fuzz
def test_spmm_and_its_gradients(data, backend, valid):
    """NaN / inf in x are valid here: they propagate as in a sparse product."""
    fault = None if valid else data.draw(st.sampled_from(["dtype", "rows"]), label="fault")
    n_rows, n_cols = data.draw(st.integers(0, 30)), data.draw(st.integers(1, 30))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    graph, _ = data.draw(csr_graphs(n_rows, n_cols, dtype), label="graph")
    x_rows = n_cols + 1 if fault == "rows" else n_cols
    x = data.draw(matrices(max_rows=x_rows, min_rows=x_rows, dtype=dtype,
                           kinds=VALID_KINDS + ("nan", "inf")), label="x")
    if fault == "dtype":
        x = x.to(torch.float64 if dtype == torch.float32 else torch.float32)
    upstream = torch.linspace(-1, 1, max(n_rows * x.shape[1], 1), dtype=dtype)[
        :n_rows * x.shape[1]].reshape(n_rows, x.shape[1])

    def run(b):
        vals = graph.values.clone().requires_grad_()
        xs = x.clone().requires_grad_()
        y = mf.spmm(graph.with_values(vals), xs, backend=b)
        (y * upstream).sum().backward()
        return y.detach(), vals.grad, xs.grad

    result = expect(run, backend, valid)
    if result is None:
        return RAISED
    y, gv, gx = result
    ey, egx, egv = spmm_exact(graph.to_dense(), x, upstream)
    assert_close(y, ey, what="y")
    assert_close(gx, egx, what="x gradient")
    assert_close(gv, egv, what="values gradient")
    return COMPARED


@fuzz_without_backend
def test_csr_graph_construction_rejects_malformed_structure(data, _backend, valid):
    n_rows, n_cols = data.draw(st.integers(1, 8)), data.draw(st.integers(1, 8))
    rows = [sorted(data.draw(st.sets(st.integers(0, n_cols - 1), max_size=n_cols)))
            for _ in range(n_rows)]
    if not valid:
        # one fault: a column out of range, a repeated column or two swapped columns
        r = data.draw(st.integers(0, n_rows - 1), label="row")
        fault = data.draw(st.sampled_from(["range", "duplicate", "order"]), label="fault")
        if fault == "range" or not rows[r]:
            rows[r] = [*rows[r], data.draw(st.sampled_from([-1, n_cols, n_cols + 5]))]
        elif fault == "duplicate":
            rows[r] = [*rows[r], rows[r][-1]]
        else:
            rows[r] = rows[r][::-1] if len(rows[r]) > 1 else [*rows[r], rows[r][0]]
    counts = [len(r) for r in rows]
    indptr = torch.tensor([0, *torch.tensor(counts).cumsum(0).tolist()])
    cols = [c for r in rows for c in r]
    indices = torch.tensor(cols, dtype=torch.int64)
    well_formed = all(0 <= c < n_cols for c in cols) and all(r == sorted(set(r)) for r in rows)
    if well_formed:
        g = mf.CSRGraph(indptr, indices, shape=(n_rows, n_cols))
        assert g.nnz == len(cols)
        assert torch.equal(g.to_dense() != 0, torch.tensor(
            [[c in r for c in range(n_cols)] for r in rows]))
        return COMPARED
    with pytest.raises(ValueError, match="indices|column"):
        mf.CSRGraph(indptr, indices, shape=(n_rows, n_cols))
    event("raised InputError")
    return RAISED


@pytest.mark.parametrize("backend", BACKENDS)
@fuzz
def test_bipartite_graph(data, backend, valid):
    n_users, n_items = data.draw(st.integers(1, 20)), data.draw(st.integers(1, 20))
    m = data.draw(st.integers(0 if valid else 1, 60))
    users = data.draw(st.lists(st.integers(0, n_users - 1), min_size=m, max_size=m))
    items = data.draw(st.lists(st.integers(0, n_items - 1), min_size=m, max_size=m))
    if not valid:  # an id one past either end: an error naming the argument
        e = data.draw(st.integers(0, m - 1), label="entry")
        if data.draw(st.booleans(), label="users"):
            users[e] = data.draw(st.sampled_from([-1, n_users]))
        else:
            items[e] = data.draw(st.sampled_from([-1, n_items]))
    users, items = torch.tensor(users, dtype=torch.int64), torch.tensor(items, dtype=torch.int64)
    norm = data.draw(st.sampled_from(["sym", "rw", "none"]))
    self_loops = data.draw(st.booleans())
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    result = expect(lambda b: mf.bipartite_graph(users, items, n_users, n_items,
                                                 normalization=norm, self_loops=self_loops,
                                                 dtype=dtype, backend=b), backend, valid)
    if result is None:
        return RAISED
    expected = bipartite_exact(users, items, n_users, n_items, norm, self_loops, dtype)
    stored = expected.value != 0
    assert torch.equal(result.to_dense() != 0, stored), "the stored entries differ"
    result.validate()
    rows, cols = torch.nonzero(stored, as_tuple=True)
    assert_close(result.values, expected[rows, cols], what="values")
    return COMPARED


@pytest.mark.parametrize("backend", backends_with("contrastive_forward"))
@fuzz
def test_contrastive_loss(data, backend, valid):
    fault = None if valid else data.draw(st.sampled_from(["values", "shape", "tau"]),
                                         label="fault")
    z1 = data.draw(matrices(max_rows=25, min_rows=1,
                            kinds=INVALID_KINDS if fault == "values" else VALID_KINDS),
                   label="z1")
    z2 = data.draw(matrices(max_rows=z1.shape[0], min_rows=z1.shape[0], max_cols=z1.shape[1],
                            dtype=z1.dtype), label="z2")
    if z2.shape != z1.shape:
        gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
        z2 = torch.randn(z1.shape, generator=gen, dtype=z1.dtype)
    if fault == "shape":
        z2 = torch.randn(z1.shape[0] + 1, z1.shape[1], dtype=z1.dtype,
                         generator=_generator(data))
    tau = -0.5 if fault == "tau" else data.draw(st.sampled_from([0.02, 0.05, 0.5, 2.0]),
                                                label="tau")
    symmetric = data.draw(st.booleans(), label="symmetric")

    def run(b):
        a, c = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        loss = mf.contrastive_loss(a, c, tau=tau, symmetric=symmetric, backend=b)
        return (loss.detach(), *torch.autograd.grad(loss, (a, c)))

    result = expect(run, backend, valid)
    if result is None:
        return RAISED
    loss, g1, g2 = result
    el, eg1, eg2 = contrastive_exact(z1, z2, tau, symmetric)
    assert_close(loss, el, what="loss")
    assert_close(g1, eg1, what="z1 gradient")
    assert_close(g2, eg2, what="z2 gradient")
    return COMPARED


@pytest.mark.parametrize("backend", backends_with("contrastive_forward"))
@fuzz
def test_contrastive_fusion_loss(data, backend, valid):
    fault = None if valid else data.draw(st.sampled_from(["values", "weights", "tau"]),
                                         label="fault")
    m = data.draw(st.integers(1, 3), label="views")
    first = data.draw(matrices(max_rows=25, min_rows=1,
                               kinds=INVALID_KINDS if fault == "values" else VALID_KINDS),
                      label="view 0")
    views = [first] + [data.draw(matrices(max_rows=first.shape[0], min_rows=first.shape[0],
                                          max_cols=first.shape[1], dtype=first.dtype),
                                 label=f"view {v}") for v in range(1, m)]
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    views = [v if v.shape == first.shape
             else torch.randn(first.shape, generator=gen, dtype=first.dtype) for v in views]
    w = torch.softmax(torch.randn(first.shape[0], m, generator=gen, dtype=first.dtype), dim=1)
    if fault == "weights":
        w = w.masked_fill(w == w.max(), float("nan"))
    tau = 0.0 if fault == "tau" else data.draw(st.sampled_from([0.02, 0.05, 0.5, 2.0]),
                                               label="tau")
    strategy = data.draw(st.sampled_from(["auto", "fused", "separate"]), label="strategy")
    if valid:
        fused = sum(w[:, j:j + 1] * v for j, v in enumerate(views))
        # a fused view that cancels to a zero row is an error; drawn weights almost never do
        assume(not _zero_rows(fused))

    def run(b):
        vs = [v.clone().requires_grad_() for v in views]
        ws = w.clone().requires_grad_()
        loss = mf.contrastive_fusion_loss(vs, ws, tau=tau, strategy=strategy, backend=b)
        return (loss.detach(), *torch.autograd.grad(loss, (*vs, ws)))

    result = expect(run, backend, valid)
    if result is None:
        return RAISED
    loss, *grads = result
    el, egv, egw = fusion_exact(views, w, tau)
    assert_close(loss, el, what="loss")
    for j, (g, e) in enumerate(zip(grads[:-1], egv, strict=True)):
        assert_close(g, e, what=f"views[{j}] gradient")
    assert_close(grads[-1], egw, what="weights gradient")
    return COMPARED


@pytest.mark.parametrize("backend", BACKENDS)
@fuzz
def test_propagate(data, backend, valid):
    n = data.draw(st.integers(1, 25))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    graph, _ = data.draw(csr_graphs(n, n, dtype), label="graph")
    x = data.draw(matrices(max_rows=n, min_rows=n, dtype=dtype,
                           kinds=VALID_KINDS + ("nan", "inf")), label="x")
    if valid:
        layers = data.draw(st.integers(0, 3), label="layers")
        combine = data.draw(st.sampled_from(["last", "mean"]), label="combine")
    else:
        layers, combine = data.draw(st.sampled_from([(-1, "last"), (2, "sum"), (1.5, "mean")]),
                                    label="fault")

    def run(b):
        xs = x.clone().requires_grad_()
        y = mf.propagate(graph, xs, layers, combine=combine, backend=b)
        y.sum().backward()
        return y.detach(), xs.grad

    result = expect(run, backend, valid)
    if result is None:
        return RAISED
    y, gx = result
    ey, egx = propagate_exact(graph.to_dense(), x, layers, combine)
    assert_close(y, ey, what="y")
    assert_close(gx, egx, what="gradient")
    return COMPARED


@pytest.mark.parametrize("backend", BACKENDS)
@fuzz
def test_full_ranking(data, backend, valid):
    """Integer embeddings give exact scores with ties everywhere (the tie rule decides the
    ranking); random ones are compared when no two items are within rounding of each other at
    a cut-off (two correct rankings may order such a near tie either way)."""
    from micro_fast.metrics import full_ranking

    fault = None if valid else data.draw(st.sampled_from(["values", "ks", "ndcg"]),
                                         label="fault")
    n_users, n_items = data.draw(st.integers(1, 30)), data.draw(st.integers(1, 40))
    kinds = ("nan", "inf") if fault == "values" else ("normal", "integers")
    users = data.draw(matrices(max_rows=n_users, min_rows=n_users, max_cols=6,
                               dtype=torch.float64, kinds=kinds), label="user_emb")
    items = data.draw(matrices(max_rows=n_items, min_rows=n_items, max_cols=users.shape[1],
                               dtype=torch.float64, kinds=("normal", "integers")),
                      label="item_emb")
    if items.shape[1] != users.shape[1]:
        gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
        items = torch.randn(n_items, users.shape[1], generator=gen, dtype=torch.float64)
    train, train_mask = data.draw(csr_graphs(n_users, n_items, torch.float64), label="train")
    target, target_mask = data.draw(csr_graphs(n_users, n_items, torch.float64),
                                    label="target")
    if valid and not bool(target_mask.any()):
        target_mask[0, 0] = True  # a valid evaluation has someone to evaluate
        target = mf.CSRGraph.from_dense(target_mask.double())
    ks = (0,) if fault == "ks" else tuple(
        data.draw(st.lists(st.integers(1, n_items + 2), min_size=1, max_size=3)))
    ndcg = "ideal" if fault == "ndcg" else data.draw(st.sampled_from(["standard", "published"]))
    if valid:
        scores = similarity_scores(users, items, False)
        tol = tolerance(scores, torch.float64)
        ranked, order = torch.sort(scores.value.masked_fill(train_mask, -float("inf")),
                                   dim=1, descending=True, stable=True)
        depth = min(max(ks) + 1, n_items)
        rows = target_mask.any(1)
        gaps = ranked[:, :-1] - ranked[:, 1:]
        slack = tol.gather(1, order)[:, :-1] + tol.gather(1, order)[:, 1:]
        near = (gaps <= slack) & (slack > 0) & torch.isfinite(ranked[:, 1:])
        assume(not bool(near[rows, :depth - 1].any()))
    result = expect(lambda b: full_ranking(users, items, train, target, ks, ndcg=ndcg,
                                           user_block=7, backend=b), backend, valid)
    if result is None:
        return RAISED
    train_sets = [set(torch.nonzero(r).flatten().tolist()) for r in train_mask]
    target_sets = [set(torch.nonzero(r).flatten().tolist()) for r in target_mask]
    expected = ranking_metrics((users @ items.T).tolist(), train_sets, target_sets, ks, ndcg)
    assert result.keys() == expected.keys()
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
    return COMPARED


@pytest.mark.parametrize("backend", BACKENDS)
@fuzz
def test_project_rows(data, backend, valid):
    fault = None if valid else data.draw(
        st.sampled_from(["order", "range", "values", "shape", "dtype"]), label="fault")
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    x = data.draw(matrices(min_rows=1, max_cols=40, dtype=dtype), label="x")
    n, d = x.shape
    f = data.draw(st.integers(1, 40), label="features out")
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    weight = torch.randn(f, d, generator=gen, dtype=dtype)
    bias = torch.randn(f, generator=gen, dtype=dtype) if data.draw(st.booleans()) else None
    rows = torch.nonzero(torch.rand(n, generator=gen) < data.draw(
        st.sampled_from([0.0, 0.3, 1.0]))).flatten()
    if fault == "order":
        rows = torch.cat([rows, rows[:1]]) if rows.numel() else torch.tensor([0, 0])
    elif fault == "range":
        rows = torch.cat([rows, torch.tensor([n])])
    elif fault == "values":
        x = x.clone()
        rows = torch.arange(n)
        x[data.draw(st.integers(0, n - 1)), 0] = float("nan")
    elif fault == "shape":
        weight = torch.randn(f, d + 1, generator=gen, dtype=dtype)
    elif fault == "dtype":
        weight = weight.to(torch.float64 if dtype == torch.float32 else torch.float32)
    upstream = torch.randn(rows.numel(), f, generator=gen, dtype=dtype)

    def run(b):
        xs, ws = x.clone().requires_grad_(), weight.clone().requires_grad_()
        bs = None if bias is None else bias.clone().requires_grad_()
        z = mf.project_rows(xs, ws, bs, rows, backend=b)
        inputs = [t for t in (xs, ws, bs) if t is not None]
        grads = torch.autograd.grad((z * upstream).sum(), inputs, allow_unused=True)
        return z.detach(), [torch.zeros_like(t) if g is None else g
                            for t, g in zip(inputs, grads, strict=True)]

    result = expect(run, backend, valid)
    if result is None:
        return RAISED
    z, grads = result
    ez, egx, egw, egb = project_rows_exact(x, weight, bias, rows, upstream)
    assert_close(z, ez, what="z")
    assert_close(grads[0], egx, what="x gradient")
    assert_close(grads[1], egw, what="weight gradient")
    if bias is not None:
        assert_close(grads[2], egb, what="bias gradient")
    return COMPARED


@pytest.mark.parametrize("backend", backends_with("sample_edges"))
@fuzz
def test_sample_edges(data, backend, valid):
    """The draw's contract: m distinct ascending ids of positive weight, a function of the seed
    alone (the same on every backend and thread count); every positive id when m is their
    number."""
    fault = None if valid else data.draw(
        st.sampled_from(["negative", "nan", "too_many", "seed"]), label="fault")
    n = data.draw(st.integers(0, 60), label="n")
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="data seed"))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    w = torch.rand(n, generator=gen, dtype=dtype)
    w[torch.rand(n, generator=gen) < data.draw(st.sampled_from([0.0, 0.3, 0.9]))] = 0.0
    kind = data.draw(st.sampled_from(["uniform", "skewed", "tiny", "huge"]), label="weights")
    w = {"uniform": w, "skewed": w**8, "tiny": w * 1e-30, "huge": w * 1e30}[kind]
    positive = int((w > 0).sum())
    m = data.draw(st.integers(0, positive), label="m")
    seed = data.draw(st.integers(0, 2**63 - 1), label="seed")
    if fault == "negative":
        w = torch.cat([w, torch.tensor([-1.0], dtype=dtype)])
    elif fault == "nan":
        w = torch.cat([w, torch.tensor([float("nan")], dtype=dtype)])
    elif fault == "too_many":
        m = positive + 1
        w = torch.cat([w, torch.zeros(1, dtype=dtype)])  # room for m ids, too few positive
    elif fault == "seed":
        seed = -1

    result = expect(lambda b: mf.sample_edges(w, m, seed=seed, backend=b), backend, valid)
    if result is None:
        return RAISED
    ids = result
    assert ids.dtype == torch.int64 and ids.shape == (m,)
    assert bool((ids[1:] > ids[:-1]).all()), "ids are not distinct and ascending"
    assert bool((w[ids] > 0).all()), "an id of zero weight was drawn"
    if m == positive:
        assert torch.equal(ids, torch.nonzero(w > 0).flatten())
    for other in backends_with("sample_edges"):
        assert torch.equal(mf.sample_edges(w, m, seed=seed, backend=other), ids), other
    return COMPARED


def _cpp():
    if "cpp" not in backends.available():
        pytest.skip("cpp backend not built")
    from micro_fast.backends import cpp

    return cpp


@valid_only
def test_topk_similarity_shards(data, _backend, _valid):
    """The shard form of the symmetric search (``micro_fast.distributed``'s): every shard's
    lists, merged, are the exact top-k."""
    from micro_fast.distributed import merge_topk

    cpp = _cpp()
    x = data.draw(matrices(min_rows=1, max_rows=60, max_cols=20), label="x")
    n = x.shape[0]
    k = data.draw(st.integers(1, n), label="k")
    count = data.draw(st.integers(1, 4), label="shards")
    block = data.draw(st.sampled_from([None, 1, 5, 16]), label="block")
    exclude = mask = None
    if data.draw(st.booleans(), label="with exclude"):
        exclude, mask = data.draw(csr_graphs(n, n), label="exclude")
    ex = None if exclude is None else (exclude.indptr, exclude.indices)
    parts = [cpp.topk_similarity_shard(x.contiguous(), k, ex, block, s, count)
             for s in range(count)]
    v, i = merge_topk(torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts]), k)
    assert_topk(v, i, x, None, k, exclude=mask)
    return COMPARED


@valid_only
def test_contrastive_shards(data, _backend, _valid):
    """The shard forms of both losses, W threads playing W processes: the parts add up to the
    exact loss and gradients."""
    if "cpp" not in backends.available():
        pytest.skip("cpp backend not built")
    z1 = data.draw(matrices(min_rows=1, max_rows=40, max_cols=12), label="z1")
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    z2 = torch.randn(z1.shape, generator=gen, dtype=z1.dtype)
    count = data.draw(st.integers(1, 4), label="shards")
    tau = data.draw(st.sampled_from([0.02, 0.5, 2.0]), label="tau")
    block = data.draw(st.sampled_from([None, 4, 16]), label="block")
    if data.draw(st.booleans(), label="fusion"):
        w = torch.softmax(torch.randn(z1.shape[0], 2, generator=gen, dtype=z1.dtype), dim=1)
        strategy = data.draw(st.sampled_from(["fused", "separate"]), label="strategy")
        value, grads, _ = run_shards(count, lambda s, a, b, ws: mf.contrastive_fusion_loss(
            [a, b], ws, tau=tau, block_size=block, strategy=strategy, backend="cpp", shard=s),
            [z1, z2, w])
        el, egv, egw = fusion_exact([z1, z2], w, tau)
        expected = [*egv, egw]
    else:
        symmetric = data.draw(st.booleans(), label="symmetric")
        value, grads, _ = run_shards(count, lambda s, a, b: mf.contrastive_loss(
            a, b, tau=tau, symmetric=symmetric, block_size=block, backend="cpp", shard=s),
            [z1, z2])
        el, *expected = contrastive_exact(z1, z2, tau, symmetric)
    # each shard rounds its own share: the sum carries up to count roundings more
    assert_close(value, Bounded(el.value, el.err * count, el.u), what="loss")
    for j, (g, e) in enumerate(zip(grads, expected, strict=True)):
        assert_close(g, Bounded(e.value, e.err * count, e.u), what=f"gradient {j}")
    return COMPARED
