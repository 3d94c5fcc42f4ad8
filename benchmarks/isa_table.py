"""The hot paths of a MICRO training run, per instruction set of the compiled core, against
their peers and this machine's ceilings, all in one process.

    python benchmarks/isa_table.py [--isa all|avx512,avx2,generic] [--quick] [--json OUT]

Every compiled (cpp) case runs once per instruction set this CPU supports
(``_C.set_simd_isa``), so an AVX-512 machine also measures the AVX2 and portable builds; the
peers (the published MICRO step and chunked loss, torch CSR, numba, FAISS) do not depend on it
and run once. Rows:

* one MICRO training batch at Baby size (19,445 users, 7,050 items, 4096-d image and 1024-d
  text features) against the published step (reference_micro.py): the graph-rebuilding first
  batch and the mean of the next ones, alternating batch by batch from the same weights, both
  sides with the same optimizer (torch's fused Adam, ``micro_fast.train.adam``); the published
  step also with torch's default Adam (as the published code runs), and in a process of its
  own on torch's default allocator (same data, weights, batches and fused Adam). No epoch is
  extrapolated from these batches;
* the contrastive loss forward + backward at N = 23,033, d = 64, against the published chunked
  loss, with its achieved rate (the multiply-adds the kernel performs, benchmarks/work.py) as
  a share of torch.mm 4096^3 measured in the same run. The published loss runs twice: in this
  process, where importing micro_fast has put torch's large tensors on transparent huge pages
  (which saves the published loss most of its page faults), and in a process of its own on
  torch's default allocator, as the published code runs;
* the two-view fusion loss at N = 7,050, fused kernel against two separate losses;
* spmm forward and forward + backward on the Clothing-size bipartite graph: cpp, numba,
  torch CSR and what ``backend="auto"`` runs;
* the kNN graph at N = 23,033, d = 64, k = 10, against FAISS ``IndexFlatIP``: the self-join
  (where our kernel computes each pair once and FAISS all of them) and 23,033 other queries
  against the same keys (no symmetry on either side).

``--quick`` shrinks every size (a dry run of the script). The cases of a row are timed in
three passes (each case's rounds back to back after a warm-up, in every pass), so a slow
spell of a shared machine hits them alike; medians. Every case of a row, peers included, gets
the same warm-up calls and rounds (the own-process peers too, inside their process).
``--artifact NAME`` writes NAME.md + NAME.json with the provenance header
(benchmarks/provenance.py). A case that raises stops the script with a non-zero exit.
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
import provenance  # noqa: E402
import torch  # noqa: E402
import work  # noqa: E402

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
# its default allocator (no THP_MEM_ALLOC_ENABLE), as the published code runs. The same passes,
# warm-ups and rounds as time_row gives the in-process cases.
_OWN_PROCESS = """
import os, statistics, sys, time
sys.path.insert(0, {here!r})
import torch
import peers
torch.set_num_threads({threads})
gen = torch.Generator().manual_seed(0)
z1, z2 = (torch.randn({n}, 64, generator=gen).requires_grad_() for _ in range(2))
def run():
    peers.published_contrastive(z1, z2).backward()
    z1.grad = z2.grad = None
times = []
for p in range({passes}):
    share = {rounds} // {passes} + (1 if p < {rounds} % {passes} else 0)
    if share == 0:
        continue
    for _ in range({warmup}):
        run()
    for _ in range(share):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
print(statistics.median(times))
"""


# The published MICRO step in a fresh interpreter with THP_MEM_ALLOC_ENABLE=0 (torch's default
# allocator): the same data, weights, batches and fused Adam as train_batches, the reference
# alone (its first batch rebuilds the graph, the next ones are averaged).
_OWN_STEP = """
import os, statistics, sys, time
sys.path.insert(0, {here!r})
import torch
import bench_train
from micro_fast.train import adam
torch.set_num_threads({threads})
bench_train.SIZE = {size!r}
ds, config, model, ui = bench_train._setup()
r, adj = bench_train._reference_from(model, ds)
opt = adam(r.parameters(), config.lr)
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
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"the own-process peer failed (exit {out.returncode}):\n"
                           f"{out.stderr[-2000:]}")
    return [float(x) for x in out.stdout.strip().splitlines()[-1].split()]


def published_own_process(n: int, rounds: int, threads: int, warmup: int = 1,
                          passes: int = 3) -> float:
    """Median seconds of the published loss + backward in a process of its own, on torch's
    default allocator, timed as time_row times the in-process cases."""
    return _own_process(_OWN_PROCESS.format(here=os.path.dirname(os.path.abspath(__file__)),
                                            n=n, rounds=rounds, threads=threads,
                                            warmup=warmup, passes=passes))[0]


