"""The problems ``micro_fast.tuning`` measures, and its decision tables.

Each ``Decision`` names a choice between equivalent implementations, its default, the
candidates on this machine and how to run one candidate on a small representative problem
(``prepare(candidate, choices made so far)`` returns the call to time). ``DECISIONS`` are
measured on the CPU; ``CUDA_DECISIONS`` on a GPU, inside ``measuring_on(device)``, with their
problems built on that device and each timed call waiting for the GPU.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from micro_fast import backends

_target = threading.local()  # the device being calibrated (``measuring_on``)


@contextlib.contextmanager
def measuring_on(device: torch.device) -> Iterator[None]:
    """Inside, the problems of the device's decisions are built on ``device``."""
    before = getattr(_target, "device", None)
    _target.device = device
    try:
        yield
    finally:
        _target.device = before


#: Rows of the problem each tile-size decision is measured on. A measured size applies to
#: problems at least this large; smaller ones keep the backend's default, which leaves them
#: enough tiles per thread (a contrastive tile of 384 rows, measured fastest at 3,072 rows,
#: made a 1,000-row loss 1.7x slower than the default 256 on Zen 5).
CALIBRATION_ROWS = {"contrastive": 3072, "contrastive_fusion": 4096, "topk_similarity": 8192}

@dataclass(frozen=True)
class Decision:
    """One choice: its candidates on this machine, the default, and how to run a candidate
    (``prepare(candidate, choices made so far)`` returns the call to time)."""

    name: str
    doc: str
    default: object
    candidates: Callable[[], list]
    prepare: Callable[[object, dict], Callable[[], object]]


def _unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.normalize(x, dim=1).contiguous()


def _module(name: str):
    # the modules themselves, not dispatch.plan: a plan consults the choices being measured
    from micro_fast import dispatch

    return dispatch.module(name)


def _cpp():
    return _module("cpp")


def _only_cpp(values: tuple) -> Callable[[], list]:
    return lambda: list(values) if "cpp" in backends.available() else []


def _prepare_contrastive_block(block: int, _made: dict) -> Callable[[], object]:
    impl, n = _cpp(), CALIBRATION_ROWS["contrastive"]
    n1, n2 = _unit_rows(n, 64, 0), _unit_rows(n, 64, 1)
    g = torch.full((n,), 1.0 / n)

    def run():
        lse1, _ = impl.contrastive_forward(n1, n2, 0.5, False, block)
        impl.contrastive_backward(n1, n2, 0.5, lse1, None, g, None, block)
    return run


