"""Synthetic multimodal datasets with a planted structure, generated fully vectorized.

Generative model (all draws from one seeded numpy ``Generator`` per stream):

* items fall into ``C`` latent clusters with centroids ``mu_c ~ N(0, I_r)``; item ``i`` of
  cluster ``c(i)`` has a latent vector ``z_i = mu_c(i) + 0.5 * N(0, I_r)`` and a popularity
  ``w_i ~ LogNormal(0, 1)``;
* modality ``m`` sees ``F_m = z W_m / sqrt(r) + noise * N(0, 1)`` with its own random map
  ``W_m`` [r, d_m], so items of one cluster are alike in every modality, each in its own way;
* user ``u`` prefers clusters by ``theta_u ~ Dirichlet(0.1)`` (a few clusters each); each of its
  interactions picks, with probability 0.9, a cluster from ``theta_u`` and an item of that
  cluster by popularity, else any item by popularity. Users get at least 3 distinct items and
  a heavy-tailed number more.

Hence kNN graphs of the features link items that the same users choose. The planted clusters
are in ``dataset.meta["item_cluster"]``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from micro_fast.data.dataset import Dataset, interactions
from micro_fast.errors import InputError

#: (n_users, n_items, n_interactions, dims) per size; "baby"/"clothing" match Amazon 5-core
PRESETS: dict[str, tuple[int, int, int, dict[str, int]]] = {
    "tiny": (300, 200, 3000, {"image": 64, "text": 32}),
    "small": (2000, 1000, 20000, {"image": 128, "text": 64}),
    "medium": (6000, 3000, 60000, {"image": 256, "text": 128}),
    "baby": (19445, 7050, 160792, {"image": 4096, "text": 1024}),
    "clothing": (39387, 23033, 278677, {"image": 4096, "text": 1024}),
}

_LATENT = 32          # r: latent dimension of the item vectors
_SPREAD = 0.5         # within-cluster spread of the item latents, relative to the centroids
_ALPHA = 0.1          # Dirichlet concentration of the user cluster preferences
_EXPLORE = 0.1        # share of interactions drawn outside the preferred clusters
_MIN_ITEMS = 3        # items per user, at least (when there are that many items)
_MAX_ROUNDS = 8       # sampling rounds before the remaining slots are filled uniformly


def synthetic(size: str = "tiny", *, n_users: int | None = None, n_items: int | None = None,
              n_interactions: int | None = None, dims: dict[str, int] | None = None,
              n_clusters: int | None = None, noise: float = 1.0, seed: int = 0,
              split: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> Dataset:
    """A ``Dataset`` from the planted model of the module docstring.

    Args:
        size: a key of ``PRESETS``; the keyword arguments below override its numbers.
        n_users, n_items, n_interactions: exact counts (``n_interactions`` is clipped to
            ``[3 * n_users, n_users * n_items]``; each user has at least 3 items, or all).
        dims: modality name -> feature dimension.
        n_clusters: latent item clusters (default ``~ sqrt(n_items) / 1.5``).
        noise: std of the per-entry Gaussian noise of the features (signal std is ~1).
        seed: the same seed gives the same dataset.
        split: train / valid / test shares of each user's items, rounded per user; every user
            keeps at least one train item.

    Returns:
        ``Dataset`` named ``"synthetic-<size>"``; float32 features [n_items, d_m].
    """
    if size not in PRESETS:
        raise InputError(f"size must be one of {sorted(PRESETS)}, got {size!r}")
    pu, pi, pn, pdims = PRESETS[size]
    n_users = pu if n_users is None else int(n_users)
    n_items = pi if n_items is None else int(n_items)
    n_inter = pn if n_interactions is None else int(n_interactions)
    dims = dict(pdims if dims is None else dims)
    if n_users < 1 or n_items < 1:
        raise InputError(f"n_users and n_items must be >= 1, got {n_users}, {n_items}")
    if any(int(d) < 1 for d in dims.values()):
        raise InputError(f"dims must be positive, got {dims}")
    if noise < 0:
        raise InputError(f"noise must be >= 0, got {noise}")
    if len(split) != 3 or min(split) < 0 or split[0] <= 0:
        raise InputError(f"split must be three shares with a positive train share, got {split}")
    if n_clusters is None:
        n_clusters = max(2, round(math.sqrt(n_items) / 1.5))
    n_clusters = max(1, min(int(n_clusters), n_items))

    # independent streams: changing one modality's dim leaves the interactions unchanged
    ss = np.random.SeedSequence(seed)
    rng_items, rng_users, rng_split, rng_feat = (np.random.Generator(np.random.PCG64(s))
                                                 for s in ss.spawn(4))
    cluster, latent, pop = _items(rng_items, n_items, n_clusters)
    users, items = _interactions(rng_users, n_users, n_items, n_inter, cluster, pop, n_clusters)
    label = _split_labels(rng_split, users, n_users, split)
    splits = {s: interactions(users[label == k], items[label == k], n_users, n_items)
              for k, s in enumerate(("train", "valid", "test"))}
    feat_seeds = rng_feat.integers(0, 2**63, size=len(dims))
    features = {m: _features(np.random.default_rng(int(s)), latent, int(d), noise)
                for (m, d), s in zip(sorted(dims.items()), feat_seeds, strict=True)}
    meta: dict[str, Any] = {"source": "synthetic", "size": size, "seed": seed, "noise": noise,
                            "n_clusters": n_clusters, "item_cluster": torch.from_numpy(cluster)}
    return Dataset(f"synthetic-{size}", n_users, n_items, **splits, features=features,
                   meta=meta).validate()


def _items(rng: np.random.Generator, n_items: int,
           n_clusters: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cluster id (int64 [I]), latent vector (float32 [I, r]), popularity (float64 [I])."""
    # every cluster gets an item, so no user prefers an empty cluster
    cluster = np.concatenate([np.arange(n_clusters),
                              rng.integers(0, n_clusters, n_items - n_clusters)])
    cluster = rng.permutation(cluster).astype(np.int64)
    centroids = rng.standard_normal((n_clusters, _LATENT))
    latent = centroids[cluster] + _SPREAD * rng.standard_normal((n_items, _LATENT))
    pop = rng.lognormal(0.0, 1.0, n_items)
    return cluster, latent.astype(np.float32), pop


