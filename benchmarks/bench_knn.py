"""kNN item graph / top-k similarity search: every backend against the peers.

    pytest benchmarks/bench_knn.py --benchmark-only [--bench-size small|paper|large]

Two kinds of group per size:

* ``knn N= d=``: the self-join, each of N items against all N (the kNN item graph). Our
  ``knn_graph`` / ``topk_similarity(x, None, k)`` compute each unordered pair once (the
  similarity matrix is symmetric); FAISS ``IndexFlatIP``, the blocked torch search, the
  published dense path and scikit-learn compute all N^2 pairs. A speedup here includes that
  halving, which only a self-join allows.
* ``knn queries!=keys M= N= d=``: M other queries against the N keys, where no side can use
  symmetry: ``topk_similarity(queries, keys, k)`` against FAISS ``IndexFlatIP`` (index built
  from the keys and searched, both inside the timed call) and the blocked torch search, all on
  the same unit-norm rows.

Every case of a group gets the same warm-up call and timed rounds (``sizes.timing``); the
first (cold) call's time is kept in ``extra_info["first_call_s"]``. ``extra_info["flop"]``
counts the multiply-adds each implementation performs (benchmarks/work.py, x 2); dense peers
are skipped where their N x N matrix does not fit, with the memory they would need.
"""

from __future__ import annotations

import isas
import peers
import pytest
import sizes
import torch
import work
from harness import require

import micro_fast as mf

K = 10
SIZES = sizes.KNN[sizes.current()]
SIZE_IDS = [f"N{n}-d{d}" for n, d in SIZES]
_features: dict[tuple[int, int, int], torch.Tensor] = {}


def features(n: int, d: int, seed: int = 0) -> torch.Tensor:
    if (n, d, seed) not in _features:
        gen = torch.Generator().manual_seed(seed)
        _features[(n, d, seed)] = torch.rand(n, d, generator=gen) - 0.3  # correlated, like CNN
    return _features[(n, d, seed)]


def unit(n: int, d: int, seed: int = 0) -> torch.Tensor:
    return torch.nn.functional.normalize(features(n, d, seed), dim=1)


def _self_join_flop(impl: str, n: int, d: int) -> int:
    """2 x the multiply-adds of a self-join of n rows by ``impl``."""
    base = impl.split("[", 1)[0]
    if base in ("cpp", "numba"):
        return 2 * work.topk_macs(n, None, d, backend=base)
    return 2 * work.dense_macs(n, n, d)  # torch_ref and every peer: all N^2 pairs


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
    run_case(lambda: mf.knn_graph(x, K, backend=backend), **sizes.timing(size[0]), isa=isa,
             op="knn_graph", backend=case, n=size[0], d=size[1], join="self",
             flop=_self_join_flop(backend, *size))


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("case", [*isas.cpp_cases(), "numba"])
def test_topk_similarity_search_only(benchmark, run_case, size, case):
    backend, isa = isas.split(case)
    if backend not in mf.backends.available():
        pytest.skip(f"backend {backend} not available")
    x = unit(*size)
    benchmark.group = f"knn N={size[0]} d={size[1]}"
    run_case(lambda: mf.topk_similarity(x, None, K, backend=backend), op="topk_similarity",
             **sizes.timing(size[0]), isa=isa, backend=case, n=size[0], d=size[1],
             join="self", flop=_self_join_flop(backend, *size))


# peer -> (function of the feature tensor, needs NumPy input, optional module,
#          N x N float32 matrices it holds)
PEERS = {
    "official": (peers.official_knn_graph, False, None, 1),
    "blocked_torch": (peers.blocked_torch_topk, False, None, 0),
    "faiss": (peers.faiss_flat_ip, True, "faiss", 0),
    "sklearn": (peers.sklearn_cosine_knn, True, "sklearn", 2),
}


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("peer", list(PEERS))
def test_peer(benchmark, run_case, size, peer):
    fn, numpy_input, module, dense = PEERS[peer]
    reason = sizes.skip_dense_reason(size[0], dense) if dense else None
    if reason:
        pytest.skip(reason)
    if module is not None:
        require(module)
    x = features(*size).numpy() if numpy_input else features(*size)
    benchmark.group = f"knn N={size[0]} d={size[1]}"
    run_case(lambda: fn(x, K), **sizes.timing(size[0]), op=peer, n=size[0], d=size[1],
             join="self", flop=_self_join_flop(peer, *size))


# --- queries != keys: no symmetry on any side ---------------------------------------------------

def _queries(n: int) -> int:
    """Number of other queries searched against n keys: n (as many as the self-join's rows)."""
    return n


@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("case", [*isas.cpp_cases(), "numba", "faiss", "blocked_torch"])
def test_search_queries_keys(benchmark, run_case, size, case):
    n, d = size
    m = _queries(n)
    backend, isa = isas.split(case)
    q, keys = unit(m, d, seed=1), unit(n, d, seed=0)
    benchmark.group = f"knn queries!=keys M={m} N={n} d={d}"
    if case == "faiss":
        require("faiss")
        qn, kn = q.numpy(), keys.numpy()

        def fn():
            return peers.faiss_flat_ip_search(qn, kn, K)
    elif case == "blocked_torch":
        def fn():
            return peers.blocked_torch_search(q, keys, K)
    else:
        if backend not in mf.backends.available():
            pytest.skip(f"backend {backend} not available")

        def fn():
            return mf.topk_similarity(q, keys, K, backend=backend)
    run_case(fn, **sizes.timing(n), isa=isa, op="topk_similarity" if backend in ("cpp", "numba")
             else case, impl=case, n=n, m=m, d=d, join="queries!=keys",
             flop=2 * work.dense_macs(m, n, d))
