"""The GPU parity checks run on the CPU (``MICRO_FAST_PARITY_DRY_RUN=cpp``: the same checks with
CPU tensors and the cpp backend), so that a lent GPU's first test file cannot fail, or pass, on
the logic of its own checks. (No "cuda" in the name: the GPU check selects the CUDA tests with
``-k cuda``.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from micro_fast import backends


@pytest.mark.skipif("cpp" not in backends.available(), reason="cpp backend not built")
def test_gpu_parity_checks_pass_on_the_cpu_backend():
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, MICRO_FAST_PARITY_DRY_RUN="cpp")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(root / "tests" / "test_cuda_parity.py")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 10 and "failed" not in out, out[-4000:]