def _features(rng: np.random.Generator, latent: np.ndarray, d: int,
              noise: float) -> torch.Tensor:
    """``latent @ W / sqrt(r) + noise * N(0, 1)``, float32 [I, d]."""
    w = rng.standard_normal((latent.shape[1], d), dtype=np.float32)
    w *= np.float32(1.0 / math.sqrt(latent.shape[1] * (1 + _SPREAD**2)))
    f = latent @ w
    if noise > 0:
        # in place and in float32: the 4096-d features of the large presets are ~0.4 GB
        f += np.float32(noise) * rng.standard_normal(f.shape, dtype=np.float32)
    return torch.from_numpy(f)


def _segment_cdf(groups: np.ndarray, weights: np.ndarray, n_groups: int) -> np.ndarray:
    """For entries sorted by group: ``group + (cumulative weight within the group) / total``.

    The result is sorted across all groups, so one ``searchsorted(cdf, g + u)`` with
    ``u ~ U[0, 1)`` draws an entry of group ``g`` in proportion to its weight, for a whole
    batch of draws at once.
    """
    csum = np.cumsum(weights)
    ends = np.searchsorted(groups, np.arange(n_groups), side="right") - 1
    base = np.concatenate([[0.0], csum[ends[:-1]]])
    total = csum[ends] - base
    cdf = groups + (csum - base[groups]) / total[groups]
    cdf[ends] = np.arange(n_groups) + 1.0  # exact group ends despite rounding
    return cdf


