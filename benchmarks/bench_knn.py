"""kNN item graph / symmetric top-k similarity: every backend against the peers.

    pytest benchmarks/bench_knn.py --benchmark-only [--bench-size small|paper|large]

Cases are grouped by size; ``extra_info`` holds the peak extra resident memory (MiB). The
official path (dense matrix + torch.topk + Python COO loop) and torch_ref are slow at the large
sizes, so they run one round; dense peers are skipped where their N x N matrix does not fit.
"""

from __future__ import annotations

import isas
import peers
import pytest
import sizes
import torch

import micro_fast as mf

K = 10
SIZES = sizes.KNN[sizes.current()]
SIZE_IDS = [f"N{n}-d{d}" for n, d in SIZES]
_features: dict[tuple[int, int], torch.Tensor] = {}


def features(n: int, d: int) -> torch.Tensor:
    if (n, d) not in _features:
        gen = torch.Generator().manual_seed(0)
        _features[(n, d)] = torch.rand(n, d, generator=gen) - 0.3  # correlated, like CNN features
    return _features[(n, d)]


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("case", [*isas.cpp_cases(), "numba", "cuda", "torch_ref"])
def test_knn_graph(benchmark, run_case, size, case):
    backend, isa = isas.split(case)
    if backend not in mf.backends.available():
        pytest.skip(f"backend {backend} not available: {mf.backends.status()[backend]}")
    if backend == "torch_ref" and size[0] > 50_000:
        pytest.skip(f"torch_ref takes over 10 minutes at N={size[0]}")
    device = "cuda" if backend == "cuda" else "cpu"
    x = features(*size).to(device)
    benchmark.group = f"knn N={size[0]} d={size[1]}"
    slow = backend == "torch_ref"
    run_case(lambda: mf.knn_graph(x, K, backend=backend), rounds=1 if slow else 3,
             warmup=0 if slow else 1, isa=isa, op="knn_graph", backend=case, n=size[0],
             d=size[1])


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("case", [*isas.cpp_cases(), "numba"])
def test_topk_similarity_search_only(benchmark, run_case, size, case):
    backend, isa = isas.split(case)
    if backend not in mf.backends.available():
        pytest.skip(f"backend {backend} not available")
    x = torch.nn.functional.normalize(features(*size), dim=1)
    benchmark.group = f"knn N={size[0]} d={size[1]}"
    run_case(lambda: mf.topk_similarity(x, None, K, backend=backend), op="topk_similarity",
             isa=isa, backend=case, n=size[0], d=size[1])


# peer -> (function of the feature tensor, needs NumPy input, slow: one round, optional module,
#          N x N float32 matrices it holds)
PEERS = {
    "official": (peers.official_knn_graph, False, True, None, 1),
    "blocked_torch": (peers.blocked_torch_topk, False, True, None, 0),
    "faiss": (peers.faiss_flat_ip, True, False, "faiss", 0),
    "sklearn": (peers.sklearn_cosine_knn, True, True, "sklearn", 2),
}


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("peer", list(PEERS))
def test_peer(benchmark, run_case, size, peer):
    fn, numpy_input, slow, module, dense = PEERS[peer]
    reason = sizes.skip_dense_reason(size[0], dense) if dense else None
    if reason:
        pytest.skip(reason)
    if module is not None:
        pytest.importorskip(module, reason=f"{module} not installed (pip install '.[bench]')")
    x = features(*size).numpy() if numpy_input else features(*size)
    benchmark.group = f"knn N={size[0]} d={size[1]}"
    # the official path is timed cold, as a training loop meets it once per epoch
    run_case(lambda: fn(x, K), rounds=1 if slow else 3, warmup=0 if peer == "official" else 1,
             op=peer, n=size[0], d=size[1])
