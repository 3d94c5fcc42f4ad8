"""numba_cuda backend: its kernels against the dense float64 statements of ``oracles.py`` in the
CUDA simulator, a PTX compile check,
its place among the backends, and its torch functions on a real GPU when there is one.

``NUMBA_ENABLE_CUDASIM`` must be set before numba is imported, and the rest of the suite uses
numba's CPU JIT in the same process: ``test_kernels_in_the_cuda_simulator`` therefore runs this
file again in a subprocess with the variable set, where only the ``test_sim_*`` tests run (and
everything else here is skipped). The simulator runs every CUDA thread as a Python thread, so
those problems and thread blocks are tiny.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from bounds import assert_close
from helpers import run_pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oracles import assert_topk, spmm_exact

import micro_fast as mf
from micro_fast import CSRGraph, backends, dispatch
from micro_fast.backends import numba_cuda as nc
from micro_fast.backends import torch_ref

SIM = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
sim_only = pytest.mark.skipif(not SIM, reason="runs in the simulator subprocess of "
                              "test_kernels_in_the_cuda_simulator")
not_in_sim = pytest.mark.skipif(SIM, reason="not a simulator test")
DTYPES = [np.float32, np.float64]
SIM_SETTINGS = settings(max_examples=15, deadline=None)


# --- the driver: this file again, in the simulator --------------------------------------------


@not_in_sim
def test_kernels_in_the_cuda_simulator():
    proc = run_pytest(["-k", "test_sim_", str(Path(__file__).resolve())],
                      {"NUMBA_ENABLE_CUDASIM": "1"})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) >= 10 and "failed" not in out, out


# --- registration: no GPU needed -------------------------------------------------------------


@not_in_sim
def test_registered_after_the_compiled_gpu_backends():
    # a fallback for CUDA tensors: after the cuda and triton kernels, before the CPU backends
    order = backends.BACKENDS
    assert order.index("cuda") < order.index("triton") < order.index("numba_cuda")
    assert order.index("numba_cuda") < order.index("cpp")
    assert nc.supports(torch.device("cuda")) and nc.supports(torch.device("cuda", 1))
    assert not nc.supports(torch.device("cpu"))
    ok, why = nc.is_available()
    assert isinstance(ok, bool) and isinstance(why, str) and (ok or why)
    if not torch.cuda.is_available():
        assert not ok and backends.status()["numba_cuda"] == why
    with pytest.raises(ValueError, match="numba_cuda"):
        mf.topk_similarity(torch.randn(4, 2), None, 2, backend="no_such_backend")


@not_in_sim
@pytest.mark.parametrize("op", ["topk_similarity", "spmm", "sddmm", "bipartite_graph",
                                "contrastive_forward"])
def test_cpu_tensors_never_get_it(monkeypatch, op):
    # even where it is available (a GPU, the simulator), auto skips it for CPU tensors
    monkeypatch.setattr(nc, "is_available", lambda: (True, ""))
    assert "numba_cuda" in backends.available()
    assert "numba_cuda" not in backends.available("cpu")
    assert all(dispatch.module(b).supports(torch.device("cpu")) for b in backends.available("cpu"))
    assert backends.get("auto", torch.device("cpu"), op=op).supports(torch.device("cpu"))
    with pytest.raises(ValueError, match="does not run on cpu tensors"):
        backends.get("numba_cuda", torch.device("cpu"), op="spmm")
    x = torch.randn(6, 3)
    v, i = mf.topk_similarity(x, None, 2)
    rv, ri = mf.topk_similarity(x, None, 2, backend="torch_ref")
    assert torch.equal(i, ri) and torch.allclose(v, rv)


@not_in_sim
def test_kernels_compile_to_ptx(monkeypatch):
    """Types every kernel with numba's real CUDA frontend and compiles it with libNVVM (the
    simulator runs them as Python, which checks neither); no GPU needed, only libNVVM."""
    try:
        from numba import cuda
        from numba import types as nt
        from numba.cuda import dispatcher
        from numba.cuda.cudadrv import nvvm
    except ImportError as exc:
        pytest.skip(f"numba.cuda did not import: {exc}")
    if not nvvm.is_available():
        pytest.skip("no libNVVM (CUDA toolkit) here")
    # device functions are compiled for the current device's compute capability: stand one in,
    # on fresh (uncached) kernels so that nothing compiled here is launched later
    monkeypatch.setattr(dispatcher, "get_current_device",
                        lambda: type("Device", (), {"compute_capability": (8, 0)})())
    for dtype in DTYPES:
        kernels = nc._kernels.__wrapped__(np.dtype(dtype))
        e, i = nt.float32 if dtype == np.float32 else nt.float64, nt.int64
        m2, i1, i2 = e[:, ::1], i[::1], i[:, ::1]
        signatures = {
            "topk": (m2, m2, i, i1, i1, nt.boolean, i, m2, i2, m2, i2, e, e),
            "spmm": (i1, i1, e[::1], m2, m2, e),
            "sddmm": (i1, i1, m2, m2, e[::1], e),
        }
        for name, sig in signatures.items():
            ptx, _ = cuda.compile_ptx(getattr(kernels, name).py_func, sig, cc=(8, 0))
            assert ".entry" in ptx, name


# --- simulator: the launchers on NumPy arrays against torch_ref --------------------------------


def _csr(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.zeros(mask.shape[0] + 1, dtype=np.int64)
    np.cumsum(mask.sum(axis=1), out=indptr[1:])
    return indptr, np.nonzero(mask)[1].astype(np.int64)


def _t(*arrays):
    return [None if a is None else torch.from_numpy(a) for a in arrays]


def _exact(indptr, indices, values, m, n, x, upstream=None):
    """``oracles.spmm_exact`` for a CSR matrix given as arrays."""
    dense = torch.zeros(m, n, dtype=torch.from_numpy(values).dtype)
    rows = np.repeat(np.arange(m), np.diff(indptr))
    dense[torch.from_numpy(rows), torch.from_numpy(indices)] = torch.from_numpy(values)
    return spmm_exact(dense, torch.from_numpy(x),
                      None if upstream is None else torch.from_numpy(upstream))


@st.composite
def csr_problems(draw, max_rows=7):
    m = draw(st.integers(1, max_rows))
    n = draw(st.integers(1, max_rows))
    d = draw(st.sampled_from([1, 2, 3, 5]))
    dtype = draw(st.sampled_from(DTYPES))
    kind = draw(st.sampled_from(["uniform", "empty_rows", "dense_row", "empty"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    mask = rng.random((m, n)) < draw(st.sampled_from([0.2, 0.6]))
    if kind == "empty_rows":
        mask[rng.random(m) < 0.5] = False
    elif kind == "dense_row":
        mask[:] = False
        mask[0] = True
        mask[:, 0] = True
    elif kind == "empty":
        mask[:] = False
    indptr, indices = _csr(mask)
    values = rng.standard_normal(indices.size).astype(dtype)
    return indptr, indices, values, rng, m, n, d, dtype


@sim_only
@SIM_SETTINGS
@given(p=csr_problems(), threads=st.sampled_from([(1, 1), (2, 1), (1, 2), (2, 3), (4, 2)]))
def test_sim_spmm(p, threads):
    indptr, indices, values, rng, m, n, d, dtype = p
    x = rng.standard_normal((n, d)).astype(dtype)
    y = np.full((m, d), np.nan, dtype=dtype)  # every element must be written
    nc.launch_spmm(indptr, indices, values, x, y, threads=threads)
    assert_close(torch.from_numpy(y), _exact(indptr, indices, values, m, n, x)[0], what="y")


@sim_only
@SIM_SETTINGS
@given(p=csr_problems(), threads=st.sampled_from([(1, 1), (2, 1), (1, 3), (2, 2), (4, 1)]))
def test_sim_sddmm(p, threads):
    indptr, indices, _, rng, m, n, d, dtype = p
    a = rng.standard_normal((m, d)).astype(dtype)
    b = rng.standard_normal((n, d)).astype(dtype)
    out = np.full(indices.size, np.nan, dtype=dtype)
    nc.launch_sddmm(indptr, indices, a, b, out, threads=threads)
    values = np.ones(indices.size, dtype=dtype)  # the structure; sddmm ignores the values
    assert_close(torch.from_numpy(out), _exact(indptr, indices, values, m, n, b, a)[2],
                 what="sddmm")


@st.composite
def topk_problems(draw):
    symmetric = draw(st.booleans())
    m = draw(st.integers(1, 6))
    n = m if symmetric else draw(st.integers(1, 9))
    d = draw(st.integers(1, 4))
    k = draw(st.integers(1, n))
    dtype = draw(st.sampled_from(DTYPES))
    kind = draw(st.sampled_from(["integer", "constant", "duplicates", "normal"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def make(rows):
        if kind == "integer":
            return rng.integers(-2, 3, (rows, d)).astype(dtype)
        if kind == "constant":
            return np.full((rows, d), 0.5, dtype=dtype)
        x = rng.standard_normal((rows, d)).astype(dtype)
        if kind == "duplicates":
            x = x[rng.integers(0, max(1, rows // 2), rows)]
        return x

    queries = make(m)
    keys = None if symmetric else make(n)
    exclude = draw(st.sampled_from([None, 0.0, 0.3, 0.8, "full_rows"]))
    mask = None
    if exclude is not None:
        mask = rng.random((m, n)) < (0.5 if exclude == "full_rows" else exclude)
        if exclude == "full_rows":
            mask[rng.random(m) < 0.5] = True
    # integer and constant features give exact sums: the exact ranking, ties to the smaller index
    return queries, keys, k, mask


def _check_topk(queries, keys, k, mask, **launch):
    m = queries.shape[0]
    dtype = queries.dtype
    exclude = None if mask is None else _csr(mask)
    values = np.full((m, k), np.nan, dtype=dtype)
    indices = np.full((m, k), -7, dtype=np.int64)
    nc.launch_topk(queries, keys, k, values, indices, exclude=exclude, **launch)
    q, y = _t(queries, keys)
    assert_topk(torch.from_numpy(values), torch.from_numpy(indices), q, y, k,
                exclude=None if mask is None else torch.from_numpy(mask))
    return values, indices


@sim_only
@SIM_SETTINGS
@given(p=topk_problems(), threads=st.sampled_from([1, 2, 3, 5]),
       block_rows=st.sampled_from([None, 1, 2]))
def test_sim_topk(p, threads, block_rows):
    # few threads: keys arrive in several chunks, so the merges and the threshold both run
    _check_topk(*p, threads=threads, block_rows=block_rows)


@sim_only
@pytest.mark.parametrize("dtype", DTYPES)
def test_sim_topk_ties_go_to_the_smaller_index(dtype):
    x = np.ones((3, 2), dtype=dtype)
    v, i = _check_topk(x, np.ones((7, 2), dtype=dtype), 7, None, threads=3)
    assert np.array_equal(i, np.tile(np.arange(7), (3, 1))) and np.all(v == 2)
    # k < n: a tie with the list's worst entry and a larger index must not enter it
    v, i = _check_topk(x, np.ones((7, 2), dtype=dtype), 2, None, threads=2)
    assert np.array_equal(i, np.tile([0, 1], (3, 1)))


@sim_only
@pytest.mark.parametrize("dtype", DTYPES)
def test_sim_topk_exclude_whole_rows_and_padding(dtype):
    rng = np.random.default_rng(1)
    q = rng.integers(-3, 4, (4, 1)).astype(dtype)  # d = 1
    keys = rng.integers(-3, 4, (5, 1)).astype(dtype)
    mask = np.zeros((4, 5), dtype=bool)
    mask[0] = True  # nothing left: all padding
    mask[2, 1:] = True  # one key left
    v, i = _check_topk(q, keys, 5, mask, threads=2)
    assert np.all(i[0] == -1) and np.all(np.isneginf(v[0]))
    assert i[2, 0] == 0 and np.all(i[2, 1:] == -1) and np.all(np.isneginf(v[2, 1:]))
    assert np.all(i[[1, 3]] >= 0)  # k == n: full rows
    # an exclude list without entries is no exclusion
    empty = np.zeros((4, 5), dtype=bool)
    _check_topk(q, keys, 5, empty, threads=4)


@sim_only
def test_sim_default_launch_configurations():
    rng = np.random.default_rng(2)
    x = rng.integers(-2, 3, (2, 3)).astype(np.float64)
    _check_topk(x, None, 2, None)  # 32 threads for a short row
    indptr, indices = _csr(np.array([[True, False], [True, True]]))
    values = np.array([1.0, 2.0, -1.0])
    y = np.empty((2, 3))
    nc.launch_spmm(indptr, indices, values, x, y)
    np.testing.assert_allclose(y, [x[0], 2 * x[0] - x[1]])
    out = np.empty(3)
    nc.launch_sddmm(indptr, indices, x, x, out)
    np.testing.assert_allclose(out, [x[0] @ x[0], x[1] @ x[0], x[1] @ x[1]])


@sim_only
def test_sim_empty_problems_launch_nothing(monkeypatch):
    def no_launch(dtype):
        raise AssertionError("an empty problem launched a kernel")

    monkeypatch.setattr(nc, "_kernels", no_launch)
    z = np.zeros((0, 3))
    v, i = nc.launch_topk(z, np.ones((2, 3)), 1, np.zeros((0, 1)), np.zeros((0, 1), np.int64))
    assert v.shape == (0, 1) and i.shape == (0, 1)
    indptr0 = np.zeros(1, np.int64)
    assert nc.launch_spmm(indptr0, np.zeros(0, np.int64), np.zeros(0), z, z).shape == (0, 3)
    indptr, indices = _csr(np.eye(2, dtype=bool))
    y = nc.launch_spmm(indptr, indices, np.ones(2), np.zeros((2, 0)), np.zeros((2, 0)))
    assert y.shape == (2, 0)
    out = nc.launch_sddmm(np.zeros(3, np.int64), np.zeros(0, np.int64), np.ones((2, 2)),
                          np.ones((2, 2)), np.zeros(0))
    assert out.shape == (0,)


@sim_only
def test_sim_bad_launch_configurations():
    indptr, indices = _csr(np.eye(2, dtype=bool))
    x = np.ones((2, 2))
    with pytest.raises(ValueError, match="power of two"):
        nc.launch_sddmm(indptr, indices, x, x, np.zeros(2), threads=(3, 1))
    with pytest.raises(ValueError, match="threads"):
        nc.launch_spmm(indptr, indices, np.ones(2), x, np.zeros((2, 2)), threads=(64, 8))
    with pytest.raises(ValueError, match="threads"):
        nc.launch_topk(x, None, 1, np.zeros((2, 1)), np.zeros((2, 1), np.int64), threads=512)


@sim_only
def test_sim_torch_functions_glue(monkeypatch):
    """The torch functions' own logic (buffers, row blocks, the exclude and d = 0 cases) on CPU
    tensors seen as NumPy arrays: the simulator has no CUDA tensors."""
    from contextlib import nullcontext

    monkeypatch.setattr(nc, "_array", lambda t: t.detach().contiguous().numpy())
    monkeypatch.setattr(nc, "_on", lambda device: nullcontext(0))
    monkeypatch.setattr(nc, "TOPK_THREADS", 4)
    monkeypatch.setattr(nc, "CSR_THREADS", 4)
    gen = torch.Generator().manual_seed(3)
    q = torch.randint(-2, 3, (5, 3), generator=gen).double()
    keys = torch.randint(-2, 3, (7, 3), generator=gen).double()
    ex = CSRGraph.from_dense((torch.rand(5, 7, generator=gen) < 0.4).double())
    for exclude in (None, (ex.indptr, ex.indices)):
        for block in (None, 2):
            v, i = nc.topk_similarity(q, keys, 4, exclude, block)
            rv, ri = torch_ref.topk_similarity(q, keys, 4, exclude, block)
            assert torch.equal(i, ri) and torch.equal(v, rv)
    v, i = nc.topk_similarity(q[:, :0], None, 3, None, None)  # d = 0: all scores 0
    assert torch.equal(i, torch.arange(3).expand(5, 3)) and bool((v == 0).all())
    empty = CSRGraph.from_dense(torch.zeros(5, 7, dtype=torch.float64))
    v, i = nc.topk_similarity(q, keys, 2, (empty.indptr, empty.indices), None)
    assert torch.equal(i, torch_ref.topk_similarity(q, keys, 2, None, None)[1])
    a = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    exact = spmm_exact(ex.to_dense(), keys, a)
    assert_close(nc.spmm(ex.indptr, ex.indices, ex.values, keys), exact[0], what="spmm")
    assert_close(nc.sddmm(ex.indptr, ex.indices, a, keys), exact[2], what="sddmm")
    assert torch.equal(nc.spmm(empty.indptr, empty.indices, empty.values, keys),
                       torch.zeros(5, 3, dtype=torch.float64))
    assert nc.sddmm(empty.indptr, empty.indices, a, keys).shape == (0,)


@sim_only
def test_sim_is_available_in_the_simulator():
    assert nc.is_available() == (True, "")
    assert backends.status()["numba_cuda"] == "available"
    assert "numba_cuda" in backends.available() and "numba_cuda" not in backends.available("cpu")
    # available, but CPU tensors still go to a CPU backend
    assert backends.get("auto", torch.device("cpu"), op="spmm") is not nc


# --- a real GPU: the torch functions through the ops ------------------------------------------

gpu = pytest.mark.skipif(SIM or not torch.cuda.is_available() or not nc.is_available()[0],
                         reason="needs a CUDA GPU usable by numba.cuda")


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("symmetric", [True, False])
def test_gpu_topk_similarity(dtype, symmetric):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(300, 24, generator=gen, dtype=dtype)
    keys = None if symmetric else torch.randint(-2, 3, (517, 24), generator=gen).to(dtype)
    n = 300 if symmetric else 517
    mask = torch.rand(300, n, generator=gen) < 0.3
    mask[5] = True  # a fully excluded row
    ex = CSRGraph.from_dense(mask.double())
    for k in (1, 10, n):
        for block in (None, 7):
            qc, kc = q.cuda(), None if keys is None else keys.cuda()
            side = torch.cuda.Stream()
            with torch.cuda.stream(side):  # runs on torch's current stream, whichever it is
                v, i = mf.topk_similarity(qc, kc, k, exclude=ex.to("cuda"), block_size=block,
                                          backend="numba_cuda")
            side.synchronize()
            assert v.device.type == "cuda"
            assert_topk(v.cpu(), i.cpu(), q, keys, k, exclude=mask)
            assert bool((i[5] == -1).all())


@gpu
def test_gpu_topk_ties_and_grad():
    x = torch.ones(50, 4, device="cuda")
    v, i = mf.topk_similarity(x, None, 5, backend="numba_cuda")
    assert torch.equal(i.cpu(), torch.arange(5).expand(50, 5))
    q = torch.randn(20, 3, dtype=torch.float64, device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a: mf.topk_similarity(a, None, 4, backend="numba_cuda")[0], (q,))


@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", [1, 17, 64, 300])
def test_gpu_spmm_forward_and_backward(dtype, d):
    gen = torch.Generator().manual_seed(1)
    dense = torch.randn(70, 50, generator=gen, dtype=dtype)
    dense = dense * (torch.rand(70, 50, generator=gen) < 0.1)
    dense[3] = 0  # an empty row
    g = CSRGraph.from_dense(dense)
    x = torch.randn(50, d, generator=gen, dtype=dtype)
    w = torch.randn(70, d, generator=gen, dtype=dtype)
    gd = g.to("cuda")
    v = gd.values.clone().requires_grad_()
    xr = x.cuda().clone().requires_grad_()
    y = mf.spmm(gd.with_values(v), xr, backend="numba_cuda")
    (y * w.cuda()).sum().backward()
    for got, exact, what in zip((y, xr.grad, v.grad), spmm_exact(dense, x, w),
                                ("y", "x gradient", "values gradient"), strict=True):
        assert_close(got.detach().cpu(), exact, what=what)


@gpu
def test_gpu_empty_inputs():
    g = CSRGraph.from_dense(torch.zeros(4, 3)).to("cuda")
    x = torch.randn(3, 5, device="cuda")
    assert torch.equal(nc.spmm(g.indptr, g.indices, g.values, x).cpu(), torch.zeros(4, 5))
    assert nc.sddmm(g.indptr, g.indices, torch.randn(4, 5, device="cuda"), x).numel() == 0


@gpu
def test_gpu_auto_prefers_cuda_then_numba_cuda():
    expected = "cuda" if "cuda" in backends.available() else "numba_cuda"
    assert dispatch.plan("spmm", "auto", "cuda").backend == expected
