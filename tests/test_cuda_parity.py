"""The CUDA backend against the dense float64 statements of ``oracles.py``, for every op with a
CUDA kernel: values and gradients on random and adversarial shapes (odd sizes, k = N, exclusions
with empty and fully excluded rows, tiny tau), top-k indices exactly (or by a near tie certified
from the exact scores), gradcheck in float64 on the GPU. Skipped without a CUDA device; the
names carry "cuda" so that ``pytest -k cuda`` selects them (benchmarks/gpu_check.sh).

``MICRO_FAST_PARITY_DRY_RUN=cpp`` runs the same checks with CPU tensors and the cpp backend, so
that the checks themselves are exercised on a machine without a GPU."""

from __future__ import annotations

import os

import pytest
import torch
from bounds import assert_close
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import (
    assert_topk,
    assert_topk_sets,
    contrastive_exact,
    fusion_exact,
    knn_graph_exact,
    propagate_exact,
    ranking_metrics,
    similarity_scores,
)

import micro_fast as mf
from micro_fast import CSRGraph, backends, dispatch
from micro_fast.metrics import full_ranking

DRY_RUN = os.environ.get("MICRO_FAST_PARITY_DRY_RUN")
BACKEND = DRY_RUN or "cuda"
CUDA = torch.device("cpu" if DRY_RUN else "cuda")
pytestmark = pytest.mark.skipif(BACKEND not in backends.available(CUDA),
                                reason="needs a CUDA device and the cuda backend")
on_gpu = pytest.mark.skipif(DRY_RUN is not None, reason="a CUDA-only behaviour")
# each example runs a few kernels on the GPU: keep the property runs short
few = settings(max_examples=15, deadline=None)


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
    got_v, got_i = mf.topk_similarity(q.to(CUDA), None if keys is None else keys.to(CUDA), k,
                                      exclude=None if exclude is None else exclude.to(CUDA),
                                      backend=BACKEND)
    assert_topk(got_v.cpu(), got_i.cpu(), q, keys, k, exclude=exclude)


@on_gpu
@pytest.mark.skipif("triton" not in backends.available(CUDA),
                    reason="needs triton and a CUDA device")
