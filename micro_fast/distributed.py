r"""Rank-sharded graph building and evaluation over ``torch.distributed``.

Every rank holds the same full inputs (as under DistributedDataParallel, where the model is
replicated); the expensive part is split by rows and the results are all-gathered, so every
rank ends with exactly what a single process computes:

* ``topk_similarity`` / ``knn_graph``: for a search of the queries against themselves (the
  kNN graph) on a backend with ``topk_similarity_shard`` (cpp), rank ``r`` of ``W`` searches
  every ``W``-th block pair of the symmetric similarity matrix, so each pair is still computed
  once over all ranks, and the per-rank [M, k] lists are all-gathered and merged in the exact
  order (value descending, ties to the smaller index). Otherwise rank ``r`` searches the query
  rows ``row_range(M, r, W)`` against all keys and the rows are all-gathered. Every score is
  computed by the same tile arithmetic as in one process and the order is total, so the
  result is bit-identical to the single-process one. The gathered values are made
  differentiable w.r.t. the full inputs on every rank (``with_similarity_grad``), so DDP sees
  the same graph and gradients as one process would.
* ``full_ranking``: the evaluated users are split by rank, per-user metrics are all-gathered
  and reduced in the single-process order, so the metrics are identical too.
* ``contrastive_loss`` / ``contrastive_fusion_loss``: rank ``r`` computes every ``W``-th tile
  task of the all-item loss (cpp: block pairs, so the symmetric intra-view saving is kept),
  the per-row partial log-sum-exps are combined with one all-reduce of [M, N] floats (two, max
  then sum, for tau < 0.05), and each rank returns ``loss / W`` with its share of the
  gradients: summed over the ranks, the values and gradients are the single-process ones
  (float summation order aside). ``for_ddp=True`` returns ``W`` times that part instead, the
  full loss value on every rank with gradients that a mean over the ranks
  (DistributedDataParallel's, or ``average_gradients``) turns into the full ones. Backends
  without a shard form compute the whole loss on every rank.

Without an initialized process group (or with one rank) every function is the single-process
op. A collective that fails because another rank died or timed out raises
``CollectiveError`` naming the operation, instead of hanging (the process group's timeout
bounds the wait; ``init_from_env`` sets it).
"""

from __future__ import annotations

import datetime
import gc
import os
import re

import torch
import torch.distributed as dist

from micro_fast.errors import MicroFastError
from micro_fast.graph import CSRGraph
from micro_fast.metrics import (
    check_ranking_inputs,
    evaluated_users,
    per_user_metrics,
    reduce_metrics,
)
from micro_fast.metrics import full_ranking as _full_ranking
from micro_fast.ops.contrastive_fusion import (
    contrastive_fusion_loss as _contrastive_fusion_loss,
)
from micro_fast.ops.contrastive_loss import contrastive_loss as _contrastive_loss
from micro_fast.ops.knn_graph import knn_graph as _knn_graph
from micro_fast.ops.topk_similarity import prepare as prepare_topk
from micro_fast.ops.topk_similarity import topk_similarity as _topk_similarity
from micro_fast.ops.topk_similarity import with_similarity_grad

#: Seconds a collective may wait for the other ranks before failing (``init_from_env``).
DEFAULT_TIMEOUT_S = 600.0


class CollectiveError(MicroFastError, RuntimeError):
    """A collective failed: another rank died, timed out or took a different path."""


