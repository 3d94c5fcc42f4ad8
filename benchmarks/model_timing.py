"""What the model-against-reference timing scripts (freedom_epoch.py, lattice_epoch.py) share:
their command line and the timer."""

from __future__ import annotations

import argparse
import time

import torch


def time_call(fn) -> float:
    """Seconds one call of ``fn()`` takes."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def parse_args(doc: str, argv: list[str] | None, batches: int) -> argparse.Namespace:
    """``--size`` (synthetic data size, baby), ``--batches`` and ``--threads`` (2), the
    latter applied to torch."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--size", default="baby")
    parser.add_argument("--batches", type=int, default=batches)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    return args