def ceilings() -> dict[str, float]:
    """The fastest of 5 torch.mm 4096^3 (after a warm-up) and the measured copy rate."""
    a, b = torch.randn(4096, 4096), torch.randn(4096, 4096)
    a @ b
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    mm = 2 * 4096**3 / best
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

    def search(self, impl: str) -> Callable[[], object]:
        """Other unit-norm queries (as many as the keys) against the normalized features."""
        keys = torch.nn.functional.normalize(self.feats, dim=1)
        gen = torch.Generator().manual_seed(1)
        q = torch.nn.functional.normalize(torch.rand(self.n_con, keys.shape[1], generator=gen)
                                          - 0.3, dim=1)
        if impl == "faiss":
            qn, kn = q.numpy(), keys.numpy()
            return lambda: peers.faiss_flat_ip_search(qn, kn, 10)
        return lambda: mf.topk_similarity(q, keys, 10, backend=impl)


def train_batches(quick: bool, isas: list[str]) -> dict[str, dict[str, float]]:
    """Per ISA: the first batch and the mean of the next ones, ours and the published step
    alternating batch by batch from the same weights, both with torch's fused Adam (so both see
    the same machine and the same optimizer); the reference row is the median over the ISAs'
    passes. In the first pass a second copy of the published step updates with torch's default
    Adam (as the published code runs) on the same batches."""
    import bench_train

    bench_train.SIZE = "tiny" if quick else "baby"
    bench_train.dataset.cache_clear()
    n_rest = 2 if quick else 6
    ds, config, model, ui = bench_train._setup()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out: dict[str, dict[str, float]] = {}
    ref_runs: list[tuple[float, float]] = []
    default_runs: list[float] = []
    for p, isa in enumerate(isas):
        model.load_state_dict(state)
        r, adj = bench_train._reference_from(model, ds)
        opt = adam(model.parameters(), config.lr)
        ropt = adam(r.parameters(), config.lr)
        rd = dopt = None
        if p == 0:
            rd, _ = bench_train._reference_from(model, ds)
            dopt = torch.optim.Adam(rd.parameters(), lr=config.lr)
        sampler = bench_train.mf_data.BPRSampler(ds.train, config.batch_size, seed=config.seed)
        ours, ref, ref_default = [], [], []
        for b in range(1 + n_rest):
            batch = sampler.sample()
            with isa_select.using(isa):
                t0 = time.perf_counter()
                bench_train._ours_step(model, opt, ui, batch, b == 0)
                ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            bench_train._ref_step(r, ropt, adj, batch, b == 0, config.batch_size)
            ref.append(time.perf_counter() - t0)
            if rd is not None:
                t0 = time.perf_counter()
                bench_train._ref_step(rd, dopt, adj, batch, b == 0, config.batch_size)
                ref_default.append(time.perf_counter() - t0)
        out[f"cpp[{isa}]"] = {"first": ours[0], "rest": statistics.mean(ours[1:]),
                              "ref_rest": statistics.mean(ref[1:])}
        ref_runs.append((ref[0], statistics.mean(ref[1:])))
        if ref_default:
            default_runs = ref_default
        del r, rd, ropt, dopt
    out["published step"] = {"first": statistics.median(f for f, _ in ref_runs),
                             "rest": statistics.median(x for _, x in ref_runs)}
    out["published step, default Adam"] = {"first": default_runs[0],
                                           "rest": statistics.mean(default_runs[1:])}
    first, rest = _own_process(_OWN_STEP.format(
        here=os.path.dirname(os.path.abspath(__file__)), threads=torch.get_num_threads(),
        size=bench_train.SIZE, n_rest=n_rest))
    out["published step, own process"] = {"first": first, "rest": rest}
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
    provenance.add_output_args(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        import numba

        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass
    isas = cpp.supported_isas() if args.isa == "all" else args.isa.split(",")
    skip = set(filter(None, args.skip.split(",")))
    result: dict[str, object] = {"isas": isas, "ceilings": ceilings(), "quick": args.quick}
    for k, v in result["ceilings"].items():
        print(f"{k}: {v:.1f}")
    c = Cases(args.quick)
    rows: dict[str, dict[str, float]] = {}
    notes: dict[str, dict[str, str]] = {}
    rounds = 3
    mm = result["ceilings"]["torch.mm 4096^3 GFLOP/s"]
    if "contrastive" not in skip:
        name = f"contrastive fwd+bwd N={c.n_con} d=64"
        cases = {f"cpp[{isa}]": (isa, c.contrastive("cpp")) for isa in isas}
        cases["published"] = (None, c.contrastive("published"))
        row = time_row(cases, rounds)
        row["published, own process"] = published_own_process(c.n_con, rounds, args.threads)
        rows[name] = row
        macs = work.contrastive_macs(c.n_con, 64, True)
        pub = work.published_contrastive_macs(c.n_con, 64, True)
        notes[name] = {}
        for impl, t in row.items():
            g = work.gflops(pub if impl.startswith("published") else macs, t)
            extra = f"{g:.0f} GFLOP/s = {100 * g / mm:.0f}% of torch.mm"
            if impl.startswith("cpp"):
                extra += (f"; {row['published'] / t:.1f}x the published loss in this process, "
                          f"{row['published, own process'] / t:.1f}x in its own")
            notes[name][impl] = extra
    if "fusion" not in skip:
        name = f"fusion fwd+bwd N={c.n_fus} d=64, two views"
        cases = {}
        for isa in isas:
            cases[f"fused[{isa}]"] = (isa, c.fusion(True))
            cases[f"separate[{isa}]"] = (isa, c.fusion(False))
        # one backend and thread pool: the cases can alternate round by round
        row = time_row(cases, 9, passes=9, rewarm=False)
        rows[name] = row
        notes[name] = {}
        for impl, t in row.items():
            macs = (work.fusion_macs(c.n_fus, 64, 2, True) if impl.startswith("fused")
                    else 2 * work.contrastive_macs(c.n_fus, 64, True))
            g = work.gflops(macs, t)
            extra = f"{g:.0f} GFLOP/s = {100 * g / mm:.0f}% of torch.mm"
            if impl.startswith("fused"):
                sep = row["separate" + impl[len("fused"):]]
                extra += f"; fused / separate {t / sep:.2f}"
            notes[name][impl] = extra
    if "spmm" not in skip:
        for backward in (False, True):
            cases = {f"cpp[{isa}]": (isa, c.spmm("cpp", backward)) for isa in isas}
            cases["numba"] = (None, c.spmm("numba", backward))
            cases["torch_csr"] = (None, c.spmm("torch_csr", backward))
            cases.update({f"auto[{isa}]": (isa, c.spmm("auto", backward)) for isa in isas})
            name = (f"spmm {'fwd+bwd' if backward else 'fwd'} bipartite "
                    f"{c.graph.shape[0]} nodes d=64")
            rows[name] = time_row(cases, 30, 5)
            notes[name] = {impl: f"{rows[name]['torch_csr'] / t:.1f}x torch CSR"
                           for impl, t in rows[name].items() if impl != "torch_csr"}
    if "knn" not in skip:
        for what, fn in (("self-join (knn_graph; ours computes each pair once)", c.knn),
                         ("queries != keys (topk_similarity; no symmetry on either side)",
                          c.search)):
            cases = {f"cpp[{isa}]": (isa, fn("cpp")) for isa in isas}
            try:
                import faiss  # noqa: F401

                cases["faiss"] = (None, fn("faiss"))
            except ImportError as exc:
                raise SystemExit("the kNN rows need faiss-cpu (pip install '.[bench]')") from exc
            name = f"knn N={c.n_con} d=64 k=10, {what}"
            rows[name] = time_row(cases, 5)
            self_join = fn == c.knn
            notes[name] = {}
            for impl, t in rows[name].items():
                macs = (work.topk_macs(c.n_con, None, 64) if self_join and impl != "faiss"
                        else work.dense_macs(c.n_con, c.n_con, 64))
                g = work.gflops(macs, t)
                extra = f"{g:.0f} GFLOP/s = {100 * g / mm:.0f}% of torch.mm"
                if impl != "faiss":
                    extra += f"; {rows[name]['faiss'] / t:.2f}x FAISS"
                notes[name][impl] = extra
    speedup: dict[str, float] = {}
    if "train" not in skip:
        first_row = "train batch (Baby) first, rebuilding"
        rest_row = "train batch (Baby) next, mean"
        notes[rest_row] = {}
        for name, t in train_batches(args.quick, isas).items():
            rows.setdefault(first_row, {})[name] = t["first"]
            rows.setdefault(rest_row, {})[name] = t["rest"]
            if "ref_rest" in t:
                speedup[name] = t["ref_rest"] / t["rest"]
        for impl, t in rows[rest_row].items():
            if impl in speedup:
                own = rows[rest_row]["published step, own process"] / t
                dflt = rows[rest_row]["published step, default Adam"] / t
                notes[rest_row][impl] = (
                    f"{speedup[impl]:.1f}x the published step of the same pass (same fused "
                    f"Adam), {dflt:.1f}x with its default Adam, {own:.1f}x in its own process")
        result["train_speedup_same_pass"] = speedup
    result["rows"] = rows
    result["notes"] = notes
    lines = [f"Ceilings measured in this run: torch.mm 4096^3 {mm:.0f} GFLOP/s, copy "
             f"{result['ceilings']['copy GB/s']:.0f} GB/s. Rates count the multiply-adds each "
             "implementation performs (benchmarks/work.py). ISAs: " + ", ".join(isas) + "."
             + (" QUICK: small sizes, a dry run, not a measurement." if args.quick else ""), ""]
    print()
    for name, row in rows.items():
        print(f"## {name}")
        lines += [f"## {name}", "", "| case | ms | |", "|---|---|---|"]
        for impl, t in row.items():
            extra = notes.get(name, {}).get(impl, "")
            print(f"  {impl:28s} {t * 1e3:10.1f} ms  {extra}")
            lines.append(f"| {impl} | {t * 1e3:.1f} | {extra} |")
        lines.append("")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    if args.artifact:
        md, js = provenance.write_artifact(
            args.artifact, "Hot paths of a MICRO run per instruction set (isa_table.py)",
            "\n".join(lines), result, args.results_dir, threads=args.threads)
        print(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
