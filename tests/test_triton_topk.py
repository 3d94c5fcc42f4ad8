"""The certified Triton top-k search (micro_fast/backends/triton/topk.py), run in Triton's
interpreter on CPU tensors: exact results (tests/oracles.py ``assert_topk``) through a screen
whose low-precision error is emulated, near ties, exclusions, padding and the overflow
fallback."""

import os

os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

triton = pytest.importorskip("triton")
tl = triton.language

from oracles import assert_topk  # noqa: E402

from micro_fast.backends import torch_ref  # noqa: E402
from micro_fast.backends.triton import topk as T  # noqa: E402

if type(T.micro_fast_topk_threshold_kernel).__name__ != "InterpretedFunction":
    # triton was imported earlier in this process without the interpreter (its own library
    # functions are then compiled-only): the kernels cannot run on CPU tensors here
    pytest.skip("triton was imported before TRITON_INTERPRET=1 was set; run this file with "
                "TRITON_INTERPRET=1 in the environment", allow_module_level=True)


def _csr(mask: torch.Tensor):
    """(indptr, indices) int64 of a dense boolean [m, n] mask."""
    indptr = torch.zeros(mask.shape[0] + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(mask.sum(1), 0)
    return indptr, torch.nonzero(mask)[:, 1].contiguous()


def _check(q, keys, k, mask=None, **options):
    exclude = None if mask is None else _csr(mask)
    block = options.pop("block", None)
    values, indices, stats = T.topk_similarity_stats(q, keys, k, exclude, block, **options)
    assert stats["path"] == "triton", stats
    assert_topk(values, indices, q, keys, k, exclude=mask)
    return values, indices, stats


# ---------------------------------------------------------------------------------------------
# the pieces of the certificate


@triton.jit
def _round_kernel(x_ptr, out_ptr, n, SCREEN: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    tl.store(out_ptr + offs, T._round_input(x, SCREEN), mask=offs < n)


def test_emulated_rounding_is_the_formats():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(200, generator=g) * 10.0 ** torch.randint(-30, 30, (200,),
                                                                           generator=g),
                   torch.tensor([0.0, -0.0, 1.0 + 2**-8, 1.0 + 3 * 2**-8, -(1.0 + 2**-9),
                                 1e-40, -3e-42, 3.0e38])])
    out = torch.empty_like(x)
    _round_kernel[(1,)](x, out, x.numel(), SCREEN=2, BLOCK=256)
    assert torch.equal(out, x.to(torch.bfloat16).float())  # round to nearest even
    _round_kernel[(1,)](x, out, x.numel(), SCREEN=1, BLOCK=256)
    truncated = (x.view(torch.int32) & ~0x1FFF).view(torch.float32)
    assert torch.equal(out, truncated)  # TF32 by truncation, the worst case
    rel = ((out - x).abs() / x.abs())[x.abs() > 1e-37]
    assert float(rel.max()) < T.SCREEN_UNIT["tf32"]


@pytest.mark.parametrize("screen", ["bf16", "tf32", "ieee"])
def test_certificate_bounds_the_screen(screen):
    """|screen - exact| <= c_rel |q| |k|, and nearly reaches it for inputs that all round the
    same way."""
    d = 37
    c = T.certificate_factor(screen, d)
    u = T.SCREEN_UNIT[screen]
    g = torch.Generator().manual_seed(1)
    q = torch.randn(50, d, generator=g)
    k = torch.randn(60, d, generator=g)

    def rounded(x):
        if screen == "bf16":
            return x.to(torch.bfloat16).float()
        if screen == "tf32":
            return (x.view(torch.int32) & ~0x1FFF).view(torch.float32)
        return x

    for a, b in ((q, k), (torch.full((1, d), 1 + 0.999 * u), torch.full((1, d), 1 + 0.999 * u))):
        screened = (rounded(a) @ rounded(b).T).double()
        exact = a.double() @ b.double().T
        scale = torch.linalg.vector_norm(a.double(), dim=1)[:, None] * \
            torch.linalg.vector_norm(b.double(), dim=1)[None, :]
        assert bool(((screened - exact).abs() <= c * scale).all())
    if u:
        assert float((exact - screened).abs().max()) > 0.4 * c * float(scale.max())


# ---------------------------------------------------------------------------------------------
# exact results


