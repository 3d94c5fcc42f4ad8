"""The cuda backend's work partition of a CSR structure (rows split by nonzeros), on the CPU:
``csr_partition`` against its definition, a torch emulation of the kernels' index arithmetic
against the exact products, and its cache with the CSRGraph."""

from __future__ import annotations

import pytest
import torch

from micro_fast.backends import cuda as cuda_backend
from micro_fast.backends.cuda import PARTITION_SEGMENT, csr_partition
from micro_fast.errors import InputError
from micro_fast.graph import CSRGraph
from micro_fast.ops.spmm import _partitions


def _indptr(lengths: list[int]) -> torch.Tensor:
    out = torch.zeros(len(lengths) + 1, dtype=torch.int64)
    torch.cumsum(torch.tensor(lengths, dtype=torch.int64), 0, out=out[1:])
    return out


def _expected(indptr: list[int], s: int) -> list[tuple[int, int, int]]:
    """(row, start, end) of every real segment, by the definition."""
    segs = []
    for r in range(len(indptr) - 1):
        lo, hi = indptr[r], indptr[r + 1]
        if lo == hi:
            segs.append((r, lo, hi))
        for start in range(lo, hi, s):
            segs.append((r, start, min(start + s, hi)))
    return segs


def check_partition(lengths: list[int], s: int) -> None:
    indptr = _indptr(lengths)
    m, nnz = len(lengths), int(indptr[-1])
    p = csr_partition(indptr, nnz, segment=s)
    ip = indptr.tolist()
    expected = _expected(ip, s)
    t = len(expected)

    # static sizes: a bound of m and nnz alone
    assert p.segments == m + nnz // s >= t
    assert p.seg_bounds.shape == (p.segments + 1,) and p.seg_slot.shape == (p.segments,)
    assert p.splits == nnz // (s + 1) and p.split_slots.shape == (p.splits + 1,)
    assert p.partials == 2 * nnz // s
    for a in (p.seg_row, p.seg_bounds, p.seg_slot, p.split_row, p.split_slots):
        assert a.dtype == torch.int64

    rows, bounds, slots = p.seg_row.tolist(), p.seg_bounds.tolist(), p.seg_slot.tolist()
    got = [(rows[k], bounds[k], bounds[k + 1]) for k in range(t)]
    assert got == expected
    # padding: row m, empty, at nnz
    assert all(r == m for r in rows[t:])
    assert all(b == nnz for b in bounds[t:])

    # every entry exactly once, in CSR order, no segment longer than s, each in its row
    covered = [e for _, lo, hi in got for e in range(lo, hi)]
    assert covered == list(range(nnz))
    assert all(0 <= hi - lo <= s and ip[r] <= lo <= hi <= ip[r + 1] for r, lo, hi in got)

    # partial slots: -1 for a row's only segment, else consecutive per split row
    nseg = [max(1, -(-n // s)) for n in lengths]
    split_rows = [r for r in range(m) if nseg[r] > 1]
    assert len(split_rows) <= p.splits
    assert p.split_row.tolist() == split_rows + [m] * (p.splits - len(split_rows))
    ss = p.split_slots.tolist()
    used = []
    for q, r in enumerate(split_rows):
        mine = [slots[k] for k in range(t) if rows[k] == r]
        assert mine == list(range(ss[q], ss[q + 1])) and len(mine) == nseg[r] >= 2
        used += mine
    assert used == list(range(len(used))) and len(used) <= p.partials
    assert all(slots[k] == -1 for k in range(t) if nseg[rows[k]] == 1)
    assert all(x == len(used) for x in ss[len(split_rows):])


@pytest.mark.parametrize("lengths,s", [
    ([], 4),
    ([0], 4),
    ([0, 0, 0], 4),
    ([3, 1, 2], 4),
    ([4, 5, 8, 9, 0, 12, 1], 4),
    ([0, 0, 17, 0, 0], 4),
    ([40], 4),
    ([1, 1, 1, 1], 1),
    ([5, 0, 3], 1),
    ([0, 5914, 3, 0, 1, 10, 600], PARTITION_SEGMENT),
    ([256, 257, 512, 513, 255, 0], 256),
])
def test_partition_matches_definition(lengths, s):
    check_partition(lengths, s)


@pytest.mark.parametrize("seed", range(4))
def test_partition_power_law(seed):
    gen = torch.Generator().manual_seed(seed)
    lengths = (torch.rand(300, generator=gen) ** -1.5).long().clamp(max=900) - 1
    lengths[torch.randint(0, 300, (20,), generator=gen)] = 0
    check_partition(lengths.tolist(), 16)


def test_partition_offsets_beyond_int32():
    """Entry offsets past 2^31 and 2^32 (a huge row, built from indptr alone)."""
    big = 3_000_000_000 + 2**32
    s = 1 << 24
    indptr = torch.tensor([0, 5, big, big, big + 7], dtype=torch.int64)
    nnz = big + 7
    p = csr_partition(indptr, nnz, segment=s)
    n_big = -(-(big - 5) // s)
    t = 1 + n_big + 1 + 1
    assert p.segments == 4 + nnz // s
    rows, bounds = p.seg_row.tolist(), p.seg_bounds.tolist()
    assert rows[:t] == [0] + [1] * n_big + [2, 3] and all(r == 4 for r in rows[t:])
    assert bounds[1] == 5 and bounds[2] == 5 + s and bounds[n_big] == 5 + (n_big - 1) * s
    assert bounds[1 + n_big] == big == bounds[2 + n_big] and bounds[t] == nnz
    assert all(0 < bounds[k + 1] - bounds[k] <= s for k in range(1, 1 + n_big))
    assert p.split_row.tolist()[:2] == [1, 4]
    slots = p.seg_slot.tolist()
    assert slots[0] == -1 and slots[1:1 + n_big] == list(range(n_big))
    assert slots[1 + n_big:t] == [-1, -1]


def test_partition_rejects_a_bad_segment_and_a_foreign_partition():
    indptr = _indptr([3, 0, 700])
    with pytest.raises(InputError):
        csr_partition(indptr, 703, segment=0)
    other = csr_partition(_indptr([3, 0, 900]), 903)  # other sizes (equal ones pass)
    with pytest.raises(InputError):
        cuda_backend._partition_for(other, indptr, 703)
    assert cuda_backend._partition_for(None, indptr, 703).segments == 3 + 703 // 256


# --- the kernels' index arithmetic, emulated ------------------------------------------------

def emulate_spmm(p, indices, values, x, m):
    """spmm_kernel then spmm_combine_kernel, as written in csrc/cuda/spmm.cu (fp64)."""
    d = x.shape[1]
    y = torch.full((m, d), float("nan"), dtype=torch.float64)
    partials = torch.full((max(p.partials, 1), d), float("nan"), dtype=torch.float64)
    for k in range(p.segments):
        row = int(p.seg_row[k])
        if row >= m:
            continue
        lo, hi = int(p.seg_bounds[k]), int(p.seg_bounds[k + 1])
        acc = (values[lo:hi, None] * x[indices[lo:hi]]).sum(0)
        slot = int(p.seg_slot[k])
        if slot < 0:
            y[row] = acc
        else:
            assert slot < p.partials
            partials[slot] = acc
    for q in range(p.splits):
        row = int(p.split_row[q])
        if row >= m:
            continue
        p0, p1 = int(p.split_slots[q]), int(p.split_slots[q + 1])
        assert p1 - p0 >= 2
        y[row] = partials[p0:p1].sum(0)
    return y


def emulate_sddmm(p, indices, a, b, m):
    out = torch.full((indices.numel(),), float("nan"), dtype=torch.float64)
    for k in range(p.segments):
        row = int(p.seg_row[k])
        if row >= m:
            continue
        lo, hi = int(p.seg_bounds[k]), int(p.seg_bounds[k + 1])
        out[lo:hi] = (a[row] * b[indices[lo:hi]]).sum(1)
    return out


@pytest.mark.parametrize("seed", range(3))
def test_emulated_kernels_match_exact_products(seed):
    gen = torch.Generator().manual_seed(seed)
    m, n, d, s = 40, 30, 3, 8
    lengths = (torch.rand(m, generator=gen) ** -1.2).long().clamp(max=n) - 1
    lengths[0], lengths[5] = n, 0
    dense = torch.zeros(m, n, dtype=torch.float64)
    for r, ln in enumerate(lengths.tolist()):
        cols = torch.randperm(n, generator=gen)[:ln]
        dense[r, cols] = torch.randn(ln, generator=gen, dtype=torch.float64)
    dense[0] = torch.randn(n, generator=gen, dtype=torch.float64)  # one full (split) row
    g = CSRGraph.from_dense(dense)
    p = csr_partition(g.indptr, g.indices, segment=s)
    assert p.split_row[0] == 0
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(emulate_spmm(p, g.indices, g.values, x, m), dense @ x)
    a = torch.randn(m, d, generator=gen, dtype=torch.float64)
    exact = (a @ x.T)[g.row_indices(), g.indices]
    torch.testing.assert_close(emulate_sddmm(p, g.indices, a, x, m), exact)


# --- the cache ---------------------------------------------------------------------------

def _graph() -> CSRGraph:
    rows = torch.tensor([0, 0, 0, 1, 2, 2])
    cols = torch.tensor([0, 1, 3, 2, 0, 3])
    return CSRGraph.from_coo(rows, cols, torch.arange(1.0, 7.0), (3, 4))


def test_partition_is_cached_with_the_structure():
    g = _graph()
    calls = []

    def build(indptr, indices):
        calls.append((indptr, indices))
        return csr_partition(indptr, indices, segment=2)

    p = g.derived("k", build)
    assert g.derived("k", build) is p
    assert g.with_values(g.values * 2).derived("k", build) is p  # shares the structure
    assert g.to(torch.float64).derived("k", build) is p
    pt = g.derived("k", build, transposed=True)
    assert pt is not p and pt.segments == 4 + 6 // 2
    assert g.T.derived("k", build) is pt  # the transpose's own structure
    assert g.derived("k", build, transposed=True) is pt
    assert len(calls) == 2
    assert calls[1][0] is g.transposed_structure()[0]
    sym = CSRGraph(g.indptr, g.indices, g.values, (3, 4), symmetric=True)
    assert sym.derived("k", build, transposed=True) is sym.derived("k", build)


def test_op_passes_cached_partitions_to_cuda_only():
    g = _graph()
    assert _partitions(g, "torch_ref", True) is None
    part, t_part = _partitions(g, "cuda", True)
    assert part.segment == PARTITION_SEGMENT and part.segments == 3
    again, t_again = _partitions(g, "cuda", False)
    assert again is part and t_again is None
    assert _partitions(g, "cuda", True)[1] is t_part
    assert t_part.seg_row.tolist() == [0, 1, 2, 3]  # the transpose: 4 rows


def test_workspace_counts_the_partials():
    w = cuda_backend.workspace_bytes("spmm", m=100, n=50, d=8, nnz=1000, elem=4)
    assert w >= 2 * 1000 // PARTITION_SEGMENT * 8 * 4 + 8 * 3 * (100 + 1000 // PARTITION_SEGMENT)
