"""Fixtures shared by the tests: seeded problems and the thread harness for shard forms."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch


def projection_problem(n: int, d: int, f: int, rows: list[int], seed: int):
    """float64 ``(x [n, d], weight [f, d], bias [f])`` requiring grad, and int64 ``rows``: a
    small ``project_rows`` problem for gradchecks and opchecks."""
    gen = torch.Generator().manual_seed(seed)
    x, w, b = (torch.randn(*shape, dtype=torch.float64, generator=gen).requires_grad_()
               for shape in ((n, d), (f, d), (f,)))
    return x, w, b, torch.tensor(rows)


class ThreadShard:
    """Shard ``index`` of ``count`` threads playing cooperating processes: ``logsumexp``
    exchanges the partial row statistics on a shared board (the collective of a
    ``RankShard``)."""

    def __init__(self, index: int, count: int, barrier: threading.Barrier, board: list):
        self.index, self.count, self._barrier, self._board = index, count, barrier, board

    def logsumexp(self, partial: torch.Tensor, shift: float | None = None) -> torch.Tensor:
        if shift is not None:  # the bound the op promises
            finite = partial[torch.isfinite(partial)]
            assert bool(((finite - shift).abs() <= 80).all()), (finite - shift).abs().max()
        self._board[self.index] = partial
        self._barrier.wait()
        out = torch.logsumexp(torch.stack(list(self._board)), dim=0)
        self._barrier.wait()  # everyone has read the board before it is reused
        return out


def run_shards(count: int, fn, inputs: list[torch.Tensor]):
    """``fn(shard, *leaf copies of inputs)`` on ``count`` threads; returns the summed values,
    the summed gradients w.r.t. each input, and each thread's value."""
    barrier, board = threading.Barrier(count), [None] * count
    results: list = [None] * count
    errors: list = []

    def work(i):
        try:
            xs = [x.detach().clone().requires_grad_() for x in inputs]
            value = fn(ThreadShard(i, count, barrier, board), *xs)
            results[i] = (value.detach(), torch.autograd.grad(value, xs))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    value = sum(r[0] for r in results)
    grads = [sum(r[1][k] for r in results) for k in range(len(inputs))]
    return value, grads, [r[0] for r in results]


#: Float64 parity of whole model steps against a reference written in plain torch: both sides
#: are exact in float64 up to summation order over chains of tens of operations with
#: reductions of up to a few hundred terms (about 1e-14 of each tensor's largest entry
#: observed); a factor of 10 or more above that still separates a real difference (a wrong
#: term is 1e-4 or more).
PARITY = 1e-12


def assert_parity(got: torch.Tensor, expected: torch.Tensor, what: str = "result",
                  floor: float = 0.0) -> None:
    """|got - expected| <= PARITY x the largest |expected| entry (float64 model parity), or x
    ``floor`` if that is larger: the size of the terms of a result that cancels (a gradient
    that is zero in exact arithmetic is rounding noise of its terms' size)."""
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    scale = max(float(expected.abs().max()) if expected.numel() else 0.0, floor)
    err = float((got - expected).abs().max()) if got.numel() else 0.0
    assert err <= PARITY * scale, f"{what}: differs by {err:.3g} (scale {scale:.3g})"


def assert_gradients_parity(got, expected, what: str = "gradient") -> None:
    """``assert_parity`` for the gradients of one step: a gradient below 1e-3 of the step's
    largest (one whose terms cancel) is held to PARITY x 1e-3 of that largest."""
    pairs = [(a, b) for a, b in zip(got, expected, strict=True)
             if a is not None and b is not None]
    largest = max((float(b.abs().max()) for _, b in pairs if b.numel()), default=0.0)
    for j, (a, b) in enumerate(pairs):
        assert_parity(a, b, f"{what} {j}", floor=1e-3 * largest)


ROOT = Path(__file__).resolve().parents[1]


def run_pytest(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """pytest in a child process that imports the same ``micro_fast`` as this one.

    The child runs from an empty directory: ``python -m`` puts its working directory first on
    ``sys.path``, and from the checkout's root that would import the source tree (no compiled
    extensions in a non-editable install) instead of the installed package."""
    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT), *args],
            cwd=cwd, env=dict(os.environ, **env), capture_output=True, text=True, timeout=600)
