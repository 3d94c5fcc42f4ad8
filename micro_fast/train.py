"""Training loop for MICRO and its variants: published schedule, early stopping, resumable
checkpoints and per-epoch metrics files.

A run directory holds ``config.json``, ``metrics.jsonl`` (one JSON line per epoch: losses,
time, and validation/test metrics on evaluation epochs), ``last.pt`` (written every epoch) and
``best.pt`` (at the best validation Recall@20), ``summary.json`` and ``curves.png``.
Checkpoints are written to a temporary file and renamed, so a killed run leaves the previous
complete checkpoint and ``resume=True`` continues from it, losing at most the epoch in flight.
With the same seed a CPU run is reproducible, resumed or not.

Under ``torchrun --nproc-per-node N`` (``WORLD_SIZE`` > 1 in the environment) the same call
trains data-parallel: every rank starts from rank 0's parameters, draws the same global BPR
batch from the seeded sampler and trains on its contiguous share of it (the loss is weighted so
that the averaged gradient is the one of the global batch), each rank computes its part of the
all-item contrastive loss (scaled the same way), the gradients that exist are averaged over
the ranks in one all-reduce per step, the kNN graph rebuilds and the evaluation are split
over the ranks (``micro_fast.distributed``), and rank 0 alone writes the run directory. NCCL
is used on CUDA devices (one GPU per local rank), gloo on CPU.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from micro_fast import data as mf_data
from micro_fast import distributed
from micro_fast.graph import CSRGraph
from micro_fast.models import MICRO
from micro_fast.ops.bipartite_graph import bipartite_graph

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
                raise ValueError(f"{msg} (got {dataclasses.asdict(self)})")
        return self

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"unknown config keys: {sorted(unknown)}")
        d = dict(d)
        for key in ("ks", "modalities"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch sees no CUDA device")
    return dev


def load_dataset(config: TrainConfig) -> mf_data.Dataset:
    if config.data == "synthetic" or config.data.startswith("synthetic:"):
        return mf_data.from_spec(config.data, seed=config.seed)
    return mf_data.load(config.data, format=config.format)


def interaction_graph(dataset: mf_data.Dataset, normalization: str,
                      device: torch.device) -> CSRGraph:
    """The (U+I) x (U+I) user-item graph of the training interactions."""
    users, items = dataset.train_pairs()
    if normalization == "published":
        g = bipartite_graph(users, items, dataset.n_users, dataset.n_items,
                            normalization="rw", self_loops=True)
    else:
        g = bipartite_graph(users, items, dataset.n_users, dataset.n_items, normalization="sym")
    return g.to(device)


def build_model(config: TrainConfig, dataset: mf_data.Dataset) -> MICRO:
    names = list(dataset.features) if config.modalities is None else list(config.modalities)
    missing = [m for m in names if m not in dataset.features]
    if missing:
        raise ValueError(f"modalities {missing} not in the data (has {list(dataset.features)})")
    return MICRO(dataset.n_users, dataset.n_items, {m: dataset.features[m] for m in names},
                 dim=config.dim, feat_dim=config.feat_dim, k=config.k,
                 lambda_coeff=config.lambda_coeff, knn_normalization=config.knn_normalization,
                 item_layers=config.item_layers, ui_layers=config.ui_layers,
                 contrastive_weight=config.contrastive_weight, tau=config.tau,
                 reg_weight=config.reg_weight, backend=config.backend)


def evaluate(model: MICRO, ui_graph: CSRGraph, dataset: mf_data.Dataset, split: str,
             ks: tuple[int, ...], ndcg: str = "standard",
             backend: str = "auto") -> dict[str, float]:
    """Full-ranking metrics on ``split`` ("valid" or "test"), training items masked."""
    target = {"valid": dataset.valid, "test": dataset.test}[split]
    was_training = model.training
    model.eval()
    users, items = model.embeddings(ui_graph)
    model.train(was_training)
    dev = users.device
    return distributed.full_ranking(users, items, dataset.train.to(dev), target.to(dev), ks,
                                    ndcg=ndcg, backend=backend)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not every platform opens directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str) -> None:
    """Writes through ``write(file)`` into a temporary file, syncs it and renames it over
    ``path``: a crash, kill or full disk at any point leaves the previous ``path`` intact (and
    no temporary file behind when Python sees the error)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _atomic_save(obj: Any, path: Path) -> None:
    _atomic_write(path, lambda f: torch.save(obj, f), "wb")


def _atomic_write_text(text: str, path: Path) -> None:
    _atomic_write(path, lambda f: f.write(text), "w")


