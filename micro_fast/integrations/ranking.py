"""The published MICRO / LATTICE evaluation (``utility/batch_test.py``: ``test_torch``) on the
library's streamed top-k.

The published function scores each user against every item (a users x items block), hands the
rows to a process pool, and per user takes the ``max(Ks)`` best items outside the user's
training items with ``heapq.nlargest`` (ties: the smaller item id first), then:

* ``recall@K``    hits in the first K / the length of the user's target list,
* ``precision@K`` hits in the first K / K,
* ``ndcg@K``      DCG of the first K over the DCG of the same list with its hits moved to the
  top (the ideal of the retrieved list, not of the targets),
* ``hit_ratio@K`` 1 if any hit in the first K,
* ``auc``         0 with ``args.test_flag == "part"`` (the default), else the ROC AUC of the
  user's scores over the candidate items (0 when the user has no positive or no negative),

each averaged over ``users_to_test`` (a user without targets counts as 0), returned as
``{"precision": array[len(Ks)], "recall": ..., "ndcg": ..., "hit_ratio": ..., "auc": float}``.
Here the top-k is ``topk_similarity`` with the training items excluded, in user blocks, with no
users x items block (except for the AUC, which needs every score of a block of users).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from micro_fast.errors import InputError
from micro_fast.graph import CSRGraph
from micro_fast.metrics import per_user_metrics

#: users per block of the AUC's dense scores
AUC_USER_BLOCK = 1024


def _lists_graph(users: Sequence[int], lists: Mapping[int, Sequence[int]], n_items: int,
                 device: torch.device) -> tuple[CSRGraph, torch.Tensor]:
    """The (len(users), n_items) graph of each user's listed items (repeats once) and the
    lists' lengths (repeats counted, as the published recall divides by them)."""
    rows, cols, lengths = [], [], []
    for r, u in enumerate(users):
        items = list(lists.get(u, ()))
        lengths.append(len(items))
        rows.extend([r] * len(items))
        cols.extend(items)
    rows_t = torch.as_tensor(rows, dtype=torch.int64)
    cols_t = torch.as_tensor(cols, dtype=torch.int64)
    if cols_t.numel() and (int(cols_t.min()) < 0 or int(cols_t.max()) >= n_items):
        raise InputError(f"item ids must lie in [0, {n_items})")
    graph = CSRGraph.from_coo(rows_t, cols_t, torch.ones(cols_t.numel(), dtype=torch.float64),
                              shape=(len(users), n_items))
    return graph.to(device), torch.as_tensor(lengths, dtype=torch.float64)


def published_ranking(ua_embeddings: torch.Tensor, ia_embeddings: torch.Tensor,
                      users_to_test: Sequence[int], train_items: Mapping[int, Sequence[int]],
                      targets: Mapping[int, Sequence[int]], ks: Sequence[int], *,
                      auc: bool = False) -> dict[str, Any]:
    """The published ``test_torch`` result (module docstring) for ``users_to_test`` with
    embeddings ``ua_embeddings`` [U, d], ``ia_embeddings`` [I, d] (same dtype and device),
    training items ``train_items[u]`` (excluded from the ranking), target items
    ``targets[u]`` and cut-offs ``ks``."""
    users = [int(u) for u in users_to_test]
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise InputError(f"Ks must be positive cut-offs, got {ks}")
    n_items, device = ia_embeddings.shape[0], ia_embeddings.device
    n = len(users)
    out: dict[str, Any] = {m: np.zeros(len(ks)) for m in ("precision", "recall", "ndcg",
                                                          "hit_ratio")}
    out["auc"] = 0.0
    if n == 0:
        return out
    with torch.no_grad():
        user_emb = ua_embeddings.detach()[torch.as_tensor(users, device=device)]
        item_emb = ia_embeddings.detach()
        train, _ = _lists_graph(users, train_items, n_items, device)
        target, lengths = _lists_graph(users, targets, n_items, device)
        has = torch.nonzero(target.degrees().cpu() > 0).flatten()
        if has.numel():
            values = per_user_metrics(user_emb, item_emb, train, target, has.to(device), ks,
                                      ndcg="published").cpu()
            # per_user_metrics divides the hits by the distinct targets; published: the list
            recall_scale = (target.degrees().cpu()[has].to(torch.float64) / lengths[has])
            sums = values.sum(dim=0)
            for c in range(len(ks)):
                out["recall"][c] = float((values[:, 4 * c] * recall_scale).sum()) / n
                out["precision"][c] = float(sums[4 * c + 1]) / n
                out["ndcg"][c] = float(sums[4 * c + 2]) / n
                out["hit_ratio"][c] = float(sums[4 * c + 3]) / n
        if auc:
            out["auc"] = _auc_sum(user_emb, item_emb, train, target) / n
    return out


