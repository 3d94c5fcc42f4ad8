"""The shard form of the contrastive losses (ops.contrastive_loss / contrastive_fusion_loss
with ``shard=``): W cooperating processes, played here by W threads that exchange their partial
row statistics, return parts whose values and gradients sum to the single-process ones, for
every backend (a backend without a shard form computes the whole loss on each) and for shards
computed with different instruction sets. The same over real gloo processes is in
test_distributed.py."""

from __future__ import annotations

import pytest
import torch
from bounds import Bounded, assert_close
from helpers import assert_parity, run_shards
from hypothesis import given
from hypothesis import strategies as st
from oracles import contrastive_exact, fusion_exact

import micro_fast as mf
from micro_fast import backends

BACKENDS = backends.available("cpu")  # cpp splits its tiles; the others compute it all


def _assert_exact(value, grads, exact, count):
    """The parts' sum against the exact loss and gradients: each of the ``count`` parts rounds
    its own share, so the sum carries up to ``count`` times the single computation's error."""
    expected_value, *expected_grads = exact
    scaled = [Bounded(e.value, e.err * count, e.u) for e in (expected_value, *expected_grads)]
    assert_close(value, scaled[0], what="loss")
    for j, (g, e) in enumerate(zip(grads, scaled[1:], strict=True)):
        assert_close(g, e, what=f"gradient {j}")


@pytest.mark.parametrize("backend", BACKENDS)
@given(n=st.integers(1, 140), d=st.integers(1, 40), count=st.integers(1, 4),
       symmetric=st.booleans(), tau=st.sampled_from([0.02, 0.5, 1.0]), double=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_contrastive_parts_sum_to_the_whole(backend, n, d, count, symmetric, tau, double,
                                            seed):
    dtype = torch.float64 if double else torch.float32
    gen = torch.Generator().manual_seed(seed)
    z = [torch.randn(n, d, generator=gen, dtype=dtype) for _ in range(2)]

    def fn(shard, a, b):
        return mf.contrastive_loss(a, b, tau=tau, symmetric=symmetric, block_size=32,
                                   backend=backend, shard=shard)

    value, grads, parts = run_shards(count, fn, z)
    exact = contrastive_exact(*z, tau, symmetric)
    _assert_exact(value, grads, exact, count)
    for p in parts:  # every part is loss / count
        assert_close(p * count, Bounded(exact[0].value, exact[0].err * count, exact[0].u))


@pytest.mark.parametrize("backend", BACKENDS)
@given(n=st.integers(1, 140), d=st.integers(1, 40), m=st.integers(1, 3),
       count=st.integers(1, 4), strategy=st.sampled_from(["fused", "separate"]),
       double=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_fusion_parts_sum_to_the_whole(backend, n, d, m, count, strategy, double, seed):
    dtype = torch.float64 if double else torch.float32
    gen = torch.Generator().manual_seed(seed)
    views = [torch.randn(n, d, generator=gen, dtype=dtype) for _ in range(m)]
    w = torch.softmax(torch.randn(n, m, generator=gen, dtype=dtype), dim=1)

    def fn(shard, *xs):
        return mf.contrastive_fusion_loss(list(xs[:-1]), xs[-1], block_size=32,
                                          backend=backend, strategy=strategy, shard=shard)

    value, grads, _ = run_shards(count, fn, [*views, w])
    loss, view_grads, weights_grad = fusion_exact(views, w, 0.5)
    _assert_exact(value, grads, (loss, *view_grads, weights_grad), count)


@pytest.mark.skipif("cpp" not in backends.available(), reason="cpp not available")
def test_the_compiled_kernels_visit_only_their_tiles():
    """Split kernels: each shard's partial lse covers only part of a row (so it is below the
    whole), and the shards' gradients differ, yet they add up."""
    from micro_fast.backends import cpp

    gen = torch.Generator().manual_seed(3)
    n1, n2 = (torch.nn.functional.normalize(torch.randn(200, 8, generator=gen,
                                                        dtype=torch.float64), dim=1)
              for _ in range(2))
    full, _ = cpp.contrastive_forward(n1, n2, 0.5, False, 32)
    parts = [cpp.contrastive_forward(n1, n2, 0.5, False, 32, shard=(i, 3))[0] for i in range(3)]
    assert all(bool((p < full).all()) for p in parts)
    assert torch.allclose(torch.logsumexp(torch.stack(parts), dim=0), full, rtol=1e-12)
    g = torch.full((200,), 1 / 200, dtype=torch.float64)
    whole = cpp.contrastive_backward(n1, n2, 0.5, full, None, g, None, 32)
    split = [cpp.contrastive_backward(n1, n2, 0.5, full, None, g, None, 32, shard=(i, 3))
             for i in range(3)]
    for k in range(2):
        assert not torch.allclose(split[0][k], whole[k])
        assert_parity(sum(s[k] for s in split), whole[k], f"gradient {k}")
    with pytest.raises(ValueError, match="shard"):
        cpp.contrastive_forward(n1, n2, 0.5, False, 32, shard=(3, 3))


@pytest.mark.skipif("cpp" not in backends.available(), reason="cpp not available")
def test_shards_of_different_instruction_sets_add_up():
    """Blocks are rounded to an ISA-independent quantum, so an AVX-512 rank and an AVX2 or
    portable rank split the work into the same tasks."""
    from micro_fast.backends import cpp

    isas = cpp.supported_isas()
    if len(isas) < 2:
        pytest.skip("this CPU runs one instruction set")
    gen = torch.Generator().manual_seed(4)
    u = torch.nn.functional.normalize(torch.randn(2, 333, 16, generator=gen,
                                                  dtype=torch.float64), dim=2).contiguous()
    coef = torch.softmax(torch.randn(333, 2, generator=gen, dtype=torch.float64), 1)
    coef = (coef / torch.linalg.vector_norm(coef[:, :1] * u[0] + coef[:, 1:] * u[1], dim=1,
                                            keepdim=True)).contiguous()
    full = cpp.contrastive_fusion_forward(u, coef, 0.5, 50)
    parts = []
    try:
        for i, isa in enumerate(isas):
            cpp.set_simd_isa(isa)
            parts.append(cpp.contrastive_fusion_forward(u, coef, 0.5, 50, shard=(i, len(isas))))
    finally:
        cpp.set_simd_isa("auto")
    assert torch.allclose(torch.logsumexp(torch.stack(parts), dim=0), full, rtol=1e-12)
