"""Fuzzing every public op on every CPU backend with adversarial inputs.

Each generated case either matches torch_ref (values, indices and gradients) or raises one of
the documented exceptions (ValueError / TypeError naming the argument, MemoryBudgetError);
never a crash, a hang or silent garbage. Inputs: empty and one-row tensors, k equal to the
number of keys, all-equal rows (ties everywhere), huge and tiny magnitudes, NaN / inf,
non-contiguous and transposed views, mixed dtypes, CSR graphs with empty rows, duplicate,
unsorted or out-of-range columns. The CI profile runs 30 examples per test and backend;
``HYPOTHESIS_PROFILE=long`` runs 2000.
"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_topk_equal, dense_similarity
from hypothesis import given
from hypothesis import strategies as st

import micro_fast as mf
from micro_fast import backends
from micro_fast.memory import MemoryBudgetError

BACKENDS = [b for b in backends.available("cpu") if b != "torch_ref"]
DOCUMENTED = (ValueError, TypeError, MemoryBudgetError)

KINDS = ("normal", "ties", "integers", "huge", "tiny", "nan", "inf", "zero_row")
LAYOUTS = ("contiguous", "transposed", "strided")


def _matrix(draw, rows: int, cols: int, dtype: torch.dtype, kind: str, layout: str):
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    if kind == "ties":
        base = torch.randn(1, cols, generator=gen, dtype=dtype).expand(rows, cols).clone()
    elif kind == "integers":
        base = torch.randint(-2, 3, (rows, cols), generator=gen).to(dtype)
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
def matrices(draw, max_rows=40, max_cols=9, min_rows=0, dtype=None):
    rows = draw(st.integers(min_rows, max_rows))
    cols = draw(st.integers(1, max_cols))
    dtype = dtype or draw(st.sampled_from([torch.float32, torch.float64]))
    return _matrix(draw, rows, cols, dtype, draw(st.sampled_from(KINDS)),
                   draw(st.sampled_from(LAYOUTS)))


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
        return "error", next(c for c in DOCUMENTED if isinstance(exc, c))


def _against_reference(run, backend: str):
    """``(run(backend), run("torch_ref"))`` when both succeed; ``None`` when both raise the same
    documented exception; a failure when only one raises or they raise different ones."""
    got, ref = _outcome(lambda: run(backend)), _outcome(lambda: run("torch_ref"))
    if got[0] == "error" or ref[0] == "error":
        assert got == ref, (got, ref)
        return None
    return got[1], ref[1]


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_topk_similarity(backend, data):
    q = data.draw(matrices(), label="queries")
    keys = data.draw(st.one_of(st.none(), matrices(max_cols=q.shape[1], min_rows=0)),
                     label="keys")
    if keys is not None and data.draw(st.booleans(), label="mixed dtype"):
        keys = keys.to(torch.float64 if keys.dtype == torch.float32 else torch.float32)
    n = q.shape[0] if keys is None else keys.shape[0]
    k = data.draw(st.integers(0, n + 1), label="k")
    normalize = data.draw(st.booleans(), label="normalize")
    exclude = None
    if data.draw(st.booleans(), label="with exclude") and q.shape[0] and n:
        exclude, mask = data.draw(csr_graphs(q.shape[0], n), label="exclude")
    kw = dict(exclude=exclude, normalize=normalize)
    results = _against_reference(lambda b: mf.topk_similarity(q, keys, k, backend=b, **kw),
                                 backend)
    if results is None:
        return
    (v, i), (rv, ri) = results
    sim = dense_similarity(q, q if keys is None else keys, normalize=normalize)
    excl = mask if exclude is not None else None
    rtol = 1e-5 if q.dtype == torch.float32 else 1e-12
    assert_topk_equal(v, i, rv, ri, sim, exclude_mask=excl, rtol=rtol)


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_knn_graph_values_and_gradients(backend, data):
    x = data.draw(matrices(max_rows=30), label="features")
    k = data.draw(st.integers(1, max(1, x.shape[0])), label="k")
    norm = data.draw(st.sampled_from(["sym", "rw", "none"]), label="normalization")
    w = torch.randn(max(x.shape[0], 1) * k, dtype=x.dtype)

    def run(b):
        xs = x.clone().requires_grad_()
        g = mf.knn_graph(xs, k, normalization=norm, backend=b)
        (g.values * w[:g.nnz]).sum().backward()
        return g.indices, g.values.detach(), xs.grad

    results = _against_reference(run, backend)
    if results is None:
        return
    got, ref = results
    rtol, atol = (1e-4, 1e-5) if x.dtype == torch.float32 else (1e-9, 1e-11)
    if not torch.equal(got[0], ref[0]):
        # a near tie cut differently: both neighbour lists must be correct top-k lists
        sim = dense_similarity(x, x, normalize=True)
        v, i = mf.topk_similarity(x, None, k, normalize=True, backend=backend)
        rv, ri = mf.topk_similarity(x, None, k, normalize=True, backend="torch_ref")
        assert_topk_equal(v, i, rv, ri, sim, rtol=max(rtol, 1e-6))
        return
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


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_spmm_and_its_gradients(backend, data):
    n_rows, n_cols = data.draw(st.integers(0, 30)), data.draw(st.integers(1, 30))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    graph, _ = data.draw(csr_graphs(n_rows, n_cols, dtype), label="graph")
    x = data.draw(matrices(max_rows=n_cols, min_rows=n_cols, dtype=dtype), label="x")
    if data.draw(st.booleans(), label="mixed dtype"):
        x = x.to(torch.float64 if dtype == torch.float32 else torch.float32)

    def run(b):
        vals = graph.values.clone().requires_grad_()
        xs = x.clone().requires_grad_()
        y = mf.spmm(graph.with_values(vals), xs, backend=b)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum().backward()
        return y.detach(), vals.grad, xs.grad

    results = _against_reference(run, backend)
    if results is None:
        return
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


@given(data=st.data())
def test_csr_graph_construction_rejects_malformed_structure(data):
    n_rows, n_cols = data.draw(st.integers(1, 8)), data.draw(st.integers(1, 8))
    counts = data.draw(st.lists(st.integers(0, 4), min_size=n_rows, max_size=n_rows))
    indptr = torch.tensor([0, *torch.tensor(counts).cumsum(0).tolist()])
    nnz = int(indptr[-1])
    cols = data.draw(st.lists(st.integers(-2, n_cols + 1), min_size=nnz, max_size=nnz))
    indices = torch.tensor(cols, dtype=torch.int64)
    well_formed = all(0 <= c < n_cols for c in cols) and all(
        cols[s:e] == sorted(set(cols[s:e])) for s, e in zip(indptr[:-1].tolist(),
                                                             indptr[1:].tolist(), strict=True))
    if well_formed:
        g = mf.CSRGraph(indptr, indices, shape=(n_rows, n_cols))
        assert g.nnz == nnz
    else:
        with pytest.raises(ValueError, match="indices|column"):
            mf.CSRGraph(indptr, indices, shape=(n_rows, n_cols))


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_bipartite_graph(backend, data):
    n_users, n_items = data.draw(st.integers(1, 20)), data.draw(st.integers(1, 20))
    m = data.draw(st.integers(0, 60))
    # ids one past either end now and then: an error naming the argument
    users = torch.tensor(data.draw(st.lists(st.integers(-1, n_users), min_size=m, max_size=m)),
                         dtype=torch.int64)
    items = torch.tensor(data.draw(st.lists(st.integers(-1, n_items), min_size=m, max_size=m)),
                         dtype=torch.int64)
    kw = dict(normalization=data.draw(st.sampled_from(["sym", "rw", "none"])),
              self_loops=data.draw(st.booleans()))
    results = _against_reference(
        lambda b: mf.bipartite_graph(users, items, n_users, n_items, backend=b, **kw), backend)
    if results is not None:
        a, b = results
        assert torch.equal(a.indptr, b.indptr) and torch.equal(a.indices, b.indices)
        assert torch.allclose(a.values, b.values, rtol=1e-6)


@pytest.mark.parametrize("backend", [b for b in BACKENDS
                                     if hasattr(backends.get(b, torch.device("cpu")),
                                                "contrastive_forward")])
@given(data=st.data())
def test_contrastive_losses(backend, data):
    z1 = data.draw(matrices(max_rows=25, min_rows=0), label="z1")
    z2 = data.draw(matrices(max_rows=z1.shape[0], min_rows=z1.shape[0], max_cols=z1.shape[1],
                            dtype=z1.dtype), label="z2")
    if z2.shape != z1.shape:
        z2 = torch.randn(z1.shape, dtype=z1.dtype)
    tau = data.draw(st.sampled_from([0.05, 0.5, 2.0]), label="tau")
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))
    w = torch.softmax(torch.randn(z1.shape[0], 2, generator=gen, dtype=z1.dtype), dim=1)

    def run(b):
        a, c = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        wt = w.clone().requires_grad_()
        loss = mf.contrastive_loss(a, c, tau=tau, backend=b) + \
            mf.contrastive_fusion_loss([a, c], wt, tau=tau, backend=b)
        return (loss.detach(), *torch.autograd.grad(loss, (a, c, wt)))

    results = _against_reference(run, backend)
    if results is None:
        return
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


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_propagate(backend, data):
    n = data.draw(st.integers(1, 25))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]))
    graph, _ = data.draw(csr_graphs(n, n, dtype), label="graph")
    x = data.draw(matrices(max_rows=n, min_rows=n, dtype=dtype), label="x")
    layers = data.draw(st.integers(-1, 3), label="layers")
    combine = data.draw(st.sampled_from(["last", "mean", "sum"]), label="combine")

    def run(b):
        xs = x.clone().requires_grad_()
        y = mf.propagate(graph, xs, layers, combine=combine, backend=b)
        y.sum().backward()
        return y.detach(), xs.grad

    results = _against_reference(run, backend)
    if results is None:
        return
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


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_full_ranking(backend, data):
    from micro_fast.metrics import full_ranking

    n_users, n_items = data.draw(st.integers(1, 30)), data.draw(st.integers(1, 40))
    users = data.draw(matrices(max_rows=n_users, min_rows=n_users, max_cols=6,
                               dtype=torch.float64), label="user_emb")
    items = data.draw(matrices(max_rows=n_items, min_rows=n_items, max_cols=users.shape[1],
                               dtype=torch.float64), label="item_emb")
    train, _ = data.draw(csr_graphs(n_users, n_items, torch.float64), label="train")
    target, _ = data.draw(csr_graphs(n_users, n_items, torch.float64), label="target")
    ks = tuple(data.draw(st.lists(st.integers(0, n_items + 2), min_size=1, max_size=3)))
    ndcg = data.draw(st.sampled_from(["standard", "published"]))
    results = _against_reference(
        lambda b: full_ranking(users, items, train, target, ks, ndcg=ndcg, user_block=7,
                               backend=b), backend)
    if results is None:
        return
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
            return
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, rel=1e-9, nan_ok=True), key
