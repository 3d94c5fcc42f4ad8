"""Which implementation runs an op, decided in one place.

Every backend declares here what it offers (``REGISTRY``: one ``Backend`` entry per backend, in
the order ``backend="auto"`` prefers them when nothing was measured), and every op asks
``plan(op, backend, device, ...)`` which backend runs it and with which tile size. The answer
combines:

* what the backends offer on the device: an op a backend lacks, an offer ``auto`` must not take
  (``auto=False``: numba's contrastive loops, slower than torch_ref's blocked products), and a
  size bound past which ``auto`` never takes an offer (``max_work``: numba_cuda's top-k, which
  rereads every key from global memory for every query row);
* what ``micro_fast.tuning`` measured on this machine: the backend of an op with several
  measured candidates (``MEASURED_BACKEND``; on CUDA tensors measured on the GPU, per GPU
  model, between the cuda kernels, numba_cuda within its bound and torch_ref's blocked
  cuBLAS products, so ``auto`` is never slower there than plain torch), the tile size of an
  offer with ``tuned_block`` (applied to problems at least as large as the one it was measured
  on), and the strategy of the fusion loss;
* an explicit argument, which always wins: a named backend, a ``block_size``, a ``strategy``.

Under ``torch.compile`` the plan is a constant of the graph: the machine-dependent part
(``_choose``) is an ``assume_constant_result`` function of strings and booleans only.

Adding a backend: a module with the array contract of ``micro_fast.backends``, and one
``register(Backend(...))`` (or one entry in ``REGISTRY``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

import torch

from micro_fast import tuning
from micro_fast.errors import InputError, UnavailableError

#: The kernels each op needs from a backend module (see ``micro_fast.backends``).
KERNELS: dict[str, tuple[str, ...]] = {
    "topk_similarity": ("topk_similarity",),
    "contrastive": ("contrastive_forward", "contrastive_backward"),
    "contrastive_fusion": ("contrastive_fusion_forward", "contrastive_fusion_backward"),
    "spmm": ("spmm", "sddmm"),
    "project_rows": ("project_rows_forward", "project_rows_backward"),
    "bipartite_graph": ("bipartite_graph",),
    "sample_edges": ("sample_edges",),
}
OPS: tuple[str, ...] = tuple(KERNELS)
#: The op a kernel name belongs to (``backends.get(..., op=<kernel>)``).
OP_OF_KERNEL: dict[str, str] = {k: op for op, ks in KERNELS.items() for k in ks}

#: Measured choices between backends: device type -> op -> the ``micro_fast.tuning`` decision
#: (``tuning.DECISIONS`` for CPU tensors, ``tuning.CUDA_DECISIONS`` measured per GPU model).
MEASURED_BACKEND: dict[str, dict[str, str]] = {
    "cpu": {"spmm": "spmm.backend", "project_rows": "project_rows.backend"},
    "cuda": {"topk_similarity": "topk_similarity.backend", "contrastive": "contrastive.backend",
             "spmm": "spmm.backend"},
}
#: A named backend without the op's kernels runs it with this one instead (the row projection
#: is one dense product, which torch runs anywhere).
NAMED_FALLBACK: dict[str, str] = {"project_rows": "torch_ref"}
#: Above this many multiply-adds (queries x keys x d) ``auto`` does not run a top-k search with
#: numba_cuda, whose kernel rereads every key from global memory for every query row; the
#: blocked cuBLAS search of torch_ref runs instead. A conservative bound (a 1,024 x 1,024
#: search at d = 16), not yet measured on a GPU.
NUMBA_CUDA_TOPK_MAX_WORK = 1 << 24


@dataclass(frozen=True)
class Offer:
    """One op a backend runs. ``auto=False``: only when named. ``tuned_block``: its tile size
    is the ``"<op>.block_size"`` decision of ``micro_fast.tuning``. ``max_work``: ``auto``
    never plans it for a problem of more multiply-adds. ``measured=False``: not a candidate
    when ``micro_fast.tuning`` measures the op's backends (``MEASURED_BACKEND``)."""

    op: str
    auto: bool = True
    tuned_block: bool = False
    max_work: int | None = None
    measured: bool = True


