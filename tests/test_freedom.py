"""FREEDOM against MMRec's computation (benchmarks/reference_freedom.py), and sample_edges, its
per-epoch pruning draw, on every backend."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_gradients_parity, assert_parity
from hypothesis import given
from hypothesis import strategies as st
from reference_freedom import ReferenceFREEDOM, knn_adjacency

import micro_fast as mf
from micro_fast import backends
from micro_fast.data import BPRSampler, synthetic
from micro_fast.models.freedom import FREEDOM, edge_weights, frozen_item_graph, interaction_graph

SAMPLERS = [b for b in ("cpp", "numba", "torch_ref")
            if b in backends.available("cpu")
            and hasattr(backends.get(b, torch.device("cpu"), op="bipartite_graph"),
                        "sample_edges")]


@given(n=st.integers(0, 300), frac=st.floats(0, 1), seed=st.integers(0, 2**62),
       zeros=st.floats(0, 0.5))
def test_sample_edges_is_the_same_draw_on_every_backend(n, frac, seed, zeros):
    gen = torch.Generator().manual_seed(seed % 1000)
    w = torch.rand(n, generator=gen, dtype=torch.float64) + 0.01
    w[torch.rand(n, generator=gen) < zeros] = 0
    m = int(frac * int((w > 0).sum()))
    draws = [mf.sample_edges(w, m, seed=seed, backend=b) for b in SAMPLERS]
    for d in draws:
        assert d.dtype == torch.int64 and d.numel() == m
        assert torch.equal(d, torch.sort(d).values) and d.unique().numel() == m
        assert bool((w[d] > 0).all())
    for d in draws[1:]:
        assert torch.equal(d, draws[0])


@pytest.mark.parametrize("backend", SAMPLERS)
def test_sample_edges_has_the_law_of_sequential_weighted_draws(backend):
    w = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    trials = 4000
    first = torch.zeros(4)
    pairs = 0
    for s in range(trials):
        first[mf.sample_edges(w, 1, seed=s, backend=backend)] += 1
        pairs += int(torch.equal(mf.sample_edges(w, 2, seed=s, backend=backend),
                                 torch.tensor([2, 3])))
    p = w / w.sum()
    sigma = (p * (1 - p) / trials).sqrt()
    assert bool(((first / trials - p).abs() <= 4 * sigma).all()), first / trials
    # P({2, 3}) = P(2 then 3) + P(3 then 2) = 0.3 * 4/7 + 0.4 * 3/6
    want = 0.3 * 4 / 7 + 0.4 * 3 / 6
    assert abs(pairs / trials - want) <= 4 * (want * (1 - want) / trials) ** 0.5


def test_sample_edges_bad_input():
    w = torch.rand(10, dtype=torch.float64)
    for bad, match in ((lambda: mf.sample_edges(w, 11), "m must"),
                       (lambda: mf.sample_edges(w.reshape(2, 5), 1), "1-D"),
                       (lambda: mf.sample_edges(torch.arange(10), 1), "float"),
                       (lambda: mf.sample_edges(-w, 1), "non-negative"),
                       (lambda: mf.sample_edges(w.masked_fill(w > 0.5, float("nan")), 1),
                        "finite"),
                       (lambda: mf.sample_edges(torch.zeros(10), 1), "positive"),
                       (lambda: mf.sample_edges(w, 1, seed=-1), "seed")):
        with pytest.raises((ValueError, TypeError), match=match):
            bad()
    torch.manual_seed(0)
    a = mf.sample_edges(w, 4)
    torch.manual_seed(0)
    assert torch.equal(a, mf.sample_edges(w, 4))            # the torch seed fixes the draw


def test_frozen_graph_has_the_dense_build_indices():
    ds = synthetic("tiny", seed=1)
    x = ds.features["image"].double()
    g = frozen_item_graph({"image": x}, 10, 0.1)
    ref = knn_adjacency(x, 10).coalesce()
    assert torch.equal(g.to_torch_coo().coalesce().indices(), ref.indices())
    assert torch.allclose(g.values, ref.values(), rtol=1e-12)


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.mark.parametrize("backend", [b for b in ("cpp", "numba", "torch_ref")
                                     if b in backends.available("cpu")])
def test_training_step_and_scores_equal_mmrec_in_float64(float64, backend):
    ds = synthetic("tiny", seed=2)
    torch.manual_seed(0)
    model = FREEDOM(ds.n_users, ds.n_items, {m: ds.features[m] for m in ("image", "text")},
                    backend=backend, reg_weight=1e-3)
    users, items = ds.train_pairs()
    ref = ReferenceFREEDOM(model, users, items)
    kept = mf.sample_edges(edge_weights(users, items, ds.n_users, ds.n_items),
                           int(users.numel() * 0.2), seed=11)
    graph = model.pruned_graph(users, items, kept=kept)
    assert torch.allclose(graph.to_torch_coo().to_dense(), ref.masked_adj(kept).to_dense(),
                          rtol=1e-12, atol=0)
    batch = BPRSampler(ds.train, batch_size=64, seed=0).sample()
    loss, parts = model.loss(graph, *batch)
    ref_loss = ref.loss(ref.masked_adj(kept), *batch)
    assert_parity(loss, ref_loss, "loss")
    params = [model.user_embedding, model.item_embedding, *model.features.values(),
              *(t for m in model.projections.values() for t in (m.weight, m.bias))]
    grads = torch.autograd.grad(loss, params)
    ref_grads = torch.autograd.grad(ref_loss, ref.parameters())
    assert_gradients_parity(grads, ref_grads)
    full = interaction_graph(users, items, ds.n_users, ds.n_items, torch.float64)
    u, i = model.embeddings(full)
    assert_parity(u @ i.T, ref.scores(), "scores")


def test_frozen_item_graph_transpose_is_built_once():
    """Every batch propagates the item embeddings over the frozen item graph; its backward
    needs the graph's transpose, which is built on the first batch only, also after .to()."""
    from micro_fast.graph import _Structure

    gen = torch.Generator().manual_seed(2)
    model = FREEDOM(30, 20, {"image": torch.randn(20, 12, generator=gen),
                             "text": torch.randn(20, 6, generator=gen)})
    users, items = torch.randint(0, 30, (120,), generator=gen), torch.randint(0, 20, (120,),
                                                                             generator=gen)
    graph = model.pruned_graph(users, items, generator=gen)
    before = _Structure.transposes_built
    for _ in range(3):
        model.loss(graph, users[:6], items[:6], items[6:12])[0].backward()
    assert _Structure.transposes_built == before + 1
    model.to(torch.float64)
    assert model.item_graph.values.dtype == torch.float64
    model.loss(graph.to(torch.float64), users[:6], items[:6], items[6:12])[0].backward()
    assert _Structure.transposes_built == before + 1


