"""What users run once ``micro_fast.tuning`` has measured this machine: every candidate of every
measured choice (tile sizes, the fusion strategy, the backends of spmm and project_rows),
forced through the cache as a calibration would leave it, reaches the kernel and gives the exact
results (``oracles.py``); and after a real calibration every op run with ``backend="auto"``
does too. The rest of the suite runs the built-in defaults (``MICRO_FAST_TUNE=0``)."""

from __future__ import annotations

import json

import pytest
import torch
from bounds import assert_close
from oracles import (
    assert_topk,
    contrastive_exact,
    fusion_exact,
    project_rows_exact,
    spmm_exact,
)

import micro_fast as mf
from micro_fast import backends, tuning

pytestmark = pytest.mark.skipif("cpp" not in backends.available(),
                                reason="tuning chooses between compiled kernels")

DTYPES = [torch.float32, torch.float64]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MICRO_FAST_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("MICRO_FAST_TUNE", "1")
    # measured tile sizes apply to problems at least this large: small enough for a test
    for op in tuning.CALIBRATION_ROWS:
        monkeypatch.setitem(tuning.CALIBRATION_ROWS, op, 64)
    monkeypatch.setattr(tuning, "_busy_reason", lambda load, stats: None)
    tuning.forget()
    yield tmp_path
    tuning.forget()


def _force(cache_dir, name: str, value) -> None:
    """The cache as a calibration that chose ``value`` for ``name`` would leave it."""
    made = {d.name: d.default for d in tuning.DECISIONS}
    made[name] = value
    key = tuning.machine_key()
    entry = {"key": key, "choices": made, "seconds": {}, "date": "forced"}
    (cache_dir / "tuning.json").write_text(json.dumps({tuning._key_str(key): entry}))
    tuning.forget()


def _spy(monkeypatch, module, name: str, position: int, keyword: str) -> list:
    """Records argument ``position`` (or ``keyword``) of every call of ``module.name``."""
    seen: list = []
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        seen.append(args[position] if len(args) > position else kwargs.get(keyword))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return seen


def _candidates(name: str) -> list:
    return next(d for d in tuning.DECISIONS if d.name == name).candidates()


def _inputs(n: int, d: int, m: int, dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=gen, dtype=dtype) for _ in range(m)]


def _check_contrastive(dtype, n=800):
    z1, z2 = _inputs(n, 16, 2, dtype, 1)
    a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
    loss = mf.contrastive_loss(a, b)
    got = (loss.detach(), *torch.autograd.grad(loss, (a, b)))
    for g, e in zip(got, contrastive_exact(z1, z2, 0.5), strict=True):
        assert_close(g, e)


def _check_fusion(dtype, n=400):
    views = _inputs(n, 16, 2, dtype, 2)
    w = torch.softmax(_inputs(n, 2, 1, dtype, 3)[0], dim=1)
    xs = [t.clone().requires_grad_() for t in (*views, w)]
    loss = mf.contrastive_fusion_loss(xs[:2], xs[2])
    got = (loss.detach(), *torch.autograd.grad(loss, xs))
    exact_loss, exact_views, exact_w = fusion_exact(views, w, 0.5)
    for g, e in zip(got, (exact_loss, *exact_views, exact_w), strict=True):
        assert_close(g, e)


def _check_topk(dtype, n=1100):
    (x,) = _inputs(n, 8, 1, dtype, 4)
    v, i = mf.topk_similarity(x, None, 10, normalize=True)
    assert_topk(v, i, x, None, 10, normalize=True)
    g = mf.knn_graph(x, 10)
    assert g.nnz == n * 10


def _check_spmm(dtype):
    gen = torch.Generator().manual_seed(5)
    dense = torch.randn(300, 200, generator=gen, dtype=dtype) \
        * (torch.rand(300, 200, generator=gen) < 0.05)
    x = torch.randn(200, 33, generator=gen, dtype=dtype)
    up = torch.randn(300, 33, generator=gen, dtype=dtype)
    g = mf.CSRGraph.from_dense(dense)
    v, xs = g.values.clone().requires_grad_(), x.clone().requires_grad_()
    y = mf.spmm(g.with_values(v), xs)
    (y * up).sum().backward()
    for got, exact in zip((y.detach(), xs.grad, v.grad), spmm_exact(dense, x, up), strict=True):
        assert_close(got, exact)


