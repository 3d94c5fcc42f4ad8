"""Where a result comes from: the header every results-producing script writes.

Every artifact under ``benchmarks/results/`` is a pair ``NAME.md`` + ``NAME.json`` written by
:func:`write_artifact`. Both start with the same provenance record (:func:`record`): the
machine (CPU model as ``micro-fast info`` and ``lscpu`` name it, the SIMD kernels in use and
those the CPU runs, logical CPUs, threads), the library versions, the date (UTC), the git
commit of the checkout with a dirty flag and the paths that differ from it, the command line,
the load average when the script started, the ``THP_MEM_ALLOC_ENABLE`` setting and the kernel
tuning in force. A number in the README cites the artifact that holds it.

    python benchmarks/provenance.py              # prints this machine's record
    python benchmarks/provenance.py --slug       # the results folder name of this machine
"""

from __future__ import annotations

import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"

_STARTED = time.time()
_LOAD_AT_START = os.getloadavg() if hasattr(os, "getloadavg") else None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state() -> dict:
    """Commit, commit date, and whether tracked files differ from it (paths listed, results
    folder left out: a run that writes its own artifact is not dirty because of it)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": "unknown (not a git checkout)", "dirty": None, "dirty_paths": []}
    status = _git("status", "--porcelain", "--untracked-files=no") or ""
    paths = []
    for line in status.splitlines():
        path = line[3:].split(" -> ")[-1]
        if not path.startswith("benchmarks/results/"):
            paths.append(path)
    code = [p for p in paths if p.startswith(("micro_fast/", "csrc/", "benchmarks/", "setup.py",
                                              "pyproject.toml"))]
    return {"commit": commit.strip(),
            "commit_date": (_git("show", "-s", "--format=%cI", "HEAD") or "").strip(),
            "dirty": bool(paths), "dirty_paths": paths, "dirty_code_paths": code}


def lscpu_model() -> str | None:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"^Model name:\s*(.+)$", out, re.M)
    return m.group(1).strip() if m else None


def cpu_family_model() -> tuple[str | None, int | None, int | None]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None, None, None
    vendor = re.search(r"^vendor_id\s*:\s*(\S+)", text, re.M)
    fam = re.search(r"^cpu family\s*:\s*(\d+)", text, re.M)
    mod = re.search(r"^model\s*:\s*(\d+)", text, re.M)
    return (vendor.group(1) if vendor else None, int(fam.group(1)) if fam else None,
            int(mod.group(1)) if mod else None)


def microarchitecture() -> str | None:
    """AMD Zen generation from the CPU family and model numbers (virtual machines often report
    only "AMD EPYC"); ``None`` where unknown."""
    vendor, fam, model = cpu_family_model()
    if vendor != "AuthenticAMD" or fam is None or model is None:
        return None
    if fam == 0x17:
        return "zen2" if model >= 0x30 else "zen1"
    if fam == 0x19:
        return "zen4" if 0x10 <= model <= 0x1F or 0x60 <= model <= 0xAF else "zen3"
    if fam == 0x1A:
        return "zen5"
    return None


def machine_slug(threads: int | None = None) -> str:
    """The results folder of this machine, e.g. ``epyc-zen5-2threads``."""
    import torch

    threads = threads or torch.get_num_threads()
    name = (lscpu_model() or platform.processor() or platform.machine()).lower()
    name = re.sub(r"\b(amd|intel|r|tm|cpu|processor|\d+-core)\b", " ", name)
    base = re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "cpu"
    arch = microarchitecture()
    if arch and arch not in base:
        base = f"{base}-{arch}"
    return f"{base}-{threads}threads"


def results_dir(threads: int | None = None) -> Path:
    """``$MICRO_FAST_RESULTS_DIR`` or ``benchmarks/results/<machine slug>``."""
    env = os.environ.get("MICRO_FAST_RESULTS_DIR")
    return Path(env) if env else RESULTS / machine_slug(threads)


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for mod in ("torch", "numpy", "numba", "faiss", "sklearn", "scipy"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "?")
        except Exception:  # noqa: BLE001 - a missing or broken optional package is recorded
            out[mod] = "not installed"
    try:
        import micro_fast

        out["micro_fast"] = micro_fast.__version__
    except Exception as exc:  # noqa: BLE001
        out["micro_fast"] = f"import failed: {exc}"
    return out


def record(threads: int | None = None, **extra) -> dict:
    """The provenance record of this process, now (see the module docstring)."""
    import torch

    info: dict = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(_STARTED)),
                  "elapsed_s": round(time.time() - _STARTED, 1)}
    cpu: dict = {"lscpu_model": lscpu_model(), "logical_cpus": os.cpu_count(),
                 "microarchitecture": microarchitecture(),
                 "threads": threads or torch.get_num_threads()}
    try:
        from micro_fast import tuning
        from micro_fast.backends import cpp

        cpu["name"] = tuning.cpu_name()
        cpu["simd"] = cpp.simd_isa()
        cpu["simd_supported"] = ",".join(cpp.supported_isas())
        info["tuning"] = tuning.describe()
        info["build_id"] = tuning.build_id()
    except Exception as exc:  # noqa: BLE001 - the record is still written
        cpu["simd"] = f"unknown ({type(exc).__name__}: {exc})"
    info["machine"] = cpu
    info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    info["versions"] = _versions()
    info["git"] = git_state()
    info["command"] = " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])
    info["load_average_at_start"] = _LOAD_AT_START
    info["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    info["THP_MEM_ALLOC_ENABLE"] = os.environ.get("THP_MEM_ALLOC_ENABLE")
    try:
        thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    except OSError:
        thp = None
    info["kernel_thp"] = thp
    info.update(extra)
    return info


def markdown_header(prov: dict, title: str) -> str:
    """The header block of an artifact's markdown file."""
    m, g, v = prov["machine"], prov["git"], prov["versions"]
    if g.get("dirty") is None:
        state = g["commit"]
    elif g["dirty"]:
        shown = ", ".join(g["dirty_paths"][:8]) + (" ..." if len(g["dirty_paths"]) > 8 else "")
        code = ("; code paths among them: " + ", ".join(g["dirty_code_paths"][:8])
                if g.get("dirty_code_paths") else "; none under micro_fast/, csrc/ or "
                "benchmarks/")
        state = f"`{g['commit'][:12]}`, dirty ({shown}{code})"
    else:
        state = f"`{g['commit'][:12]}`, clean"
    load, end = prov.get("load_average_at_start"), prov.get("load_average_at_end")
    lines = [
        f"# {title}", "",
        "| provenance | |", "|---|---|",
        f"| machine | {m.get('name') or m.get('lscpu_model')}"
        + (f" ({m['microarchitecture']})" if m.get("microarchitecture") else "")
        + f", {m.get('logical_cpus')} logical CPUs |",
        f"| SIMD kernels | {m.get('simd')} (this CPU runs {m.get('simd_supported', '?')}) |",
        f"| threads | {m.get('threads')} |",
        f"| GPU | {prov.get('gpu')} |",
        f"| date (UTC) | {prov['date']} (started {prov['started']}, {prov['elapsed_s']} s) |",
        f"| commit | {state} |",
        f"| command | `{prov['command']}` |",
        "| versions | " + ", ".join(f"{k} {val}" for k, val in v.items()) + " |",
        "| load average (1 / 5 / 15 min) at start, at end | "
        + ("" if load is None else " / ".join(f"{x:.2f}" for x in load)) + ", "
        + ("" if end is None else " / ".join(f"{x:.2f}" for x in end))
        + " (this machine has " + str(m.get("logical_cpus")) + " logical CPUs) |",
        f"| THP_MEM_ALLOC_ENABLE | {prov.get('THP_MEM_ALLOC_ENABLE')} (kernel: "
        f"{prov.get('kernel_thp')}) |",
    ]
    if prov.get("tuning"):
        lines.append("| tuning | " + "<br>".join(str(t).replace("|", "/")
                                                 for t in prov["tuning"]) + " |")
    return "\n".join(lines) + "\n"