@dataclass(frozen=True)
class Backend:
    """A backend: its name, its module (import path or module object) and its offers."""

    name: str
    module: str | ModuleType
    offers: tuple[Offer, ...]

    def offer(self, op: str) -> Offer | None:
        return next((o for o in self.offers if o.op == op), None)


def _all(*ops: str, **kw) -> tuple[Offer, ...]:
    return tuple(Offer(op, **kw) for op in ops)


REGISTRY: list[Backend] = [
    Backend("cuda", "micro_fast.backends.cuda",
            _all("topk_similarity", "contrastive", "spmm")),
    # tensor cores through Triton; chosen on a GPU only where it measures fastest there
    Backend("triton", "micro_fast.backends.triton",
            (Offer("contrastive"), Offer("topk_similarity"))),
    Backend("numba_cuda", "micro_fast.backends.numba_cuda",
            (Offer("topk_similarity", max_work=NUMBA_CUDA_TOPK_MAX_WORK), Offer("spmm"))),
    Backend("cpp", "micro_fast.backends.cpp",
            (*_all("topk_similarity", "contrastive", "contrastive_fusion", tuned_block=True),
             *_all("spmm", "project_rows", "bipartite_graph", "sample_edges"))),
    # numba's contrastive loss, scalar loops where torch_ref's blocked products call BLAS, took
    # 1.4 to 2.5x torch_ref's time at N = 7,050 and 23,033 (benchmarks/results, Zen 5)
    Backend("numba", "micro_fast.backends.numba",
            (Offer("topk_similarity"), Offer("contrastive", auto=False), Offer("spmm"),
             Offer("bipartite_graph"))),
    # torch_ref's spmm (index_add_ over the stored entries) is the ground truth, never the
    # fastest: not worth measuring
    Backend("torch_ref", "micro_fast.backends.torch_ref",
            (*_all("topk_similarity", "contrastive", "project_rows", "bipartite_graph",
                   "sample_edges"), Offer("spmm", measured=False))),
]

_modules: dict[str, ModuleType] = {}
# derived from REGISTRY by _reindex (plans are made on every eager call: no scans there)
_offers: dict[tuple[str, str], Offer] = {}
_auto_order: dict[str, tuple[tuple[str, Offer], ...]] = {}
_bounds: dict[str, int] = {}


def _reindex() -> None:
    _offers.clear()
    _auto_order.clear()
    _bounds.clear()
    for op in OPS:
        order, bounds = [], []
        for b in REGISTRY:
            o = b.offer(op)
            if o is None:
                continue
            _offers[(b.name, op)] = o
            if o.auto:
                order.append((b.name, o))
            if o.max_work is not None:
                bounds.append(o.max_work)
        _auto_order[op] = tuple(order)
        _bounds[op] = min(bounds) if bounds else -1


_reindex()


def register(backend: Backend, *, before: str | None = None) -> None:
    """Adds (or replaces) a backend; ``before`` puts it ahead of that one in ``auto``'s order
    (default: last). Its module must follow the array contract of ``micro_fast.backends``:
    ``is_available()``, ``supports(device)`` and the kernels of each offered op."""
    unknown = [o.op for o in backend.offers if o.op not in KERNELS]
    if unknown:
        raise InputError(f"backend {backend.name!r} offers unknown ops {unknown}; ops: {OPS}")
    unregister(backend.name)
    names = [b.name for b in REGISTRY]
    REGISTRY.insert(names.index(before) if before in names else len(REGISTRY), backend)
    _reindex()


def unregister(name: str) -> None:
    """Removes a backend (no error if there is none of that name)."""
    REGISTRY[:] = [b for b in REGISTRY if b.name != name]
    _modules.pop(name, None)
    _reindex()


