"""MICRO training over torch.distributed ranks: epoch time of 1 process against W gloo ranks
(one thread each), where each rank's batch time goes, the bytes exchanged per batch, and the
epoch time projected to more ranks.

    python benchmarks/distributed_train.py [--sizes medium,baby] [--ranks 2] [--epochs 2]
                                           [--link-gbs 10] [--out results.json]

Each run is ``micro_fast.train.train`` as ``micro-fast train`` runs it under torchrun (global
batch 1024, published defaults, evaluation off), on the planted synthetic data of that size;
the epoch time is the fastest epoch's training time (``train_s``, the first epoch also pays
for one-time set-up). The per-batch split into what is sharded (the all-item contrastive
loss, forward and backward) and what every rank repeats (the rest of the step) is measured in
one process with one thread. The projection assumes that split, the measured per-rank rates,
a ring all-reduce of every exchanged tensor (each rank sends and receives 2 (W - 1) / W of its
bytes) over an assumed link of ``--link-gbs`` GB/s, and 50 microseconds per collective; it is
arithmetic, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
LATENCY_S = 50e-6


def _config(size: str, epochs: int, out: str):
    from micro_fast.train import TrainConfig

    return TrainConfig(data=f"synthetic:{size}", epochs=epochs, eval_every=0, out=out,
                       progress=False, threads=1)


def _rank_main(args: argparse.Namespace) -> int:
    from micro_fast.train import train

    torch.set_num_threads(1)
    summary = train(_config(args.size, args.epochs, args.run_dir))
    if int(os.environ.get("RANK", "0")) == 0:
        records = [json.loads(line) for line in
                   (Path(args.run_dir) / "metrics.jsonl").read_text().splitlines()]
        Path(args.rank_out).write_text(json.dumps(
            {"epoch_s": [r["train_s"] for r in records], "world": summary["world_size"]}))
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(size: str, world: int, epochs: int, tmp: Path) -> list[float]:
    """Per-epoch training seconds of a ``world``-rank run (one thread per rank)."""
    out, run = tmp / f"{size}-{world}.json", tmp / f"run-{size}-{world}"
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()), WORLD_SIZE=str(world))
    cmd = [sys.executable, __file__, "--rank-worker", "--size", size, "--epochs", str(epochs),
           "--run-dir", str(run), "--rank-out", str(out)]
    procs = [subprocess.Popen(cmd, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)))
             for r in range(world)]
    if any(p.wait() != 0 for p in procs):
        raise SystemExit(f"a rank of the {world}-rank {size} run failed")
    return json.loads(out.read_text())["epoch_s"]


def batch_split(size: str, batches: int = 6) -> dict[str, float]:
    """One process, one thread: seconds per (non-rebuilding) batch of the whole step and of
    the contrastive loss alone (forward + backward on the model's views), and the tensors a
    rank exchanges per batch (numbers of floats)."""
    sys.path.insert(0, HERE)
    from micro_fast import data as mf_data
    from micro_fast.train import adam, build_model, interaction_graph

    torch.set_num_threads(1)
    config = _config(size, 1, "")
    ds = mf_data.synthetic(size, seed=config.seed)
    torch.manual_seed(config.seed)
    model = build_model(config, ds)
    ui = interaction_graph(ds, config.ui_normalization, torch.device("cpu"))
    opt = adam(model.parameters(), config.lr)
    sampler = mf_data.BPRSampler(ds.train, config.batch_size, seed=config.seed)
    step_s, contrastive_s = [], []
    grad_floats = 0
    for b in range(batches + 1):
        batch = sampler.sample()
        opt.zero_grad()
        t0 = time.perf_counter()
        loss, _ = model.loss(ui, *batch, build_item_graph=b == 0)
        loss.backward()
        t1 = time.perf_counter()
        opt.step()
        if b == 0:
            continue
        step_s.append(t1 - t0)
        grad_floats = sum(p.numel() for p in model.parameters() if p.grad is not None)
        out = model(ui, build_item_graph=False)
        views = [v.detach().requires_grad_() for v in out.views]
        weights = out.weights.detach().requires_grad_()
        t0 = time.perf_counter()
        model.fusion.loss(views, weights).backward()
        contrastive_s.append(time.perf_counter() - t0)
    n_views = len(model.modalities)
    return {"step_s": statistics.median(step_s),
            "contrastive_s": statistics.median(contrastive_s),
            "n_batches": sampler.n_batches,
            "grad_floats": grad_floats,
            "all_params_floats": sum(p.numel() for p in model.parameters()),
            # the max and sum all-reduces of the [views, items] partial log-sum-exps
            "lse_floats": 2 * n_views * ds.n_items,
            "collectives": 3, "items": ds.n_items, "users": ds.n_users}


def comm_seconds(floats: float, collectives: int, world: int, link_gbs: float) -> float:
    """Ring all-reduce of ``floats`` float32 values in ``collectives`` calls."""
    if world == 1:
        return 0.0
    return 2 * (world - 1) / world * floats * 4 / (link_gbs * 1e9) + collectives * LATENCY_S


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="medium,baby")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--link-gbs", type=float, default=10.0,
                        help="interconnect bandwidth assumed by the projection (GB/s)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--rank-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--rank-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank_worker:
        return _rank_main(args)
    results = {}
    for size in args.sizes.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            one = min(run_ranks(size, 1, args.epochs, Path(tmp)))
            many = min(run_ranks(size, args.ranks, args.epochs, Path(tmp)))
        split = batch_split(size)
        results[size] = {"epoch_s": {"1": one, str(args.ranks): many}, "split": split}
    w = args.ranks
    print("\nMICRO training epoch, one thread per rank (gloo), global batch 1024\n")
    print(f"| data | 1 process (s) | {w} ranks (s) | speedup |")
    print("|---|---|---|---|")
    for size, r in results.items():
        one, many = r["epoch_s"]["1"], r["epoch_s"][str(w)]
        print(f"| synthetic:{size} | {one:.1f} | {many:.1f} | {one / many:.2f}x |")
    print("\nPer batch (one process, one thread) and per rank exchanged:\n")
    print("| data | step (s) | contrastive fwd+bwd (s) | replicated rest (s) | gradient "
          "all-reduce (MB) | log-sum-exp all-reduces (MB) |")
    print("|---|---|---|---|---|---|")
    for size, r in results.items():
        s = r["split"]
        print(f"| synthetic:{size} | {s['step_s']:.3f} | {s['contrastive_s']:.3f} | "
              f"{s['step_s'] - s['contrastive_s']:.3f} | {s['grad_floats'] * 4 / 1e6:.1f} | "
              f"{s['lse_floats'] * 4 / 1e6:.2f} |")
    counts = (1, 2, 8, 64)
    print(f"\nProjected epoch (s): replicated rest + contrastive / W per batch at the measured "
          f"one-thread rates, plus ring all-reduces at {args.link_gbs} GB/s:\n")
    print("| data | " + " | ".join(f"{c} ranks" for c in counts) + " |")
    print("|---" * (len(counts) + 1) + "|")
    for size, r in results.items():
        s = r["split"]
        rest, con = s["step_s"] - s["contrastive_s"], s["contrastive_s"]
        row = []
        for c in counts:
            per_batch = rest + con / c + comm_seconds(s["grad_floats"] + s["lse_floats"],
                                                      s["collectives"], c, args.link_gbs)
            row.append(per_batch * s["n_batches"])
        r["projection_s"] = dict(zip(map(str, counts), row, strict=True))
        print(f"| synthetic:{size} | " + " | ".join(f"{t:.1f}" for t in row) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps({"ranks": w, "link_gbs": args.link_gbs,
                                              "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
