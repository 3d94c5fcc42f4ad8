"""One MICRO training epoch on Baby-sized synthetic data: micro_fast vs the published training
step (reference_micro.py), plus evaluation time and peak memory.

    pytest benchmarks/bench_train.py --benchmark-only -s [--bench-size small|paper|large]

Data (``--bench-size paper``): 19,445 users, 7,050 items, 160,792 interactions, 4096-d image
and 1024-d text features (the published Baby sizes), planted structure, seed 0; ``small`` and
``large`` use the synthetic presets that sizes.TRAIN names. Published defaults (batch 1024,
so n_train // 1024 + 1 batches per epoch).

Both sides are timed the same way: one graph-rebuilding warm-up batch (its time kept as
``first_call_s``), then one whole epoch of ``n_batches`` batches (its first batch rebuilds the
item graph, as every epoch's does), one round each; nothing is extrapolated. Both sides update
with the same optimizer, torch's fused Adam (``micro_fast.train.adam``); ``extra_info`` says so.
``MICRO_FAST_TRAIN_BATCHES=B`` times the first B batches of the epoch instead, on both sides
(a shorter comparison, reported as B batches, not as an epoch).
``test_same_metrics`` trains both implementations from the same weights on the same batches
and checks that they give the same evaluation metrics.
"""

from __future__ import annotations

import functools
import os
import statistics
import time

import pytest
import reference_micro as ref
import sizes
import torch
from harness import THREADS, peak_extra_mb

from micro_fast import data as mf_data
from micro_fast.metrics import full_ranking
from micro_fast.train import TrainConfig, adam, build_model, interaction_graph

BATCHES = int(os.environ.get("MICRO_FAST_TRAIN_BATCHES", "0"))  # 0: the whole epoch
METRIC_STEPS = int(os.environ.get("MICRO_FAST_METRIC_STEPS", "3"))
SIZE = os.environ.get("MICRO_FAST_TRAIN_SIZE") or sizes.TRAIN[sizes.current()]
OPTIMIZER = "torch.optim.Adam(fused=True) (micro_fast.train.adam), both sides"


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


def _group(n_batches: int) -> str:
    return (f"train epoch {SIZE}" if n_batches == _epoch_batches()
            else f"train {n_batches} batches {SIZE}")


def _epoch_batches() -> int:
    return mf_data.BPRSampler(dataset().train, 1024, seed=0).n_batches


def _time_epoch(benchmark, step, sampler, impl: str, **info) -> None:
    """One warm-up batch (rebuilding), then one timed round of the epoch (or of BATCHES
    batches), each batch's time recorded; the same for both implementations."""
    n_batches = min(BATCHES, sampler.n_batches) if BATCHES else sampler.n_batches
    benchmark.group = _group(n_batches)
    if benchmark.disabled:
        benchmark(lambda: step(sampler.sample(), True))
        return
    t0 = time.perf_counter()
    step(sampler.sample(), True)
    first_call = time.perf_counter() - t0
    times: list[float] = []

    def epoch():
        for b in range(n_batches):
            batch = sampler.sample()
            t = time.perf_counter()
            step(batch, b == 0)
            times.append(time.perf_counter() - t)

    peak = peak_extra_mb(lambda: benchmark.pedantic(epoch, rounds=1, iterations=1,
                                                    warmup_rounds=0))
    benchmark.extra_info.update(
        op="train_epoch", impl=impl, size=SIZE, n=dataset().n_items, threads=THREADS,
        n_batches=n_batches, epoch_batches=sampler.n_batches, whole_epoch=n_batches ==
        sampler.n_batches, warmup=1, first_call_s=first_call, first_batch_s=times[0],
        other_batch_median_s=statistics.median(times[1:]) if len(times) > 1 else None,
        optimizer=OPTIMIZER, peak_extra_mb=peak, **info)
    print(f"\n{impl}: {n_batches} batches in {sum(times):.2f} s (first, rebuilding "
          f"{times[0]:.3f} s; the others {benchmark.extra_info['other_batch_median_s']} s "
          f"median); optimizer {OPTIMIZER}")


def test_epoch_ours(benchmark):
    ds, config, model, ui = _setup()
    opt = adam(model.parameters(), config.lr)
    sampler = mf_data.BPRSampler(ds.train, config.batch_size, seed=config.seed)
    t0 = time.perf_counter()
    valid = full_ranking(*model.embeddings(ui), ds.train, ds.valid, config.ks)
    eval_s = time.perf_counter() - t0
    _time_epoch(benchmark, lambda batch, build: _ours_step(model, opt, ui, batch, build),
                sampler, "micro_fast", eval_s=eval_s, valid_recall20=valid["recall@20"])


def test_epoch_reference(benchmark):
    ds, config, model, ui = _setup()
    r, adj = _reference_from(model, ds)
    opt = adam(r.parameters(), config.lr)  # the same fused Adam as ours
    sampler = mf_data.BPRSampler(ds.train, config.batch_size, seed=config.seed)
    _time_epoch(benchmark, lambda batch, build: _ref_step(r, opt, adj, batch, build,
                                                          config.batch_size),
                sampler, "reference")


def test_same_metrics(benchmark):
    """Same weights, same batches: both implementations end at the same metrics."""
    ds, config, model, ui = _setup()
    r, adj = _reference_from(model, ds)
    opt = adam(model.parameters(), config.lr)
    ropt = adam(r.parameters(), config.lr)
    sampler = mf_data.BPRSampler(ds.train, config.batch_size, seed=config.seed)
    steps = max(2, METRIC_STEPS)
    for b in range(steps):
        batch = sampler.sample()
        _ours_step(model, opt, ui, batch, b == 0)
        _ref_step(r, ropt, adj, batch, b == 0, config.batch_size)
    with torch.no_grad():
        u_ref, i_ref, *_ = r(adj, build_item_graph=True)
    ours = full_ranking(*model.embeddings(ui), ds.train, ds.valid, config.ks)
    theirs = full_ranking(u_ref, i_ref, ds.train, ds.valid, config.ks)
    n_batches = _epoch_batches()
    benchmark.group = _group(min(BATCHES, n_batches) if BATCHES else n_batches)
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
    run_case(dense_eval, op="eval", impl="dense_torch", size=SIZE, n=ds.n_items)


def test_eval_ours(benchmark, run_case):
    ds, config, model, ui = _setup()
    users, items = model.embeddings(ui)
    benchmark.group = f"evaluation {SIZE}"
    run_case(lambda: full_ranking(users, items, ds.train, ds.valid, config.ks),
             op="eval", impl="micro_fast", size=SIZE, n=ds.n_items)
