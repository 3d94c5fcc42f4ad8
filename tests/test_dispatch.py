"""micro_fast.dispatch: the registry matches the backend modules, plans follow the offers, the
measured choices and explicit arguments, a backend registered in one place is planned,
calibrated and chosen, and numba_cuda never gets a large top-k search."""

from __future__ import annotations

import json
import types

import pytest
import torch

import micro_fast as mf
from micro_fast import CSRGraph, backends, dispatch, tuning, tuning_problems
from micro_fast.backends import cpp, cuda, numba_cuda, torch_ref


def _importable(name: str):
    try:
        return dispatch.module(name)
    except ImportError:
        return None


@pytest.mark.parametrize("name", dispatch.names())
def test_offers_are_the_kernels_each_module_has(name):
    mod = _importable(name)
    if mod is None:
        pytest.skip(f"{name} does not import here")
    offered = {o.op for o in dispatch.entry(name).offers}
    for op, kernels in dispatch.KERNELS.items():
        has = all(hasattr(mod, k) for k in kernels)
        assert has == (op in offered), (name, op, has)


def test_auto_plans_the_first_offer_that_runs_here_and_explicit_arguments_win(monkeypatch):
    monkeypatch.setenv("MICRO_FAST_TUNE", "0")
    tuning.forget()
    first = dispatch.candidates("topk_similarity", "cpu")[0]
    assert dispatch.plan("topk_similarity", "auto", "cpu").backend == first
    assert dispatch.plan("topk_similarity", "torch_ref", "cpu").backend == "torch_ref"
    # a measured tile size applies from the size it was measured at
    if first == "cpp":
        big = dispatch.plan("topk_similarity", "auto", "cpu", rows=10**6)
        assert big.block_size == 256
        assert dispatch.plan("topk_similarity", "auto", "cpu", rows=10).block_size is None
    # named backends without the op: an error, or the op's fallback
    if "numba" in backends.available():
        with pytest.raises(ValueError, match="has no sample_edges kernel"):
            dispatch.plan("sample_edges", "numba", "cpu")
        assert dispatch.plan("project_rows", "numba", "cpu").backend == "torch_ref"
    with pytest.raises(ValueError, match="backend must be one of"):
        dispatch.plan("spmm", "no_such_backend", "cpu")
    with pytest.raises(ValueError, match="op must be one of"):
        dispatch.plan("fft", "auto", "cpu")


@pytest.mark.skipif("cpp" not in backends.available(), reason="cpp not built")
def test_fusion_strategy(monkeypatch):
    monkeypatch.setenv("MICRO_FAST_TUNE", "0")
    assert dispatch.plan("contrastive_fusion", "auto", "cpu").strategy == "fused"
    assert dispatch.plan("contrastive_fusion", "auto", "cpu",
                         strategy="separate").strategy == "separate"
    # torch_ref has no fused-view kernel: its losses run separately
    assert dispatch.plan("contrastive_fusion", "torch_ref", "cpu",
                         strategy="fused").strategy == "separate"


def _fake_module(calls: list[str]) -> types.ModuleType:
    mod = types.ModuleType("fake_backend")
    mod.is_available = lambda: (True, "")
    mod.supports = lambda device: device.type == "cpu"

    def spmm(indptr, indices, values, x):
        calls.append("spmm")
        return torch_ref.spmm(indptr, indices, values, x)

    def sddmm(indptr, indices, a, b):
        calls.append("sddmm")
        return torch_ref.sddmm(indptr, indices, a, b)

    mod.spmm, mod.sddmm = spmm, sddmm
    return mod


