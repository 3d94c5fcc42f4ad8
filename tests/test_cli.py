"""The command line."""

from __future__ import annotations

import subprocess
import sys

from micro_fast.cli import main


def test_info_lists_backends_and_reasons(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("cuda", "cpp", "numba", "torch_ref", "threads", "device"):
        assert name in out


def test_console_entry_point_runs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "micro_fast.cli", "info"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "micro_fast" in proc.stdout