def names() -> tuple[str, ...]:
    """The registered backends, in ``auto``'s order."""
    return tuple(b.name for b in REGISTRY)


def entry(name: str) -> Backend:
    for b in REGISTRY:
        if b.name == name:
            return b
    raise InputError(f"backend must be one of {('auto', *names())}, got {name!r}")


def module(name: str) -> ModuleType:
    """The module of a registered backend (imported on first use)."""
    if name not in _modules:
        mod = entry(name).module
        _modules[name] = importlib.import_module(mod) if isinstance(mod, str) else mod
    return _modules[name]


def status() -> dict[str, str]:
    """Maps every backend to ``"available"`` or the reason it is not."""
    out = {}
    for name in names():
        try:
            ok, why = module(name).is_available()
        except Exception as exc:  # an import failure is a reason, not a crash
            ok, why = False, f"{type(exc).__name__}: {exc}"
        out[name] = "available" if ok else why
    return out


def _runs_on(name: str, device: torch.device) -> bool:
    """Whether the backend runs tensors of ``device`` here (``supports`` first: it is cheap,
    while ``is_available`` may initialize a driver that a CPU tensor never needs)."""
    try:
        mod = module(name)
        return bool(mod.supports(device)) and bool(mod.is_available()[0])
    except ImportError:
        return False


def candidates(op: str, device: torch.device | str, *, work: int = 0) -> list[str]:
    """The backends ``auto`` may plan for ``op`` on ``device`` here, in preference order."""
    device = torch.device(device)
    return [name for name, o in _auto_order[op]
            if (o.max_work is None or work <= o.max_work) and _runs_on(name, device)]


def measured_candidates(op: str, device: torch.device | str = "cpu", *,
                        work: int = 0) -> list[str]:
    """The backends ``micro_fast.tuning`` measures against each other for ``op`` (an op of
    ``MEASURED_BACKEND``) on ``device`` for a problem of ``work`` multiply-adds, in preference
    order (the first is the default)."""
    return [name for name in candidates(op, device, work=work) if _offers[(name, op)].measured]


@torch.compiler.assume_constant_result
def _work_bound(op: str) -> int:
    """The smallest ``max_work`` of the op's offers (-1: none)."""
    return _bounds[op]


def _named(op: str, name: str, device: torch.device) -> str:
    """The backend that runs ``op`` when ``name`` is asked for (checked)."""
    mod = module(name)  # an unknown name raises here
    ok, why = mod.is_available()
    if not ok:
        raise UnavailableError(f"backend {name!r} is not available: {why}")
    if not mod.supports(device):
        raise InputError(f"backend {name!r} does not run on {device.type} tensors")
    if (name, op) not in _offers:
        if op in NAMED_FALLBACK:
            return _named(op, NAMED_FALLBACK[op], device)
        raise InputError(f"backend {name!r} has no {KERNELS[op][0]} kernel")
    return name


def _auto(op: str, device: torch.device, over_bound: bool) -> str:
    decision = MEASURED_BACKEND.get(device.type, {}).get(op)
    if decision is not None:
        chosen = tuning.choice(decision, device)
        o = _offers.get((chosen, op))
        if o is not None and o.auto and not (over_bound and o.max_work is not None) \
                and _runs_on(chosen, device):
            return chosen
    for name, o in _auto_order[op]:
        if (o.max_work is None or not over_bound) and _runs_on(name, device):
            return name
    raise RuntimeError(f"no backend runs {op} on device {device}")  # torch_ref runs all


