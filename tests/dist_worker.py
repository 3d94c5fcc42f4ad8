"""One rank of the torch.distributed tests (tests/test_distributed.py starts two of these with
RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT set, as torchrun does).

    python dist_worker.py ops OUT_DIR     sharded knn_graph / topk / full_ranking -> OUT/rank<r>.pt
    python dist_worker.py contrastive OUT_DIR   the rank's parts of the contrastive losses
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


def contrastive_inputs() -> dict[str, torch.Tensor]:
    """float32 views ``z1``, ``z2`` (the two-view loss), ``h1``, ``h2`` and weights ``w`` (the
    fusion loss), the same on every rank and in the test's exact reference."""
    gen = torch.Generator().manual_seed(11)
    return {"z1": torch.randn(517, 24, generator=gen), "z2": torch.randn(517, 24, generator=gen),
            "h1": torch.randn(517, 24, generator=gen), "h2": torch.randn(517, 24, generator=gen),
            "w": torch.rand(517, 2, generator=gen) + 0.1}


def run_contrastive(contrastive_loss, contrastive_fusion_loss) -> dict[str, torch.Tensor]:
    """Values and gradients of the contrastive losses through the given implementations
    (``for_ddp`` is passed when the implementations take it)."""
    out: dict[str, torch.Tensor] = {}
    base = contrastive_inputs()
    for dtype in (torch.float32, torch.float64):
        tag = str(dtype).split(".")[-1]
        x = {k: v.to(dtype).requires_grad_() for k, v in base.items()}
        for symmetric in (False, True):
            loss = contrastive_loss(x["z1"], x["z2"], tau=0.4, symmetric=symmetric)
            g1, g2 = torch.autograd.grad(loss, (x["z1"], x["z2"]))
            out[f"{tag}/single{int(symmetric)}/value"] = loss.detach()
            out[f"{tag}/single{int(symmetric)}/grad_z1"] = g1
            out[f"{tag}/single{int(symmetric)}/grad_z2"] = g2
        loss = contrastive_fusion_loss([x["h1"], x["h2"]], x["w"])
        grads = torch.autograd.grad(loss, (x["h1"], x["h2"], x["w"]))
        out[f"{tag}/fusion/value"] = loss.detach()
        for name, g in zip(("h1", "h2", "w"), grads, strict=True):
            out[f"{tag}/fusion/grad_{name}"] = g
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
    if task == "contrastive":
        import functools

        rank, world = distributed.init_from_env("gloo", timeout_s=60)
        result = run_contrastive(distributed.contrastive_loss,
                                 distributed.contrastive_fusion_loss)
        ddp = run_contrastive(functools.partial(distributed.contrastive_loss, for_ddp=True),
                              functools.partial(distributed.contrastive_fusion_loss,
                                                for_ddp=True))
        result.update({f"ddp/{k}": v for k, v in ddp.items()})
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
