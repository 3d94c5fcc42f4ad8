"""Training loop for MICRO and its variants: published schedule, early stopping, resumable
checkpoints and per-epoch metrics files.

A run directory holds ``config.json`` (a valid ``--config`` file that reproduces the run),
``metrics.jsonl`` (one JSON line per epoch: losses, time, and validation/test metrics on
evaluation epochs), ``train.log`` (the lines the run printed), ``last.pt`` (written every
epoch) and ``best.pt`` (at the best validation Recall@20), ``summary.json`` and ``curves.png``.
Checkpoints are written to a temporary file and renamed, so a killed run leaves the previous
complete checkpoint and ``resume=True`` continues from it, losing at most the epoch in flight.
With the same seed a CPU run is reproducible, resumed or not. A directory that already holds
files is never written over: it takes ``resume=True`` (continue that run) or
``overwrite=True`` (delete its run files first).

Evaluation (validation, and test when validation Recall@20 improved) runs every
``eval_every`` epochs and after the last epoch when the schedule does not fall on it, so a run
of at least one epoch always ends with metrics; ``eval_every=0`` turns it off.
``evaluation="mmrec"`` follows MMRec's trainer instead: validation and test after every epoch,
patience 20, standard NDCG (``config.EVALUATION_DEFAULTS``).

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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from micro_fast import data as mf_data
from micro_fast import distributed
from micro_fast.config import EVAL_KEYS, UI_NORMALIZATIONS, TrainConfig, canonical_options
from micro_fast.errors import InputError, MissingFileError
from micro_fast.graph import CSRGraph
from micro_fast.models import MICRO, freedom, lattice
from micro_fast.ops.bipartite_graph import bipartite_graph
from micro_fast.run_dir import RunDir, plot_curves
from micro_fast.run_log import RunLog, format_metrics

__all__ = ["UI_NORMALIZATIONS", "TrainConfig", "TrainState", "adam", "build_model", "evaluate",
           "evaluate_run", "interaction_graph", "load_dataset", "resolve_device", "train"]


@dataclasses.dataclass
class TrainState:
    """Where a run stands after ``epoch`` epochs (saved in ``last.pt``, restored on resume)."""

    epoch: int = 0
    best_recall: float = -math.inf
    best_epoch: int | None = None
    best_valid: dict[str, float] | None = None
    best_test: dict[str, float] | None = None
    stopping_step: int = 0             # evaluations since the best one
    stopped_early: bool = False
    train_time: float = 0.0

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        return cls(**d)


def adam(params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Adam:
    """The training loop's optimizer: ``torch.optim.Adam`` with its fused implementation
    (one pass over each parameter and its state, instead of the default's several), where torch
    has one for these tensors. The update is Adam's; only float rounding differs."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError):  # a device or dtype without the fused kernel
        return torch.optim.Adam(params, lr=lr)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but torch sees no CUDA device")
    return dev


def load_dataset(config: TrainConfig) -> mf_data.Dataset:
    if config.data == "synthetic" or config.data.startswith("synthetic:"):
        return mf_data.from_spec(config.data, seed=config.seed)
    return mf_data.load(config.data, format=config.format)


def interaction_graph(dataset: mf_data.Dataset, normalization: str,
                      device: torch.device) -> CSRGraph:
    """The (U+I) x (U+I) user-item graph of the training interactions."""
    users, items = dataset.train_pairs()
    if normalization == "mmrec":  # FREEDOM's D^-1/2 A D^-1/2 with MMRec's epsilon
        return freedom.interaction_graph(users, items, dataset.n_users,
                                         dataset.n_items).to(device)
    if normalization == "published":
        g = bipartite_graph(users, items, dataset.n_users, dataset.n_items,
                            normalization="rw", self_loops=True)
    else:
        g = bipartite_graph(users, items, dataset.n_users, dataset.n_items, normalization="sym")
    return g.to(device)


def build_model(config: TrainConfig, dataset: mf_data.Dataset, *,
                distributed_graphs: bool = False) -> MICRO | freedom.FREEDOM | lattice.LATTICE:
    """The model ``config`` describes; ``distributed_graphs`` splits its kNN searches over the
    ranks of the process group (``micro_fast.distributed.knn_graph``)."""
    names = list(dataset.features) if config.modalities is None else list(config.modalities)
    if config.model == "lightgcn":
        names = []
    missing = [m for m in names if m not in dataset.features]
    if missing:
        raise InputError(f"modalities {missing} not in the data (has {list(dataset.features)})")
    if config.model in ("freedom", "lattice") and distributed_graphs:
        raise InputError(f"--model {config.model} runs in one process (not under torchrun yet)")
    if config.model == "lattice":
        return lattice.LATTICE(dataset.n_users, dataset.n_items,
                               {m: dataset.features[m] for m in names}, dim=config.dim,
                               feat_dim=config.feat_dim, k=config.k,
                               lambda_coeff=config.lambda_coeff, item_layers=config.item_layers,
                               ui_layers=config.ui_layers, reg_weight=config.reg_weight,
                               batch_size=config.batch_size, backend=config.backend)
    if config.model == "freedom":
        return freedom.FREEDOM(dataset.n_users, dataset.n_items,
                               {m: dataset.features[m] for m in names}, dim=config.dim,
                               feat_dim=config.feat_dim, k=config.k,
                               image_weight=config.image_weight, item_layers=config.item_layers,
                               ui_layers=config.ui_layers, dropout=config.dropout,
                               reg_weight=config.reg_weight, backend=config.backend)
    return MICRO(dataset.n_users, dataset.n_items, {m: dataset.features[m] for m in names},
                 dim=config.dim, feat_dim=config.feat_dim, k=config.k,
                 lambda_coeff=config.lambda_coeff, knn_normalization=config.knn_normalization,
                 item_layers=config.item_layers, ui_layers=config.ui_layers,
                 contrastive_weight=config.contrastive_weight, tau=config.tau,
                 reg_weight=config.reg_weight, backend=config.backend,
                 **({"knn": distributed.knn_graph} if distributed_graphs else {}))


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


def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False,
          on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
          dataset: mf_data.Dataset | None = None) -> dict[str, Any]:
    """Trains per ``config`` and returns the summary (also written to ``summary.json``).

    ``resume`` continues the run in ``config.out`` from its ``last.pt``; ``overwrite`` deletes
    the run files there first; without either, a non-empty ``config.out`` is an
    ``InputError``. ``on_epoch_end(epoch, record)`` is called after each epoch's checkpoint is
    on disk. ``dataset`` overrides ``config.data`` (the run then cannot be re-evaluated from
    its directory alone). Under ``torchrun`` every rank calls this (see the module docstring).
    """
    config.validate()
    files = RunDir(config.out)
    files.check_writable(resume=resume, overwrite=overwrite)  # on every rank, before any writes
    if config.threads:
        torch.set_num_threads(config.threads)
    rank, world, device, created_group = _setup_device_and_group(config)
    try:
        if world > 1 and not created_group:
            distributed.barrier("run directory check")
        if overwrite and rank == 0:
            files.remove_run_files()
        summary = _Run(config, dataset, rank, world, device).fit(resume, on_epoch_end)
        if created_group:
            # every rank done with its collectives before any tears the group down
            distributed.barrier("end of training")
        return summary
    finally:
        if created_group:
            distributed.shutdown()


