"""The bookkeeping of the GPU check (gpu_check.sh): the machine record, the compute-sanitizer
log parser and REPORT.md.

    python benchmarks/gpu_report.py machine --out machine.json
    python benchmarks/gpu_report.py sanitizer LOG [--json OUT.json]   # prints "<errors> <status>"
    python benchmarks/gpu_report.py selftest                          # the parser on canned logs
    python benchmarks/gpu_report.py targets bench.json                # targets met / missed
    python benchmarks/gpu_report.py report --out OUT --work WORK [--summary]

``sanitizer`` reads a compute-sanitizer log: the error count of its last ``ERROR SUMMARY`` line
(``RACECHECK SUMMARY`` when that is all there is), the kernels and API calls the reports name
(a kernel of ``micro_fast``, compiled or numba, is marked as ours) and whether the tool could
run at all. A log without a summary (the run was stopped) gives the reports seen so far, as a
lower bound.

``report`` writes ``OUT/REPORT.md`` from what the check left: ``OUT/stages.tsv`` (stage, status,
seconds, exit code, timeout, note), ``WORK/machine.json``, ``WORK/info.txt``, the tables
``WORK/bench.md`` and ``WORK/epoch.md`` of gpu_bench.py and gpu_epoch.py, the parsed sanitizer
logs ``WORK/sanitize_<tool>.json`` and the JUnit file ``OUT/tests.xml``. Whatever is missing is
named as missing: the report shows only what this run measured. ``--summary`` prints a short
summary on stdout.

This module imports torch only in ``machine``, so the report can be written however broken the
environment is.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

# --- compute-sanitizer logs ------------------------------------------------------------------

_PREFIX = re.compile(r"^=+\s?")
_ERROR_SUMMARY = re.compile(r"ERROR SUMMARY:\s*(\d+)\s+errors?")
_RACE_SUMMARY = re.compile(r"RACECHECK SUMMARY:\s*(\d+)\s+hazards?\s+displayed\s+"
                           r"\((\d+)\s+errors?,\s*(\d+)\s+warnings?\)")
# the first line of one report
_REPORT_START = re.compile(r"^(Invalid |Error: |Race reported|Barrier error|Uninitialized |"
                           r"Program hit |Malloc/Free error|Leaked |Misaligned |Out-of-range |"
                           r"Cuda API error)")
# "at 0x70 in kernel(int*)", "at kernel(int*)+0x70 in file.cu:6", "at 0x70 in file.cu:6:kernel()"
_AT = re.compile(r"\bat\s+(?:0x[0-9a-fA-F]+\s+in\s+)?(?:\S+?:\d+:)?"
                 r"([A-Za-z_$][\w$:<>, *&]*?)\s*(?:\(|\+0x|$)")
_API = re.compile(r"Program hit (\w+).*?on CUDA API call to (\w+)")
_TOOL_FAILED = ("Device not supported", "Unable to find injection library",
                "Target application terminated before first instrumented API call",
                "No attachable process found", "Could not find", "Error: Failed to")


def parse_sanitizer(text: str) -> dict:
    """What a compute-sanitizer log says: ``errors`` (int, or None when the tool did not
    run), ``status`` (``clean``, ``errors``, ``no summary``, ``tool failed``, ``empty``),
    ``ours`` / ``other`` (reports by kernel or API call) and the summary lines."""
    lines = [_PREFIX.sub("", raw.rstrip()) for raw in text.splitlines()
             if raw.startswith("=")]
    summaries = [int(m.group(1)) for line in lines if (m := _ERROR_SUMMARY.search(line))]
    races = [m for line in lines if (m := _RACE_SUMMARY.search(line))]
    ours: dict[str, int] = {}
    other: dict[str, int] = {}
    reports = 0
    for i, line in enumerate(lines):
        if not _REPORT_START.match(line) or any(f in line for f in _TOOL_FAILED):
            continue
        reports += 1
        api = _API.search(line)
        if api:
            where = f"API {api.group(2)} ({api.group(1)})"
        else:
            where = "unknown location"
            for candidate in lines[i:i + 3]:
                m = _AT.search(candidate)
                if m and m.group(1).strip():
                    where = m.group(1).strip()
                    break
        bucket = ours if "micro_fast" in where or "cudapy" in where else other
        bucket[where] = bucket.get(where, 0) + 1
    failed = [s for s in _TOOL_FAILED if s in text]
    out = {"reports_seen": reports, "ours": ours, "other": other,
           "summary_lines": [ln for ln in lines if "SUMMARY" in ln][-3:]}
    if summaries:
        out["errors"] = summaries[-1]
        out["status"] = "clean" if summaries[-1] == 0 else "errors"
    elif races:
        out["errors"] = int(races[-1].group(2))
        out["status"] = "clean" if out["errors"] == 0 else "errors"
    elif failed:
        out["errors"] = None
        out["status"] = f"tool failed: {failed[0]}"
    elif reports:
        out["errors"] = reports
        out["status"] = "no summary"  # stopped before the end: a lower bound
    else:
        out["errors"] = None
        out["status"] = "no summary" if lines else "empty"
    return out


_P = "========= "  # compute-sanitizer's line prefix
_SAMPLES = {
    "memcheck_errors": ("\n".join([
        _P + "COMPUTE-SANITIZER",
        _P + "Invalid __global__ read of size 4 bytes",
        _P + "    at micro_fast::cuda::<unnamed>::spmm_kernel<float>(const long *, long)"
        "+0x1f0 in spmm.cu:120",
        _P + "    by thread (3,0,0) in block (7,0,0)",
        _P + "    Address 0x7f00 is out of bounds",
        _P.rstrip(),
        _P + 'Program hit cudaErrorInvalidValue (error 1) due to "invalid argument" on CUDA '
        "API call to cudaMemcpyAsync.",
        _P + "    Saved host backtrace up to driver entry point at error",
        _P.rstrip(),
        _P + "ERROR SUMMARY: 2 errors"]),
        {"errors": 2, "status": "errors", "ours": 1, "other": 1}),
    "racecheck_clean": ("\n".join([
        _P + "COMPUTE-SANITIZER",
        "ok   cuda       topk_similarity          sym M=37 N=37 d=5  err 0.0e+00",
        _P + "RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)",
        _P + "ERROR SUMMARY: 0 errors"]),
        {"errors": 0, "status": "clean", "ours": 0, "other": 0}),
    "racecheck_hazard": ("\n".join([
        _P + "COMPUTE-SANITIZER",
        _P + "Error: Race reported between Write access at 0x1a0 in "
        "cudapy::micro_fast::backends::numba_cuda::topk$1(Array<float>)",
        _P + "    and Read access at 0x2b0 in "
        "cudapy::micro_fast::backends::numba_cuda::topk$1(Array<float>) [128 hazards]",
        _P.rstrip(),
        _P + "RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)"]),
        {"errors": 1, "status": "errors", "ours": 1, "other": 0}),
    "stopped": ("\n".join([
        _P + "COMPUTE-SANITIZER",
        _P + "Barrier error detected. Divergent thread(s) in warp",
        _P + "    at 0x90 in /src/k.cu:12:some_kernel(int *)"]),
        {"errors": 1, "status": "no summary", "ours": 0, "other": 1}),
    "unsupported": ("\n".join([
        _P + "COMPUTE-SANITIZER",
        _P + "Error: Device not supported",
        _P + "Target application returned an error"]),
        {"errors": None, "status": "tool failed: Device not supported", "ours": 0,
         "other": 0}),
}


def selftest() -> int:
    """Runs the parser on the canned logs above; returns the number of mismatches."""
    bad = 0
    for name, (text, want) in _SAMPLES.items():
        got = parse_sanitizer(text)
        seen = {"errors": got["errors"], "status": got["status"],
                "ours": sum(got["ours"].values()), "other": sum(got["other"].values())}
        ok = seen == want
        bad += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {seen}" + ("" if ok else f" != {want}"))
    print(f"sanitizer parser self-test: {len(_SAMPLES) - bad}/{len(_SAMPLES)} samples ok")
    return bad


# --- the machine -----------------------------------------------------------------------------

def _cmd(args: list[str], timeout: float = 20) -> str:
    if shutil.which(args[0]) is None and not os.path.exists(args[0]):
        return "not found"
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"failed: {exc}"
    return (p.stdout + p.stderr).strip()


def machine(sanitizer: str = "") -> dict:
    """GPU, driver, CUDA and library versions of this machine."""
    info: dict = {"python": platform.python_version(), "platform": platform.platform(),
                  "cpus": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_cuda"] = torch.version.cuda
        info["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info["gpu"] = p.name
            info["capability"] = f"{p.major}.{p.minor}"
            info["gpu_memory_gib"] = round(p.total_memory / 2**30, 1)
            info["multiprocessors"] = p.multi_processor_count
    except Exception as exc:  # noqa: BLE001 - a broken torch is a fact to report
        info["torch"] = f"import failed: {type(exc).__name__}: {exc}"
    smi = _cmd(["nvidia-smi", "--query-gpu=name,driver_version,compute_cap,memory.total",
                "--format=csv,noheader"])
    info["nvidia_smi"] = smi.splitlines()[0] if smi else smi
    m = re.search(r"CUDA Version:\s*([\d.]+)", _cmd(["nvidia-smi"]))
    info["driver_cuda"] = m.group(1) if m else None
    nvcc = _cmd(["nvcc", "--version"])
    info["nvcc"] = nvcc.splitlines()[-1] if nvcc else nvcc
    if sanitizer:
        out = _cmd([sanitizer, "--version"])
        info["compute_sanitizer"] = out.splitlines()[-1] if out else out
    return info


# --- the report ------------------------------------------------------------------------------

def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def read_stages(path: Path) -> list[dict]:
    rows = []
    text = _read(path) or ""
    for line in text.splitlines():
        if not line.strip() or line.startswith("stage\t"):
            continue
        parts = line.split("\t") + [""] * 6
        rows.append(dict(zip(("stage", "status", "seconds", "rc", "timeout_s", "note"),
                             parts[:6], strict=True)))
    return rows


def junit_summary(path: Path) -> dict | None:
    """Counts and the failing test ids of a JUnit XML file."""
    if not path.exists():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        return {"error": f"unreadable: {exc}"}
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0) or 0) for s in suites)
             for k in ("tests", "failures", "errors", "skipped")}
    total["time"] = round(sum(float(s.get("time", 0) or 0) for s in suites), 1)
    failing = []
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failing.append(f"{case.get('classname', '')}::{case.get('name', '')}")
    total["failing"] = failing
    return total


def _sanitizer_rows(work: Path) -> list[dict]:
    rows = []
    for path in sorted(work.glob("sanitize_*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        data["tool"] = path.stem.split("_", 1)[1]
        rows.append(data)
    return rows


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def targets_line(bench: dict) -> str:
    """"N met, M missed, K not assessed" of gpu_bench.py's targets."""
    targets = bench.get("targets", [])
    met = sum(t.get("met") is True for t in targets)
    missed = sum(t.get("met") is False for t in targets)
    rest = len(targets) - met - missed
    note = " (quick problems: targets not assessed)" if bench.get("quick") else ""
    return f"{met} met, {missed} missed, {rest} not assessed{note}"