def _interactions(rng: np.random.Generator, n_users: int, n_items: int, n_inter: int,
                  cluster: np.ndarray, pop: np.ndarray,
                  n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """Unique (user, item) pairs, int64 [n] each, ``n = sum of per-user counts``."""
    floor = min(_MIN_ITEMS, n_items)
    n_inter = min(max(n_inter, floor * n_users), n_users * n_items)
    # heavy-tailed activity: a multinomial share of the interactions beyond the floor
    activity = rng.lognormal(0.0, 1.0, n_users)
    extra = rng.multinomial(n_inter - floor * n_users, activity / activity.sum())
    want = _cap(rng, floor + extra, activity, n_items)

    theta = rng.gamma(_ALPHA, 1.0, (n_users, n_clusters)) + 1e-12
    pref_cdf = _segment_cdf(np.repeat(np.arange(n_users), n_clusters), theta.ravel(), n_users)
    by_cluster = np.argsort(cluster, kind="stable")
    item_cdf = _segment_cdf(cluster[by_cluster], pop[by_cluster], n_clusters)
    pop_cdf = np.cumsum(pop) / pop.sum()

    def draw(u: np.ndarray, uniform: bool) -> np.ndarray:
        if uniform:
            return rng.integers(0, n_items, u.size)
        c = np.searchsorted(pref_cdf, u + rng.random(u.size), side="right") - u * n_clusters
        c = np.clip(c, 0, n_clusters - 1)
        pos = np.searchsorted(item_cdf, c + rng.random(u.size), side="right")
        it = by_cluster[np.minimum(pos, n_items - 1)]
        explore = rng.random(u.size) < _EXPLORE
        it[explore] = np.minimum(np.searchsorted(pop_cdf, rng.random(int(explore.sum()))),
                                 n_items - 1)
        return it

    keys = np.empty(0, np.int64)
    have = np.zeros(n_users, np.int64)
    for rnd in range(_MAX_ROUNDS + 1):
        need = want - have
        if not need.any():
            break
        # oversample: repeats and the cap per user are resolved below
        u = np.repeat(np.arange(n_users), need + need // 2 + 2 * (need > 0))
        it = draw(u, uniform=rnd == _MAX_ROUNDS)
        new = np.unique(u * n_items + it)
        new = new[~np.isin(new, keys, assume_unique=True)]
        # keep at most `need` new items per user, chosen at random among the new ones
        nu = new // n_items
        order = np.lexsort((rng.random(new.size), nu))
        new, nu = new[order], nu[order]
        start = np.searchsorted(nu, nu, side="left")
        new = new[np.arange(new.size) - start < need[nu]]
        keys = np.union1d(keys, new)
        have = np.bincount(keys // n_items, minlength=n_users)
    need = want - have
    if need.any():
        keys = np.union1d(keys, _fill(rng, keys, need, n_items))
    return keys // n_items, keys % n_items


def _cap(rng: np.random.Generator, want: np.ndarray, activity: np.ndarray,
         n_items: int) -> np.ndarray:
    """``want`` capped at ``n_items`` per user, the excess handed to users with room (by
    activity, then in order), so the total is kept whenever it fits."""
    for _ in range(4):
        excess = int(np.maximum(want - n_items, 0).sum())
        want = np.minimum(want, n_items)
        room = n_items - want
        if excess == 0 or not room.any():
            return want
        p = activity * (room > 0)
        want = want + rng.multinomial(excess, p / p.sum())
    excess = int(np.maximum(want - n_items, 0).sum())
    want = np.minimum(want, n_items)
    room = n_items - want
    before = np.cumsum(room) - room
    return want + np.clip(excess - before, 0, room)


def _fill(rng: np.random.Generator, keys: np.ndarray, need: np.ndarray,
          n_items: int) -> np.ndarray:
    """For users still short (nearly all items wanted), ``need[u]`` random items they lack."""
    users = np.flatnonzero(need)
    out = []
    chunk = max(1, 2**24 // n_items)  # bounds the [users, items] scratch
    for s in range(0, users.size, chunk):
        us = users[s:s + chunk]
        score = rng.random((us.size, n_items))
        taken = keys[np.isin(keys // n_items, us)]
        score[np.searchsorted(us, taken // n_items), taken % n_items] = 2.0  # never chosen
        rank = np.argsort(score, axis=1, kind="stable")
        pick = np.arange(n_items)[None, :] < need[us][:, None]
        out.append((us[:, None] * n_items + rank)[pick])
    return np.concatenate(out)


def _split_labels(rng: np.random.Generator, users: np.ndarray, n_users: int,
                  split: tuple[float, float, float]) -> np.ndarray:
    """0/1/2 per interaction: per user, round(share * count) valid and test items at random,
    the rest (at least one) train."""
    total = sum(split)
    counts = np.bincount(users, minlength=n_users)
    n_valid = np.floor(counts * split[1] / total + 0.5).astype(np.int64)
    n_test = np.floor(counts * split[2] / total + 0.5).astype(np.int64)
    over = np.maximum(n_valid + n_test - np.maximum(counts - 1, 0), 0)  # keep one train item
    from_test = np.minimum(over, n_test)
    n_test -= from_test
    n_valid -= over - from_test
    order = np.lexsort((rng.random(users.size), users))
    rank = np.empty(users.size, np.int64)
    rank[order] = np.arange(users.size) - np.searchsorted(users[order], users[order])
    label = np.zeros(users.size, np.int64)
    label[rank < n_test[users]] = 2
    label[(rank >= n_test[users]) & (rank < (n_test + n_valid)[users])] = 1
    return label


def parse_spec(spec: str) -> dict[str, Any]:
    """``"synthetic"`` -> ``{"size": "tiny"}``, ``"synthetic:<size>"`` -> ``{"size": size}``."""
    head, _, size = spec.partition(":")
    if head != "synthetic":
        raise InputError(f"unknown dataset spec {spec!r}; expected 'synthetic' or "
                         f"'synthetic:<size>' with size in {sorted(PRESETS)}")
    size = size or "tiny"
    if size not in PRESETS:
        raise InputError(f"unknown synthetic size {size!r} in {spec!r}; sizes: "
                         f"{sorted(PRESETS)}")
    return {"size": size}


def from_spec(spec: str, seed: int = 0) -> Dataset:
    """The dataset a spec string names (see ``parse_spec``)."""
    return synthetic(**parse_spec(spec), seed=seed)
