"""The files of a run directory, written so that a crash, kill or full disk never leaves a
broken one: ``config.json``, ``metrics.jsonl`` (one JSON record per epoch), ``train.log``,
``last.pt`` (every epoch), ``best.pt`` (at the best validation Recall@20), ``summary.json`` and
``curves.png``. Every file but the two logs is written to a temporary file, synced and renamed;
the logs are appended line by line, and a last metrics line cut short by a kill is dropped when
it is read back. A directory that holds anything is never reused silently
(``RunDir.check_writable``)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from micro_fast.errors import InputError


class RunDir:
    """The paths of one run directory and its readers and writers."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config = self.path / "config.json"
        self.metrics = self.path / "metrics.jsonl"
        self.last = self.path / "last.pt"
        self.best = self.path / "best.pt"
        self.summary = self.path / "summary.json"
        self.curves = self.path / "curves.png"
        self.log = self.path / "train.log"

    def run_files(self) -> list[Path]:
        """The files a run (training, ``micro-fast eval``) writes here, those that exist."""
        named = [self.config, self.metrics, self.last, self.best, self.summary, self.curves,
                 self.log]
        extra = [*self.path.glob("eval_*.json"), *self.path.glob("*.tmp"),
                 *self.path.glob("*.tmp.png")]
        return [p for p in named if p.exists()] + sorted(extra)

    def check_writable(self, *, resume: bool, overwrite: bool) -> None:
        """Refuses a directory that already holds files, unless the run continues it
        (``resume``) or replaces it (``overwrite``)."""
        if resume and overwrite:
            raise InputError("--resume continues the run in --out and --overwrite deletes it: "
                             "pass one of them")
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"--out {self.path} is a file, not a run directory")
        if resume or overwrite or not self.path.is_dir():
            return
        entries = sorted(p.name for p in self.path.iterdir())
        if entries:
            shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
            raise InputError(f"{self.path} is not empty ({shown}): pass --resume to continue "
                             f"that run, --overwrite to replace it, or --out for a new directory")

    def remove_run_files(self) -> None:
        """Deletes the run files (``run_files``); anything else in the directory stays."""
        for p in self.run_files():
            p.unlink(missing_ok=True)

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def write_json(self, obj: Any, path: Path) -> None:
        atomic_write_text(json.dumps(obj, indent=2), path)

    def save(self, obj: Any, path: Path) -> None:
        atomic_save(obj, path)

    def read_metrics(self, before_epoch: int) -> list[dict[str, Any]]:
        return read_metrics(self.metrics, before_epoch)

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        atomic_write_text("".join(json.dumps(r) + "\n" for r in history), self.metrics)

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(record) + "\n")


def fsync_dir(folder: Path) -> None:
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


def atomic_write(path: Path, write: Callable[[Any], None], mode: str) -> None:
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
    fsync_dir(path.parent)


def atomic_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f), "wb")


def atomic_write_text(text: str, path: Path) -> None:
    atomic_write(path, lambda f: f.write(text), "w")


def read_metrics(path: Path, before_epoch: int) -> list[dict[str, Any]]:
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
            raise InputError(f"{path}: line {i + 1} is not a JSON record ({exc})") from None
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