def _fmt_counts(d: dict) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:4]) or "-"


def build_report(out: Path, work: Path) -> tuple[str, list[str]]:
    """(REPORT.md text, summary lines)."""
    dry = (work / "DRY_RUN").exists()
    stages = read_stages(out / "stages.tsv")
    mach = {}
    try:
        mach = json.loads((work / "machine.json").read_text())
    except (OSError, ValueError):
        pass
    info = _read(work / "info.txt")
    tests = junit_summary(out / "tests.xml")
    sanit = _sanitizer_rows(work)
    bench_md = _read(work / "bench.md")
    epoch_md = _read(work / "epoch.md")

    md = ["# micro_fast GPU check", ""]
    if dry:
        md += ["**Dry run on a machine without a GPU**: the build and every GPU part were "
               "skipped; the CPU paths ran on tiny problems to check the scripts. Nothing here "
               "is a GPU result.", ""]
    md += ["## Machine", ""]
    if mach:
        for key in ("gpu", "capability", "gpu_memory_gib", "multiprocessors", "nvidia_smi",
                    "driver_cuda", "torch", "torch_cuda", "nvcc", "compute_sanitizer",
                    "python", "cpus", "platform"):
            if key in mach:
                md.append(f"- {key}: {mach[key]}")
        if not mach.get("cuda_available"):
            md.append("- torch sees no CUDA device")
    else:
        md.append("machine.json missing")
    md += ["", "`micro-fast info`:", "", "```", (info or "info.txt missing").rstrip(), "```", ""]

    md += ["## Stages", "", "| stage | status | seconds | exit code | timeout (s) | note |",
           "| --- | --- | --- | --- | --- | --- |"]
    for s in stages:
        md.append(f"| {s['stage']} | {s['status']} | {s['seconds']} | {s['rc']} | "
                  f"{s['timeout_s']} | {s['note']} |")
    if not stages:
        md.append("| (no stage recorded) | | | | | |")
    md.append("")

    md += ["## CUDA tests", ""]
    if tests is None:
        md.append("tests.xml missing (the test stage did not run or did not finish).")
    elif "error" in tests:
        md.append(f"tests.xml {tests['error']}")
    else:
        md.append(f"{tests['tests']} tests: {tests['failures']} failed, {tests['errors']} "
                  f"errors, {tests['skipped']} skipped, {tests['time']} s.")
        for name in tests["failing"][:20]:
            md.append(f"- failing: `{name}`")
    md.append("")

    md += ["## compute-sanitizer", ""]
    if sanit:
        md += ["| tool | errors | status | in micro_fast kernels | elsewhere |",
               "| --- | --- | --- | --- | --- |"]
        for r in sanit:
            errors = "-" if r.get("errors") is None else r["errors"]
            if r["tool"].startswith("canned"):
                r["tool"] += " (the parser on a canned log, not a measurement)"
            md.append(f"| {r['tool']} | {errors} | {r.get('status', '?')} | "
                      f"{_fmt_counts(r.get('ours', {}))} | {_fmt_counts(r.get('other', {}))} |")
    else:
        md.append("no sanitizer result recorded.")
    md.append("")

    md += ["## Benchmarks", "", (bench_md or "bench.md missing (the stage did not run or "
                                 "did not write it).").rstrip(), ""]
    md += ["## One training epoch", "", (epoch_md or "epoch.md missing (the stage did not run "
                                         "or did not write it).").rstrip(), ""]

    summary = [f"micro_fast GPU check{' (DRY RUN, no GPU)' if dry else ''}: "
               f"{mach.get('gpu', 'no GPU')}, torch {mach.get('torch', '?')}, "
               f"CUDA {mach.get('torch_cuda', '?')}"]
    for s in stages:
        summary.append(f"  {s['stage']:<20} {s['status']:<8} {s['seconds']:>7} s  {s['note']}")
    if tests and "error" not in tests:
        summary.append(f"  tests: {tests['tests']} run, {tests['failures']} failed, "
                       f"{tests['errors']} errors, {tests['skipped']} skipped")
    bench = _json(out / "bench.json")
    if bench:
        summary.append("  targets: " + targets_line(bench))
        failures = bench.get("failures", [])
        summary.append(f"  benchmark failures: {len(failures)}")
        for why in failures[:6]:
            summary.append(f"    {why[:160]}")
        missed = [t for t in bench.get("targets", []) if t.get("met") is False]
        for t in missed[:4]:
            summary.append(f"    missed: {t['name']}: {t['measured']:.3g}{t['unit']} "
                           f"(required {t['required']})")
    for line in (epoch_md or "").splitlines():
        if line.startswith(("- batch:", "- epoch", "- metrics:")):
            summary.append("  " + line[2:].split("; largest")[0][:150])
    summary.append(f"  report: {out / 'REPORT.md'}")
    return "\n".join(md) + "\n", summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("machine", help="write the machine record")
    p.add_argument("--out", required=True)
    p.add_argument("--sanitizer", default="", help="path of compute-sanitizer, if found")
    p = sub.add_parser("sanitizer", help="parse a compute-sanitizer log")
    p.add_argument("log")
    p.add_argument("--json", help="write the parsed result here")
    sub.add_parser("selftest", help="run the sanitizer parser on canned logs")
    p = sub.add_parser("targets", help="count the targets of a gpu_bench.py JSON file")
    p.add_argument("bench_json")
    p = sub.add_parser("report", help="write OUT/REPORT.md")
    p.add_argument("--out", required=True, help="the check's output folder")
    p.add_argument("--work", required=True, help="the check's work folder")
    p.add_argument("--summary", action="store_true", help="print the short summary")
    args = parser.parse_args(argv)

    if args.command == "machine":
        data = machine(args.sanitizer)
        Path(args.out).write_text(json.dumps(data, indent=1) + "\n")
        print(json.dumps(data, indent=1))
        return 0
    if args.command == "sanitizer":
        result = parse_sanitizer(_read(Path(args.log)) or "")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        errors = "-" if result["errors"] is None else result["errors"]
        print(f"{errors}\t{result['status']}")
        return 0
    if args.command == "selftest":
        return 1 if selftest() else 0
    if args.command == "targets":
        bench = _json(Path(args.bench_json))
        print(targets_line(bench) if bench else f"{args.bench_json} missing or unreadable")
        return 0
    out, work = Path(args.out), Path(args.work)
    text, summary = build_report(out, work)
    (out / "REPORT.md").write_text(text)
    if args.summary:
        print("\n".join(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
