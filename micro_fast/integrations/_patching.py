"""Replacing attributes of other projects' modules and classes, and putting them back.

``Patch`` records every ``(owner, name, old value)`` it replaced, so that ``restore`` leaves each
owner exactly as it was (an attribute that did not exist is deleted again). Patches stack:
restoring an older one first restores the newer ones made on the same attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

_MISSING = object()
_applied: list[Patch] = []


@dataclass
class Patch:
    """What one ``patch(...)`` call replaced: ``(owner, name, old value)`` in order."""

    changes: list[tuple[Any, str, Any]] = field(default_factory=list)
    active: bool = True

    def set(self, owner: Any, name: str, value: Any) -> None:
        self.changes.append((owner, name, owner.__dict__.get(name, _MISSING)
                             if isinstance(owner, type) else getattr(owner, name, _MISSING)))
        setattr(owner, name, value)

    @property
    def replaced(self) -> list[str]:
        """``"<owner>.<name>"`` for every replaced attribute."""
        return [f"{getattr(o, '__name__', type(o).__name__)}.{n}" for o, n, _ in self.changes]

    def restore(self) -> None:
        """Puts every replaced attribute back (newer patches on the same owners first)."""
        if not self.active:
            return
        while _applied and _applied[-1] is not self and self in _applied:
            _applied[-1].restore()
        for owner, name, old in reversed(self.changes):
            if old is _MISSING:
                if name in vars(owner):
                    delattr(owner, name)
            else:
                setattr(owner, name, old)
        self.active = False
        if self in _applied:
            _applied.remove(self)


def begin() -> Patch:
    p = Patch()
    _applied.append(p)
    return p


def restore_all() -> None:
    """Restores every active patch, newest first."""
    while _applied:
        _applied[-1].restore()
