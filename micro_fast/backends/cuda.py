"""CUDA backend (``micro_fast._cuda``): CUDA tensors, raw device pointers on torch's stream.

The compiled module links the static CUDA runtime and no libtorch: it only enqueues kernels on
the stream it is given. Every buffer (outputs and the O(block x chunk) scratch) is allocated
here with torch, so it comes from torch's caching allocator and is ordered on torch's current
stream like any other torch work; nothing is synchronized.
"""

from __future__ import annotations

import hashlib
from functools import cache
from typing import NamedTuple

import torch

from micro_fast.backends._build import build_status
from micro_fast.errors import InputError, UnavailableError

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

#: Rows per block of ``contrastive_backward`` when ``block_size`` is not given; its column
#: chunk then fills ``SCRATCH_ELEMS`` (2048 columns). Each [rows, chunk] weight tile feeds a
#: product over its rows ([rows, d] output tiles) and one over its columns ([chunk, d]), each
#: output tile owned by one thread block (no atomics): a near-square tile keeps both wide.
CONTRASTIVE_BLOCK = 4096
#: Fewest columns per ``contrastive_backward`` chunk when ``block_size`` is given.
CONTRASTIVE_CHUNK = 256
#: Split-K of the backward's gradient products (kMaxKSplits / kMinSliceK of
#: csrc/cuda/contrastive.cu): at d = 64 a product has too few output tiles to fill the GPU, so
#: the launcher splits its reduction into at most this many slices of at least
#: ``CONTRASTIVE_MIN_SLICE`` elements on average, summed in a fixed order (deterministic).
CONTRASTIVE_MAX_SPLITS = 32
CONTRASTIVE_MIN_SLICE = 256
#: Most scratch elements for those slices' partials (after the weights; 32 MiB in float32).
#: The launcher splits only as far as the partials fit (none: unsplit products), so this caps
#: the memory at large d, where the products have enough tiles without splitting anyway.
CONTRASTIVE_PARTIAL_ELEMS = 1 << 23
#: Rows per block of ``contrastive_forward`` when ``block_size`` is not given (its scratch is
#: only O(splits x rows), so by default one block covers everything up to this many rows).
CONTRASTIVE_FORWARD_BLOCK = 1 << 20
#: ``contrastive_forward`` splits each row tile's columns so that about this many rows' worth of
#: (row tile, split) thread blocks run per SM.
CONTRASTIVE_ROWS_PER_SM = 2048
#: Most column splits the forward launcher accepts (the grid's y dimension).
MAX_SPLITS = 65535

