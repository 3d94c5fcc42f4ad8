"""The GPU check rehearsed on the CPU: its bookkeeping and gate (``gpu_check.sh --dry-run``),
and the GPU parity checks run on the CPU (``MICRO_FAST_PARITY_DRY_RUN=cpp``: the same checks with
CPU tensors and the cpp backend), so that a lent GPU's first test file cannot fail, or pass, on
the logic of its own checks. (No "cuda" in the name: the GPU check selects the CUDA tests with
``-k cuda``.)"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time

import pytest
from helpers import ROOT, run_pytest

from micro_fast import backends


@pytest.mark.skipif("cpp" not in backends.available(), reason="cpp backend not built")
def test_gpu_parity_checks_pass_on_the_cpu_backend():
    proc = run_pytest([str(ROOT / "tests" / "test_cuda_parity.py")],
                      {"MICRO_FAST_PARITY_DRY_RUN": "cpp"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 10 and "failed" not in out, out[-4000:]


def test_gpu_check_dry_run_closes_the_gate_without_a_cuda_build(tmp_path):
    """The build, gate, info and tune stages of the dry run: a build past its timeout is
    recorded as a timeout, the gate closes with its reason, and a stage behind it fails without
    running."""
    out, work = tmp_path / "out", tmp_path / "work"
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_WORK=str(work))
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run",
                           "--stages", "build info tune", "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    with open(out / "stages.tsv") as fh:
        rows = {r["stage"]: r for r in csv.DictReader(fh, delimiter="\t")}
    assert rows["selftest_slow_build"]["status"] == "timeout"
    assert rows["selftest_gate"]["status"] == "pass"
    assert rows["selftest_gate"]["note"].startswith("closed as it must: ")
    assert rows["selftest_gated_stage"]["status"] == "fail"
    assert "no cuda backend" in rows["selftest_gated_stage"]["note"]
    assert rows["info"]["status"] == "pass"
    # the calibration stage (the CPU's decisions here): chosen backends in its note, or
    # nothing to tune when the source tree has no compiled core (a clean checkout)
    assert rows["tune"]["status"] == "pass", rows["tune"]
    assert ("spmm.backend" in rows["tune"]["note"]) == _core_in_source_tree(), rows["tune"]
    assert (out / "REPORT.md").is_file()


def _core_in_source_tree() -> bool:
    """Whether micro_fast/_C is built in the checkout (the check runs from the source tree)."""
    return any((ROOT / "micro_fast").glob("_C*.so")) or any((ROOT / "micro_fast").glob("_C*.pyd"))


# --- benchmarks/gpu_bench.py on the CPU: achieved rates and the compile peer's deadline ---------

def _gpu_bench():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_bench

    return gpu_bench


def test_bench_rate_helper_maps_cases_to_work_and_ceilings():
    gb = _gpu_bench()
    n, d = 1000, 64
    knn = {"case": "knn", "n": n, "d": d}
    assert gb.nominal_work(knn, "micro_fast") == (2.0 * n * n * d, "TFLOP/s", "gemm_fp32_tflops")
    assert gb.nominal_work(knn, "blocked_torch_tf32")[2] == "gemm_tf32_tflops"
    assert gb.nominal_work(dict(knn, case="knn_1m"), "micro_fast")[0] == 2.0 * n * n * d
    con = {"case": "contrastive", "n": n, "d": d}
    assert gb.nominal_work(con, "published_compiled") == (12.0 * n * n * d, "TFLOP/s",
                                                          "gemm_fp32_tflops")
    assert gb.nominal_work({"case": "eval", "n": 500, "m": 300, "d": d}, "dense_torch") == (
        2.0 * 300 * 500 * d, "TFLOP/s", "gemm_fp32_tflops")
    spmm = {"case": "spmm", "mode": "fwd", "n": 70, "rows": 70, "cols": 70, "nnz": 1000,
            "d": 16, "index_bytes": 8, "value_bytes": 4}
    fwd = 1000 * (8 + 4) + 1000 * 16 * 4 + 70 * 16 * 4
    assert gb.nominal_work(spmm, "torch_csr") == (fwd, "GB/s", "copy_gbs")
    assert gb.nominal_work(dict(spmm, mode="fwd+bwd"), "torch_csr")[0] == 2 * fwd
    assert gb.nominal_work({"case": "knn_1m", "impls": {}}, "micro_fast") is None

    # achieved rate and share of a fake ceilings dict (no TF32 ceiling measured: share None)
    ceilings = {"gemm_fp32_tflops": 20.0, "copy_gbs": 1000.0}
    knn["impls"] = {"micro_fast": {"median_ms": 1.0}, "blocked_torch_tf32": {"median_ms": 2.0},
                    "published": {"error": "OutOfMemoryError"}}
    gb.rates(knn, ceilings)
    ours = knn["impls"]["micro_fast"]
    assert ours["achieved"] == pytest.approx(2.0 * n * n * d / 1e-3 / 1e12)
    assert ours["of_ceiling"] == pytest.approx(ours["achieved"] / 20.0)
    assert ours["unit"] == "TFLOP/s" and ours["ceiling"] == "gemm_fp32_tflops"
    assert knn["impls"]["blocked_torch_tf32"]["of_ceiling"] is None
    assert "achieved" not in knn["impls"]["published"]
    spmm["impls"] = {"micro_fast": {"median_ms": 0.5}}
    gb.rates(spmm, ceilings)
    r = spmm["impls"]["micro_fast"]
    assert r["achieved"] == pytest.approx(fwd / 0.5e-3 / 1e9) and r["unit"] == "GB/s"
    assert r["of_ceiling"] == pytest.approx(r["achieved"] / 1000.0)
    assert "% of copy" in gb._rate(r) and spmm["work_model"].startswith("bytes moved")


_SLOW_COMPILE = """
import json, os, sys, time
out, seen = sys.argv[1], sys.argv[2]
res = json.load(open(out))
case = [c for c in res["cases"] if c["case"] == "contrastive"][0]
assert "median_ms" in case["impls"]["micro_fast"], case
open(seen, "w").write(f"{os.getpid()} {case['impls']['published_compiled']['note']}")
time.sleep(120)
"""


@pytest.mark.skipif("cpp" not in backends.available(), reason="cpp backend not built")
def test_bench_compile_peer_runs_last_under_its_deadline(tmp_path, monkeypatch):
    """A compile peer that does not finish: ended at its deadline, recorded as such, the rest
    of the report on disk before it started, the run still passing."""
    gb = _gpu_bench()
    monkeypatch.setenv("MICRO_FAST_TUNE", "0")
    out, md, seen = tmp_path / "bench.json", tmp_path / "bench.md", tmp_path / "seen"
    monkeypatch.setattr(gb, "compile_peer_command", lambda b, result, deadline_s: [
        sys.executable, "-c", _SLOW_COMPILE, str(out), str(seen)])
    t0 = time.perf_counter()
    rc = gb.main(["--device", "cpu", "--quick", "--only", "contrastive", "--compile-deadline",
                  "3", "--out", str(out), "--md", str(md)])
    took = time.perf_counter() - t0
    res = json.loads(out.read_text())
    assert rc == 0, res["failures"]
    pid, note = seen.read_text().split(" ", 1)
    assert note.startswith("compile peer: running")  # everything else was written before
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid), 0)  # the slow child was ended
    case = res["cases"][-1]
    r = case["impls"]["published_compiled"]
    assert r["note"].startswith("compile peer: deadline passed after ")
    assert 3.0 <= r["deadline_passed_s"] < 15.0 and took < 60.0
    assert "published_compiled" not in case["speedups"]
    assert case["impls"]["micro_fast"]["achieved"] > 0
    target = [t for t in res["targets"] if t["name"].endswith("vs published_compiled")]
    assert target and target[0]["measured"] is None and target[0]["not_assessed"] == r["note"]
    assert "compile peer: deadline passed after" in md.read_text()


@pytest.mark.skipif("cpp" not in backends.available(), reason="cpp backend not built")
def test_bench_compile_peer_measured_in_its_child(tmp_path, monkeypatch):
    gb = _gpu_bench()
    monkeypatch.setenv("MICRO_FAST_TUNE", "0")
    out = tmp_path / "bench.json"
    rc = gb.main(["--device", "cpu", "--quick", "--only", "contrastive", "--compile-deadline",
                  "120", "--out", str(out)])
    res = json.loads(out.read_text())
    assert rc == 0, res["failures"]
    case = res["cases"][-1]
    r = case["impls"]["published_compiled"]
    assert r["median_ms"] > 0 and r["achieved"] > 0 and r["unit"] == "TFLOP/s", r
    assert case["speedups"]["published_compiled"] > 0
    target = [t for t in res["targets"] if t["name"].endswith("vs published_compiled")]
    assert target and target[0]["measured"] == case["speedups"]["published_compiled"]
