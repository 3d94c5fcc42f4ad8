"""Command line: ``micro-fast train | eval | make-data | bench | tune | info``."""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

from micro_fast.errors import InputError, MicroFastError, MissingFileError


def _info(_args: argparse.Namespace) -> int:
    import torch

    import micro_fast
    from micro_fast import backends, dispatch, tuning
    from micro_fast.backends import cpp

    print(f"micro_fast {micro_fast.__version__}")
    print(f"cpu: {tuning.cpu_name()}, {os.cpu_count()} logical CPUs")
    print(f"python {platform.python_version()}, torch {torch.__version__}, "
          f"platform {platform.platform()}")
    try:
        import numba

        numba_version = numba.__version__
    except ImportError:
        numba_version = "not installed"
    print(f"numba {numba_version}")
    print(f"threads: torch {torch.get_num_threads()}")
    if torch.cuda.is_available():
        print(f"device: cuda ({torch.cuda.get_device_name(0)}, "
              f"{torch.cuda.device_count()} visible)")
    else:
        print("device: cpu (no CUDA device visible to torch)")
    print(f"cpp SIMD kernels: {cpp.simd_isa()}" + (
        f" (of {', '.join(cpp.supported_isas())} on this CPU)" if cpp.simd_isa() != "none"
        else ""))
    print("backends (auto order):")
    for name, why in backends.status().items():
        print(f"  {name:<10} {why}")
    for line in tuning.describe():
        print(line)
    for index in _tunable_gpus():
        for line in tuning.describe(device=f"cuda:{index}"):
            print(line)
    for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        for line in dispatch.describe(device):
            print(line)
    return 0


def _tunable_gpus() -> list[int]:
    """The CUDA devices whose backend choice can be measured here, one per GPU model."""
    import torch

    from micro_fast import tuning

    if not tuning._measurable(torch.device("cuda")):
        return []
    seen, out = set(), []
    for index in range(torch.cuda.device_count()):
        model = torch.cuda.get_device_name(index)
        if model not in seen:
            seen.add(model)
            out.append(index)
    return out


def _tune(args: argparse.Namespace) -> int:
    import torch

    from micro_fast import tuning
    from micro_fast.backends import cpp

    if args.threads:
        torch.set_num_threads(args.threads)
    if cpp.simd_isa() == "none":
        print("micro-fast tune: the compiled core (micro_fast._C) is not available here; "
              "nothing to tune", file=sys.stderr)
        return 2
    if not tuning.enabled():
        print("micro-fast tune: MICRO_FAST_TUNE=0 turns tuning off; unset it to tune",
              file=sys.stderr)
        return 2
    isas = cpp.supported_isas() if args.all_isas else [cpp.simd_isa()]
    busy = False
    try:
        for isa in isas:
            cpp.set_simd_isa(isa)
            print(f"calibrating {isa}, {torch.get_num_threads()} threads ...", flush=True)
            entry = tuning.calibrate(write=True, log=lambda line: print(f"  {line}",
                                                                         flush=True))
            print("\n".join(tuning.describe(entry)))
            busy = busy or bool(entry.get("busy"))
    finally:
        cpp.set_simd_isa("auto")
    for index in _tunable_gpus():
        print(f"calibrating cuda:{index} ...", flush=True)
        entry = tuning.calibrate(write=True, device=f"cuda:{index}",
                                 log=lambda line: print(f"  {line}", flush=True))
        print("\n".join(tuning.describe(entry, device=f"cuda:{index}")))
        busy = busy or bool(entry.get("busy"))
    if busy:
        print("micro-fast tune: the machine was busy (see above); run it again when it is idle",
              file=sys.stderr)
        return 3
    return 0


def _file_options(args: argparse.Namespace, allowed: tuple[str, ...] | None = None) -> dict:
    """The options of ``--config FILE`` (none without one), checked."""
    from micro_fast.config import canonical_options, read_config_file

    if args.config is None:
        return {}
    return canonical_options(read_config_file(args.config), f"--config {args.config}", allowed)


