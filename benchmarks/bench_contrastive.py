"""MICRO's all-pairs contrastive loss, forward and forward+backward: every backend against the
published chunked formulation (4096-row chunks) and the same under ``torch.compile``.

    pytest benchmarks/bench_contrastive.py --benchmark-only [--bench-size small|paper|large]

Every case of a group gets the same warm-up call and timed rounds (``sizes.timing``).
``extra_info`` holds the peak extra resident memory and ``flop``, twice the multiply-adds the
implementation performs (benchmarks/work.py): the cpp kernels compute the symmetric
intra-view tiles once (about 6 N^2 d multiply-adds forward + backward, 8 N^2 d for the
fused-view loss of two views), torch_ref and numba every score in full (8 N^2 d), the
published chunked loss 6 N^2 d. Rates are therefore achieved rates of the work done, not of a
common nominal count.
"""

from __future__ import annotations

import functools

import isas
import peers
import pytest
import sizes
import torch
import work

import micro_fast as mf

SIZES = sizes.CONTRASTIVE[sizes.current()]
D = 64


@functools.cache
def views(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, D, generator=gen), torch.randn(n, D, generator=gen)


@functools.cache
def compiled_published():
    return torch.compile(peers.published_contrastive)


def _case(loss_fn, n: int, backward: bool):
    a, b = views(n)
    z1, z2 = a.clone().requires_grad_(backward), b.clone().requires_grad_(backward)

    def run():
        loss = loss_fn(z1, z2)
        if backward:
            loss.backward()
            z1.grad = z2.grad = None
        return loss

    return run


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("impl", [*isas.cpp_cases(), "numba", "cuda", "torch_ref", "published",
                                  "published_compiled"])
def test_contrastive(benchmark, run_case, impl, n, mode):
    backward = mode == "fwd+bwd"
    backend, isa = isas.split(impl)
    benchmark.group = f"contrastive N={n} d={D} {mode}"
    if impl in ("published", "published_compiled"):
        # the published loss keeps two [4096, N] exp-matrices per chunk for autograd
        reason = sizes.skip_dense_reason(n, 2) if backward else None
        if reason:
            pytest.skip(reason)
        fn = peers.published_contrastive if impl == "published" else compiled_published()
        loss_fn = fn
    else:
        if backend not in mf.backends.available():
            pytest.skip(f"backend {backend} not available: {mf.backends.status()[backend]}")
        mod = mf.backends.get(backend, torch.device("cuda" if backend == "cuda" else "cpu"))
        if not hasattr(mod, "contrastive_forward"):
            pytest.skip(f"backend {backend} has no contrastive kernel")

        def loss_fn(z1, z2, backend=backend):
            return mf.contrastive_loss(z1, z2, backend=backend)
    if n > 50_000 and backend not in ("cpp", "cuda"):
        pytest.skip(f"{impl} takes many minutes per call at N={n}: only cpp and cuda run")
    if backend == "cpp":
        macs = work.contrastive_macs(n, D, backward)
    elif impl.startswith("published"):
        macs = work.published_contrastive_macs(n, D, backward)
    elif backend in ("torch_ref", "numba"):
        macs = work.blocked_contrastive_macs(n, D, backward)
    else:  # cuda: not counted here
        macs = None
    run = _case(loss_fn, n, backward)
    run_case(run, **sizes.timing(n), isa=isa, op="contrastive", impl=impl, n=n, d=D,
             mode=mode, flop=None if macs is None else 2 * macs)


@functools.cache
def fusion_inputs(n: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    views_ = [torch.randn(n, D, generator=gen) for _ in range(2)]
    return views_, torch.softmax(torch.randn(n, 2, generator=gen), dim=1)


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("impl", [*isas.cpp_cases("cpp_fused"), *isas.cpp_cases("cpp_separate"),
                                  "cpp_auto", "published"])
def test_contrastive_fusion(benchmark, run_case, impl, n, mode):
    """MICRO's whole fusion loss with two modalities, sum_m contrastive(H_m, h), h the
    attention-weighted sum: the fused-view kernel (one pass over the views' Gram blocks) against
    two separate losses (ours, and the published chunked code), and ``cpp_auto``, the strategy
    ``contrastive_fusion_loss`` picks here (micro_fast.tuning). ``flop`` counts what each
    implementation performs: the fused kernel's Gram tiles, two cpp losses, or two published
    losses (benchmarks/work.py)."""
    backward = mode == "fwd+bwd"
    base_impl, isa = isas.split(impl)
    benchmark.group = f"contrastive fusion M=2 N={n} d={D} {mode}"
    if impl == "published" and backward and sizes.skip_dense_reason(n, 2):
        pytest.skip(sizes.skip_dense_reason(n, 2))
    if impl != "published" and "cpp" not in mf.backends.available():
        pytest.skip("backend cpp not available")
    if n > 50_000 and impl == "published":
        pytest.skip(f"published takes many minutes per call at N={n}")
    base, base_w = fusion_inputs(n)
    hs = [v.clone().requires_grad_(backward) for v in base]
    w = base_w.clone().requires_grad_(backward)

    def loss_fn():
        if base_impl in ("cpp_fused", "cpp_auto"):
            strategy = "fused" if base_impl == "cpp_fused" else "auto"
            return mf.contrastive_fusion_loss(hs, w, backend="cpp", strategy=strategy)
        h = w[:, :1] * hs[0] + w[:, 1:] * hs[1]
        if base_impl == "cpp_separate":
            return sum(mf.contrastive_loss(v, h, backend="cpp") for v in hs)
        return sum(peers.published_contrastive(v, h) for v in hs)

    def run():
        loss = loss_fn()
        if backward:
            loss.backward()
            w.grad = None
            for v in hs:
                v.grad = None
        return loss

    runs = base_impl
    if base_impl == "cpp_auto":
        strategy = mf.dispatch.plan("contrastive_fusion", "cpp", "cpu").strategy
        runs = f"cpp_{strategy}"
        benchmark.extra_info["runs"] = runs.split("_")[1]
    if runs == "cpp_fused":
        macs = work.fusion_macs(n, D, 2, backward)
    elif runs == "cpp_separate":
        macs = 2 * work.contrastive_macs(n, D, backward)
    else:
        macs = 2 * work.published_contrastive_macs(n, D, backward)
    run_case(run, **sizes.timing(n), isa=isa, op="contrastive_fusion", impl=impl, n=n, d=D,
             mode=mode, flop=2 * macs)
