"""micro_fast.integrations.micro on a fixture shaped like the published MICRO code
(benchmarks/published_micro): the model built with and without ``patch`` from the same weights
and data gives the same graphs, loss, gradients, parameters after two Adam steps and rankings in
float64; the zero-row and duplicate semantics; ``patch``/``unpatch`` leave the modules as they
were."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from published_micro import batch_test, models, norm, trainer

import micro_fast as mf
from micro_fast.errors import InputError
from micro_fast.integrations import micro as mf_micro

N_USERS, N_ITEMS, DIM = 50, 40, 16


def _data(seed: int = 0) -> trainer.Data:
    rng = np.random.default_rng(seed)
    train, val, test = {}, {}, {}
    for u in range(N_USERS):
        items = rng.choice(N_ITEMS, size=8, replace=False).tolist()
        train[u], val[u], test[u] = items[:5], items[5:7], items[7:]
    train[3] = train[3] + [train[3][0]]  # a repeated pair: counts once in the dok matrix
    return trainer.Data(train, val, test, N_USERS, N_ITEMS)


def _features(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((N_ITEMS, 48)), rng.standard_normal((N_ITEMS, 24))


def _run(data: trainer.Data, state: dict | None) -> dict:
    """Builds the model (from ``state`` when given), two training steps, a ranking."""
    torch.manual_seed(0)
    models.args.embed_size = DIM
    models.args.topk = 5
    image, text = _features()
    model = models.MICRO(N_USERS, N_ITEMS, DIM, [DIM, DIM], [0.1, 0.1], image, text,
                         dtype=torch.float64)
    if state is not None:
        model.load_state_dict(state)
    out: dict = {"state0": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    out["original_adj"] = [_dense(model.image_original_adj), _dense(model.text_original_adj)]
    t = trainer.Trainer(model, data.norm_adj(), dtype=torch.float64)
    users, pos, neg = [0, 3, 7, 11], [data.train_items[u][0] for u in (0, 3, 7, 11)], [1, 2, 3, 4]
    t.optimizer.zero_grad()
    loss = t.loss(users, pos, neg, build_item_graph=True)
    loss.backward()
    out["loss"] = float(loss.detach())
    out["grads"] = {n: p.grad.detach().clone() for n, p in model.named_parameters()
                    if p.grad is not None}
    out["adj"] = [_dense(model.image_adj), _dense(model.text_adj)]
    t.optimizer.step()
    t.step(users, pos, neg, build_item_graph=False)
    out["params"] = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch_test.data_generator = data
    with torch.no_grad():
        ua, ia, *_ = model(t.norm_adj, build_item_graph=True)
    out["val"] = batch_test.test_torch(ua, ia, list(range(N_USERS)), is_val=True)
    out["test"] = batch_test.test_torch(ua, ia, list(range(N_USERS)), is_val=False)
    return out


def _dense(adj) -> torch.Tensor:
    if isinstance(adj, mf.CSRGraph):
        return adj.to_dense().detach()
    return (adj.to_dense() if adj.layout != torch.strided else adj).detach()


def _close(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    scale = max(float(b.abs().max()), 1e-300)
    err = float((a - b).abs().max())
    assert err <= 1e-12 * scale, f"{what}: max difference {err:.3g} (scale {scale:.3g})"


@pytest.mark.parametrize("sparse", [1, 0])
def test_patched_published_model_matches_in_float64(sparse):
    models.args.sparse = sparse
    data = _data()
    try:
        ref = _run(data, None)
        patch = mf_micro.patch(models, batch_test, trainer)
        try:
            assert "MICRO.batched_contrastive_loss" in patch.replaced
            assert "Trainer.sparse_mx_to_torch_sparse_tensor" in patch.replaced
            ours = _run(data, ref["state0"])
        finally:
            mf_micro.unpatch(patch)
    finally:
        models.args.sparse = 1
    for i in range(2):
        _close(ours["original_adj"][i], ref["original_adj"][i], f"original graph {i}")
        _close(ours["adj"][i], ref["adj"][i], f"mixed graph {i}")
    assert abs(ours["loss"] - ref["loss"]) <= 1e-12 * abs(ref["loss"])
    assert set(ours["grads"]) == set(ref["grads"])
    for name, g in ref["grads"].items():
        _close(ours["grads"][name], g, f"gradient of {name}")
    for name, p in ref["params"].items():
        _close(ours["params"][name], p, f"{name} after two Adam steps")
    for split in ("val", "test"):
        for metric in ("precision", "recall", "ndcg", "hit_ratio"):
            np.testing.assert_allclose(ours[split][metric], ref[split][metric], rtol=0,
                                       atol=1e-12, err_msg=f"{split} {metric}")
        assert ours[split]["auc"] == ref[split]["auc"] == 0.0


def test_published_auc_under_the_full_test_flag():
    data = _data(3)
    batch_test.data_generator = data
    gen = torch.Generator().manual_seed(5)
    ua = torch.randn(N_USERS, 8, generator=gen, dtype=torch.float64)
    ia = torch.randn(N_ITEMS, 8, generator=gen, dtype=torch.float64)
    ia[7] = ia[6]  # tied scores: counted half, as roc_auc_score does
    users = list(range(N_USERS))
    batch_test.args.test_flag = "full"
    try:
        pytest.importorskip("sklearn")
        ref = batch_test.test_torch(ua, ia, users, is_val=False)
        ours = mf_micro.patch(batch_test)
        try:
            got = batch_test.test_torch(ua, ia, users, is_val=False)
        finally:
            mf_micro.unpatch(ours)
    finally:
        batch_test.args.test_flag = "part"
    assert ref["auc"] > 0
    assert abs(got["auc"] - ref["auc"]) <= 1e-12
    for metric in ("precision", "recall", "ndcg", "hit_ratio"):
        np.testing.assert_allclose(got[metric], ref[metric], rtol=0, atol=1e-12)


def test_zero_rows_follow_the_published_normalization():
    gen = torch.Generator().manual_seed(2)
    z1 = torch.randn(30, 8, generator=gen, dtype=torch.float64)
    z2 = torch.randn(30, 8, generator=gen, dtype=torch.float64)
    z1[4] = 0.0
    z2[9] = 0.0
    holder = models.MICRO.__new__(models.MICRO)
    holder.tau = 0.5
    ref = models.MICRO.batched_contrastive_loss(holder, z1, z2, batch_size=7)
    got = mf_micro.batched_contrastive_loss(holder, z1, z2)
    assert abs(float(got) - float(ref)) <= 1e-12 * abs(float(ref))
    with pytest.raises(InputError, match="zero"):  # the library's default: an error
        mf.contrastive_loss(z1, z2)


def test_user_item_adjacency_counts_a_repeated_pair_once():
    data = _data()
    ref = torch.as_tensor(data.norm_adj().toarray(), dtype=torch.float64)
    users = [u for u, items in data.train_items.items() for _ in items]
    items = [i for items in data.train_items.values() for i in items]
    got = mf_micro.user_item_adjacency((users, items), N_USERS, N_ITEMS, dtype=torch.float64)
    _close(got.to_dense(), ref.double(), "adjacency from id pairs")
    got = mf_micro.user_item_adjacency(data.R.tocsr(), dtype=torch.float64)
    _close(got.to_dense(), ref.double(), "adjacency from the scipy matrix")


def test_graph_helpers_match_the_published_ones():
    gen = torch.Generator().manual_seed(4)
    feats = torch.randn(25, 6, generator=gen, dtype=torch.float64)
    for norm_type in ("sym", "rw", "none"):
        ref = norm.build_knn_normalized_graph(norm.build_sim(feats), 4, True, norm_type)
        for adj in (mf_micro.build_sim(feats), norm.build_sim(feats)):  # lazy and dense input
            got = mf_micro.build_knn_normalized_graph(adj, 4, True, norm_type)
            _close(got.to_dense(), ref.to_dense(), f"kNN graph ({norm_type})")
    index = torch.tensor([[0, 0, 1, 3, 3], [1, 2, 0, 3, 1]])
    weight = torch.tensor([0.5, 1.5, 2.0, 1.0, 3.0], dtype=torch.float64)
    for normalization in ("sym", "rw", "none"):
        _, ref_w = norm.get_sparse_laplacian(index, weight.clone(), 5, normalization)
        _, got_w = mf_micro.get_sparse_laplacian(index, weight, 5, normalization)
        _close(got_w, ref_w, f"get_sparse_laplacian ({normalization})")
    dense = norm.build_sim(feats).clamp_min(0)
    graph = mf.CSRGraph.from_dense(dense)
    _close(mf_micro.compute_normalized_laplacian(graph).to_dense(),
           mf_micro.compute_normalized_laplacian(dense), "compute_normalized_laplacian")


def test_patch_and_unpatch_leave_the_modules_as_they_were():
    before = {m: dict(vars(m)) for m in (models, batch_test, trainer)}
    methods = (vars(models.MICRO)["batched_contrastive_loss"],
               vars(trainer.Trainer)["sparse_mx_to_torch_sparse_tensor"])
    p = mf_micro.patch(models, batch_test, trainer)
    assert models.build_sim is mf_micro.build_sim
    assert batch_test.test_torch is not before[batch_test]["test_torch"]
    q = mf_micro.patch(models)  # stacked: restoring the first restores this one too
    p.restore()
    assert not q.active
    for m, d in before.items():
        assert dict(vars(m)) == d, m.__name__
    assert (vars(models.MICRO)["batched_contrastive_loss"],
            vars(trainer.Trainer)["sparse_mx_to_torch_sparse_tensor"]) == methods
    with pytest.raises(InputError, match="found none"):
        mf_micro.patch(np)
