"""MICRO's training step eager and under ``torch.compile``, timed in one process.

    python benchmarks/compile_step.py [--sizes medium,baby] [--batches 20] [--threads 2]
                                      [--artifact compile-step]

One step is ``model.loss`` (published defaults, global batch 1024) plus its backward and an
Adam update (torch's fused Adam, the same for both), on the planted synthetic data of that
size; the rebuilding step (the kNN graph of the learned features, on each epoch's first batch)
and the ordinary one are timed apart. The compiled step is
``torch.compile(model.loss, fullgraph=True)`` (inductor); its first calls, which compile, are
reported separately and not in the per-step times; the eager step gets the same warm-up calls
(one rebuilding and two ordinary steps). Eager and compiled steps alternate, so a slow spell of
the machine hits both alike; medians. ``--artifact NAME`` writes NAME.md + NAME.json with the
provenance header.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def run_size(size: str, n_batches: int) -> dict:
    import micro_fast as mf
    from micro_fast.data import BPRSampler, synthetic
    from micro_fast.models import MICRO
    from micro_fast.train import adam

    ds = synthetic(size, seed=0)
    users, items = ds.train_pairs()
    ui = mf.bipartite_graph(users, items, ds.n_users, ds.n_items, normalization="rw",
                            self_loops=True)
    sampler = BPRSampler(ds.train, batch_size=1024, seed=0)
    batches = [sampler.sample() for _ in range(n_batches)]
    torch.manual_seed(0)
    model = MICRO(ds.n_users, ds.n_items, ds.features)
    opt = adam(model.parameters(), 5e-4)
    torch._dynamo.reset()
    compiled = torch.compile(model.loss, fullgraph=True)

    def step(loss_fn, batch, build: bool) -> float:
        t = time.perf_counter()
        opt.zero_grad()
        loss, _ = loss_fn(ui, *batch, build_item_graph=build)
        loss.backward()
        opt.step()
        return time.perf_counter() - t

    # warm-up, the same calls on both sides: a rebuilding step, then two ordinary ones (the
    # compiled loss compiles a third graph once the stored graphs' values require grad)
    first: dict[str, dict[bool, float]] = {}
    for name, fn in (("eager", model.loss), ("compiled", compiled)):
        first[name] = {True: step(fn, batches[0], True), False: step(fn, batches[0], False)}
        step(fn, batches[0], False)
    times: dict[tuple[str, bool], list[float]] = {}
    for i, batch in enumerate(batches):
        build = i % 5 == 0
        for name, fn in (("eager", model.loss), ("compiled", compiled)):
            times.setdefault((name, build), []).append(step(fn, batch, build))
    med = {f"{name} {'rebuild' if build else 'ordinary'}": statistics.median(v)
           for (name, build), v in times.items()}
    counts = {f"{name} {'rebuild' if build else 'ordinary'}": len(v)
              for (name, build), v in times.items()}
    return {"size": size, "n_users": ds.n_users, "n_items": ds.n_items,
            "modalities": list(ds.features), "median_s": med, "rounds": counts,
            "first_call_s": {f"{k} {'rebuild' if b else 'ordinary'}": v
                             for k, d in first.items() for b, v in d.items()}}


def main(argv: list[str] | None = None) -> int:
    import provenance

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="medium")
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    provenance.add_output_args(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = [run_size(size, args.batches) for size in args.sizes.split(",")]
    lines = [f"MICRO training step, batch 1024, {args.threads} threads, torch's fused Adam, "
             "eager and compiled steps alternating (medians; the first calls apart)", "",
             "| data | step | eager (ms) | compiled (ms) | eager / compiled | rounds |",
             "|---|---|---|---|---|---|"]
    for r in results:
        for kind in ("ordinary", "rebuild"):
            e, c = r["median_s"][f"eager {kind}"] * 1e3, r["median_s"][f"compiled {kind}"] * 1e3
            lines.append(f"| synthetic:{r['size']} ({r['n_users']} users, {r['n_items']} "
                         f"items) | {kind} | {e:.1f} | {c:.1f} | {e / c:.2f}x | "
                         f"{r['rounds'][f'eager {kind}']} each |")
    lines += ["", "First calls (s; the compiled ones compile):", ""]
    for r in results:
        shown = ", ".join(f"{k} {v:.1f}" for k, v in r["first_call_s"].items())
        lines.append(f"- synthetic:{r['size']}: {shown}")
    text = "\n".join(lines)
    print(text)
    if args.artifact:
        md, js = provenance.write_artifact(
            args.artifact, "MICRO step eager and under torch.compile (compile_step.py)", text,
            {"results": results}, args.results_dir, threads=args.threads)
        print(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
