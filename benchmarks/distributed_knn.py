"""kNN graph build sharded over torch.distributed ranks: W ranks (gloo, one thread each)
against one process with W threads (the same cores, no process boundary) and one process with
one thread, and the cost projected to larger catalogs from the measured per-rank throughput.

    python benchmarks/distributed_knn.py [--n 200000] [--d 64] [--k 10] [--ranks 2]
                                         [--repeats 1] [--artifact distributed-knn]

Every rank holds all N x d features (as under DDP) and searches its share of the symmetric
similarity matrix's block pairs; the lists are all-gathered and merged into the
single-process graph. Times are taken inside the processes, between a barrier and the
finished (gathered) graph (process start-up excluded), one warm-up build at N / 8 first, then
the best of ``--repeats``; the same for every configuration. The headline compares W ranks
with one process of W threads. Rates count the multiply-adds the symmetric kernel performs
(each block pair once, benchmarks/work.py). The projection assumes the measured per-rank rate
and adds the all-gather volume; it is arithmetic, not a measurement, and a GPU rank's rate
differs from a CPU core's.
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402
import work  # noqa: E402


def _features(n: int, d: int) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0))


def _time_build(n: int, d: int, k: int, repeats: int) -> float:
    from micro_fast import distributed

    distributed.knn_graph(_features(max(n // 8, 2 * k), d), k)  # warm-up
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

    torch.set_num_threads(args.rank_threads)
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


def _run_ranks(args: argparse.Namespace, world: int, tmp: Path, threads: int = 1) -> float:
    out = tmp / f"ranks{world}x{threads}.json"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()), WORLD_SIZE=str(world))
    cmd = [sys.executable, __file__, "--rank-worker", "--rank-out", str(out), "--n", str(args.n),
           "--d", str(args.d), "--k", str(args.k), "--repeats", str(args.repeats),
           "--rank-threads", str(threads)]
    procs = [subprocess.Popen(cmd, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)))
             for r in range(world)]
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"a rank of the {world}-rank run failed (exit codes {codes})")
    return json.loads(out.read_text())["seconds"]


def project(rate: float, n: int, d: int, k: int, ranks: int, link_gbs: float) -> float:
    """Seconds for an N-item build on ``ranks`` ranks at ``rate`` multiply-adds/s per rank
    (the symmetric kernel's N (N + 1) / 2 d), plus the all-gather of N x k (value, index)
    pairs at ``link_gbs`` GB/s."""
    return n * (n + 1) / 2 * d / (ranks * rate) + n * k * 12 / (link_gbs * 1e9)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--link-gbs", type=float, default=10.0,
                        help="interconnect bandwidth assumed by the projection (GB/s)")
    parser.add_argument("--out", default=None, help="also write the measurements as JSON")
    provenance.add_output_args(parser)
    parser.add_argument("--rank-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rank-out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rank-threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rank_worker:
        return _rank_main(args)
    import tempfile

    w = args.ranks
    with tempfile.TemporaryDirectory() as tmp:
        one = _run_ranks(args, 1, Path(tmp))
        threads = _run_ranks(args, 1, Path(tmp), threads=w)
        many = _run_ranks(args, w, Path(tmp))
    n, d, k = args.n, args.d, args.k
    macs = work.topk_macs(n, None, d)
    lines = [f"kNN graph build, N={n:,} d={d} k={k}, gloo; best of {args.repeats} after a "
             "warm-up build; multiply-adds as the symmetric kernel performs them "
             f"({macs / 1e12:.3f} x 10^12)", "",
             "| configuration | seconds | vs 1 process x 1 thread | "
             f"vs 1 process x {w} threads | achieved G multiply-adds/s (per rank or process) |",
             "|---|---|---|---|---|"]
    for label, t, per in ((f"{w} ranks x 1 thread", many, w), ("1 process x 1 thread", one, 1),
                          (f"1 process x {w} threads", threads, 1)):
        lines.append(f"| {label} | {t:.2f} | {one / t:.2f}x | {threads / t:.2f}x | "
                     f"{macs / t / per / 1e9:.1f} |")
    rate_w = macs / (w * many)
    counts = (1, 2, 8, 64)
    lines += ["", f"Projection (arithmetic, not a measurement) at the measured {w}-rank per-rank "
              f"rate ({rate_w / 1e9:.1f} G multiply-adds/s) plus an all-gather at an assumed "
              f"{args.link_gbs} GB/s:", "",
              "| items | " + " | ".join(f"{g} ranks" for g in counts) + " |",
              "|---" * (len(counts) + 1) + "|"]
    rows = {}
    for big in (1_000_000, 10_000_000):
        secs = [project(rate_w, big, d, k, g, args.link_gbs) for g in counts]
        rows[big] = secs
        lines.append(f"| {big:,} | " + " | ".join(_fmt(x) for x in secs) + " |")
    text = "\n".join(lines)
    print("\n" + text)
    data = {"n": n, "d": d, "k": k, "ranks": w, "repeats": args.repeats, "macs": macs,
            "seconds": {"1x1": one, f"1x{w}": threads, f"{w}x1": many},
            "per_rank_rate": rate_w, "link_gbs": args.link_gbs,
            "projection_s": {str(b): dict(zip(map(str, counts), x, strict=True))
                             for b, x in rows.items()}}
    if args.out:
        Path(args.out).write_text(json.dumps(data, indent=2))
    if args.artifact:
        md, js = provenance.write_artifact(
            args.artifact, f"kNN graph build over {w} gloo ranks against one process "
            "(distributed_knn.py)", text, data, args.results_dir, threads=w)
        print(f"wrote {md} and {js}")
    return 0


def _fmt(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


if __name__ == "__main__":
    sys.exit(main())
