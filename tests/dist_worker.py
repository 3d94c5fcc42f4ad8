"""One rank of the torch.distributed tests (tests/test_distributed.py starts two of these with
RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT set, as torchrun does).

    python dist_worker.py ops OUT_DIR     sharded knn_graph / topk / full_ranking -> OUT/rank<r>.pt
    python dist_worker.py die OUT_DIR     a 2-rank training run whose rank 1 dies after epoch 0
    python dist_worker.py stall OUT_DIR   ... whose rank 1 stops responding after epoch 0
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from micro_fast import distributed


def ops_inputs(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The same inputs on every rank and in the single-process reference."""
    gen = torch.Generator().manual_seed(5)
    return {
        "features": torch.randn(301, 17, generator=gen, dtype=dtype),
        "weights": torch.rand(301, 10, generator=gen, dtype=dtype),
        "queries": torch.randn(97, 9, generator=gen, dtype=dtype),
        "keys": torch.randn(203, 9, generator=gen, dtype=dtype),
        "users": torch.randn(150, 8, generator=gen, dtype=dtype),
        "items": torch.randn(90, 8, generator=gen, dtype=dtype),
        "seen": (torch.rand(150, 90, generator=gen) < 0.1),
        "held_out": (torch.rand(150, 90, generator=gen) < 0.05),
        "excluded": (torch.rand(97, 203, generator=gen) < 0.2),
        "self_excluded": (torch.rand(203, 203, generator=gen) < 0.3),
    }


def run_ops(knn_graph, topk_similarity, full_ranking) -> dict[str, torch.Tensor]:
    """Graph, gradients, masked top-k and metrics through the given implementations."""
    from micro_fast.graph import CSRGraph

    out: dict[str, torch.Tensor] = {}
    for dtype in (torch.float32, torch.float64):
        x = ops_inputs(dtype)
        tag = str(dtype).split(".")[-1]
        feats = x["features"].clone().requires_grad_()
        graph = knn_graph(feats, 10, normalization="sym")
        (graph.values.reshape(301, 10) * x["weights"]).sum().backward()
        out[f"{tag}/indices"] = graph.indices
        out[f"{tag}/values"] = graph.values.detach()
        out[f"{tag}/grad"] = feats.grad
        exclude = CSRGraph.from_dense(x["excluded"].to(dtype))
        vals, idx = topk_similarity(x["queries"], x["keys"], 25, exclude=exclude)
        out[f"{tag}/topk_values"], out[f"{tag}/topk_indices"] = vals, idx
        # the symmetric search with exclusions, k near the number of keys (padded rows)
        exclude = CSRGraph.from_dense(x["self_excluded"].to(dtype))
        vals, idx = topk_similarity(x["keys"], None, 180, exclude=exclude)
        out[f"{tag}/sym_values"], out[f"{tag}/sym_indices"] = vals, idx
        train = CSRGraph.from_dense(x["seen"].to(dtype))
        target = CSRGraph.from_dense(x["held_out"].to(dtype))
        metrics = full_ranking(x["users"], x["items"], train, target, (5, 20), user_block=16)
        out[f"{tag}/metrics"] = torch.tensor([metrics[k] for k in sorted(metrics)],
                                             dtype=torch.float64)
    return out


def main() -> int:
    task, out = sys.argv[1], Path(sys.argv[2])
    torch.set_num_threads(1)
    if task == "ops":
        rank, world = distributed.init_from_env("gloo", timeout_s=60)
        assert world == 2, world
        result = run_ops(distributed.knn_graph, distributed.topk_similarity,
                         distributed.full_ranking)
        torch.save(result, out / f"rank{rank}.pt")
        distributed.shutdown()
        return 0
    if task in ("die", "stall"):
        import time

        from micro_fast.train import TrainConfig, train

        def on_epoch_end(epoch, record):
            if int(os.environ["RANK"]) == 1:
                if task == "stall":
                    time.sleep(3600)  # alive but silent: only the timeout can end the wait
                os._exit(3)  # an abrupt death: no shutdown, no exception

        config = TrainConfig(data="synthetic:tiny", epochs=3, eval_every=1, out=str(out / "run"),
                             progress=False, dist_timeout=float(os.environ["TIMEOUT"]))
        train(config, on_epoch_end=on_epoch_end)
        return 0
    raise SystemExit(f"unknown task {task}")


if __name__ == "__main__":
    sys.exit(main())
