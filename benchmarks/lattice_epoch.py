"""LATTICE on this library's kernels against MMRec's port (reference_lattice.py), in one
process: the original graphs at start-up, the rebuilding batch (each epoch's first), the
ordinary batch and whole epochs, from the same weights.

    python benchmarks/lattice_epoch.py [--size baby] [--batches 5] [--epochs 1] [--threads 2]
                                       [--artifact lattice-epoch]

Both sides get the same warm-up and rounds in every row: the original graphs a warm-up call
then the median of 2; one warm-up rebuilding batch and one warm-up ordinary batch per side;
then ``--epochs`` whole epochs per side (a rebuilding batch plus ceil(E / 2048) - 1 ordinary
ones, MMRec's batch size), alternating, with torch's fused Adam on both sides (what
``micro-fast train`` runs), each batch's time kept: the rebuilding and the median ordinary
batch come from these epochs. Then ``--batches`` ordinary batches per side, alternating, with
torch's default Adam on both sides (what MMRec runs). Nothing is extrapolated. Every side sees
the same batches. Writes an artifact with the provenance header with ``--artifact NAME``.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
import time
from pathlib import Path

# both sides on the allocator setting micro-fast train runs with (micro_fast/__init__.py)
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_timing import OPTIMIZERS, median_time, optimizer, parse_args, time_call  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__, argv, batches=5, epochs=1)

    import provenance
    from reference_lattice import ReferenceLATTICE, dense_knn, laplacian

    import micro_fast as mf
    from micro_fast.data import BPRSampler, synthetic
    from micro_fast.models.lattice import LATTICE

    ds = synthetic(args.size, seed=0)
    users, items = ds.train_pairs()
    feats = {m: ds.features[m] for m in ("image", "text") if m in ds.features}
    ui = mf.bipartite_graph(users, items, ds.n_users, ds.n_items, normalization="rw",
                            self_loops=True)
    lr, batch_size = 5e-4, 2048
    n_batches = math.ceil(ds.n_train / batch_size)

    def pair():
        torch.manual_seed(0)
        model = LATTICE(ds.n_users, ds.n_items, feats)
        return model, ReferenceLATTICE(model, ui.to_torch_coo())

    model, ref = pair()
    rows: dict[str, dict] = {}
    rows["graphs"] = {
        "ours": median_time(lambda: [mf.knn_graph(x.detach(), 10) for x in feats.values()], 2),
        "ref": median_time(lambda: [laplacian(dense_knn(x.detach(), 10))
                                    for x in feats.values()], 2)}

    def steps(model, ref, kind):
        ours_opt = optimizer(kind, model.parameters(), lr)
        ref_opt = optimizer(kind, ref.parameters(), lr)

        def ours(batch, build):
            ours_opt.zero_grad()
            model.loss(ui, *batch, build_item_graph=build)[0].backward()
            ours_opt.step()

        def theirs(batch, build):
            ref_opt.zero_grad()
            ref.loss(*batch, build=build).backward()
            ref_opt.step()

        return {"ours": ours, "ref": theirs}

    fns = steps(model, ref, "fused")
    warm = BPRSampler(ds.train, batch_size=batch_size, seed=2)
    for build in (True, False):  # one warm-up batch of each kind per side
        batch = warm.sample()
        for fn in fns.values():
            fn(batch, build)
    samplers = {side: BPRSampler(ds.train, batch_size=batch_size, seed=1) for side in fns}
    epoch_s: dict[str, list[float]] = {"ours": [], "ref": []}
    batch_s: dict[str, list[list[float]]] = {"ours": [], "ref": []}
    for _ in range(args.epochs):
        for side, fn in fns.items():
            times = []
            t0 = time.perf_counter()
            for b in range(n_batches):
                batch = samplers[side].sample()
                t = time.perf_counter()
                fn(batch, b == 0)
                times.append(time.perf_counter() - t)
            epoch_s[side].append(time.perf_counter() - t0)
            batch_s[side].append(times)
    rows["epoch_fused"] = {side: statistics.median(v) for side, v in epoch_s.items()}
    rows["rebuild_fused"] = {side: statistics.median(t[0] for t in v)
                             for side, v in batch_s.items()}
    rows["ordinary_fused"] = {side: statistics.median(x for t in v for x in t[1:])
                              for side, v in batch_s.items()}
    del model, ref, fns
    model, ref = pair()
    fns = steps(model, ref, "default")
    sampler = BPRSampler(ds.train, batch_size=batch_size, seed=3)
    first = sampler.sample()
    for fn in fns.values():  # the graphs of the new pair exist, the first calls warm up
        fn(first, True)
    plain: dict[str, list[float]] = {"ours": [], "ref": []}
    for i in range(args.batches + 1):
        batch = sampler.sample()
        for side, fn in fns.items():
            t = time_call(lambda fn=fn, batch=batch: fn(batch, False))
            if i:
                plain[side].append(t)
    rows["ordinary_default"] = {side: statistics.median(v) for side, v in plain.items()}

    head = (f"LATTICE, synthetic:{args.size} ({ds.n_users} users, {ds.n_items} items, "
            f"{ds.n_train} interactions, modalities {list(feats)}), {args.threads} threads, "
            f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE')} (both sides, one "
            "process)")
    table = [head, "", "| part | micro_fast | MMRec's port | speedup |", "|---|---|---|---|"]

    def line(label, key, scale=1.0, unit="s", fmt=".2f"):
        r = rows[key]
        table.append(f"| {label} | {scale * r['ours']:{fmt}} {unit} | {scale * r['ref']:{fmt}} "
                     f"{unit} | {r['ref'] / r['ours']:.1f}x |")

    e = args.epochs
    line("original graphs at start-up (1 warm-up, median of 2)", "graphs", fmt=".3f")
    line(f"rebuilding batch (2048), {OPTIMIZERS['fused']} on both sides (first batch of each "
         f"timed epoch, median of {e})", "rebuild_fused", 1e3, "ms", ".0f")
    line(f"ordinary batch (2048), {OPTIMIZERS['fused']} on both sides (median of the timed "
         f"epochs' {n_batches - 1} x {e})", "ordinary_fused", 1e3, "ms", ".0f")
    line(f"ordinary batch (2048), {OPTIMIZERS['default']} on both sides (1 warm-up, median of "
         f"{args.batches})", "ordinary_default", 1e3, "ms", ".0f")
    line(f"epoch ({n_batches} batches), measured whole, {OPTIMIZERS['fused']} on both sides "
         f"(median of {e})", "epoch_fused", fmt=".1f")
    text = "\n".join(table)
    print(text)
    if args.artifact:
        md, js = provenance.write_artifact(
            args.artifact, "LATTICE against MMRec's port (lattice_epoch.py)", text,
            {"size": args.size, "n_users": ds.n_users, "n_items": ds.n_items,
             "n_train": ds.n_train, "n_batches": n_batches, "batch_size": batch_size,
             "optimizers": OPTIMIZERS, "rows": rows, "epoch_s": epoch_s,
             "batch_s": batch_s}, args.results_dir, threads=args.threads)
        print(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