def _check_project_rows(dtype):
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(120, 70, generator=gen, dtype=dtype)
    w = torch.randn(20, 70, generator=gen, dtype=dtype)
    b = torch.randn(20, generator=gen, dtype=dtype)
    rows = torch.nonzero(torch.rand(120, generator=gen) < 0.4).flatten()
    up = torch.randn(rows.numel(), 20, generator=gen, dtype=dtype)
    xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
    z = mf.project_rows(xs, ws, bs, rows)
    grads = torch.autograd.grad((z * up).sum(), (xs, ws, bs))
    for got, exact in zip((z.detach(), *grads), project_rows_exact(x, w, b, rows, up),
                          strict=True):
        assert_close(got, exact)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block", _candidates("contrastive.block_size"))
def test_contrastive_block_sizes(cache, monkeypatch, dtype, block):
    from micro_fast.backends import cpp

    _force(cache, "contrastive.block_size", block)
    seen = _spy(monkeypatch, cpp, "contrastive_forward", 4, "block_size")
    _check_contrastive(dtype)
    assert seen == [block]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block", _candidates("contrastive_fusion.block_size"))
def test_fusion_block_sizes(cache, monkeypatch, dtype, block):
    from micro_fast.backends import cpp

    _force(cache, "contrastive_fusion.block_size", block)
    seen = _spy(monkeypatch, cpp, "contrastive_fusion_forward", 3, "block_size")
    _check_fusion(dtype)
    assert seen == [block]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("strategy", _candidates("contrastive_fusion.strategy"))
def test_fusion_strategies(cache, monkeypatch, dtype, strategy):
    from micro_fast.backends import cpp

    _force(cache, "contrastive_fusion.strategy", strategy)
    fused = _spy(monkeypatch, cpp, "contrastive_fusion_forward", 3, "block_size")
    separate = _spy(monkeypatch, cpp, "contrastive_forward", 4, "block_size")
    _check_fusion(dtype)
    assert (len(fused), len(separate)) == ((1, 0) if strategy == "fused" else (0, 2))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block", _candidates("topk_similarity.block_size"))
def test_topk_block_sizes(cache, monkeypatch, dtype, block):
    from micro_fast.backends import cpp

    _force(cache, "topk_similarity.block_size", block)
    seen = _spy(monkeypatch, cpp, "topk_similarity", 4, "block_size")
    _check_topk(dtype)
    assert seen == [block, block]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", _candidates("spmm.backend"))
def test_spmm_backends(cache, monkeypatch, dtype, backend):
    _force(cache, "spmm.backend", backend)
    module = backends.get(backend, torch.device("cpu"), op="spmm")
    seen = _spy(monkeypatch, module, "spmm", 0, "indptr")
    _check_spmm(dtype)
    assert len(seen) == 2  # the product and its transposed product


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", _candidates("project_rows.backend"))
def test_project_rows_backends(cache, monkeypatch, dtype, backend):
    _force(cache, "project_rows.backend", backend)
    module = backends.get(backend, torch.device("cpu"), op="project_rows_forward")
    seen = _spy(monkeypatch, module, "project_rows_forward", 0, "x")
    _check_project_rows(dtype)
    assert len(seen) == 1


def test_after_a_real_calibration_every_op_is_exact(cache, monkeypatch):
    monkeypatch.setattr(tuning, "REPEATS", 1)
    entry = tuning.calibrate(write=True)
    tuning.forget()
    assert tuning.choices() == entry["choices"]
    for dtype in DTYPES:
        _check_contrastive(dtype)
        _check_fusion(dtype)
        _check_topk(dtype)
        _check_spmm(dtype)
        _check_project_rows(dtype)
