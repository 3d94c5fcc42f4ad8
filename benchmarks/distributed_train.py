"""MICRO training over torch.distributed ranks: the epoch time of W gloo ranks (one thread
each) against one process with W threads (the same cores, no process boundary) and one process
with one thread; where each rank's batch time goes, the bytes exchanged per batch and what
gloo's collectives cost here, and the epoch time projected to more ranks.

    python benchmarks/distributed_train.py [--sizes medium,baby] [--ranks 2] [--epochs 2]
                                           [--link-gbs 10] [--artifact distributed-train]

Each run is ``micro_fast.train.train`` as ``micro-fast train`` runs it (under torchrun for the
ranks; global batch 1024, published defaults, evaluation off), on the planted synthetic data of
that size; the epoch time is the fastest of ``--epochs`` epochs' training time (``train_s``;
the first epoch also pays for one-time set-up), the same for every configuration. The
headline compares W ranks with one process of W threads: on one machine that is what
distributing buys over threads. The per-batch split into what is sharded (the all-item
contrastive loss, forward and backward) and what every rank repeats (the rest of the step) is
measured in one process with one thread. The collectives (a gradient-sized all-reduce, the
all-gather of one propagation layer, (U + I) x 64 floats) are timed between the W ranks, the
median of 20 after 3 warm-ups. The projection assumes that split, the measured per-rank
rates, a ring all-reduce of every exchanged tensor (each rank sends and receives 2 (W - 1) / W
of its bytes) over an assumed link of ``--link-gbs`` GB/s, and 50 microseconds per collective;
it is arithmetic, not a measurement, and labelled so. A failing rank fails the script.
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
sys.path.insert(0, HERE)
import provenance  # noqa: E402

LATENCY_S = 50e-6


def _config(size: str, epochs: int, out: str, threads: int = 1):
    from micro_fast.train import TrainConfig

    return TrainConfig(data=f"synthetic:{size}", epochs=epochs, eval_every=0, out=out,
                       progress=False, threads=threads)


def _rank_main(args: argparse.Namespace) -> int:
    from micro_fast.train import train

    torch.set_num_threads(args.rank_threads)
    summary = train(_config(args.size, args.epochs, args.run_dir, args.rank_threads))
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


def _launch(world: int, threads: int, args: list[str]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()), WORLD_SIZE=str(world))
    cmd = [sys.executable, __file__, *args]
    procs = [subprocess.Popen(cmd, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)))
             for r in range(world)]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"a rank of the {world}-rank run failed (exit codes {codes}): "
                         f"{' '.join(args)}")


def run_ranks(size: str, world: int, epochs: int, tmp: Path, threads: int = 1) -> list[float]:
    """Per-epoch training seconds of a ``world``-rank run with ``threads`` threads per rank."""
    out, run = tmp / f"{size}-{world}x{threads}.json", tmp / f"run-{size}-{world}x{threads}"
    _launch(world, threads, ["--rank-worker", "--size", size, "--epochs", str(epochs),
                             "--run-dir", str(run), "--rank-out", str(out),
                             "--rank-threads", str(threads)])
    return json.loads(out.read_text())["epoch_s"]


def _collectives_main(args: argparse.Namespace) -> int:
    """In each of W ranks (one thread): gloo all-reduce of ``--floats`` floats and all-gather
    of the same number split over the ranks, median seconds of 20 after 3 warm-ups."""
    import torch.distributed as dist

    from micro_fast import distributed

    torch.set_num_threads(1)
    rank, world = distributed.init_from_env("gloo", timeout_s=600)
    n = args.floats
    full = torch.ones(n)
    part = torch.ones((n + world - 1) // world)
    parts = [torch.empty_like(part) for _ in range(world)]
    out = {}
    for name, fn in (("all_reduce", lambda: dist.all_reduce(full)),
                     ("all_gather", lambda: dist.all_gather(parts, part))):
        times = []
        for i in range(23):
            dist.barrier()
            t0 = time.perf_counter()
            fn()
            if i >= 3:
                times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    if rank == 0:
        Path(args.rank_out).write_text(json.dumps(out))
    distributed.shutdown()
    return 0


def collectives(world: int, floats: int, tmp: Path) -> dict[str, float]:
    out = tmp / f"collectives-{world}-{floats}.json"
    _launch(world, 1, ["--collectives-worker", "--floats", str(floats), "--rank-out", str(out)])
    return json.loads(out.read_text())


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
    parser.add_argument("--out", default=None, help="also write the measurements as JSON here")
    provenance.add_output_args(parser)
    parser.add_argument("--rank-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--collectives-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rank-threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--floats", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--size", help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    parser.add_argument("--rank-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank_worker:
        return _rank_main(args)
    if args.collectives_worker:
        return _collectives_main(args)
    w = args.ranks
    results = {}
    for size in args.sizes.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            one = min(run_ranks(size, 1, args.epochs, Path(tmp)))
            threads = min(run_ranks(size, 1, args.epochs, Path(tmp), threads=w))
            many = min(run_ranks(size, w, args.epochs, Path(tmp)))
            split = batch_split(size)
            layer = (split["users"] + split["items"]) * 64
            comm = {"propagation_layer_floats": layer,
                    "gradient": collectives(w, split["grad_floats"], Path(tmp)),
                    "propagation_layer": collectives(w, layer, Path(tmp))}
        results[size] = {"epoch_s": {"1x1": one, f"1x{w}": threads, f"{w}x1": many},
                         "split": split, "collectives_s": comm}
    lines = [f"MICRO training epoch (fastest of {args.epochs}), global batch 1024, gloo, "
             "published defaults, evaluation off", "",
             f"| data | {w} ranks x 1 thread (s) | 1 process x {w} threads (s) | "
             f"{w} ranks vs {w} threads | 1 process x 1 thread (s) | {w} ranks vs 1 thread |",
             "|---|---|---|---|---|---|"]
    for size, r in results.items():
        e = r["epoch_s"]
        lines.append(f"| synthetic:{size} | {e[f'{w}x1']:.2f} | {e[f'1x{w}']:.2f} | "
                     f"{e[f'1x{w}'] / e[f'{w}x1']:.2f}x | {e['1x1']:.2f} | "
                     f"{e['1x1'] / e[f'{w}x1']:.2f}x |")
    lines += ["", "Per batch (one process, one thread) and per rank exchanged:", "",
              "| data | step (s) | contrastive fwd+bwd (s), sharded | replicated rest (s) | "
              "gradient all-reduce (MB) | log-sum-exp all-reduces (MB) |",
              "|---|---|---|---|---|---|"]
    for size, r in results.items():
        s = r["split"]
        lines.append(f"| synthetic:{size} | {s['step_s']:.3f} | {s['contrastive_s']:.3f} | "
                     f"{s['step_s'] - s['contrastive_s']:.3f} | "
                     f"{s['grad_floats'] * 4 / 1e6:.1f} | {s['lse_floats'] * 4 / 1e6:.2f} |")
    lines += ["", f"gloo collectives between the {w} ranks on this machine (one thread each, "
              "median of 20 after 3 warm-ups):", "",
              "| data | all-reduce of the gradients | all-gather of one propagation layer, "
              "(U + I) x 64 floats |", "|---|---|---|"]
    for size, r in results.items():
        c, s = r["collectives_s"], r["split"]
        lines.append(f"| synthetic:{size} | {s['grad_floats'] * 4 / 1e6:.1f} MB: "
                     f"{c['gradient']['all_reduce'] * 1e3:.2f} ms | "
                     f"{c['propagation_layer_floats'] * 4 / 1e6:.1f} MB: "
                     f"{c['propagation_layer']['all_gather'] * 1e3:.2f} ms |")
    counts = (1, 2, 8, 64)
    lines += ["", "Projected epoch (s), arithmetic, not a measurement: replicated rest + "
              "contrastive / W per batch at the measured one-thread rates, plus ring "
              f"all-reduces at an assumed {args.link_gbs} GB/s:", "",
              "| data | " + " | ".join(f"{c} ranks" for c in counts) + " |",
              "|---" * (len(counts) + 1) + "|"]
    for size, r in results.items():
        s = r["split"]
        rest, con = s["step_s"] - s["contrastive_s"], s["contrastive_s"]
        row = []
        for c in counts:
            per_batch = rest + con / c + comm_seconds(s["grad_floats"] + s["lse_floats"],
                                                      s["collectives"], c, args.link_gbs)
            row.append(per_batch * s["n_batches"])
        r["projection_s"] = dict(zip(map(str, counts), row, strict=True))
        lines.append(f"| synthetic:{size} | " + " | ".join(f"{t:.1f}" for t in row) + " |")
    text = "\n".join(lines)
    print("\n" + text)
    data = {"ranks": w, "link_gbs": args.link_gbs, "epochs": args.epochs, "results": results}
    if args.out:
        Path(args.out).write_text(json.dumps(data, indent=2))
    if args.artifact:
        md, js = provenance.write_artifact(
            args.artifact, f"MICRO training over {w} gloo ranks against one process "
            f"(distributed_train.py)", text, data, args.results_dir, threads=w)
        print(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
