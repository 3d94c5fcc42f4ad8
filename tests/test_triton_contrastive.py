"""The Triton contrastive kernels (micro_fast/backends/triton/contrastive.py) against torch_ref.

The kernels run in Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``, set before the
kernels are defined). Expected values are torch_ref's in float64 on the same inputs; the
tolerance of each entry is the rounding-error bound of the same formula in the kernel's dtype
(``bounds.py``), from the dense statement of the kernel contract below.
"""

from __future__ import annotations

import math
import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton.jit defines the kernels

import pytest  # noqa: E402

pytest.importorskip("triton", reason="triton is not installed: the Triton backend is optional")
if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):  # tests/conftest.py sets it on CPUs
    pytest.skip("these run the kernels on CPU tensors in Triton's interpreter; on a GPU "
                "tests/test_cuda_parity.py runs them compiled", allow_module_level=True)

import torch  # noqa: E402
from bounds import Bounded, assert_close, cat, matmul  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from oracles import contrastive_exact  # noqa: E402

from micro_fast.backends import torch_ref  # noqa: E402
from micro_fast.backends.triton import contrastive as tc  # noqa: E402
from micro_fast.errors import InputError, InputTypeError  # noqa: E402
from micro_fast.ops.contrastive_loss import _ContrastiveLoss  # noqa: E402


