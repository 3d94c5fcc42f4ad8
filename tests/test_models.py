"""MICRO model: one training step equals the published computation (float64), plus the
variants (LATTICE-style, plain LightGCN) and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import reference_micro
import torch
from helpers import assert_gradients_parity, assert_parity

import micro_fast as mf
from micro_fast.models import MICRO


def _problem(seed=0, n_users=40, n_items=30, nnz=300, dims=(12, 7)):
    gen = torch.Generator().manual_seed(seed)
    users = torch.randint(0, n_users, (nnz,), generator=gen)
    items = torch.randint(0, n_items, (nnz,), generator=gen)
    pairs = torch.unique(users * n_items + items)
    users, items = pairs // n_items, pairs % n_items
    feats = {f"m{j}": torch.randn(n_items, d, generator=gen, dtype=torch.float64)
             for j, d in enumerate(dims)}
    return users, items, feats


def _step_pair(feats, users, items, n_users, n_items, *, steps, contrastive_weight=0.03):
    torch.manual_seed(3)
    ours = MICRO(n_users, n_items, feats, dim=16, feat_dim=8, k=5,
                 contrastive_weight=contrastive_weight).double()
    ref = reference_micro.ReferenceMICRO(n_users, n_items, list(feats.values()), dim=16,
                                         feat_dim=8, topk=5, dtype=torch.float64)
    reference_micro.copy_weights(ours, ref)
    g = mf.bipartite_graph(users, items, n_users, n_items, normalization="rw", self_loops=True,
                           dtype=torch.float64)
    adj = reference_micro.published_norm_adj(users.numpy(), items.numpy(), n_users,
                                             n_items, dtype=np.float64)
    gen = torch.Generator().manual_seed(11)
    results = []
    for step in range(steps):
        bu = torch.randperm(n_users, generator=gen)[:16]
        bp = torch.randint(0, n_items, (16,), generator=gen)
        bn = torch.randint(0, n_items, (16,), generator=gen)
        for p in list(ours.parameters()) + list(ref.parameters()):
            p.grad = None
        loss, _ = ours.loss(g, bu, bp, bn, build_item_graph=step == 0)
        loss.backward()
        rloss = reference_micro.reference_loss(ref, adj, bu, bp, bn, batch_size=16,
                                               loss_ratio=contrastive_weight,
                                               build_item_graph=step == 0)
        rloss.backward()
        results.append((loss.item(), rloss.item(),
                        reference_micro.reference_gradients(ours, ref)))
    return results


@pytest.mark.parametrize("contrastive_weight", [0.03, 0.0])
def test_training_steps_match_published(contrastive_weight):
    n_users, n_items = 40, 30
    users, items, feats = _problem()
    for step, (loss, rloss, grads) in enumerate(
            _step_pair(feats, users, items, n_users, n_items, steps=2,
                       contrastive_weight=contrastive_weight)):
        # float64 end to end: the two computations differ only in summation order
        assert_parity(torch.tensor(loss), torch.tensor(rloss), f"loss at step {step}")
        compared = []
        for name, (g, rg) in grads.items():
            if step > 0 and ("learners" in name):
                # the graph path is detached after the first batch: no gradient in either
                assert g is None and (rg is None or not rg.abs().any()), name
                continue
            assert g is not None and rg is not None, name
            compared.append((g, rg.to_dense() if rg.is_sparse else rg))
        assert_gradients_parity(*zip(*compared, strict=True), what=f"step {step} gradient")


def test_variants_and_shapes():
    n_users, n_items = 40, 30
    users, items, feats = _problem()
    g = mf.bipartite_graph(users, items, n_users, n_items, normalization="sym")
    feats32 = {k: v.float() for k, v in feats.items()}
    for model in (MICRO(n_users, n_items, feats32, dim=8, feat_dim=4, k=3),
                  MICRO(n_users, n_items, feats32, dim=8, k=3, contrastive_weight=0.0),
                  MICRO(n_users, n_items, {"image": feats32["m0"]}, dim=8, k=3),
                  MICRO(n_users, n_items, None, dim=8)):
        out = model(g, build_item_graph=True)
        assert out.users.shape == (n_users, 8) and out.items.shape == (n_items, 8)
        loss, parts = model.loss(g, torch.arange(5), torch.arange(5), torch.arange(5, 10),
                                 build_item_graph=True)
        loss.backward()
        assert torch.isfinite(loss)
        if model.contrastive_weight == 0 or not model.modalities:
            assert parts["contrastive"] == 0
        else:
            assert parts["contrastive"] > 0
    lightgcn = MICRO(n_users, n_items, None, dim=8)
    u, i = lightgcn.embeddings(g)
    eu, ei = lightgcn.backbone(g)
    assert torch.equal(u, eu) and torch.equal(i, ei)


def test_bad_input():
    with pytest.raises(ValueError, match="features"):
        MICRO(4, 5, {"image": torch.randn(4, 3)})
    with pytest.raises(ValueError, match="n_users"):
        MICRO(0, 5)
    with pytest.raises(ValueError, match="contrastive_weight"):
        MICRO(3, 5, contrastive_weight=-1)
    with pytest.raises(ValueError, match="lambda_coeff"):
        MICRO(3, 5, {"image": torch.randn(5, 3)}, k=2, lambda_coeff=2.0)
