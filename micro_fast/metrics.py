r"""Full-ranking evaluation: every item is a candidate except the user's training items.

For user :math:`u` with target items :math:`T_u` (validation or test) and the top-:math:`K` list
:math:`r_1..r_K` of the scores :math:`\langle e_u, e_i \rangle` over the items not in the
user's training set, with :math:`h_j = [r_j \in T_u]`:

* ``recall@K``    :math:`\sum_{j \le K} h_j / |T_u|`
* ``precision@K`` :math:`\sum_{j \le K} h_j / K`
* ``hit@K``       :math:`[\sum_{j \le K} h_j > 0]`
* ``ndcg@K``      :math:`\mathrm{DCG}/\mathrm{IDCG}` with :math:`\mathrm{DCG} = \sum_j h_j /
  \log_2(j + 1)` and the ideal DCG of :math:`\min(|T_u|, K)` hits (standard). With
  ``ndcg="published"`` the ideal DCG is that of the retrieved list sorted hits first, as the
  NGCF-era code that MICRO/LATTICE evaluate with computes it: the list is the top
  :math:`\max K` of all cut-offs, so the ideal at K has :math:`\min(\text{hits in the top }
  \max K, K)` hits (missed targets are ignored).

Each metric is the mean over the users with at least one target item. Scores are never formed
as a users x items matrix: ``topk_similarity`` streams the items with the training items
excluded.
"""

from __future__ import annotations

import math

import torch

from micro_fast.errors import InputError, InputTypeError
from micro_fast.graph import CSRGraph
from micro_fast.ops._checks import check_matrix
from micro_fast.ops.topk_similarity import topk_similarity

NDCG_VARIANTS = ("standard", "published")


def _check(name: str, graph: object, shape: tuple[int, int]) -> None:
    if not isinstance(graph, CSRGraph):
        raise InputTypeError(f"{name} must be a CSRGraph, got {type(graph).__name__}")
    if graph.shape != shape:
        raise InputError(f"{name} has shape {graph.shape}, expected {shape} (users, items)")


def check_ranking_inputs(user_emb: object, item_emb: object, train: CSRGraph | None,
                  target: CSRGraph, ks: object, ndcg: str, user_block: int) -> tuple[int, ...]:
    if not isinstance(user_emb, torch.Tensor) or user_emb.dim() != 2:
        raise InputError("user_emb must be a 2-D tensor [users, dim]")
    if not isinstance(item_emb, torch.Tensor) or item_emb.dim() != 2:
        raise InputError("item_emb must be a 2-D tensor [items, dim]")
    if item_emb.shape[1] != user_emb.shape[1]:
        raise InputError(f"item_emb has {item_emb.shape[1]} columns but user_emb has "
                         f"{user_emb.shape[1]}")
    if item_emb.dtype != user_emb.dtype:
        raise InputTypeError(f"item_emb dtype {item_emb.dtype} differs from user_emb dtype "
                        f"{user_emb.dtype}")
    check_matrix("user_emb", user_emb)
    check_matrix("item_emb", item_emb)
    n_users, n_items = user_emb.shape[0], item_emb.shape[0]
    _check("target", target, (n_users, n_items))
    if train is not None:
        _check("train", train, (n_users, n_items))
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise InputError(f"ks must be non-empty cut-offs >= 1, got {ks}")
    if ndcg not in NDCG_VARIANTS:
        raise InputError(f"ndcg must be one of {NDCG_VARIANTS}, got {ndcg!r}")
    if user_block < 1:
        raise InputError(f"user_block must be >= 1, got {user_block}")
    return ks


def metric_names(ks: tuple[int, ...]) -> list[str]:
    """Column order of ``per_user_metrics``."""
    return [f"{m}@{k}" for k in ks for m in ("recall", "precision", "ndcg", "hit")]


def evaluated_users(target: CSRGraph) -> torch.Tensor:
    """The users with at least one target item (int64, ascending): those the metrics average."""
    return torch.nonzero(target.degrees() > 0).flatten()


