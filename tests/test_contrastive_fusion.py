"""contrastive_fusion_loss: the fused-view kernel and the separate losses of every backend against
the dense float64 statement of ``oracles.fusion_exact``, gradients (gradcheck), the raw kernel
statistics, thread-count determinism, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bounds import Bounded, assert_close, cat, normalize_rows
from hypothesis import given
from hypothesis import strategies as st
from oracles import fuse, fusion_exact

import micro_fast as mf
from micro_fast import backends

needs_cpp = pytest.mark.skipif("cpp" not in backends.available(), reason="cpp not available")


def _inputs(n, d, m, dtype, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    views = [torch.randn(n, d, generator=gen, dtype=dtype) * scale for _ in range(m)]
    weights = torch.softmax(torch.randn(n, m, generator=gen, dtype=dtype), dim=1)
    return views, weights


def _value_and_grads(views, weights, **kw):
    vs = [v.clone().requires_grad_() for v in views]
    w = weights.clone().requires_grad_()
    loss = mf.contrastive_fusion_loss(vs, w, **kw)
    return (loss.detach(), *torch.autograd.grad(loss, (*vs, w)))


def _assert_exact(got, views, weights, tau=0.5, symmetric=False):
    """(loss, view gradients..., weights gradient) within the tolerance of the exact values."""
    loss, views_grad, weights_grad = fusion_exact(views, weights, tau, symmetric)
    names = ["loss", *(f"views[{m}] gradient" for m in range(len(views))), "weights gradient"]
    for name, g, e in zip(names, got, [loss, *views_grad, weights_grad], strict=True):
        assert_close(g, e, what=name)


@needs_cpp
@given(n=st.integers(1, 200), d=st.integers(1, 150), m=st.integers(1, 4),
       tau=st.floats(0.05, 2.0), double=st.booleans(),
       block=st.sampled_from([None, 1, 8, 24, 64]), seed=st.integers(0, 2**31 - 1))
def test_fused_kernel_matches_exact(n, d, m, tau, double, block, seed):
    dtype = torch.float64 if double else torch.float32
    views, weights = _inputs(n, d, m, dtype, seed)
    got = _value_and_grads(views, weights, tau=tau, block_size=block, backend="cpp")
    _assert_exact(got, views, weights, tau)


@given(n=st.integers(1, 120), d=st.integers(1, 80), m=st.integers(1, 4),
       tau=st.floats(0.05, 2.0), double=st.booleans(),
       block=st.sampled_from([None, 1, 16, 40]), seed=st.integers(0, 2**31 - 1))
def test_every_simd_kernel(simd_isa, n, d, m, tau, double, block, seed):
    """The fused-view kernel of each ISA (tiles, combined-row exps, vector tails)."""
    dtype = torch.float64 if double else torch.float32
    views, weights = _inputs(n, d, m, dtype, seed)
    got = _value_and_grads(views, weights, tau=tau, block_size=block, backend="cpp",
                           strategy="fused")
    _assert_exact(got, views, weights, tau)


def test_every_simd_kernel_gradcheck(simd_isa):
    views, weights = _inputs(29, 11, 2, torch.float64, 5)
    views = [v.requires_grad_() for v in views]
    weights.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b, w: mf.contrastive_fusion_loss([a, b], w, tau=0.3, block_size=8,
                                                   backend="cpp", strategy="fused"),
        (*views, weights))


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_both_strategies_are_exact(dtype):
    views, weights = _inputs(150, 20, 3, dtype, 11)
    for strategy in ("fused", "separate"):
        got = _value_and_grads(views, weights, strategy=strategy, backend="cpp")
        _assert_exact(got, views, weights)


@needs_cpp
@pytest.mark.parametrize("case", ["ties", "one_row", "tiny_norms", "huge_norms", "zero_weight",
                                  "transposed_view"])
def test_adversarial_inputs(case):
    n, d, m = 70, 12, 2
    views, weights = _inputs(n, d, m, torch.float64, 7)
    if case == "ties":  # every row equal: all scores tie
        views = [torch.ones(n, d, dtype=torch.float64) for _ in range(m)]
    elif case == "one_row":
        views, weights = [v[:1] for v in views], weights[:1]
    elif case == "tiny_norms":
        views = [v * 1e-150 for v in views]
    elif case == "huge_norms":
        views = [v * 1e150 for v in views]
    elif case == "zero_weight":  # the fused view is one of the views
        weights = torch.zeros_like(weights)
        weights[:, 0] = 1
    elif case == "transposed_view":  # non-contiguous inputs
        views = [v.T.contiguous().T for v in views]
        assert not views[0].is_contiguous()
    got = _value_and_grads(views, weights, block_size=16, backend="cpp")
    assert all(bool(torch.isfinite(t).all()) for t in got)
    _assert_exact(got, views, weights)


@needs_cpp
@pytest.mark.parametrize("m", [1, 2, 3])
def test_gradcheck(m):
    views, weights = _inputs(23, 5, m, torch.float64, m)
    inputs = [v.requires_grad_() for v in views] + [weights.requires_grad_()]

    def fn(*xs):
        return mf.contrastive_fusion_loss(list(xs[:m]), xs[m], tau=0.3, block_size=8,
                                          backend="cpp")

    assert torch.autograd.gradcheck(fn, inputs)


@needs_cpp
def test_kernel_statistics_are_the_exact_row_log_sum_exps():
    """The raw lse of view q, row i: log(sum_{j != i} e^{<u_qi, u_qj>/tau}
    + sum_j e^{<u_qi, h_j>/tau}) with h the normalized fused view."""
    from micro_fast.backends import cpp

    views, weights = _inputs(150, 33, 3, torch.float64, 3)
    u = torch.stack([v / v.norm(dim=1, keepdim=True) for v in views])
    h = fuse(views, weights)
    coef = weights * torch.stack([v.norm(dim=1) for v in views], 1) / h.norm(dim=1,
                                                                             keepdim=True)
    lse = cpp.contrastive_fusion_forward(u, coef.contiguous(), 0.5, 32)
    hn, _ = normalize_rows(Bounded.exact(h, torch.float64))
    eye = torch.eye(150, dtype=torch.bool)
    for q in range(3):
        uq = Bounded.exact(u[q], torch.float64)
        intra = ((uq @ uq.T) / 0.5).masked_fill(eye, -float("inf"))
        cross = (uq @ hn.T) / 0.5
        assert_close(lse[q], cat([intra, cross], 1).logsumexp(1), what=f"lse of view {q}")


@needs_cpp
def test_repeatable_for_a_thread_count_and_close_across_counts():
    views, weights = _inputs(700, 24, 2, torch.float32, 11)
    results = {}
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 4):
            torch.set_num_threads(threads)
            runs = [_value_and_grads(views, weights, block_size=64, backend="cpp")
                    for _ in range(2)]
            for a, b in zip(*runs, strict=True):
                assert torch.equal(a, b)  # bit-identical across runs
            results[threads] = runs[0]
    finally:
        torch.set_num_threads(before)
    for threads in (1, 2, 4):  # float sums merged in another order: each within rounding
        _assert_exact(results[threads], views, weights)


@pytest.mark.parametrize("backend", ["numba", "torch_ref"])
def test_other_backends_sum_separate_losses(backend):
    if backend not in backends.available():
        pytest.skip(f"{backend} not available")
    views, weights = _inputs(40, 6, 2, torch.float64, 5)
    _assert_exact(_value_and_grads(views, weights, backend=backend), views, weights)


@needs_cpp
@pytest.mark.parametrize("kw", [{"tau": 0.01}, {"symmetric": True}])
def test_cases_without_the_fused_kernel_sum_separate_losses(kw):
    views, weights = _inputs(40, 6, 2, torch.float64, 6)
    got = _value_and_grads(views, weights, backend="cpp", **kw)
    _assert_exact(got, views, weights, kw.get("tau", 0.5), kw.get("symmetric", False))


def test_bad_input():
    v = torch.randn(10, 4)
    w = torch.full((10, 2), 0.5)
    with pytest.raises(ValueError, match="at least one"):
        mf.contrastive_fusion_loss([], w)
    with pytest.raises(ValueError, match=r"views\[1\] has shape"):
        mf.contrastive_fusion_loss([v, torch.randn(9, 4)], w)
    with pytest.raises(TypeError, match=r"views\[1\] dtype"):
        mf.contrastive_fusion_loss([v, v.double()], w)
    with pytest.raises(ValueError, match=r"views\[0\] contains NaN"):
        mf.contrastive_fusion_loss([v.masked_fill(v > 1, float("nan")), v], w)
    with pytest.raises(ValueError, match="weights must be"):
        mf.contrastive_fusion_loss([v, v], w[:, :1])
    with pytest.raises(TypeError, match="weights must have"):
        mf.contrastive_fusion_loss([v, v], w.double())
    with pytest.raises(ValueError, match="weights contains NaN"):
        mf.contrastive_fusion_loss([v, v], w.masked_fill(w > 0, float("inf")))
    with pytest.raises(ValueError, match="tau"):
        mf.contrastive_fusion_loss([v, v], w, tau=0.0)
    with pytest.raises(ValueError, match="block_size"):
        mf.contrastive_fusion_loss([v, v], w, block_size=0)


@needs_cpp
def test_compiled_entry_points_reject_bad_shapes():
    from micro_fast import _C

    u = np.zeros((2, 5, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="coef must be"):
        _C.contrastive_fusion_forward(u, np.zeros((5, 3), dtype=np.float32), 0.5)
    with pytest.raises(ValueError, match="tau"):
        _C.contrastive_fusion_forward(u + 1, np.ones((5, 2), dtype=np.float32), 0.01)
    lse = np.zeros((2, 5), dtype=np.float32)
    with pytest.raises(ValueError, match="g must be"):
        _C.contrastive_fusion_backward(u, np.ones((5, 2), dtype=np.float32), 0.5, lse,
                                       np.zeros((5, 2), dtype=np.float32))
    u9 = np.ones((9, 5, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="at most 8 views"):
        _C.contrastive_fusion_forward(u9, np.ones((5, 9), dtype=np.float32), 0.5)


@needs_cpp
def test_more_views_than_the_fused_kernel_takes_sum_separate_losses():
    """Nine views: past MAX_FUSED_VIEWS even strategy="fused" sums separate losses."""
    from micro_fast.ops.contrastive_fusion import MAX_FUSED_VIEWS

    m = MAX_FUSED_VIEWS + 1
    views, weights = _inputs(30, 5, m, torch.float64, 8)
    got = _value_and_grads(views, weights, backend="cpp", strategy="fused")
    _assert_exact(got, views, weights)
