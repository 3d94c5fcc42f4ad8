"""Registers, spills and shared memory of every CUDA kernel, and what the CUDA build costs.

    python benchmarks/cuda_resources.py [--archs "80;90"] [--jobs N] [--artifact cuda-resources]

Compiles each ``csrc/cuda/*.cu`` for each architecture with ``-Xptxas -v`` (the flags of
``setup.py``), ``--jobs`` at a time, and reports per kernel (demangled, per arch): registers,
spill stores and loads, stack frame and static shared memory. Kernels above ``--max-registers``
(128: at 256 threads a block two blocks still fit an SM's 64K registers) or with any spill are
listed apart. It also reports each file's compile time (wall and CPU) and the build's wall time
at ``--jobs``: the CPU time of the slowest file bounds a fully parallel build from below.

Needs ``nvcc``, no GPU. Exit status 1 when a file does not compile.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import provenance  # noqa: E402

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'")
_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


@dataclass
class Kernel:
    file: str
    arch: str
    name: str
    registers: int
    spill_stores: int
    spill_loads: int
    stack: int
    smem: int


@dataclass
class Compile:
    file: str
    arch: str
    ok: bool
    wall_s: float
    cpu_s: float
    log: str


def parse_ptxas(text: str, file: str) -> list[Kernel]:
    """The kernels of one ``-Xptxas -v`` log: an entry line, then its properties and usage."""
    kernels: list[Kernel] = []
    current: dict | None = None
    for line in text.splitlines():
        if m := _ENTRY.search(line):
            current = {"name": m.group(1), "arch": m.group(2), "stack": 0, "stores": 0,
                       "loads": 0}
        elif current is not None and (m := _PROPS.search(line)):
            current.update(stack=int(m.group(1)), stores=int(m.group(2)),
                           loads=int(m.group(3)))
        elif current is not None and (m := _USED.search(line)):
            kernels.append(Kernel(file, current["arch"], current["name"], int(m.group(1)),
                                  current["stores"], current["loads"], current["stack"],
                                  int(m.group(2) or 0)))
            current = None
    return kernels


def demangle(names: list[str]) -> dict[str, str]:
    """Readable kernel names (``c++filt`` when present), without the library's namespaces."""
    tool = shutil.which("c++filt")
    out = names
    if tool and names:
        proc = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True)
        if proc.returncode == 0 and len(proc.stdout.splitlines()) == len(names):
            out = proc.stdout.splitlines()
    cleaned = [re.sub(r"micro_fast::cuda::|\(anonymous namespace\)::|^void |\(.*\)$", "", n)
               for n in out]
    return dict(zip(names, cleaned, strict=True))


def compile_one(nvcc: str, src: Path, arch: str, out_dir: Path) -> Compile:
    import pybind11

    includes = [pybind11.get_include(), sysconfig.get_paths()["include"], str(REPO / "csrc")]
    cmd = [nvcc, "-c", str(src), "-o", str(out_dir / f"{src.stem}.sm_{arch}.o"), "-O3",
           "-std=c++17", "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden",
           "--expt-relaxed-constexpr", "-gencode", f"arch=compute_{arch},code=sm_{arch}",
           "-Xptxas", "-v", *[f"-I{i}" for i in includes]]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=REPO)
    log = proc.stdout.read()
    # wait4 gives the CPU time of this child and its own children (cicc, ptxas, the host
    # compiler), which the parallel threads of this script cannot tell apart otherwise
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    return Compile(src.name, f"sm_{arch}", proc.returncode == 0, wall,
                   usage.ru_utime + usage.ru_stime, log)


def report(kernels: list[Kernel], compiles: list[Compile], wall: float, jobs: int,
           max_registers: int, nvcc_version: str) -> str:
    lines = [f"nvcc: {nvcc_version}", "",
             f"Build: {len(compiles)} compilations ({len({c.file for c in compiles})} files x "
             f"{len({c.arch for c in compiles})} architectures), {jobs} at a time: "
             f"{wall:.1f} s wall. The slowest single compilation took "
             f"{max(c.cpu_s for c in compiles):.1f} s of CPU: no number of cores builds "
             "faster than that (plus the link).", "",
             "| file | arch | compiled | wall (s) | CPU (s) |", "|---|---|---|---:|---:|"]
    for c in sorted(compiles, key=lambda c: (c.file, c.arch)):
        lines.append(f"| {c.file} | {c.arch} | {'yes' if c.ok else '**no**'} | "
                     f"{c.wall_s:.1f} | {c.cpu_s:.1f} |")
    over = [k for k in kernels if k.registers > max_registers or k.spill_stores or k.spill_loads]
    lines += ["", f"### Over {max_registers} registers or spilling", ""]
    if over:
        lines += ["| kernel | file | arch | registers | spill stores / loads (bytes) |",
                  "|---|---|---|---:|---|"]
        for k in sorted(over, key=lambda k: (-k.registers, k.name, k.arch)):
            lines.append(f"| `{k.name}` | {k.file} | {k.arch} | {k.registers} | "
                         f"{k.spill_stores} / {k.spill_loads} |")
    else:
        lines.append("None.")
    lines += ["", "### Every kernel", "",
              "| kernel | file | arch | registers | spill stores / loads (bytes) | stack (bytes) "
              "| static smem (bytes) |", "|---|---|---|---:|---|---:|---:|"]
    for k in sorted(kernels, key=lambda k: (k.file, k.name, k.arch)):
        lines.append(f"| `{k.name}` | {k.file} | {k.arch} | {k.registers} | "
                     f"{k.spill_stores} / {k.spill_loads} | {k.stack} | {k.smem} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default=os.environ.get("MICRO_FAST_CUDA_ARCHS", "80;90"),
                        help="compute capabilities, ';' or ',' separated (default 80;90)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-registers", type=int, default=128)
    parser.add_argument("--nvcc", default=os.environ.get("NVCC") or shutil.which("nvcc"))
    provenance.add_output_args(parser)
    args = parser.parse_args(argv)
    if not args.nvcc:
        print("nvcc not found (set NVCC or put it on PATH)", file=sys.stderr)
        return 1
    archs = [a.strip().replace(".", "") for a in re.split(r"[;,]", args.archs) if a.strip()]
    sources = sorted((REPO / "csrc" / "cuda").glob("*.cu"))
    version = subprocess.run([args.nvcc, "--version"], capture_output=True,
                             text=True).stdout.strip().splitlines()[-1]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            compiles = list(pool.map(lambda job: compile_one(args.nvcc, job[0], job[1],
                                                             Path(tmp)),
                                     [(s, a) for s in sources for a in archs]))
        wall = time.perf_counter() - start
    failed = [c for c in compiles if not c.ok]
    for c in failed:
        print(f"{c.file} ({c.arch}) did not compile:\n{c.log[-4000:]}", file=sys.stderr)
    kernels = [k for c in compiles for k in parse_ptxas(c.log, c.file)]
    names = demangle(sorted({k.name for k in kernels}))
    for k in kernels:
        k.name = names[k.name]
    text = report(kernels, compiles, wall, args.jobs, args.max_registers, version)
    print(text)
    if args.artifact:
        data = {"nvcc": version, "jobs": args.jobs, "wall_s": wall,
                "max_registers": args.max_registers,
                "compiles": [{k: v for k, v in asdict(c).items() if k != "log"}
                             for c in compiles],
                "kernels": [asdict(k) for k in kernels]}
        md, js = provenance.write_artifact(
            args.artifact, "CUDA kernels: registers, spills and build time (cuda_resources.py)",
            text, data, args.results_dir)
        print(f"wrote {md} and {js}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
