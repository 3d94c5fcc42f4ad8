"""The benchmark suite cannot rot: it runs once per case at the small size, and
``micro-fast bench`` writes its report, plots and comparison."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("pytest_benchmark")

from micro_fast.cli import bench_suite_dir  # noqa: E402

# the training cases on the tiny synthetic preset, 2 batches on each side: the code paths of
# the small suite at a fraction of its time
ENV = dict(os.environ, MICRO_FAST_BENCH_THREADS="2", MICRO_FAST_TRAIN_SIZE="tiny",
           MICRO_FAST_TRAIN_BATCHES="2", MICRO_FAST_METRIC_STEPS="2")


def test_suite_runs_every_case_once(tmp_path):
    suite = bench_suite_dir()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", str(suite), "--bench-size=small",
         "--benchmark-disable", "-q", "-p", "no:cacheprovider", "--rootdir", str(suite),
         "-o", "python_files=bench_*.py"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout


def test_bench_command_writes_report_plots_and_compares(tmp_path):
    out = tmp_path / "bench"
    # one ISA: test_suite_runs_every_case_once already runs every case on every ISA, and
    # test_report_flags_paths_slower_than_simpler_ones checks the cross-ISA part of the report
    # and few rounds: this checks the command, not the timings
    env = dict(ENV, PYTEST_ADDOPTS="--benchmark-max-time=0.05 --benchmark-min-rounds=1 "
               "--benchmark-warmup=off")
    proc = subprocess.run([sys.executable, "-m", "micro_fast.cli", "bench", "--size", "small",
                           "--isa", "best", "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = (out / "BENCHMARKS.md").read_text()
    for needle in ("| cpu |", "GFLOP/s", "### knn", "### knn queries!=keys", "### spmm",
                   "### contrastive", "### train 2 batches", "### evaluation", "vs official",
                   "vs blocked_torch", "vs torch_csr", "vs published", "vs reference",
                   "warm-up + rounds", "| commit |", "| machine |", "| date (UTC) |",
                   "### Training epochs", ".png)"):
        assert needle in report, needle
    assert "extrapolated" not in report
    # every case of a group had the same warm-up and rounds
    assert "### Unequal timing\n\nNone" in report
    assert (out / "provenance.json").exists()
    pngs = sorted(out.glob("*.png"))
    assert {p.stem for p in pngs} >= {"knn_d_64", "contrastive_d_64_fwd_bwd", "train_epoch"}
    import matplotlib.image

    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.image.imread(p).ndim == 3
    data = json.loads((out / "results.json").read_text())
    assert all("peak_extra_mb" in b["extra_info"] or b["extra_info"].get("check")
               for b in data["benchmarks"])
    epochs = [b["extra_info"] for b in data["benchmarks"]
              if b["extra_info"].get("op") == "train_epoch"]
    assert {e["impl"] for e in epochs} == {"micro_fast", "reference"}
    assert len({e["optimizer"] for e in epochs}) == 1  # the same optimizer on both sides
    res = str(out / "results.json")
    cmp = subprocess.run([sys.executable, "-m", "micro_fast.cli", "bench", "--compare", res, res],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert cmp.returncode == 0, cmp.stderr
    assert "| 1.00 |" in cmp.stdout and "new / old" in cmp.stdout


def test_bench_rejects_unknown_ops(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "micro_fast.cli", "bench", "--ops", "fft",
                           "--out", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "fft" in proc.stderr


def test_report_flags_paths_slower_than_simpler_ones():
    sys.path.insert(0, str(bench_suite_dir()))
    import report

    def case(impl, isa, seconds, group="g"):
        info = {"impl": impl, "op": "x"}
        if isa:
            info["isa"] = isa
        return {"group": group, "name": impl, "fullname": impl, "extra_info": info,
                "stats": {"median": seconds, "rounds": 1}}

    data = {"benchmarks": [case("cpp[avx2]", "avx2", 2.0), case("cpp[generic]", "generic", 1.0),
                           case("numba", None, 1.5), case("torch_csr", None, 3.0),
                           case("cpp_fused", "avx512", 1.0, "f"),
                           case("cpp_separate", "avx512", 0.5, "f"), case("faiss", None, 0.1)]}
    flags = report.slower_than_simpler(data)
    assert len(flags) == 2, flags
    assert any("cpp[avx2]" in f and "cpp[generic]" in f for f in flags)
    assert any("cpp_fused" in f and "cpp_separate" in f for f in flags)
    assert "Slower than a simpler path" in report.summarize(data)
    data["benchmarks"] = data["benchmarks"][1:4]
    assert report.slower_than_simpler(data) == []


def _suite_module(name: str):
    sys.path.insert(0, str(bench_suite_dir()))
    return __import__(name)


def test_report_lists_groups_with_unequal_timing():
    report = _suite_module("report")

    def case(impl, warmup, rounds):
        return {"group": "g", "name": impl, "fullname": impl,
                "extra_info": {"impl": impl, "op": "x", "warmup": warmup},
                "stats": {"median": 1.0, "rounds": rounds}}

    same = {"benchmarks": [case("cpp", 1, 3), case("faiss", 1, 3)]}
    assert report.unequal_timing(same) == []
    cold = {"benchmarks": [case("cpp", 1, 3), case("official", 0, 1)]}
    lines = report.unequal_timing(cold)
    assert len(lines) == 1 and "official: 0 warm-up + 1 rounds" in lines[0]
    assert "### Unequal timing\n\n- g:" in report.summarize(cold)


def test_work_counts_what_the_kernels_compute():
    work = _suite_module("work")
    n, d, block = 1000, 64, 256
    # the self-join computes each unordered block pair once, diagonal blocks in full
    sizes = [256, 256, 256, 232]
    pairs = sum(a * b for i, a in enumerate(sizes) for b in sizes[i:])
    assert work.topk_macs(n, None, d, block=block) == pairs * d
    assert n * (n + 1) // 2 * d <= work.topk_macs(n, None, d, block=block) < n * n * d
    assert work.topk_macs(n, 700, d) == n * 700 * d  # queries != keys: every pair
    # about 6 N^2 d for the contrastive loss forward + backward, 8 N^2 d fused for two views
    assert 6.0 <= work.contrastive_macs(n, d, True, block=block) / (n * n * d) < 6.3
    big = 4000  # 128-row blocks (the fused kernel's default): the diagonal blocks add 3%
    assert 8.0 <= work.fusion_macs(big, d, 2, True, block=128) / (big * big * d) < 8.3
    assert work.published_contrastive_macs(n, d, True) == 6 * n * n * d


def test_provenance_header_names_machine_date_and_commit(tmp_path):
    prov = _suite_module("provenance")
    md, js = prov.write_artifact("x", "A title", "| a | b |", {"value": 1}, tmp_path)
    text = md.read_text()
    for needle in ("# A title", "| machine |", "| SIMD kernels |", "| threads |",
                   "| date (UTC) |", "| commit |", "| command |", "| load average"):
        assert needle in text, needle
    data = json.loads(js.read_text())
    assert data["data"] == {"value": 1}
    assert set(data["provenance"]["git"]) >= {"commit", "dirty"}


def test_gpu_bench_fails_on_a_failing_case(tmp_path, monkeypatch):
    """A failing implementation (recorded, the others still run) makes the run exit 1."""
    gpu_bench = _suite_module("gpu_bench")
    peers = _suite_module("peers")

    def boom(*args, **kwargs):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(peers, "blocked_torch_topk", boom)
    out = tmp_path / "bench.json"
    rc = gpu_bench.main(["--device", "cpu", "--quick", "--only", "knn", "--out", str(out)])
    assert rc == 1
    failures = json.loads(out.read_text())["failures"]
    assert failures and all("injected failure" in f for f in failures)


def test_make_results_lists_every_step(tmp_path):
    proc = subprocess.run([sys.executable, str(bench_suite_dir() / "make_results.py"), "--list",
                           "--results-dir", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    for step in ("suite-paper-knn", "suite-paper-train", "isa-table", "freedom-epoch",
                 "lattice-epoch", "distributed-train", "distributed-knn"):
        assert step in proc.stdout, step
    bad = subprocess.run([sys.executable, str(bench_suite_dir() / "make_results.py"), "--only",
                          "nope", "--results-dir", str(tmp_path)], capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "nope" in bad.stderr


def test_cuda_resources_reads_registers_and_spills_per_kernel():
    import cuda_resources

    log = "\n".join([
        "ptxas info    : 0 bytes gmem",
        "ptxas info    : Compiling entry function '_Z4tileILi8EEvPf' for 'sm_90'",
        "ptxas info    : Function properties for _Z4tileILi8EEvPf",
        "    16 bytes stack frame, 20 bytes spill stores, 36 bytes spill loads",
        "ptxas info    : Used 140 registers, used 1 barriers, 8448 bytes smem, 400 bytes cmem[0]",
        "ptxas info    : Compiling entry function '_Z5mergev' for 'sm_80'",
        "ptxas info    : Function properties for _Z5mergev",
        "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads",
        "ptxas info    : Used 32 registers, used 0 barriers, 368 bytes cmem[0]",
    ])
    tile, merge = cuda_resources.parse_ptxas(log, "x.cu")
    assert (tile.name, tile.arch, tile.registers, tile.spill_stores, tile.spill_loads,
            tile.stack, tile.smem) == ("_Z4tileILi8EEvPf", "sm_90", 140, 20, 36, 16, 8448)
    assert (merge.arch, merge.registers, merge.spill_stores, merge.smem) == ("sm_80", 32, 0, 0)
    compiles = [cuda_resources.Compile("x.cu", "sm_90", True, 2.0, 1.5, log)]
    text = cuda_resources.report([tile, merge], compiles, 2.0, 1, 128, "nvcc test")
    over = text.split("### Over 128 registers or spilling")[1].split("### Every kernel")[0]
    assert "_Z4tileILi8EEvPf" in over and "_Z5mergev" not in over


def test_vectorized_published_knn_and_index_add_spmm_peers_compute_the_same():
    """The GPU bench's extra peers compute what the paths they stand for compute."""
    import peers
    from bounds import assert_close
    from oracles import spmm_exact

    gen = torch.Generator().manual_seed(5)
    x = torch.rand(60, 7, generator=gen, dtype=torch.float64) - 0.3
    for norm in ("sym", "rw"):
        loop = peers.official_knn_graph(x, 5, norm).to_dense()
        assert torch.equal(peers.official_knn_graph_vectorized(x, 5, norm).to_dense(), loop)
    dense = (torch.rand(30, 20, generator=gen, dtype=torch.float64) < 0.2) * torch.rand(
        30, 20, generator=gen, dtype=torch.float64)
    rows, cols = dense.nonzero(as_tuple=True)
    y = torch.randn(20, 4, generator=gen, dtype=torch.float64)
    got = peers.index_add_spmm(rows, cols, dense[rows, cols], y, 30)
    assert_close(got, spmm_exact(dense, y)[0], what="index_add spmm")
