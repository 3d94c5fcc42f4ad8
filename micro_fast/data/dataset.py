"""``Dataset``: users, items, the train / valid / test interaction splits and item features.

Each split is a ``CSRGraph`` of shape ``(n_users, n_items)`` whose values are float32 ones and
whose rows hold sorted, unique item ids. ``features`` maps a modality name to a float32
``[n_items, d]`` tensor; the dict is kept in a canonical order (see ``MODALITY_ORDER``) so that
models that iterate over it see the modalities in the same order whatever the source.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from micro_fast.errors import InputError
from micro_fast.graph import CSRGraph

#: modalities that come first, in this order, when present; other names follow sorted
MODALITY_ORDER = ("image", "text", "audio", "video")

SPLITS = ("train", "valid", "test")


def order_features(features: Mapping[str, Any]) -> dict[str, Any]:
    """The same mapping in the canonical modality order."""
    known = [m for m in MODALITY_ORDER if m in features]
    rest = sorted(m for m in features if m not in MODALITY_ORDER)
    return {m: features[m] for m in known + rest}


def interactions(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> CSRGraph:
    """A split from (user, item) id arrays; repeated pairs are merged into one entry of 1.0."""
    g = CSRGraph.from_coo(torch.from_numpy(np.asarray(users, dtype=np.int64)),
                          torch.from_numpy(np.asarray(items, dtype=np.int64)),
                          None, (int(n_users), int(n_items)))
    # from_coo sums repeats; an interaction is present or not
    return g.with_values(torch.ones(g.nnz, dtype=torch.float32))


def _pair_keys(g: CSRGraph) -> np.ndarray:
    """``user * n_items + item`` per entry, sorted (CSR rows and columns are sorted)."""
    return g.row_indices().numpy() * max(g.shape[1], 1) + g.indices.numpy()


@dataclasses.dataclass
class Dataset:
    """An implicit-feedback dataset split per user, with item features per modality.

    Attributes:
        name: a label (the folder name for loaded data).
        n_users, n_items: id ranges; users are ``0..n_users-1``, items ``0..n_items-1``.
        train, valid, test: ``CSRGraph`` [n_users, n_items], float32 values 1.0, sorted unique
            columns per row; no (user, item) pair in two splits.
        features: modality name -> float32 tensor [n_items, d_m], canonical order.
        meta: free-form extras (e.g. the planted clusters of synthetic data); not validated.
    """

    name: str
    n_users: int
    n_items: int
    train: CSRGraph
    valid: CSRGraph
    test: CSRGraph
    features: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.features = order_features(self.features)

    # --- views --------------------------------------------------------------------------
    @property
    def train_users(self) -> torch.Tensor:
        """int64 [n]: users with at least one train item, ascending (the ones BPR samples)."""
        return torch.nonzero(self.train.degrees() > 0).flatten()

    def train_pairs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(users, items)``, int64 [n_train] each, sorted by user then item."""
        return self.train.row_indices(), self.train.indices

    @property
    def n_train(self) -> int:
        return self.train.nnz

    def split(self, name: str) -> CSRGraph:
        """The split called ``"train"``, ``"valid"`` (alias ``"val"``) or ``"test"``."""
        name = "valid" if name == "val" else name
        if name not in SPLITS:
            raise InputError(f"split must be one of {SPLITS}, got {name!r}")
        return getattr(self, name)

    def summary(self) -> dict[str, Any]:
        """Counts: users, items, interactions per split, cold users/items, density, dims."""
        n_all = self.train.nnz + self.valid.nnz + self.test.nnz
        item_seen = np.bincount(self.train.indices.numpy(), minlength=self.n_items)
        cells = self.n_users * self.n_items
        return {
            "name": self.name,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_interactions": n_all,
            "n_train": self.train.nnz,
            "n_valid": self.valid.nnz,
            "n_test": self.test.nnz,
            "users_without_train": int((self.train.degrees() == 0).sum()),
            "items_without_train": int((item_seen == 0).sum()),
            "density": n_all / cells if cells else 0.0,
            "features": {m: int(f.shape[1]) for m, f in self.features.items()},
        }

    def with_features(self, features: Mapping[str, torch.Tensor]) -> Dataset:
        """A copy that shares the splits and carries ``features`` instead (checked)."""
        features = {m: _as_feature(m, f) for m, f in features.items()}
        check_features(features, self.n_items)
        return dataclasses.replace(self, features=dict(features), meta=dict(self.meta))

    # --- checks -------------------------------------------------------------------------
    def validate(self) -> Dataset:
        """Checks the invariants listed in the class docstring; returns self.

        Raises:
            ValueError naming the split or modality and the problem.
        Warns:
            UserWarning when some users have no train item (accepted: they are evaluated but
            never sampled for training, as in the published code).
        """
        if self.n_users < 0 or self.n_items < 0:
            raise InputError(f"n_users and n_items must be >= 0, got {self.n_users}, "
                             f"{self.n_items}")
        for name in SPLITS:
            g = getattr(self, name)
            if not isinstance(g, CSRGraph):
                raise InputError(f"{name} must be a CSRGraph, got {type(g).__name__}")
            if g.shape != (self.n_users, self.n_items):
                raise InputError(f"{name} has shape {g.shape}, expected "
                                 f"(n_users, n_items) = {(self.n_users, self.n_items)}")
            try:
                g.validate()
            except (TypeError, ValueError) as exc:
                raise InputError(f"{name}: {exc}") from None
            if g.values.dtype != torch.float32 or not bool((g.values == 1).all()):
                raise InputError(f"{name}: values must be float32 ones (implicit feedback)")
        keys = {name: _pair_keys(getattr(self, name)) for name in SPLITS}
        for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
            both = np.intersect1d(keys[a], keys[b], assume_unique=True)
            if both.size:
                u, i = divmod(int(both[0]), max(self.n_items, 1))
                raise InputError(f"{both.size} (user, item) pairs are in both {a} and {b}, "
                                 f"e.g. user {u} item {i}")
        check_features(self.features, self.n_items)
        cold = int((self.train.degrees() == 0).sum())
        if cold:
            warnings.warn(f"{self.name}: {cold} of {self.n_users} users have no train item; "
                          "they are kept for evaluation but never sampled for training",
                          UserWarning, stacklevel=2)
        return self


def _as_feature(name: str, f: Any) -> torch.Tensor:
    if not isinstance(f, torch.Tensor):
        f = torch.as_tensor(np.asarray(f))
    if not f.is_floating_point():
        raise InputError(f"features[{name!r}] must be floating point, got {f.dtype}")
    return f.to(torch.float32)


def check_features(features: Mapping[str, torch.Tensor], n_items: int) -> None:
    """Each feature is a finite float32 [n_items, d] tensor; raises ValueError otherwise."""
    for m, f in features.items():
        if not isinstance(f, torch.Tensor) or f.dtype != torch.float32:
            raise InputError(f"features[{m!r}] must be a float32 tensor, got "
                             f"{getattr(f, 'dtype', type(f).__name__)}")
        if f.dim() != 2:
            raise InputError(f"features[{m!r}] must be 2-D [n_items, d], got shape "
                             f"{tuple(f.shape)}")
        if f.shape[0] != n_items:
            raise InputError(f"features[{m!r}] has {f.shape[0]} rows, expected n_items = "
                             f"{n_items}")
        if not bool(torch.isfinite(f).all()):
            raise InputError(f"features[{m!r}] has NaN or inf entries")
