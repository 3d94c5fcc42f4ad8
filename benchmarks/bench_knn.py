"""kNN item graph / symmetric top-k similarity: every backend against the peers.

    pytest benchmarks/bench_knn.py --benchmark-only [--benchmark-json out.json]

Cases are grouped by size; ``extra_info`` holds the peak extra resident memory (MiB). The
official path (dense matrix + torch.topk + Python COO loop) and torch_ref are slow at the large
sizes, so they run one round.
"""

from __future__ import annotations

import peers
import pytest
import torch

import micro_fast as mf

K = 10
SIZES = [(7050, 64), (23033, 64), (23033, 384), (7050, 4096)]
SIZE_IDS = [f"N{n}-d{d}" for n, d in SIZES]
_features: dict[tuple[int, int], torch.Tensor] = {}


def features(n: int, d: int) -> torch.Tensor:
    if (n, d) not in _features:
        gen = torch.Generator().manual_seed(0)
        _features[(n, d)] = torch.rand(n, d, generator=gen) - 0.3  # correlated, like CNN features
    return _features[(n, d)]


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("backend", ["cpp", "numba", "cuda", "torch_ref"])
def test_knn_graph(benchmark, run_case, size, backend):
    if backend not in mf.backends.available():
        pytest.skip(f"backend {backend} not available: {mf.backends.status()[backend]}")
    device = "cuda" if backend == "cuda" else "cpu"
    x = features(*size).to(device)
    benchmark.group = f"knn N={size[0]} d={size[1]}"
    slow = backend == "torch_ref"
    run_case(lambda: mf.knn_graph(x, K, backend=backend), rounds=1 if slow else 3,
             warmup=0 if slow else 1, op="knn_graph", backend=backend, n=size[0], d=size[1])


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("backend", ["cpp", "numba"])
def test_topk_similarity_search_only(benchmark, run_case, size, backend):
    if backend not in mf.backends.available():
        pytest.skip(f"backend {backend} not available")
    x = torch.nn.functional.normalize(features(*size), dim=1)
    benchmark.group = f"knn N={size[0]} d={size[1]}"
    run_case(lambda: mf.topk_similarity(x, None, K, backend=backend), op="topk_similarity",
             backend=backend, n=size[0], d=size[1])


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_official_dense_path(benchmark, run_case, size):
    x = features(*size)
    benchmark.group = f"knn N={size[0]} d={size[1]}"
    run_case(lambda: peers.official_knn_graph(x, K), rounds=1, warmup=0, op="official",
             n=size[0], d=size[1])


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_blocked_torch(benchmark, run_case, size):
    x = features(*size)
    benchmark.group = f"knn N={size[0]} d={size[1]}"
    run_case(lambda: peers.blocked_torch_topk(x, K), rounds=1, warmup=1, op="blocked_torch",
             n=size[0], d=size[1])


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_faiss_flat_ip(benchmark, run_case, size):
    pytest.importorskip("faiss", reason="FAISS not installed (pip install '.[bench]')")
    x = features(*size).numpy()
    benchmark.group = f"knn N={size[0]} d={size[1]}"
    run_case(lambda: peers.faiss_flat_ip(x, K), op="faiss", n=size[0], d=size[1])


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
def test_sklearn_symmetric_product(benchmark, run_case, size):
    pytest.importorskip("sklearn", reason="scikit-learn not installed (pip install '.[bench]')")
    x = features(*size).numpy()
    benchmark.group = f"knn N={size[0]} d={size[1]}"
    run_case(lambda: peers.sklearn_cosine_knn(x, K), rounds=1, warmup=1, op="sklearn",
             n=size[0], d=size[1])