def is_active() -> bool:
    """Whether a process group with more than one rank is initialized."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank_and_world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def row_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """The contiguous rows ``[r0, r1)`` of ``n`` that ``rank`` owns (sizes differ by <= 1)."""
    base, extra = divmod(n, world)
    r0 = rank * base + min(rank, extra)
    return r0, r0 + base + (1 if rank < extra else 0)


# How a transport failure reads when it surfaces outside an explicit collective (gloo raises a
# plain RuntimeError from the DDP gradient all-reduce, NCCL a DistBackendError).
_TRANSPORT_ERROR = re.compile(r"gloo|nccl|connection|peer|timed? ?out|processgroup", re.I)


def guard(what: str, fn, *args, collective: bool = True, **kwargs):
    """Runs ``fn``; a failed collective in it (another rank died, timed out or diverged)
    becomes ``CollectiveError`` naming ``what``. With ``collective=False`` (``fn`` also does
    local work) only errors that read as a transport failure are converted; any other error
    passes through unchanged."""
    try:
        return fn(*args, **kwargs)
    except CollectiveError:
        raise
    except RuntimeError as exc:  # dist.DistError is one
        if not (collective or isinstance(exc, dist.DistError)
                or (is_active() and _TRANSPORT_ERROR.search(str(exc)))):
            raise
        rank, world = rank_and_world()
        raise CollectiveError(f"micro_fast.distributed: {what} failed on rank {rank} of "
                              f"{world}; another rank died, timed out or diverged: "
                              f"{type(exc).__name__}: {exc}") from exc


def gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """All ranks' ``row_range`` blocks of an [n, ...] tensor, concatenated in rank order."""
    rank, world = rank_and_world()
    if world == 1:
        return local
    per = -(-n // world)
    padded = local.new_zeros((per, *local.shape[1:]))
    padded[:local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    guard("all_gather", dist.all_gather, parts, padded.contiguous())
    return torch.cat([parts[r][:row_range(n, r, world)[1] - row_range(n, r, world)[0]]
                      for r in range(world)])


def merge_topk(values: torch.Tensor, indices: torch.Tensor,
               k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top ``k`` per row of several candidate lists ``values``/``indices`` [S, M, k'] (no
    pair in two lists), in the order of ``topk_similarity``: value descending, ties to the
    smaller index, padding (-inf, -1) last."""
    s, m, kk = values.shape
    v = values.permute(1, 0, 2).reshape(m, s * kk)
    i = indices.permute(1, 0, 2).reshape(m, s * kk)
    by_index = torch.argsort(torch.where(i < 0, torch.iinfo(torch.int64).max, i), dim=1,
                             stable=True)
    v, i = torch.gather(v, 1, by_index), torch.gather(i, 1, by_index)
    by_value = torch.argsort(v, dim=1, descending=True, stable=True)[:, :k]
    return torch.gather(v, 1, by_value), torch.gather(i, 1, by_value)


def barrier(what: str = "barrier") -> None:
    """A barrier that raises ``CollectiveError`` instead of hanging on a dead rank."""
    if is_active():
        guard(what, dist.barrier)


def topk_similarity(queries: torch.Tensor, keys: torch.Tensor | None = None, k: int = 10, *,
                    exclude: CSRGraph | None = None, normalize: bool = False,
                    block_size: int | None = None, backend: str = "auto",
                    names: tuple[str, str] = ("queries", "keys"),
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``ops.topk_similarity`` with the query rows split over the ranks (same arguments and
    result on every rank; see the module docstring)."""
    if not is_active():
        return _topk_similarity(queries, keys, k, exclude=exclude, normalize=normalize,
                                block_size=block_size, backend=backend, names=names)
    t = prepare_topk(queries, keys, k, exclude, normalize, block_size, backend, names=names)
    q, kk, symmetric, m, impl = t.queries, t.keys, t.symmetric, t.queries.shape[0], t.impl
    rank, world = rank_and_world()
    if symmetric and hasattr(impl, "topk_similarity_shard"):
        # the caller's block size, never a tuned one: every rank must split the pairs alike
        with torch.no_grad():
            values, indices = impl.topk_similarity_shard(q.detach().contiguous(), k, t.exclude,
                                                         block_size, rank, world)
        values, indices = values.to(q.device), indices.to(q.device)
        parts_v = [torch.empty_like(values) for _ in range(world)]
        parts_i = [torch.empty_like(indices) for _ in range(world)]
        guard("all_gather", dist.all_gather, parts_v, values)
        guard("all_gather", dist.all_gather, parts_i, indices)
        values, indices = merge_topk(torch.stack(parts_v), torch.stack(parts_i), k)
        if q.requires_grad:
            values = with_similarity_grad(q, q, indices, values)
        return values, indices
    r0, r1 = row_range(m, rank, world)
    if r1 > r0:
        ex = None if exclude is None else exclude.select_rows(
            torch.arange(r0, r1, device=exclude.device))
        with torch.no_grad():
            values, indices = _topk_similarity(q[r0:r1].detach(), kk.detach(), k, exclude=ex,
                                               block_size=block_size, backend=backend)
    else:
        values = q.new_empty((0, k))
        indices = torch.empty((0, k), dtype=torch.int64, device=q.device)
    values, indices = gather_rows(values, m), gather_rows(indices, m)
    if q.requires_grad or kk.requires_grad:
        values = with_similarity_grad(q, kk, indices, values)
    return values, indices


def knn_graph(features: torch.Tensor, k: int, *, normalization: str = "sym",
              block_size: int | None = None, backend: str = "auto") -> CSRGraph:
    """``ops.knn_graph`` with the top-k search split over the ranks; every rank gets the same
    ``CSRGraph``, with values differentiable w.r.t. its ``features``."""
    return _knn_graph(features, k, normalization=normalization, block_size=block_size,
                      backend=backend, search=topk_similarity)


def full_ranking(user_emb: torch.Tensor, item_emb: torch.Tensor, train: CSRGraph | None,
                 target: CSRGraph, ks: tuple[int, ...] | list[int] = (10, 20, 50), *,
                 ndcg: str = "standard", user_block: int = 8192,
                 backend: str = "auto") -> dict[str, float]:
    """``metrics.full_ranking`` with the evaluated users split over the ranks; every rank
    returns the same metrics, equal to the single-process ones."""
    if not is_active():
        return _full_ranking(user_emb, item_emb, train, target, ks, ndcg=ndcg,
                             user_block=user_block, backend=backend)
    ks = check_ranking_inputs(user_emb, item_emb, train, target, ks, ndcg, user_block)
    users = evaluated_users(target)
    rank, world = rank_and_world()
    r0, r1 = row_range(users.numel(), rank, world)
    local = per_user_metrics(user_emb, item_emb, train, target, users[r0:r1], ks, ndcg=ndcg,
                             user_block=user_block, backend=backend)
    return reduce_metrics(gather_rows(local, users.numel()), ks, user_block)


class ProcessGroupShard:
    """This rank's part of a loss split over the ranks of the default process group (the
    ``shard`` argument of ``ops.contrastive_loss`` / ``ops.contrastive_fusion_loss``)."""

    def __init__(self) -> None:
        self.index, self.count = rank_and_world()

    def logsumexp(self, partial: torch.Tensor, shift: float | None = None) -> torch.Tensor:
        """log sum_r exp(partial_r), elementwise: one all-reduce of exp(partial - shift) when a
        safe ``shift`` is known, else two (the max, then the shifted sum)."""
        if self.count == 1:
            return partial
        if shift is not None:
            total = torch.exp(partial - shift)
            guard("all_reduce (contrastive sum)", dist.all_reduce, total)
            return shift + torch.log(total)
        top = partial.clone()
        guard("all_reduce (contrastive max)", dist.all_reduce, top, op=dist.ReduceOp.MAX)
        # a row no rank touched stays -inf (log 0) instead of becoming NaN
        shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
        total = torch.exp(partial - shift)
        guard("all_reduce (contrastive sum)", dist.all_reduce, total)
        return shift + torch.log(total)


def contrastive_loss(z1: torch.Tensor, z2: torch.Tensor, *, tau: float = 0.5,
                     symmetric: bool = False, backend: str = "auto",
                     for_ddp: bool = False) -> torch.Tensor:
    """``ops.contrastive_loss`` split over the ranks (see the module docstring): this rank's
    part, ``loss / W``, or with ``for_ddp`` the full loss value with gradients scaled for
    DistributedDataParallel's mean. Every rank must pass the same ``z1``, ``z2``."""
    shard = ProcessGroupShard()
    part = _contrastive_loss(z1, z2, tau=tau, symmetric=symmetric, backend=backend,
                             shard=shard if shard.count > 1 else None)
    return part * shard.count if for_ddp and shard.count > 1 else part


def contrastive_fusion_loss(views, weights: torch.Tensor, *, tau: float = 0.5,
                            symmetric: bool = False, backend: str = "auto",
                            for_ddp: bool = False) -> torch.Tensor:
    """``ops.contrastive_fusion_loss`` split over the ranks, like ``contrastive_loss``."""
    shard = ProcessGroupShard()
    part = _contrastive_fusion_loss(views, weights, tau=tau, symmetric=symmetric,
                                    backend=backend, shard=shard if shard.count > 1 else None)
    return part * shard.count if for_ddp and shard.count > 1 else part


def broadcast_parameters(module: torch.nn.Module, src: int = 0) -> None:
    """Copies rank ``src``'s parameters and buffers to every rank (in place)."""
    if not is_active():
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            guard("broadcast (parameters)", dist.broadcast, t.data, src)


def average_gradients(parameters, what: str = "gradient all-reduce") -> int:
    """Replaces every ``.grad`` of ``parameters`` by its mean over the ranks, in one flat
    all-reduce of the gradients that exist (every rank must hold the same set, as ranks that
    run the same step do); parameters without a gradient are left alone and cost nothing,
    unlike a DistributedDataParallel bucket, which reduces all of its parameters every step.
    Returns the number of values exchanged."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not is_active() or not grads:
        return 0
    flat = torch.cat([g.reshape(-1) for g in grads])
    guard(what, dist.all_reduce, flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
    return flat.numel()


def all_reduce_mean(t: torch.Tensor, what: str = "all_reduce") -> torch.Tensor:
    """The mean of ``t`` over the ranks (``t`` itself without a process group)."""
    if not is_active():
        return t
    out = t.clone()
    guard(what, dist.all_reduce, out)
    return out / dist.get_world_size()


def init_from_env(backend: str = "gloo", timeout_s: float | None = None) -> tuple[int, int]:
    """Joins the process group that ``torchrun`` describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) with ``backend`` (``"nccl"`` for one GPU
    per local rank, ``"gloo"`` for CPU) and returns ``(rank, world_size)``. A single process
    (no ``WORLD_SIZE`` > 1) gets ``(0, 1)`` and no process group.

    ``timeout_s`` (default: ``MICRO_FAST_DIST_TIMEOUT`` or 600) bounds how long a collective
    waits for a rank that died or stalled before ``CollectiveError``.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_initialized():
        if timeout_s is None:
            timeout_s = float(os.environ.get("MICRO_FAST_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
        guard("init_process_group", dist.init_process_group, backend,
               timeout=datetime.timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


def shutdown() -> None:
    """Leaves the process group (if any), after dropping unreachable objects (e.g. a DDP
    wrapper) that still hold it."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()
