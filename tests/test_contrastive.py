"""contrastive_loss: every backend (torch_ref included) and cpp SIMD build against the dense
float64 statement of ``oracles.contrastive_exact`` and the published chunked formulation,
gradients, memory without N x N buffers, bad input, and the fusion module."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from bounds import assert_close
from hypothesis import given
from hypothesis import strategies as st
from oracles import contrastive_exact

import micro_fast as mf
from micro_fast import backends


def published_semi_loss(z1, z2, tau=0.5, batch_size=4096):
    """The published chunked formulation (GRACE's batched_semi_loss as MICRO uses it)."""
    f = lambda x: torch.exp(x / tau)  # noqa: E731
    sim = lambda a, b: torch.mm(F.normalize(a), F.normalize(b).t())  # noqa: E731
    n = z1.size(0)
    indices = torch.arange(0, n)
    losses = []
    for i in range((n - 1) // batch_size + 1):
        mask = indices[i * batch_size:(i + 1) * batch_size]
        refl_sim = f(sim(z1[mask], z1))
        between_sim = f(sim(z1[mask], z2))
        losses.append(-torch.log(
            between_sim[:, i * batch_size:(i + 1) * batch_size].diag()
            / (refl_sim.sum(1) + between_sim.sum(1)
               - refl_sim[:, i * batch_size:(i + 1) * batch_size].diag())))
    return torch.cat(losses)


def published_loss(z1, z2, tau, symmetric, batch_size=64):
    l1 = published_semi_loss(z1, z2, tau, batch_size)
    if not symmetric:
        return l1.mean()
    return ((l1 + published_semi_loss(z2, z1, tau, batch_size)) * 0.5).mean()


def _needs(backend):
    if backend not in backends.available():
        pytest.skip(f"{backend} not available")
    mod = backends.get(backend, torch.device("cpu"), op="topk_similarity")
    if not hasattr(mod, "contrastive_forward"):
        pytest.skip(f"{backend} has no contrastive kernel")


def _value_and_grads(z1, z2, **kw):
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    loss = mf.contrastive_loss(a, b, **kw)
    ga, gb = torch.autograd.grad(loss, (a, b))
    return loss.detach(), ga, gb


def _assert_exact(got, z1, z2, tau, symmetric=False):
    """(loss, grad z1, grad z2) within the tolerance of the exact values."""
    for name, g, e in zip(("loss", "z1 gradient", "z2 gradient"), got,
                          contrastive_exact(z1, z2, tau, symmetric), strict=True):
        assert_close(g, e, what=name)


@pytest.mark.parametrize("backend", ["cpp", "numba", "torch_ref"])
@given(n=st.integers(1, 300), d=st.integers(1, 256), tau=st.floats(0.05, 2.0),
       symmetric=st.booleans(), double=st.booleans(), block=st.sampled_from([None, 1, 24, 64]),
       seed=st.integers(0, 2**31 - 1))
def test_backend_matches_exact(backend, n, d, tau, symmetric, double, block, seed):
    _needs(backend)
    gen = torch.Generator().manual_seed(seed)
    dtype = torch.float64 if double else torch.float32
    z1 = torch.randn(n, d, generator=gen, dtype=dtype)
    z2 = torch.randn(n, d, generator=gen, dtype=dtype)
    got = _value_and_grads(z1, z2, tau=tau, symmetric=symmetric, block_size=block,
                           backend=backend)
    _assert_exact(got, z1, z2, tau, symmetric)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("tau", [0.05, 0.5, 2.0])
def test_equals_published_formulation(symmetric, tau):
    """The published chunked code (float64) and every backend are the exact loss."""
    gen = torch.Generator().manual_seed(0)
    z1 = torch.randn(260, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(260, 16, generator=gen, dtype=torch.float64, requires_grad=True)
    ref = published_loss(z1, z2, tau, symmetric)
    _assert_exact((ref.detach(), *torch.autograd.grad(ref, (z1, z2))), z1, z2, tau, symmetric)
    for backend in backends.available("cpu"):
        mod = backends.get(backend, torch.device("cpu"), op="topk_similarity")
        if not hasattr(mod, "contrastive_forward"):
            continue
        loss = mf.contrastive_loss(z1, z2, tau=tau, symmetric=symmetric, backend=backend)
        _assert_exact((loss.detach(), *torch.autograd.grad(loss, (z1, z2))), z1, z2, tau,
                      symmetric)


@pytest.mark.parametrize("backend", ["cpp", "numba", "torch_ref"])
@pytest.mark.parametrize("tau", [0.005, 0.02])
def test_small_temperatures_stay_finite_and_exact(backend, tau):
    _needs(backend)
    gen = torch.Generator().manual_seed(1)
    z1 = torch.randn(150, 8, generator=gen, dtype=torch.float64)
    z2 = torch.randn(150, 8, generator=gen, dtype=torch.float64)
    for dtype in (torch.float64, torch.float32):
        a, b = z1.to(dtype), z2.to(dtype)
        got = _value_and_grads(a, b, tau=tau, backend=backend)
        assert all(bool(torch.isfinite(t).all()) for t in got)
        _assert_exact(got, a, b, tau)


@pytest.mark.parametrize("backend", ["cpp", "numba", "torch_ref"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_gradcheck(backend, symmetric):
    _needs(backend)
    gen = torch.Generator().manual_seed(2)
    z1 = torch.randn(40, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(40, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, b: mf.contrastive_loss(a, b, tau=0.3, symmetric=symmetric, block_size=16,
                                         backend=backend), (z1, z2))


def test_every_simd_kernel(simd_isa):
    gen = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(333, 37, generator=gen), torch.randn(333, 37, generator=gen)
    for tau in (0.02, 0.5):
        for symmetric in (False, True):
            got = _value_and_grads(z1, z2, tau=tau, symmetric=symmetric, backend="cpp")
            _assert_exact(got, z1, z2, tau, symmetric)


@given(n=st.integers(1, 150), d=st.integers(1, 80), tau=st.floats(0.02, 2.0),
       symmetric=st.booleans(), double=st.booleans(), block=st.sampled_from([None, 1, 16, 48]),
       seed=st.integers(0, 2**31 - 1))
def test_every_simd_kernel_random_shapes(simd_isa, n, d, tau, symmetric, double, block, seed):
    """Odd sizes cross every tile and vector edge of each ISA's kernels."""
    dtype = torch.float64 if double else torch.float32
    gen = torch.Generator().manual_seed(seed)
    z1, z2 = torch.randn(n, d, generator=gen, dtype=dtype), torch.randn(n, d, generator=gen,
                                                                        dtype=dtype)
    got = _value_and_grads(z1, z2, tau=tau, symmetric=symmetric, block_size=block,
                           backend="cpp")
    _assert_exact(got, z1, z2, tau, symmetric)


def test_every_simd_kernel_gradcheck(simd_isa):
    gen = torch.Generator().manual_seed(4)
    z1 = torch.randn(37, 19, generator=gen, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(37, 19, generator=gen, dtype=torch.float64, requires_grad=True)
    for symmetric in (False, True):
        assert torch.autograd.gradcheck(
            lambda a, b, s=symmetric: mf.contrastive_loss(a, b, tau=0.4, symmetric=s,
                                                          block_size=8, backend="cpp"),
            (z1, z2))


PEAK_LIMIT_MB = 200  # the dense N x N float32 score matrix alone would be 1,526 MiB


@pytest.mark.skipif("cpp" not in backends.available(), reason="cpp backend not built")
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_memory_stays_far_below_n_squared(tmp_path):
    script = textwrap.dedent("""
        import re, torch, micro_fast as mf
        def kb(field):
            return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read())[1])
        torch.manual_seed(0)
        z1 = torch.randn(20000, 64, requires_grad=True)
        z2 = torch.randn(20000, 64, requires_grad=True)
        mf.contrastive_loss(z1[:100], z2[:100]).backward()  # load everything first
        z1.grad = z2.grad = None
        base = kb("VmRSS")
        open("/proc/self/clear_refs", "w").write("5")
        mf.contrastive_loss(z1, z2, backend="cpp").backward()
        print((kb("VmHWM") - base) / 1024)
    """)
    # run outside the source tree, so the installed package (with its extension) is imported
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    peak_mb = float(out.stdout.strip().splitlines()[-1])
    assert peak_mb < PEAK_LIMIT_MB, f"peak extra memory {peak_mb:.0f} MiB"


def test_bad_input():
    z = torch.randn(10, 4)
    with pytest.raises(ValueError, match="same shape"):
        mf.contrastive_loss(z, torch.randn(9, 4))
    with pytest.raises(ValueError, match="same shape"):
        mf.contrastive_loss(z, torch.randn(10, 5))
    for tau in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="tau"):
            mf.contrastive_loss(z, z, tau=tau)
    with pytest.raises(ValueError, match="z1 contains NaN"):
        mf.contrastive_loss(torch.full((3, 2), float("nan")), torch.randn(3, 2))
    with pytest.raises(ValueError, match="z2 contains NaN"):
        mf.contrastive_loss(torch.randn(3, 2), torch.tensor([[1.0, float("inf")]] * 3))
    with pytest.raises(TypeError, match="dtype"):
        mf.contrastive_loss(z, z.double())
    with pytest.raises(TypeError, match="float32 or float64"):
        mf.contrastive_loss(z.long(), z.long())
    with pytest.raises(ValueError, match="2-D"):
        mf.contrastive_loss(torch.randn(4), torch.randn(4))


def test_zero_rows_are_an_error_not_amplified_noise():
    """Found by the fuzz suite: a zero row normalized with a clamped norm (the published
    F.normalize) made its gradient rounding noise times 1e12 (-9.07 where the exact gradient of
    a one-item loss is 0). Its cosine is undefined: an error naming the argument."""
    z = torch.randn(5, 3)
    zero = z.clone()
    zero[2] = 0
    with pytest.raises(ValueError, match=r"z1 has zero-norm rows \(e.g. \[2\]\)"):
        mf.contrastive_loss(zero, z)
    with pytest.raises(ValueError, match="z2 has zero-norm rows"):
        mf.contrastive_loss(z, zero)
    with pytest.raises(ValueError, match=r"views\[1\] has zero-norm rows"):
        mf.contrastive_fusion_loss([z, zero], torch.full((5, 2), 0.5))
    with pytest.raises(ValueError, match="the fused view .* has zero-norm rows"):
        mf.contrastive_fusion_loss([z, -z], torch.full((5, 2), 0.5))


def test_contrastive_fusion_module_matches_published_code():
    """The module in float64 against the published attention fusion and chunked loss."""
    torch.manual_seed(4)
    fusion = mf.nn.ContrastiveFusion(dim=8, tau=0.5).double()
    gen = torch.Generator().manual_seed(4)
    image = torch.randn(50, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    text = torch.randn(50, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    h, loss = fusion([image, text])
    att = torch.cat([fusion.query(image), fusion.query(text)], dim=-1)
    weight = torch.softmax(att, dim=-1)
    ref_h = weight[:, 0].unsqueeze(1) * image + weight[:, 1].unsqueeze(1) * text
    ref_loss = published_semi_loss(image, ref_h).mean() + published_semi_loss(text, ref_h).mean()
    assert torch.equal(h, ref_h)
    # the loss of two views against the fused one: 2 x the exact loss's error
    exact = [contrastive_exact(v, ref_h.detach(), 0.5)[0] for v in (image, text)]
    assert_close(loss, exact[0] + exact[1], what="loss")
    assert_close(ref_loss, exact[0] + exact[1], what="published loss")
    loss.backward()
    assert image.grad is not None and fusion.query[0].weight.grad is not None


@pytest.mark.parametrize("backend", ["cpp", "numba"])
def test_a_few_thousand_items(backend):
    _needs(backend)
    gen = torch.Generator().manual_seed(5)
    z1, z2 = torch.randn(2500, 64, generator=gen), torch.randn(2500, 64, generator=gen)
    for symmetric in (False, True):
        got = _value_and_grads(z1, z2, symmetric=symmetric, backend=backend)
        _assert_exact(got, z1, z2, 0.5, symmetric)


def test_auto_without_cpp_takes_torch_ref_not_numba(monkeypatch):
    """numba's contrastive kernels are slower than torch_ref's products: auto skips them."""
    from micro_fast import dispatch
    from micro_fast.backends import cpp

    if "numba" not in backends.available():
        pytest.skip("numba not available")
    monkeypatch.setattr(cpp, "is_available", lambda: (False, "disabled by the test"))
    assert dispatch.plan("contrastive", "auto", "cpu").backend == "torch_ref"
    assert dispatch.plan("spmm", "auto", "cpu").backend == "numba"
    assert dispatch.plan("contrastive", "numba", "cpu").backend == "numba"
    gen = torch.Generator().manual_seed(6)
    z1 = torch.randn(30, 5, generator=gen, dtype=torch.float64)
    z2 = torch.randn(30, 5, generator=gen, dtype=torch.float64)
    _assert_exact(_value_and_grads(z1, z2), z1, z2, 0.5)
