"""CUDA backend (``micro_fast._cuda``): CUDA tensors, raw device pointers on torch's stream.

The compiled module links the static CUDA runtime and no libtorch: it only enqueues kernels on
the stream it is given. Every buffer (outputs and the O(block x chunk) scratch) is allocated
here with torch, so it comes from torch's caching allocator and is ordered on torch's current
stream like any other torch work; nothing is synchronized.
"""

from __future__ import annotations

from functools import cache

import torch

from micro_fast.backends._build import build_status

try:
    from micro_fast import _cuda
except ImportError as exc:  # the extension is optional: the library falls back
    _cuda = None
    _import_error = f"{exc}"
else:
    _import_error = ""

#: Query rows per block when ``block_size`` is not given.
DEFAULT_BLOCK = 2048
#: Fewest keys per chunk; short row blocks get wider chunks, up to ``SCRATCH_ELEMS`` in all.
DEFAULT_CHUNK = 4096
#: Scratch elements (block x chunk) the default chunk width aims at.
SCRATCH_ELEMS = DEFAULT_BLOCK * DEFAULT_CHUNK
#: Widest key chunk the compiled launcher accepts (it clamps to this).
MAX_CHUNK = 1 << 21

_LAUNCHERS = {torch.float32: "topk_similarity_f32", torch.float64: "topk_similarity_f64"}


def _version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


@cache
def is_available() -> tuple[bool, str]:
    if _cuda is None:
        return False, build_status("_cuda") or f"micro_fast._cuda did not import: {_import_error}"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} was built without CUDA"
    if not torch.cuda.is_available():
        return False, "torch sees no CUDA device"
    # cudaDriverGetVersion needs no initialization, so this check does not touch the device.
    driver = _cuda.driver_version()
    runtime = _cuda.compiled_runtime_version
    if driver // 1000 < runtime // 1000:
        return False, (f"the CUDA driver supports CUDA {_version(driver)} but micro_fast._cuda "
                       f"was built with CUDA {_version(runtime)}: rebuild it with a CUDA "
                       f"{_version(driver)} toolkit or update the driver")
    return True, ""


def supports(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    if not is_available()[0]:
        return True  # the device kind is right; is_available() says why it cannot run here
    # The build holds SASS for its architectures and PTX for the newest one: older GPUs
    # (compute capability below the oldest built architecture) have no kernel image.
    major, minor = torch.cuda.get_device_capability(device)
    return major * 100 + minor * 10 >= min(_cuda.cuda_archs)


def _launcher(dtype: torch.dtype):
    if _cuda is None:
        raise RuntimeError(f"the cuda backend is not available: {is_available()[1]}")
    name = _LAUNCHERS.get(dtype)
    if name is None:
        raise ValueError(f"cuda backend supports float32 and float64, got {dtype}")
    return getattr(_cuda, name)


def topk_similarity(queries: torch.Tensor, keys: torch.Tensor | None, k: int,
                    exclude: tuple[torch.Tensor, torch.Tensor] | None,
                    block_size: int | None, *,
                    chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """See ``micro_fast.backends``. ``block_size``: query rows per block; ``chunk_size``: keys
    per chunk (default: wide enough to fill ``SCRATCH_ELEMS``, at least ``DEFAULT_CHUNK``)."""
    launch = _launcher(queries.dtype)
    device = queries.device
    if device.type != "cuda":
        raise ValueError(f"cuda backend needs CUDA tensors, got {device}")
    if keys is not None and (keys.device != device or keys.dtype != queries.dtype):
        raise ValueError("queries and keys must share device and dtype")
    queries = queries.detach().contiguous()
    keys = None if keys is None else keys.detach().contiguous()
    m, d = queries.shape
    n = m if keys is None else keys.shape[0]
    k = int(k)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    values = torch.empty((m, k), dtype=queries.dtype, device=device)
    indices = torch.empty((m, k), dtype=torch.int64, device=device)
    if m == 0:
        return values, indices
    if d == 0:  # all inner products are 0; one zero feature gives the same, with real pointers
        queries = queries.new_zeros((m, 1))
        keys = None if keys is None else keys.new_zeros((n, 1))
        d = 1

    rows = min(int(block_size or DEFAULT_BLOCK), m)
    chunk = int(chunk_size) if chunk_size else max(DEFAULT_CHUNK, SCRATCH_ELEMS // rows)
    chunk = max(1, min(chunk, n, MAX_CHUNK))

    ex_indptr = ex_indices = None
    if exclude is not None and exclude[1].numel() > 0:
        ex_indptr, ex_indices = (t.to(device=device, dtype=torch.int64).contiguous()
                                 for t in exclude)

    with torch.cuda.device(device):
        scratch = torch.empty(rows * chunk, dtype=queries.dtype, device=device)
        counts = torch.empty(rows, dtype=torch.int32, device=device)
        launch(queries=queries.data_ptr(), m=m,
               keys=0 if keys is None else keys.data_ptr(), n=n, d=d, k=k,
               exclude_indptr=0 if ex_indptr is None else ex_indptr.data_ptr(),
               exclude_indices=0 if ex_indices is None else ex_indices.data_ptr(),
               block_rows=rows, chunk=chunk,
               scratch=scratch.data_ptr(), scratch_elems=scratch.numel(),
               counts=counts.data_ptr(), counts_elems=counts.numel(),
               out_values=values.data_ptr(), out_indices=indices.data_ptr(),
               device=device.index, stream=torch.cuda.current_stream(device).cuda_stream)
    return values, indices
