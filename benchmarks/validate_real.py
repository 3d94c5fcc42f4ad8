"""Training on real data: LightGCN on Amazon Baby (interactions only), and MICRO, the
LATTICE-style variant (no contrastive loss), LightGCN, FREEDOM and LATTICE (as MMRec computes
them) on TikTok (real image and audio features), each with its published defaults. Prints
Recall/NDCG@20 on the test split at the best validation epoch.

    python benchmarks/validate_real.py [--data-root ../shared/data] [--epochs N]
        [--only tiktok/freedom] [--evaluation mmrec]

Skips (exit 0) when the data folder is absent. The published schedule allows up to 1000 epochs
with early stopping after 10 evaluations without improvement; ``--epochs`` caps a run (the
printout says when the cap, not early stopping, ended it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from micro_fast.data import load
from micro_fast.train import TrainConfig, train

RUNS = [
    ("baby", "lightgcn", dict(modalities=())),
    ("tiktok", "micro", dict()),
    ("tiktok", "lattice-style", dict(contrastive_weight=0.0)),
    ("tiktok", "lightgcn", dict(modalities=())),
    ("tiktok", "freedom", dict(model="freedom")),
    ("tiktok", "lattice", dict(model="lattice")),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_root = Path(__file__).resolve().parents[2] / "shared" / "data"
    parser.add_argument("--data-root", default=str(default_root))
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--out", default="runs/validate_real")
    parser.add_argument("--only", default=None, help="e.g. tiktok/micro")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--evaluation", choices=["published", "micro", "mmrec"],
                        default="published", help="published: each model's own defaults "
                        "(MICRO's convention for micro and lightgcn, MMRec's schedule for "
                        "freedom and lattice); micro or mmrec: that convention for every run")
    args = parser.parse_args(argv)
    root = Path(args.data_root)
    if not root.exists():
        print(f"skipped: {root} not found")
        return 0
    results = []
    for data, model, extra in RUNS:
        if args.only and args.only != f"{data}/{model}":
            continue
        folder = root / data
        if not folder.exists():
            print(f"skipped {data}/{model}: {folder} not found")
            continue
        dataset = load(folder)
        extra = dict(extra)
        if args.evaluation != "published":
            extra["evaluation"] = args.evaluation
        config = TrainConfig.for_model(extra.pop("model", "micro"), data=str(folder),
                                       epochs=args.epochs, progress=False,
                                       out=f"{args.out}/{data}-{model}", threads=args.threads,
                                       **extra)
        t0 = time.perf_counter()
        summary = train(config, dataset=dataset, overwrite=True)  # this script owns --out
        wall = time.perf_counter() - t0
        test = summary["test_at_best"] or {}
        ended = "early stopping" if summary["stopped_early"] else f"epoch cap {args.epochs}"
        row = {"data": data, "model": model, "modalities": summary["modalities"],
               "best_epoch": summary["best_epoch"], "epochs_run": summary["epochs_run"],
               "ended_by": ended, "test_recall@20": test.get("recall@20"),
               "test_ndcg@20": test.get("ndcg@20"), "wall_s": round(wall, 1)}
        results.append(row)
        print(json.dumps(row), flush=True)
    print("\n| data | model | best epoch | epochs run (ended by) | test Recall@20 | "
          "test NDCG@20 | wall |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        rec = "-" if r["test_recall@20"] is None else f"{r['test_recall@20']:.4f}"
        ndcg = "-" if r["test_ndcg@20"] is None else f"{r['test_ndcg@20']:.4f}"
        print(f"| {r['data']} | {r['model']} | {r['best_epoch']} | {r['epochs_run']} "
              f"({r['ended_by']}) | {rec} | {ndcg} | {r['wall_s']} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
