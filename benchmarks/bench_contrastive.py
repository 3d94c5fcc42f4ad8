"""MICRO's all-pairs contrastive loss, forward and forward+backward: every backend against the
published chunked formulation (4096-row chunks) and the same under ``torch.compile``.

    pytest benchmarks/bench_contrastive.py --benchmark-only [--bench-size small|paper|large]

``extra_info`` holds the peak extra resident memory and the effective GFLOP/s of the fused
arithmetic (3 N^2 d flop forward, 12 N^2 d forward+backward: cross-view tiles in full, the
symmetric intra-view tiles once).
"""

from __future__ import annotations

import functools

import isas
import peers
import pytest
import sizes
import torch

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
    slow = impl in ("published", "torch_ref") or (impl == "published_compiled" and n > 10000)
    flop = (12 if backward else 3) * n * n * D
    run = _case(loss_fn, n, backward)
    huge = n > 50_000 or (isa == "generic" and n > 10_000)
    run_case(run, rounds=1 if slow or huge else 3, warmup=0 if huge else 1, isa=isa,
             op="contrastive", impl=impl, n=n, d=D, mode=mode, flop=flop)


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
    ``contrastive_fusion_loss`` picks here (micro_fast.tuning). ``flop`` counts the separate
    losses' arithmetic for every implementation, so GFLOP/s compare as effective rates."""
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

    flop = 2 * (12 if backward else 3) * n * n * D
    slow = impl == "published"
    huge = n > 50_000 or (isa == "generic" and n > 10_000)
    if base_impl == "cpp_auto":
        benchmark.extra_info["runs"] = ("fused" if mf.tuning.fused_fusion_loss()
                                        else "separate")
    run_case(run, rounds=1 if slow or huge else 3, warmup=0 if huge else 1, isa=isa,
             op="contrastive_fusion", impl=impl, n=n, d=D, mode=mode, flop=flop)
