"""The CUDA backend against torch_ref on the CPU, for every op with a CUDA kernel: values and
gradients on random and adversarial shapes (odd sizes, k = N, exclusions with empty and fully
excluded rows, tiny tau), gradcheck in float64 on the GPU. Skipped without a CUDA device; the
names carry "cuda" so that ``pytest -k cuda`` selects them (benchmarks/gpu_check.sh)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import micro_fast as mf
from micro_fast import CSRGraph, backends
from micro_fast.metrics import full_ranking

pytestmark = pytest.mark.skipif("cuda" not in backends.available("cuda"),
                                reason="needs a CUDA device and the cuda backend")
CUDA = torch.device("cuda")
# each example runs a few kernels on the GPU: keep the property runs short
few = settings(max_examples=15, deadline=None)


def _tol(dtype, tau=1.0):
    return (dict(rtol=1e-9, atol=1e-11 / tau) if dtype == torch.float64
            else dict(rtol=2e-4, atol=2e-5 / tau))


@few
@given(m=st.integers(1, 150), n=st.integers(1, 150), d=st.integers(1, 70),
       symmetric=st.booleans(), double=st.booleans(), masked=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_topk_similarity_cuda(m, n, d, symmetric, double, masked, seed):
    dtype = torch.float64 if double else torch.float32
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(m, d, generator=gen, dtype=dtype)
    keys = None if symmetric else torch.randn(n, d, generator=gen, dtype=dtype)
    n_keys = m if symmetric else n
    k = int(torch.randint(1, n_keys + 1, (1,), generator=gen))
    exclude = None
    if masked:
        mask = torch.rand(m, n_keys, generator=gen) < 0.3
        mask[0] = True  # a row with nothing left: padded
        exclude = CSRGraph.from_dense(mask.to(dtype))
    ref_v, ref_i = mf.topk_similarity(q, keys, k, exclude=exclude, backend="torch_ref")
    got_v, got_i = mf.topk_similarity(q.to(CUDA), None if keys is None else keys.to(CUDA), k,
                                      exclude=None if exclude is None else exclude.to(CUDA),
                                      backend="cuda")
    assert torch.allclose(got_v.cpu(), ref_v, **_tol(dtype), equal_nan=False)
    # indices agree wherever the values are not tied to rounding
    finite = torch.isfinite(ref_v)
    assert torch.equal(torch.isfinite(got_v.cpu()), finite)
    assert bool(((got_i.cpu() == ref_i) | ~finite | (got_v.cpu() - ref_v).abs().le(
        1e-5 if dtype == torch.float32 else 1e-12)).all())


def test_knn_graph_and_its_gradient_cuda():
    for dtype in (torch.float32, torch.float64):
        x = torch.rand(301, 17, dtype=dtype) - 0.3
        w = torch.rand(301 * 10, dtype=dtype)
        ref = x.clone().requires_grad_()
        g_ref = mf.knn_graph(ref, 10, backend="torch_ref")
        (g_ref.values * w).sum().backward()
        got = x.to(CUDA).requires_grad_()
        g = mf.knn_graph(got, 10, backend="cuda")
        (g.values * w.to(CUDA)).sum().backward()
        assert torch.equal(g.indices.cpu(), g_ref.indices)
        assert torch.allclose(g.values.detach().cpu(), g_ref.values.detach(), **_tol(dtype))
        assert torch.allclose(got.grad.cpu(), ref.grad, **_tol(dtype))


@few
@given(n=st.integers(1, 200), d=st.integers(1, 80), tau=st.sampled_from([0.02, 0.2, 0.5, 2.0]),
       symmetric=st.booleans(), double=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_contrastive_loss_cuda(n, d, tau, symmetric, double, seed):
    dtype = torch.float64 if double else torch.float32
    gen = torch.Generator().manual_seed(seed)
    z = [torch.randn(n, d, generator=gen, dtype=dtype) for _ in range(2)]

    def value_and_grads(device, backend):
        a, b = (t.to(device).requires_grad_() for t in z)
        loss = mf.contrastive_loss(a, b, tau=tau, symmetric=symmetric, backend=backend)
        return [t.cpu() for t in (loss.detach(), *torch.autograd.grad(loss, (a, b)))]

    for got, ref in zip(value_and_grads(CUDA, "cuda"),
                        value_and_grads(torch.device("cpu"), "torch_ref"), strict=True):
        assert torch.allclose(got, ref, **_tol(dtype, tau)), (got - ref).abs().max()


def test_contrastive_fusion_loss_cuda():
    gen = torch.Generator().manual_seed(2)
    views = [torch.randn(257, 33, generator=gen, dtype=torch.float64) for _ in range(2)]
    w = torch.softmax(torch.randn(257, 2, generator=gen, dtype=torch.float64), dim=1)

    def value_and_grads(device, backend):
        xs = [t.to(device).requires_grad_() for t in (*views, w)]
        loss = mf.contrastive_fusion_loss(xs[:2], xs[2], backend=backend)
        return [t.cpu() for t in (loss.detach(), *torch.autograd.grad(loss, xs))]

    for got, ref in zip(value_and_grads(CUDA, "cuda"),
                        value_and_grads(torch.device("cpu"), "torch_ref"), strict=True):
        assert torch.allclose(got, ref, rtol=1e-9, atol=1e-11)


def test_gradcheck_cuda():
    gen = torch.Generator().manual_seed(3)
    z1 = torch.randn(37, 5, generator=gen, dtype=torch.float64).to(CUDA).requires_grad_()
    z2 = torch.randn(37, 5, generator=gen, dtype=torch.float64).to(CUDA).requires_grad_()
    for symmetric in (False, True):
        assert torch.autograd.gradcheck(
            lambda a, b, s=symmetric: mf.contrastive_loss(a, b, tau=0.3, symmetric=s,
                                                          backend="cuda"), (z1, z2))
    q = torch.randn(29, 4, generator=gen, dtype=torch.float64).to(CUDA).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a: mf.topk_similarity(a, None, 5, normalize=True, backend="cuda")[0], (q,))
    dense = (torch.rand(23, 23, generator=gen) < 0.2).double() * torch.rand(23, 23,
                                                                           generator=gen)
    graph = CSRGraph.from_dense(dense).to(CUDA)
    v = graph.values.clone().requires_grad_()
    x = torch.randn(23, 6, generator=gen, dtype=torch.float64).to(CUDA).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda vv, xx: mf.propagate(graph.with_values(vv), xx, 2, combine="mean",
                                    backend="cuda"), (v, x))


def test_full_ranking_cuda():
    gen = torch.Generator().manual_seed(4)
    users, items = torch.randn(150, 8, generator=gen), torch.randn(90, 8, generator=gen)
    seen = CSRGraph.from_dense((torch.rand(150, 90, generator=gen) < 0.1).float())
    held = CSRGraph.from_dense((torch.rand(150, 90, generator=gen) < 0.05).float())
    ref = full_ranking(users, items, seen, held, (5, 20), backend="torch_ref")
    got = full_ranking(users.to(CUDA), items.to(CUDA), seen.to(CUDA), held.to(CUDA), (5, 20),
                       backend="cuda")
    assert got == pytest.approx(ref, rel=1e-6, abs=1e-9)


def test_cuda_op_path_never_synchronizes():
    """Under torch.cuda.set_sync_debug_mode("error") a host read-back raises: the ops' forward
    and backward (value checks included) must not do one."""
    gen = torch.Generator().manual_seed(0)
    z1 = torch.randn(300, 32, generator=gen).to(CUDA).requires_grad_()
    z2 = torch.randn(300, 32, generator=gen).to(CUDA).requires_grad_()
    weights = torch.softmax(torch.randn(300, 2, generator=gen), dim=1).to(CUDA)
    graph = mf.knn_graph(z1.detach(), k=8, backend="cuda")
    graph.transposed_values()  # built where the graph is made
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = mf.contrastive_loss(z1, z2, backend="cuda") \
            + mf.contrastive_fusion_loss([z1, z2], weights, backend="cuda") \
            + mf.propagate(graph, z1, 2, combine="mean", backend="cuda").square().sum() \
            + mf.topk_similarity(z1, z2, k=5, backend="cuda")[0].sum()
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert z1.grad is not None and bool(torch.isfinite(z1.grad).all())


def test_cuda_bad_values_fail_at_the_next_synchronization(tmp_path):
    """NaN input on the GPU is asserted on the device; run in a child process, since a failed
    device assertion leaves the CUDA context unusable."""
    import subprocess
    import sys

    script = ("import torch, micro_fast as mf\n"
              "z = torch.randn(64, 8, device='cuda'); z[3, 1] = float('nan')\n"
              "loss = mf.contrastive_loss(z, torch.randn(64, 8, device='cuda'), backend='cuda')\n"
              "torch.cuda.synchronize()\n")
    # outside the source tree, so the installed package (with its extensions) is imported
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode != 0 and "NaN or inf" in proc.stderr, proc.stderr[-2000:]
