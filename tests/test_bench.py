"""The benchmark suite cannot rot: it runs once per case at the small size, and
``micro-fast bench`` writes its report, plots and comparison."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("pytest_benchmark")

from micro_fast.cli import bench_suite_dir  # noqa: E402

# the training cases on the tiny synthetic preset with a 2-batch reference: the code paths of
# the small suite at a fraction of its time
ENV = dict(os.environ, MICRO_FAST_BENCH_THREADS="2", MICRO_FAST_TRAIN_SIZE="tiny",
           MICRO_FAST_REF_BATCHES="2")


def test_suite_runs_every_case_once(tmp_path):
    suite = bench_suite_dir()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(suite), "--bench-size=small",
         "--benchmark-disable", "-q", "-p", "no:cacheprovider", "--rootdir", str(suite),
         "-o", "python_files=bench_*.py"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout


def test_bench_command_writes_report_plots_and_compares(tmp_path):
    out = tmp_path / "bench"
    # one ISA: test_suite_runs_every_case_once already runs every case on every ISA, and
    # test_report_flags_paths_slower_than_simpler_ones checks the cross-ISA part of the report
    # and few rounds: this checks the command, not the timings
    env = dict(ENV, PYTEST_ADDOPTS="--benchmark-max-time=0.05 --benchmark-min-rounds=1 "
               "--benchmark-warmup=off")
    proc = subprocess.run([sys.executable, "-m", "micro_fast.cli", "bench", "--size", "small",
                           "--isa", "best", "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (out / "BENCHMARKS.md").read_text()
    for needle in ("| cpu |", "GFLOP/s", "### knn", "### spmm", "### contrastive",
                   "### train epoch", "### evaluation", "vs official", "vs torch_csr",
                   "vs published", "(extrapolated)", ".png)"):
        assert needle in report, needle
    pngs = sorted(out.glob("*.png"))
    assert {p.stem for p in pngs} >= {"knn_d_64", "contrastive_d_64_fwd_bwd", "train_epoch"}
    import matplotlib.image

    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.image.imread(p).ndim == 3
    data = json.loads((out / "results.json").read_text())
    assert all("peak_extra_mb" in b["extra_info"] or b["extra_info"].get("check")
               or b["extra_info"].get("impl") == "reference" for b in data["benchmarks"])
    res = str(out / "results.json")
    cmp = subprocess.run([sys.executable, "-m", "micro_fast.cli", "bench", "--compare", res, res],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert cmp.returncode == 0, cmp.stderr
    assert "| 1.00 |" in cmp.stdout and "new / old" in cmp.stdout


def test_bench_rejects_unknown_ops(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "micro_fast.cli", "bench", "--ops", "fft",
                           "--out", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "fft" in proc.stderr


def test_report_flags_paths_slower_than_simpler_ones():
    sys.path.insert(0, str(bench_suite_dir()))
    import report

    def case(impl, isa, seconds, group="g"):
        info = {"impl": impl, "op": "x"}
        if isa:
            info["isa"] = isa
        return {"group": group, "name": impl, "fullname": impl, "extra_info": info,
                "stats": {"median": seconds, "rounds": 1}}

    data = {"benchmarks": [case("cpp[avx2]", "avx2", 2.0), case("cpp[generic]", "generic", 1.0),
                           case("numba", None, 1.5), case("torch_csr", None, 3.0),
                           case("cpp_fused", "avx512", 1.0, "f"),
                           case("cpp_separate", "avx512", 0.5, "f"), case("faiss", None, 0.1)]}
    flags = report.slower_than_simpler(data)
    assert len(flags) == 2, flags
    assert any("cpp[avx2]" in f and "cpp[generic]" in f for f in flags)
    assert any("cpp_fused" in f and "cpp_separate" in f for f in flags)
    assert "Slower than a simpler path" in report.summarize(data)
    data["benchmarks"] = data["benchmarks"][1:4]
    assert report.slower_than_simpler(data) == []
