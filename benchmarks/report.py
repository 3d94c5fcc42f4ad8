"""Turn a pytest-benchmark JSON file into BENCHMARKS.md and plots, or compare two runs.

    python benchmarks/report.py results.json [--out DIR]     # DIR/BENCHMARKS.md + DIR/*.png
    python benchmarks/report.py --compare old.json new.json   # regression table

Per group (one op at one size): each case's median time, its warm-up calls and timed rounds
(every case of a group must have the same: a group where they differ is listed under "Unequal
timing"), its cold first call, its speedup over every peer of the group, peak extra memory
and achieved throughput: GFLOP/s from the multiply-adds the implementation performs
(``extra_info["flop"]``, benchmarks/work.py) or GB/s of the bytes it must move, each as a
share of the GEMM and copy ceilings measured in the same run. Nothing is extrapolated. The
report opens with the provenance header (machine, date, commit; benchmarks/provenance.py).
Plots: time vs size per implementation, log-log, one PNG per op family.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time
from collections import defaultdict
from pathlib import Path

PEERS = ("official", "blocked_torch", "faiss", "sklearn", "torch_coo", "torch_csr", "scipy_csr",
         "published", "published_compiled", "reference", "dense_torch")


def case_name(bench: dict) -> str:
    info = bench.get("extra_info", {})
    name = info.get("impl") or info.get("backend") or info.get("op") or bench["name"]
    op = info.get("op")
    if op and op != name and name not in PEERS and op not in ("spmm", "contrastive", "eval",
                                                               "train_epoch"):
        name = f"{name} ({op})"
    return name


def case_time(bench: dict) -> tuple[float, bool]:
    """(median seconds, False) of a case (the second item is kept for old callers: no time is
    extrapolated)."""
    return float(bench["stats"]["median"]), False


def timing_of(bench: dict) -> tuple[int | None, int]:
    """(warm-up calls, timed rounds) of a case."""
    return bench.get("extra_info", {}).get("warmup"), int(bench["stats"]["rounds"])


def unequal_timing(data: dict) -> list[str]:
    """One line per group whose cases did not all get the same warm-up and rounds."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for b in timed(data):
        groups[b.get("group") or ""].append(b)
    out = []
    for group, benches in sorted(groups.items()):
        seen = {timing_of(b) for b in benches}
        if len(seen) > 1:
            shown = ", ".join(f"{case_name(b)}: {timing_of(b)[0]} warm-up + "
                              f"{timing_of(b)[1]} rounds" for b in benches)
            out.append(f"{group}: {shown}")
    return out


def timed(data: dict) -> list[dict]:
    return [b for b in data["benchmarks"] if not b.get("extra_info", {}).get("check")]


# How specialized a case is: a flag is raised where a case is slower than a less specialized
# one of the same group (a compiled kernel slower than numba or plain torch, the AVX2 build
# slower than the portable one, the fused fusion loss slower than the separate losses).
_ISA_RANK = {"generic": 2, "avx2": 3, "avx512": 4}
_PLAIN = ("torch_ref", "torch_coo", "torch_csr", "scipy_csr", "blocked_torch", "dense_torch",
          "published", "official")


def specialization(bench: dict) -> float | None:
    """Rank of a case (higher: more specialized), ``None`` for cases outside the ranking
    (FAISS, scikit-learn, compiled peers, the auto picks)."""
    info = bench.get("extra_info", {})
    name = info.get("impl") or info.get("backend") or ""
    base = name.split("[", 1)[0]
    if base in _PLAIN:
        return 0.0
    if base == "numba":
        return 1.0
    if base in ("cpp", "cpp_separate", "cpp_fused") and info.get("isa") in _ISA_RANK:
        return _ISA_RANK[info["isa"]] + (0.5 if base == "cpp_fused" else 0.0)
    return None


def slower_than_simpler(data: dict, tolerance: float = 0.05) -> list[str]:
    """One line per case that is more specialized than another case of its group but slower
    by more than ``tolerance``."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for b in timed(data):
        if specialization(b) is not None:
            groups[b.get("group") or ""].append(b)
    out = []
    for group, benches in sorted(groups.items()):
        for b in benches:
            rank, t = specialization(b), case_time(b)[0]
            simpler = [(case_time(o)[0], case_name(o)) for o in benches
                       if specialization(o) < rank and case_time(o)[0] * (1 + tolerance) < t]
            if simpler:
                t_o, name_o = min(simpler)
                out.append(f"{group}: {case_name(b)} {t:.4g} s is slower than {name_o} "
                           f"{t_o:.4g} s ({t / t_o:.2f}x)")
    return out


def machine_info() -> dict:
    """CPU, threads, library versions and GPU of this process's machine."""
    import torch

    import micro_fast
    from micro_fast.backends import cpp

    cpu = micro_fast.tuning.cpu_name()
    try:
        import numba

        numba_version = numba.__version__
    except ImportError:
        numba_version = "not installed"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    git = _provenance().git_state()
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "simd": cpp.simd_isa(), "simd_supported": ",".join(cpp.supported_isas()),
            "gpu": gpu, "python": platform.python_version(),
            "torch": torch.__version__, "numba": numba_version,
            "micro_fast": micro_fast.__version__,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "commit": git["commit"], "dirty": git["dirty"]}


