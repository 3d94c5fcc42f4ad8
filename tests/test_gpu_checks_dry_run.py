"""The GPU parity checks run on the CPU (``MICRO_FAST_PARITY_DRY_RUN=cpp``: the same checks with
CPU tensors and the cpp backend), so that a lent GPU's first test file cannot fail, or pass, on
the logic of its own checks. (No "cuda" in the name: the GPU check selects the CUDA tests with
``-k cuda``.)"""

from __future__ import annotations

import re

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
