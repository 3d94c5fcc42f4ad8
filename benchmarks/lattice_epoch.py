"""LATTICE on this library's kernels against MMRec's port (reference_lattice.py), in one
process: the original graphs at start-up, the rebuilding batch (each epoch's first) and the
ordinary batch, from the same weights.

    python benchmarks/lattice_epoch.py [--size baby] [--batches 6] [--threads 2]

An epoch is one rebuilding batch plus ceil(E / 2048) - 1 ordinary ones (MMRec's batch size),
extrapolated from the medians. Ours and the reference alternate batch by batch.
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
    args = parse_args(__doc__, argv, batches=6)

    from reference_lattice import ReferenceLATTICE, dense_knn, laplacian

    import micro_fast as mf
    from micro_fast.data import BPRSampler, synthetic
    from micro_fast.models.lattice import LATTICE
    from micro_fast.train import adam

    ds = synthetic(args.size, seed=0)
    users, items = ds.train_pairs()
    feats = {m: ds.features[m] for m in ("image", "text") if m in ds.features}
    ui = mf.bipartite_graph(users, items, ds.n_users, ds.n_items, normalization="rw",
                            self_loops=True)
    torch.manual_seed(0)
    model = LATTICE(ds.n_users, ds.n_items, feats)
    ref = ReferenceLATTICE(model, ui.to_torch_coo())
    build_ours = min(time_call(lambda: [mf.knn_graph(x.detach(), 10) for x in feats.values()])
                     for _ in range(2))
    build_ref = min(time_call(lambda: [laplacian(dense_knn(x.detach(), 10))
                                   for x in feats.values()]) for _ in range(2))
    ours_opt = adam(model.parameters(), 5e-4)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=5e-4)
    sampler = BPRSampler(ds.train, batch_size=2048, seed=0)
    times: dict[tuple[str, bool], list[float]] = {}
    for i in range(args.batches + 2):
        build = i % 3 == 0
        batch = sampler.sample()

        def ours(batch=batch, build=build):
            ours_opt.zero_grad()
            model.loss(ui, *batch, build_item_graph=build)[0].backward()
            ours_opt.step()

        def theirs(batch=batch, build=build):
            ref_opt.zero_grad()
            ref.loss(*batch, build=build).backward()
            ref_opt.step()

        for name, fn in (("ours", ours), ("ref", theirs)):
            t = time_call(fn)
            if i >= 1:  # the very first calls warm up
                times.setdefault((name, build), []).append(t)
    med = {key: statistics.median(v) for key, v in times.items()}
    n_batches = math.ceil(ds.n_train / 2048)
    epoch = {name: med[(name, True)] + (n_batches - 1) * med[(name, False)]
             for name in ("ours", "ref")}
    print(f"LATTICE, synthetic:{args.size} ({ds.n_users} users, {ds.n_items} items, "
          f"{ds.n_train} interactions, modalities {list(feats)}), {args.threads} threads, "
          f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE')}\n")
    print("| part | micro_fast | MMRec's port | speedup |")
    print("|---|---|---|---|")
    print(f"| original graphs at start-up | {build_ours:.2f} s | {build_ref:.2f} s | "
          f"{build_ref / build_ours:.1f}x |")
    for build, label in ((True, "rebuilding batch"), (False, "ordinary batch")):
        o, r = med[("ours", build)], med[("ref", build)]
        print(f"| {label} (2048) | {1e3 * o:.0f} ms | {1e3 * r:.0f} ms | {r / o:.1f}x |")
    print(f"| epoch ({n_batches} batches), extrapolated | {epoch['ours']:.1f} s | "
          f"{epoch['ref']:.1f} s | {epoch['ref'] / epoch['ours']:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