def _provenance():
    """benchmarks/provenance.py, wherever the suite lives (a checkout or the wheel)."""
    import importlib.util
    import sys

    if "provenance" in sys.modules:
        return sys.modules["provenance"]
    spec = importlib.util.spec_from_file_location(
        "provenance", Path(__file__).resolve().parent / "provenance.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["provenance"] = module
    spec.loader.exec_module(module)
    return module


def ceilings(threads: int | None = None) -> dict:
    """Measured GEMM (float32 torch.mm, 2048^3) and copy (256 MB) rates of this machine."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    src = torch.ones(64 * 2**20)
    dst = torch.empty_like(src)
    dst.copy_(src)
    copy = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        dst.copy_(src)
        copy = min(copy, time.perf_counter() - t)
    return {"gemm_gflops": 2 * 2048**3 / best / 1e9, "copy_gbps": 2 * src.numel() * 4 / copy / 1e9}


def _rate(info: dict, seconds: float, ceil: dict | None) -> str:
    if info.get("flop"):
        g = info["flop"] / seconds / 1e9
        share = f" ({100 * g / ceil['gemm_gflops']:.0f}% of GEMM)" if ceil else ""
        return f"{g:.0f} GFLOP/s{share}"
    if info.get("bytes"):
        g = info["bytes"] / seconds / 1e9
        ref = ceil["copy_gbps"] if ceil else info.get("copy_gbps")
        return f"{g:.0f} GB/s" + (f" ({100 * g / ref:.0f}% of copy)" if ref else "")
    return ""


def summarize(data: dict, machine: dict | None = None, ceil: dict | None = None) -> str:
    lines = []
    if machine:
        lines.append("| machine | |\n|---|---|")
        lines += [f"| {k} | {v} |" for k, v in machine.items()]
    if ceil:
        lines.append(f"\nCeilings measured in this run: GEMM {ceil['gemm_gflops']:.0f} GFLOP/s "
                     f"(float32 torch.mm 2048^3), copy {ceil['copy_gbps']:.0f} GB/s (read + "
                     "write). Rates count the multiply-adds each implementation performs "
                     "(benchmarks/work.py: the symmetric kernels compute each block pair "
                     "once), so a kernel above 100% of GEMM does its own work faster than "
                     "torch.mm runs a GEMM here, it is not credited with work it skips.")
    groups: dict[str, list[dict]] = defaultdict(list)
    for b in timed(data):
        groups[b.get("group") or ""].append(b)
    for group in sorted(groups):
        benches = sorted(groups[group], key=lambda b: case_time(b)[0])
        peers = {case_name(b): case_time(b)[0] for b in benches if case_name(b) in PEERS}
        lines.append(f"\n### {group}\n")
        head = ("| case | median (s) | warm-up + rounds | cold call (s) | peak extra (MiB) "
                "| rate |")
        head += "".join(f" vs {p} |" for p in peers)
        lines.append(head)
        lines.append("|" + "---|" * (6 + len(peers)))
        for b in benches:
            info = b.get("extra_info", {})
            seconds, _ = case_time(b)
            peak = info.get("peak_extra_mb")
            warm, rounds = timing_of(b)
            cold = info.get("first_call_s")
            row = (f"| {case_name(b)} | {seconds:.4g} | {warm} + {rounds} | "
                   f"{'' if cold is None else f'{cold:.4g}'} | "
                   f"{'' if peak is None else f'{peak:.0f}'} | {_rate(info, seconds, ceil)} |")
            row += "".join(f" {p / seconds:.2f}x |" for p in peers.values())
            lines.append(row)
    notes = _train_notes(data)
    if notes:
        lines.append("\n### Training epochs\n")
        lines += notes
    unequal = unequal_timing(data)
    lines.append("\n### Unequal timing\n")
    if unequal:
        lines += [f"- {u}" for u in unequal]
    else:
        lines.append("None: in every group each case had the same warm-up calls and timed "
                     "rounds.")
    flags = slower_than_simpler(data)
    lines.append("\n### Slower than a simpler path\n")
    if flags:
        lines += [f"- {f}" for f in flags]
    else:
        lines.append("None: every compiled or fused case is at least as fast as the less "
                     "specialized cases of its group (within 5%).")
    return "\n".join(lines) + "\n"


def _train_notes(data: dict) -> list[str]:
    """Per timed training epoch: batches, the rebuilding first batch, the median of the others
    and the optimizer."""
    out = []
    for b in timed(data):
        info = b.get("extra_info", {})
        if info.get("op") != "train_epoch":
            continue
        other = info.get("other_batch_median_s")
        out.append(f"- {b.get('group')}: {case_name(b)}: {info.get('n_batches')} of "
                   f"{info.get('epoch_batches')} batches timed"
                   + (" (the whole epoch)" if info.get("whole_epoch") else "")
                   + f", first (rebuilding) {info.get('first_batch_s', 0):.3f} s, the others "
                   + ("-" if other is None else f"{other:.3f} s")
                   + f" median; optimizer {info.get('optimizer')}")
    return out


def _family(b: dict) -> str:
    info = b.get("extra_info", {})
    op = info.get("op", "")
    if op in ("knn_graph", "topk_similarity", "official", "blocked_torch", "faiss", "sklearn"):
        return f"knn d={info.get('d')}"
    if op == "spmm":
        return f"spmm {info.get('graph')} d={info.get('d')} {info.get('mode')}"
    if op == "contrastive":
        return f"contrastive d={info.get('d')} {info.get('mode')}"
    return op or "other"


def plot(data: dict, out: Path) -> list[Path]:
    """Time vs size per implementation (log-log), one PNG per op family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
    for b in timed(data):
        n = b.get("extra_info", {}).get("n")
        if n is None:
            continue
        fams[_family(b)][case_name(b)].append((int(n), case_time(b)[0]))
    paths = []
    for fam, lines in sorted(fams.items()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, pts in sorted(lines.items()):
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("items / nodes (N)")
        ax.set_ylabel("time (s)")
        ax.set_title(fam)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out / (re.sub(r"[^A-Za-z0-9]+", "_", fam).strip("_") + ".png")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def write_report(data: dict, out: Path, machine: dict | None = None,
                 ceil: dict | None = None, title: str = "Benchmarks") -> Path:
    out.mkdir(parents=True, exist_ok=True)
    pngs = plot(data, out)
    prov = _provenance()
    run = data.get("machine_info", {})
    extra = {}
    start = run.get("ceilings_at_session_start")
    if ceil and start:
        ceil = {k: max(v, start.get(k, 0.0)) for k, v in ceil.items()}
    if run.get("load_average_at_session_start") is not None:  # the suite's, not this process's
        extra["load_average_at_start"] = run["load_average_at_session_start"]
    if run.get("session_start_unix"):
        extra["started"] = time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                         time.gmtime(run["session_start_unix"]))
        extra["elapsed_s"] = round(time.time() - run["session_start_unix"], 1)
    record = prov.record((machine or {}).get("threads"), **extra)
    (out / "provenance.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    text = prov.markdown_header(record, title) + "\n" + summarize(data, machine, ceil)
    if ceil and start:
        text = text.replace("Ceilings measured in this run:", "Ceilings measured in this run "
                            "(the faster of the measurements before and after the cases):", 1)
    if pngs:
        text += "\n## Plots\n\n" + "\n".join(f"![{p.stem}]({p.name})" for p in pngs) + "\n"
    path = out / "BENCHMARKS.md"
    path.write_text(text)
    return path


def compare(old: dict, new: dict, threshold: float = 0.10) -> str:
    """Per case present in both runs: old and new time, new/old, and a flag past threshold."""
    before = {b["fullname"]: b for b in timed(old)}
    lines = ["| case | old (s) | new (s) | new / old | |", "|---|---|---|---|---|"]
    for b in timed(new):
        a = before.get(b["fullname"])
        if a is None:
            continue
        t0, t1 = case_time(a)[0], case_time(b)[0]
        ratio = t1 / t0
        flag = ("slower" if ratio > 1 + threshold else "faster" if ratio < 1 - threshold
                else "")
        lines.append(f"| {b['fullname']} | {t0:.4g} | {t1:.4g} | {ratio:.2f} | {flag} |")
    missing = sorted(set(before) - {b["fullname"] for b in timed(new)})
    if missing:
        lines.append(f"\nOnly in the old run: {', '.join(missing)}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json_file", nargs="?")
    parser.add_argument("--out", default=None, help="write BENCHMARKS.md and PNGs here")
    parser.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"))
    args = parser.parse_args(argv)
    if args.compare:
        old, new = (json.loads(Path(p).read_text()) for p in args.compare)
        print(compare(old, new))
        return
    if not args.json_file:
        parser.error("a results JSON file (or --compare OLD NEW) is required")
    data = json.loads(Path(args.json_file).read_text())
    if args.out:
        print(write_report(data, Path(args.out)))
    else:
        print(summarize(data))


if __name__ == "__main__":
    main()
