"""GPU benchmarks of micro_fast's CUDA kernels against the paths users run, on the same GPU.

    python benchmarks/gpu_bench.py --out bench.json --md bench.md     # on a CUDA GPU
    python benchmarks/gpu_bench.py --only knn,spmm                    # some of the cases
    python benchmarks/gpu_bench.py --device cpu --quick               # tiny problems on the CPU

Cases, in the order they run (``--quick``: the same code on tiny problems):

* ``knn``: the kNN item graph, N = 23,033, d = 64 and d = 4,096, k = 10:
  ``knn_graph(x, 10, backend="cuda")`` against the published dense path
  (``peers.official_knn_graph``: dense cosine matrix, ``torch.topk``, a Python loop over the
  index list), the same path's kernels without the loop
  (``peers.official_knn_graph_vectorized``) and a blocked torch search
  (``peers.blocked_torch_topk``: row blocks of mm + ``torch.topk``; on a GPU also with TF32
  allowed); checked by the rows whose 10 neighbours equal the blocked search's;
* ``spmm``: the product with the symmetric-normalized Clothing-size bipartite graph
  (``peers.clothing_like_interactions``: 62,420 nodes, 557k nonzeros), d = 64, forward and
  forward + backward, against ``torch.sparse.mm`` on COO, ``@`` on CSR (cuSPARSE) and a
  gather + ``index_add_`` message pass (``peers.index_add_spmm``);
* ``eval``: full-ranking evaluation at Clothing size (``synthetic("clothing")`` interactions,
  random 64-d embeddings), ``metrics.full_ranking`` against a dense users x items score matrix
  with the training items masked and ``torch.topk`` (as bench_train.py's dense baseline);
* ``knn_1m``: N = 1,000,000, d = 64, micro_fast alone (the dense path would hold an N x N
  float32 matrix, 4 TB), one call, with its peak memory;
* ``contrastive``: MICRO's all-pairs contrastive loss, forward + backward, N = 23,033, d = 64,
  against the published 4096-row chunked loss (``peers.published_contrastive``; on a GPU also
  with TF32 allowed); checked by the loss and gradient differences; and, after every other
  case, the published loss under ``torch.compile`` (``published_compiled``, its first call
  compiles) in a child process under its own deadline (``--compile-deadline``, 90 s, cut to
  what is left of ``--budget``): the report is written before it starts, and past the
  deadline the child is ended and the case says "compile peer: deadline passed after X s"
  instead of a time (its target not assessed);
* ``contrastive_1m``: N = 1,000,000, d = 64, micro_fast alone, one call, with its peak memory
  against the size of one [N, d] view.

A 1M case is skipped when micro_fast's time at N = 23,033 scaled by N^2 would overrun what is
left of ``--budget``; any case is skipped once the budget is spent.

Achieved rates: every timed implementation's nominal work over its median time, and its share
of the matching ceiling below (``nominal_work``): kNN ``2 N^2 d`` flop, the contrastive loss
forward + backward ``12 N^2 d`` flop (two score GEMMs forward, two gradient GEMMs of each
backward), evaluation ``2 U I d`` flop, all on the float32 GEMM ceiling (TF32 for a ``*_tf32``
peer); spmm in GB/s, the bytes it moves at least (``nnz`` indices and values, ``nnz d``
gathered, ``rows d`` written; twice for forward + backward), on the copy bandwidth.

Before the cases, the device's ceilings: float32, TF32 (GPU) and bfloat16 GEMM TFLOP/s at
8192^3 and the copy bandwidth of a 1 GB buffer, so that a case's time can be read against what
the device does. Every op is also run twice and must give bit-identical results (values,
indices, gradients: a target per case), and 256 random rows of the 1M kNN graph are checked
against a float64 brute force over all N keys (rows at a near tie of their 10th and 11th
cosines left out). After its timed calls, one call of micro_fast per case runs under
``torch.profiler``: the operators and kernels that took the most of its own time.

Timing: CUDA events around each call (``time.perf_counter`` on the CPU) after one warm-up
call, whose wall time is reported as the first call (compilation included); the median of up
to ``--rounds`` calls, fewer when the case's ``--case-budget`` seconds run out, at least one.
Peak memory: ``torch.cuda.max_memory_allocated`` over the warm-up call after
``reset_peak_memory_stats``, and its extra over what was allocated before the call (not
measured on the CPU). A failing implementation (out of memory, a compile error) is recorded
with its error and the others still run, but the run then ends with exit status 1: so does a
check that errors or falls outside its tolerance (``CHECK_LIMITS``), a case whose runner
raises, and a target that could not be assessed (no measurement) other than through a
documented resource skip (a 1M case whose predicted time would overrun the budget, or a case
left when the run's budget is spent). ``--strict-targets`` also fails on a missed target.
Every failure is listed under "Failures" in the JSON and markdown. On the CPU the compiled
backend is ``cpp``.
``MICRO_FAST_TUNE`` defaults to 0 here: the built-in defaults, nothing calibrated mid-run.

Output: ``--out`` (JSON: the machine, every measurement, the checks and the targets) and
``--md`` (a table per case and the targets table), both rewritten after every case, so that a
stopped run keeps what it measured. The targets: kNN at least 2x the published path and 1.5x
the blocked torch search, N = 1M in at most 10 s; the contrastive loss at least 3x the
published loss and 2x its ``torch.compile`` form; spmm at least as fast as cuSPARSE CSR;
evaluation faster than the dense path, without a users x items buffer.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import peers  # noqa: E402
import torch  # noqa: E402

import micro_fast as mf  # noqa: E402
from micro_fast import data as mf_data  # noqa: E402
from micro_fast.metrics import evaluated_users, full_ranking  # noqa: E402

K = 10
#: run order; the contrastive case's torch.compile peer runs after all of them
#: (compile_peer_last)
CASES = ("knn", "spmm", "eval", "knn_1m", "contrastive", "contrastive_1m")
#: problem sizes: full (the GPU run) and quick (the CPU rehearsal)
SIZES = {
    False: {"knn": [(23_033, 64), (23_033, 4096)], "knn_1m": (1_000_000, 64),
            "contrastive": (23_033, 64), "contrastive_1m": (1_000_000, 64),
            "spmm": (39_387, 23_033, 278_677), "spmm_d": 64, "eval": "clothing"},
    True: {"knn": [(600, 16), (600, 64)], "knn_1m": (3000, 16),
           "contrastive": (400, 16), "contrastive_1m": (1500, 16),
           "spmm": (2000, 1500, 10_000), "spmm_d": 16, "eval": "small"},
}
KNN_1M_TARGET_S = 10.0
#: the ceilings, measured first: GEMMs of N^3 (full run / quick) and a device copy of MB
CEILING_N = {False: 8192, True: 384}
COPY_MB = {False: 1024, True: 64}
#: rows of the 1M kNN graph checked against a float64 brute force
SAMPLED_ROWS = {False: 256, True: 32}
#: check -> (bound, "min" or "max"): a measured check outside its bound fails the run
CHECK_LIMITS = {"rows_with_same_neighbours_as_blocked_torch": (0.99, "min"),
                "sampled_rows_equal_to_float64_brute_force": (0.99, "min"),
                "loss_rel_diff_vs_published": (1e-4, "max"),
                "grad_rel_diff_vs_published": (1e-3, "max"),
                "max_abs_diff_vs_torch_csr": (1e-4, "max")}
#: |ours - dense| of the evaluation's recall@20 past this fails the run
RECALL_TOLERANCE = 1e-4


def check_failures(case: dict) -> list[str]:
    """What is wrong with a finished case: implementations that raised, checks that raised or
    fell outside their bounds."""
    out = []
    label = case.get("label", case.get("case"))
    for name, r in case.get("impls", {}).items():
        if "error" in r:
            out.append(f"{label}: {name} failed: {r['error'][:200]}")
    checks = case.get("checks", {})
    if "error" in checks:
        out.append(f"{label}: check failed: {checks['error'][:200]}")
    for key, (bound, kind) in CHECK_LIMITS.items():
        if key not in checks:
            continue
        v = checks[key]
        if v is None or (kind == "min" and not v >= bound) or (kind == "max" and not v <= bound):
            out.append(f"{label}: {key} = {v} outside its bound ({kind} {bound:g})")
    if "recall@20" in checks and "recall@20_dense" in checks:
        diff = abs(checks["recall@20"] - checks["recall@20_dense"])
        if not diff <= RECALL_TOLERANCE:
            out.append(f"{label}: recall@20 {checks['recall@20']:.6f} != dense "
                       f"{checks['recall@20_dense']:.6f}")
    return out


class Bench:
    """Device, clock, budgets and the results collected so far."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.backend = args.backend or ("cuda" if self.cuda else "cpp")
        if self.backend not in mf.backends.available():
            raise SystemExit(f"backend {self.backend} is not available: "
                             f"{mf.backends.status().get(self.backend)}")
        self.quick = args.quick
        self.sizes = SIZES[args.quick]
        self.rounds = args.rounds
        self.case_budget = args.case_budget
        self.budget = args.budget
        self.compile_backend = args.compile_backend
        self.strict_targets = getattr(args, "strict_targets", False)
        self.t0 = time.perf_counter()
        self.out, self.md = args.out, args.md
        self.results: dict = {"device": str(self.device), "backend": self.backend,
                              "quick": self.quick, "machine": machine(self.device),
                              "settings": {"rounds": self.rounds, "case_budget_s":
                                           self.case_budget, "budget_s": self.budget,
                                           "compile_backend": self.compile_backend},
                              "cases": [], "targets": [], "failures": []}

    # --- clock and memory ------------------------------------------------------------
    def remaining(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def time_ms(self, fn: Callable[[], object]) -> float:
        if self.cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def measure(self, fn: Callable[[], object], *, rounds: int | None = None,
                warmup: bool = True) -> dict:
        """Median of timed calls after a warm-up call (whose wall time and peak memory are
        recorded); ``warmup=False``: the first call is the one measurement."""
        rounds = rounds or self.rounds
        self.free()
        self.sync()
        base = peak = None
        if self.cuda:
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        t = time.perf_counter()
        first_ms = self.time_ms(fn)
        self.sync()
        first_s = time.perf_counter() - t
        if self.cuda:
            peak = torch.cuda.max_memory_allocated(self.device)
        times = [] if warmup else [first_ms]
        deadline = t + self.case_budget
        while len(times) < rounds and (not times or time.perf_counter() < deadline):
            times.append(self.time_ms(fn))
        out = {"median_ms": statistics.median(times), "min_ms": min(times),
               "rounds": len(times), "first_call_s": first_s,
               "times_ms": [round(x, 4) for x in times]}
        if peak is not None:
            out["peak_mb"] = peak / 2**20
            out["extra_mb"] = (peak - base) / 2**20
        return out

    def kernel_split(self, fn: Callable[[], object], top: int = 6) -> list[dict]:
        """Where one call's time goes: the ``top`` operators and kernels by their own time
        (``torch.profiler``: device time on a GPU, CPU time on the CPU)."""
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
        with profile(activities=acts) as prof:
            fn()
            self.sync()
        attr = "self_device_time_total" if self.cuda else "self_cpu_time_total"
        events = [e for e in prof.key_averages() if getattr(e, attr, 0) > 0]
        events.sort(key=lambda e: getattr(e, attr), reverse=True)
        return [{"name": e.key[:90], "ms": getattr(e, attr) / 1e3, "calls": e.count}
                for e in events[:top]]

    def run(self, impls: dict, name: str, fn: Callable[[], object], **kw) -> None:
        """Measures ``fn`` into ``impls[name]`` (with micro_fast's kernel split after its
        timed calls); an exception is recorded, not raised."""
        try:
            impls[name] = self.measure(fn, **kw)
            if name == "micro_fast" and kw.get("warmup", True):
                impls[name]["kernels"] = self.kernel_split(fn)
        except Exception as exc:  # noqa: BLE001 - OOM or a compile error is a result
            impls[name] = {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}
            traceback.print_exc()
        self.free()
        r = impls[name]
        shown = r.get("error") or (f"{r['median_ms']:.3f} ms median of {r['rounds']}, first "
                                   f"call {r['first_call_s']:.2f} s" + (
                                       f", peak {r['peak_mb']:.0f} MB" if "peak_mb" in r
                                       else ""))
        print(f"  {name:<24} {shown}", flush=True)

    # --- results -------------------------------------------------------------------------
    def add_case(self, case: dict) -> None:
        self.update_case(case)
        self.results["cases"].append(case)
        for why in check_failures(case):
            self.fail(why)
        self.write()

    def update_case(self, case: dict, show: list[str] | None = None) -> None:
        """Speedups and achieved rates of a case's measured implementations; the rates of
        ``show`` (default: all) printed."""
        speedups(case)
        rates(case, self.results.get("ceilings", {}))
        for name, r in case.get("impls", {}).items():
            if "achieved" in r and (show is None or name in show):
                print(f"  {name:<24} {_rate(r)}", flush=True)

    def target(self, name: str, measured: float | None, required: str, met: bool | None,
               unit: str = "x", not_assessed: str | None = None) -> None:
        """Records a target. Without a measurement it is not assessed: a failure unless the
        case it belongs to (the last one added) was skipped for a documented resource reason
        or ``not_assessed`` says why (a deadline passed). Quick runs (tiny problems) assess no
        target."""
        entry = {"name": name, "measured": measured, "unit": unit, "required": required,
                 "met": None if self.quick else met}
        if measured is None and not_assessed:
            entry["not_assessed"] = not_assessed
        elif not self.quick and measured is None:
            last = self.results["cases"][-1] if self.results["cases"] else {}
            if last.get("skipped") and last.get("resource_skip"):
                entry["not_assessed"] = f"resource skip: {last['skipped']}"
            else:
                entry["not_assessed"] = "no measurement"
                self.fail(f"target {name}: not assessed (no measurement)")
        elif not self.quick and met is False and self.strict_targets:
            self.fail(f"target {name}: missed ({measured:.3g}{unit}, required {required})")
        self.results["targets"].append(entry)

    def fail(self, why: str) -> None:
        self.results["failures"].append(why)
        print(f"  FAILURE: {why}", flush=True)

    def write(self) -> None:
        """Both files, each replaced whole (a run stopped mid-write keeps the previous one)."""
        self.results["elapsed_s"] = time.perf_counter() - self.t0
        if self.out:
            _replace(self.out, json.dumps(self.results, indent=1, default=str) + "\n")
        if self.md:
            _replace(self.md, markdown(self.results))


def _replace(path: str, text: str) -> None:
    tmp = Path(f"{path}.part")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def speedups(case: dict) -> None:
    """``case["speedups"][peer]``: the peer's median time over micro_fast's."""
    impls = case.get("impls", {})
    ours = impls.get("micro_fast", {})
    case["speedups"] = {name: r["median_ms"] / ours["median_ms"] for name, r in impls.items()
                        if name != "micro_fast" and "median_ms" in r and "median_ms" in ours}


#: the unit of a rate -> the work per unit (flop per TFLOP, byte per GB)
RATE_SCALE = {"TFLOP/s": 1e12, "GB/s": 1e9}


def nominal_work(case: dict, impl: str) -> tuple[float, str, str] | None:
    """``(work, unit, ceiling)`` of one timed implementation of a case: the op's nominal work
    (the same for every implementation of a case, so that rates rank as times do), the unit of
    its rate and the key of ``results["ceilings"]`` it is read against; None for a case
    without a work model.

    * kNN graph / top-k (``knn``, ``knn_1m``): ``2 m n d`` flop with m = n (every query
      against every key; micro_fast's self-join does about half of it, which counts here as
      speed);
    * contrastive loss forward + backward (``contrastive``, ``contrastive_1m``):
      ``12 N^2 d`` flop: the forward's two score GEMMs (intra-view ``z1 z1^T`` and cross-view
      ``z1 z2^T``, ``2 N^2 d`` flop each) and the backward's two gradient GEMMs per score GEMM
      (``8 N^2 d``), the published loss's products (``work.published_contrastive_macs``);
    * evaluation (``eval``): the users x items score GEMM, ``2 U I d`` flop;
    * spmm (``spmm``): the bytes a product moves at least, ``nnz (index + value)`` read,
      ``nnz d`` elements gathered and ``rows d`` elements written; forward + backward adds
      the transposed product (``cols d`` written), against the copy bandwidth.

    Dense work is read against the float32 GEMM ceiling (SIMT: micro_fast's CUDA kernels use
    no tensor cores), a peer run with TF32 allowed (``*_tf32``) against the TF32 ceiling."""
    kind, n, d = case.get("case"), case.get("n"), case.get("d")
    gemm = "gemm_tf32_tflops" if impl.endswith("_tf32") else "gemm_fp32_tflops"
    if n is None or d is None:
        return None
    if kind in ("knn", "knn_1m"):
        return 2.0 * n * n * d, "TFLOP/s", gemm
    if kind in ("contrastive", "contrastive_1m"):
        return 12.0 * n * n * d, "TFLOP/s", gemm
    if kind == "eval" and case.get("m") is not None:
        return 2.0 * case["m"] * n * d, "TFLOP/s", gemm
    if kind == "spmm" and case.get("nnz") is not None:
        nnz, elem = case["nnz"], case.get("value_bytes", 4)
        pattern = nnz * (case.get("index_bytes", 8) + elem) + nnz * d * elem
        moved = pattern + case.get("rows", n) * d * elem
        if case.get("mode") == "fwd+bwd":
            moved += pattern + case.get("cols", n) * d * elem
        return float(moved), "GB/s", "copy_gbs"
    return None


#: the work model of each case, stated in its report
WORK_MODELS = {
    "knn": "2 N^2 d flop (every query against every key), on the float32 GEMM ceiling (TF32 "
           "for *_tf32)",
    "contrastive": "12 N^2 d flop: the forward's two score GEMMs (z1 z1^T, z1 z2^T: 4 N^2 d) "
                   "and the backward's two gradient GEMMs of each (8 N^2 d), on the float32 "
                   "GEMM ceiling (TF32 for *_tf32)",
    "eval": "2 U I d flop (the users x items score GEMM), on the float32 GEMM ceiling",
    "spmm": "bytes moved at least: nnz (index + value) read + nnz d elements gathered + rows d "
            "written (twice, the transposed product's, for fwd+bwd), on the copy bandwidth",
}
WORK_MODELS["knn_1m"], WORK_MODELS["contrastive_1m"] = WORK_MODELS["knn"], WORK_MODELS[
    "contrastive"]


def rates(case: dict, ceilings: dict) -> None:
    """Each measured implementation's achieved rate (its nominal work over its median time)
    and its share of the matching ceiling measured first: ``achieved``, ``unit``,
    ``ceiling`` and ``of_ceiling`` (None when that ceiling was not measured)."""
    if case.get("case") in WORK_MODELS:
        case["work_model"] = WORK_MODELS[case["case"]]
    for name, r in case.get("impls", {}).items():
        work = nominal_work(case, name)
        if work is None or not r.get("median_ms"):
            continue
        amount, unit, key = work
        achieved = amount / (r["median_ms"] / 1e3) / RATE_SCALE[unit]
        top = ceilings.get(key)
        r.update(work=amount, achieved=achieved, unit=unit, ceiling=key,
                 of_ceiling=achieved / top if isinstance(top, float) and top > 0 else None)


def _rate(r: dict) -> str:
    if "achieved" not in r:
        return "-"
    share = "" if r.get("of_ceiling") is None else (
        f" ({100 * r['of_ceiling']:.3g}% of {r['ceiling'].rsplit('_', 1)[0]})")
    return f"{r['achieved']:.3g} {r['unit']}{share}"


def machine(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "micro_fast": mf.__version__,
            "backends": mf.backends.status(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads()}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, capability=f"{p.major}.{p.minor}",
                    gpu_memory_gib=round(p.total_memory / 2**30, 1),
                    multiprocessors=p.multi_processor_count,
                    matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
    return info


# --- the cases ---------------------------------------------------------------------------------

@functools.cache
def _features(n: int, d: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, d, generator=gen) - 0.3  # correlated, like CNN features (bench_knn)


def _same_neighbours(graph: mf.CSRGraph, idx: torch.Tensor, n: int) -> float | None:
    """Share of rows whose k neighbours (as a set) equal the peer's."""
    if graph.nnz != n * K:
        return None
    ours = graph.indices.view(n, K).sort(dim=1).values
    theirs = idx.sort(dim=1).values.to(ours.device)
    return float((ours == theirs).all(dim=1).float().mean())


def measure_ceilings(b: Bench) -> None:
    """What this device can do, measured before the cases: GEMM TFLOP/s in float32, TF32 (on
    a GPU) and bfloat16 at N^3, and the copy bandwidth (bytes read + written per second)."""
    n, out = CEILING_N[b.quick], {}
    prev = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                                  ("bf16", torch.bfloat16, False)):
            if tf32 and not b.cuda:
                continue  # a tensor-core mode of GPUs
            torch.backends.cuda.matmul.allow_tf32 = tf32
            gen = torch.Generator().manual_seed(3)
            a1 = torch.randn(n, n, generator=gen).to(b.device, dtype)
            a2 = torch.randn(n, n, generator=gen).to(b.device, dtype)
            r = b.measure(lambda a1=a1, a2=a2: a1 @ a2, rounds=5)
            out[f"gemm_{name}_tflops"] = 2.0 * n**3 / (r["min_ms"] / 1e3) / 1e12
            del a1, a2
        src = torch.empty(COPY_MB[b.quick] * 2**20 // 4, device=b.device)
        dst = torch.empty_like(src)
        r = b.measure(lambda src=src, dst=dst: dst.copy_(src), rounds=10)
        out["copy_gbs"] = 2.0 * src.numel() * 4 / (r["min_ms"] / 1e3) / 1e9
        del src, dst
    except Exception as exc:  # noqa: BLE001 - the cases still run
        out["error"] = f"{type(exc).__name__}: {exc}"
        b.fail(f"ceilings: {out['error'][:200]}")
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    out["gemm_n"], out["copy_mb"] = n, COPY_MB[b.quick]
    b.results["ceilings"] = out
    print("ceilings: " + ", ".join(f"{k} {v:.4g}" for k, v in out.items()
                                   if isinstance(v, float)), flush=True)
    b.free()


def _flat(result) -> list[torch.Tensor]:
    """The tensors of an op's result (a tensor, a CSRGraph, a tuple of them, a dict)."""
    if isinstance(result, torch.Tensor):
        return [result.detach()]
    if isinstance(result, mf.CSRGraph):
        return [result.indptr, result.indices, result.values.detach()]
    if isinstance(result, dict):
        return [torch.tensor(float(v)) for _, v in sorted(result.items())
                if isinstance(v, (int, float))]
    if isinstance(result, (tuple, list)):
        return [t for r in result for t in _flat(r)]
    return []


def bitwise_twice(b: Bench, fn: Callable[[], object]) -> bool:
    """Whether two calls give bit-identical results (values, indices and gradients)."""
    first = [t.clone() for t in _flat(fn())]
    second = _flat(fn())
    b.sync()
    return len(first) == len(second) and all(
        x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y)
        for x, y in zip(first, second, strict=True))


def determinism_target(b: Bench, what: str, fn: Callable[[], object]) -> None:
    try:
        same = bitwise_twice(b, fn)
    except Exception as exc:  # noqa: BLE001 - the op's own failure is reported by its case
        print(f"  determinism of {what}: {type(exc).__name__}: {exc}", flush=True)
        same = None
    b.target(f"{what}: bitwise identical twice", None if same is None else float(same),
             "1 (identical)", same, unit="")


def with_tf32(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` with TF32 tensor-core products allowed (torch's default leaves them off)."""
    def run():
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            return fn()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev
    return run


def _triton_runs(b: Bench) -> bool:
    """Whether the triton backend runs this bench's tensors (a GPU and triton installed)."""
    return b.cuda and "triton" in mf.backends.available(b.device)


def case_knn(b: Bench) -> None:
    for n, d in b.sizes["knn"]:
        print(f"kNN graph N={n} d={d} k={K}", flush=True)
        x = _features(n, d).to(b.device)
        impls: dict = {}
        b.run(impls, "micro_fast", lambda x=x: mf.knn_graph(x, K, backend=b.backend))
        if _triton_runs(b):  # the certified tensor-core search, beside the cuda kernels
            b.run(impls, "micro_fast_triton", lambda x=x: mf.knn_graph(x, K, backend="triton"))
        b.run(impls, "published", lambda x=x: peers.official_knn_graph(x, K))
        b.run(impls, "published_without_loop",
              lambda x=x: peers.official_knn_graph_vectorized(x, K))
        b.run(impls, "blocked_torch", lambda x=x: peers.blocked_torch_topk(x, K))
        if b.cuda:  # the peers' products on tensor cores (TF32), as a user may allow
            b.run(impls, "blocked_torch_tf32",
                  with_tf32(lambda x=x: peers.blocked_torch_topk(x, K)))
        checks = {}
        try:
            g = mf.knn_graph(x, K, backend=b.backend)
            _, idx = peers.blocked_torch_topk(x, K)
            checks["rows_with_same_neighbours_as_blocked_torch"] = _same_neighbours(g, idx, n)
            del g, idx
        except Exception as exc:  # noqa: BLE001
            checks["error"] = f"{type(exc).__name__}: {exc}"
        case = {"case": "knn", "label": f"kNN graph, N = {n:,}, d = {d:,}, k = {K}", "n": n,
                "d": d, "impls": impls, "checks": checks}
        b.add_case(case)
        for peer, need in (("published", 2.0), ("blocked_torch", 1.5)):
            s = case["speedups"].get(peer)
            b.target(f"kNN N={n:,} d={d} vs {peer}", s, f">= {need:g}x",
                     None if s is None else s >= need)
        determinism_target(b, f"kNN N={n:,} d={d}",
                           lambda x=x: mf.knn_graph(x, K, backend=b.backend))
        b.write()
        del x
        b.free()


def _large_skip(b: Bench, base_case: str, n: int, d: int) -> tuple[str | None, float | None]:
    """A reason to skip a large case: its time predicted from ``base_case`` at the same ``d``
    (x N^2) would overrun the budget; and the prediction (None without a base)."""
    base = [c for c in b.results["cases"] if c["case"] == base_case and c.get("d") == d
            and "median_ms" in c["impls"].get("micro_fast", {})]
    if not base:
        return None, None
    c = base[0]
    predicted = c["impls"]["micro_fast"]["median_ms"] / 1e3 * (n / c["n"]) ** 2
    if predicted > b.remaining():
        return (f"skipped: {predicted:.0f} s predicted from N = {c['n']:,} (x N^2), "
                f"{b.remaining():.0f} s of the budget left"), predicted
    return None, predicted


def sampled_rows_check(b: Bench, x: torch.Tensor, graph: mf.CSRGraph) -> dict:
    """Correctness at scale: the neighbour sets of random rows against a float64 brute force
    over all N keys; a row whose 10th and 11th exact cosines differ by less than 1e-6 (a near
    tie that float32 may order either way) is left out."""
    checks: dict = {}
    try:
        n = x.shape[0]
        rows = torch.randperm(n, generator=torch.Generator().manual_seed(4))[:SAMPLED_ROWS[
            b.quick]].to(b.device)
        xn = torch.nn.functional.normalize(x.double(), dim=1)
        exact = xn[rows] @ xn.T  # [rows, N] float64
        top = torch.topk(exact, min(K + 1, n), dim=1)
        tie = (top.values[:, K - 1] - top.values[:, K]).abs() < 1e-6 if n > K else \
            torch.zeros(rows.numel(), dtype=torch.bool, device=b.device)
        ours = torch.stack([graph.indices[graph.indptr[r]:graph.indptr[r + 1]].sort().values
                            for r in rows.tolist()])
        equal = (ours == top.indices[:, :K].sort(dim=1).values).all(dim=1)
        kept = ~tie
        checks["sampled_rows"] = int(rows.numel())
        checks["sampled_rows_near_ties_left_out"] = int(tie.sum())
        checks["sampled_rows_equal_to_float64_brute_force"] = (
            float(equal[kept].float().mean()) if bool(kept.any()) else None)
        del xn, exact, top
    except Exception as exc:  # noqa: BLE001
        checks["error"] = f"{type(exc).__name__}: {exc}"
    return checks


def _dense_size(n: int, copies: int = 1) -> str:
    """Size of ``copies`` float32 N x N matrices, in GB or TB."""
    nbytes = copies * 4.0 * n * n
    return f"{nbytes / 1e12:.3g} TB" if nbytes >= 1e12 else f"{nbytes / 1e9:.3g} GB"


def case_knn_1m(b: Bench) -> None:
    n, d = b.sizes["knn_1m"]
    print(f"kNN graph N={n} d={d} k={K} (micro_fast only)", flush=True)
    skip, predicted = _large_skip(b, "knn", n, d)
    case = {"case": "knn_1m", "label": f"kNN graph, N = {n:,}, d = {d}, k = {K}", "n": n,
            "d": d, "impls": {}, "predicted_s": predicted,
            "notes": [f"published dense path: not run, its N x N float32 similarity matrix "
                      f"alone takes {_dense_size(n)}"]}
    if skip:
        case["skipped"], case["resource_skip"] = skip, True
        print(f"  {skip}")
    else:
        if not any(c["case"] == "knn" for c in b.results["cases"]):
            mf.knn_graph(_features(2048, d).to(b.device), K, backend=b.backend)  # warm up
        x = _features(n, d).to(b.device)
        box: dict = {}

        def build():
            box["graph"] = mf.knn_graph(x, K, backend=b.backend)

        b.run(case["impls"], "micro_fast", build, rounds=1, warmup=False)
        if "graph" in box:
            case["checks"] = sampled_rows_check(b, x, box.pop("graph"))
        del x
    b.add_case(case)
    r = case["impls"].get("micro_fast", {})
    secs = r["median_ms"] / 1e3 if "median_ms" in r else None
    b.target(f"kNN N={n:,} d={d} time", secs, f"<= {KNN_1M_TARGET_S:g} s",
             None if secs is None else secs <= KNN_1M_TARGET_S, unit="s")
    b.write()
    b.free()


def _views(n: int, d: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    a, c = torch.randn(n, d, generator=gen), torch.randn(n, d, generator=gen)
    return (a.to(device).requires_grad_(), c.to(device).requires_grad_())


def _fwd_bwd(loss_fn, z1: torch.Tensor, z2: torch.Tensor) -> Callable[[], torch.Tensor]:
    def run():
        z1.grad = z2.grad = None
        loss = loss_fn(z1, z2)
        loss.backward()
        return loss

    return run


def case_contrastive(b: Bench) -> None:
    n, d = b.sizes["contrastive"]
    print(f"contrastive loss N={n} d={d} forward+backward", flush=True)
    z1, z2 = _views(n, d, b.device)
    ours = functools.partial(mf.contrastive_loss, tau=0.5, backend=b.backend)
    impls: dict = {}
    b.run(impls, "micro_fast", _fwd_bwd(ours, z1, z2))
    if _triton_runs(b):  # the fused Triton loss, beside the cuda kernels
        b.run(impls, "micro_fast_triton", _fwd_bwd(
            functools.partial(mf.contrastive_loss, tau=0.5, backend="triton"), z1, z2))
    b.run(impls, "published", _fwd_bwd(peers.published_contrastive, z1, z2))
    if b.cuda:
        b.run(impls, "published_tf32",
              with_tf32(_fwd_bwd(peers.published_contrastive, z1, z2)))
    checks = {"compile_backend": b.compile_backend}
    try:
        values, grads = [], []
        for fn in (ours, peers.published_contrastive):
            z1.grad = z2.grad = None
            loss = fn(z1, z2)
            loss.backward()
            values.append(float(loss.detach()))
            grads.append(z1.grad.detach().clone())
        checks["loss_rel_diff_vs_published"] = abs(values[0] - values[1]) / abs(values[1])
        checks["grad_rel_diff_vs_published"] = float(
            (grads[0] - grads[1]).norm() / grads[1].norm())
        z1.grad = z2.grad = None
        del grads
    except Exception as exc:  # noqa: BLE001
        checks["error"] = f"{type(exc).__name__}: {exc}"
    case = {"case": "contrastive", "label": f"contrastive loss forward + backward, "
            f"N = {n:,}, d = {d}", "n": n, "d": d, "impls": impls, "checks": checks}
    b.add_case(case)  # written before the compiled peer, whose first call compiles
    s = case["speedups"].get("published")
    b.target(f"contrastive N={n:,} vs published", s, ">= 3x", None if s is None else s >= 3.0)

    def loss_and_grads(z1=z1, z2=z2):
        loss = _fwd_bwd(ours, z1, z2)()
        return loss, z1.grad, z2.grad

    determinism_target(b, f"contrastive N={n:,}", loss_and_grads)
    b.write()
    del z1, z2
    b.free()  # its torch.compile peer runs last, in a child process (compile_peer_last)


#: the compile peer's child is not started with less than this many seconds left
MIN_COMPILE_S = 1.0


def compile_peer_command(b: Bench, result: str, deadline_s: float) -> list[str]:
    """The command of the child process that measures the torch.compile peer and writes its
    measurement (``Bench.measure``'s dict, or ``{"error": ...}``) as JSON to ``result``."""
    return [sys.executable, os.path.abspath(__file__), "--compile-child", result,
            "--device", str(b.device), "--backend", b.backend, "--rounds", str(b.rounds),
            "--case-budget", str(b.case_budget), "--compile-backend", b.compile_backend,
            "--compile-deadline", str(deadline_s)] + (["--quick"] if b.quick else [])


def compile_child(args: argparse.Namespace) -> int:
    """The child: the published loss under ``torch.compile``, forward + backward, measured as
    the other implementations are (its first call compiles). It ends itself (SIGALRM) a few
    seconds past its deadline should its parent be gone."""
    if hasattr(signal, "alarm"):
        signal.alarm(int(math.ceil(args.compile_deadline)) + 5)
    b = Bench(args)
    n, d = b.sizes["contrastive"]
    z1, z2 = _views(n, d, b.device)
    compiled = torch.compile(peers.published_contrastive, backend=b.compile_backend)
    impls: dict = {}
    b.run(impls, "published_compiled", _fwd_bwd(compiled, z1, z2))
    _replace(args.compile_child, json.dumps(impls["published_compiled"]) + "\n")
    return 0


def _end_group(proc: subprocess.Popen) -> None:
    """Ends the child started in a session of its own and whatever it started (inductor's
    compile workers): SIGTERM, then SIGKILL after 5 s."""
    for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def run_compile_child(b: Bench, deadline_s: float) -> dict:
    """The compile peer's measurement from its child process, or, when ``deadline_s`` passes
    first, the child ended and ``{"note": "compile peer: deadline passed after X s", ...}``."""
    with tempfile.TemporaryDirectory(prefix="gpu_bench_compile_") as tmp:
        result = os.path.join(tmp, "compiled.json")
        t = time.perf_counter()
        proc = subprocess.Popen(compile_peer_command(b, result, deadline_s),
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=deadline_s)
        except subprocess.TimeoutExpired:
            _end_group(proc)
            waited = time.perf_counter() - t
            return {"deadline_s": deadline_s, "deadline_passed_s": waited,
                    "note": f"compile peer: deadline passed after {waited:.1f} s"}
        try:
            r = json.loads(Path(result).read_text())
        except (OSError, ValueError):
            r = {"error": f"the compile peer's child process exited {rc} without a result"}
    r["child_s"] = time.perf_counter() - t
    return r


def compile_peer_last(b: Bench, deadline_s: float) -> None:
    """The contrastive case's torch.compile peer (``published_compiled``), after every other
    case: in a child process, bounded by ``deadline_s`` (cut to what is left of the run's
    budget), so that a slow compile costs at most that. Everything else is written before it
    starts; past the deadline the child is ended and the case records "compile peer:
    deadline passed after X s" instead of a time (its target not assessed, not a failure)."""
    case = next((c for c in b.results["cases"] if c["case"] == "contrastive"), None)
    if case is None or case.get("skipped") or case.get("failed"):
        return
    n, name = case["n"], "published_compiled"
    limit = min(deadline_s, b.remaining())
    if limit < MIN_COMPILE_S:
        r = {"note": f"compile peer: not run, {max(b.remaining(), 0):.0f} s of the run's "
                     f"budget left"}
    else:
        print(f"contrastive N={n} published under torch.compile ({b.compile_backend}), last, "
              f"in a child process, deadline {limit:.0f} s", flush=True)
        case["impls"][name] = {"note": f"compile peer: running, deadline {limit:.0f} s"}
        b.write()  # the rest of the report is on disk before the compile starts
        r = run_compile_child(b, limit)
    case["impls"][name] = r
    case["checks"]["compile_deadline_s"] = limit
    if "median_ms" not in r:
        print(f"  {name:<24} {r.get('error') or r.get('note')}", flush=True)
    b.update_case(case, [name])
    if "error" in r:
        b.fail(f"{case['label']}: {name} failed: {r['error'][:200]}")
    s = case["speedups"].get(name)
    b.target(f"contrastive N={n:,} vs {name}", s, ">= 2x", None if s is None else s >= 2.0,
             not_assessed=None if "error" in r else r.get("note"))
    b.write()


def case_contrastive_1m(b: Bench) -> None:
    n, d = b.sizes["contrastive_1m"]
    print(f"contrastive loss N={n} d={d} forward+backward (micro_fast only)", flush=True)
    skip, predicted = _large_skip(b, "contrastive", n, d)
    view_mb = n * d * 4 / 2**20
    case = {"case": "contrastive_1m", "label": f"contrastive loss forward + backward, "
            f"N = {n:,}, d = {d}", "n": n, "d": d, "impls": {}, "predicted_s": predicted,
            "view_mb": view_mb,
            "notes": [f"published path: not run, it keeps [4096, N] exp-matrices of every "
                      f"chunk for autograd, 2 N^2 float32 = {_dense_size(n, 2)}"]}
    if skip:
        case["skipped"], case["resource_skip"] = skip, True
        print(f"  {skip}")
    else:
        z1, z2 = _views(n, d, b.device)
        if not any(c["case"] == "contrastive" for c in b.results["cases"]):
            w1, w2 = _views(2048, d, b.device)  # warm up
            _fwd_bwd(functools.partial(mf.contrastive_loss, backend=b.backend), w1, w2)()
        fn = _fwd_bwd(functools.partial(mf.contrastive_loss, tau=0.5, backend=b.backend),
                      z1, z2)
        b.run(case["impls"], "micro_fast", fn, rounds=1, warmup=False)
        r = case["impls"]["micro_fast"]
        if "extra_mb" in r:
            case["notes"].append(f"extra memory {r['extra_mb']:.0f} MB = "
                                 f"{r['extra_mb'] / view_mb:.2f} x one [N, d] view "
                                 f"({view_mb:.0f} MB)")
        del z1, z2
    b.add_case(case)
    b.free()


def case_spmm(b: Bench) -> None:
    n_users, n_items, nnz = b.sizes["spmm"]
    d = b.sizes["spmm_d"]
    users, items = peers.clothing_like_interactions(n_users, n_items, nnz)
    g = mf.bipartite_graph(users, items, n_users, n_items, normalization="sym").to(b.device)
    coo, csr = g.to_torch_coo(), g.to_torch_csr()
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(g.shape[1], d, generator=gen).to(b.device)
    rows, cols = g.row_indices(), g.indices
    for mode in ("fwd", "fwd+bwd"):
        print(f"spmm bipartite N={g.shape[0]} nnz={g.nnz} d={d} {mode}", flush=True)
        backward = mode == "fwd+bwd"
        x = x0.clone().requires_grad_(backward)
        products = {"micro_fast": lambda x: mf.spmm(g, x, backend=b.backend),
                    "torch_coo": lambda x: torch.sparse.mm(coo, x),
                    "torch_csr": lambda x: csr @ x,
                    "index_add": lambda x: peers.index_add_spmm(rows, cols, g.values, x,
                                                                g.shape[0])}
        impls: dict = {}
        for name, prod in products.items():
            if backward:
                def fn(prod=prod, x=x):
                    x.grad = None
                    y = prod(x)
                    y.backward(torch.ones_like(y))
            else:
                def fn(prod=prod, x=x):
                    return prod(x)
            b.run(impls, name, fn, rounds=max(b.rounds, 30))
        checks = {}
        try:
            with torch.no_grad():
                y, ref = mf.spmm(g, x0, backend=b.backend), csr @ x0
            checks["max_abs_diff_vs_torch_csr"] = float((y - ref).abs().max())
        except Exception as exc:  # noqa: BLE001
            checks["error"] = f"{type(exc).__name__}: {exc}"
        size = "" if b.quick else "Clothing-size "
        case = {"case": "spmm", "mode": mode, "label": f"spmm {mode}, {size}symmetric-"
                f"normalized bipartite graph (N = {g.shape[0]:,}, {g.nnz:,} nonzeros), d = {d}",
                "n": g.shape[0], "nnz": g.nnz, "d": d, "rows": g.shape[0], "cols": g.shape[1],
                "index_bytes": g.indices.element_size(), "value_bytes": x0.element_size(),
                "impls": impls, "checks": checks}
        b.add_case(case)
        s = case["speedups"].get("torch_csr")
        b.target(f"spmm {mode} vs torch_csr", s, ">= 1x", None if s is None else s >= 1.0)

        def product(x=x, backward=backward):
            x.grad = None
            y = mf.spmm(g, x, backend=b.backend)
            if backward:
                y.backward(torch.ones_like(y))
                return y, x.grad
            return y

        determinism_target(b, f"spmm {mode}", product)
        b.write()
    b.free()


def case_eval(b: Bench) -> None:
    size = b.sizes["eval"]
    ds = mf_data.synthetic(size, dims={"image": 8}, seed=0)  # interactions only matter here
    gen = torch.Generator().manual_seed(2)
    users = (0.1 * torch.randn(ds.n_users, 64, generator=gen)).to(b.device)
    items = (0.1 * torch.randn(ds.n_items, 64, generator=gen)).to(b.device)
    train, valid = ds.train.to(b.device), ds.valid.to(b.device)
    ks = (10, 20, 50)
    target_users = evaluated_users(valid)
    train_rows, train_cols = train.row_indices(), train.indices
    print(f"evaluation {size}: {target_users.numel()} users x {ds.n_items} items", flush=True)

    def dense_eval():
        scores = users[target_users] @ items.T
        pos = torch.full((ds.n_users,), -1, dtype=torch.int64, device=b.device)
        pos[target_users] = torch.arange(target_users.numel(), device=b.device)
        r = pos[train_rows]
        keep = r >= 0
        scores[r[keep], train_cols[keep]] = -float("inf")
        return torch.topk(scores, max(ks), dim=1)

    impls: dict = {}
    b.run(impls, "micro_fast",
          lambda: full_ranking(users, items, train, valid, ks, backend=b.backend), rounds=5)
    b.run(impls, "dense_torch", dense_eval, rounds=5)
    dense_mb = target_users.numel() * ds.n_items * 4 / 2**20
    checks: dict = {"dense_score_matrix_mb": dense_mb}
    try:
        ours = full_ranking(users, items, train, valid, ks, backend=b.backend)
        _, top = dense_eval()
        n_items = ds.n_items
        tgt = valid.row_indices() * n_items + valid.indices
        keys = (target_users[:, None] * n_items + top[:, :20]).reshape(-1)
        pos = torch.searchsorted(tgt, keys).clamp_max(tgt.numel() - 1)
        hits = (tgt[pos] == keys).reshape(-1, 20).sum(1).double()
        n_target = (valid.indptr[target_users + 1] - valid.indptr[target_users]).double()
        dense_recall = float((hits / n_target).mean())
        checks["recall@20"] = ours["recall@20"]
        checks["recall@20_dense"] = dense_recall
        checks["users"] = ours["users"]
        del top
    except Exception as exc:  # noqa: BLE001
        checks["error"] = f"{type(exc).__name__}: {exc}"
    case = {"case": "eval", "label": f"full-ranking evaluation, {size} "
            f"({target_users.numel():,} users x {ds.n_items:,} items, ks {ks})",
            "n": ds.n_items, "m": target_users.numel(), "d": users.shape[1], "impls": impls,
            "checks": checks}
    b.add_case(case)
    s = case["speedups"].get("dense_torch")
    b.target("evaluation vs dense", s, "> 1x", None if s is None else s > 1.0)
    determinism_target(b, "evaluation",
                       lambda: full_ranking(users, items, train, valid, ks, backend=b.backend))
    extra = impls.get("micro_fast", {}).get("extra_mb")
    if extra is not None:
        b.target("evaluation extra memory / users x items buffer", extra / dense_mb,
                 "< 0.25 (no users x items buffer)", extra / dense_mb < 0.25, unit="")
    b.write()
    b.free()


RUNNERS = {"knn": case_knn, "knn_1m": case_knn_1m, "contrastive": case_contrastive,
           "contrastive_1m": case_contrastive_1m, "spmm": case_spmm, "eval": case_eval}


# --- markdown ----------------------------------------------------------------------------------

def _num(v, fmt: str = ".3g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, fmt)


def markdown(res: dict) -> str:
    m = res.get("machine", {})
    where = m.get("gpu") or f"CPU ({m.get('cpus')} logical CPUs)"
    lines = [f"Device: {where}, backend `{res['backend']}`, torch {m.get('torch')}"
             + (f", CUDA {m.get('cuda')}" if m.get("gpu") else "")
             + (" -- quick problems (a rehearsal of the script, not a benchmark)"
                if res.get("quick") else ""), ""]
    c = res.get("ceilings", {})
    if c:
        shown = [f"{name} {c[key]:.3g} TFLOP/s" for name, key in (
            ("GEMM fp32", "gemm_fp32_tflops"), ("TF32", "gemm_tf32_tflops"),
            ("bf16", "gemm_bf16_tflops")) if isinstance(c.get(key), float)]
        if isinstance(c.get("copy_gbs"), float):
            shown.append(f"copy {c['copy_gbs']:.4g} GB/s")
        lines += [f"Ceilings measured first ({c.get('gemm_n')}^3 GEMMs, a {c.get('copy_mb')} MB "
                  "copy): " + ", ".join(shown), ""]
    if res["targets"]:
        lines += ["| target | measured | required | met |", "| --- | --- | --- | --- |"]
        for t in res["targets"]:
            met = (t.get("not_assessed", "-") if t["met"] is None
                   else ("yes" if t["met"] else "NO"))
            shown = "-" if t["measured"] is None else f"{t['measured']:.3g}{t['unit']}"
            lines.append(f"| {t['name']} | {shown} | {t['required']} | {met} |")
        lines.append("")
    failures = res.get("failures", [])
    lines += ["### Failures", ""]
    lines += [f"- {f}" for f in failures] if failures else ["None."]
    lines.append("")
    for case in res["cases"]:
        lines += [f"### {case['label']}", ""]
        if case.get("skipped"):
            lines += [case["skipped"] + (" (resource skip)" if case.get("resource_skip")
                                         else ""), ""]
        if case.get("failed"):
            lines += [f"FAILED: {case['failed']}", ""]
        if case["impls"]:
            lines += ["| implementation | median ms | min ms | rounds | first call s | "
                      "peak MB | extra MB | micro_fast speedup | achieved (of ceiling) |",
                      "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
            for name, r in case["impls"].items():
                if "median_ms" not in r:  # an error, or a deadline passed
                    why = (f"error: {r['error'][:120]}" if "error" in r
                           else r.get("note", "not measured"))
                    lines.append(f"| {name} | {why} | | | | | | | |")
                    continue
                speed = "1" if name == "micro_fast" else _num(case["speedups"].get(name))
                lines.append(f"| {name} | {_num(r['median_ms'], '.4g')} | "
                             f"{_num(r['min_ms'], '.4g')} | {r['rounds']} | "
                             f"{_num(r['first_call_s'], '.3g')} | "
                             f"{_num(r.get('peak_mb'), '.0f')} | "
                             f"{_num(r.get('extra_mb'), '.0f')} | {speed} | {_rate(r)} |")
            lines.append("")
            model = case.get("work_model")
            if model:
                lines.append(f"- work: {model}")
        split = case["impls"].get("micro_fast", {}).get("kernels")
        if split:
            lines.append("- micro_fast, one call, by own time: " + ", ".join(
                f"`{k['name']}` {k['ms']:.3g} ms ({k['calls']}x)" for k in split))
        for key, v in case.get("checks", {}).items():
            lines.append(f"- {key}: {_num(v, '.4g') if isinstance(v, float) else v}")
        for note in case.get("notes", []):
            lines.append(f"- {note}")
        lines.append("")
    lines.append(f"elapsed {res.get('elapsed_s', 0):.0f} s")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--backend", default=None, help="micro_fast backend (default: cuda on a "
                   "CUDA device, cpp on the CPU)")
    p.add_argument("--quick", action="store_true", help="tiny problems (a rehearsal)")
    p.add_argument("--only", default=",".join(CASES), help=f"comma list of {CASES}")
    p.add_argument("--rounds", type=int, default=10, help="timed calls per implementation")
    p.add_argument("--case-budget", type=float, default=None,
                   help="seconds of timed calls per implementation (default 6, quick 1)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for the whole run: later cases are skipped past it "
                        "(default 120, quick 60)")
    p.add_argument("--compile-backend", default=None,
                   help="torch.compile backend of the compiled peer (default inductor; "
                        "quick: eager, to keep the rehearsal short)")
    p.add_argument("--compile-deadline", type=float, default=90.0,
                   help="seconds for the torch.compile peer, run last in a child process "
                        "(its compile included; cut to what is left of --budget; default 90)")
    p.add_argument("--compile-child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--strict-targets", action="store_true",
                   help="a missed target fails the run too (not only an unassessed one)")
    p.add_argument("--out", default=None, help="JSON file")
    p.add_argument("--md", default=None, help="markdown file")
    args = p.parse_args(argv)
    args.case_budget = args.case_budget or (1.0 if args.quick else 6.0)
    args.budget = args.budget or (60.0 if args.quick else 120.0)
    args.compile_backend = args.compile_backend or ("eager" if args.quick else "inductor")
    only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = [c for c in only if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {unknown}; cases: {', '.join(CASES)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no CUDA device (use --device cpu)")
    os.environ.setdefault("MICRO_FAST_TUNE", "0")
    if args.compile_child:
        return compile_child(args)
    b = Bench(args)
    print(f"gpu_bench: device {b.device}, backend {b.backend}, cases {only}, budget "
          f"{b.budget:.0f} s", flush=True)
    measure_ceilings(b)
    for name in CASES:
        if name not in only:
            continue
        if b.remaining() <= 0:
            b.results["cases"].append({"case": name, "label": name, "impls": {},
                                       "skipped": "skipped: the run's budget is spent",
                                       "resource_skip": True})
            b.write()
            continue
        try:
            RUNNERS[name](b)
        except Exception as exc:  # noqa: BLE001 - the next case still runs
            traceback.print_exc()
            b.results["cases"].append({"case": name, "label": name, "impls": {},
                                       "failed": f"{type(exc).__name__}: {exc}"})
            b.fail(f"case {name} raised {type(exc).__name__}: {exc}")
            b.write()
            b.free()
    if "contrastive" in only:
        try:
            compile_peer_last(b, args.compile_deadline)
        except Exception as exc:  # noqa: BLE001 - what was measured is kept
            traceback.print_exc()
            b.fail(f"compile peer raised {type(exc).__name__}: {exc}")
    b.write()
    print(markdown(b.results))
    failures = b.results["failures"]
    if failures:
        print(f"gpu_bench: {len(failures)} failure(s):", file=sys.stderr)
        for why in failures:
            print(f"  {why}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
