"""The measured choices (micro_fast.tuning): calibration, the cache and its key, what the ops
run for each choice, the off switch, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import assert_parity

import micro_fast as mf
from micro_fast import tuning
from micro_fast.backends import cpp

pytestmark = pytest.mark.skipif("cpp" not in mf.backends.available(),
                                reason="tuning chooses between compiled kernels")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MICRO_FAST_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("MICRO_FAST_TUNE", "1")
    # these tests are about what is measured and cached; test_busy_* fake a busy machine
    monkeypatch.setattr(tuning, "_busy_reason", lambda load, stats: None)
    tuning.forget()
    yield tmp_path
    tuning.forget()


def _fake_entry(**choices) -> dict:
    made = {d.name: d.default for d in tuning.DECISIONS}
    made.update(choices)
    return {"key": tuning.machine_key(), "choices": made, "seconds": {}, "date": "test"}


def _write(cache_dir, entry: dict) -> None:
    (cache_dir / "tuning.json").write_text(json.dumps({tuning._key_str(entry["key"]): entry}))


def test_calibration_measures_every_decision_and_caches_it(cache, monkeypatch):
    monkeypatch.setattr(tuning, "REPEATS", 1)
    entry = tuning.calibrate(write=True)
    assert set(entry["choices"]) == {d.name for d in tuning.DECISIONS}
    for d in tuning.DECISIONS:
        cands = d.candidates()
        assert entry["choices"][d.name] in (cands or [d.default])
        if len(cands) > 1:
            assert set(entry["seconds"][d.name]) == {str(c) for c in cands}
            assert all(t > 0 for t in entry["seconds"][d.name].values())
    data = json.loads((cache / "tuning.json").read_text())
    key = tuning._key_str(tuning.machine_key())
    assert data[key]["choices"] == entry["choices"]
    assert data[key]["key"]["isa"] == cpp.simd_isa()
    assert data[key]["key"]["threads"] == torch.get_num_threads()
    # a second process-level lookup reads the file instead of measuring again
    tuning.forget()
    monkeypatch.setattr(tuning, "calibrate", lambda **_: pytest.fail("measured again"))
    assert tuning.choices() == entry["choices"]


def test_first_use_calibrates_once(cache, monkeypatch, capsys):
    calls = []

    def fake_calibrate(write=True, log=None, device="cpu"):
        calls.append(1)
        entry = _fake_entry()
        tuning._memo[tuning._key_str(entry["key"])] = entry
        return entry

    monkeypatch.setattr(tuning, "calibrate", fake_calibrate)
    assert tuning.choice("spmm.backend") == "cpp"
    assert tuning.choice("contrastive_fusion.strategy") == "fused"
    assert calls == [1]
    assert "measuring the fastest kernels" in capsys.readouterr().err


def test_key_separates_thread_counts_and_isas(cache):
    k2 = tuning._key_str(tuning.machine_key(2))
    k1 = tuning._key_str(tuning.machine_key(1))
    assert k1 != k2
    if "generic" in cpp.supported_isas() and cpp.simd_isa() != "generic":
        best = tuning._key_str(tuning.machine_key())
        cpp.set_simd_isa("generic")
        try:
            assert tuning._key_str(tuning.machine_key()) != best
        finally:
            cpp.set_simd_isa("auto")


def test_fusion_strategy_choice_is_what_the_op_runs(cache):
    gen = torch.Generator().manual_seed(0)
    views = [torch.randn(300, 16, generator=gen, dtype=torch.float64) for _ in range(2)]
    w = torch.softmax(torch.randn(300, 2, generator=gen, dtype=torch.float64), dim=1)
    fused = mf.contrastive_fusion_loss(views, w, strategy="fused")
    separate = mf.contrastive_fusion_loss(views, w, strategy="separate")
    assert_parity(fused, separate, "fusion loss")
    for choice, expected in (("separate", separate), ("fused", fused)):
        _write(cache, _fake_entry(**{"contrastive_fusion.strategy": choice}))
        tuning.forget()
        assert torch.equal(mf.contrastive_fusion_loss(views, w), expected), choice
    with pytest.raises(ValueError, match="strategy"):
        mf.contrastive_fusion_loss(views, w, strategy="fastest")


@pytest.mark.skipif("numba" not in mf.backends.available(), reason="numba not installed")
def test_spmm_backend_choice_is_what_auto_runs(cache, monkeypatch):
    from micro_fast.backends import numba as numba_backend

    calls = []
    real = numba_backend.spmm
    monkeypatch.setattr(numba_backend, "spmm", lambda *a: calls.append(1) or real(*a))
    g = mf.CSRGraph.from_dense(torch.tensor([[0.0, 1.0], [2.0, 0.0]]))
    x = torch.ones(2, 3)
    _write(cache, _fake_entry(**{"spmm.backend": "numba"}))
    tuning.forget()
    assert torch.equal(mf.spmm(g, x), torch.tensor([[1.0] * 3, [2.0] * 3]))
    assert torch.equal(mf.propagate(g, x, 1), torch.tensor([[1.0] * 3, [2.0] * 3]))
    assert len(calls) == 2
    _write(cache, _fake_entry(**{"spmm.backend": "cpp"}))
    tuning.forget()
    mf.spmm(g, x)
    assert len(calls) == 2
    mf.spmm(g, x, backend="numba")  # an explicit backend is never overridden
    assert len(calls) == 3


def test_block_size_choice_reaches_the_kernel(cache, monkeypatch):
    seen = []
    real = cpp.contrastive_forward
    monkeypatch.setattr(cpp, "contrastive_forward",
                        lambda n1, n2, tau, sym, block: seen.append(block) or real(n1, n2, tau,
                                                                                  sym, block))
    _write(cache, _fake_entry(**{"contrastive.block_size": 128}))
    tuning.forget()
    monkeypatch.setitem(tuning.CALIBRATION_ROWS, "contrastive", 50)
    z = torch.randn(50, 8)
    mf.contrastive_loss(z, z + 1, backend="cpp")
    mf.contrastive_loss(z, z + 1, backend="cpp", block_size=64)
    # a problem smaller than the calibration's keeps the kernel's default
    mf.contrastive_loss(z[:49], z[:49] + 1, backend="cpp")
    assert seen == [128, 64, None]


def test_off_switch_uses_defaults_and_writes_nothing(cache, monkeypatch):
    monkeypatch.setenv("MICRO_FAST_TUNE", "0")
    monkeypatch.setattr(tuning, "calibrate", lambda **_: pytest.fail("measured while off"))
    assert tuning.choices() == {d.name: d.default for d in tuning.DECISIONS}
    assert not (cache / "tuning.json").exists()
    assert "off" in tuning.describe()[0]


def test_corrupt_cache_is_recalibrated_not_a_crash(cache, monkeypatch):
    (cache / "tuning.json").write_text("{not json")
    monkeypatch.setattr(tuning, "calibrate", lambda **_: _fake_entry())
    assert tuning.choice("spmm.backend") == "cpp"


def test_margin_keeps_the_default_on_a_near_tie(cache, monkeypatch):
    times = {"x": {"a": 1.0, "b": 0.99}, "y": {"a": 1.0, "b": 0.5}}
    d = tuning.Decision("x.strategy", "test", "a", lambda: ["a", "b"], lambda c, _made: ("x", c))
    e = tuning.Decision("y.strategy", "test", "a", lambda: ["a", "b"], lambda c, _made: ("y", c))
    monkeypatch.setattr(tuning, "DECISIONS", (d, e))
    monkeypatch.setattr(tuning, "time_candidates",
                        lambda runs, stats=None: {c: times[r[0]][r[1]]
                                                  for c, r in runs.items()})
    entry = tuning.calibrate(write=False)
    assert entry["choices"] == {"x.strategy": "a", "y.strategy": "b"}


def test_tune_and_info_commands(cache):
    # cwd outside the source tree: `python -m` puts the cwd first on sys.path, and a clean
    # checkout's micro_fast/ has no compiled extension
    env = dict(os.environ, MICRO_FAST_CACHE_DIR=str(cache), MICRO_FAST_TUNE="1")
    proc = subprocess.run([sys.executable, "-m", "micro_fast.cli", "tune", "--threads", "1"],
                          env=env, cwd=cache, capture_output=True, text=True, timeout=300)
    # 3: measured on a busy machine (other processes running), then nothing is cached
    assert proc.returncode in (0, 3), proc.stderr
    for d in tuning.DECISIONS:
        assert d.name in proc.stdout
    assert " ms" in proc.stdout
    if proc.returncode == 0:
        assert (cache / "tuning.json").exists()
    else:
        assert "busy" in proc.stderr and not (cache / "tuning.json").exists()
    info = subprocess.run([sys.executable, "-m", "micro_fast.cli", "info"], env=env, cwd=cache,
                          capture_output=True, text=True, timeout=120)
    assert info.returncode == 0 and "cpu: " in info.stdout and "tuning" in info.stdout
    off = subprocess.run([sys.executable, "-m", "micro_fast.cli", "tune"],
                         env=dict(env, MICRO_FAST_TUNE="0"), cwd=cache, capture_output=True,
                         text=True, timeout=120)
    assert off.returncode == 2 and "MICRO_FAST_TUNE" in off.stderr


def test_busy_measurements_keep_the_defaults_and_are_not_cached(cache, monkeypatch, capsys):
    monkeypatch.setattr(tuning, "REPEATS", 1)
    monkeypatch.setattr(tuning, "_busy_reason", lambda load, stats: "a busy machine (the test)")
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    entry = tuning.calibrate(write=True)
    measured = [d.name for d in tuning.DECISIONS if len(d.candidates()) > 1]
    assert measured and sorted(entry["busy"]) == sorted(measured)
    assert entry["choices"] == {d.name: d.default for d in tuning.DECISIONS}
    assert not (cache / "tuning.json").exists()
    assert "not cached" in capsys.readouterr().err
    # under torchrun the result is cached for that job's other ranks only
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")
    tuning.calibrate(write=True)
    cached = json.loads((cache / "tuning.json").read_text())[tuning._key_str(tuning.machine_key())]
    assert cached["provisional"] == "job-1"
    assert tuning._usable(cached) is not None
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-2")
    assert tuning._usable(cached) is None


def test_busy_reason_from_other_processes_and_spread():
    assert tuning._busy_reason({"others": 0.6}, {"spread": 0.0}).startswith("other processes")
    assert tuning._busy_reason({"others": 0.0}, {"spread": 0.9}).startswith("timed calls")
    assert tuning._busy_reason({"others": 0.01}, {"spread": 0.05}) is None
    stats: dict = {}
    with tuning._load_monitor() as load:
        times = tuning.time_candidates({"a": lambda: sum(range(1000))}, stats)
    assert times["a"] > 0 and stats["spread"] >= 0
    assert 0.0 <= load.get("others", 0.0) <= 1.0


def test_only_local_rank_0_measures(cache, monkeypatch, capsys):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(tuning, "RANK_WAIT_S", 0.3)
    monkeypatch.setattr(tuning, "calibrate", lambda **_: pytest.fail("rank 1 measured"))
    assert tuning.choices() == {d.name: d.default for d in tuning.DECISIONS}
    assert "did not measure in time" in capsys.readouterr().err
    # once local rank 0 has written its measurement, the other ranks take it
    tuning.forget()
    _write(cache, _fake_entry(**{"contrastive.block_size": 384}))
    assert tuning.choice("contrastive.block_size") == 384
