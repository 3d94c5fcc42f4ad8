"""metrics.full_ranking against numbers worked out by hand and against the brute-force statement
of ``oracles.ranking_metrics`` (every admissible item sorted in plain Python), on every backend,
for both NDCG conventions, cut-offs past the number of items, users without held-out items,
held-out items that are also training items, and ties everywhere."""

from __future__ import annotations

import math

import pytest
import torch
from oracles import ranking_metrics

from micro_fast import CSRGraph, backends
from micro_fast.metrics import full_ranking, per_user_metrics

BACKENDS = backends.available("cpu")


def _graph(sets: list[set[int]], n_items: int) -> CSRGraph:
    dense = torch.zeros(len(sets), n_items, dtype=torch.float64)
    for u, items in enumerate(sets):
        dense[u, sorted(items)] = 1.0
    return CSRGraph.from_dense(dense)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_ranking_worked_out_by_hand(backend):
    """One user, items scored 0.9 > 0.8 > ... > 0.5; item 1 is a training item, items 0 and 3
    are held out. The ranking is 0, 2, 3, 4: at K = 2 one hit at rank 1, at K = 3 a second
    at rank 3."""
    users = torch.tensor([[1.0]], dtype=torch.float64)
    items = torch.tensor([[0.9], [0.8], [0.7], [0.6], [0.5]], dtype=torch.float64)
    train, target = _graph([{1}], 5), _graph([{0, 3}], 5)
    ideal2 = 1 + 1 / math.log2(3)  # two hits at ranks 1 and 2
    got = full_ranking(users, items, train, target, (2, 3), backend=backend)
    assert got == pytest.approx({
        "recall@2": 0.5, "precision@2": 0.5, "hit@2": 1.0, "ndcg@2": 1 / ideal2,
        "recall@3": 1.0, "precision@3": 2 / 3, "hit@3": 1.0,
        "ndcg@3": (1 + 1 / math.log2(4)) / ideal2, "users": 1}, rel=1e-15)
    # the published convention takes the ideal list from the retrieved list, the top max K = 3
    # (two hits: the ideal at K = 2 is two hits, not the one found in the top 2)
    got = full_ranking(users, items, train, target, (2, 3), ndcg="published", backend=backend)
    assert got["ndcg@2"] == pytest.approx(1 / ideal2, rel=1e-15)
    assert got["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / ideal2, rel=1e-15)
    got = full_ranking(users, items, train, target, (2,), ndcg="published", backend=backend)
    assert got["ndcg@2"] == pytest.approx(1.0, rel=1e-15)  # alone, K = 2 retrieves one hit
    # a miss everywhere: zero under both conventions
    miss = full_ranking(users, items, train, _graph([{4}], 5), (2,), ndcg="published",
                        backend=backend)
    assert miss["ndcg@2"] == 0.0 and miss["hit@2"] == 0.0 and miss["recall@2"] == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ndcg", ["standard", "published"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_metric_equals_brute_force(backend, ndcg, seed):
    """Integer embeddings: exact scores with many ties, which the smaller item id wins."""
    gen = torch.Generator().manual_seed(seed)
    n_users, n_items = 60, 45
    users = torch.randint(-2, 3, (n_users, 3), generator=gen).double()
    items = torch.randint(-2, 3, (n_items, 3), generator=gen).double()
    train = [set(torch.nonzero(torch.rand(n_items, generator=gen) < 0.2).flatten().tolist())
             for _ in range(n_users)]
    # some users hold out nothing, some hold out training items too (never retrievable)
    target = [set(torch.nonzero(torch.rand(n_items, generator=gen) < p).flatten().tolist())
              for p in torch.rand(n_users, generator=gen).mul(0.3).tolist()]
    target[0], target[1] = set(), set(train[1]) | {0}
    ks = (1, 5, 20, n_items, n_items + 7)
    got = full_ranking(users, items, _graph(train, n_items), _graph(target, n_items), ks,
                       ndcg=ndcg, user_block=7, backend=backend)
    expected = ranking_metrics((users @ items.T).tolist(), train, target, ks, ndcg)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-13, abs=1e-15), key


def test_per_user_rows_do_not_depend_on_the_split():
    gen = torch.Generator().manual_seed(4)
    users = torch.randn(40, 6, generator=gen, dtype=torch.float64)
    items = torch.randn(30, 6, generator=gen, dtype=torch.float64)
    train = CSRGraph.from_dense((torch.rand(40, 30, generator=gen) < 0.2).double())
    target = CSRGraph.from_dense((torch.rand(40, 30, generator=gen) < 0.1).double())
    evaluated = torch.nonzero(target.degrees() > 0).flatten()
    whole = per_user_metrics(users, items, train, target, evaluated, (5, 10))
    halves = torch.cat([per_user_metrics(users, items, train, target, part, (5, 10),
                                         user_block=3)
                        for part in evaluated.tensor_split(2)])
    assert torch.equal(whole, halves)
