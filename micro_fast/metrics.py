r"""Full-ranking evaluation: every item is a candidate except the user's training items.

For user :math:`u` with target items :math:`T_u` (validation or test) and the top-:math:`K` list
:math:`r_1..r_K` of the scores :math:`\langle e_u, e_i \rangle` over the items not in the
user's training set, with :math:`h_j = [r_j \in T_u]`:

* ``recall@K``    :math:`\sum_{j \le K} h_j / |T_u|`
* ``precision@K`` :math:`\sum_{j \le K} h_j / K`
* ``hit@K``       :math:`[\sum_{j \le K} h_j > 0]`
* ``ndcg@K``      :math:`\mathrm{DCG}/\mathrm{IDCG}` with :math:`\mathrm{DCG} = \sum_j h_j /
  \log_2(j + 1)` and the ideal DCG of :math:`\min(|T_u|, K)` hits (standard). With
  ``ndcg="published"`` the ideal DCG is that of the retrieved hits sorted first, as the
  NGCF-era code that MICRO/LATTICE evaluate with computes it (it ignores missed targets).

Each metric is the mean over the users with at least one target item. Scores are never formed
as a users x items matrix: ``topk_similarity`` streams the items with the training items
excluded.
"""

from __future__ import annotations

import math

import torch

from micro_fast.graph import CSRGraph
from micro_fast.ops.topk_similarity import topk_similarity

NDCG_VARIANTS = ("standard", "published")


def _rows(graph: CSRGraph, rows: torch.Tensor) -> CSRGraph:
    """The sub-graph of ``rows`` (all columns kept)."""
    starts, ends = graph.indptr[rows], graph.indptr[rows + 1]
    counts = ends - starts
    indptr = torch.zeros(rows.numel() + 1, dtype=torch.int64, device=rows.device)
    torch.cumsum(counts, 0, out=indptr[1:])
    offsets = torch.repeat_interleave(starts - indptr[:-1], counts)
    pos = torch.arange(int(indptr[-1]), device=rows.device) + offsets
    return CSRGraph(indptr, graph.indices[pos], graph.values[pos], (rows.numel(), graph.shape[1]),
                    validate=False)


def _check(name: str, graph: object, shape: tuple[int, int]) -> None:
    if not isinstance(graph, CSRGraph):
        raise TypeError(f"{name} must be a CSRGraph, got {type(graph).__name__}")
    if graph.shape != shape:
        raise ValueError(f"{name} has shape {graph.shape}, expected {shape} (users, items)")


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
    if not isinstance(user_emb, torch.Tensor) or user_emb.dim() != 2:
        raise ValueError("user_emb must be a 2-D tensor [users, dim]")
    if not isinstance(item_emb, torch.Tensor) or item_emb.dim() != 2:
        raise ValueError("item_emb must be a 2-D tensor [items, dim]")
    n_users, n_items = user_emb.shape[0], item_emb.shape[0]
    _check("target", target, (n_users, n_items))
    if train is not None:
        _check("train", train, (n_users, n_items))
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be non-empty cut-offs >= 1, got {ks}")
    if ndcg not in NDCG_VARIANTS:
        raise ValueError(f"ndcg must be one of {NDCG_VARIANTS}, got {ndcg!r}")
    if user_block < 1:
        raise ValueError(f"user_block must be >= 1, got {user_block}")
    kmax = min(max(ks), n_items)
    device = user_emb.device
    users = torch.nonzero(target.degrees() > 0).flatten().to(device)
    # discounts 1 / log2(j + 1) for ranks j = 1..kmax
    disc = 1.0 / torch.log2(torch.arange(2, kmax + 2, dtype=torch.float64, device=device))
    sums = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "precision", "ndcg", "hit")}
    tgt_keys = target.row_indices().to(device) * n_items + target.indices.to(device)
    with torch.no_grad():
        for b0 in range(0, users.numel(), user_block):
            rows = users[b0:b0 + user_block]
            exclude = _rows(train, rows) if train is not None else None
            _, top = topk_similarity(user_emb[rows], item_emb, kmax, exclude=exclude,
                                     backend=backend)
            keys = rows[:, None] * n_items + top
            pos = torch.searchsorted(tgt_keys, keys.reshape(-1)).clamp_max(tgt_keys.numel() - 1)
            hits = ((tgt_keys[pos] == keys.reshape(-1)) & (top.reshape(-1) >= 0))
            hits = hits.reshape(keys.shape).to(torch.float64)  # [B, kmax]
            n_target = (target.indptr[rows + 1] - target.indptr[rows]).to(device, torch.float64)
            cum = torch.cumsum(hits, dim=1)
            dcg = torch.cumsum(hits * disc, dim=1)
            cdisc = torch.cumsum(disc, 0)
            for k in ks:
                kk = min(k, kmax)
                h = cum[:, kk - 1]
                sums[f"recall@{k}"] += float((h / n_target).sum())
                sums[f"precision@{k}"] += float((h / k).sum())
                sums[f"hit@{k}"] += float((h > 0).sum())
                if ndcg == "standard":
                    ideal = cdisc[(n_target.clamp_max(kk) - 1).long()]
                else:  # ideal list = the retrieved hits moved to the top
                    n_hit = h.long()
                    ideal = torch.where(n_hit > 0, cdisc[(n_hit - 1).clamp_min(0)],
                                        torch.ones_like(h))
                sums[f"ndcg@{k}"] += float((dcg[:, kk - 1] / ideal).sum())
    n = users.numel()
    out = {key: (v / n if n else math.nan) for key, v in sums.items()}
    out["users"] = n
    return out
