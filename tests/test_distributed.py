"""micro_fast.distributed and training under torchrun, with 2 gloo processes on the CPU: the
sharded kNN graph (values and gradients), top-k and evaluation equal the single-process
results exactly; a 2-rank training run matches a 1-process run; resume works; a dead rank makes
the other fail with a clear error instead of hanging."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from bounds import Bounded, assert_close
from oracles import contrastive_exact, fusion_exact

import micro_fast as mf
from micro_fast import distributed
from micro_fast.metrics import full_ranking
from micro_fast.train import TrainConfig, train

WORKER = Path(__file__).with_name("dist_worker.py")
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="torch.distributed is not available")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()), WORLD_SIZE="2", **extra)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def _launch(task: str, out: Path, timeout: float, only_rank0: bool = False,
            **extra: str) -> list[tuple[int, str, float]]:
    """Starts ranks 0 and 1 of dist_worker.py; returns (returncode, output, seconds) of each
    (of rank 0 alone with ``only_rank0``; rank 1 is then killed)."""
    env = _env(**extra)
    t0 = time.monotonic()
    procs = [subprocess.Popen([sys.executable, str(WORKER), task, str(out)],
                              env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    results = []
    for p in procs[:1] if only_rank0 else procs:
        try:
            output, _ = p.communicate(timeout=max(1.0, timeout - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"rank of {task!r} still running after {timeout} s (a hang)")
        results.append((p.returncode, output, time.monotonic() - t0))
    for p in procs:
        p.kill()
        p.wait()
    return results


def test_row_range_partitions_rows():
    for n in (0, 1, 5, 7, 100):
        for world in (1, 2, 3, 8):
            ranges = [distributed.row_range(n, r, world) for r in range(world)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
            sizes = [r1 - r0 for r0, r1 in ranges]
            assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("shards", [1, 2, 3, 5])
def test_shard_lists_merge_to_the_full_search(shards):
    """The compiled shard search (every shards-th block pair) + merge_topk is the full search,
    with ties (integer features) and padded rows (exclusions)."""
    from micro_fast import backends
    from micro_fast.graph import CSRGraph

    if "cpp" not in backends.available("cpu"):
        pytest.skip("cpp not available")
    cpp = backends.get("cpp", torch.device("cpu"))
    gen = torch.Generator().manual_seed(shards)
    x = torch.randint(-2, 3, (150, 4), generator=gen).double()
    excl = CSRGraph.from_dense((torch.rand(150, 150, generator=gen) < 0.5).double())
    k = 90
    ref_v, ref_i = mf.topk_similarity(x, None, k, exclude=excl, block_size=16, backend="cpp")
    parts = [cpp.topk_similarity_shard(x, k, (excl.indptr, excl.indices), 16, s, shards)
             for s in range(shards)]
    v, i = distributed.merge_topk(torch.stack([p[0] for p in parts]),
                                  torch.stack([p[1] for p in parts]), k)
    assert torch.equal(i, ref_i) and torch.equal(v, ref_v)


def test_without_a_process_group_the_ops_are_the_single_process_ones():
    assert not distributed.is_active() and distributed.rank_and_world() == (0, 1)
    x = torch.randn(50, 6)
    a, b = distributed.knn_graph(x, 5), mf.knn_graph(x, 5)
    assert torch.equal(a.indices, b.indices) and torch.equal(a.values, b.values)
    t = torch.ones(3)
    assert distributed.all_reduce_mean(t) is t


def test_sharded_ops_equal_single_process(tmp_path):
    import dist_worker

    results = _launch("ops", tmp_path, timeout=240)
    for rc, output, _ in results:
        assert rc == 0, output
    expected = dist_worker.run_ops(mf.knn_graph, mf.topk_similarity, full_ranking)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert set(got) == set(expected)
        for key, value in expected.items():
            assert torch.equal(got[key], value), f"rank {rank}: {key} differs"


def _exact_contrastive(inputs: dict[str, torch.Tensor]) -> dict[str, Bounded]:
    """The keys of ``dist_worker.run_contrastive``, from the dense float64 statements."""
    out: dict[str, Bounded] = {}
    for dtype in (torch.float32, torch.float64):
        tag = str(dtype).split(".")[-1]
        x = {k: v.to(dtype) for k, v in inputs.items()}
        for symmetric in (False, True):
            value, g1, g2 = contrastive_exact(x["z1"], x["z2"], 0.4, symmetric)
            for name, t in (("value", value), ("grad_z1", g1), ("grad_z2", g2)):
                out[f"{tag}/single{int(symmetric)}/{name}"] = t
        value, (gh1, gh2), gw = fusion_exact([x["h1"], x["h2"]], x["w"], 0.5)
        for name, t in (("value", value), ("grad_h1", gh1), ("grad_h2", gh2), ("grad_w", gw)):
            out[f"{tag}/fusion/{name}"] = t
    return out


def test_sharded_contrastive_losses_sum_to_the_exact_ones(tmp_path):
    """Each rank's part (loss / W, its share of the gradients) sums over the 2 ranks to the
    exact loss and gradients (each part rounds its own share: twice the single computation's
    tolerance); with for_ddp every rank holds the full value and W x its share."""
    import dist_worker

    results = _launch("contrastive", tmp_path, timeout=240)
    for rc, output, _ in results:
        assert rc == 0, output
    expected = _exact_contrastive(dist_worker.contrastive_inputs())
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert set(ranks[0]) == {*expected, *(f"ddp/{k}" for k in expected)}
    for key, exact in expected.items():
        dtype = ranks[0][key].dtype
        twice = Bounded(exact.value, 2 * exact.err, exact.u)
        assert_close(ranks[0][key] + ranks[1][key], twice, dtype, what=key)
        assert not torch.equal(ranks[0][key], ranks[1][key]) or key.endswith("value")
        ddp = [r[f"ddp/{key}"] for r in ranks]
        if key.endswith("value"):
            for v in ddp:
                assert_close(v, twice, dtype, what=f"ddp/{key}")
        else:  # DistributedDataParallel averages: the mean of the ranks' gradients is the full
            assert_close((ddp[0] + ddp[1]) / 2, twice, dtype, what=f"ddp/{key}")


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = _env()
    for key in ("WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "micro_fast.cli", "train", "--data", "synthetic:tiny", "--eval-every",
           "1", "--seed", "7", "--quiet", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def test_torchrun_training_matches_one_process_and_resumes(tmp_path):
    two = tmp_path / "two"
    proc = _torchrun("--epochs", "2", "--out", str(two))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(_records(two)) == 2  # rank 0 alone wrote the metrics
    proc = _torchrun("--epochs", "3", "--out", str(two), "--resume")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((two / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs_run"] == 3

    # one process, the same global batch (1024) and seed
    one = train(TrainConfig(data="synthetic:tiny", epochs=3, eval_every=1, seed=7,
                            out=str(tmp_path / "one"), progress=False, threads=1))
    assert one["world_size"] == 1
    ref = _records(tmp_path / "one")
    got = _records(two)
    assert [r["epoch"] for r in got] == [0, 1, 2]
    # Stated tolerance: the runs differ only in float summation order (gradient all-reduce,
    # per-rank batch means), so losses agree to 1e-4 relative and every metric to 1e-3.
    for g, r in zip(got, ref, strict=True):
        for key in ("loss", "bpr", "contrastive"):
            assert g[key] == pytest.approx(r[key], rel=1e-4), (key, g, r)
        for split in ("valid",):
            for key, value in r[split].items():
                assert g[split][key] == pytest.approx(value, abs=1e-3), (split, key)


def test_a_dead_rank_fails_the_other_with_a_clear_error(tmp_path):
    timeout = 60
    results = _launch("die", tmp_path, timeout=timeout + 120, TIMEOUT=str(timeout))
    (rc0, out0, t0), (rc1, _, _) = results
    assert rc1 == 3
    assert rc0 != 0, out0
    assert "CollectiveError" in out0 and "another rank died" in out0, out0
    assert t0 < timeout + 90, f"rank 0 took {t0:.0f} s to fail"


def test_a_stalled_rank_fails_the_other_after_the_timeout(tmp_path):
    timeout = 8
    (rc0, out0, t0), = _launch("stall", tmp_path, timeout=timeout + 150, only_rank0=True,
                               TIMEOUT=str(timeout))
    assert rc0 != 0, out0
    assert "CollectiveError" in out0, out0
    assert t0 < timeout + 120, f"rank 0 took {t0:.0f} s to fail"