def _read_metrics(path: Path, before_epoch: int) -> list[dict[str, Any]]:
    """The records of epochs before ``before_epoch``; a last line cut short by a kill during
    its append is dropped (that epoch is trained again)."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}: line {i + 1} is not a JSON record ({exc})") from None
    return [r for r in rows if r["epoch"] < before_epoch]


def plot_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Loss and validation Recall/NDCG@20 per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot([r["epoch"] for r in history], [r["loss"] for r in history])
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss")
    evals = [r for r in history if "valid" in r]
    for key in ("recall@20", "ndcg@20"):
        ax2.plot([r["epoch"] for r in evals], [r["valid"][key] for r in evals], marker="o",
                 label=f"valid {key}")
    ax2.set_xlabel("epoch")
    ax2.legend()
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def _setup_device_and_group(config: TrainConfig) -> tuple[int, int, torch.device, bool]:
    """(rank, world, device, whether this call created the process group)."""
    world_env = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(config.device)
    if world_env > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    created = world_env > 1 and not distributed.is_active()
    rank, world = distributed.init_from_env("nccl" if device.type == "cuda" else "gloo",
                                            config.dist_timeout)
    return rank, world, device, created


def train(config: TrainConfig, *, resume: bool = False,
          on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
          dataset: mf_data.Dataset | None = None) -> dict[str, Any]:
    """Trains per ``config`` and returns the summary (also written to ``summary.json``).

    ``on_epoch_end(epoch, record)`` is called after each epoch's checkpoint is on disk.
    ``dataset`` overrides ``config.data`` (the run then cannot be re-evaluated from its
    directory alone). Under ``torchrun`` every rank calls this (see the module docstring).
    """
    config.validate()
    if config.threads:
        torch.set_num_threads(config.threads)
    rank, world, device, created_group = _setup_device_and_group(config)
    try:
        summary = _train(config, resume, on_epoch_end, dataset, rank, world, device)
        if created_group:
            # every rank done with its collectives before any tears the group down
            distributed.barrier("end of training")
        return summary
    finally:
        if created_group:
            distributed.shutdown()


def _train(config: TrainConfig, resume: bool,
           on_epoch_end: Callable[[int, dict[str, Any]], None] | None,
           dataset: mf_data.Dataset | None, rank: int, world: int,
           device: torch.device) -> dict[str, Any]:
    from tqdm.auto import tqdm

    lead = rank == 0  # the rank that writes files and prints
    out = Path(config.out)
    if lead:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    dataset = dataset if dataset is not None else load_dataset(config)
    model = build_model(config, dataset).to(device)
    ui_graph = interaction_graph(dataset, config.ui_normalization, device)
    if world > 1:
        distributed.broadcast_parameters(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda e: config.lr_decay ** (e / config.lr_decay_epochs))
    sampler = mf_data.BPRSampler(dataset.train, config.batch_size, seed=config.seed)
    # the all-item contrastive loss: each rank computes its part (see micro_fast.distributed)
    shard = distributed.ProcessGroupShard() if world > 1 else None
    state = {"epoch": 0, "best_recall": -math.inf, "best_epoch": None, "best_valid": None,
             "best_test": None, "stopping_step": 0, "stopped_early": False, "train_time": 0.0}
    metrics_path, last_path, best_path = (out / "metrics.jsonl", out / "last.pt",
                                          out / "best.pt")
    if resume and last_path.exists():
        ckpt = torch.load(last_path, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        sampler.load_state_dict(ckpt["sampler"])
        torch.set_rng_state(ckpt["torch_rng"])
        state = ckpt["state"]
    elif resume:
        raise FileNotFoundError(f"--resume: no checkpoint {last_path}")
    history = _read_metrics(metrics_path, state["epoch"])
    progress = config.progress and lead
    if lead:
        _atomic_write_text(json.dumps(dataclasses.asdict(config), indent=2),
                           out / "config.json")
        _atomic_write_text("".join(json.dumps(r) + "\n" for r in history), metrics_path)
    if progress:
        print(f"data: {dataset.name}: {dataset.n_users} users, {dataset.n_items} items, "
              f"{dataset.n_train} train interactions; modalities {model.modalities}; "
              f"device {device}" + (f"; {world} ranks" if world > 1 else ""))
    model.train()
    while state["epoch"] < config.epochs and not state["stopped_early"]:
        epoch = state["epoch"]
        t0 = time.perf_counter()
        sums = {"loss": 0.0, "bpr": 0.0, "reg": 0.0, "contrastive": 0.0}
        acc = None
        n_batches = sampler.n_batches
        bar = tqdm(range(n_batches), desc=f"epoch {epoch}", disable=not progress,
                   leave=False, unit="batch")
        for b in bar:
            batch = sampler.sample()  # the global batch, the same on every rank
            r0, r1 = distributed.row_range(len(batch[0]), rank, world)
            users, pos, neg = (t[r0:r1].to(device) for t in batch)
            # DDP averages gradients over ranks: weighting each rank's batch mean by its share
            # makes that average the gradient of the global batch mean
            weight = (r1 - r0) * world / len(batch[0])
            optimizer.zero_grad()
            loss, parts = distributed.guard(f"training step (epoch {epoch}, batch {b})",
                                            _step, model, ui_graph, users, pos, neg,
                                            b == 0, weight, shard, collective=False)
            # the learned-graph parameters have gradients on the rebuilding batch only: the
            # other batches exchange just the embeddings' and the fusion's gradients
            distributed.average_gradients(model.parameters(),
                                          f"gradient all-reduce (epoch {epoch}, batch {b})")
            optimizer.step()
            # the batch terms are rank shares, the contrastive one the full value on every rank
            step = torch.stack([loss, weight * parts["bpr"], weight * parts["reg"],
                                parts["contrastive"]])
            acc = step if acc is None else acc + step
            if progress and (b % 10 == 0 or b == n_batches - 1):
                elapsed = time.perf_counter() - t0
                bar.set_postfix(loss=f"{float(step[0]):.4f}",
                                samples_s=f"{(b + 1) * len(batch[0]) / elapsed:.0f}")
        bar.close()
        scheduler.step()
        acc = distributed.all_reduce_mean(acc, f"loss reduction (epoch {epoch})")
        for key, v in zip(sums, acc.tolist(), strict=True):
            sums[key] = v
        if math.isnan(sums["loss"]):
            raise FloatingPointError(f"training loss is NaN at epoch {epoch}")
        train_time = time.perf_counter() - t0
        state["train_time"] += train_time
        record: dict[str, Any] = {"epoch": epoch, **sums, "train_s": train_time,
                                  "lr": optimizer.param_groups[0]["lr"]}
        improved = False
        if (epoch + 1) % config.eval_every == 0:
            t1 = time.perf_counter()
            valid = evaluate(model, ui_graph, dataset, "valid", config.ks, config.ndcg,
                             config.backend)
            record["valid"] = valid
            if valid["recall@20"] > state["best_recall"]:
                improved = True
                test = evaluate(model, ui_graph, dataset, "test", config.ks, config.ndcg,
                                config.backend)
                record["test"] = test
                state.update(best_recall=valid["recall@20"], best_epoch=epoch,
                             best_valid=valid, best_test=test, stopping_step=0)
            elif state["stopping_step"] < config.patience:
                state["stopping_step"] += 1
            else:
                state["stopped_early"] = True
            record["eval_s"] = time.perf_counter() - t1
        state["epoch"] = epoch + 1
        history.append(record)
        if lead:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")
            if improved:
                _atomic_save({"model": model.state_dict(), "epoch": epoch,
                              "valid": record["valid"], "test": record["test"]}, best_path)
            _atomic_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "sampler": sampler.state_dict(),
                          "torch_rng": torch.get_rng_state(), "state": state}, last_path)
        if progress:
            msg = (f"epoch {epoch}: loss {sums['loss']:.4f} (bpr {sums['bpr']:.4f}, "
                   f"contrastive {sums['contrastive']:.4f}) [{train_time:.1f}s]")
            if "valid" in record:
                v = record["valid"]
                msg += (f" valid recall@20 {v['recall@20']:.4f} ndcg@20 {v['ndcg@20']:.4f}"
                        + (" *" if improved else ""))
            print(msg, flush=True)
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)
    summary = {
        "data": dataset.name, "epochs_run": state["epoch"],
        "stopped_early": state["stopped_early"], "best_epoch": state["best_epoch"],
        "best_valid": state["best_valid"], "test_at_best": state["best_test"],
        "train_time_s": state["train_time"], "device": str(device), "world_size": world,
        "modalities": model.modalities, "config": dataclasses.asdict(config),
    }
    if lead:
        _atomic_write_text(json.dumps(summary, indent=2), out / "summary.json")
        plot_curves(history, out / "curves.png")
    if progress:
        best = state["best_test"]
        if best is not None:
            print(f"best valid epoch {state['best_epoch']}: test "
                  f"recall@20 {best['recall@20']:.4f} ndcg@20 {best['ndcg@20']:.4f}")
        print(f"run directory: {out}")
    return summary


def _step(model: MICRO, ui_graph: CSRGraph, users: torch.Tensor, pos: torch.Tensor,
          neg: torch.Tensor, build: bool, weight: float, shard
          ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    loss, parts = model.loss(ui_graph, users, pos, neg, build_item_graph=build,
                             batch_weight=weight, contrastive_shard=shard)
    loss.backward()
    return loss.detach(), parts


def evaluate_run(run_dir: str | Path, *, checkpoint: str = "best",
                 device: str | None = None) -> dict[str, Any]:
    """Re-evaluates a run's ``best`` or ``last`` checkpoint on validation and test."""
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: not a run directory")
    config = TrainConfig.from_dict(json.loads(config_path.read_text()))
    if device is not None:
        config.device = device
    path = run_dir / f"{checkpoint}.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found")
    dev = resolve_device(config.device)
    torch.manual_seed(config.seed)
    dataset = load_dataset(config)
    model = build_model(config, dataset).to(dev)
    ckpt = torch.load(path, map_location=dev, weights_only=False)
    model.load_state_dict(ckpt["model"])
    ui_graph = interaction_graph(dataset, config.ui_normalization, dev)
    result = {"checkpoint": str(path),
              "valid": evaluate(model, ui_graph, dataset, "valid", config.ks, config.ndcg,
                                config.backend),
              "test": evaluate(model, ui_graph, dataset, "test", config.ks, config.ndcg,
                               config.backend)}
    _atomic_write_text(json.dumps(result, indent=2), run_dir / f"eval_{checkpoint}.json")
    return result
