"""Shared test configuration: hypothesis profiles and the backends under test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

from micro_fast import backends

# the published re-implementations (peers.py, reference_micro.py) live with the benchmarks
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

# "ci" bounds the run (the default, and what CI uses); "long" is for fuzzing sessions:
#   HYPOTHESIS_PROFILE=long pytest tests
settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile("long", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

torch.set_num_threads(min(2, os.cpu_count() or 1))

CPU_BACKENDS = [b for b in ("cpp", "numba") if b in backends.available()]


def pytest_report_header(config):
    return f"micro_fast backends: {backends.status()}"


_NO_BACKEND = pytest.param("none", marks=pytest.mark.skip(reason="no compiled CPU backend"))


@pytest.fixture(scope="session", params=CPU_BACKENDS or [_NO_BACKEND])
def cpu_backend(request):
    return request.param