def _train(args: argparse.Namespace) -> int:
    from micro_fast.train import TrainConfig, train

    # precedence: TrainConfig's defaults < the model's < the evaluation convention's < the
    # config file < the command line
    options = _file_options(args)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    options.update({k: v for k, v in vars(args).items() if k in fields and v is not None})
    if args.quiet:
        options["progress"] = False
    train(TrainConfig.layered(options), resume=args.resume, overwrite=args.overwrite)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from micro_fast.config import EVAL_KEYS
    from micro_fast.train import evaluate_run

    options = _file_options(args, EVAL_KEYS)
    if args.device is not None:
        options["device"] = args.device
    if args.checkpoint is not None:
        options["checkpoint"] = args.checkpoint
    checkpoint = options.pop("checkpoint", "best")
    if checkpoint not in ("best", "last"):
        raise InputError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    result = evaluate_run(args.run_dir, checkpoint=checkpoint, overrides=options)
    for split in ("valid", "test"):
        m = result[split]
        print(f"{split}: " + " ".join(f"{k} {v:.4f}" for k, v in m.items() if k != "users")
              + f" ({m['users']} users)")
    return 0


def _make_data(args: argparse.Namespace) -> int:
    from micro_fast import data

    ds = data.from_spec(args.spec, seed=args.seed)
    writer = data.save_micro if args.format == "micro" else data.save_mmrec
    writer(ds, args.out)
    print(f"wrote {ds.name} ({ds.n_users} users, {ds.n_items} items, {ds.n_train} train "
          f"interactions, modalities {list(ds.features)}) to {args.out} ({args.format} layout)")
    return 0


BENCH_OPS = {"knn": ["bench_knn.py"], "spmm": ["bench_spmm.py"],
             "contrastive": ["bench_contrastive.py"], "train": ["bench_train.py"]}


