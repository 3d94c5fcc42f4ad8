"""The published MICRO training step, unpatched and patched with
``micro_fast.integrations.micro.patch`` (benchmarks/published_micro, the fixture shaped like the
published code), in one process at Baby size: 19,445 users, 7,050 items, 4,096-d image and 384-d
text features (synthetic), batch 1,024.

    python benchmarks/published_step.py [--batches 3] [--threads 2] [--isa avx2]
                                        [--artifact published-step]

Both models are built from the same seed, in float32 as published; their construction (the two
original item graphs from the raw features, the adjacency conversion) is timed once. Then, per
round and alternating between the sides (the patch installed only around the patched side's
calls): one step that rebuilds the learned item graphs (the first batch of an epoch) and
``--batches`` steps that reuse them (the other batches), after one warm-up step of each kind;
medians. An epoch at Baby size is 158 batches, one of which rebuilds. The patched step's own
time is split by ``torch.profiler`` (self CPU time per operator). ``--isa`` runs the compiled
kernels with that instruction set (``micro_fast._C.set_simd_isa``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

BATCH = 1024


def _batches(data, count: int, seed: int) -> list[tuple[list, list, list]]:
    rng = np.random.default_rng(seed)
    users_with = [u for u, items in data.train_items.items() if items]
    out = []
    for _ in range(count):
        users = rng.choice(users_with, size=BATCH, replace=False).tolist()
        pos = [int(rng.choice(data.train_items[u])) for u in users]
        neg = []
        for u in users:
            while True:
                i = int(rng.integers(data.n_items))
                if i not in data.train_items[u]:
                    neg.append(i)
                    break
        out.append((users, pos, neg))
    return out


def main(argv: list[str] | None = None) -> int:
    import provenance

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--isa", default="best")
    parser.add_argument("--size", default="baby")
    provenance.add_output_args(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from published_micro import models, trainer

    from micro_fast import _C
    from micro_fast.data import synthetic
    from micro_fast.integrations import micro as mf_micro

    if args.isa != "best":
        _C.set_simd_isa(args.isa)
    ds = synthetic(args.size, dims={"image": 4096, "text": 384}, seed=0)
    train: dict[int, list[int]] = {}
    users, items = ds.train_pairs()
    for u, i in zip(users.tolist(), items.tolist(), strict=True):
        train.setdefault(u, []).append(i)
    data = trainer.Data(train, {}, {}, ds.n_users, ds.n_items)
    norm_adj = data.norm_adj()
    image = ds.features["image"].numpy()
    text = ds.features["text"].numpy()
    models.args.embed_size = 64

    sides: dict[str, dict] = {}
    for side in ("published", "patched"):
        patch = mf_micro.patch(models, trainer) if side == "patched" else None
        try:
            t0 = time.perf_counter()
            torch.manual_seed(0)
            model = models.MICRO(ds.n_users, ds.n_items, 64, [64, 64], [0.1, 0.1], image, text)
            t = trainer.Trainer(model, norm_adj)
            sides[side] = {"trainer": t, "build_s": time.perf_counter() - t0}
        finally:
            if patch is not None:
                patch.restore()

    def step(side: str, batch, rebuild: bool) -> float:
        patch = mf_micro.patch(models, trainer) if side == "patched" else None
        try:
            t0 = time.perf_counter()
            sides[side]["trainer"].step(*batch, build_item_graph=rebuild)
            return time.perf_counter() - t0
        finally:
            if patch is not None:
                patch.restore()

    batches = _batches(data, 2 + 2 * args.batches, seed=1)
    for side in sides:  # warm-up: one step of each kind
        step(side, batches[0], True)
        step(side, batches[1], False)
    times: dict[str, dict[str, list[float]]] = {s: {"rebuild": [], "reuse": []} for s in sides}
    for r in range(2):  # the rebuilding step, twice per side, alternating
        for side in sides:
            times[side]["rebuild"].append(step(side, batches[2 + r], True))
    for b in batches[4:4 + args.batches]:
        for side in sides:
            times[side]["reuse"].append(step(side, b, False))

    # where the patched step's time goes
    patch = mf_micro.patch(models, trainer)
    try:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            sides["patched"]["trainer"].step(*batches[-1], build_item_graph=False)
    finally:
        patch.restore()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total_us = sum(e.self_cpu_time_total for e in events) or 1.0
    split = [(e.key, e.self_cpu_time_total / 1e3, e.self_cpu_time_total / total_us)
             for e in events[:10]]

    n_batches = ds.n_train // BATCH + 1
    med = {s: {k: statistics.median(v) for k, v in times[s].items()} for s in sides}
    epoch = {s: med[s]["rebuild"] + (n_batches - 1) * med[s]["reuse"] for s in sides}
    result = {
        "size": {"users": ds.n_users, "items": ds.n_items, "train": ds.n_train,
                 "image_dim": 4096, "text_dim": 384, "batch": BATCH, "batches": n_batches},
        "isa": _C.simd_isa(), "threads": args.threads,
        "construction_s": {s: sides[s]["build_s"] for s in sides},
        "step_s": med, "step_rounds_s": times,
        "speedup": {"rebuild": med["published"]["rebuild"] / med["patched"]["rebuild"],
                    "reuse": med["published"]["reuse"] / med["patched"]["reuse"],
                    "epoch": epoch["published"] / epoch["patched"],
                    "construction": sides["published"]["build_s"] / sides["patched"]["build_s"]},
        "patched_profile": [{"op": k, "self_ms": ms, "share": sh} for k, ms, sh in split],
    }
    lines = [f"Baby size, {args.threads} threads, {result['isa']} kernels, float32.", "",
             "| | published | patched | speedup |", "|---|---:|---:|---:|",
             f"| construction (original graphs, adjacency) | "
             f"{sides['published']['build_s']:.2f} s | {sides['patched']['build_s']:.2f} s | "
             f"{result['speedup']['construction']:.1f}x |"]
    for kind, label in (("rebuild", "step rebuilding the item graphs (1 per epoch)"),
                        ("reuse", "step reusing them (the other batches)")):
        lines.append(f"| {label} | {med['published'][kind]:.3f} s | {med['patched'][kind]:.3f}"
                     f" s | {result['speedup'][kind]:.1f}x |")
    lines.append(f"| epoch ({n_batches} batches, one rebuilding) | {epoch['published']:.1f} s "
                 f"| {epoch['patched']:.1f} s | {result['speedup']['epoch']:.1f}x |")
    lines += ["", "Patched step (reusing the graphs), self CPU time per operator:", "",
              "| operator | ms | share |", "|---|---:|---:|"]
    lines += [f"| `{k}` | {ms:.1f} | {100 * sh:.0f}% |" for k, ms, sh in split]
    body = "\n".join(lines)
    print(body)
    if args.artifact:
        provenance.write_artifact(args.artifact, "The published MICRO step, patched and not",
                                  body, result, args.results_dir, threads=args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
