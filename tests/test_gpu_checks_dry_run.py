"""The GPU check rehearsed on the CPU: its bookkeeping and gate (``gpu_check.sh --dry-run``),
and the GPU parity checks run on the CPU (``MICRO_FAST_PARITY_DRY_RUN=cpp``: the same checks with
CPU tensors and the cpp backend), so that a lent GPU's first test file cannot fail, or pass, on
the logic of its own checks. (No "cuda" in the name: the GPU check selects the CUDA tests with
``-k cuda``.)"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys

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
    """The build, gate and info stages of the dry run: a build past its timeout is recorded as a
    timeout, the gate closes with its reason, and a stage behind it fails without running."""
    out, work = tmp_path / "out", tmp_path / "work"
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_WORK=str(work))
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run",
                           "--stages", "build info", "--out", str(out)],
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
    assert (out / "REPORT.md").is_file()