def bench_suite_dir() -> Path:
    """The benchmark suite: installed as ``micro_fast.benchmarks``, or a source checkout's
    ``benchmarks/``."""
    import importlib.util

    spec = importlib.util.find_spec("micro_fast.benchmarks")
    candidates = list(spec.submodule_search_locations or []) if spec else []
    candidates.append(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    for c in candidates:
        if (Path(c) / "bench_knn.py").exists():
            return Path(c)
    raise MissingFileError("the benchmark suite was not found (install micro-fast from a "
                            "wheel or source checkout that includes benchmarks/)")


def _load_report(suite: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("micro_fast_bench_report", suite / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench(args: argparse.Namespace) -> int:
    import json
    import subprocess

    suite = bench_suite_dir()
    report = _load_report(suite)
    if args.compare:
        old, new = (json.loads(Path(p).read_text()) for p in args.compare)
        print(report.compare(old, new), end="")
        return 0
    try:
        import pytest_benchmark  # noqa: F401
    except ImportError:
        print("micro-fast bench needs pytest-benchmark: pip install 'micro-fast[bench]'",
              file=sys.stderr)
        return 2
    ops = [o for o in args.ops.split(",") if o]
    unknown = sorted(set(ops) - set(BENCH_OPS))
    if unknown:
        print(f"unknown --ops {unknown}; choose from {sorted(BENCH_OPS)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = [str(suite / f) for o in ops for f in BENCH_OPS[o]]
    results = out / "results.json"
    cmd = [sys.executable, "-m", "pytest", *files, "--benchmark-only", "-q",
           f"--bench-size={args.size}", f"--bench-isa={args.isa}",
           f"--benchmark-json={results}", "-p", "no:cacheprovider",
           "--rootdir", str(suite)]
    print("+ " + " ".join(cmd), flush=True)
    env = dict(os.environ, MICRO_FAST_BENCH_THREADS=str(args.threads)) if args.threads \
        else None
    proc = subprocess.run(cmd, cwd=suite, env=env)
    if proc.returncode != 0 or not results.exists():
        print(f"the benchmark run failed (exit {proc.returncode})", file=sys.stderr)
        return proc.returncode or 1
    threads = args.threads or int(os.environ.get("MICRO_FAST_BENCH_THREADS", "2"))
    machine = report.machine_info()
    machine["threads"] = threads
    machine["size"] = args.size
    ceil = report.ceilings(threads)
    data = json.loads(results.read_text())
    (out / "machine.json").write_text(json.dumps({"machine": machine, "ceilings": ceil},
                                                 indent=2))
    path = report.write_report(data, out, machine, ceil,
                               title=f"micro_fast benchmarks ({args.size})")
    print(f"wrote {path}, the plots beside it and {results}")
    flags = report.slower_than_simpler(data)
    if flags:
        print(f"{len(flags)} case(s) slower than a simpler path on this machine:")
        for line in flags:
            print(f"  {line}")
    return 0


def _add_train_args(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("--model", choices=["micro", "freedom", "lattice", "lightgcn"],
      help="micro (default), freedom or lattice (as MMRec computes them) or lightgcn; each "
      "with its published defaults, which the other options override")
    a("--data", help="dataset folder, 'synthetic' or 'synthetic:<size>' "
                     "(tiny, small, medium, baby, clothing); default synthetic (tiny)")
    a("--format", choices=["auto", "micro", "mmrec"], help="layout of a dataset folder")
    a("--out", help="run directory (default runs/micro)")
    a("--config", metavar="FILE", help="YAML or JSON file of options (keys are the option "
      "names, e.g. a run's config.json); options given here override it")
    a("--resume", action="store_true", help="continue the run in --out from its last.pt")
    a("--overwrite", action="store_true", help="delete the run files in a non-empty --out "
      "first (without --resume or --overwrite, a non-empty --out is refused)")
    a("--epochs", type=int)
    a("--batch-size", dest="batch_size", type=int)
    a("--lr", type=float)
    a("--seed", type=int)
    a("--eval-every", dest="eval_every", type=int, help="evaluate every N epochs and after "
      "the last one (5); 0: never")
    a("--patience", type=int, help="evaluations without improvement before stopping (10)")
    a("--ks", type=lambda s: tuple(int(x) for x in s.split(",")), help="e.g. 10,20,50")
    a("--ndcg", choices=["standard", "published"])
    a("--evaluation", choices=["micro", "mmrec"], help="micro (default: validation every "
      "--eval-every epochs, test when it improves) or mmrec (MMRec's trainer: validation and "
      "test every epoch, patience 20, standard NDCG, ks 5,10,20,50)")
    a("--modalities", type=lambda s: tuple(x for x in s.split(",") if x),
      help="comma-separated subset; '' for none (plain LightGCN)")
    a("--dim", type=int)
    a("--feat-dim", dest="feat_dim", type=int)
    a("--k", type=int, help="kNN neighbours (10)")
    a("--lambda", dest="lambda_coeff", type=float, help="weight of the original graph (0.9)")
    a("--knn-normalization", dest="knn_normalization", choices=["sym", "rw", "none"])
    a("--item-layers", dest="item_layers", type=int)
    a("--ui-layers", dest="ui_layers", type=int)
    a("--ui-normalization", dest="ui_normalization", choices=["published", "sym", "mmrec"])
    a("--dropout", type=float, help="freedom: share of interactions pruned each epoch (0.8)")
    a("--image-weight", dest="image_weight", type=float,
      help="freedom: weight of the image kNN graph in the item graph (0.1)")
    a("--contrastive-weight", dest="contrastive_weight", type=float,
      help="0 gives the LATTICE-style variant (0.03)")
    a("--tau", type=float)
    a("--reg-weight", dest="reg_weight", type=float)
    a("--device", help="cpu, cuda or auto (default)")
    a("--backend", choices=["auto", "cuda", "numba_cuda", "cpp", "numba", "torch_ref"])
    a("--threads", type=int, help="torch/OpenMP threads")
    a("--dist-timeout", dest="dist_timeout", type=float,
      help="under torchrun: seconds a rank waits for the others before failing (600)")
    a("--compile", action="store_const", const=True, default=None,
      help="torch.compile the training loss (fullgraph; one process)")
    a("--quiet", action="store_true", help="no progress output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="micro-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="version, backends found (and why one is missing), "
                                       "threads, device")
    info.set_defaults(func=_info)
    tr = sub.add_parser("train", help="train MICRO, FREEDOM, LATTICE or LightGCN with "
                                      "published defaults")
    _add_train_args(tr)
    tr.set_defaults(func=_train)
    ev = sub.add_parser("eval", help="re-evaluate a run's checkpoint on validation and test")
    ev.add_argument("run_dir")
    ev.add_argument("--checkpoint", choices=["best", "last"], default=None,
                    help="which checkpoint (best)")
    ev.add_argument("--device", default=None)
    ev.add_argument("--config", metavar="FILE", help="YAML or JSON file overriding the run's "
                    "evaluation options (data, format, ks, ndcg, device, backend, threads, "
                    "checkpoint); options given here override it")
    ev.set_defaults(func=_eval)
    md = sub.add_parser("make-data", help="write a synthetic dataset to disk")
    md.add_argument("spec", nargs="?", default="synthetic",
                    help="'synthetic' or 'synthetic:<size>'")
    md.add_argument("--out", required=True, help="folder to write")
    md.add_argument("--format", choices=["micro", "mmrec"], default="micro")
    md.add_argument("--seed", type=int, default=0)
    md.set_defaults(func=_make_data)
    be = sub.add_parser("bench", help="run the benchmark suite and write a report with plots")
    be.add_argument("--size", choices=["small", "paper", "large"], default="small",
                    help="small: about 2 minutes on 2 cores; paper: the published datasets; "
                         "large: 200,000 items")
    be.add_argument("--ops", default=",".join(BENCH_OPS),
                    help=f"comma-separated subset of {','.join(BENCH_OPS)}")
    be.add_argument("--isa", default="all", help="instruction sets of the compiled cases: "
                    "all (every one this CPU runs, default), best, or a comma list such as "
                    "avx2,generic")
    be.add_argument("--out", default="bench-results", help="folder for BENCHMARKS.md, "
                    "the PNG plots and results.json")
    be.add_argument("--threads", type=int, default=None, help="threads (default 2, as the "
                    "suite's MICRO_FAST_BENCH_THREADS)")
    be.add_argument("--compare", nargs=2, metavar=("OLD_JSON", "NEW_JSON"),
                    help="print a regression table of two results.json files and exit")
    be.set_defaults(func=_bench)
    tu = sub.add_parser("tune", help="measure which equivalent kernels are fastest on this "
                                     "machine and cache the choice (see micro_fast.tuning)")
    tu.add_argument("--threads", type=int, default=None, help="threads to tune for (default: "
                    "torch's)")
    tu.add_argument("--all-isas", action="store_true", help="also tune the other instruction "
                    "sets this CPU runs (used when one is forced with MICRO_FAST_SIMD)")
    tu.set_defaults(func=_tune)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        # the reader went away (`micro-fast info | head -3`): stop quietly, as a pipe stage
        # should; stdout goes to devnull so that the interpreter's final flush cannot fail too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except MicroFastError as exc:
        from micro_fast.distributed import CollectiveError

        if isinstance(exc, CollectiveError):
            # under torchrun: another rank died or stalled; say so instead of hanging
            print(f"micro-fast {args.command}: error: {exc}", file=sys.stderr)
            return 1
        # bad data, options or paths: one line naming the problem, not a traceback (any other
        # exception is a bug and keeps its traceback)
        print(f"micro-fast {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