def _views(n: int, d: int, seed: int, dtype: torch.dtype, dup: str = "none"):
    """Unit rows n1, n2 [n, d] in ``dtype``; ``dup``: "rows" (repeated rows in each view),
    "same" (n2 = n1) or "all" (every row of both views the same vector)."""
    gen = torch.Generator().manual_seed(seed)
    z1 = torch.randn(n, d, generator=gen, dtype=torch.float64)
    z2 = torch.randn(n, d, generator=gen, dtype=torch.float64)
    if dup == "rows":
        idx = torch.randint(0, max(1, n // 3), (n,), generator=gen)
        z1, z2 = z1[idx], z2[idx]
    elif dup == "same":
        z2 = z1.clone()
    elif dup == "all":
        z1 = z1[:1].expand(n, d).clone()
        z2 = z1.clone()
    n1 = torch.nn.functional.normalize(z1, dim=1).to(dtype)
    n2 = torch.nn.functional.normalize(z2, dim=1).to(dtype)
    g1 = torch.rand(n, generator=gen, dtype=torch.float64).to(dtype)
    g2 = torch.rand(n, generator=gen, dtype=torch.float64).to(dtype)
    return n1, n2, g1, g2


def _contract_exact(n1, n2, tau, symmetric, g1, g2):
    """Bounded (lse1, lse2 | None, grad1, grad2) of the kernel contract (the backends'
    docstring; contrastive.cu's formulas), dense, for unit rows given exactly in their dtype."""
    dtype = n1.dtype
    b1, b2 = Bounded.exact(n1, dtype), Bounded.exact(n2, dtype)
    n = n1.shape[0]
    eye = torch.eye(n, dtype=torch.bool)

    def side(x, z, g):
        sxx = (matmul(x, x.T) / tau).masked_fill(eye, -math.inf)
        sxz = matmul(x, z.T) / tau
        lse = cat([sxx, sxz], 1).logsumexp(1)
        col = lse.apply(lambda t: t[:, None])
        gt = g.double()[:, None] / tau
        p = (sxx - col).exp().masked_fill(eye, 0.0) * gt
        q = (sxz - col).exp() * gt
        return lse, p + p.T, q

    lse1, a11, w12 = side(b1, b2, g1)
    grad1 = matmul(a11, b1)
    if symmetric:
        lse2, a22, w21 = side(b2, b1, g2)
        w12 = w12 + w21.T
        grad1 = grad1 + matmul(w12, b2)
        grad2 = matmul(a22, b2) + matmul(w12.T, b1)
        return lse1, lse2, grad1, grad2
    return lse1, None, grad1 + matmul(w12, b2), matmul(w12.T, b1)


def _expect(ref: torch.Tensor, bound: Bounded) -> Bounded:
    """torch_ref's float64 value with the kernel dtype's rounding bound."""
    return Bounded(ref, bound.err, bound.u)


def _check(n, d, symmetric, tau, block_size, dtype, seed=0, dup="none"):
    n1, n2, g1, g2 = _views(n, d, seed, dtype, dup)
    if not symmetric:
        g2 = None
    lse1, lse2 = tc.contrastive_forward(n1, n2, tau, symmetric, block_size)
    assert lse1.dtype == dtype and lse1.shape == (n,)
    assert (lse2 is not None) == symmetric
    grad1, grad2 = tc.contrastive_backward(n1, n2, tau, lse1, lse2, g1, g2, block_size)
    assert grad1.shape == n1.shape and grad1.dtype == dtype

    x1, x2 = n1.double(), n2.double()
    r1, r2 = torch_ref.contrastive_forward(x1, x2, tau, symmetric, None)
    rg1, rg2 = torch_ref.contrastive_backward(x1, x2, tau, r1, r2, g1.double(),
                                              None if g2 is None else g2.double(), None)
    e1, e2, eg1, eg2 = _contract_exact(n1, n2, tau, symmetric, g1,
                                       g2 if g2 is not None else torch.zeros_like(g1))
    assert_close(lse1, _expect(r1, e1), what="lse1")
    if symmetric:
        assert_close(lse2, _expect(r2, e2), what="lse2")
    assert_close(grad1, _expect(rg1, eg1), what="grad1")
    assert_close(grad2, _expect(rg2, eg2), what="grad2")


F32, F64 = torch.float32, torch.float64


@pytest.mark.parametrize("n, d, symmetric, tau, block_size, dtype", [
    (1, 3, False, 0.5, None, F32),
    (1, 3, True, 0.05, None, F32),
    (5, 16, True, 0.05, None, F32),
    (37, 33, True, 2.0, 16, F32),
    (70, 64, False, 0.05, 16, F32),
    (70, 64, True, 0.5, 32, F32),
    (37, 3, False, 0.5, 16, F32),
    (17, 256, True, 0.5, 16, F32),
    (70, 64, True, 0.05, 16, F64),
    (37, 33, False, 2.0, None, F64),
])
def test_fixed_cases(n, d, symmetric, tau, block_size, dtype):
    _check(n, d, symmetric, tau, block_size, dtype)


@pytest.mark.parametrize("dup", ["rows", "same", "all"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_ties_and_duplicate_rows(dup, symmetric):
    _check(37, 16, symmetric, 0.05, 16, F32, seed=3, dup=dup)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 70), d=st.sampled_from([1, 3, 16, 33, 64]), symmetric=st.booleans(),
       tau=st.sampled_from([0.05, 0.5, 2.0]), block_size=st.sampled_from([None, 16, 32]),
       dtype=st.sampled_from([F32, F64]), dup=st.sampled_from(["none", "none", "rows"]),
       seed=st.integers(0, 2**16))
def test_matches_torch_ref(n, d, symmetric, tau, block_size, dtype, dup, seed):
    _check(n, d, symmetric, tau, block_size, dtype, seed=seed, dup=dup)


def test_deterministic_and_tile_independent():
    n1, n2, g1, g2 = _views(70, 33, 7, F32)
    lse1, lse2 = tc.contrastive_forward(n1, n2, 0.5, True, 16)
    a = tc.contrastive_backward(n1, n2, 0.5, lse1, lse2, g1, g2, 16)
    b = tc.contrastive_backward(n1, n2, 0.5, lse1, lse2, g1, g2, 16)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    c = tc.contrastive_backward(n1, n2, 0.5, lse1, lse2, g1, g2, 64)
    for x, y in zip(a, c, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("symmetric", [False, True])
def test_loss_through_the_autograd_function(symmetric):
    """The op's autograd Function with this module as its kernels (as the dispatch will run
    it): loss and gradients w.r.t. the raw views against the dense float64 statement."""
    gen = torch.Generator().manual_seed(11)
    z1 = torch.randn(37, 16, generator=gen).requires_grad_()
    z2 = torch.randn(37, 16, generator=gen).requires_grad_()
    n1 = z1 / z1.norm(dim=1, keepdim=True)
    n2 = z2 / z2.norm(dim=1, keepdim=True)
    loss = _ContrastiveLoss.apply(n1, n2, 0.5, symmetric, 16, tc, None)
    loss.backward()
    exact, e1, e2 = contrastive_exact(z1, z2, 0.5, symmetric)
    assert_close(loss, exact, what="loss")
    assert_close(z1.grad, e1, what="d loss / d z1")
    assert_close(z2.grad, e2, what="d loss / d z2")


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(5)
    z1 = torch.randn(5, 3, generator=gen, dtype=F64, requires_grad=True)
    z2 = torch.randn(5, 3, generator=gen, dtype=F64, requires_grad=True)

    def loss(a, b):
        na, nb = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
        return _ContrastiveLoss.apply(na, nb, 0.5, True, None, tc, None)

    assert torch.autograd.gradcheck(loss, (z1, z2))


def test_contrastive_loss_op_with_triton_backend():
    import micro_fast
    from micro_fast import dispatch

    if "triton" not in dispatch.names():
        pytest.skip("the dispatch registry does not know the triton backend yet")
    if not dispatch.module("triton").supports(torch.device("cpu")):
        pytest.skip("the triton backend does not run CPU tensors, even interpreted")
    gen = torch.Generator().manual_seed(2)
    z1 = torch.randn(37, 16, generator=gen)
    z2 = torch.randn(37, 16, generator=gen)
    got = micro_fast.contrastive_loss(z1, z2, backend="triton")
    exact, _, _ = contrastive_exact(z1, z2, 0.5, False)
    assert_close(got, exact, what="loss")


@pytest.mark.parametrize("precision, scale", [("tf32", 2.0**-10), ("bf16", 2.0**-8)])
def test_low_precision_opt_in(precision, scale):
    """Opt-in precisions run and stay within their operand rounding (the interpreter runs tf32
    in full fp32, and bf16 with rounded operands)."""
    n1, n2, g1, g2 = _views(37, 33, 1, F32)
    tau = 0.5
    lse1, lse2 = tc.contrastive_forward(n1, n2, tau, True, 16, precision=precision)
    r1, r2 = torch_ref.contrastive_forward(n1.double(), n2.double(), tau, True, None)
    # each score's operands carry a relative error <= scale: |ds| <= 2 scale per unit score
    bound = 2 * scale / tau + 1e-5
    assert float((lse1.double() - r1).abs().max()) <= bound
    assert float((lse2.double() - r2).abs().max()) <= bound
    grad1, grad2 = tc.contrastive_backward(n1, n2, tau, lse1, lse2, g1, g2, 16,
                                           precision=precision)
    rg1, rg2 = torch_ref.contrastive_backward(n1.double(), n2.double(), tau, r1, r2,
                                              g1.double(), g2.double(), None)
    assert torch.isfinite(grad1).all() and torch.isfinite(grad2).all()
    for got, ref in ((grad1, rg1), (grad2, rg2)):
        assert float((got.double() - ref).abs().max()) <= 8 * bound * float(ref.abs().max())


def test_bad_input(monkeypatch):
    n1, n2, _, _ = _views(5, 3, 0, F32)
    with pytest.raises(InputError, match="d <= 256"):
        tc.contrastive_forward(torch.zeros(3, 257), torch.zeros(3, 257), 0.5, False, None)
    with pytest.raises(InputTypeError):
        tc.contrastive_forward(n1.half(), n2.half(), 0.5, False, None)
    with pytest.raises(InputError, match="precision"):
        tc.contrastive_forward(n1, n2, 0.5, False, None, precision="fp8")
    with pytest.raises(InputError, match="float32"):
        tc.contrastive_forward(n1.double(), n2.double(), 0.5, False, None, precision="tf32")
    with pytest.raises(InputError, match="tau"):
        tc.contrastive_forward(n1, n2, 0.0, False, None)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(InputError, match="CUDA"):
        tc.contrastive_forward(n1, n2, 0.5, False, None)
