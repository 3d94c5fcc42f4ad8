"""The configuration of a training run: every option of ``micro-fast train``, with MICRO's
published defaults (MICRO.md)."""

from __future__ import annotations

import dataclasses
from typing import Any

from micro_fast.errors import InputError

UI_NORMALIZATIONS = ("published", "sym")


@dataclasses.dataclass
class TrainConfig:
    """Everything a run depends on; the defaults are MICRO's published ones (MICRO.md)."""

    data: str = "synthetic"            # a path, "synthetic" or "synthetic:<size>"
    format: str = "auto"               # "auto", "micro" or "mmrec" for paths
    out: str = "runs/micro"
    epochs: int = 1000
    batch_size: int = 1024
    lr: float = 5e-4
    lr_decay: float = 0.96             # lr x lr_decay ** (epoch / lr_decay_epochs)
    lr_decay_epochs: int = 50
    seed: int = 123
    eval_every: int = 5
    patience: int = 10                 # evaluations without improvement before stopping
    ks: tuple[int, ...] = (10, 20, 50)
    ndcg: str = "standard"             # or "published"
    modalities: tuple[str, ...] | None = None   # None: every modality in the data
    dim: int = 64
    feat_dim: int = 64
    k: int = 10
    lambda_coeff: float = 0.9
    knn_normalization: str = "sym"
    item_layers: int = 1
    ui_layers: int = 2
    ui_normalization: str = "published"   # D^-1 (A + I) as published, or "sym" (LightGCN)
    contrastive_weight: float = 0.03
    tau: float = 0.5
    reg_weight: float = 1e-5
    device: str = "auto"
    backend: str = "auto"
    threads: int | None = None
    progress: bool = True
    dist_timeout: float = 600.0        # seconds a rank waits for the others (torchrun runs)

    def validate(self) -> TrainConfig:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.eval_every >= 1, "eval_every must be >= 1"),
            (self.patience >= 0, "patience must be >= 0"),
            (len(self.ks) > 0 and min(self.ks) >= 1, "ks must be cut-offs >= 1"),
            (20 in self.ks, "ks must include 20 (early stopping uses Recall@20)"),
            (self.ui_normalization in UI_NORMALIZATIONS,
             f"ui_normalization must be one of {UI_NORMALIZATIONS}"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             "device must be 'auto', 'cpu' or 'cuda[:N]'"),
            (self.dist_timeout > 0, "dist_timeout must be > 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InputError(f"{msg} (got {dataclasses.asdict(self)})")
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise InputError(f"unknown config keys: {sorted(unknown)}")
        d = dict(d)
        for key in ("ks", "modalities"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)
