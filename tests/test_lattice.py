"""LATTICE against MMRec's port (benchmarks/reference_lattice.py), in float64: a rebuilding
training step, a step that reuses the graph, and the evaluation scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import assert_gradients_parity, assert_parity
from reference_lattice import ReferenceLATTICE
from reference_micro import published_norm_adj

import micro_fast as mf
from micro_fast import backends
from micro_fast.data import BPRSampler, synthetic
from micro_fast.models.lattice import LATTICE


@pytest.fixture
def float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _params(model: LATTICE) -> list[torch.Tensor]:
    return [model.user_embedding, model.item_embedding, *model.features.values(),
            *(t for m in model.projections.values() for t in (m.weight, m.bias)),
            model.modal_weight]


@pytest.mark.parametrize("backend", [b for b in ("cpp", "numba", "torch_ref")
                                     if b in backends.available("cpu")])
@pytest.mark.parametrize("modalities", [("image", "text"), ("text",)])
def test_steps_and_scores_equal_mmrec_in_float64(float64, backend, modalities):
    ds = synthetic("tiny", seed=3)
    torch.manual_seed(0)
    model = LATTICE(ds.n_users, ds.n_items, {m: ds.features[m] for m in modalities},
                    reg_weight=1e-3, batch_size=64, backend=backend)
    users, items = ds.train_pairs()
    ui = mf.bipartite_graph(users, items, ds.n_users, ds.n_items, normalization="rw",
                            self_loops=True, dtype=torch.float64)
    # the reference builds its own user-item graph, as MMRec's port does (scipy, D^-1 (A + I))
    ref = ReferenceLATTICE(model, published_norm_adj(users.numpy(), items.numpy(), ds.n_users,
                                                     ds.n_items, dtype=np.float64))
    sampler = BPRSampler(ds.train, batch_size=64, seed=0)
    for build in (True, False):          # the rebuilding batch, then one that reuses it
        batch = sampler.sample()
        loss, _ = model.loss(ui, *batch, build_item_graph=build)
        ref_loss = ref.loss(*batch, build=build)
        assert_parity(loss, ref_loss, "loss")
        grads = torch.autograd.grad(loss, _params(model), allow_unused=True)
        ref_grads = torch.autograd.grad(ref_loss, ref.parameters(), allow_unused=True)
        for a, b in zip(grads, ref_grads, strict=True):
            if a is None or b is None:
                assert (a is None or not a.any()) and (b is None or not b.any())
        assert_gradients_parity(grads, ref_grads)
    u, i = model.embeddings(ui)
    assert_parity(u @ i.T, ref.scores(), "scores")


def test_lattice_bad_input():
    with pytest.raises(ValueError, match="modalities"):
        LATTICE(4, 5, {})
    with pytest.raises(ValueError, match="n_items"):
        LATTICE(4, 6, {"image": torch.randn(5, 3)}, k=2)


def test_training_lattice_end_to_end(tmp_path):
    from micro_fast.train import TrainConfig, evaluate_run, train

    s = train(TrainConfig.for_model("lattice", data="synthetic:tiny", epochs=3, seed=2,
                                    progress=False, out=str(tmp_path / "r")))
    assert s["config"]["batch_size"] == 2048 and s["config"]["lr"] == 5e-4
    assert s["test_at_best"]["recall@20"] > 0 and s["modalities"] == ["image", "text"]
    again = evaluate_run(tmp_path / "r")
    assert again["test"]["recall@20"] == pytest.approx(s["test_at_best"]["recall@20"])
