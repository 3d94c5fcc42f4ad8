"""BPR triple sampling with the published MICRO/LATTICE semantics, compiled.

Per batch: ``batch_size`` distinct users drawn uniformly from those with a train item (with
replacement when there are fewer such users than ``batch_size``), then per user one positive
uniformly from its train items and one negative uniformly from the items it has not trained on.

Randomness: the users come from a numpy ``Generator`` (its state is the sampler's state); that
generator also draws one 64-bit key per batch, and the positive and negatives of slot ``s`` are
the splitmix64 hashes ``h(key, s, t)``, ``t = 0, 1, ...``. Both paths below compute the same
hashes, so the numba kernel and the numpy fallback return identical batches.

Negatives are rejection-sampled: candidate ``t`` is ``h(key, s, t) mod n_items`` and is kept
when a binary search of the user's sorted CSR row does not find it. After ``_MAX_TRIES``
rejections (a user who trained on most items) the negative is drawn directly as the r-th
missing item, ``r = h mod (n_items - degree)``; either way it is uniform over the missing items.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from micro_fast.errors import InputError
from micro_fast.graph import CSRGraph

try:
    from numba import njit
except ImportError:  # numba is optional: the vectorized numpy path below needs nothing
    njit = None

_MAX_TRIES = 64
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def _mix(z):
    """splitmix64's finalizer; works on uint64 scalars (numba) and arrays (numpy)."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


def _hash(key, slot, t):
    """A uniform 64-bit value per (batch key, slot, try); uint64 in, uint64 out. The numpy
    path passes arrays (numpy warns on scalar uint64 wrap-around, not on arrays)."""
    return _mix(_mix(key + slot * _GOLDEN) + (t + np.uint64(1)) * _GOLDEN)


if njit is not None:
    _mix_nb = njit(cache=True, nogil=True)(_mix)

    @njit(cache=True, nogil=True)
    def _hash_nb(key, slot, t):  # _hash, calling the compiled _mix
        return _mix_nb(_mix_nb(key + slot * _GOLDEN) + (t + np.uint64(1)) * _GOLDEN)

    @njit(cache=True, nogil=True)
    def _kernel(indptr, indices, missing_key, users, key, n_items, pos, neg):
        for s in range(users.shape[0]):
            u = users[s]
            lo, hi = indptr[u], indptr[u + 1]
            deg = hi - lo
            slot = np.uint64(s)
            pos[s] = indices[lo + np.int64(_hash_nb(key, slot, np.uint64(0)) % np.uint64(deg))]
            found = True
            for t in range(1, _MAX_TRIES + 1):
                c = np.int64(_hash_nb(key, slot, np.uint64(t)) % np.uint64(n_items))
                a, b = lo, hi  # binary search for c in the sorted row
                while a < b:
                    m = (a + b) // 2
                    if indices[m] < c:
                        a = m + 1
                    else:
                        b = m
                found = a < hi and indices[a] == c
                if not found:
                    neg[s] = c
                    break
            if found:
                r = np.int64(_hash_nb(key, slot, np.uint64(_MAX_TRIES + 1))
                             % np.uint64(n_items - deg))
                # missing_key[e] = indices[e] - (e - lo): missing items before row entry e
                a, b = lo, hi
                while a < b:
                    m = (a + b) // 2
                    if missing_key[m] <= r:
                        a = m + 1
                    else:
                        b = m
                neg[s] = r + (a - lo)
else:
    _kernel = None


