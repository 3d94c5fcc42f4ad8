"""FREEDOM on this library's kernels against MMRec's computation (reference_freedom.py), in one
process: the frozen item graph at start-up, the per-epoch pruning, and training batches, from
the same weights.

    python benchmarks/freedom_epoch.py [--size baby] [--batches 10] [--threads 2]

An epoch is the pruning plus ceil(E / 2048) batches (MMRec's batch size); its time is
extrapolated from the measured pruning and the median batch. Ours and the reference alternate
batch by batch, so a slow spell of the machine hits both alike.
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

from model_timing import parse_args, time_call  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__, argv, batches=10)

    from reference_freedom import ReferenceFREEDOM, knn_adjacency

    from micro_fast.data import BPRSampler, synthetic
    from micro_fast.models.freedom import FREEDOM, edge_weights, frozen_item_graph
    from micro_fast.train import adam

    ds = synthetic(args.size, seed=0)
    users, items = ds.train_pairs()
    feats = {m: ds.features[m] for m in ("image", "text") if m in ds.features}
    torch.manual_seed(0)
    model = FREEDOM(ds.n_users, ds.n_items, feats)
    ref = ReferenceFREEDOM(model, users, items)
    ours_opt = adam(model.parameters(), 1e-3)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-3)

    build_ours = min(time_call(lambda: frozen_item_graph(model.features, 10, 0.1))
                     for _ in range(3))
    build_ref = min(time_call(lambda: [knn_adjacency(x.detach(), 10) for x in feats.values()])
                    for _ in range(3))
    weights = edge_weights(users, items, ds.n_users, ds.n_items)
    prune_ours = statistics.median(time_call(lambda: model.pruned_graph(users, items,
                                                                    weights=weights))
                                   for _ in range(5))
    prune_ref = statistics.median(time_call(ref.masked_adj) for _ in range(5))

    sampler = BPRSampler(ds.train, batch_size=2048, seed=0)
    graph, adj = model.pruned_graph(users, items), ref.masked_adj()
    t_ours, t_ref = [], []
    for _ in range(args.batches + 1):
        batch = sampler.sample()

        def ours_step(batch=batch):
            ours_opt.zero_grad()
            model.loss(graph, *batch)[0].backward()
            ours_opt.step()

        def ref_step(batch=batch):
            ref_opt.zero_grad()
            ref.loss(adj, *batch).backward()
            ref_opt.step()

        t_ours.append(time_call(ours_step))
        t_ref.append(time_call(ref_step))
    b_ours, b_ref = statistics.median(t_ours[1:]), statistics.median(t_ref[1:])
    n_batches = math.ceil(ds.n_train / 2048)
    e_ours, e_ref = prune_ours + n_batches * b_ours, prune_ref + n_batches * b_ref
    print(f"FREEDOM, synthetic:{args.size} ({ds.n_users} users, {ds.n_items} items, "
          f"{ds.n_train} interactions, modalities {list(feats)}), {args.threads} threads, "
          f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE')}\n")
    print("| part | micro_fast | MMRec's computation | speedup |")
    print("|---|---|---|---|")
    print(f"| frozen item graph at start-up | {build_ours:.3f} s | {build_ref:.3f} s | "
          f"{build_ref / build_ours:.1f}x |")
    print(f"| pruning, per epoch | {1e3 * prune_ours:.1f} ms | {1e3 * prune_ref:.1f} ms | "
          f"{prune_ref / prune_ours:.1f}x |")
    print(f"| training batch (2048), median of {args.batches} | {1e3 * b_ours:.1f} ms | "
          f"{1e3 * b_ref:.1f} ms | {b_ref / b_ours:.1f}x |")
    print(f"| epoch ({n_batches} batches + pruning), extrapolated | {e_ours:.2f} s | "
          f"{e_ref:.2f} s | {e_ref / e_ours:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
