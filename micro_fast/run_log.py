"""What a training run prints: plain lines that read the same in a terminal, a pipe or a log
file, and progress bars only where a terminal shows them.

Every line goes to ``RUN_DIR/train.log`` (appended, so a resumed run continues its log) and,
unless the run is quiet, to stdout. The per-batch bar is drawn on stderr, and only when stderr
is a terminal: redirected to a file, under nohup or a scheduler, the output holds no carriage
returns, one line per epoch and per evaluation.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO


class RunLog:
    """``line(msg)`` to the log file (when given) and to stdout (when ``echo``)."""

    def __init__(self, path: Path | None, *, echo: bool, append: bool) -> None:
        self.echo = echo
        self._file: TextIO | None = None
        if path is not None:
            self._file = open(path, "a" if append else "w")  # noqa: SIM115 - closed in close()

    def line(self, msg: str) -> None:
        if self._file is not None:
            self._file.write(msg + "\n")
            self._file.flush()
        if self.echo:
            print(msg, flush=True)

    def bar(self, items: Iterable[Any], *, desc: str, total: int) -> ProgressBar:
        return ProgressBar(items, desc=desc, total=total,
                           draw=self.echo and _is_terminal(sys.stderr))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class ProgressBar:
    """A tqdm bar on a terminal; otherwise the bare iteration (``postfix`` does nothing)."""

    def __init__(self, items: Iterable[Any], *, desc: str, total: int, draw: bool) -> None:
        self._items, self._bar = items, None
        if draw:
            from tqdm.auto import tqdm

            self._bar = tqdm(items, desc=desc, total=total, leave=False, unit="batch")

    def __iter__(self) -> Iterator[Any]:
        return iter(self._bar if self._bar is not None else self._items)

    @property
    def drawn(self) -> bool:
        return self._bar is not None

    def postfix(self, **values: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix(**values)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def format_metrics(metrics: dict[str, float]) -> str:
    """``recall@10 0.0123 recall@20 ...`` in the order the metrics were computed."""
    return " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "users")