@st.composite
def _cases(draw):
    sym = draw(st.booleans())
    small_k = draw(st.booleans()) or draw(st.booleans())  # large k runs a long sorting network
    n = draw(st.integers(1, 90 if small_k or not sym else 24))
    k = draw(st.integers(1, min(n, 16) if small_k else n))
    m = n if sym else draw(st.integers(1, 90 if small_k else 6))
    return dict(m=m, n=n, d=draw(st.integers(1, 40)), k=k, sym=sym, ints=draw(st.booleans()),
                excl=draw(st.sampled_from([0.0, 0.05, 0.5])),
                screen=draw(st.sampled_from(["bf16", "tf32", "ieee"])),
                splits=draw(st.sampled_from([1, 2, 3])), block=draw(st.sampled_from([None, 7])),
                seed=draw(st.integers(0, 2**16)))


@settings(max_examples=8)
@given(_cases())
def test_matches_the_exact_search(case):
    g = torch.Generator().manual_seed(case["seed"])
    m, n, d = case["m"], case["n"], case["d"]

    def make(rows):
        if case["ints"]:  # exact arithmetic: ties are real and go to the smaller index
            x = torch.randint(-3, 4, (rows, d), generator=g).float()
            x[1::3] = x[0::3][: x[1::3].shape[0]]  # duplicate rows
            return x
        return torch.randn(rows, d, generator=g) * 2.0 ** float(torch.randint(-6, 6, (1,),
                                                                             generator=g))

    q = make(m)
    keys = None if case["sym"] else make(n)
    mask = torch.rand(m, n, generator=g) < case["excl"] if case["excl"] else None
    if mask is not None and case["sym"]:
        mask |= torch.eye(m, dtype=torch.bool)
    _check(q, keys, case["k"], mask, screen=case["screen"], splits=case["splits"],
           block_n=16, block=case["block"])


def test_ties_duplicates_and_zero_rows():
    g = torch.Generator().manual_seed(3)
    q = torch.randint(-2, 3, (33, 5), generator=g).float()
    q[5] = 0  # a zero row: every score 0, the smallest indices win
    keys = torch.randint(-2, 3, (70, 5), generator=g).float()
    keys[40:] = keys[:30]  # duplicates: equal scores, the smaller index first
    keys[10:14] = 0
    _, indices, _ = _check(q, keys, 9, screen="bf16", splits=2, block_n=16)
    assert torch.equal(indices[5], torch.arange(9))
    # the self search with the diagonal excluded, against torch_ref exactly
    diag = torch.eye(33, dtype=torch.bool)
    values, indices, _ = _check(q, None, 6, diag, screen="tf32")
    ref_v, ref_i = torch_ref.topk_similarity(q, None, 6, _csr(diag), None)
    assert torch.equal(indices, ref_i) and torch.equal(values, ref_v)


def test_exclusions_padding_and_empty_rows():
    g = torch.Generator().manual_seed(4)
    q = torch.randn(20, 9, generator=g)
    keys = torch.randn(45, 9, generator=g)
    mask = torch.rand(20, 45, generator=g) < 0.3
    mask[0] = True                   # fully excluded: all padding
    mask[1] = True
    mask[1, [3, 44]] = False         # two admissible keys for k = 5
    mask[2, :40] = True              # long exclusion lists: a deep binary search
    values, indices, stats = _check(q, keys, 5, mask, screen="bf16", splits=3, block_n=16)
    assert torch.equal(indices[0], torch.full((5,), -1))
    assert bool(torch.isneginf(values[0]).all())
    assert torch.equal(indices[1], torch.tensor([3, 44, -1, -1, -1])) or \
        torch.equal(indices[1], torch.tensor([44, 3, -1, -1, -1]))
    assert stats["overflow_rows"] == 0


def test_large_k_and_one_column():
    g = torch.Generator().manual_seed(5)
    q = torch.randn(3, 1, generator=g)
    keys = torch.randn(40, 1, generator=g)
    _check(q, keys, 40, screen="bf16")       # k = n: every key, sorted
    _check(q[:1], keys[:1], 1, screen="tf32")  # 1 x 1


# ---------------------------------------------------------------------------------------------
# near ties: the screen's error matters, the certificate keeps the result exact


def _near_ties(seed: int = 6):
    """Keys in a tight cluster (scores 1e-3 apart, far below bf16's error) and keys far apart;
    half of the queries look at the cluster."""
    g = torch.Generator().manual_seed(seed)
    d = 16
    v = torch.randn(d, generator=g)
    cluster = v + 1e-3 * torch.randn(24, d, generator=g)
    spread = 3 * torch.randn(24, d, generator=g)
    keys = torch.cat([cluster, spread])
    q = torch.cat([v + 0.01 * torch.randn(8, d, generator=g),
                   spread[:8] + 0.01 * torch.randn(8, d, generator=g)])
    return q, keys


