"""Regenerates every result the README cites, one step per artifact.

    python benchmarks/make_results.py --list                 # the steps, their artifacts and
                                                             # expected durations
    python benchmarks/make_results.py                        # every step, in order
    python benchmarks/make_results.py --only freedom-epoch   # one step (or a comma list)
    python benchmarks/make_results.py --lock /tmp/x.lock     # hold a lock file per step
    python benchmarks/make_results.py --index                # only rewrite the index

Artifacts go to ``benchmarks/results/<machine>/`` (``$MICRO_FAST_RESULTS_DIR`` or
``--results-dir`` moves them), named after their step: ``NAME.md`` + ``NAME.json`` for the
scripts, a folder ``NAME/`` (``BENCHMARKS.md``, ``results.json``, ``provenance.json``, plots)
for the pytest-benchmark suite. Each starts with the provenance header of
benchmarks/provenance.py: machine, SIMD kernels, threads, date, commit and dirty flag, command,
load average. The folder's ``README.md`` indexes them (rewritten after every run).

Every step runs as a subprocess with ``MICRO_FAST_BENCH_STRICT=1`` (a missing optional peer
fails instead of skipping); a step that exits non-zero is a failed step, the others still
run, and the driver exits 1. The durations in ``STEPS`` were measured on a 2-core AMD EPYC
Zen 5 VM (2 threads). ``--wait-idle S`` waits up to S seconds before each step (holding the
lock) until the CPUs are idle (under 10% busy over 5 s), so that other work does not sit in the
timings; and every step records how much CPU time other processes used while it ran (the
index shows it: a result measured beside other work says so).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import provenance  # noqa: E402

PY = sys.executable
BENCH = [PY, "-m", "micro_fast.cli", "bench"]


@dataclass
class Step:
    name: str
    what: str
    commands: list[list[str]]
    minutes: float  # expected duration, measured on the 2-core Zen 5 VM with 2 threads
    env: dict[str, str] = field(default_factory=dict)
    suite: bool = False  # writes a folder (micro-fast bench), not NAME.md/.json


def steps(out: Path) -> list[Step]:
    o = str(out)
    art = ["--artifact"]
    return [
        Step("tune", "the kernel choices (micro_fast.tuning) for 1 and 2 threads, measured "
             "before anything is timed so that no calibration lands inside a measurement; no "
             "artifact (every header shows the choices in force)",
             [[PY, "-m", "micro_fast.cli", "tune", "--threads", "1"],
              [PY, "-m", "micro_fast.cli", "tune", "--threads", "2"]], 0.2),  # ~10 s
        Step("suite-small", "micro-fast bench --size small, every ISA this CPU runs",
             [[*BENCH, "--size", "small", "--isa", "all", "--out", f"{o}/suite-small"]],
             4, suite=True),  # 3.9 min measured (every ISA)
        Step("suite-paper-knn", "kNN at the published sizes: self-join against FAISS, the "
             "published dense path, blocked torch, scikit-learn; queries != keys against FAISS "
             "and blocked torch",
             [[*BENCH, "--size", "paper", "--ops", "knn", "--isa", "best", "--out",
               f"{o}/suite-paper-knn"]], 10, suite=True),  # 9.6 min measured
        Step("suite-paper-spmm", "spmm at Baby and Clothing sizes against torch COO/CSR and "
             "scipy",
             [[*BENCH, "--size", "paper", "--ops", "spmm", "--isa", "best", "--out",
               f"{o}/suite-paper-spmm"]], 1.5, suite=True),  # 1.3 min measured
        Step("suite-paper-contrastive", "the contrastive and fusion losses at N = 7,050 and "
             "23,033 against the published chunked loss and its torch.compile form",
             [[*BENCH, "--size", "paper", "--ops", "contrastive", "--isa", "best", "--out",
               f"{o}/suite-paper-contrastive"]], 9, suite=True),  # 8.9 min measured
        Step("suite-paper-train", "a whole MICRO epoch at Baby size against the published "
             "step, both timed whole with the same fused Adam; evaluation",
             [[*BENCH, "--size", "paper", "--ops", "train", "--isa", "best", "--out",
               f"{o}/suite-paper-train"]], 5, suite=True),  # 4.9 min measured
        Step("isa-table", "the hot paths per instruction set against their peers, the "
             "published code also in a process of its own (the huge-page effect)",
             [[PY, str(HERE / "isa_table.py"), *art, "isa-table"]], 7),  # 6.9 min measured
        Step("freedom-epoch", "FREEDOM against MMRec's computation at Baby size",
             [[PY, str(HERE / "freedom_epoch.py"), *art, "freedom-epoch"]], 1),  # 1.0 min
        Step("lattice-epoch", "LATTICE against MMRec's port at Baby size",
             [[PY, str(HERE / "lattice_epoch.py"), *art, "lattice-epoch"]], 3.2),  # 3.2 min
        Step("compile-step", "MICRO's step eager and under torch.compile",
             [[PY, str(HERE / "compile_step.py"), "--sizes", "medium,baby", *art,
               "compile-step"]], 3),  # 1.0 min with a warm inductor cache, more cold
        Step("distributed-train", "MICRO over 2 gloo ranks against one process with 2 "
             "threads and one with 1",
             [[PY, str(HERE / "distributed_train.py"), "--sizes", "medium,baby", *art,
               "distributed-train"]], 4),  # 3.9 min measured
        Step("distributed-knn", "the kNN graph of 200,000 items over 2 ranks against one "
             "process with 2 threads and one with 1",
             [[PY, str(HERE / "distributed_knn.py"), "--n", "200000", *art,
               "distributed-knn"]], 1),  # 0.7 min measured
        Step("cuda-resources", "registers, spills and shared memory of every CUDA kernel for "
             "sm_80 and sm_90 (nvcc -Xptxas -v; no GPU needed), and the CUDA build's cost",
             [[PY, str(HERE / "cuda_resources.py"), "--archs", "80;90", *art,
               "cuda-resources"]], 1),
        *[Step(f"real-tiktok-{m}", f"{m} on TikTok (real features), MMRec's evaluation, "
               "published defaults, early stopping",
               [[PY, str(HERE / "validate_real.py"), "--only", f"tiktok/{m}", "--evaluation",
                 "mmrec", "--require-data", *art, f"real-tiktok-{m}"]],
               minutes)
          # measured: micro 7.0 min, lattice 0.5, freedom 1.3, lightgcn 0.8
          for m, minutes in (("micro", 7), ("lattice", 0.5), ("freedom", 1.5), ("lightgcn", 1))],
    ]


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat, or None."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _busy_fraction(seconds: float = 5.0) -> float:
    a = _cpu_jiffies()
    time.sleep(seconds)
    b = _cpu_jiffies()
    if a is None or b is None or b[1] == a[1]:
        return 0.0
    return (b[0] - a[0]) / (b[1] - a[1])


def _idle(limit_s: float) -> float:
    """Waits up to ``limit_s`` for the CPUs to be idle; returns the seconds waited."""
    t0 = time.time()
    while limit_s > 0 and time.time() - t0 < limit_s and _busy_fraction() > 0.10:
        pass
    return time.time() - t0


def _children_cpu_s() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@contextlib.contextmanager
def _locked(path: str | None):
    if not path:
        yield
        return
    import fcntl

    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def run_step(step: Step, out: Path, lock: str | None, wait_idle: float) -> tuple[int, float]:
    """Runs a step's commands; records in ``out/steps.json`` its duration and the CPU time
    that other processes used meanwhile (all CPUs' busy time less this step's own)."""
    env = dict(os.environ, MICRO_FAST_BENCH_STRICT="1", MICRO_FAST_RESULTS_DIR=str(out),
               MICRO_FAST_BENCH_THREADS="2", PYTHONUNBUFFERED="1", **step.env)
    rc = 0
    with _locked(lock):
        waited = _idle(wait_idle)
        t0, own0, cpu0 = time.time(), _children_cpu_s(), _cpu_jiffies()
        for cmd in step.commands:
            print("+ " + " ".join(cmd), flush=True)
            rc = subprocess.run(cmd, env=env, cwd=HERE.parent).returncode
            if rc != 0:
                break
        secs, own, cpu1 = time.time() - t0, _children_cpu_s() - own0, _cpu_jiffies()
    other = None
    if cpu0 and cpu1:
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        other = max(0.0, (cpu1[0] - cpu0[0]) / hz - own)
    log = out / "steps.json"
    try:
        runs = json.loads(log.read_text())
    except (OSError, ValueError):
        runs = {}
    runs[step.name] = {"rc": rc, "seconds": round(secs, 1), "own_cpu_s": round(own, 1),
                       "other_cpu_s": None if other is None else round(other, 1),
                       "waited_for_idle_s": round(waited, 1),
                       "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    log.write_text(json.dumps(runs, indent=1) + "\n")
    return rc, secs


def write_index(out: Path, all_steps: list[Step]) -> Path:
    """``out/README.md``: every step's artifact with its date, commit and duration."""
    lines = [f"# Results: {out.name}", "",
             "Written by `python benchmarks/make_results.py` (one step per artifact; "
             "`--only STEP` reruns one). Each artifact starts with its provenance header.", "",
             "`other CPU` is the CPU time other processes used while the step ran (all CPUs' "
             "busy time less the step's own): near zero, the step had the machine to itself.",
             "",
             "| step | artifact | what | date (UTC) | commit | run time | other CPU |",
             "|---|---|---|---|---|---|---|"]
    try:
        runs = json.loads((out / "steps.json").read_text())
    except (OSError, ValueError):
        runs = {}
    for s in all_steps:
        if s.name == "tune":
            continue
        if s.suite:
            path, prov_path = out / s.name / "BENCHMARKS.md", out / s.name / "provenance.json"
        else:
            path, prov_path = out / f"{s.name}.md", out / f"{s.name}.json"
        if not path.exists():
            lines.append(f"| {s.name} | not produced | {s.what} | | | | |")
            continue
        try:
            data = json.loads(prov_path.read_text())
            prov = data.get("provenance", data)
            g = prov.get("git", {})
            commit = f"`{str(g.get('commit', '?'))[:12]}`" + (" (dirty)" if g.get("dirty")
                                                               else "")
            date, elapsed = prov.get("date", "?"), prov.get("elapsed_s")
        except (OSError, ValueError):
            commit, date, elapsed = "?", "?", None
        rel = path.relative_to(out)
        run = runs.get(s.name, {})
        secs = run.get("seconds", elapsed)
        shown = "" if secs is None else f"{float(secs) / 60:.1f} min"
        other = run.get("other_cpu_s")
        if run.get("rc"):
            shown += f" (its last run failed, exit {run['rc']}: this artifact is older)"
        lines.append(f"| {s.name} | [{rel}]({rel}) | {s.what} | {date} | {commit} | "
                     f"{shown} | {'' if other is None else f'{other:.0f} s'} |")
    index = out / "README.md"
    index.write_text("\n".join(lines) + "\n")
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the steps and exit")
    parser.add_argument("--only", default="", help="comma list of steps to run")
    parser.add_argument("--skip", default="", help="comma list of steps to leave out")
    parser.add_argument("--results-dir", default=None,
                        help="default: $MICRO_FAST_RESULTS_DIR or benchmarks/results/<machine>")
    parser.add_argument("--lock", default=None, help="lock file held during each step")
    parser.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                        help="wait up to S seconds before each step for a quiet machine")
    parser.add_argument("--index", action="store_true", help="only rewrite the index")
    args = parser.parse_args(argv)
    out = Path(args.results_dir) if args.results_dir else provenance.results_dir(2)
    all_steps = steps(out)
    names = [s.name for s in all_steps]
    if args.list:
        total = 0.0
        for s in all_steps:
            total += s.minutes
            print(f"{s.name:<24} ~{s.minutes:g} min  {s.what}")
        print(f"{'all':<24} ~{total:g} min  -> {out}")
        return 0
    only = [x for x in args.only.split(",") if x]
    skip = [x for x in args.skip.split(",") if x]
    unknown = sorted(set(only + skip) - set(names))
    if unknown:
        parser.error(f"unknown step(s) {unknown}; steps: {', '.join(names)}")
    out.mkdir(parents=True, exist_ok=True)
    failed = []
    if not args.index:
        for s in all_steps:
            if (only and s.name not in only) or s.name in skip:
                continue
            print(f"== {s.name} (about {s.minutes:g} min): {s.what}", flush=True)
            rc, secs = run_step(s, out, args.lock, args.wait_idle)
            print(f"== {s.name}: {'ok' if rc == 0 else f'FAILED (exit {rc})'} in "
                  f"{secs / 60:.1f} min", flush=True)
            if rc != 0:
                failed.append(s.name)
    print(f"index: {write_index(out, all_steps)}")
    if failed:
        print(f"failed steps: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
