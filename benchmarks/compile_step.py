"""MICRO's training step eager and under ``torch.compile``, timed in one process.

    python benchmarks/compile_step.py [--size medium] [--batches 20] [--threads 2]

One step is ``model.loss`` (published defaults, global batch 1024) plus its backward and an
Adam update, on the planted synthetic data of that size; the rebuilding step (the kNN graph of
the learned features, on each epoch's first batch) and the ordinary one are timed apart. The
compiled step is ``torch.compile(model.loss, fullgraph=True)`` (inductor); its first calls,
which compile, are reported separately and not in the per-step times. Eager and compiled
steps alternate, so a slow spell of the machine hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="medium")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import micro_fast as mf
    from micro_fast.data import BPRSampler, synthetic
    from micro_fast.models import MICRO
    from micro_fast.train import adam

    ds = synthetic(args.size, seed=0)
    users, items = ds.train_pairs()
    ui = mf.bipartite_graph(users, items, ds.n_users, ds.n_items, normalization="rw",
                            self_loops=True)
    sampler = BPRSampler(ds.train, batch_size=1024, seed=0)
    batches = [sampler.sample() for _ in range(args.batches)]
    torch.manual_seed(0)
    model = MICRO(ds.n_users, ds.n_items, ds.features)
    opt = adam(model.parameters(), 5e-4)
    compiled = torch.compile(model.loss, fullgraph=True)

    def step(loss_fn, batch, build: bool) -> float:
        t = time.perf_counter()
        opt.zero_grad()
        loss, _ = loss_fn(ui, *batch, build_item_graph=build)
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    step(model.loss, batches[0], True)  # the learned graphs exist, caches warm
    first = {build: step(compiled, batches[0], build) for build in (True, False)}
    times: dict[tuple[str, bool], list[float]] = {}
    for i, batch in enumerate(batches):
        build = i % 5 == 0
        for name, fn in (("eager", model.loss), ("compiled", compiled)):
            times.setdefault((name, build), []).append(step(fn, batch, build))

    print(f"MICRO training step, synthetic:{args.size} ({ds.n_users} users, {ds.n_items} "
          f"items, modalities {list(ds.features)}), batch 1024, {args.threads} threads\n")
    print("| step | eager (ms) | compiled (ms) | eager / compiled |")
    print("|---|---|---|---|")
    for build, label in ((False, "ordinary"), (True, "kNN rebuild")):
        e = statistics.median(times[("eager", build)]) * 1e3
        c = statistics.median(times[("compiled", build)]) * 1e3
        print(f"| {label} | {e:.1f} | {c:.1f} | {e / c:.2f}x |")
    print(f"\nfirst compiled calls (compilation included): rebuild {first[True]:.1f} s, "
          f"ordinary {first[False]:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