_DTYPE_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def workspace_bytes(op: str, *, m: int = 0, n: int = 0, d: int = 0, elem: int = 4,
                    nnz: int = 0, **_: int) -> int:
    """The scratch buffers the kernels are launched with (see ``micro_fast.backends``)."""
    if op == "topk_similarity":
        rows = max(1, min(m, DEFAULT_BLOCK))
        chunk = max(1, min(max(DEFAULT_CHUNK, SCRATCH_ELEMS // rows), n, MAX_CHUNK))
        return _topk_scratch_elems(m, n, rows, chunk) * elem + rows * 4
    if op == "contrastive_loss":  # the backward's weights and split-K partials, the gradients
        return _contrastive_scratch(n, d, None)[2] * elem + 2 * n * d * elem
    if op == "spmm":  # the partials of split rows and the work partition's five int64 arrays
        segments = m + nnz // PARTITION_SEGMENT
        return 2 * nnz // PARTITION_SEGMENT * d * elem \
            + 8 * (3 * segments + 2 * (nnz // (PARTITION_SEGMENT + 1)) + 3)
    return 0


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


def device_identity(device: torch.device) -> dict[str, str]:
    """What a measurement on ``device`` is valid for: the GPU's name and compute capability,
    the driver, and a digest of this build of ``micro_fast._cuda`` (``"none"`` without one)."""
    props = torch.cuda.get_device_properties(device)
    build = "none"
    path = getattr(_cuda, "__file__", None)
    if path:
        try:
            with open(path, "rb") as fh:
                build = hashlib.sha1(fh.read()).hexdigest()[:12]
        except OSError:
            build = "unknown"
    driver = _version(_cuda.driver_version()) if _cuda is not None else "?"
    return {"gpu": props.name, "cc": f"{props.major}.{props.minor}", "driver": driver,
            "build": build}


def supports(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    if not is_available()[0]:
        return True  # the device kind is right; is_available() says why it cannot run here
    # The build holds SASS for its architectures and PTX for the newest one: older GPUs
    # (compute capability below the oldest built architecture) have no kernel image.
    major, minor = torch.cuda.get_device_capability(device)
    return major * 100 + minor * 10 >= min(_cuda.cuda_archs)


def _launcher(dtype: torch.dtype, op: str = "topk_similarity"):
    if _cuda is None:
        raise UnavailableError(f"the cuda backend is not available: {is_available()[1]}")
    suffix = _DTYPE_SUFFIX.get(dtype)
    if suffix is None:
        raise InputError(f"cuda backend supports float32 and float64, got {dtype}")
    launch = getattr(_cuda, f"{op}_{suffix}", None)
    if launch is None:
        raise UnavailableError(f"this build of micro_fast._cuda has no {op} kernel: rebuild it")
    return launch


def _topk_scratch_elems(m: int, n: int, rows: int, chunk: int) -> int:
    """Score buffers of the top-k search: two (the second 32-element aligned) when it takes
    more than one (row block, key chunk) step, so that the product of one step overlaps the
    selection of the previous one on a second stream; one otherwise."""
    tile = rows * chunk
    return tile if m <= rows and n <= chunk else -(-tile // 32) * 32 + tile


def topk_similarity(queries: torch.Tensor, keys: torch.Tensor | None, k: int,
                    exclude: tuple[torch.Tensor, torch.Tensor] | None,
                    block_size: int | None, *,
                    chunk_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """See ``micro_fast.backends``. ``block_size``: query rows per block; ``chunk_size``: keys
    per chunk (default: wide enough to fill ``SCRATCH_ELEMS``, at least ``DEFAULT_CHUNK``)."""
    launch = _launcher(queries.dtype)
    device = queries.device
    if device.type != "cuda":
        raise InputError(f"cuda backend needs CUDA tensors, got {device}")
    if keys is not None and (keys.device != device or keys.dtype != queries.dtype):
        raise InputError("queries and keys must share device and dtype")
    queries = queries.detach().contiguous()
    keys = None if keys is None else keys.detach().contiguous()
    m, d = queries.shape
    n = m if keys is None else keys.shape[0]
    k = int(k)
    if not 1 <= k <= n:
        raise InputError(f"k must be in [1, {n}], got {k}")
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
        scratch = torch.empty(_topk_scratch_elems(m, n, rows, chunk), dtype=queries.dtype,
                              device=device)
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


def _check_pair(n1: torch.Tensor, n2: torch.Tensor) -> torch.device:
    device = n1.device
    if device.type != "cuda":
        raise InputError(f"cuda backend needs CUDA tensors, got {device}")
    if n2.device != device or n2.dtype != n1.dtype:
        raise InputError("n1 and n2 must share device and dtype")
    if n1.dim() != 2 or n1.shape != n2.shape:
        raise InputError(f"n1 and n2 must both be [N, d], got {tuple(n1.shape)} and "
                         f"{tuple(n2.shape)}")
    return device


def _check_rows(name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if t.shape != (like.shape[0],) or t.dtype != like.dtype or t.device != like.device:
        raise InputError(f"{name} must be a [{like.shape[0]}] {like.dtype} tensor on "
                         f"{like.device}, got {tuple(t.shape)} {t.dtype} on {t.device}")
    return t.detach().contiguous()


def contrastive_forward(n1: torch.Tensor, n2: torch.Tensor, tau: float, symmetric: bool,
                        block_size: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Row log-sum-exps of the all-pairs contrastive loss, fused (no N x N matrix).

    ``lse1[i] = log(sum_{j != i} exp(s11[i, j] / tau) + sum_j exp(s12[i, j] / tau))`` and, when
    ``symmetric``, ``lse2[j] = log(sum_{i != j} exp(s22[i, j] / tau) + sum_i exp(s12[i, j] /
    tau))``, with ``s11 = n1 n1^T``, ``s12 = n1 n2^T``, ``s22 = n2 n2^T``; in the input dtype
    (sums in fp32 for float32, with running maxima, so any ``tau > 0`` is safe).
    ``block_size``: rows per launch (default: all rows, up to ``CONTRASTIVE_FORWARD_BLOCK``).
    """
    launch = _launcher(n1.dtype, "contrastive_forward")
    device = _check_pair(n1, n2)
    tau = float(tau)
    n1 = n1.detach().contiguous()
    n2 = n2.detach().contiguous()
    n, d = n1.shape
    lse1 = torch.empty(n, dtype=n1.dtype, device=device)
    lse2 = torch.empty(n, dtype=n1.dtype, device=device) if symmetric else None
    if n == 0:
        return lse1, lse2
    if d == 0:  # all scores are 0; one zero feature gives the same, with real pointers
        n1 = n1.new_zeros((n, 1))
        n2 = n2.new_zeros((n, 1))
        d = 1

    rows = max(1, min(int(block_size or CONTRASTIVE_FORWARD_BLOCK), n))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    # Enough (row tile, split) blocks to fill the GPU; never more splits than the 2 N / 64
    # column tiles there can be (the launcher clamps to the real count).
    splits = -(-sms * CONTRASTIVE_ROWS_PER_SM // rows)
    splits = max(1, min(splits, -(-2 * n // 64), MAX_SPLITS))

    with torch.cuda.device(device):
        scratch = torch.empty(2 * rows * splits, dtype=n1.dtype, device=device)
        launch(n1=n1.data_ptr(), n2=n2.data_ptr(), n=n, d=d, tau=tau, block_rows=rows,
               splits=splits, scratch=scratch.data_ptr(), scratch_elems=scratch.numel(),
               lse1=lse1.data_ptr(), lse2=0 if lse2 is None else lse2.data_ptr(),
               device=device.index, stream=torch.cuda.current_stream(device).cuda_stream)
    return lse1, lse2


def contrastive_backward(n1: torch.Tensor, n2: torch.Tensor, tau: float, lse1: torch.Tensor,
                         lse2: torch.Tensor | None, g1: torch.Tensor, g2: torch.Tensor | None,
                         block_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients w.r.t. ``n1`` and ``n2`` of ``sum_i g1[i] lse1[i]`` (``+ sum_j g2[j] lse2[j]``
    when ``lse2``/``g2`` are given), with ``lse1``/``lse2`` from ``contrastive_forward``.

    ``block_size``: rows per block (default ``CONTRASTIVE_BLOCK``); the column chunk fills
    ``SCRATCH_ELEMS`` (at least ``CONTRASTIVE_CHUNK``); the scratch also holds the split-K
    partials (``_contrastive_scratch``). Deterministic (no atomics, fixed summation order).
    """
    launch = _launcher(n1.dtype, "contrastive_backward")
    device = _check_pair(n1, n2)
    tau = float(tau)
    if (lse2 is None) != (g2 is None):
        raise InputError("lse2 and g2 must be given together (symmetric) or both be None")
    n1 = n1.detach().contiguous()
    n2 = n2.detach().contiguous()
    lse1 = _check_rows("lse1", lse1, n1)
    g1 = _check_rows("g1", g1, n1)
    if lse2 is not None:
        lse2 = _check_rows("lse2", lse2, n1)
        g2 = _check_rows("g2", g2, n1)
    n, d = n1.shape
    if n == 0 or d == 0:
        return torch.zeros_like(n1), torch.zeros_like(n2)
    grad1 = torch.empty((n, d), dtype=n1.dtype, device=device)
    grad2 = torch.empty((n, d), dtype=n1.dtype, device=device)

    rows, chunk, scratch_elems = _contrastive_scratch(n, d, block_size)

    with torch.cuda.device(device):
        scratch = torch.empty(scratch_elems, dtype=n1.dtype, device=device)
        launch(n1=n1.data_ptr(), n2=n2.data_ptr(), n=n, d=d, tau=tau,
               lse1=lse1.data_ptr(), lse2=0 if lse2 is None else lse2.data_ptr(),
               g1=g1.data_ptr(), g2=0 if g2 is None else g2.data_ptr(),
               block_rows=rows, chunk=chunk, scratch=scratch.data_ptr(),
               scratch_elems=scratch.numel(), grad1=grad1.data_ptr(), grad2=grad2.data_ptr(),
               device=device.index, stream=torch.cuda.current_stream(device).cuda_stream)
    return grad1, grad2


def _contrastive_scratch(n: int, d: int, block_size: int | None) -> tuple[int, int, int]:
    """(rows, chunk, scratch elements) of ``contrastive_backward``: the [rows, chunk] weights
    (rounded up to 4 elements, so the partials start 16-byte aligned), then the split-K
    partials: a product with out_rows output rows reducing over k splits at most
    min(CONTRASTIVE_MAX_SPLITS, k // CONTRASTIVE_MIN_SLICE) ways (2 at least, else never), each
    slice an [out_rows, d] partial; the products are [rows] x k = chunk and [chunk] x k = rows.
    At most ``CONTRASTIVE_PARTIAL_ELEMS`` (the launcher then splits less)."""
    rows = max(1, min(int(block_size or CONTRASTIVE_BLOCK), n))
    chunk = max(CONTRASTIVE_CHUNK, SCRATCH_ELEMS // rows)
    chunk = max(1, min(chunk, n, MAX_CHUNK))

    def split_rows(out_rows: int, k: int) -> int:
        splits = min(CONTRASTIVE_MAX_SPLITS, k // CONTRASTIVE_MIN_SLICE)
        return out_rows * splits if splits >= 2 else 0

    partial = min(max(split_rows(rows, chunk), split_rows(chunk, rows)) * d,
                  CONTRASTIVE_PARTIAL_ELEMS)
    return rows, chunk, -(-rows * chunk // 4) * 4 + partial


def _entry(name: str):
    """The compiled function ``name`` of ``micro_fast._cuda`` (a clear error when missing)."""
    if _cuda is None:
        raise UnavailableError(f"the cuda backend is not available: {is_available()[1]}")
    fn = getattr(_cuda, name, None)
    if fn is None:
        raise UnavailableError(f"this build of micro_fast._cuda has no {name} kernel: rebuild it")
    return fn


def _csr_structure(indptr: torch.Tensor, indices: torch.Tensor,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``indptr``/``indices`` as contiguous int64 CUDA tensors on ``device`` (the structure
    itself is trusted: ``CSRGraph`` validates it)."""
    if device.type != "cuda":
        raise InputError(f"cuda backend needs CUDA tensors, got {device}")
    for name, t in (("indptr", indptr), ("indices", indices)):
        if t.device != device or t.dtype != torch.int64 or t.dim() != 1:
            raise InputError(f"{name} must be a 1-D int64 tensor on {device}, got "
                             f"{tuple(t.shape)} {t.dtype} on {t.device}")
    if indptr.numel() < 1:
        raise InputError("indptr must have at least one element")
    return indptr.contiguous(), indices.contiguous()


def _stream(device: torch.device) -> int:
    return torch.cuda.current_stream(device).cuda_stream


#: Most entries of one segment of the spmm / sddmm work partition. A row of up to this many
#: entries stays whole (and is summed exactly as one CSR-order sum); a longer one is cut into
#: ceil(len / S) segments that run in parallel. 256: on a power-law graph only the outliers split
#: (Clothing: mean ~10 entries, longest 5,914 -> 24 segments), a segment's 4-wide gather loop is
#: at most 64 steps, and the partials of split rows add at most 2 / 256 of the gathers' traffic.
PARTITION_SEGMENT = 256


class CsrPartition(NamedTuple):
    """The work partition of a CSR structure that the cuda ``spmm`` / ``sddmm`` walk (int64
    tensors on the structure's device; see ``csr_partition``)."""

    seg_row: torch.Tensor      # [segments]: row of segment k (m for a padding segment)
    seg_bounds: torch.Tensor   # [segments + 1]: segment k is entries [bounds[k], bounds[k + 1])
    seg_slot: torch.Tensor     # [segments]: partials slot of a split row's segment, else -1
    split_row: torch.Tensor    # [splits]: the rows with several segments, ascending (then m)
    split_slots: torch.Tensor  # [splits + 1]: split row s owns slots [slots[s], slots[s + 1])
    segment: int               # S, the most entries of a segment
    partials: int              # slots the partials scratch needs (an upper bound)

    @property
    def segments(self) -> int:
        return self.seg_row.numel()

    @property
    def splits(self) -> int:
        return self.split_row.numel()


def csr_partition(indptr: torch.Tensor, indices: torch.Tensor | int, *,
                  segment: int = PARTITION_SEGMENT) -> CsrPartition:
    """The rows of the CSR structure ``(indptr [m + 1], indices [nnz])`` (``indices`` or just
    ``nnz``) split by nonzeros, computed with torch on ``indptr``'s device (any device) without a
    host synchronization: every size is a static bound of m and nnz.

    Row ``r`` (``len = indptr[r + 1] - indptr[r]``) gets ``n_r = max(1, ceil(len / S))``
    consecutive segments: segment ``j`` of the row is entries ``indptr[r] + j S`` up to
    ``min(indptr[r] + (j + 1) S, indptr[r + 1])``, so an empty row has one empty segment and
    the segments tile ``[0, nnz)`` in CSR order. They are numbered row by row, ``seg_ptr =
    [0, cumsum(n)]``; since ``sum_r n_r <= m + nnz // S``, that many are allocated, the ones
    past the last row being padding (row m, empty range at nnz). Rows with ``n_r > 1`` (at most
    ``nnz // (S + 1)``) are the split rows: their segments write partials, to consecutive slots
    in segment order (at most ``2 nnz // S`` in all), which the combine step sums into y.
    """
    nnz = indices if isinstance(indices, int) else indices.numel()
    s = int(segment)
    if s < 1:
        raise InputError(f"segment must be positive, got {segment}")
    device = indptr.device
    m = indptr.numel() - 1
    i64 = {"dtype": torch.int64, "device": device}
    indptr = indptr.to(torch.int64)
    # segments per row; one more (never split) entry for the padding row m
    nseg = torch.ones(m + 1, **i64)
    nseg[:m] = torch.clamp((indptr[1:] - indptr[:-1] + (s - 1)) // s, min=1)
    split = nseg > 1
    seg_ptr = torch.zeros(m + 1, **i64)  # row r owns segments [seg_ptr[r], seg_ptr[r + 1])
    torch.cumsum(nseg[:m], 0, out=seg_ptr[1:])
    slot_ptr = torch.zeros(m + 1, **i64)  # split row r owns slots [slot_ptr[r], slot_ptr[r + 1])
    torch.cumsum(torch.where(split[:m], nseg[:m], 0), 0, out=slot_ptr[1:])
    split_ptr = torch.zeros(m + 1, **i64)  # split rows before row r
    torch.cumsum(split[:m].to(torch.int64), 0, out=split_ptr[1:])

    segments = m + nnz // s
    k = torch.arange(segments + 1, **i64)
    # the row r with seg_ptr[r] <= k < seg_ptr[r + 1] (seg_ptr strictly increases), m past them
    row = torch.searchsorted(seg_ptr, k, right=True) - 1
    j = k - seg_ptr[row]  # segment k is the j-th of its row
    seg_bounds = torch.clamp(indptr[row] + j * s, max=nnz)
    seg_row, j = row[:-1], j[:-1]
    seg_slot = torch.where(split[seg_row], slot_ptr[seg_row] + j, -1)

    splits = nnz // (s + 1)
    q = torch.arange(splits + 1, **i64)
    # the q-th split row: split_ptr steps from q to q + 1 at it; m past the last
    srow = torch.searchsorted(split_ptr, q, right=True) - 1
    return CsrPartition(seg_row, seg_bounds, seg_slot, srow[:-1], slot_ptr[srow], s,
                        2 * nnz // s)


def _partition_for(partition: CsrPartition | None, indptr: torch.Tensor,
                   nnz: int) -> CsrPartition:
    """``partition`` (a cached ``csr_partition`` of this structure) after a check of its sizes,
    or one computed now."""
    if partition is None:
        return csr_partition(indptr, nnz)
    m, s = indptr.numel() - 1, partition.segment
    if partition.segments != m + nnz // s or partition.splits != nnz // (s + 1) \
            or partition.seg_row.device != indptr.device:
        raise InputError(f"partition does not belong to a CSR structure of {m} rows and {nnz} "
                         f"entries on {indptr.device}")
    return partition


def spmm(indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor,
         x: torch.Tensor, partition: CsrPartition | None = None) -> torch.Tensor:
    """``y [M, d] = A x`` (see ``micro_fast.backends``), over the rows split by nonzeros
    (``partition``: the structure's cached ``csr_partition``, else computed now). Each output
    element sums its row's entries in CSR order, a row longer than ``PARTITION_SEGMENT`` as
    the sum, in order, of its segments' CSR-order sums (fp32 for float32): deterministic."""
    launch = _launcher(x.dtype, "spmm")
    device = x.device
    indptr, indices = _csr_structure(indptr, indices, device)
    if x.dim() != 2:
        raise InputError(f"x must be 2-D [N, d], got shape {tuple(x.shape)}")
    nnz = indices.numel()
    if values.shape != (nnz,) or values.dtype != x.dtype or values.device != device:
        raise InputError(f"values must be a [{nnz}] {x.dtype} tensor on {device}, got "
                         f"{tuple(values.shape)} {values.dtype} on {values.device}")
    x = x.detach().contiguous()
    values = values.detach().contiguous()
    m, d = indptr.numel() - 1, x.shape[1]
    if m == 0 or d == 0 or nnz == 0:
        return torch.zeros((m, d), dtype=x.dtype, device=device)
    with torch.cuda.device(device):
        part = _partition_for(partition, indptr, nnz)
        y = torch.empty((m, d), dtype=x.dtype, device=device)
        # the partials of split rows (an upper bound of their count: no host read-back)
        partials = torch.empty((part.partials, d) if part.splits else (0,), dtype=x.dtype,
                               device=device)
        launch(seg_row=part.seg_row.data_ptr(), seg_bounds=part.seg_bounds.data_ptr(),
               seg_slot=part.seg_slot.data_ptr(), segments=part.segments,
               split_row=part.split_row.data_ptr(), split_slots=part.split_slots.data_ptr(),
               splits=part.splits, indices=indices.data_ptr(), values=values.data_ptr(), m=m,
               nnz=nnz, x=x.data_ptr(), d=d, partials=partials.data_ptr(),
               partial_rows=partials.shape[0] if part.splits else 0, y=y.data_ptr(),
               device=device.index, stream=_stream(device))
    return y


def sddmm(indptr: torch.Tensor, indices: torch.Tensor, a: torch.Tensor,
          b: torch.Tensor, partition: CsrPartition | None = None) -> torch.Tensor:
    """``out[e] = <a[row(e)], b[indices[e]]>`` [nnz] (see ``micro_fast.backends``), over the
    rows split by nonzeros (``partition`` as in ``spmm``); deterministic."""
    launch = _launcher(a.dtype, "sddmm")
    device = a.device
    indptr, indices = _csr_structure(indptr, indices, device)
    if b.device != device or b.dtype != a.dtype:
        raise InputError("a and b must share device and dtype")
    m = indptr.numel() - 1
    if a.dim() != 2 or b.dim() != 2 or a.shape[0] != m or a.shape[1] != b.shape[1]:
        raise InputError(f"a must be [{m}, d] and b [N, d], got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    a = a.detach().contiguous()
    b = b.detach().contiguous()
    nnz, d = indices.numel(), a.shape[1]
    if nnz == 0 or d == 0:
        return torch.zeros(nnz, dtype=a.dtype, device=device)
    with torch.cuda.device(device):
        part = _partition_for(partition, indptr, nnz)
        out = torch.empty(nnz, dtype=a.dtype, device=device)
        launch(seg_row=part.seg_row.data_ptr(), seg_bounds=part.seg_bounds.data_ptr(),
               segments=part.segments, indices=indices.data_ptr(), m=m, nnz=nnz,
               a=a.data_ptr(), b=b.data_ptr(), d=d, out=out.data_ptr(), device=device.index,
               stream=_stream(device))
    return out