@pytest.mark.skipif("cpp" not in backends.available(), reason="calibration needs cpp")
def test_a_registered_backend_is_planned_calibrated_and_chosen(monkeypatch, tmp_path):
    calls: list[str] = []
    monkeypatch.setenv("MICRO_FAST_TUNE", "1")
    monkeypatch.setenv("MICRO_FAST_CACHE_DIR", str(tmp_path))
    measured: list[dict] = []
    real_time = tuning.time_candidates

    def time_candidates(runs, stats=None):
        times = real_time(runs, stats)
        measured.append(dict(times))
        return {c: (0.0 if c == "fake" else t) for c, t in times.items()}

    monkeypatch.setattr(tuning, "time_candidates", time_candidates)
    monkeypatch.setattr(tuning, "_busy_reason", lambda load, stats: None)
    dispatch.register(dispatch.Backend("fake", _fake_module(calls),
                                       (dispatch.Offer("spmm"),)))
    try:
        tuning.forget()
        assert "fake" in backends.BACKENDS and "fake" in backends.available("cpu")
        assert dispatch.measured_candidates("spmm")[-1] == "fake"
        assert dispatch.plan("spmm", "auto", "cpu").backend == "fake"
        assert any("fake" in m for m in measured)  # it was timed against the others
        assert tuning.choice("spmm.backend") == "fake"
        calls.clear()
        g = CSRGraph.from_dense(torch.tensor([[0.0, 2.0], [1.0, 0.0]]))
        x = torch.randn(2, 3, requires_grad=True)
        y = mf.spmm(g, x)
        assert calls == ["spmm"]
        assert torch.allclose(y, g.to_dense() @ x)
        assert any("fake" in line for line in dispatch.describe("cpu"))
    finally:
        dispatch.unregister("fake")
        tuning.forget()
    assert "fake" not in backends.BACKENDS


def test_registering_an_unknown_op_is_an_error():
    with pytest.raises(ValueError, match="unknown ops"):
        dispatch.register(dispatch.Backend("bad", "x", (dispatch.Offer("fft"),)))
    assert "bad" not in dispatch.names()


def _no_triton(monkeypatch) -> None:
    """The triton backend off: the interpreter the tests run it in would make it "available"
    for the simulated CUDA devices below."""
    monkeypatch.setattr(dispatch.module("triton"), "is_available",
                        lambda: (False, "off (the test)"))


def test_numba_cuda_never_gets_a_large_topk_search(monkeypatch):
    """With a broken cuda build, auto may take numba_cuda for a small search on CUDA tensors,
    never for one past the bound: the blocked search of torch_ref runs instead."""
    monkeypatch.setattr(cuda, "is_available", lambda: (False, "broken build (the test)"))
    monkeypatch.setattr(numba_cuda, "is_available", lambda: (True, ""))
    _no_triton(monkeypatch)
    dev = torch.device("cuda")
    bound = dispatch.NUMBA_CUDA_TOPK_MAX_WORK
    assert dispatch.plan("topk_similarity", "auto", dev, work=bound).backend == "numba_cuda"
    assert dispatch.plan("topk_similarity", "auto", dev, work=bound + 1).backend == "torch_ref"
    assert dispatch.plan("topk_similarity", "auto", dev, work=10**12).backend == "torch_ref"
    # named, it still runs (the caller asked for it)
    assert dispatch.plan("topk_similarity", "numba_cuda", dev,
                         work=10**12).backend == "numba_cuda"
    # spmm has no such bound
    assert dispatch.plan("spmm", "auto", dev, work=10**12).backend == "numba_cuda"


def test_cpu_plans_are_what_the_backends_order_gave(monkeypatch):
    """With the built-in choices, auto on CPU tensors runs what it ran before the dispatch
    room: the compiled core where it has the op."""
    monkeypatch.setenv("MICRO_FAST_TUNE", "0")
    if "cpp" not in backends.available():
        pytest.skip("cpp not built")
    for op in dispatch.OPS:
        assert dispatch.plan(op, "auto", "cpu").backend == "cpp", op
    monkeypatch.setattr(cpp, "is_available", lambda: (False, "disabled by the test"))
    expected = {"topk_similarity": "numba", "contrastive": "torch_ref",
                "contrastive_fusion": "torch_ref", "spmm": "numba", "project_rows": "torch_ref",
                "bipartite_graph": "numba", "sample_edges": "torch_ref"}
    if "numba" not in backends.available():
        expected = dict.fromkeys(expected, "torch_ref")
    for op, name in expected.items():
        assert dispatch.plan(op, "auto", "cpu").backend == name, op


