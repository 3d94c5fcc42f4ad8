"""The hot paths of a MICRO training run, per instruction set of the compiled core, against
their peers and this machine's ceilings, all in one process.

    python benchmarks/isa_table.py [--isa all|avx512,avx2,generic] [--quick] [--json OUT]

Every compiled (cpp) case runs once per instruction set this CPU supports
(``_C.set_simd_isa``), so an AVX-512 machine also measures the AVX2 and portable builds; the
peers (the published MICRO step and chunked loss, torch CSR, numba, FAISS) do not depend on it
and run once. Rows:

* one MICRO training batch at Baby size (19,445 users, 7,050 items, 4096-d image and 1024-d
  text features) against the published step (reference_micro.py): the graph-rebuilding first
  batch and the mean of the next ones, and the epoch extrapolated from both; the published
  step also in a process of its own on torch's default allocator (same data, weights and
  batches), as for the contrastive loss below;
* the contrastive loss forward + backward at N = 23,033, d = 64, against the published chunked
  loss, with its effective rate (12 N^2 d flop) as a share of torch.mm 4096^3. The published
  loss runs twice: in this process, where importing micro_fast has put torch's large tensors
  on transparent huge pages (which saves the published loss most of its page faults), and in
  a process of its own on torch's default allocator, as the published code runs;
* the two-view fusion loss at N = 7,050, fused kernel against two separate losses;
* spmm forward and forward + backward on the Clothing-size bipartite graph: cpp, numba,
  torch CSR and what ``backend="auto"`` runs;
* the kNN graph at N = 23,033, d = 64, k = 10, against FAISS ``IndexFlatIP``.

``--quick`` shrinks every size (a dry run of the script). The cases of a row are timed in
three passes (each case's rounds back to back after a warm-up, in every pass), so a slow
spell of a shared machine hits them alike; medians. The slow peers run fewer rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# every case on the allocator setting micro-fast train runs with (micro_fast/__init__.py)
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import isas as isa_select  # noqa: E402
import peers  # noqa: E402
import torch  # noqa: E402

import micro_fast as mf  # noqa: E402
from micro_fast.backends import cpp  # noqa: E402
from micro_fast.train import adam  # noqa: E402


def timeit(fn: Callable[[], object], rounds: int = 3, warmup: int = 1) -> float:
    return time_row({"case": (None, fn)}, rounds, warmup, passes=1)["case"]


def time_row(cases: dict[str, tuple[str | None, Callable[[], object]]], rounds: int,
             warmup: int = 1, rounds_of: dict[str, int] | None = None,
             passes: int = 3, rewarm: bool = True) -> dict[str, float]:
    """Median seconds of each case (name -> (ISA or None, fn)). The rounds are spread over
    ``passes`` passes through all cases, each case running its share back to back after a
    warm-up (so one backend's idle threads do not sit in the next one's timing; ``rewarm=False``
    warms up in the first pass only)."""
    rounds_of = rounds_of or {}
    times: dict[str, list[float]] = {name: [] for name in cases}
    for p in range(passes):
        for name, (isa, fn) in cases.items():
            total = rounds_of.get(name, rounds)
            share = total // passes + (1 if p < total % passes else 0)
            if share == 0:
                continue
            with isa_select.using(isa):
                for _ in range(warmup if p == 0 or rewarm else 0):
                    fn()
                for _ in range(share):
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


# Run by published_own_process in a fresh interpreter: only torch and peers.py, so torch keeps
# its default allocator (no THP_MEM_ALLOC_ENABLE), as the published code runs.
_OWN_PROCESS = """
import os, statistics, sys, time
sys.path.insert(0, {here!r})
import torch
import peers
torch.set_num_threads({threads})
gen = torch.Generator().manual_seed(0)
z1, z2 = (torch.randn({n}, 64, generator=gen).requires_grad_() for _ in range(2))
times = []
for r in range({rounds} + 1):
    t0 = time.perf_counter()
    peers.published_contrastive(z1, z2).backward()
    z1.grad = z2.grad = None
    if r:
        times.append(time.perf_counter() - t0)
print(statistics.median(times))
"""


# The published MICRO step in a fresh interpreter with THP_MEM_ALLOC_ENABLE=0 (torch's default
# allocator): the same data, weights and batches as train_batches, the reference alone.
_OWN_STEP = """
import os, statistics, sys, time
sys.path.insert(0, {here!r})
import torch
import bench_train
torch.set_num_threads({threads})
bench_train.SIZE = {size!r}
ds, config, model, ui = bench_train._setup()
r, adj = bench_train._reference_from(model, ds)
opt = torch.optim.Adam(r.parameters(), lr=config.lr)
sampler = bench_train.mf_data.BPRSampler(ds.train, config.batch_size, seed=config.seed)
times = []
for b in range({n_rest} + 1):
    batch = sampler.sample()
    t0 = time.perf_counter()
    bench_train._ref_step(r, opt, adj, batch, b == 0, config.batch_size)
    times.append(time.perf_counter() - t0)
