"""Shared test configuration: hypothesis profiles and the backends under test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Triton's interpreter runs the Triton kernels on CPU tensors where there is no NVIDIA GPU. It
# must be chosen before triton is imported, and importing torch's compiler (as micro_fast does)
# imports triton: so here, before anything else. On a GPU machine the kernels run compiled.
if not Path("/dev/nvidiactl").exists():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from micro_fast import backends  # noqa: E402

# the published re-implementations (peers.py, reference_micro.py) live with the benchmarks
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

# "ci" bounds the run (the default, and what CI uses); "long" is for fuzzing sessions:
#   HYPOTHESIS_PROFILE=long pytest tests
# (the simd_isa fixture below is set once per test, not per example, on purpose)
_QUIET = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True,
                          suppress_health_check=_QUIET)
settings.register_profile("dev", max_examples=100, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
settings.register_profile("long", max_examples=2000, deadline=None,
                          suppress_health_check=_QUIET)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

torch.set_num_threads(min(2, os.cpu_count() or 1))

# The suite runs the built-in default choices (deterministic, no calibration time); both sides
# of every choice are tested explicitly, and test_tuning.py tests the measured ones.
os.environ.setdefault("MICRO_FAST_TUNE", "0")

CPU_BACKENDS = [b for b in ("cpp", "numba") if b in backends.available()]


def pytest_report_header(config):
    return f"micro_fast backends: {backends.status()}"


_NO_BACKEND = pytest.param("none", marks=pytest.mark.skip(reason="no compiled CPU backend"))


@pytest.fixture(scope="session", params=CPU_BACKENDS or [_NO_BACKEND])
def cpu_backend(request):
    return request.param


@pytest.fixture(params=["avx512", "avx2", "generic"])
def simd_isa(request):
    """Runs the test with the compiled kernels of each instruction set this CPU supports (an
    AVX-512 machine tests the AVX2 and portable builds too)."""
    if "cpp" not in backends.available():
        pytest.skip("cpp backend not built")
    from micro_fast.backends import cpp

    if request.param not in cpp.supported_isas():
        pytest.skip(f"{request.param} not supported on this CPU")
    cpp.set_simd_isa(request.param)
    try:
        yield request.param
    finally:
        cpp.set_simd_isa("auto")
