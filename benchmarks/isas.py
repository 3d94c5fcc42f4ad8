"""Which instruction sets of the compiled core the suite measures, chosen with ``--bench-isa``:

* ``best`` (the default of a plain pytest run): the one the library picks here, as ``cpp``;
* ``all`` (the default of ``micro-fast bench``): every one this CPU runs, as ``cpp[avx512]``,
  ``cpp[avx2]``, ``cpp[generic]``, so an AVX-512 machine also measures the AVX2 and portable
  builds a user of another CPU gets;
* a comma list, e.g. ``avx2,generic``.

Every case records the ISA it ran with in ``extra_info["isa"]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from micro_fast.backends import cpp

_selected: list[str] | None = None  # None: "best"


def set_selected(spec: str) -> None:
    global _selected
    supported = cpp.supported_isas()
    if spec == "best":
        _selected = None
    elif spec == "all":
        _selected = supported or None
    else:
        wanted = [s.strip() for s in spec.split(",") if s.strip()]
        bad = [s for s in wanted if s not in supported]
        if bad:
            raise ValueError(f"--bench-isa {bad} not supported here (this CPU runs {supported})")
        _selected = wanted


def cpp_cases(prefix: str = "cpp") -> list[str]:
    """The names of a compiled case, one per selected ISA."""
    if _selected is None:
        return [prefix]
    return [f"{prefix}[{isa}]" for isa in _selected]


def split(name: str) -> tuple[str, str | None]:
    """``"cpp[avx2]"`` -> ``("cpp", "avx2")``; ``"cpp"`` -> ``("cpp", "best")``; a name of
    another backend or peer -> ``(name, None)``."""
    if name.endswith("]") and "[" in name:
        base, isa = name[:-1].split("[", 1)
        return base, isa
    return name, ("best" if name.startswith("cpp") else None)


def current() -> str:
    return cpp.simd_isa()


@contextlib.contextmanager
def using(isa: str | None) -> Iterator[None]:
    """Runs the block with the compiled kernels of ``isa`` (``None``: unchanged)."""
    if isa is None:
        yield
        return
    previous = cpp.simd_isa()
    cpp.set_simd_isa(isa)
    try:
        yield
    finally:
        cpp.set_simd_isa(previous)