def _sample_numpy(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray,
                  missing_key: np.ndarray, users: np.ndarray, key: np.uint64,
                  n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """The kernel's computation in vectorized rounds (one round per rejection try)."""
    b = users.size
    slots = np.arange(b, dtype=np.uint64)
    lo, hi = indptr[users], indptr[users + 1]
    deg = hi - lo
    def try_(t: int) -> np.ndarray:
        return np.full(1, t, dtype=np.uint64)

    pos = indices[lo + (_hash(key, slots, try_(0)) % deg.astype(np.uint64)).astype(np.int64)]
    neg = np.empty(b, np.int64)
    # (user, item) pairs of the train matrix, sorted: one searchsorted is the row's binary search
    pair = rows * n_items + indices
    todo = np.arange(b)
    for t in range(1, _MAX_TRIES + 1):
        if todo.size == 0:
            break
        c = (_hash(key, slots[todo], try_(t)) % np.uint64(n_items)).astype(np.int64)
        q = users[todo] * n_items + c
        at = np.minimum(np.searchsorted(pair, q), max(pair.size - 1, 0))
        hit = pair[at] == q if pair.size else np.zeros(todo.size, bool)
        neg[todo[~hit]] = c[~hit]
        todo = todo[hit]
    if todo.size:
        u = users[todo]
        r = (_hash(key, slots[todo], try_(_MAX_TRIES + 1))
             % (n_items - deg[todo]).astype(np.uint64)).astype(np.int64)
        # missing_key sorted within rows; offset by row to search all rows at once
        span = n_items + 1
        glob = rows * span + missing_key
        a = np.searchsorted(glob, u * span + r, side="right")
        neg[todo] = r + (a - lo[todo])
    return pos, neg


class BPRSampler:
    """Draws ``(users, pos, neg)`` batches from a train interaction matrix.

    Args:
        train: ``CSRGraph`` [n_users, n_items] (sorted unique columns per row, as a
            ``Dataset`` split has).
        batch_size: users per batch.
        seed: the same seed gives the same sequence of batches.
        backend: ``"auto"`` (numba when installed), ``"numba"`` or ``"numpy"``; both give the
            same batches.

    Raises:
        ValueError: no user has a train item, or some users have trained on every item (they
            cannot have a negative; the message names them).
    """

    def __init__(self, train: CSRGraph, batch_size: int = 1024, seed: int = 0,
                 backend: str = "auto") -> None:
        if backend not in ("auto", "numba", "numpy"):
            raise InputError(f"backend must be 'auto', 'numba' or 'numpy', got {backend!r}")
        if backend == "numba" and _kernel is None:
            raise InputError("backend='numba' needs numba, which is not installed")
        if int(batch_size) < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.backend = "numpy" if backend == "numpy" or _kernel is None else "numba"
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.n_users, self.n_items = train.shape
        self._indptr = np.ascontiguousarray(train.indptr.cpu().numpy(), dtype=np.int64)
        self._indices = np.ascontiguousarray(train.indices.cpu().numpy(), dtype=np.int64)
        deg = np.diff(self._indptr)
        self._rows = np.repeat(np.arange(self.n_users, dtype=np.int64), deg)
        starts = np.repeat(self._indptr[:-1], deg)
        self._missing_key = self._indices - (np.arange(self._indices.size) - starts)
        self.users = np.flatnonzero(deg > 0)
        if self.users.size == 0:
            raise InputError("train has no interactions: nothing to sample")
        full = np.flatnonzero(deg >= self.n_items)
        if full.size:
            shown = ", ".join(map(str, full[:10])) + (" ..." if full.size > 10 else "")
            raise InputError(f"{full.size} users have every item in train, so no negative "
                             f"exists for them: users {shown}")
        self.n_train = int(self._indices.size)
        self._rng = np.random.default_rng(self.seed)
        self.batches_drawn = 0

    @property
    def n_batches(self) -> int:
        """Batches per epoch as published: ``n_train // batch_size + 1``."""
        return self.n_train // self.batch_size + 1

    def sample(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One batch: ``(users, pos, neg)``, int64 [batch_size] each."""
        replace = self.batch_size > self.users.size
        users = self._rng.choice(self.users, self.batch_size, replace=replace)
        key = np.uint64(self._rng.integers(0, 2**63))
        if self.backend == "numba":
            pos = np.empty(users.size, np.int64)
            neg = np.empty(users.size, np.int64)
            _kernel(self._indptr, self._indices, self._missing_key, users, key, self.n_items,
                    pos, neg)
        else:
            pos, neg = _sample_numpy(self._indptr, self._indices, self._rows, self._missing_key,
                                     users, key, self.n_items)
        self.batches_drawn += 1
        return torch.from_numpy(users), torch.from_numpy(pos), torch.from_numpy(neg)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """One epoch: ``n_batches`` batches."""
        for _ in range(self.n_batches):
            yield self.sample()

    def __len__(self) -> int:
        return self.n_batches

    # --- checkpointing ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue the same sequence (plain Python values)."""
        return {"seed": self.seed, "batch_size": self.batch_size,
                "batches_drawn": self.batches_drawn,
                "shape": (self.n_users, self.n_items), "n_train": self.n_train,
                "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores ``state_dict()``; the train matrix must have the same shape and size."""
        if tuple(state["shape"]) != (self.n_users, self.n_items) or \
                int(state["n_train"]) != self.n_train:
            raise InputError(f"sampler state is for a train matrix of shape {state['shape']} "
                             f"with {state['n_train']} entries, this one has shape "
                             f"{(self.n_users, self.n_items)} with {self.n_train}")
        self.seed = int(state["seed"])
        self.batch_size = int(state["batch_size"])
        self.batches_drawn = int(state["batches_drawn"])
        rng = np.random.default_rng()
        rng.bit_generator.state = state["rng"]
        self._rng = rng
