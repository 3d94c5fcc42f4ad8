"""CSR SpMM forward and forward+backward: every backend against torch COO (the official path),
torch CSR and scipy CSR.

    pytest benchmarks/bench_spmm.py --benchmark-only [--bench-size small|paper|large]

Graphs (``--bench-size paper``): the symmetric-normalized bipartite graph of Clothing size
(39,387 users x 23,033 items, 278,677 interactions -> 62,420 nodes, 557k nonzeros) and the kNN
item graph (N = 23,033, k = 10); ``small`` and ``large`` scale both (sizes.py).
``extra_info`` holds the effective bandwidth (graph + x + y bytes over time) and the
machine's measured copy bandwidth. Every case of a group, peers included, gets the same
warm-up call and ``SPMM_ROUNDS`` timed rounds. Forward+backward clears ``x.grad`` first, as
``optimizer.zero_grad()`` does by default, so no gradient accumulation is timed.
"""

from __future__ import annotations

import functools

import isas
import peers
import pytest
import sizes
import torch

import micro_fast as mf

DIMS = sizes.SPMM_DIMS[sizes.current()]
BACKENDS = [*isas.cpp_cases(), "numba", "cuda", "torch_ref", "auto"]
PEERS = ["torch_coo", "torch_csr", "scipy_csr"]
#: the same product reached the way torch code reaches it: ``torch.sparse.mm`` on a CSRGraph
#: (``__torch_function__``) and ``mf.spmm`` on a torch COO tensor (converted once, cached)
INTEROP = ["torch_function", "from_torch_coo"]
SPMM_ROUNDS = 20


GRAPHS = ([("bipartite", s) for s in sizes.SPMM_BIPARTITE[sizes.current()]]
          + [("knn", n) for n in sizes.SPMM_KNN[sizes.current()]])
GRAPH_IDS = [f"{kind}-{'x'.join(map(str, s)) if kind == 'bipartite' else s}"
             for kind, s in GRAPHS]


@functools.cache
def graph(kind: str, size) -> mf.CSRGraph:
    if kind == "bipartite":
        n_users, n_items, nnz = size
        users, items = peers.clothing_like_interactions(n_users, n_items, nnz)
        return mf.bipartite_graph(users, items, n_users, n_items, normalization="sym")
    feats = torch.rand(size, 64, generator=torch.Generator().manual_seed(0)) - 0.3
    return mf.knn_graph(feats, 10).detach()


@functools.cache
def copy_gbps() -> float:
    return peers.memory_copy_gbps()


def _bytes(g: mf.CSRGraph, d: int) -> int:
    return (g.indptr.numel() * 8 + g.nnz * (8 + 4) + g.shape[1] * d * 4 + g.shape[0] * d * 4)


def _x(g: mf.CSRGraph, d: int, grad: bool) -> torch.Tensor:
    x = torch.randn(g.shape[1], d, generator=torch.Generator().manual_seed(1))
    return x.requires_grad_(grad)


def _record(benchmark, g, d, mode):
    benchmark.extra_info["bytes"] = _bytes(g, d) * (2 if mode == "fwd+bwd" else 1)
    benchmark.extra_info["copy_gbps"] = copy_gbps()


def _peer_fn(peer: str, g: mf.CSRGraph, x: torch.Tensor, backward: bool):
    if peer == "scipy_csr":
        if backward:
            pytest.skip("scipy has no autograd")
        m, xn = g.to_scipy(), x.detach().numpy()
        return lambda: m @ xn
    a = g.to_torch_coo() if peer == "torch_coo" else g.to_torch_csr()
    if not backward:
        return lambda: torch.sparse.mm(a, x) if peer == "torch_coo" else a @ x

    def fwd_bwd():
        x.grad = None
        y = torch.sparse.mm(a, x) if peer == "torch_coo" else a @ x
        y.backward(torch.ones_like(y))

    return fwd_bwd


@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("spec", GRAPHS, ids=GRAPH_IDS)
@pytest.mark.parametrize("impl", BACKENDS + INTEROP + PEERS)
def test_spmm(benchmark, run_case, impl, spec, d, mode):
    """``auto`` is what ``backend="auto"`` runs on CPU tensors (the measured choice,
    micro_fast.tuning)."""
    name = spec[0]
    backend, isa = isas.split(impl)
    g = graph(*spec)
    backward = mode == "fwd+bwd"
    benchmark.group = f"spmm {name} N={g.shape[0]} d={d} {mode}"
    if impl in BACKENDS:
        if backend != "auto" and backend not in mf.backends.available():
            pytest.skip(f"backend {backend} not available: {mf.backends.status()[backend]}")
        device = "cuda" if backend == "cuda" else "cpu"
        mod = mf.backends.get(backend, torch.device(device), op="topk_similarity")
        if not hasattr(mod, "spmm"):
            pytest.skip(f"backend {backend} has no spmm kernel")
        gd = g.to(device)
        x = _x(g, d, backward).to(device).detach().requires_grad_(backward)
        if backward:
            def fn():
                x.grad = None
                y = mf.spmm(gd, x, backend=backend)
                y.backward(torch.ones_like(y))
        else:
            def fn():
                return mf.spmm(gd, x, backend=backend)
    elif impl in INTEROP:
        a = g if impl == "torch_function" else g.to_torch_coo()
        x = _x(g, d, backward)
        product = (lambda: torch.sparse.mm(a, x)) if impl == "torch_function" \
            else (lambda: mf.spmm(a, x))
        if backward:
            def fn():
                x.grad = None
                y = product()
                y.backward(torch.ones_like(y))
        else:
            fn = product
    else:
        fn = _peer_fn(impl, g, _x(g, d, backward), backward)
    _record(benchmark, g, d, mode)
    if backend == "auto":
        benchmark.extra_info["runs"] = mf.dispatch.plan("spmm", "auto", "cpu").backend
    # one product takes milliseconds: every case, peers included, gets the same SPMM_ROUNDS
    run_case(fn, rounds=SPMM_ROUNDS, warmup=sizes.WARMUP, isa=isa, op="spmm", impl=impl,
             graph=name, d=d, mode=mode, n=g.shape[0], nnz=g.nnz)
