"""The published evaluation (``utility/batch_test.py``): per user, the ``max(Ks)`` best items
outside the training items by ``heapq.nlargest``, then recall, precision, the published NDCG
and the hit ratio, averaged over the users tested; AUC only with ``test_flag`` "full".
``data_generator`` and ``Ks`` are module globals, as published (set them before a call)."""

from __future__ import annotations

import heapq
from types import SimpleNamespace

import numpy as np
import torch

args = SimpleNamespace(test_flag="part", batch_size=1024)
Ks = [10, 20]
data_generator = None  # a trainer.Data


def _dcg(r, k):
    r = np.asarray(r, dtype=np.float64)[:k]
    return float(np.sum(r / np.log2(np.arange(2, r.size + 2)))) if r.size else 0.0


def _user_metrics(rating, u, is_val):
    train = data_generator.train_items.get(u, [])
    targets = (data_generator.val_set if is_val else data_generator.test_set)[u]
    candidates = list(set(range(data_generator.n_items)) - set(train))
    scores = {i: rating[i] for i in candidates}
    top = heapq.nlargest(max(Ks), scores, key=scores.get)
    r = [1 if i in targets else 0 for i in top]
    auc = 0.0
    if args.test_flag != "part":
        from sklearn.metrics import roc_auc_score

        order = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
        truth = [1 if i in targets else 0 for i, _ in order]
        try:
            auc = roc_auc_score(truth, [s for _, s in order])
        except ValueError:
            auc = 0.0
    out = {"precision": [], "recall": [], "ndcg": [], "hit_ratio": []}
    for k in Ks:
        out["precision"].append(float(np.mean(r[:k])))
        out["recall"].append(sum(r[:k]) / len(targets) if targets else 0.0)
        ideal = _dcg(sorted(r, reverse=True), k)
        out["ndcg"].append(_dcg(r, k) / ideal if ideal else 0.0)
        out["hit_ratio"].append(1.0 if sum(r[:k]) > 0 else 0.0)
    return out, auc


def test_torch(ua_embeddings, ia_embeddings, users_to_test, is_val, drop_flag=False,
               batch_test_flag=False):
    result = {m: np.zeros(len(Ks)) for m in ("precision", "recall", "ndcg", "hit_ratio")}
    result["auc"] = 0.0
    n = len(users_to_test)
    step = 2 * args.batch_size
    for b0 in range(0, n, step):
        batch = users_to_test[b0:b0 + step]
        rate = torch.matmul(ua_embeddings[batch], ia_embeddings.t()).detach().cpu().numpy()
        for row, u in zip(rate, batch, strict=True):
            metrics, auc = _user_metrics(row, u, is_val)
            for m, values in metrics.items():
                result[m] += np.asarray(values) / n
            result["auc"] += auc / n
    return result