def _fusion_inputs(n: int = CALIBRATION_ROWS["contrastive_fusion"],
                   m: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    u = torch.stack([_unit_rows(n, 64, 2 + k) for k in range(m)])
    w = torch.softmax(torch.randn(n, m, generator=torch.Generator().manual_seed(9)), dim=1)
    fused = sum(w[:, k:k + 1] * u[k] for k in range(m))
    coef = (w / torch.linalg.vector_norm(fused, dim=1, keepdim=True)).contiguous()
    return u.contiguous(), coef


def _prepare_fusion_block(block: int, _made: dict) -> Callable[[], object]:
    impl = _cpp()
    u, coef = _fusion_inputs()
    g = torch.full(coef.T.shape, 1.0 / u.shape[1])

    def run():
        lse = impl.contrastive_fusion_forward(u, coef, 0.5, block)
        impl.contrastive_fusion_backward(u, coef, 0.5, lse, g, block)
    return run


def _prepare_fusion_strategy(strategy: str, made: dict) -> Callable[[], object]:
    impl = _cpp()
    u, coef = _fusion_inputs()
    n = u.shape[1]
    g = torch.full((u.shape[0], n), 1.0 / n)
    fused = torch.nn.functional.normalize(sum(coef[:, k:k + 1] * u[k]
                                              for k in range(u.shape[0])), dim=1).contiguous()
    if strategy == "fused":
        block = made.get("contrastive_fusion.block_size")

        def run():
            lse = impl.contrastive_fusion_forward(u, coef, 0.5, block)
            impl.contrastive_fusion_backward(u, coef, 0.5, lse, g, block)
    else:
        block = made.get("contrastive.block_size")

        def run():
            for k in range(u.shape[0]):
                lse1, _ = impl.contrastive_forward(u[k], fused, 0.5, False, block)
                impl.contrastive_backward(u[k], fused, 0.5, lse1, None, g[k], None, block)
    return run


def _prepare_topk_block(block: int, _made: dict) -> Callable[[], object]:
    impl = _module("cpp")
    x = _unit_rows(CALIBRATION_ROWS["topk_similarity"], 64, 5)
    return lambda: impl.topk_similarity(x, None, 10, None, block)


_spmm_inputs: dict[str, tuple] = {}


def target_device() -> torch.device:
    """The device the decisions being calibrated are measured on."""
    return getattr(_target, "device", None) or torch.device("cpu")


def _tensor_device(device: torch.device) -> torch.device:
    """Where the problems of ``device``'s decisions are built (the device itself)."""
    return device


def _on_target(*tensors: torch.Tensor) -> list[torch.Tensor]:
    dev = _tensor_device(target_device())
    return [t.to(dev) for t in tensors]


def _synced(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` followed by a wait for the GPU, so that its time is the kernels' time."""
    dev = _tensor_device(target_device())
    if dev.type != "cuda":
        return fn

    def run():
        fn()
        torch.cuda.synchronize(dev)
    return run


def _prepare_spmm_backend(name: str, _made: dict) -> Callable[[], object]:
    """spmm forward + backward (the transposed product and the values' sddmm) on a bipartite
    user-item graph of 30,000 nodes and 200,000 stored entries, d = 64."""
    if not _spmm_inputs:
        gen = torch.Generator().manual_seed(7)
        n_users, n_items, nnz = 20_000, 10_000, 100_000
        users = torch.randint(0, n_users, (nnz,), generator=gen)
        items = torch.randint(0, n_items, (nnz,), generator=gen)
        impl = _module("torch_ref")
        indptr, indices, values = impl.bipartite_graph(users, items, n_users, n_items, "sym",
                                                       False, "sum", torch.float32)
        x = torch.randn(n_users + n_items, 64, generator=gen)
        _spmm_inputs["graph"] = (indptr, indices, values, x)
    indptr, indices, values, x = _on_target(*_spmm_inputs["graph"])
    impl = _module(name)

    def run():
        y = impl.spmm(indptr, indices, values, x)
        impl.spmm(indptr, indices, values, y)  # the graph is symmetric: A^T g = A g
        impl.sddmm(indptr, indices, y, x)
    return _synced(run)


def _backend_candidates(op: str, device_type: str = "cpu", work: int = 0) -> Callable[[], list]:
    """The backends ``micro_fast.dispatch`` offers for ``op`` on tensors of the device being
    calibrated (the CPU, or the GPU of ``CUDA_DECISIONS``), to be measured on a problem of
    ``work`` multiply-adds (an offer bounded below that is not measured)."""
    def candidates() -> list:
        from micro_fast import dispatch

        device = target_device() if device_type != "cpu" else torch.device("cpu")
        if device.type != device_type:
            device = torch.device(device_type)
        return dispatch.measured_candidates(op, device, work=work)
    return candidates


def _prepare_project_rows_backend(name: str, _made: dict) -> Callable[[], object]:
    """project_rows forward + backward: 1,800 distinct rows of 4,096 x 1,024 features
    projected to 64."""
    gen = torch.Generator().manual_seed(8)
    x, w = torch.randn(4096, 1024, generator=gen), torch.randn(64, 1024, generator=gen)
    rows = torch.randperm(4096, generator=gen)[:1800].sort().values
    g = torch.randn(1800, 64, generator=gen)
    impl = _module(name)

    def run():
        impl.project_rows_forward(x, rows, w, None)
        impl.project_rows_backward(x, rows, w, g, True, True)
    return run


#: Rows of the GPU decisions' problems (d = 64): large enough that launch overheads do not
#: decide, a few milliseconds per call on a current GPU.
CUDA_ROWS = {"topk_similarity": 16384, "contrastive": 8192}


def _prepare_cuda_topk_backend(name: str, _made: dict) -> Callable[[], object]:
    """A 16,384-row self kNN search, d = 64, k = 10 (a MICRO item graph's shape)."""
    (x,) = _on_target(_unit_rows(CUDA_ROWS["topk_similarity"], 64, 5))
    impl = _module(name)
    return _synced(lambda: impl.topk_similarity(x, None, 10, None, None))


def _prepare_cuda_contrastive_backend(name: str, _made: dict) -> Callable[[], object]:
    """The symmetric contrastive loss, forward and backward, 8,192 rows, d = 64."""
    n = CUDA_ROWS["contrastive"]
    n1, n2, g = _on_target(_unit_rows(n, 64, 0), _unit_rows(n, 64, 1), torch.full((n,), 1 / n))
    impl = _module(name)

    def run():
        lse1, lse2 = impl.contrastive_forward(n1, n2, 0.5, True, None)
        impl.contrastive_backward(n1, n2, 0.5, lse1, lse2, g, g, None)
    return _synced(run)


DECISIONS: tuple[Decision, ...] = (
    Decision("contrastive.block_size", "rows per tile of contrastive_loss (cpp)", 256,
             _only_cpp((128, 256, 384)), _prepare_contrastive_block),
    Decision("contrastive_fusion.block_size", "rows per tile of the fused-view kernel (cpp)",
             128, _only_cpp((128, 192, 256)), _prepare_fusion_block),
    Decision("contrastive_fusion.strategy",
             "contrastive_fusion_loss as one fused-view pass or as separate losses (cpp)",
             "fused", _only_cpp(("fused", "separate")), _prepare_fusion_strategy),
    Decision("topk_similarity.block_size", "rows per tile of the top-k search (cpp)", 256,
             _only_cpp((128, 256, 512)), _prepare_topk_block),
    Decision("spmm.backend", "backend of spmm / propagate on CPU tensors with backend='auto'",
             "cpp", _backend_candidates("spmm"), _prepare_spmm_backend),
    Decision("project_rows.backend", "backend of project_rows on CPU tensors with "
             "backend='auto' (the compiled kernels or torch's products)", "cpp",
             _backend_candidates("project_rows"), _prepare_project_rows_backend),
)


#: The GPU decisions: which backend ``auto`` runs each op with on CUDA tensors, measured on the
#: GPU itself ("cuda" is the default, and the first candidate there is).
CUDA_DECISIONS: tuple[Decision, ...] = (
    Decision("topk_similarity.backend", "backend of topk_similarity / knn_graph on CUDA tensors "
             "(the cuda kernels or the blocked cuBLAS search of torch_ref)", "cuda",
             _backend_candidates("topk_similarity", "cuda",
                                 CUDA_ROWS["topk_similarity"] ** 2 * 64),
             _prepare_cuda_topk_backend),
    Decision("contrastive.backend", "backend of contrastive_loss on CUDA tensors (the cuda "
             "kernels or torch_ref's blocked cuBLAS products)", "cuda",
             _backend_candidates("contrastive", "cuda"), _prepare_cuda_contrastive_backend),
    Decision("spmm.backend", "backend of spmm / propagate on CUDA tensors", "cuda",
             _backend_candidates("spmm", "cuda"), _prepare_spmm_backend),
)