print(times[0], statistics.mean(times[1:]))
"""


def _own_process(code: str) -> list[float]:
    import subprocess

    env = dict(os.environ, THP_MEM_ALLOC_ENABLE="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    return [float(x) for x in out.stdout.strip().splitlines()[-1].split()]


def published_own_process(n: int, rounds: int, threads: int) -> float:
    """Median seconds of the published loss + backward in a process of its own, on torch's
    default allocator (after one warm-up round)."""
    return _own_process(_OWN_PROCESS.format(here=os.path.dirname(os.path.abspath(__file__)),
                                            n=n, rounds=rounds, threads=threads))[0]


def ceilings() -> dict[str, float]:
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    mm = 2 * 4096**3 / timeit(lambda: a @ b, rounds=5)
    return {"torch.mm 4096^3 GFLOP/s": mm / 1e9, "copy GB/s": peers.memory_copy_gbps()}


class Cases:
    def __init__(self, quick: bool) -> None:
        gen = torch.Generator().manual_seed(0)
        self.quick = quick
        self.n_con = 3000 if quick else 23033
        self.n_fus = 2000 if quick else 7050
        d = 64
        self.z = [torch.randn(self.n_con, d, generator=gen).requires_grad_() for _ in range(2)]
        self.hs = [torch.randn(self.n_fus, d, generator=gen).requires_grad_() for _ in range(2)]
        self.w = torch.softmax(torch.randn(self.n_fus, 2, generator=gen), 1).requires_grad_()
        shape = (4000, 2500, 25_000) if quick else (39387, 23033, 278_677)
        users, items = peers.clothing_like_interactions(*shape)
        self.graph = mf.bipartite_graph(users, items, shape[0], shape[1], normalization="sym")
        self.x = torch.randn(self.graph.shape[1], d, generator=gen).requires_grad_()
        self.csr = self.graph.to_torch_csr()
        self.feats = torch.rand(self.n_con, d, generator=gen) - 0.3

    # -- contrastive ---------------------------------------------------------------------
    def contrastive(self, impl: str) -> Callable[[], None]:
        z1, z2 = self.z

        def run():
            if impl == "published":
                loss = peers.published_contrastive(z1, z2)
            else:
                loss = mf.contrastive_loss(z1, z2, backend=impl)
            loss.backward()
            z1.grad = z2.grad = None
        return run

    def fusion(self, fused: bool) -> Callable[[], None]:
        hs, w = self.hs, self.w

        def run():
            if fused:
                loss = mf.contrastive_fusion_loss(hs, w, backend="cpp", strategy="fused")
            else:
                h = w[:, :1] * hs[0] + w[:, 1:] * hs[1]
                loss = sum(mf.contrastive_loss(v, h, backend="cpp") for v in hs)
            loss.backward()
            w.grad = hs[0].grad = hs[1].grad = None
        return run

    # -- spmm ----------------------------------------------------------------------------
    def spmm(self, impl: str, backward: bool) -> Callable[[], None]:
        g, x, a = self.graph, self.x, self.csr

        def run():
            x.grad = None
            if not backward:
                with torch.no_grad():
                    return a @ x if impl == "torch_csr" else mf.spmm(g, x, backend=impl)
            y = a @ x if impl == "torch_csr" else mf.spmm(g, x, backend=impl)
            y.backward(torch.ones_like(y))
        return run

    def knn(self, impl: str) -> Callable[[], object]:
        if impl == "faiss":
            x = self.feats.numpy()
            return lambda: peers.faiss_flat_ip(x, 10)
        return lambda: mf.knn_graph(self.feats, 10, backend=impl)


def train_batches(quick: bool, isas: list[str]) -> dict[str, dict[str, float]]:
    """Per ISA: the first batch and the mean of the next ones, ours and the published step
    alternating batch by batch from the same weights (so both see the same machine); the
    reference row is the median over the ISAs' passes."""
    import bench_train

    bench_train.SIZE = "tiny" if quick else "baby"
    bench_train.dataset.cache_clear()
    n_rest = 2 if quick else 6
    ds, config, model, ui = bench_train._setup()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out: dict[str, dict[str, float]] = {}
    ref_runs: list[tuple[float, float]] = []
    for isa in isas:
        model.load_state_dict(state)
        r, adj = bench_train._reference_from(model, ds)
        opt = adam(model.parameters(), config.lr)
        ropt = torch.optim.Adam(r.parameters(), lr=config.lr)
        sampler = bench_train.mf_data.BPRSampler(ds.train, config.batch_size, seed=config.seed)
        ours, ref = [], []
        for b in range(1 + n_rest):
            batch = sampler.sample()
            with isa_select.using(isa):
                t0 = time.perf_counter()
                bench_train._ours_step(model, opt, ui, batch, b == 0)
                ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            bench_train._ref_step(r, ropt, adj, batch, b == 0, config.batch_size)
            ref.append(time.perf_counter() - t0)
        nb = sampler.n_batches
        rest = statistics.mean(ours[1:])
        out[f"cpp[{isa}]"] = {"first": ours[0], "rest": rest, "epoch": ours[0] + (nb - 1) * rest,
                              "ref_rest": statistics.mean(ref[1:])}
        ref_runs.append((ref[0], statistics.mean(ref[1:])))
    first = statistics.median(f for f, _ in ref_runs)
    rest = statistics.median(r for _, r in ref_runs)
    out["published step"] = {"first": first, "rest": rest, "epoch": first + (nb - 1) * rest}
    first, rest = _own_process(_OWN_STEP.format(
        here=os.path.dirname(os.path.abspath(__file__)), threads=torch.get_num_threads(),
        size=bench_train.SIZE, n_rest=n_rest))
    out["published step, own process"] = {"first": first, "rest": rest,
                                          "epoch": first + (nb - 1) * rest}
    model.load_state_dict(state)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--isa", default="all", help="'all' or a comma list of ISAs")
    parser.add_argument("--quick", action="store_true", help="small sizes (a dry run)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", default="", help="comma list of rows to skip: "
                        "train,contrastive,fusion,spmm,knn")
    parser.add_argument("--json", help="write the measurements to this file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        import numba

        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass
    isas = cpp.supported_isas() if args.isa == "all" else args.isa.split(",")
    skip = set(filter(None, args.skip.split(",")))
    from report import machine_info

    result: dict[str, object] = {"machine": machine_info(), "isas": isas,
                                 "ceilings": ceilings()}
    for k, v in result["machine"].items():
        print(f"{k}: {v}")
    for k, v in result["ceilings"].items():
        print(f"{k}: {v:.1f}")
    c = Cases(args.quick)
    rows: dict[str, dict[str, float]] = {}
    slow_rounds = 1
    if "contrastive" not in skip:
        cases = {f"cpp[{isa}]": (isa, c.contrastive("cpp")) for isa in isas}
        cases["published"] = (None, c.contrastive("published"))
        row = time_row(cases, 3, rounds_of={"published": slow_rounds,
                                            "cpp[generic]": slow_rounds})
        row["published, own process"] = published_own_process(c.n_con, slow_rounds,
                                                               args.threads)
        rows[f"contrastive fwd+bwd N={c.n_con}"] = row
    if "fusion" not in skip:
        cases = {}
        for isa in isas:
            cases[f"fused[{isa}]"] = (isa, c.fusion(True))
            cases[f"separate[{isa}]"] = (isa, c.fusion(False))
        # one backend and thread pool: the cases can alternate round by round
        rows[f"fusion fwd+bwd N={c.n_fus}"] = time_row(cases, 9, passes=9, rewarm=False)
    if "spmm" not in skip:
        for backward in (False, True):
            cases = {f"cpp[{isa}]": (isa, c.spmm("cpp", backward)) for isa in isas}
            cases["numba"] = (None, c.spmm("numba", backward))
            cases["torch_csr"] = (None, c.spmm("torch_csr", backward))
            cases.update({f"auto[{isa}]": (isa, c.spmm("auto", backward)) for isa in isas})
            rows[f"spmm {'fwd+bwd' if backward else 'fwd'} bipartite "
                 f"{c.graph.shape[0]} nodes"] = time_row(cases, 30, 5)
    if "knn" not in skip:
        cases = {f"cpp[{isa}]": (isa, c.knn("cpp")) for isa in isas}
        try:
            import faiss  # noqa: F401

            cases["faiss"] = (None, c.knn("faiss"))
        except ImportError:
            pass
        rows[f"knn N={c.n_con} d=64 k=10"] = time_row(cases, 5)
    speedup: dict[str, float] = {}
    if "train" not in skip:
        for name, t in train_batches(args.quick, isas).items():
            rows.setdefault("train batch (Baby) first", {})[name] = t["first"]
            rows.setdefault("train batch (Baby) next, mean", {})[name] = t["rest"]
            rows.setdefault("train epoch (Baby), extrapolated", {})[name] = t["epoch"]
            if "ref_rest" in t:
                speedup[name] = t["ref_rest"] / t["rest"]
        result["train_speedup_same_pass"] = speedup
    result["rows"] = rows
    mm = result["ceilings"]["torch.mm 4096^3 GFLOP/s"]
    print()
    for name, row in rows.items():
        print(f"## {name}")
        for impl, t in row.items():
            extra = ""
            if name.startswith("contrastive") and impl.startswith("cpp"):
                g = 12 * c.n_con**2 * 64 / t / 1e9
                extra = (f"  {g:.0f} GFLOP/s = {100 * g / mm:.0f}% of torch.mm; "
                         f"{row['published'] / t:.1f}x the published loss in this process, "
                         f"{row['published, own process'] / t:.1f}x in its own")
            if name.startswith("train batch (Baby) next") and impl in speedup:
                own = row["published step, own process"] / t
                extra = (f"  {speedup[impl]:.1f}x the published step of the same pass, "
                         f"{own:.1f}x the one in its own process")
            print(f"  {impl:28s} {t * 1e3:10.1f} ms{extra}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
