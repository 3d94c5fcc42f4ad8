"""Fuzzing every public op on every CPU backend with adversarial inputs.

Each test draws valid inputs three times in four and invalid ones otherwise. A valid case must
match torch_ref (values, indices and gradients); an invalid one must raise the same documented
exception on both sides (ValueError / TypeError naming the argument, MemoryBudgetError);
never a crash, a hang or silent garbage. Valid inputs: empty and one-row tensors, k equal to the
number of keys, all-equal rows (ties everywhere), integer, huge and tiny magnitudes,
non-contiguous and transposed views, CSR graphs with empty rows. Invalid ones: NaN / inf, zero
rows where a cosine is taken, k out of range, mixed dtypes, out-of-range ids, bad options.
Every case is counted (``hypothesis.event``: "compared values" or "raised <Error>", shown by
``--hypothesis-show-statistics``), and each test checks that at least half of its cases
compared values. The CI profile runs 30 examples per test and backend;
``HYPOTHESIS_PROFILE=long`` runs 2000.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from helpers import assert_topk_equal, dense_similarity
from hypothesis import event, given
from hypothesis import strategies as st

import micro_fast as mf
from micro_fast import backends
from micro_fast.memory import MemoryBudgetError

BACKENDS = [b for b in backends.available("cpu") if b != "torch_ref"]
DOCUMENTED = (ValueError, TypeError, MemoryBudgetError)

VALID_KINDS = ("normal", "ties", "integers", "huge", "tiny")
UNTIED = ("normal",)  # magnitudes are the other tests' business
INVALID_KINDS = ("nan", "inf", "zero_row")
KINDS = VALID_KINDS + INVALID_KINDS
LAYOUTS = ("contiguous", "transposed", "strided")


def _matrix(draw, rows: int, cols: int, dtype: torch.dtype, kind: str, layout: str):
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    if kind == "ties":
        base = torch.randn(1, cols, generator=gen, dtype=dtype).expand(rows, cols).clone()
    elif kind == "integers":
        base = torch.randint(-2, 3, (rows, cols), generator=gen).to(dtype)
        base[(base == 0).all(dim=1)] = 1  # integer rows, none all zero (that is invalid)
    else:
        base = torch.randn(rows, cols, generator=gen, dtype=dtype)
        scale = {"huge": 1e18 if dtype == torch.float32 else 1e150, "tiny": 1e-18}.get(kind)
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
def matrices(draw, max_rows=40, max_cols=9, min_rows=0, dtype=None, kinds=KINDS):
    rows = draw(st.integers(min_rows, max_rows))
    cols = draw(st.integers(1, max_cols))
    dtype = dtype or draw(st.sampled_from([torch.float32, torch.float64]))
    return _matrix(draw, rows, cols, dtype, draw(st.sampled_from(kinds)),
                   draw(st.sampled_from(LAYOUTS)))


def validity(data) -> bool:
    """Whether this case draws valid inputs (three times in four). The choice is a hash of a
    drawn integer, not a small drawn integer: hypothesis favours the ends of a range, and how
    often it lands on the invalid end depends on what ran before in the session."""
    seed = data.draw(st.integers(0, 2**32 - 1), label="validity")
    return (seed * 2654435761 >> 13) % 4 != 3


def _run_cases(body, backend) -> None:
    """``body(data, backend) -> outcome`` under hypothesis, counting the outcomes; at least half
    of the cases must have compared values."""
    tally: Counter = Counter()
    _RAISED.clear()

    @given(data=st.data())
    def case(data):
        tally[body(data, backend)] += 1

    case()
    assert 2 * tally["compared values"] >= sum(tally.values()), (dict(tally), dict(_RAISED))


def fuzz(body):
    """A test of ``body`` for the parametrized ``backend`` (see ``_run_cases``)."""

    def run(backend):
        _run_cases(body, backend)

    run.__name__, run.__doc__ = body.__name__, body.__doc__
    return run


def fuzz_without_backend(body):
    """A test of ``body`` that involves no backend (see ``_run_cases``)."""

    def run():
        _run_cases(body, None)

    run.__name__, run.__doc__ = body.__name__, body.__doc__
    return run


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


def _row_norm_floor(*tensors: torch.Tensor) -> float:
    """The smallest row norm: gradients through an L2 normalization carry rounding noise
    scaled by 1 / |x|, so their tolerances are scaled by this (an exact tie of the radial
    part, e.g. d = 1, leaves only that noise)."""
    norms = [torch.linalg.vector_norm(t.double(), dim=1).min() for t in tensors if t.numel()]
    return max(min(float(n) for n in norms), 1e-300) if norms else 1.0


def _outcome(fn):
    """('ok', result) or ('error', the documented class it is one of; a compiled backend's
    KernelArgumentError is a ValueError); anything undocumented propagates."""
    try:
        return "ok", fn()
    except DOCUMENTED as exc:
        return "error", next(c for c in DOCUMENTED if isinstance(exc, c)), str(exc)


def _against_reference(run, backend: str, valid: bool | None = None):
    """``(run(backend), run("torch_ref"))`` when both succeed; ``None`` when both raise the same
    documented exception; a failure when only one raises or they raise different ones, or when
    an invalid case (``valid=False``) does not raise."""
    got, ref = _outcome(lambda: run(backend)), _outcome(lambda: run("torch_ref"))
    if got[0] == "error" or ref[0] == "error":
        assert got[:2] == ref[:2], (got, ref)
        event(f"raised {got[1].__name__}")
        _RAISED[f"{got[1].__name__}: {got[2]}"[:160]] += 1
        return None
    assert valid is not False, "an invalid case was accepted"
    return got[1], ref[1]


COMPARED, RAISED = "compared values", "raised"
_RAISED: Counter = Counter()  # the errors of the current test, shown when too few compared


@pytest.mark.parametrize("backend", BACKENDS)
@fuzz
def test_topk_similarity(data, backend):
    valid = validity(data)
    fault = None if valid else data.draw(st.sampled_from(["values", "k", "dtype"]),
                                         label="fault")
    kinds = INVALID_KINDS if fault == "values" else VALID_KINDS
    q = data.draw(matrices(min_rows=1, kinds=kinds), label="queries")
    keys = data.draw(st.one_of(st.none(), matrices(max_cols=q.shape[1], min_rows=1,
                                                   dtype=q.dtype, kinds=VALID_KINDS)),
                     label="keys")
    if keys is not None and keys.shape[1] != q.shape[1]:
        keys = torch.randn(keys.shape[0], q.shape[1], dtype=q.dtype)
    if fault == "dtype":
        keys = (q if keys is None else keys).to(
            torch.float64 if q.dtype == torch.float32 else torch.float32)
    n = q.shape[0] if keys is None else keys.shape[0]
    k = data.draw(st.sampled_from([0, n + 1]) if fault == "k" else st.integers(1, n),
                  label="k")
    # a zero row is invalid only when a cosine is taken
    normalize = fault == "values" or data.draw(st.booleans(), label="normalize")
    exclude = None
    if data.draw(st.booleans(), label="with exclude"):
        exclude, mask = data.draw(csr_graphs(q.shape[0], n), label="exclude")
    kw = dict(exclude=exclude, normalize=normalize)
    results = _against_reference(lambda b: mf.topk_similarity(q, keys, k, backend=b, **kw),
                                 backend, valid)
    if results is None:
        return RAISED
    (v, i), (rv, ri) = results
    sim = dense_similarity(q, q if keys is None else keys, normalize=normalize)
    excl = mask if exclude is not None else None
    rtol = 1e-5 if q.dtype == torch.float32 else 1e-12
    assert_topk_equal(v, i, rv, ri, sim, exclude_mask=excl, rtol=rtol)
    return COMPARED


@pytest.mark.parametrize("backend", BACKENDS)
@fuzz
def test_knn_graph_values_and_gradients(data, backend):
    valid = validity(data)
    fault = None if valid else data.draw(st.sampled_from(["values", "k", "normalization"]),
                                         label="fault")
    x = data.draw(matrices(max_rows=30, min_rows=1,
                           kinds=INVALID_KINDS if fault == "values" else VALID_KINDS),
                  label="features")
    k = data.draw(st.sampled_from([0, x.shape[0] + 1]) if fault == "k"
                  else st.integers(1, x.shape[0]), label="k")
    norm = "laplacian" if fault == "normalization" else data.draw(
        st.sampled_from(["sym", "rw", "none"]), label="normalization")
    w = torch.randn(max(x.shape[0], 1) * max(k, 1), dtype=x.dtype)

    def run(b):
        xs = x.clone().requires_grad_()
        g = mf.knn_graph(xs, k, normalization=norm, backend=b)
        (g.values * w[:g.nnz]).sum().backward()
        return g.indices, g.values.detach(), xs.grad

    results = _against_reference(run, backend, valid)
    if results is None:
        return RAISED
    got, ref = results
    rtol, atol = (1e-4, 1e-5) if x.dtype == torch.float32 else (1e-9, 1e-11)
    if not torch.equal(got[0], ref[0]):
        # a near tie cut differently: both neighbour lists must be correct top-k lists
        sim = dense_similarity(x, x, normalize=True)
        v, i = mf.topk_similarity(x, None, k, normalize=True, backend=backend)
        rv, ri = mf.topk_similarity(x, None, k, normalize=True, backend="torch_ref")
        assert_topk_equal(v, i, rv, ri, sim, rtol=max(rtol, 1e-6))
        return COMPARED
    values, grad = got[1:]
    ref_values, ref_grad = ref[1:]
    assert torch.allclose(values, ref_values, rtol=rtol, atol=atol)
    # degrees (sums of kept similarities of either sign) near zero make rw / sym ill-conditioned
    cond = 1.0
    if norm != "none":
        raw, _ = mf.topk_similarity(x.double(), None, k, normalize=True, backend="torch_ref")
        cond = min(float((raw.abs().sum(1) / raw.sum(1).abs().clamp_min(1e-300)).max()),
                   1e100) ** 2
    grad_atol = atol * k * float(w.abs().max()) * max(1.0, 1.0 / _row_norm_floor(x)) * cond
    assert torch.allclose(grad, ref_grad, rtol=rtol, atol=grad_atol), (grad - ref_grad).abs().max()
    return COMPARED


@pytest.mark.parametrize("backend", BACKENDS)
@fuzz
def test_spmm_and_its_gradients(data, backend):
    """NaN / inf in x are valid here: they propagate as in dense arithmetic."""
    valid = validity(data)
    fault = None if valid else data.draw(st.sampled_from(["dtype", "rows"]), label="fault")
    n_rows, n_cols = data.draw(st.integers(0, 30)), data.draw(st.integers(1, 30))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    graph, _ = data.draw(csr_graphs(n_rows, n_cols, dtype), label="graph")
    x_rows = n_cols + 1 if fault == "rows" else n_cols
    x = data.draw(matrices(max_rows=x_rows, min_rows=x_rows, dtype=dtype), label="x")
    if fault == "dtype":
        x = x.to(torch.float64 if dtype == torch.float32 else torch.float32)

    def run(b):
        vals = graph.values.clone().requires_grad_()
        xs = x.clone().requires_grad_()
        y = mf.spmm(graph.with_values(vals), xs, backend=b)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum().backward()
        return y.detach(), vals.grad, xs.grad

    results = _against_reference(run, backend, valid)
    if results is None:
        return RAISED
    got, ref = results
    # sums of terms of either sign: error relative to the terms' size, not the result's
    eps = 1e-5 if x.dtype == torch.float32 else 1e-12
    dense = graph.to_dense().to(x.dtype).abs()
    ax = x.abs().nan_to_num(posinf=0.0)
    scales = [float((dense @ ax).max()) if n_rows else 0.0,
              float(ax.max()) * x.shape[0] if x.numel() else 0.0,
              float((dense.T @ torch.ones(n_rows, x.shape[1], dtype=x.dtype)).max())
              if n_rows else 0.0]
    for a, b, scale in zip(got, ref, scales, strict=True):
        if a is None or b is None:
            assert a is None and b is None
        else:
            assert torch.allclose(a, b, rtol=eps, atol=eps * (1.0 + scale), equal_nan=True)
    return COMPARED


@fuzz_without_backend
def test_csr_graph_construction_rejects_malformed_structure(data, _backend):
    n_rows, n_cols = data.draw(st.integers(1, 8)), data.draw(st.integers(1, 8))
    rows = [sorted(data.draw(st.sets(st.integers(0, n_cols - 1), max_size=n_cols)))
            for _ in range(n_rows)]
    if not validity(data):
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
def test_bipartite_graph(data, backend):
    valid = validity(data)
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
    kw = dict(normalization=data.draw(st.sampled_from(["sym", "rw", "none"])),
              self_loops=data.draw(st.booleans()))
    results = _against_reference(
        lambda b: mf.bipartite_graph(users, items, n_users, n_items, backend=b, **kw), backend,
        valid)
    if results is None:
        return RAISED
    a, b = results
    assert torch.equal(a.indptr, b.indptr) and torch.equal(a.indices, b.indices)
    assert torch.allclose(a.values, b.values, rtol=1e-6)
    return COMPARED


@pytest.mark.parametrize("backend", [b for b in BACKENDS
                                     if hasattr(backends.get(b, torch.device("cpu")),
                                                "contrastive_forward")])
@fuzz
def test_contrastive_losses(data, backend):
    valid = validity(data)
    fault = None if valid else data.draw(st.sampled_from(["values", "shape", "tau"]),
                                         label="fault")
    z1 = data.draw(matrices(max_rows=25, min_rows=1,
                            kinds=INVALID_KINDS if fault == "values" else VALID_KINDS),
                   label="z1")
    z2 = data.draw(matrices(max_rows=z1.shape[0], min_rows=z1.shape[0], max_cols=z1.shape[1],
                            dtype=z1.dtype, kinds=VALID_KINDS), label="z2")
    if z2.shape != z1.shape:
        z2 = torch.randn(z1.shape, dtype=z1.dtype)
    if fault == "shape":
        z2 = torch.randn(z1.shape[0] + 1, z1.shape[1], dtype=z1.dtype)
    tau = -0.5 if fault == "tau" else data.draw(st.sampled_from([0.05, 0.5, 2.0]), label="tau")
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    w = torch.softmax(torch.randn(z1.shape[0], 2, generator=gen, dtype=z1.dtype), dim=1)

    def run(b):
        a, c = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        wt = w.clone().requires_grad_()
        loss = mf.contrastive_loss(a, c, tau=tau, backend=b) + \
            mf.contrastive_fusion_loss([a, c], wt, tau=tau, backend=b)
        return (loss.detach(), *torch.autograd.grad(loss, (a, c, wt)))

    results = _against_reference(run, backend, valid)
    if results is None:
        return RAISED
    got, ref = results
    rtol, atol = (2e-4, 1e-4) if z1.dtype == torch.float32 else (1e-8, 1e-9)
    loss, *grads = got
    ref_loss, *ref_grads = ref
    assert bool(torch.isfinite(loss)) and torch.allclose(loss, ref_loss, rtol=rtol, atol=atol)
    # dL/d(normalized rows) is up to ~ N / tau; the normalization's backward divides by |x|
    fused = w[:, :1] * z1 + w[:, 1:] * z2
    # views that nearly cancel in the fused view (|h| << |w1 z1| + |w2 z2|) scale its gradients
    spread = (w[:, :1] * z1).norm(dim=1) + (w[:, 1:] * z2).norm(dim=1)
    cancel = min(float((spread / fused.norm(dim=1).clamp_min(1e-300)).max()), 1e100) ** 2
    grad_atol = atol * (z1.shape[0] / tau) * max(1.0, 1.0 / _row_norm_floor(z1, z2, fused)) \
        * cancel
    for a, b in zip(grads, ref_grads, strict=True):
        assert bool(torch.isfinite(a).all())
        assert torch.allclose(a, b, rtol=rtol, atol=grad_atol), (a - b).abs().max()
    return COMPARED


@pytest.mark.parametrize("backend", BACKENDS)
@fuzz
def test_propagate(data, backend):
    valid = validity(data)
    n = data.draw(st.integers(1, 25))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    graph, _ = data.draw(csr_graphs(n, n, dtype), label="graph")
    x = data.draw(matrices(max_rows=n, min_rows=n, dtype=dtype), label="x")
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

    results = _against_reference(run, backend, valid)
    if results is None:
        return RAISED
    got, ref = results
    # sums of terms of either sign: error relative to the terms' size (|A|^l |x|)
    eps = 1e-5 if dtype == torch.float32 else 1e-12
    dense = graph.to_dense().to(dtype).abs()
    fwd = x.abs().nan_to_num(posinf=0.0)
    bwd = torch.ones_like(fwd)
    scale = float(fwd.max())
    for _ in range(max(layers, 0)):
        fwd, bwd = dense @ fwd, dense.T @ bwd
        scale = max(scale, float(fwd.max()), float(bwd.max()))
    for a, b in zip(got, ref, strict=True):
        assert torch.allclose(a, b, rtol=eps, atol=eps * (1.0 + scale), equal_nan=True)
    return COMPARED


@pytest.mark.parametrize("backend", BACKENDS)
@fuzz
def test_full_ranking(data, backend):
    """Ties are the top-k tests' business: two correct rankings may order a tie at a cut-off
    differently, so the embeddings here have none by construction (such cases are skipped)."""
    from micro_fast.metrics import full_ranking

    valid = validity(data)
    fault = None if valid else data.draw(st.sampled_from(["values", "ks", "ndcg"]),
                                         label="fault")
    n_users, n_items = data.draw(st.integers(1, 30)), data.draw(st.integers(1, 40))
    users = data.draw(matrices(max_rows=n_users, min_rows=n_users, max_cols=6,
                               dtype=torch.float64,
                               kinds=("nan", "inf") if fault == "values" else UNTIED),
                      label="user_emb")
    items = data.draw(matrices(max_rows=n_items, min_rows=n_items, max_cols=users.shape[1],
                               dtype=torch.float64, kinds=UNTIED), label="item_emb")
    if items.shape[1] != users.shape[1]:
        items = torch.randn(n_items, users.shape[1], dtype=torch.float64)
    train, _ = data.draw(csr_graphs(n_users, n_items, torch.float64), label="train")
    target, _ = data.draw(csr_graphs(n_users, n_items, torch.float64), label="target")
    # at least one user with a held-out item: a valid evaluation has someone to evaluate
    if valid and int(target.degrees().gt(0).sum()) == 0:
        dense = target.to_dense()
        dense[0, 0] = 1.0
        target = mf.CSRGraph.from_dense(dense)
    ks = (0,) if fault == "ks" else tuple(
        data.draw(st.lists(st.integers(1, n_items + 2), min_size=1, max_size=3)))
    ndcg = "ideal" if fault == "ndcg" else data.draw(st.sampled_from(["standard", "published"]))
    results = _against_reference(
        lambda b: full_ranking(users, items, train, target, ks, ndcg=ndcg, user_block=7,
                               backend=b), backend, valid)
    if results is None:
        return RAISED
    got, ref = results
    assert got.keys() == ref.keys()
    # two correct rankings may order a near tie at a cut-off differently: compare only when no
    # evaluated user has one
    scores = users @ items.T
    scores[train.to_dense() != 0] = -float("inf")
    ranked = scores.sort(dim=1, descending=True).values
    rows = target.degrees() > 0
    # NDCG depends on the order inside the list too: any near tie up to the deepest cut-off
    depth = min(max(ks) + 1, n_items)
    if depth > 1 and bool(rows.any()):
        top = ranked[rows, :depth]
        finite = torch.isfinite(top[:, 1:]) & torch.isfinite(top[:, :-1])
        gaps = (top[:, :-1] - top[:, 1:]).abs()
        if bool(((gaps <= 1e-9 * (1 + top[:, :1].abs())) & finite).any()):
            event("near tie at a cut-off: not compared")
            return "near tie"
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, rel=1e-9, nan_ok=True), key
    return COMPARED