def _decide(op: str, backend: str, device: str, over_bound: bool,
            strategy: str) -> tuple[str, int | None, str | None]:
    dev = torch.device(device)
    if op == "contrastive_fusion":
        # the fused-view kernel runs with the backend of the contrastive loss, where it has one
        name = _decide("contrastive", backend, device, over_bound, "auto")[0]
        offer = _offers.get((name, op))
        if offer is None or strategy == "separate" or (
                strategy == "auto" and tuning.choice("contrastive_fusion.strategy") != "fused"):
            return name, None, "separate"
        measured = tuning.choice(f"{op}.block_size") if offer.tuned_block else None
        return name, measured, "fused"
    name = _auto(op, dev, over_bound) if backend == "auto" else _named(op, backend, dev)
    offer = _offers.get((name, op))
    measured = tuning.choice(f"{op}.block_size") if offer and offer.tuned_block else None
    return name, measured, None


@torch.compiler.assume_constant_result
def _choose(op: str, backend: str, device: str, over_bound: bool,
            strategy: str) -> tuple[str, int | None, str | None]:
    """(backend, measured tile size or None, strategy): constants to the compiler, since they
    depend on the machine and the arguments, never on the data."""
    return _decide(op, backend, device, over_bound, strategy)


@dataclass(frozen=True)
class Plan:
    """What runs an op: the backend (a registry name), the tile size (``None``: the backend's
    default) and, for ``contrastive_fusion``, ``"fused"`` or ``"separate"`` (else ``None``)."""

    op: str
    backend: str
    block_size: int | None
    strategy: str | None

    @property
    def module(self) -> ModuleType:
        return module(self.backend)


def plan(op: str, backend: str, device: torch.device | str, *, rows: int = 0, work: int = 0,
         strategy: str = "auto", sharded: bool = False) -> Plan:
    """The plan of ``op`` (one of ``OPS``) with ``backend`` (``"auto"`` or a registry name) on
    tensors of ``device``, for a problem of ``rows`` rows (tile sizes measured on at least as
    many rows apply) and ``work`` multiply-adds (size bounds). ``strategy`` and ``sharded``
    apply to ``contrastive_fusion``: a sharded loss runs the fused kernel wherever there is
    one, so that every process splits the work alike."""
    if op not in KERNELS:
        raise InputError(f"op must be one of {OPS}, got {op!r}")
    bound = _work_bound(op if op != "contrastive_fusion" else "contrastive")
    over = bound >= 0 and work > bound
    if op == "contrastive_fusion" and sharded and strategy == "auto":
        strategy = "fused"
    name, measured, how = _choose(op, backend, str(torch.device(device)), over, strategy)
    if measured is not None and rows < tuning.CALIBRATION_ROWS.get(op, 0):
        measured = None
    return Plan(op, name, measured, how)


def describe(device: torch.device | str = "cpu") -> list[str]:
    """Lines for ``micro-fast info``: what ``auto`` runs each op with on ``device``, the
    candidates, and the measured tile size for large problems (from the cached choices or the
    defaults: nothing is measured here)."""
    device = torch.device(device)
    lines = [f"plans on {device.type} tensors (backend='auto'):"]
    for op in OPS:
        try:
            found = candidates(op, device)
            if not found:
                lines.append(f"  {op:<19} no backend")
                continue
            p = _peek(op, device)
        except Exception as exc:  # a broken backend is a line, not a crash
            lines.append(f"  {op:<19} {type(exc).__name__}: {exc}")
            continue
        extra = []
        if p.block_size is not None:
            extra.append(f"block_size {p.block_size} from {tuning.CALIBRATION_ROWS[op]} rows")
        if op == "contrastive_fusion":
            extra.append(p.strategy)
        bound = _work_bound(op)
        if bound >= 0 and device.type != "cpu":
            extra.append(f"bound {bound:.3g} multiply-adds for {', '.join(found)}")
        lines.append(f"  {op:<19} {p.backend:<10} of {', '.join(found)}"
                     + (f" ({'; '.join(extra)})" if extra else ""))
    return lines


def _peek(op: str, device: torch.device) -> Plan:
    """The plan for a large problem, from the cached choices only (no calibration)."""
    with tuning.without_calibration():
        name, measured, how = _decide(op, "auto", str(device), False, "auto")
    return Plan(op, name, measured, how)