def per_user_metrics(user_emb: torch.Tensor, item_emb: torch.Tensor, train: CSRGraph | None,
                     target: CSRGraph, users: torch.Tensor, ks: tuple[int, ...], *,
                     ndcg: str = "standard", user_block: int = 8192,
                     backend: str = "auto") -> torch.Tensor:
    """float64 [len(users), 4 len(ks)]: each metric (``metric_names`` order) of each of
    ``users`` (which must have target items). A user's row depends on that user alone, so
    any split of the users gives the same rows."""
    n_items = item_emb.shape[0]
    kmax = min(max(ks), n_items)
    device = user_emb.device
    users = users.to(device)
    # discounts 1 / log2(j + 1) for ranks j = 1..kmax
    disc = 1.0 / torch.log2(torch.arange(2, kmax + 2, dtype=torch.float64, device=device))
    cdisc = torch.cumsum(disc, 0)
    tgt_keys = target.row_indices().to(device) * n_items + target.indices.to(device)
    out = torch.empty(users.numel(), 4 * len(ks), dtype=torch.float64, device=device)
    with torch.no_grad():
        for b0 in range(0, users.numel(), user_block):
            rows = users[b0:b0 + user_block]
            exclude = train.select_rows(rows) if train is not None else None
            _, top = topk_similarity(user_emb[rows], item_emb, kmax, exclude=exclude,
                                     backend=backend)
            keys = rows[:, None] * n_items + top
            pos = torch.searchsorted(tgt_keys, keys.reshape(-1)).clamp_max(tgt_keys.numel() - 1)
            hits = ((tgt_keys[pos] == keys.reshape(-1)) & (top.reshape(-1) >= 0))
            hits = hits.reshape(keys.shape).to(torch.float64)  # [B, kmax]
            n_target = (target.indptr[rows + 1] - target.indptr[rows]).to(device, torch.float64)
            cum = torch.cumsum(hits, dim=1)
            dcg = torch.cumsum(hits * disc, dim=1)
            cols = []
            for k in ks:
                kk = min(k, kmax)
                h = cum[:, kk - 1]
                if ndcg == "standard":
                    ideal = cdisc[(n_target.clamp_max(kk) - 1).long()]
                else:  # ideal list = the hits of the whole retrieved list (max K) moved
                    # to the top, cut at K: the published code sorts its max(Ks) list
                    n_hit = cum[:, kmax - 1].long().clamp_max(kk)
                    ideal = torch.where(n_hit > 0, cdisc[(n_hit - 1).clamp_min(0)],
                                        torch.ones_like(h))
                cols += [h / n_target, h / k, dcg[:, kk - 1] / ideal, (h > 0).to(torch.float64)]
            out[b0:b0 + rows.numel()] = torch.stack(cols, dim=1)
    return out


def reduce_metrics(values: torch.Tensor, ks: tuple[int, ...],
                   user_block: int = 8192) -> dict[str, float]:
    """Means of ``per_user_metrics`` rows (all evaluated users, in user order), summed in
    blocks of ``user_block`` users so that the result does not depend on how the rows were
    computed."""
    n = values.shape[0]
    sums = torch.zeros(values.shape[1], dtype=torch.float64)
    for b0 in range(0, n, user_block):
        sums += values[b0:b0 + user_block].sum(dim=0).cpu()
    out = {key: (float(sums[c]) / n if n else math.nan)
           for c, key in enumerate(metric_names(ks))}
    out["users"] = n
    return out


def full_ranking(user_emb: torch.Tensor, item_emb: torch.Tensor, train: CSRGraph | None,
                 target: CSRGraph, ks: tuple[int, ...] | list[int] = (10, 20, 50), *,
                 ndcg: str = "standard", user_block: int = 8192,
                 backend: str = "auto") -> dict[str, float]:
    """Recall, precision, NDCG and hit ratio at each K over all items.

    Args:
        user_emb: float [U, d].
        item_emb: float [I, d], same dtype and device.
        train: ``CSRGraph`` (U, I) of the training interactions, excluded from the ranking
            (``None`` ranks every item).
        target: ``CSRGraph`` (U, I) of the held-out interactions; users without any are skipped.
        ks: cut-offs, each >= 1 (cut-offs above I are clamped to I).
        ndcg: ``"standard"`` or ``"published"`` (see the module docstring).
        user_block: users ranked per call (bounds the [block, max K] result buffers).
        backend: as in ``topk_similarity``.

    Returns:
        ``{"recall@K": ..., "precision@K": ..., "ndcg@K": ..., "hit@K": ..., "users": n}``.
    """
    ks = check_ranking_inputs(user_emb, item_emb, train, target, ks, ndcg, user_block)
    values = per_user_metrics(user_emb, item_emb, train, target, evaluated_users(target), ks,
                              ndcg=ndcg, user_block=user_block, backend=backend)
    return reduce_metrics(values, ks, user_block)