def _auc_sum(user_emb: torch.Tensor, item_emb: torch.Tensor, train: CSRGraph,
             target: CSRGraph) -> float:
    """The sum over users of the ROC AUC of their scores over the candidate (non-training)
    items, positives their targets (ties counted half, as ``roc_auc_score`` does; 0 for a user
    with no positive or no negative candidate)."""
    total = 0.0
    n_items = item_emb.shape[0]
    for b0 in range(0, user_emb.shape[0], AUC_USER_BLOCK):
        rows = torch.arange(b0, min(b0 + AUC_USER_BLOCK, user_emb.shape[0]),
                            device=user_emb.device)
        scores = (user_emb[rows] @ item_emb.T).to(torch.float64)
        excluded = train.select_rows(rows).to_dense().bool()
        positive = target.select_rows(rows).to_dense().bool() & ~excluded
        # candidates only: the training items sort past every finite score
        scores = scores.masked_fill(excluded, float("inf"))
        ordered = torch.sort(scores, dim=1).values
        below = torch.searchsorted(ordered, scores, right=False).to(torch.float64)
        upto = torch.searchsorted(ordered, scores, right=True).to(torch.float64)
        ranks = (below + upto + 1) / 2  # 1-based average ranks among the candidates
        n_pos = positive.sum(dim=1).to(torch.float64)
        n_neg = (n_items - excluded.sum(dim=1)).to(torch.float64) - n_pos
        rank_sum = torch.where(positive, ranks, torch.zeros_like(ranks)).sum(dim=1)
        valid = (n_pos > 0) & (n_neg > 0)
        auc = (rank_sum - n_pos * (n_pos + 1) / 2) / torch.where(valid, n_pos * n_neg,
                                                                  torch.ones_like(n_pos))
        total += float(torch.where(valid, auc, torch.zeros_like(auc)).sum())
    return total


def published_test_torch(original: Callable) -> Callable:
    """A drop-in for a published ``test_torch`` function: same signature and result, reading
    what the original reads from its module (``data_generator``: ``train_items``,
    ``val_set``, ``test_set``, ``n_items``; ``Ks``; ``args.test_flag``)."""
    context = original.__globals__

    def test_torch(ua_embeddings: torch.Tensor, ia_embeddings: torch.Tensor,
                   users_to_test: Sequence[int], is_val: bool, drop_flag: bool = False,
                   batch_test_flag: bool = False) -> dict[str, Any]:
        del drop_flag, batch_test_flag  # the published switches for memory; nothing to save
        data = context["data_generator"]
        args = context.get("args")
        flag = getattr(args, "test_flag", "part")
        return published_ranking(ua_embeddings, ia_embeddings, users_to_test,
                                 data.train_items, data.val_set if is_val else data.test_set,
                                 list(context["Ks"]), auc=flag != "part")

    test_torch.__doc__ = ("The published test_torch on micro_fast's streamed top-k "
                          "(micro_fast.integrations.ranking).")
    test_torch.__wrapped__ = original  # type: ignore[attr-defined]
    return test_torch