class _Run:
    """One training run: the model and its optimizer, sampler and run directory."""

    def __init__(self, config: TrainConfig, dataset: mf_data.Dataset | None, rank: int,
                 world: int, device: torch.device) -> None:
        self.config, self.rank, self.world, self.device = config, rank, world, device
        self.lead = rank == 0  # the rank that writes files and prints
        self.progress = config.progress and self.lead
        self.files = RunDir(config.out)
        if self.lead:
            self.files.create()
        self.log = RunLog(None, echo=False, append=True)  # opened by fit()
        torch.manual_seed(config.seed)
        self.dataset = dataset if dataset is not None else load_dataset(config)
        self.model = build_model(config, self.dataset, distributed_graphs=world > 1).to(device)
        self.ui_graph = interaction_graph(self.dataset, config.ui_normalization, device)
        self.epoch_graph = self.ui_graph  # FREEDOM prunes it before every epoch
        if world > 1:
            distributed.broadcast_parameters(self.model)
        self.optimizer = adam(self.model.parameters(), config.lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda e: config.lr_decay ** (e / config.lr_decay_epochs))
        self.sampler = mf_data.BPRSampler(self.dataset.train, config.batch_size,
                                          seed=config.seed)
        # the all-item contrastive loss: each rank computes its part (micro_fast.distributed)
        self.shard = distributed.ProcessGroupShard() if world > 1 else None
        self.state = TrainState()
        if config.compile and world > 1:
            raise InputError("--compile runs in one process: under torchrun the sharded loss "
                             "exchanges partial results between its kernels")
        # the loss is one graph (micro_fast's ops are custom operators), the rebuilding
        # batches and the others compile once each
        self.loss_fn = self.model.loss
        if config.compile:
            self.ui_graph.transposed_values()  # cached before tracing: one compilation less
            self.loss_fn = torch.compile(self.model.loss, fullgraph=True)

    # --- checkpoints ---------------------------------------------------------------------
    def restore(self) -> None:
        if not self.files.last.exists():
            raise MissingFileError(f"--resume: no checkpoint {self.files.last}")
        ckpt = torch.load(self.files.last, map_location=self.device, weights_only=False)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.sampler.load_state_dict(ckpt["sampler"])
        torch.set_rng_state(ckpt["torch_rng"])
        self.state = TrainState.from_dict(ckpt["state"])

    def checkpoint(self, record: dict[str, Any], improved: bool) -> None:
        if improved:
            self.files.save({"model": self.model.state_dict(), "epoch": record["epoch"],
                             "valid": record["valid"], "test": record["test"]}, self.files.best)
        self.files.save({"model": self.model.state_dict(),
                         "optimizer": self.optimizer.state_dict(),
                         "scheduler": self.scheduler.state_dict(),
                         "sampler": self.sampler.state_dict(),
                         "torch_rng": torch.get_rng_state(),
                         "state": dataclasses.asdict(self.state)}, self.files.last)

    # --- the loop ------------------------------------------------------------------------
    def fit(self, resume: bool,
            on_epoch_end: Callable[[int, dict[str, Any]], None] | None) -> dict[str, Any]:
        if resume:
            self.restore()
        config, state = self.config, self.state
        history = self.files.read_metrics(state.epoch)
        if self.lead:
            self.files.write_json(dataclasses.asdict(config), self.files.config)
            self.files.write_metrics(history)
            self.log = RunLog(self.files.log, echo=self.progress, append=resume)
        try:
            ds = self.dataset
            self.log.line(f"data: {ds.name}: {ds.n_users} users, {ds.n_items} items, "
                          f"{ds.n_train} train interactions; modalities "
                          f"{self.model.modalities}; device {self.device}"
                          + (f"; {self.world} ranks" if self.world > 1 else "")
                          + (f"; resumed after epoch {state.epoch}" if resume else ""))
            if config.eval_every == 0:
                self.log.line("evaluation off (--eval-every 0)")
            self.model.train()
            while state.epoch < config.epochs and not state.stopped_early:
                self.run_epoch(state.epoch, history, on_epoch_end)
            return self.finish(history)
        finally:
            self.log.close()

    def run_epoch(self, epoch: int, history: list[dict[str, Any]],
                  on_epoch_end: Callable[[int, dict[str, Any]], None] | None) -> None:
        config, state = self.config, self.state
        record = self.train_epoch(epoch)
        self.log.line(self.epoch_line(record))
        improved = False
        last = epoch + 1 == config.epochs
        if config.eval_every and ((epoch + 1) % config.eval_every == 0 or last):
            if (epoch + 1) % config.eval_every:
                record["final_eval"] = True  # off the schedule: the run's last epoch
            improved = self.evaluate_epoch(record)
            for line in self.evaluation_lines(record, improved):
                self.log.line(line)
        state.epoch = epoch + 1
        history.append(record)
        if self.lead:
            self.files.append_metrics(record)
            self.checkpoint(record, improved)
        if on_epoch_end is not None:
            on_epoch_end(epoch, record)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """One pass over the sampler's batches; the epoch's record (losses, time, lr)."""
        rank, world, device = self.rank, self.world, self.device
        t0 = time.perf_counter()
        acc = None
        self.epoch_graph = self.ui_graph
        if isinstance(self.model, freedom.FREEDOM):  # the epoch's denoised user-item graph
            users, items = self.dataset.train_pairs()
            self.epoch_graph = self.model.pruned_graph(users.to(device), items.to(device))
        n_batches = self.sampler.n_batches
        bar = self.log.bar(range(n_batches), desc=f"epoch {epoch}", total=n_batches)
        for b in bar:
            batch = self.sampler.sample()  # the global batch, the same on every rank
            r0, r1 = distributed.row_range(len(batch[0]), rank, world)
            users, pos, neg = (t[r0:r1].to(device) for t in batch)
            # gradients are averaged over the ranks: weighting each rank's batch mean by its
            # share makes that average the gradient of the global batch mean
            weight = (r1 - r0) * world / len(batch[0])
            self.optimizer.zero_grad()
            loss, parts = distributed.guard(f"training step (epoch {epoch}, batch {b})",
                                            self.step, users, pos, neg, b == 0, weight,
                                            collective=False)
            # the learned-graph parameters have gradients on the rebuilding batch only: the
            # other batches exchange just the embeddings' and the fusion's gradients
            distributed.average_gradients(self.model.parameters(),
                                          f"gradient all-reduce (epoch {epoch}, batch {b})")
            self.optimizer.step()
            # the batch terms are rank shares, the contrastive one the full value on every rank
            step = torch.stack([loss, weight * parts["bpr"], weight * parts["reg"],
                                parts["contrastive"]])
            acc = step if acc is None else acc + step
            if bar.drawn and (b % 10 == 0 or b == n_batches - 1):
                elapsed = time.perf_counter() - t0
                bar.postfix(loss=f"{float(step[0]):.4f}",
                            samples_s=f"{(b + 1) * len(batch[0]) / elapsed:.0f}")
        bar.close()
        self.scheduler.step()
        acc = distributed.all_reduce_mean(acc, f"loss reduction (epoch {epoch})")
        sums = dict(zip(("loss", "bpr", "reg", "contrastive"), acc.tolist(), strict=True))
        if math.isnan(sums["loss"]):
            raise FloatingPointError(f"training loss is NaN at epoch {epoch}")
        train_time = time.perf_counter() - t0
        self.state.train_time += train_time
        samples = n_batches * self.sampler.batch_size
        return {"epoch": epoch, **sums, "train_s": train_time,
                "samples_per_s": samples / max(train_time, 1e-9),
                "lr": self.optimizer.param_groups[0]["lr"]}

    def step(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, build: bool,
             weight: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, parts = self.loss_fn(self.epoch_graph, users, pos, neg, build_item_graph=build,
                                   batch_weight=weight, contrastive_shard=self.shard)
        loss.backward()
        return loss.detach(), parts

    def evaluate_epoch(self, record: dict[str, Any]) -> bool:
        """Validation metrics into ``record`` (and test ones when validation improved); the
        early-stopping bookkeeping. Returns whether validation Recall@20 improved."""
        config, state = self.config, self.state
        t1 = time.perf_counter()
        valid = self.evaluate("valid")
        record["valid"] = valid
        improved = valid["recall@20"] > state.best_recall
        if config.evaluation == "mmrec":  # MMRec's trainer tests after every validation
            record["test"] = self.evaluate("test")
        if improved:
            test = record["test"] if "test" in record else self.evaluate("test")
            record["test"] = test
            state.best_recall, state.best_epoch = valid["recall@20"], record["epoch"]
            state.best_valid, state.best_test, state.stopping_step = valid, test, 0
        elif state.stopping_step < config.patience:
            state.stopping_step += 1
        else:
            state.stopped_early = True
        record["eval_s"] = time.perf_counter() - t1
        return improved

    def evaluate(self, split: str) -> dict[str, float]:
        return evaluate(self.model, self.ui_graph, self.dataset, split, self.config.ks,
                        self.config.ndcg, self.config.backend)

    def epoch_line(self, record: dict[str, Any]) -> str:
        return (f"epoch {record['epoch'] + 1}/{self.config.epochs}: loss {record['loss']:.4f} "
                f"(bpr {record['bpr']:.4f}, reg {record['reg']:.3g}, contrastive "
                f"{record['contrastive']:.4f}) {record['train_s']:.2f}s "
                f"{record['samples_per_s']:.0f} samples/s")

    def evaluation_lines(self, record: dict[str, Any], improved: bool) -> list[str]:
        epoch = record["epoch"] + 1
        note = " (final evaluation: the last epoch is off the --eval-every schedule)" \
            if record.get("final_eval") else ""
        lines = [f"epoch {epoch} valid: {format_metrics(record['valid'])} "
                 f"[{record['eval_s']:.2f}s]" + (" best so far" if improved else "") + note]
        if "test" in record:
            lines.append(f"epoch {epoch} test: {format_metrics(record['test'])}")
        if self.state.stopped_early:
            lines.append(f"stopping early: validation recall@20 has not improved for "
                         f"{self.config.patience + 1} evaluations")
        return lines

    def finish(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        state = self.state
        summary = {
            "data": self.dataset.name, "epochs_run": state.epoch,
            "stopped_early": state.stopped_early, "best_epoch": state.best_epoch,
            "best_valid": state.best_valid, "test_at_best": state.best_test,
            "train_time_s": state.train_time, "device": str(self.device),
            "world_size": self.world, "modalities": self.model.modalities,
            "config": dataclasses.asdict(self.config),
        }
        if self.lead:
            self.files.write_json(summary, self.files.summary)
            plot_curves(history, self.files.curves)
        best = state.best_test
        if best is not None:
            self.log.line(f"best validation at epoch {state.best_epoch + 1}: test "
                          f"{format_metrics(best)}")
        self.log.line(f"run directory: {self.files.path}")
        return summary


def evaluate_run(run_dir: str | Path, *, checkpoint: str = "best", device: str | None = None,
                 overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Re-evaluates a run's ``best`` or ``last`` checkpoint on validation and test.

    ``overrides`` replaces options of the run's ``config.json`` that change how, not what, is
    evaluated (``micro_fast.config.EVAL_KEYS``: data, format, ks, ndcg, device, backend,
    threads); ``device`` is the same as ``overrides={"device": device}``.
    """
    files = RunDir(run_dir)
    if not files.config.exists():
        raise MissingFileError(f"{files.config} not found: not a run directory")
    config = TrainConfig.from_dict(json.loads(files.config.read_text()), source=str(files.config))
    changes = canonical_options(dict(overrides or {}), "evaluation options",
                                tuple(k for k in EVAL_KEYS if k != "checkpoint"))
    if device is not None:
        changes["device"] = device
    if changes.get("ndcg", config.ndcg) != config.ndcg:
        # another NDCG is another evaluation convention; the training schedule it also pins
        # plays no part here
        changes["evaluation"] = "micro"
    config = dataclasses.replace(config, **changes).validate()
    if config.threads:
        torch.set_num_threads(config.threads)
    path = files.path / f"{checkpoint}.pt"
    if not path.exists():
        raise MissingFileError(f"{path} not found")
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
    files.write_json(result, files.path / f"eval_{checkpoint}.json")
    return result
