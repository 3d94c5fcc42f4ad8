"""The command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

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


def test_closed_pipe_stops_quietly(tmp_path):
    """`micro-fast info | head -1`: the reader leaves early; no traceback on stderr."""
    proc = subprocess.Popen([sys.executable, "-m", "micro_fast.cli", "info"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in (0, 1)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_only_the_library_input_errors_become_exit_2(monkeypatch, capsys):
    """Bad input: one line and exit 2. Anything else is a bug and keeps its traceback."""
    import micro_fast.train as train_module
    from micro_fast.errors import InputError

    def bad_input(*_a, **_k):
        raise InputError("epochs must be >= 1")

    def bug(*_a, **_k):
        raise TypeError("unsupported operand type(s)")

    monkeypatch.setattr(train_module, "train", bad_input)
    assert main(["train", "--quiet"]) == 2
    assert "epochs must be >= 1" in capsys.readouterr().err
    monkeypatch.setattr(train_module, "train", bug)
    with pytest.raises(TypeError, match="unsupported operand"):
        main(["train", "--quiet"])
    # the library's errors still are the built-in ones callers catch
    assert issubclass(InputError, ValueError)