@pytest.mark.parametrize("fake_wins", [True, False])
def test_cuda_plans_are_measured_on_the_gpu_against_blocked_torch(monkeypatch, tmp_path,
                                                                  fake_wins):
    """On CUDA tensors ``auto`` runs the backend measured fastest on that GPU model, with
    torch_ref's blocked cuBLAS search among the candidates: a GPU backend slower than plain
    torch is not planned. A fake GPU here: its key names a GPU, its problems stay on the CPU."""
    monkeypatch.setenv("MICRO_FAST_TUNE", "1")
    monkeypatch.setenv("MICRO_FAST_CACHE_DIR", str(tmp_path))
    gpu = {"gpu": "Fake GPU", "cc": "9.0", "driver": "13.0", "version": "test", "build": "b0"}
    cpu_key = tuning.device_key
    monkeypatch.setattr(tuning, "device_key", lambda device="cpu", threads=None: dict(gpu)
                        if torch.device(device).type == "cuda" else cpu_key(device, threads))
    monkeypatch.setattr(tuning, "_measurable", lambda device: True)
    monkeypatch.setattr(tuning_problems, "_tensor_device", lambda device: torch.device("cpu"))
    monkeypatch.setattr(tuning_problems, "CUDA_ROWS",
                        {"topk_similarity": 300, "contrastive": 100})
    monkeypatch.setattr(tuning, "_busy_reason", lambda load, stats: None)
    measured: list[list[str]] = []
    real_time = tuning.time_candidates

    def time_candidates(runs, stats=None):
        times = real_time(runs, stats)
        measured.append(sorted(map(str, times)))
        slow = max(times.values()) * 10 + 1
        return {c: ((0.0 if fake_wins else slow) if c == "fake" else t)
                for c, t in times.items()}

    monkeypatch.setattr(tuning, "time_candidates", time_candidates)
    _no_triton(monkeypatch)
    calls: list[str] = []
    mod = types.ModuleType("fake_gpu_backend")
    mod.is_available = lambda: (True, "")
    mod.supports = lambda device: device.type == "cuda"

    def topk_similarity(queries, keys, k, exclude, block_size):
        calls.append("topk")
        return torch_ref.topk_similarity(queries, keys, k, exclude, block_size)

    mod.topk_similarity = topk_similarity
    dispatch.register(dispatch.Backend("fake", mod, (dispatch.Offer("topk_similarity"),)),
                      before="torch_ref")
    try:
        tuning.forget()
        assert dispatch.measured_candidates("topk_similarity", "cuda:0") == ["fake", "torch_ref"]
        chosen = dispatch.plan("topk_similarity", "auto", "cuda:0").backend
        assert chosen == ("fake" if fake_wins else "torch_ref")
        assert ["fake", "torch_ref"] in measured and calls  # timed on the (fake) GPU
        cached = json.loads((tmp_path / "tuning.json").read_text())
        key = tuning._key_str(gpu)
        assert cached[key]["choices"]["topk_similarity.backend"] == chosen
        assert set(cached[key]["choices"]) == {d.name for d in tuning.CUDA_DECISIONS}
        assert any("Fake GPU" in line for line in tuning.describe(device="cuda:0"))
        # the CPU's plans and cache entry are their own
        assert dispatch.plan("topk_similarity", "auto", "cpu").backend != "fake"
        assert "topk_similarity.backend" not in tuning.choices("cpu")
    finally:
        dispatch.unregister("fake")
        tuning.forget()
