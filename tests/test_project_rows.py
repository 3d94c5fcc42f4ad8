"""project_rows: every backend and ISA against the dense float64 statement of
``oracles.project_rows_exact``, forward and backward, a float64 gradcheck, and bad input."""

from __future__ import annotations

import pytest
import torch
from bounds import assert_close
from helpers import projection_problem
from hypothesis import given
from hypothesis import strategies as st
from oracles import project_rows_exact

import micro_fast as mf
from micro_fast import backends

BACKENDS = [b for b in ("cpp", "torch_ref") if b in backends.available("cpu")]


@st.composite
def problems(draw):
    n = draw(st.integers(1, 60))
    d = draw(st.integers(1, 90))
    f = draw(st.integers(1, 70))  # past one register strip, a W-wide strip and a rest
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    kind = draw(st.sampled_from(["some", "all", "none", "one"]))
    if kind == "all":
        rows = torch.arange(n)
    elif kind == "none":
        rows = torch.zeros(0, dtype=torch.int64)
    elif kind == "one":
        rows = torch.tensor([int(torch.randint(0, n, (1,), generator=gen))])
    else:
        rows = torch.nonzero(torch.rand(n, generator=gen) < 0.4).flatten()
    x = torch.randn(n, d, generator=gen, dtype=dtype)
    w = torch.randn(f, d, generator=gen, dtype=dtype)
    b = torch.randn(f, generator=gen, dtype=dtype) if draw(st.booleans()) else None
    return x, w, b, rows


def _check(backend, problem):
    x, w, b, rows = problem
    x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
    if b is not None:
        b = b.clone().requires_grad_()
    z = mf.project_rows(x, w, b, rows, backend=backend)
    g = torch.randn(z.shape, generator=torch.Generator().manual_seed(9), dtype=z.dtype)
    inputs = [t for t in (x, w, b) if t is not None]
    ours = torch.autograd.grad((z * g).sum(), inputs, allow_unused=True)
    ez, egx, egw, egb = project_rows_exact(x, w, b, rows, g)
    assert_close(z, ez, what="z")
    names = ("x gradient", "weight gradient", "bias gradient")
    for got, exact, name in zip(ours, (egx, egw, egb)[:len(ours)], names[:len(ours)],
                                strict=True):
        assert_close(torch.zeros_like(exact.value) if got is None else got, exact, what=name)
    outside = torch.ones(x.shape[0], dtype=torch.bool)
    outside[rows] = False
    assert ours[0][outside].abs().max() == 0 if outside.any() else True


@pytest.mark.parametrize("backend", BACKENDS)
@given(problem=problems())
def test_every_backend_equals_the_full_projection_indexed(backend, problem):
    _check(backend, problem)


@given(problem=problems())
def test_every_simd_kernel(simd_isa, problem):
    _check("cpp", problem)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    x, w, b, rows = projection_problem(9, 13, 4, [0, 2, 3, 8], seed=3)
    assert torch.autograd.gradcheck(
        lambda x, w, b: mf.project_rows(x, w, b, rows, backend=backend), (x, w, b))


def test_results_do_not_depend_on_the_thread_count():
    if "cpp" not in backends.available():
        pytest.skip("cpp backend not built")
    gen = torch.Generator().manual_seed(5)
    x, w = torch.randn(3000, 300, generator=gen), torch.randn(64, 300, generator=gen)
    rows = torch.unique(torch.randint(0, 3000, (1500,), generator=gen))
    g = torch.randn(rows.numel(), 64, generator=gen)
    cpp = backends.get("cpp", torch.device("cpu"))
    before = torch.get_num_threads()
    try:
        outs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outs.append((cpp.project_rows_forward(x, rows, w, None),
                         *cpp.project_rows_backward(x, rows, w, g, True, True)))
    finally:
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(*outs, strict=True))


def test_bad_input():
    x, w, b = torch.randn(6, 4), torch.randn(3, 4), torch.randn(3)
    ok = torch.tensor([0, 2])
    cases = [
        ((x.double(), w, b, ok), "dtype"),
        ((x, torch.randn(3, 5), b, ok), "weight must be"),
        ((x, w, torch.randn(4), ok), "bias must be"),
        ((x, w, b, ok.int()), "int64"),
        ((x, w, b, torch.tensor([2, 0])), "strictly increasing"),
        ((x, w, b, torch.tensor([1, 1])), "strictly increasing"),
        ((x, w, b, torch.tensor([0, 6])), r"\[0, 6\)"),
        ((x, w, b, torch.tensor([-1, 2])), r"\[0, 6\)"),
        ((x.reshape(-1), w, b, ok), "2-D"),
    ]
    for args, match in cases:
        with pytest.raises((ValueError, TypeError), match=match):
            mf.project_rows(*args)
    bad = x.clone()
    bad[2, 1] = float("nan")
    for backend in BACKENDS:
        with pytest.raises(ValueError, match="NaN or inf"):
            mf.project_rows(bad, w, b, ok, backend=backend)
        assert torch.isfinite(mf.project_rows(bad, w, b, torch.tensor([0, 3]),
                                              backend=backend)).all()  # row 2 is not read
