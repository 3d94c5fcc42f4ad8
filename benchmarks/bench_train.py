"""One MICRO training epoch on Baby-sized synthetic data: micro_fast vs the published training
step (reference_micro.py), plus evaluation time and peak memory.

    pytest benchmarks/bench_train.py --benchmark-only -s [--bench-size small|paper|large]

Data (``--bench-size paper``): 19,445 users, 7,050 items, 160,792 interactions, 4096-d image
and 1024-d text features (the published Baby sizes), planted structure, seed 0; ``small`` and
``large`` use the synthetic presets that sizes.TRAIN names. Published defaults (batch 1024,
so n_train // 1024 + 1 batches per epoch).

The reference is slow (its contrastive loss over all items runs on every batch), so it is timed
on its first ``REF_BATCHES`` batches, the graph-rebuilding first batch included, and the epoch is
extrapolated as ``first + (n_batches - 1) x mean(other batches)``; ``extra_info`` says so.
``test_same_metrics`` trains both implementations from the same weights on the same batches
and checks that they give the same evaluation metrics.
"""

from __future__ import annotations

import functools
import os
import time

import pytest
import reference_micro as ref
import sizes
import torch

from micro_fast import data as mf_data
from micro_fast.metrics import full_ranking
from micro_fast.train import TrainConfig, adam, build_model, interaction_graph

REF_BATCHES = int(os.environ.get("MICRO_FAST_REF_BATCHES", "5"))
SIZE = os.environ.get("MICRO_FAST_TRAIN_SIZE") or sizes.TRAIN[sizes.current()]


@functools.cache
def dataset() -> mf_data.Dataset:
    return mf_data.synthetic(SIZE, seed=0)


def _setup(seed: int = 123):
    ds = dataset()
    config = TrainConfig(data=f"synthetic:{SIZE}", seed=seed, progress=False)
    torch.manual_seed(seed)
    model = build_model(config, ds)
    ui = interaction_graph(ds, "published", torch.device("cpu"))
    return ds, config, model, ui


def _reference_from(model, ds):
    names = model.modalities
    r = ref.ReferenceMICRO(ds.n_users, ds.n_items, [ds.features[m] for m in names])
    ref.copy_weights(model, r)
    users, items = ds.train_pairs()
    adj = ref.published_norm_adj(users.numpy(), items.numpy(), ds.n_users, ds.n_items)
    return r, adj


def _ours_step(model, opt, ui, batch, build):
    opt.zero_grad()
    loss, _ = model.loss(ui, *batch, build_item_graph=build)
    loss.backward()
    opt.step()
    return loss.detach()


def _ref_step(r, opt, adj, batch, build, batch_size):
    opt.zero_grad()
    loss = ref.reference_loss(r, adj, *batch, batch_size=batch_size, build_item_graph=build)
    loss.backward()
    opt.step()
    return loss.detach()


def test_epoch_ours(benchmark, run_case):
    ds, config, model, ui = _setup()
    opt = adam(model.parameters(), config.lr)
    sampler = mf_data.BPRSampler(ds.train, config.batch_size, seed=config.seed)
    n_batches = sampler.n_batches

    def epoch():
        for b in range(n_batches):
            _ours_step(model, opt, ui, sampler.sample(), b == 0)

    t0 = time.perf_counter()
    batch = sampler.sample()
    _ours_step(model, opt, ui, batch, True)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    valid = full_ranking(*model.embeddings(ui), ds.train, ds.valid, config.ks)
    eval_s = time.perf_counter() - t0
    benchmark.group = f"train epoch {SIZE}"
    benchmark.extra_info.update(n_batches=n_batches, first_batch_s=first, eval_s=eval_s,
                                valid_recall20=valid["recall@20"])
    run_case(epoch, rounds=1, warmup=0, op="train_epoch", impl="micro_fast", size=SIZE,
             n=ds.n_items)


