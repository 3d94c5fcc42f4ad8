"""Summarize a pytest-benchmark JSON file as markdown tables: per group, each case's median
time, its ratio to the fastest case of the group and to every peer, peak extra memory and
effective throughput.

    python benchmarks/report.py results.json [--peers official,faiss,...]
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

PEERS = ("official", "blocked_torch", "faiss", "sklearn", "torch_coo", "torch_csr", "scipy_csr",
         "published", "published_compiled")


def case_name(bench: dict) -> str:
    info = bench.get("extra_info", {})
    return info.get("impl") or info.get("backend") or info.get("op") or bench["name"]


def summarize(data: dict) -> str:
    groups: dict[str, list[dict]] = defaultdict(list)
    for b in data["benchmarks"]:
        groups[b.get("group") or ""].append(b)
    lines = []
    for group, benches in groups.items():
        benches.sort(key=lambda b: b["stats"]["median"])
        peers = {case_name(b): b["stats"]["median"] for b in benches
                 if case_name(b) in PEERS}
        lines.append(f"\n### {group}\n")
        head = "| case | median (s) | min (s) | rounds | peak extra (MiB) | rate |"
        head += "".join(f" vs {p} |" for p in peers)
        lines.append(head)
        lines.append("|" + "---|" * (6 + len(peers)))
        for b in benches:
            info, st = b.get("extra_info", {}), b["stats"]
            label = case_name(b)
            if info.get("op") and info.get("op") not in (label,):
                label = f"{label} ({info['op']})"
            peak = info.get("peak_extra_mb")
            rate = ""
            if info.get("flop"):
                rate = f"{info['flop'] / st['median'] / 1e9:.0f} GFLOP/s"
            elif info.get("bytes"):
                rate = f"{info['bytes'] / st['median'] / 1e9:.0f} GB/s"
                if info.get("copy_gbps"):
                    rate += f" (copy {info['copy_gbps']:.0f})"
            row = (f"| {label} | {st['median']:.4g} | {st['min']:.4g} | {st['rounds']} | "
                   f"{'' if peak is None else f'{peak:.0f}'} | {rate} |")
            row += "".join(f" {t / st['median']:.2f}x |" for t in peers.values())
            lines.append(row)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("json_file")
    args = parser.parse_args()
    with open(args.json_file) as fh:
        print(summarize(json.load(fh)))


if __name__ == "__main__":
    main()
