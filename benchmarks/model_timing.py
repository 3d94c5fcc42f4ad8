"""What the model-against-reference timing scripts (freedom_epoch.py, lattice_epoch.py) share:
their command line, the timers and the optimizers."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

#: the optimizers both sides are timed with: torch's fused Adam (what micro-fast train uses,
#: ``micro_fast.train.adam``) and torch's default Adam (what the published code uses)
OPTIMIZERS = {"fused": "torch.optim.Adam(fused=True) (micro_fast.train.adam)",
              "default": "torch.optim.Adam() (torch's default, as the published code)"}


def optimizer(kind: str, params, lr: float) -> torch.optim.Optimizer:
    from micro_fast.train import adam

    params = list(params)
    return adam(params, lr) if kind == "fused" else torch.optim.Adam(params, lr=lr)


def time_call(fn) -> float:
    """Seconds one call of ``fn()`` takes."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def median_time(fn, rounds: int, warmup: int = 1) -> float:
    """Median seconds of ``rounds`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    return statistics.median(time_call(fn) for _ in range(rounds))


def parse_args(doc: str, argv: list[str] | None, batches: int, epochs: int = 1,
               add=None) -> argparse.Namespace:
    """``--size`` (synthetic data size, baby), ``--batches`` (timed batches per side and
    optimizer, after one warm-up batch), ``--epochs`` (whole epochs timed per side),
    ``--threads`` (2, applied to torch) and the artifact options."""
    import provenance

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--size", default="baby")
    parser.add_argument("--batches", type=int, default=batches)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--threads", type=int, default=2)
    provenance.add_output_args(parser)
    if add is not None:
        add(parser)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    return args