def test_epoch_reference(benchmark):
    ds, config, model, ui = _setup()
    r, adj = _reference_from(model, ds)
    opt = torch.optim.Adam(r.parameters(), lr=config.lr)
    sampler = mf_data.BPRSampler(ds.train, config.batch_size, seed=config.seed)
    n_batches = sampler.n_batches
    times: list[float] = []

    def batches():
        for b in range(REF_BATCHES):
            batch = sampler.sample()
            t0 = time.perf_counter()
            _ref_step(r, opt, adj, batch, b == 0, config.batch_size)
            times.append(time.perf_counter() - t0)

    benchmark.group = f"train epoch {SIZE}"
    benchmark.pedantic(batches, rounds=1, iterations=1)
    rest = sum(times[1:]) / max(1, len(times) - 1)
    epoch_s = times[0] + (n_batches - 1) * rest
    benchmark.extra_info.update(
        op="train_epoch", impl="reference", size=SIZE, n=ds.n_items,
        n_batches=n_batches, timed_batches=len(times), first_batch_s=times[0],
        other_batch_mean_s=rest, extrapolated_epoch_s=epoch_s,
        note=f"epoch extrapolated from {len(times)} timed batches")
    print(f"\nreference: first batch {times[0]:.2f} s, other batches {rest:.2f} s each; "
          f"epoch of {n_batches} batches extrapolated to {epoch_s:.1f} s")


def test_same_metrics(benchmark):
    """Same weights, same batches: both implementations end at the same metrics."""
    ds, config, model, ui = _setup()
    r, adj = _reference_from(model, ds)
    opt = adam(model.parameters(), config.lr)
    ropt = torch.optim.Adam(r.parameters(), lr=config.lr)
    sampler = mf_data.BPRSampler(ds.train, config.batch_size, seed=config.seed)
    steps = max(2, REF_BATCHES - 2)
    for b in range(steps):
        batch = sampler.sample()
        _ours_step(model, opt, ui, batch, b == 0)
        _ref_step(r, ropt, adj, batch, b == 0, config.batch_size)
    with torch.no_grad():
        u_ref, i_ref, *_ = r(adj, build_item_graph=True)
    ours = full_ranking(*model.embeddings(ui), ds.train, ds.valid, config.ks)
    theirs = full_ranking(u_ref, i_ref, ds.train, ds.valid, config.ks)
    benchmark.group = f"train epoch {SIZE}"
    benchmark.extra_info.update(check=True, steps=steps, ours=ours, reference=theirs)
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    print(f"\nafter {steps} identical batches: ours recall@20 {ours['recall@20']:.5f} "
          f"ndcg@20 {ours['ndcg@20']:.5f}; reference recall@20 {theirs['recall@20']:.5f} "
          f"ndcg@20 {theirs['ndcg@20']:.5f}")
    for key in ours:
        assert ours[key] == pytest.approx(theirs[key], rel=1e-3, abs=1e-4), key


def test_eval_dense_baseline(benchmark, run_case):
    """Evaluation as the published code does it: a dense users x items score matrix, training
    items masked, then top-k (torch.topk instead of its per-user Python heap, so faster than
    published); for the time/memory comparison with full_ranking."""
    ds, config, model, ui = _setup()
    users, items = model.embeddings(ui)
    train_rows, train_cols = ds.train.row_indices(), ds.train.indices

    def dense_eval():
        target_users = torch.nonzero(ds.valid.degrees() > 0).flatten()
        scores = users[target_users] @ items.T
        pos = torch.full((ds.n_users,), -1, dtype=torch.int64)
        pos[target_users] = torch.arange(target_users.numel())
        r = pos[train_rows]
        keep = r >= 0
        scores[r[keep], train_cols[keep]] = -float("inf")
        return torch.topk(scores, max(config.ks), dim=1)

    benchmark.group = f"evaluation {SIZE}"
    gb = 4.0 * int((ds.valid.degrees() > 0).sum()) * ds.n_items / 1e9
    if gb > sizes.DENSE_LIMIT_GB:
        pytest.skip(f"out of memory: the dense score matrix takes {gb:.0f} GB")
    run_case(dense_eval, rounds=3, op="eval", impl="dense_torch", size=SIZE, n=ds.n_items)


def test_eval_ours(benchmark, run_case):
    ds, config, model, ui = _setup()
    users, items = model.embeddings(ui)
    benchmark.group = f"evaluation {SIZE}"
    run_case(lambda: full_ranking(users, items, ds.train, ds.valid, config.ks), rounds=3,
             op="eval", impl="micro_fast", size=SIZE, n=ds.n_items)
