"""Build script for the compiled cores.

``micro_fast._C``    C++17 + OpenMP kernels (csrc/cpu, csrc/bindings.cpp), always attempted.
``micro_fast._cuda`` CUDA kernels (csrc/cuda), built when nvcc is found and
                     ``MICRO_FAST_CUDA`` is not ``0``; ``MICRO_FAST_CUDA=1`` makes a missing or
                     failing nvcc an error.

Neither part links libtorch. A failure of an optional part never fails the install: the
reason is written to ``micro_fast/_build_info.json`` and shown by ``micro-fast info``.

Both compile their sources in parallel, ``MICRO_FAST_BUILD_JOBS`` at a time (default: every
CPU).

A second install from the same tree (``pip install .`` after ``pip install .``, the README's
test command after its main command) reuses the extensions in ``build/`` when nothing that
goes into them changed: their sources and every header under ``csrc/``, the compile and link
flags, the build options from the environment, the compilers and the pybind11 and Python
versions. ``build_ext --force`` (or deleting ``build/``) rebuilds regardless.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import traceback
from concurrent.futures import ThreadPoolExecutor
from glob import glob

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
CUDA_ENV = os.environ.get("MICRO_FAST_CUDA", "").strip()
SANITIZE = os.environ.get("MICRO_FAST_SANITIZE", "").strip()
DEFAULT_CUDA_ARCHS = "80;90"


def _build_jobs() -> int:
    try:
        jobs = int(os.environ.get("MICRO_FAST_BUILD_JOBS") or 0)
    except ValueError:
        jobs = 0
    return jobs if jobs > 0 else (os.cpu_count() or 1)


def _rel(pattern: str) -> list[str]:
    return sorted(os.path.relpath(p, HERE) for p in glob(os.path.join(HERE, pattern)))


def _cpp_flags() -> tuple[list[str], list[str]]:
    compile_args = ["-O3", "-fopenmp", "-fvisibility=hidden", "-Wall", "-Wno-unknown-pragmas"]
    link_args = ["-fopenmp"]
    if SANITIZE:
        # every report is fatal, so a test run under the sanitizers passes only with none
        compile_args = ["-O1", "-g", "-fno-omit-frame-pointer", f"-fsanitize={SANITIZE}",
                        "-fno-sanitize-recover=all", "-fopenmp", "-fvisibility=hidden"]
        link_args = [f"-fsanitize={SANITIZE}", "-fopenmp"]
    return compile_args, link_args


class CUDAExtension(Extension):
    """Marker for the extension that nvcc builds."""


def _find_nvcc() -> str | None:
    for candidate in (os.environ.get("NVCC"), shutil.which("nvcc")):
        if candidate and os.path.exists(candidate):
            return candidate
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "/usr/local/cuda"
    path = os.path.join(cuda_home, "bin", "nvcc")
    return path if os.path.exists(path) else None


# the environment that changes what gets built
BUILD_ENV = ("MICRO_FAST_CUDA", "MICRO_FAST_CUDA_ARCHS", "MICRO_FAST_SANITIZE", "NVCC",
             "CUDA_HOME", "CUDA_PATH", "CC", "CXX", "CFLAGS", "CXXFLAGS", "CPPFLAGS", "LDFLAGS")


def _tool_version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return "unavailable"


class OptionalBuildExt(build_ext):
    """Builds each extension on its own, records failures instead of raising them, and reuses
    an earlier build whose inputs are unchanged (``_fingerprint``)."""

    def run(self) -> None:
        self._status: dict[str, str] = {}
        super().run()
        self._write_build_info()

    def build_extensions(self) -> None:
        for ext in self.extensions:
            name = ext.name.rsplit(".", 1)[-1]
            try:
                stamp = os.path.join(self.build_temp, f"{name}.fingerprint")
                fingerprint = self._fingerprint(ext)
                output = self.get_ext_fullpath(ext.name)
                if not self.force and os.path.exists(output) and os.path.exists(stamp) \
                        and open(stamp).read() == fingerprint:
                    print(f"micro_fast: {ext.name} is up to date in {self.build_temp} "
                          "(same sources, headers, flags and compilers); reusing it")
                    self._status[name] = "ok"
                    continue
                if os.path.exists(stamp):
                    os.remove(stamp)
                if isinstance(ext, CUDAExtension):
                    self._build_cuda(ext)
                else:
                    self.force = True  # setuptools' own check ignores headers: this one decides
                    try:
                        self.build_extension(ext)
                    finally:
                        self.force = False
                os.makedirs(self.build_temp, exist_ok=True)
                with open(stamp, "w") as fh:
                    fh.write(fingerprint)
                self._status[name] = "ok"
            except Exception as exc:  # noqa: BLE001 - any failure falls back, with its reason
                reason = f"{type(exc).__name__}: {exc}".strip()
                self._status[name] = f"build failed: {reason[-2000:]}"
                required = name == "_cuda" and CUDA_ENV == "1"
                print(f"micro_fast: building {ext.name} failed: {reason}", file=sys.stderr)
                traceback.print_exc()
                if required:
                    raise

    def _fingerprint(self, ext: Extension) -> str:
        """A digest of everything that goes into ``ext``'s binary."""
        import pybind11

        h = hashlib.sha256()
        headers = [p for pattern in ("csrc/**/*.h", "csrc/**/*.cuh", "csrc/*.h")
                   for p in glob(os.path.join(HERE, pattern), recursive=True)]
        for path in sorted({os.path.join(HERE, s) for s in ext.sources} | set(headers)):
            h.update(os.path.relpath(path, HERE).encode() + b"\0")
            with open(path, "rb") as fh:
                h.update(hashlib.sha256(fh.read()).digest())
        command = list(getattr(self.compiler, "compiler_so", None) or [str(self.compiler)])
        if isinstance(ext, CUDAExtension):
            compiler = _tool_version([_find_nvcc() or "nvcc", "--version"])
        else:
            compiler = _tool_version([command[0], "--version"])
        with open(os.path.abspath(__file__), "rb") as fh:
            script = hashlib.sha256(fh.read()).hexdigest()
        h.update(json.dumps({
            "name": ext.name, "compile": getattr(ext, "extra_compile_args", []),
            "link": getattr(ext, "extra_link_args", []),
            "macros": getattr(ext, "define_macros", []),
            "env": {k: os.environ.get(k) for k in BUILD_ENV}, "compiler": compiler,
            "command": command, "python": sys.version, "pybind11": pybind11.__version__,
            "setup.py": script,
        }, sort_keys=True, default=str).encode())
        return h.hexdigest()

    def copy_extensions_to_source(self) -> None:
        # Only what was built is copied into an in-place (editable) tree.
        inplace, self.inplace = self.inplace, 0
        built = [e for e in self.extensions if os.path.exists(self.get_ext_fullpath(e.name))]
        self.inplace = inplace
        saved, self.extensions = self.extensions, built
        try:
            super().copy_extensions_to_source()
        finally:
            self.extensions = saved

    # --- CUDA -------------------------------------------------------------------------
    def _build_cuda(self, ext: Extension) -> None:
        nvcc = _find_nvcc()
        if nvcc is None:
            raise RuntimeError("nvcc not found (set CUDA_HOME or NVCC, or put nvcc on PATH)")
        import pybind11

        archs = os.environ.get("MICRO_FAST_CUDA_ARCHS", DEFAULT_CUDA_ARCHS)
        archs = [a.strip().replace(".", "") for a in archs.replace(",", ";").split(";")
                 if a.strip()]
        gencode = []
        for arch in archs:
            gencode += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
        gencode += ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]

        out_path = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(out_path), exist_ok=True)
        tmp_dir = os.path.join(self.build_temp, "cuda")
        os.makedirs(tmp_dir, exist_ok=True)
        includes = [pybind11.get_include(), sysconfig.get_paths()["include"],
                    os.path.join(HERE, "csrc")]
        common = ["-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden",
                  "--expt-relaxed-constexpr", *gencode] + [f"-I{i}" for i in includes]
        objects = [os.path.join(tmp_dir, os.path.basename(src) + ".o") for src in ext.sources]
        commands = [[nvcc, "-c", src, "-o", obj, *common]
                    for src, obj in zip(ext.sources, objects, strict=True)]

        def compile_one(cmd: list[str]) -> subprocess.CompletedProcess:
            # output captured per file so that parallel compilers do not interleave their logs
            return subprocess.run(cmd, cwd=HERE, capture_output=True, text=True)

        with ThreadPoolExecutor(max_workers=min(_build_jobs(), len(commands))) as pool:
            done = list(pool.map(compile_one, commands))
        for cmd, proc in zip(commands, done, strict=True):
            print(" ".join(cmd))
            print(proc.stdout + proc.stderr, end="")
        for cmd, proc in zip(commands, done, strict=True):
            if proc.returncode != 0:
                raise RuntimeError(f"nvcc failed on {cmd[2]} (exit {proc.returncode}): "
                                   f"{(proc.stdout + proc.stderr)[-2000:]}")
        cmd = [nvcc, "-shared", "-o", out_path, *objects, "-cudart", "static", *gencode,
               "-Xlinker", "-lrt", "-Xlinker", "-ldl", "-Xlinker", "-lpthread"]
        print(" ".join(cmd))
        subprocess.run(cmd, check=True, cwd=HERE)

    # --- build record -----------------------------------------------------------------
    def _write_build_info(self) -> None:
        info = dict(self._status)
        if "_cuda" not in info:
            info["_cuda"] = _cuda_skip_reason or "not attempted"
        targets = [os.path.join(self.build_lib, "micro_fast")]
        if self.inplace or os.environ.get("MICRO_FAST_INPLACE_INFO"):
            targets.append(os.path.join(HERE, "micro_fast"))
        for target in targets:
            os.makedirs(target, exist_ok=True)
            with open(os.path.join(target, "_build_info.json"), "w") as fh:
                json.dump(info, fh, indent=1)


# the C++ core's sources compile in parallel too (pybind11 patches the compiler's compile)
ParallelCompile("MICRO_FAST_BUILD_JOBS", default=0).install()

compile_args, link_args = _cpp_flags()
extensions: list[Extension] = [
    Pybind11Extension(
        "micro_fast._C",
        sources=["csrc/bindings.cpp", *_rel("csrc/cpu/*.cpp")],
        include_dirs=["csrc"],
        cxx_std=17,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
]

_cuda_skip_reason = ""
if CUDA_ENV == "0":
    _cuda_skip_reason = "disabled by MICRO_FAST_CUDA=0"
elif _find_nvcc() is None:
    _cuda_skip_reason = "nvcc not found at build time"
    if CUDA_ENV == "1":
        raise SystemExit("MICRO_FAST_CUDA=1 but nvcc was not found")
elif not _rel("csrc/cuda/*.cu"):
    _cuda_skip_reason = "no CUDA sources in this source tree"
else:
    extensions.append(CUDAExtension("micro_fast._cuda", sources=_rel("csrc/cuda/*.cu")))

setup(ext_modules=extensions, cmdclass={"build_ext": OptionalBuildExt}, package_data={
    "micro_fast": ["_build_info.json"]})