@few
@given(m=st.integers(1, 150), n=st.integers(1, 150), d=st.integers(1, 70),
       symmetric=st.booleans(), masked=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_topk_similarity_triton_cuda(m, n, d, symmetric, masked, seed):
    """The certified Triton search compiled for the GPU: indices exact (tests/test_triton_topk.py
    checks the certificate in the interpreter)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(m, d, generator=gen)
    keys = None if symmetric else torch.randn(n, d, generator=gen)
    n_keys = m if symmetric else n
    k = int(torch.randint(1, n_keys + 1, (1,), generator=gen))
    exclude = None
    if masked:
        exclude = CSRGraph.from_dense((torch.rand(m, n_keys, generator=gen) < 0.3).float())
    got_v, got_i = mf.topk_similarity(q.to(CUDA), None if keys is None else keys.to(CUDA), k,
                                      exclude=None if exclude is None else exclude.to(CUDA),
                                      backend="triton")
    assert_topk(got_v.cpu(), got_i.cpu(), q, keys, k, exclude=exclude)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_topk_similarity_many_steps_cuda(ties, dtype):
    """Several row blocks and key chunks (the two-stream path), rows of S longer than one
    selection sub-chunk (2,048 entries), and first sub-chunks whose survivors are cut by the
    radix select: for k below, around and above the cut size, with exact ties (integer-valued
    inputs, exact in both dtypes) and exclusions."""
    gen = torch.Generator().manual_seed(11)
    m, n, d = 70, 5000, 24
    if ties:
        q = torch.randint(-2, 3, (m, d), generator=gen).to(dtype)
        keys = torch.randint(-2, 3, (n, d), generator=gen).to(dtype)
    else:
        q = torch.randn(m, d, generator=gen, dtype=dtype)
        keys = torch.randn(n, d, generator=gen, dtype=dtype)
    mask = torch.rand(m, n, generator=gen) < 0.2
    mask[3] = True  # a fully excluded row
    exclude = CSRGraph.from_dense(mask.to(dtype))
    impl = dispatch.module(BACKEND)
    # key chunks narrower than a row's keys (the cpp backend tiles by itself)
    extra = {"chunk_size": 1500} if BACKEND == "cuda" else {}
    for k in (1, 10, 64, 65, 300, 2100):
        for ex in (None, exclude):
            ex_arrays = None if ex is None else (ex.indptr.to(CUDA), ex.indices.to(CUDA))
            got_v, got_i = impl.topk_similarity(q.to(CUDA), keys.to(CUDA), k, ex_arrays, 16,
                                                **extra)
            assert_topk(got_v.cpu(), got_i.cpu(), q, keys, k, exclude=ex)


@pytest.mark.parametrize("normalization", ["sym", "rw"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_knn_graph_and_its_gradient_cuda(normalization, dtype):
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(301, 17, generator=gen, dtype=dtype) - 0.3
    w = torch.rand(301 * 10, generator=gen, dtype=dtype)
    got = x.to(CUDA).requires_grad_()
    g = mf.knn_graph(got, 10, normalization=normalization, backend=BACKEND)
    (g.values * w.to(CUDA)).sum().backward()
    idx = g.indices.cpu().reshape(301, 10)
    assert_topk_sets(idx, similarity_scores(x, None, True), dtype)
    values, grad = knn_graph_exact(x, idx, normalization, w)
    assert_close(g.values.detach().cpu().reshape(301, 10), values, what="values")
    assert_close(got.grad.cpu(), grad, what="gradient")


@on_gpu
@pytest.mark.skipif("triton" not in backends.available(CUDA),
                    reason="needs triton and a CUDA device")
@few
@given(n=st.integers(1, 200), d=st.integers(1, 80), tau=st.sampled_from([0.02, 0.2, 0.5, 2.0]),
       symmetric=st.booleans(), double=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_contrastive_loss_triton_cuda(n, d, tau, symmetric, double, seed):
    """The Triton kernels compiled for the GPU (the interpreter runs them on the CPU in
    tests/test_triton_contrastive.py)."""
    dtype = torch.float64 if double else torch.float32
    gen = torch.Generator().manual_seed(seed)
    z = [torch.randn(n, d, generator=gen, dtype=dtype) for _ in range(2)]
    a, b = (t.to(CUDA).requires_grad_() for t in z)
    loss = mf.contrastive_loss(a, b, tau=tau, symmetric=symmetric, backend="triton")
    got = [t.cpu() for t in (loss.detach(), *torch.autograd.grad(loss, (a, b)))]
    for g, e, what in zip(got, contrastive_exact(*z, tau, symmetric),
                          ("loss", "z1 gradient", "z2 gradient"), strict=True):
        assert_close(g, e, what=what)


@few
@given(n=st.integers(1, 200), d=st.integers(1, 80), tau=st.sampled_from([0.02, 0.2, 0.5, 2.0]),
       symmetric=st.booleans(), double=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_contrastive_loss_cuda(n, d, tau, symmetric, double, seed):
    dtype = torch.float64 if double else torch.float32
    gen = torch.Generator().manual_seed(seed)
    z = [torch.randn(n, d, generator=gen, dtype=dtype) for _ in range(2)]

    a, b = (t.to(CUDA).requires_grad_() for t in z)
    loss = mf.contrastive_loss(a, b, tau=tau, symmetric=symmetric, backend=BACKEND)
    got = [t.cpu() for t in (loss.detach(), *torch.autograd.grad(loss, (a, b)))]
    for g, e, what in zip(got, contrastive_exact(*z, tau, symmetric),
                          ("loss", "z1 gradient", "z2 gradient"), strict=True):
        assert_close(g, e, what=what)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_contrastive_fusion_loss_cuda(dtype):
    gen = torch.Generator().manual_seed(2)
    views = [torch.randn(257, 33, generator=gen, dtype=dtype) for _ in range(2)]
    w = torch.softmax(torch.randn(257, 2, generator=gen, dtype=dtype), dim=1)
    xs = [t.to(CUDA).requires_grad_() for t in (*views, w)]
    loss = mf.contrastive_fusion_loss(xs[:2], xs[2], backend=BACKEND)
    got = [t.cpu() for t in (loss.detach(), *torch.autograd.grad(loss, xs))]
    exact_loss, exact_views, exact_w = fusion_exact(views, w, 0.5)
    for g, e in zip(got, [exact_loss, *exact_views, exact_w], strict=True):
        assert_close(g, e)


@pytest.mark.parametrize("combine", ["last", "mean"])
def test_propagate_cuda(combine):
    gen = torch.Generator().manual_seed(5)
    dense = torch.randn(400, 400, generator=gen) * (torch.rand(400, 400, generator=gen) < 0.02)
    dense[:, 3] = torch.rand(400, generator=gen)  # a dense column: a long transposed row
    dense[7] = 0  # an empty row
    x = torch.randn(400, 70, generator=gen)
    g = CSRGraph.from_dense(dense).to(CUDA)
    xs = x.to(CUDA).requires_grad_()
    y = mf.propagate(g, xs, 2, combine=combine, backend=BACKEND)
    y.sum().backward()
    exact_y, exact_grad = propagate_exact(dense, x, 2, combine)
    assert_close(y.detach().cpu(), exact_y, what="y")
    assert_close(xs.grad.cpu(), exact_grad, what="gradient")


def test_gradcheck_cuda():
    gen = torch.Generator().manual_seed(3)
    z1 = torch.randn(37, 5, generator=gen, dtype=torch.float64).to(CUDA).requires_grad_()
    z2 = torch.randn(37, 5, generator=gen, dtype=torch.float64).to(CUDA).requires_grad_()
    for symmetric in (False, True):
        assert torch.autograd.gradcheck(
            lambda a, b, s=symmetric: mf.contrastive_loss(a, b, tau=0.3, symmetric=s,
                                                          backend=BACKEND), (z1, z2))
    q = torch.randn(29, 4, generator=gen, dtype=torch.float64).to(CUDA).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a: mf.topk_similarity(a, None, 5, normalize=True, backend=BACKEND)[0], (q,))
    dense = (torch.rand(23, 23, generator=gen) < 0.2).double() * torch.rand(23, 23,
                                                                           generator=gen)
    graph = CSRGraph.from_dense(dense).to(CUDA)
    v = graph.values.clone().requires_grad_()
    x = torch.randn(23, 6, generator=gen, dtype=torch.float64).to(CUDA).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda vv, xx: mf.propagate(graph.with_values(vv), xx, 2, combine="mean",
                                    backend=BACKEND), (v, x))


def test_full_ranking_cuda():
    gen = torch.Generator().manual_seed(4)
    users = torch.randint(-3, 4, (150, 8), generator=gen).double()  # exact scores, many ties
    items = torch.randint(-3, 4, (90, 8), generator=gen).double()
    seen = torch.rand(150, 90, generator=gen) < 0.1
    held = torch.rand(150, 90, generator=gen) < 0.05
    got = full_ranking(users.to(CUDA), items.to(CUDA), CSRGraph.from_dense(seen.double()).to(CUDA),
                       CSRGraph.from_dense(held.double()).to(CUDA), (5, 20), backend=BACKEND)
    sets = [[set(torch.nonzero(r).flatten().tolist()) for r in m] for m in (seen, held)]
    expected = ranking_metrics((users @ items.T).tolist(), *sets, (5, 20), "standard")
    assert got == pytest.approx(expected, rel=1e-12)


@on_gpu
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


@on_gpu
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