def write_artifact(name: str, title: str, body_md: str, data: dict,
                   out_dir: str | Path | None = None, threads: int | None = None,
                   **extra) -> tuple[Path, Path]:
    """Writes ``OUT/NAME.md`` (provenance header + ``body_md``) and ``OUT/NAME.json``
    (``{"provenance": ..., "data": data}``); returns both paths. ``OUT`` defaults to
    :func:`results_dir`."""
    out = Path(out_dir) if out_dir else results_dir(threads)
    out.mkdir(parents=True, exist_ok=True)
    prov = record(threads, **extra)
    md, js = out / f"{name}.md", out / f"{name}.json"
    md.write_text(markdown_header(prov, title) + "\n" + body_md.rstrip() + "\n")
    js.write_text(json.dumps({"provenance": prov, "data": data}, indent=1, default=str) + "\n")
    return md, js


def add_output_args(parser) -> None:
    """``--artifact NAME`` (write NAME.md/.json) and ``--results-dir DIR``, shared by the
    results-producing scripts."""
    parser.add_argument("--artifact", default=None, metavar="NAME",
                        help="write the result as NAME.md + NAME.json with the provenance "
                             "header (see benchmarks/provenance.py)")
    parser.add_argument("--results-dir", default=None, metavar="DIR",
                        help="folder of the artifact (default: $MICRO_FAST_RESULTS_DIR or "
                             "benchmarks/results/<machine>)")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slug", action="store_true", help="print the results folder name")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.slug:
        print(machine_slug(args.threads))
        return 0
    print(json.dumps(record(args.threads), indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
