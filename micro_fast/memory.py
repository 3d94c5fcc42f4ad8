"""A memory budget for the ops' own allocations.

Every op computes, before it allocates anything, how many bytes its outputs and working
buffers take (``estimate`` below), and raises ``MemoryBudgetError`` naming the op, the sizes
and the budget when that exceeds ``max_memory``, instead of being killed by the operating
system halfway. The default budget is the machine's physical memory (a request beyond it
cannot succeed); ``set_max_memory`` or ``MICRO_FAST_MAX_MEMORY`` (bytes, or e.g. ``"8GB"``)
lowers it, for instance to leave room for the rest of a training job.

Index widths: every index, offset and count is int64, in the kernels too, so sizes past 2^31
(nnz, N x k) need no special case; what stops them is memory, which this check reports.
"""

from __future__ import annotations

import os
import re

import torch

from micro_fast.errors import InputError, InputTypeError, MicroFastError

_UNITS = {"": 1, "B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}
_budget: int | None = None


class MemoryBudgetError(MicroFastError, MemoryError):
    """An op would need more memory than ``max_memory`` allows."""


def parse_bytes(value: int | str) -> int:
    """``123``, ``"123"``, ``"512MB"``, ``"8 GB"`` (binary units) -> bytes."""
    if isinstance(value, bool):
        raise InputTypeError("max_memory must be a byte count or a string such as '8GB'")
    if isinstance(value, int):
        n = value
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?B?)\s*", str(value).upper())
        if m is None:
            raise InputError(f"max_memory: cannot read {value!r} as a size (e.g. 8GB)")
        unit = m.group(2) if m.group(2).endswith("B") or not m.group(2) else m.group(2) + "B"
        n = int(float(m.group(1)) * _UNITS[unit])
    if n <= 0:
        raise InputError(f"max_memory must be positive, got {value!r}")
    return n


def physical_memory() -> int:
    """Bytes of physical memory (a large number where the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 50


def set_max_memory(value: int | str | None) -> None:
    """Sets the budget (bytes or a string such as ``"8GB"``); ``None`` restores the default."""
    global _budget
    _budget = None if value is None else parse_bytes(value)


@torch.compiler.assume_constant_result
def max_memory() -> int:
    """The budget in bytes: ``set_max_memory``, else ``MICRO_FAST_MAX_MEMORY``, else physical
    memory."""
    if _budget is not None:
        return _budget
    env = os.environ.get("MICRO_FAST_MAX_MEMORY", "").strip()
    return parse_bytes(env) if env else physical_memory()


def _fmt(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


@torch.compiler.assume_constant_result
def workspace(impl: object, op: str, **sizes: int) -> int:
    """Bytes the backend module ``impl`` says ``op`` needs beyond its outputs, for the problem
    ``sizes`` (its ``workspace_bytes``; 0 for a backend that does not say)."""
    report = getattr(impl, "workspace_bytes", None)
    return int(report(op, **sizes)) if report is not None else 0


def check(op: str, nbytes: int, detail: str = "") -> None:
    """Raises ``MemoryBudgetError`` when ``op`` would allocate more than the budget."""
    budget = max_memory()
    if nbytes > budget:
        raise MemoryBudgetError(
            f"{op} needs about {_fmt(nbytes)}{f' ({detail})' if detail else ''} but max_memory "
            f"is {_fmt(budget)}; use smaller inputs or blocks, or raise the budget with "
            "micro_fast.memory.set_max_memory / MICRO_FAST_MAX_MEMORY")
