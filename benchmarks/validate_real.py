"""Training on real data: LightGCN on Amazon Baby (interactions only), and MICRO, the
LATTICE-style variant (no contrastive loss), LightGCN, FREEDOM and LATTICE (as MMRec computes
them) on TikTok (real image and audio features), each with its published defaults. Prints
Recall/NDCG@20 on the test split at the best validation epoch.

    python benchmarks/validate_real.py [--data-root ../shared/data] [--epochs N]
        [--only tiktok/freedom] [--evaluation mmrec]

Skips (exit 0) when the data folder is absent, unless ``--require-data`` (then exit 2: a
results run must not pass without its data). The published schedule allows up to 1000 epochs
with early stopping after 10 evaluations without improvement; ``--epochs`` caps a run (the
printout says when the cap, not early stopping, ended it). ``--artifact NAME`` writes the table
as NAME.md + NAME.json with the provenance header (benchmarks/provenance.py).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import provenance  # noqa: E402

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
    parser.add_argument("--require-data", action="store_true",
                        help="a missing data folder is an error (exit 2), not a skip")
    provenance.add_output_args(parser)
    args = parser.parse_args(argv)
    root = Path(args.data_root)
    if not root.exists():
        print(f"{'error' if args.require_data else 'skipped'}: {root} not found")
        return 2 if args.require_data else 0
    results = []
    for data, model, extra in RUNS:
        if args.only and args.only != f"{data}/{model}":
            continue
        folder = root / data
        if not folder.exists():
            print(f"{'error' if args.require_data else 'skipped'} {data}/{model}: {folder} "
                  "not found")
            if args.require_data:
                return 2
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
    if args.only and not results:
        print(f"error: --only {args.only} matches no run")
        return 2
    lines = [f"Evaluation: {args.evaluation}; up to {args.epochs} epochs; test metrics at the "
             "best validation epoch; one run each", "",
             "| data | model | best epoch | epochs run (ended by) | test Recall@20 | "
             "test NDCG@20 | wall |", "|---|---|---|---|---|---|---|"]
    for r in results:
        rec = "-" if r["test_recall@20"] is None else f"{r['test_recall@20']:.4f}"
        ndcg = "-" if r["test_ndcg@20"] is None else f"{r['test_ndcg@20']:.4f}"
        lines.append(f"| {r['data']} | {r['model']} | {r['best_epoch']} | {r['epochs_run']} "
                     f"({r['ended_by']}) | {rec} | {ndcg} | {r['wall_s']} s |")
    text = "\n".join(lines)
    print("\n" + text)
    if args.artifact:
        md, js = provenance.write_artifact(
            args.artifact, "Training on real data (validate_real.py)", text,
            {"evaluation": args.evaluation, "epochs_cap": args.epochs, "runs": results},
            args.results_dir, threads=args.threads)
        print(f"wrote {md} and {js}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
