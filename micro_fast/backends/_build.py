"""What the build recorded about the optional compiled parts (``_build_info.json``)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path


@cache
def build_info() -> dict[str, str]:
    path = Path(__file__).resolve().parent.parent / "_build_info.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def build_status(part: str) -> str:
    """The build's reason for a missing part, or "" when it built or nothing was recorded."""
    status = build_info().get(part, "")
    return "" if status == "ok" else status
