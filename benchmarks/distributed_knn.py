"""kNN graph build sharded over torch.distributed ranks: 1 rank vs W ranks (gloo, one thread
each), and the cost projected to larger catalogs from the measured per-rank throughput.

    python benchmarks/distributed_knn.py [--n 200000] [--d 64] [--k 10] [--ranks 2]
                                         [--out results.json]

Every rank holds all N x d features (as under DDP) and searches its N / W query rows against
all N keys; the [N, k] lists are all-gathered. Times are taken inside the ranks, between a
barrier and the finished gathered graph (process start-up excluded), best of ``--repeats``.
The projection assumes the measured per-rank rate (N^2 d multiply-adds per second, the
similarity work that dominates) and adds the all-gather volume; it is arithmetic, not a
measurement, and a GPU rank's rate differs from a CPU core's.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch


def _features(n: int, d: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0))


def _time_build(n: int, d: int, k: int, repeats: int) -> float:
    from micro_fast import distributed

    x = _features(n, d)
    best = float("inf")
    for _ in range(repeats):
        distributed.barrier()
        t0 = time.perf_counter()
        graph = distributed.knn_graph(x, k)
        best = min(best, time.perf_counter() - t0)
    assert graph.nnz == n * k
    return best


def _rank_main(args: argparse.Namespace) -> int:
    from micro_fast import distributed

    torch.set_num_threads(1)
    rank, world = distributed.init_from_env("gloo", timeout_s=3600)
    seconds = _time_build(args.n, args.d, args.k, args.repeats)
    if rank == 0:
        Path(args.rank_out).write_text(json.dumps({"ranks": world, "seconds": seconds}))
    distributed.shutdown()
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_ranks(args: argparse.Namespace, world: int, tmp: Path) -> float:
    out = tmp / f"ranks{world}.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()), WORLD_SIZE=str(world))
    cmd = [sys.executable, __file__, "--rank-worker", "--rank-out", str(out), "--n", str(args.n),
           "--d", str(args.d), "--k", str(args.k), "--repeats", str(args.repeats)]
    procs = [subprocess.Popen(cmd, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)))
             for r in range(world)]
    if any(p.wait() != 0 for p in procs):
        raise SystemExit(f"a rank of the {world}-rank run failed")
    return json.loads(out.read_text())["seconds"]


def project(rate: float, n: int, d: int, k: int, ranks: int, link_gbs: float) -> float:
    """Seconds for an N-item build on ``ranks`` ranks at ``rate`` multiply-adds/s per rank,
    plus the all-gather of N x k (value, index) pairs at ``link_gbs`` GB/s."""
    return n * n * d / (ranks * rate) + n * k * 12 / (link_gbs * 1e9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--link-gbs", type=float, default=10.0,
                        help="interconnect bandwidth assumed by the projection (GB/s)")
    parser.add_argument("--out", default=None, help="write the measurements as JSON")
    parser.add_argument("--rank-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rank-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank_worker:
        return _rank_main(args)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        one = _run_ranks(args, 1, Path(tmp)) if args.ranks != 1 else None
        many = _run_ranks(args, args.ranks, Path(tmp))
    n, d, k = args.n, args.d, args.k
    print(f"\nkNN graph build, N={n:,} d={d} k={k}, one thread per rank (gloo)\n")
    print("| ranks | seconds | speedup | effective rate per rank, N^2 d / (ranks x s) (G/s) |")
    print("|---|---|---|---|")
    rate1 = n * n * d / one
    rate_w = n * n * d / (args.ranks * many)
    print(f"| 1 | {one:.2f} | 1.00x | {rate1 / 1e9:.1f} |")
    print(f"| {args.ranks} | {many:.2f} | {one / many:.2f}x | {rate_w / 1e9:.1f} |")
    print(f"\nProjection at the measured {args.ranks}-rank per-rank rate "
          f"({rate_w / 1e9:.1f} G multiply-adds/s) plus an all-gather at {args.link_gbs} GB/s:"
          "\n")
    counts = (1, 2, 8, 64)
    print("| items | " + " | ".join(f"{g} ranks" for g in counts) + " |")
    print("|---" * (len(counts) + 1) + "|")
    rows = {}
    for big in (1_000_000, 10_000_000):
        secs = [project(rate_w, big, d, k, g, args.link_gbs) for g in counts]
        rows[big] = secs
        print(f"| {big:,} | " + " | ".join(_fmt(s) for s in secs) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "n": n, "d": d, "k": k, "seconds": {"1": one, str(args.ranks): many},
            "per_rank_rate": rate_w, "link_gbs": args.link_gbs,
            "projection_s": {str(b): dict(zip(map(str, counts), s, strict=True))
                             for b, s in rows.items()}}, indent=2))
    return 0


def _fmt(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


if __name__ == "__main__":
    sys.exit(main())