def test_freedom_bad_input():
    feats = {"image": torch.randn(5, 3), "text": torch.randn(5, 4)}
    with pytest.raises(ValueError, match="modality"):
        FREEDOM(4, 5, {})
    with pytest.raises(ValueError, match="dropout"):
        FREEDOM(4, 5, feats, k=2, dropout=1.0)
    with pytest.raises(ValueError, match="n_items"):
        FREEDOM(4, 6, feats, k=2)
    with pytest.raises(ValueError, match="image"):
        FREEDOM(4, 5, {"a": torch.randn(5, 3), "b": torch.randn(5, 3)}, k=2)


def test_training_freedom_and_lightgcn_end_to_end(tmp_path):
    """``--model freedom`` trains with MMRec's defaults, reproducibly (the pruning draws come
    from the seeded torch generator), resumes, and re-evaluates from its run directory."""
    from micro_fast.train import TrainConfig, evaluate_run, train

    base = dict(data="synthetic:tiny", epochs=3, progress=False, seed=5)
    a = train(TrainConfig.for_model("freedom", out=str(tmp_path / "a"), **base))
    assert a["config"]["lr"] == 1e-3 and a["config"]["batch_size"] == 2048
    assert a["test_at_best"]["recall@20"] > 0 and a["modalities"] == ["image", "text"]
    cut = TrainConfig.for_model("freedom", out=str(tmp_path / "b"), **dict(base, epochs=2))
    train(cut)
    b = train(TrainConfig.for_model("freedom", out=str(tmp_path / "b"), **base), resume=True)
    assert b["test_at_best"] == a["test_at_best"]          # resumed: the same draws
    again = evaluate_run(tmp_path / "a")
    assert again["test"]["recall@20"] == pytest.approx(a["test_at_best"]["recall@20"])
    g = train(TrainConfig.for_model("lightgcn", out=str(tmp_path / "g"), **base))
    assert g["modalities"] == [] and g["test_at_best"]["recall@20"] > 0