@pytest.mark.parametrize("screen", ["bf16", "tf32"])
def test_low_precision_screen_creates_near_ties(screen):
    q, keys = _near_ties()
    values, indices, stats = _check(q, keys, 4, screen=screen, block_n=16)
    assert stats["max_candidates"] > 4 + 8  # the cluster rows keep a wide window
    # the same search without the certificate (bound 0) keeps only the screen's top 4: wrong
    v0, i0, _ = T.topk_similarity_stats(q, keys, 4, None, None, screen=screen, block_n=16,
                                        bound_scale=0.0)
    with pytest.raises(AssertionError):
        assert_topk(v0, i0, q, keys, 4)


def test_overflow_rows_are_recomputed_exactly():
    q, keys = _near_ties()
    mask = torch.zeros(16, 48, dtype=torch.bool)
    mask[0, :3] = True
    values, indices, stats = _check(q, keys, 4, mask, screen="bf16", capacity=6, splits=2,
                                    block_n=16)
    assert 0 < stats["overflow_rows"] < 16, stats  # the cluster rows, not the others
    # the contract's entry point leaves the statistics in last_stats, and the launch shape
    # (column splits, atomics) does not change the result
    v2, i2 = T.topk_similarity(q, keys, 4, _csr(mask), None, screen="bf16", capacity=6,
                               block_n=32)
    assert T.last_stats["overflow_rows"] == stats["overflow_rows"]
    assert torch.equal(i2, indices) and torch.equal(v2, values)


def test_float64_runs_the_exact_search():
    g = torch.Generator().manual_seed(7)
    q = torch.randn(10, 4, generator=g, dtype=torch.float64)
    values, indices, stats = T.topk_similarity_stats(q, None, 3, None, None)
    assert "float64" in stats["path"]
    ref_v, ref_i = torch_ref.topk_similarity(q, None, 3, None, None)
    assert torch.equal(values, ref_v) and torch.equal(indices, ref_i)
    assert T.workspace_bytes("topk_similarity", m=100, n=1000, d=64, k=10) > 0


def test_worst_case_rounding_needs_the_whole_window():
    """bf16 rounding errors of +-96% of the bound on two keys (every coordinate just past a
    rounding midpoint, in the direction that hurts): the screen ranks the worse key first by
    ~1.9 bounds, so only the full window (upper >= k-th largest lower) keeps the better one."""
    d, u, eps = 16, 2.0**-8, 2.0**-16
    sign = torch.tensor([1.0, -1.0] * (d // 2))
    q = torch.cat([1 + u + sign * eps, torch.ones(1)])[None]
    worse = torch.cat([sign * (1 + u) + eps, torch.zeros(1)])        # rounds up: screen +2u
    better = torch.cat([-(sign * (1 + u) + eps), torch.full((1,), 2.0**-9)])  # screen -2u
    keys = torch.stack([worse, better, -4 * torch.ones(d + 1)])
    _, indices, stats = _check(q, keys, 1, screen="bf16")
    assert int(indices[0, 0]) == 1 and stats["max_candidates"] == 2
    for scale in (0.5, 0.9):  # a window of one bound, or 90% of two, misses the better key
        _, i0, _ = T.topk_similarity_stats(q, keys, 1, None, None, screen="bf16",
                                           bound_scale=scale)
        assert int(i0[0, 0]) == 0


def test_threshold_pass_is_the_exact_kth_lower_bound():
    """With integer inputs the screen is exact, so the candidate counts must equal those of
    the certificate computed densely in torch: pass 1's running top-k merge over column tiles
    and splits finds exactly the k-th largest lower bound (a lower one would only cost
    candidates, which the exactness tests cannot see)."""
    g = torch.Generator().manual_seed(8)
    q = torch.randint(-4, 5, (21, 6), generator=g).float()
    keys = torch.randint(-4, 5, (77, 6), generator=g).float()
    mask = torch.rand(21, 77, generator=g) < 0.2
    k = 5
    _, _, stats = _check(q, keys, k, mask, screen="bf16", splits=3, block_n=16)
    nq, nk = T._norms(q), T._norms(keys)
    b = stats["c_rel"] * nq[:, None] * nk[None, :] + torch.where(
        (nq[:, None] > 0) & (nk[None, :] > 0), T._C_ABS * (1.0 + nq[:, None] + nk[None, :]), 0.0)
    s = q @ keys.T
    lower = (s - b).masked_fill(mask, float("-inf"))
    kth = lower.topk(k, dim=1).values[:, -1:]
    counts = ((s + b >= kth) & ~mask).sum(1)
    assert stats["max_candidates"] == int(counts.max())
    assert stats["mean_candidates"] == pytest.approx(float(counts.float().mean()))
