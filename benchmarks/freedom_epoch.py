"""FREEDOM on this library's kernels against MMRec's computation (reference_freedom.py), in one
process: the frozen item graph at start-up, the per-epoch pruning, training batches and whole
epochs, from the same weights.

    python benchmarks/freedom_epoch.py [--size baby] [--batches 10] [--epochs 2] [--threads 2]
                                       [--artifact freedom-epoch]

Both sides get the same warm-up and rounds in every row: the item graph and the pruning a
warm-up call then the median of 3 and 5 calls; batches (2048, MMRec's size) one warm-up batch
then ``--batches`` batches alternating between the sides, once with torch's fused Adam on
both sides (what ``micro-fast train`` runs) and once with torch's default Adam on both sides
(what MMRec runs); epochs (the pruning plus ceil(E / 2048) batches) measured whole,
``--epochs`` of them per side alternating, with the fused Adam on both sides, after the warm-up
batch. Nothing is extrapolated. Every side sees the same batches. Writes an artifact with the
provenance header with ``--artifact NAME``.
"""

from __future__ import annotations

import math
import os
import statistics
import sys
from pathlib import Path

# both sides on the allocator setting micro-fast train runs with (micro_fast/__init__.py)
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_timing import OPTIMIZERS, median_time, optimizer, parse_args, time_call  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__, argv, batches=10, epochs=2)

    import provenance
    from reference_freedom import ReferenceFREEDOM, knn_adjacency

    from micro_fast.data import BPRSampler, synthetic
    from micro_fast.models.freedom import FREEDOM, edge_weights, frozen_item_graph

    ds = synthetic(args.size, seed=0)
    users, items = ds.train_pairs()
    feats = {m: ds.features[m] for m in ("image", "text") if m in ds.features}
    lr, batch_size = 1e-3, 2048

    def pair():
        torch.manual_seed(0)
        model = FREEDOM(ds.n_users, ds.n_items, feats)
        return model, ReferenceFREEDOM(model, users, items)

    model, ref = pair()
    rows: dict[str, dict] = {}
    rows["graph"] = {
        "ours": median_time(lambda: frozen_item_graph(model.features, 10, 0.1), 3),
        "ref": median_time(lambda: [knn_adjacency(x.detach(), 10) for x in feats.values()], 3)}
    weights = edge_weights(users, items, ds.n_users, ds.n_items)
    rows["prune"] = {
        "ours": median_time(lambda: model.pruned_graph(users, items, weights=weights), 5),
        "ref": median_time(ref.masked_adj, 5)}

    n_batches = math.ceil(ds.n_train / batch_size)
    epochs: dict[str, list[float]] = {"ours": [], "ref": []}
    for kind in ("fused", "default"):
        if kind != "fused":
            del model, ref
            model, ref = pair()
        ours_opt = optimizer(kind, model.parameters(), lr)
        ref_opt = optimizer(kind, ref.parameters(), lr)

        def ours_step(batch, graph, opt=ours_opt, model=model):
            opt.zero_grad()
            model.loss(graph, *batch)[0].backward()
            opt.step()

        def ref_step(batch, adj, opt=ref_opt, ref=ref):
            opt.zero_grad()
            ref.loss(adj, *batch).backward()
            opt.step()

        sampler = BPRSampler(ds.train, batch_size=batch_size, seed=0)
        graph, adj = model.pruned_graph(users, items), ref.masked_adj()
        t_ours, t_ref = [], []
        for i in range(args.batches + 1):  # the first batch of each side warms up
            batch = sampler.sample()
            a = time_call(lambda batch=batch, g=graph: ours_step(batch, g))
            b = time_call(lambda batch=batch, a=adj: ref_step(batch, a))
            if i:
                t_ours.append(a)
                t_ref.append(b)
        rows[f"batch_{kind}"] = {"ours": statistics.median(t_ours),
                                 "ref": statistics.median(t_ref), "rounds": args.batches}
        if kind != "fused":
            continue
        # whole epochs, the same fused Adam on both sides, alternating, the same batches
        s_ours = BPRSampler(ds.train, batch_size=batch_size, seed=1)
        s_ref = BPRSampler(ds.train, batch_size=batch_size, seed=1)

        def ours_epoch(sampler=s_ours, step=ours_step, model=model):
            g = model.pruned_graph(users, items, weights=weights)
            for _ in range(n_batches):
                step(sampler.sample(), g)

        def ref_epoch(sampler=s_ref, step=ref_step, ref=ref):
            a = ref.masked_adj()
            for _ in range(n_batches):
                step(sampler.sample(), a)

        for _ in range(args.epochs):
            epochs["ours"].append(time_call(ours_epoch))
            epochs["ref"].append(time_call(ref_epoch))
    rows["epoch_fused"] = {"ours": statistics.median(epochs["ours"]),
                           "ref": statistics.median(epochs["ref"]), "all": epochs}

    head = (f"FREEDOM, synthetic:{args.size} ({ds.n_users} users, {ds.n_items} items, "
            f"{ds.n_train} interactions, modalities {list(feats)}), {args.threads} threads, "
            f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE')} (both sides, one "
            "process)")
    table = [head, "", "| part | micro_fast | MMRec's computation | speedup |", "|---|---|---|---|"]

    def line(label, key, scale=1.0, unit="s", fmt=".3f"):
        r = rows[key]
        table.append(f"| {label} | {scale * r['ours']:{fmt}} {unit} | {scale * r['ref']:{fmt}} "
                     f"{unit} | {r['ref'] / r['ours']:.2f}x |")

    line("frozen item graph at start-up (1 warm-up, median of 3)", "graph")
    line("pruning, per epoch (1 warm-up, median of 5)", "prune", 1e3, "ms", ".1f")
    line(f"training batch (2048), {OPTIMIZERS['fused']} on both sides (1 warm-up, median of "
         f"{args.batches})", "batch_fused", 1e3, "ms", ".1f")
    line(f"training batch (2048), {OPTIMIZERS['default']} on both sides (1 warm-up, median of "
         f"{args.batches})", "batch_default", 1e3, "ms", ".1f")
    line(f"epoch ({n_batches} batches + pruning), measured whole, {OPTIMIZERS['fused']} on both "
         f"sides (median of {args.epochs}, after the warm-up batch)", "epoch_fused", fmt=".2f")
    text = "\n".join(table)
    print(text)
    if args.artifact:
        md, js = provenance.write_artifact(
            args.artifact, "FREEDOM against MMRec's computation (freedom_epoch.py)", text,
            {"size": args.size, "n_users": ds.n_users, "n_items": ds.n_items,
             "n_train": ds.n_train, "n_batches": n_batches, "batch_size": batch_size,
             "optimizers": OPTIMIZERS, "rows": rows}, args.results_dir, threads=args.threads)
        print(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
