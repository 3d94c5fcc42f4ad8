"""Size limits: requests past the memory budget (or past 2^31 entries, which no machine here
holds) raise MemoryBudgetError naming the op before anything large is allocated; the budget is
settable; int64 indices throughout."""

from __future__ import annotations

import resource

import pytest
import torch

import micro_fast as mf
from micro_fast import memory
from micro_fast.memory import MemoryBudgetError


@pytest.fixture
def budget():
    yield memory.set_max_memory
    memory.set_max_memory(None)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_parse_bytes():
    assert memory.parse_bytes(123) == 123
    assert memory.parse_bytes("2KB") == 2048
    assert memory.parse_bytes("1.5 gb") == 3 << 29
    assert memory.parse_bytes("8G") == 8 << 30
    for bad in ("lots", "-1", "0", True):
        with pytest.raises((ValueError, TypeError)):
            memory.parse_bytes(bad)


def test_n_times_k_beyond_2_31_is_a_clear_error_before_allocating():
    # 65,536 queries x k = 40,000 = 2.6e9 entries: 31 GB of results, above physical memory
    queries = torch.randn(65_536, 2)
    keys = torch.randn(40_000, 2)
    before = _peak_rss_mb()
    with pytest.raises(MemoryBudgetError, match=r"topk_similarity needs about .* GiB"):
        mf.topk_similarity(queries, keys, k=40_000)
    assert _peak_rss_mb() - before < 200  # nothing of that size was allocated


@pytest.mark.parametrize("op", ["topk", "knn", "spmm", "propagate", "contrastive", "fusion",
                                "bipartite", "full_ranking"])
def test_every_op_respects_the_budget(budget, op):
    x = torch.randn(3000, 64)
    graph = mf.knn_graph(x, 10)
    users, items = torch.randint(0, 500, (20_000,)), torch.randint(0, 3000, (20_000,))
    budget("1MB")
    calls = {
        "topk": lambda: mf.topk_similarity(x, None, 100),
        "knn": lambda: mf.knn_graph(x, 100),
        "spmm": lambda: mf.spmm(graph, x),
        "propagate": lambda: mf.propagate(graph, x, 2),
        "contrastive": lambda: mf.contrastive_loss(x, x.flip(0)),
        "fusion": lambda: mf.contrastive_fusion_loss([x, x.flip(0)],
                                                     torch.full((3000, 2), 0.5)),
        "bipartite": lambda: mf.bipartite_graph(users, items, 500, 3000),
        "full_ranking": lambda: __import__("micro_fast.metrics").metrics.full_ranking(
            x[:500], x, None, mf.CSRGraph.from_coo(users, items, shape=(500, 3000)), (200,)),
    }
    with pytest.raises(MemoryBudgetError, match="max_memory is 1.0 MiB"):
        calls[op]()
    budget(None)
    calls[op]()  # the default budget (physical memory) lets it run


def test_budget_from_the_environment(monkeypatch):
    monkeypatch.setenv("MICRO_FAST_MAX_MEMORY", "1KB")
    assert memory.max_memory() == 1024
    with pytest.raises(MemoryBudgetError):
        mf.topk_similarity(torch.randn(100, 4), None, 10)
    monkeypatch.setenv("MICRO_FAST_MAX_MEMORY", "huge")
    with pytest.raises(ValueError, match="max_memory"):
        memory.max_memory()


def test_indices_are_int64_everywhere():
    x = torch.randn(200, 8)
    _, idx = mf.topk_similarity(x, None, 5)
    graph = mf.knn_graph(x, 5)
    adj = mf.bipartite_graph(torch.tensor([0, 1]), torch.tensor([3, 4]), 2, 200)
    for t in (idx, graph.indptr, graph.indices, adj.indptr, adj.indices):
        assert t.dtype == torch.int64
