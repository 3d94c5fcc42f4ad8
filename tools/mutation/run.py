"""Mutation run: applies each deliberate bug of ``mutants.py`` to a fresh copy of the tree, one
at a time, runs the tests that should notice it, and reports which mutants survived.

    python tools/mutation/run.py              # all mutants; writes RESULTS.md + results.json
    python tools/mutation/run.py --list       # the mutants, one a line
    python tools/mutation/run.py --check      # only that every mutant still applies
    python tools/mutation/run.py --only ID,ID # some of them (results printed, not written)

A copy holds the tracked files as they are in the working tree (uncommitted edits included;
``--untracked`` adds files git neither tracks nor ignores, ``--rev`` takes a commit's files
instead), never ``.git``, ``.venv`` or ``build/``: a run does not touch the checkout. A
mutant of ``csrc/`` rebuilds ``micro_fast._C`` in its copy; any other reuses the checkout's
build (and numba's caches, but for a numba mutant). Before the mutants, the unmutated tree
must pass every selection used: a test that fails without a bug would make every mutant it
selects look killed.

Outcomes: KILLED (the selected tests failed, or crashed), SURVIVED (they passed: no test
notices the bug), ERROR (the mutant did not apply, the build failed, the selection ran no
test or the run timed out). The exit status is 0 only when every mutant was killed.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from mutants import MUTANTS, Mutant

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
# numba's on-disk caches: index and compiled code, next to the sources in __pycache__
NUMBA_CACHE_SUFFIXES = (".nbi", ".nbc")
NUMBA_SOURCES = "micro_fast/backends/numba/"
# a copy's folder, first on its sys.path, that hides numba in the reference-only runs
HIDDEN = ".mutation_hidden"


@dataclass
class Result:
    """What became of one mutant."""

    id: str
    file: str
    description: str
    outcome: str  # KILLED, SURVIVED or ERROR
    detail: str
    tests: str
    seconds: float


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True,
                          text=True).stdout


def source_files(untracked: bool) -> list[str]:
    """The paths a copy of the working tree holds: the tracked files present there (and, with
    ``untracked``, the files git neither tracks nor ignores, e.g. a new test)."""
    extra = ["--others", "--exclude-standard"] if untracked else []
    names = git("ls-files", "-z", "--cached", *extra).split("\0")
    skip = (".git/", ".venv/", "build/")
    return sorted({n for n in names if n and not n.startswith(skip) and (REPO / n).is_file()})


def numba_caches(root: Path) -> list[Path]:
    return [p for p in sorted((root / "micro_fast").rglob("__pycache__/*"))
            if p.suffix in NUMBA_CACHE_SUFFIXES]


def checkout_builds() -> list[Path]:
    """The checkout's build outputs: the compiled extension, its build record and numba's
    caches (which numba revalidates against each source's modification time and size)."""
    out = sorted((REPO / "micro_fast").glob("_C*.so"))
    info = REPO / "micro_fast" / "_build_info.json"
    return out + ([info] if info.is_file() else []) + numba_caches(REPO)


def differs(rel: str, data: bytes) -> bool:
    path = REPO / rel
    return not path.is_file() or path.read_bytes() != data


def make_template(rev: str | None, untracked: bool, timeout: float) -> Path:
    """The unmutated tree every copy starts from: the working tree's files, or those of commit
    ``rev``, with the builds they need. Files keep the checkout's modification times where
    their contents are the checkout's, so that its builds (numba's caches, ``_C``) are reused
    where they are valid; ``_C`` is rebuilt when ``rev``'s C++ sources differ, and numba's
    caches are dropped when its numba sources do (a cached caller keeps the code of an edited
    callee in another module: numba checks the caller's source only)."""
    root = Path(tempfile.mkdtemp(prefix="micro_fast_mutation_template_"))
    changed: list[str] = []
    if rev is None:
        for name in source_files(untracked):
            dst = root / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dst)
    else:
        archive = subprocess.run(["git", "archive", "--format=tar", rev], cwd=REPO,
                                 check=True, capture_output=True).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            for member in tar.getmembers():
                if not member.isfile():
                    continue
                data = tar.extractfile(member).read()
                dst = root / member.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.write_bytes(data)
                if differs(member.name, data):
                    changed.append(member.name)
                else:
                    shutil.copystat(REPO / member.name, dst)
    drop_numba = any(n.startswith(NUMBA_SOURCES) for n in changed)
    rebuild = any(n.startswith("csrc/") or n == "setup.py" for n in changed)
    for src in checkout_builds():
        if (rebuild and src.parent.name == "micro_fast") or \
                (drop_numba and src.suffix in NUMBA_CACHE_SUFFIXES):
            continue
        dst = root / src.relative_to(REPO)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    if rebuild:
        print(f"building _C for {rev}", flush=True)
        why = build(root, timeout)
        if why:
            raise RuntimeError(f"{rev}: {why}")
    return root


def make_copy(template: Path, mutant: Mutant | None, reference_only: bool = False) -> Path:
    """A fresh copy of the template, without the builds the mutant makes stale: ``_C`` for a
    C++ mutant (rebuilt by the caller), numba's caches for a numba one. ``reference_only``
    hides the other CPU backends (no ``_C``, and a ``numba`` that fails to import), so that
    only ``torch_ref`` runs and a test can fail only against an independent oracle."""
    root = Path(tempfile.mkdtemp(prefix="micro_fast_mutant_"))
    shutil.copytree(template, root, dirs_exist_ok=True)  # copy2: keeps modification times
    if reference_only or (mutant is not None and mutant.compiled):
        for so in (root / "micro_fast").glob("_C*.so"):
            so.unlink()
    if mutant is not None and mutant.file.startswith(NUMBA_SOURCES):
        for cache in numba_caches(root):
            cache.unlink()
    if reference_only:
        # a failing module of each name: otherwise the editable install would find the
        # checkout's _C, and numba is installed
        for blocker in (root / HIDDEN / "numba" / "__init__.py", root / "micro_fast" / "_C.py"):
            blocker.parent.mkdir(parents=True, exist_ok=True)
            blocker.write_text('raise ImportError("hidden by the mutation run: only torch_ref '
                               'runs")\n')
    return root


def apply(root: Path, mutant: Mutant) -> None:
    """Replaces the mutant's ``old`` by ``new``; ``ValueError`` unless ``old`` occurs exactly
    once (a mutant whose code moved must be updated, not silently skipped)."""
    path = root / mutant.file
    text = path.read_text()
    count = text.count(mutant.old)
    if count != 1:
        raise ValueError(f"{mutant.id}: `old` occurs {count} times in {mutant.file}, not once")
    path.write_text(text.replace(mutant.old, mutant.new))


def check_applies(mutant: Mutant, rev: str | None = None) -> str | None:
    """Why the mutant does not apply to the working tree (or to commit ``rev``), or None."""
    if rev is None:
        path = REPO / mutant.file
        text = path.read_text() if path.is_file() else None
    else:
        p = subprocess.run(["git", "show", f"{rev}:{mutant.file}"], cwd=REPO,
                           capture_output=True, text=True)
        text = p.stdout if p.returncode == 0 else None
    if text is None:
        return f"{mutant.file} does not exist"
    count = text.count(mutant.old)
    return None if count == 1 else f"`old` occurs {count} times in {mutant.file}, not once"


def env_for(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    path = [str(root / HIDDEN)] if (root / HIDDEN).is_dir() else []
    env.update(PYTHONPATH=os.pathsep.join([*path, str(root)]), HYPOTHESIS_PROFILE="ci",
               MICRO_FAST_CUDA="0", PYTHONDONTWRITEBYTECODE="1")
    return env


def run(cmd: Sequence[str], root: Path, timeout: float) -> tuple[int, str]:
    """(exit status, last lines of output); status 124 when it timed out."""
    try:
        p = subprocess.run(cmd, cwd=root, env=env_for(root), capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return 124, out[-4000:]
    return p.returncode, (p.stdout + p.stderr)[-4000:]


# Imports the package the way pytest will and names the files it came from (the copy's, not
# the checkout's: the editable install points there) and the CPU backends it finds.
_WHERE = ("import micro_fast, micro_fast.backends as b, micro_fast.backends.cpp as c; "
          "print(micro_fast.__file__); print(c._C.__file__ if c._C is not None else 'no _C'); "
          "print(','.join(b.available('cpu')))")


def check_imports(root: Path) -> str | None:
    """Why the copy's package would not be the one under test, or None."""
    status, out = run([sys.executable, "-c", _WHERE], root, 300)
    lines = out.strip().splitlines()[-3:]
    if status != 0 or len(lines) < 3:
        return f"import failed: {out.strip()[-300:]}"
    module, ext, found = lines
    if (root / HIDDEN).is_dir():
        if not module.startswith(str(root)) or ext != "no _C" or found != "torch_ref":
            return f"the reference-only copy imports {module}, {ext}, backends {found}"
    elif not (module.startswith(str(root)) and ext.startswith(str(root))):
        return f"micro_fast or its _C does not come from the copy: {module}, {ext}"
    return None


def build(root: Path, timeout: float) -> str | None:
    """Rebuilds ``_C`` in the copy; why it failed, or None. (setup.py never fails for an
    optional part, so success is the fresh extension on disk.)"""
    status, out = run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], root,
                      timeout)
    if status != 0:
        return f"build failed ({status}): {out.strip()[-300:]}"
    if not list((root / "micro_fast").glob("_C*.so")):
        info = root / "micro_fast" / "_build_info.json"
        why = info.read_text()[-300:] if info.is_file() else "no build record"
        return f"build produced no _C: {why}"
    return None


def pytest_cmd(selection: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-x", "-q", *selection]


def last_line(out: str) -> str:
    lines = [line for line in out.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def verdict(out: str) -> str:
    """The first failing test (from pytest's short summary) and the closing line."""
    failed = [line.split(" - ")[0] for line in out.splitlines()
              if line.startswith(("FAILED ", "ERROR "))]
    return (f"{failed[0]}; " if failed else "") + last_line(out)


def run_mutant(mutant: Mutant, template: Path, timeout: float, keep: bool) -> Result:
    t0 = time.monotonic()
    selection = " ".join(mutant.tests) + (f" -k '{mutant.k}'" if mutant.k else "") + \
        (" (torch_ref only)" if mutant.reference_only else "")

    def done(outcome: str, detail: str) -> Result:
        return Result(mutant.id, mutant.file, mutant.description, outcome, detail, selection,
                      round(time.monotonic() - t0, 1))

    root = make_copy(template, mutant, mutant.reference_only)
    try:
        try:
            apply(root, mutant)
        except ValueError as exc:
            return done("ERROR", str(exc))
        if mutant.compiled:
            why = build(root, timeout)
            if why:
                return done("ERROR", why)
        why = check_imports(root)
        if why:
            return done("ERROR", why)
        status, out = run(pytest_cmd(mutant.selection()), root, timeout)
        if status == 0:
            return done("SURVIVED", last_line(out))
        if status == 1:
            return done("KILLED", verdict(out))
        if status < 0:  # a signal: the bug crashed the process, which a test run reports
            return done("KILLED", f"crashed (signal {-status})")
        if status == 124:
            return done("ERROR", f"timed out after {timeout:.0f} s")
        return done("ERROR", f"pytest exit status {status}: {last_line(out)}")
    finally:
        if keep:
            print(f"  kept {root}", flush=True)
        else:
            shutil.rmtree(root, ignore_errors=True)


def baseline(mutants: Sequence[Mutant], template: Path, timeout: float) -> list[str]:
    """Runs every distinct selection on the unmutated tree; the failures (empty when all
    pass). The selections of full runs run in the template itself, which also fills its
    numba caches with every kernel they compile, for the mutants' copies to reuse; those of
    reference-only runs in one reference-only copy."""
    failures = []
    ref_copy = make_copy(template, None, reference_only=True) \
        if any(m.reference_only for m in mutants) else None
    try:
        for root in (template, ref_copy):
            if root is None:
                continue
            why = check_imports(root)
            if why:
                return [f"unmutated copy: {why}"]
            wanted = (m.selection() for m in mutants if m.reference_only == (root == ref_copy))
            for sel in dict.fromkeys(wanted):
                t0 = time.monotonic()
                status, out = run(pytest_cmd(sel), root, timeout)
                mode = " (torch_ref only)" if root == ref_copy else ""
                line = f"{' '.join(sel)}{mode}: exit {status} in {time.monotonic() - t0:.0f} s"
                print(f"  baseline {line} ({last_line(out)})", flush=True)
                if status != 0:
                    failures.append(f"{line}\n{out.strip()[-1500:]}")
    finally:
        if ref_copy is not None:
            shutil.rmtree(ref_copy, ignore_errors=True)
    return failures


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}, " \
           f"Python {platform.python_version()}"


def source_state(rev: str | None) -> str:
    """The commit the copies were made from, and whether the working tree's edits were in."""
    if rev is not None:
        return f"{git('rev-parse', rev).strip()} (files of that commit)"
    head = git("rev-parse", "HEAD").strip()
    dirty = [n for n in git("diff", "--name-only", "HEAD").splitlines() if n]
    return head + (f" with uncommitted changes in {len(dirty)} tracked files" if dirty else "")


def write_results(results: list[Result], out_dir: Path, seconds: float, state: str) -> None:
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    counts = {o: sum(r.outcome == o for r in results) for o in ("KILLED", "SURVIVED", "ERROR")}
    meta = {"generated": when, "source": state,
            "machine": machine(), "seconds": round(seconds, 1), "counts": counts}
    (out_dir / "results.json").write_text(json.dumps(
        {**meta, "mutants": [asdict(r) for r in results]}, indent=1) + "\n")
    lines = [
        "# Mutation run results",
        "",
        "Generated by `python tools/mutation/run.py` (do not edit by hand).",
        "",
        f"- date: {when}",
        f"- source: {state}",
        f"- machine: {meta['machine']}",
        f"- mutants: {len(results)}: {counts['KILLED']} killed, {counts['SURVIVED']} survived, "
        f"{counts['ERROR']} errors, in {seconds / 60:.1f} min",
        "",
        "| id | file | bug | outcome | tests run | s |",
        "|---|---|---|---|---|---:|",
    ]
    for r in results:
        bug = r.description.replace("|", "\\|")
        tests = r.tests.replace("|", "\\|")
        lines.append(f"| {r.id} | `{r.file}` | {bug} | **{r.outcome}** | `{tests}` | "
                     f"{r.seconds:.0f} |")
    survivors = [r for r in results if r.outcome != "KILLED"]
    if survivors:
        lines += ["", "## Not killed", ""]
        lines += [f"- `{r.id}` ({r.outcome}): {r.detail}" for r in survivors]
    (out_dir / "RESULTS.md").write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated mutant ids")
    ap.add_argument("--list", action="store_true", help="print the mutants and exit")
    ap.add_argument("--check", action="store_true",
                    help="only check that every selected mutant applies to the checkout")
    ap.add_argument("--jobs", type=int, default=1, help="mutants run at once (default 1)")
    ap.add_argument("--timeout", type=float, default=900,
                    help="seconds for one build or one test run (default 900)")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the unmutated run (only to try a new mutant quickly)")
    ap.add_argument("--untracked", action="store_true",
                    help="also copy files git does not track nor ignore (new tests)")
    ap.add_argument("--rev", help="copy the files of this commit instead of the working tree")
    ap.add_argument("--keep", action="store_true", help="keep the copies (paths printed)")
    ap.add_argument("--out", type=Path,
                    help="where RESULTS.md and results.json go (default: this folder for a "
                         "run of every mutant; none with --only)")
    args = ap.parse_args(argv)

    ids = [m.id for m in MUTANTS]
    assert len(set(ids)) == len(ids), "mutant ids must be unique"
    selected = list(MUTANTS)
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = sorted(set(wanted) - set(ids))
        if unknown:
            ap.error(f"unknown mutant ids: {', '.join(unknown)}")
        selected = [m for m in MUTANTS if m.id in wanted]
    if args.list:
        for m in selected:
            print(f"{m.id:48} {m.file:42} {m.description}")
        return 0
    bad = {m.id: why for m in selected if (why := check_applies(m, args.rev))}
    for mid, why in bad.items():
        print(f"DOES NOT APPLY {mid}: {why}", flush=True)
    if args.check:
        print(f"{len(selected) - len(bad)} of {len(selected)} mutants apply")
        return 1 if bad else 0
    out_dir = args.out or (None if args.only else HERE)
    if not list((REPO / "micro_fast").glob("_C*.so")):
        print("micro_fast._C is not built in the checkout: build it first "
              "(MICRO_FAST_CUDA=0 python setup.py -q build_ext --inplace)", file=sys.stderr)
        return 2

    state = source_state(args.rev)
    template = make_template(args.rev, args.untracked, args.timeout)
    try:
        t0 = time.monotonic()
        if not args.no_baseline:
            print(f"baseline: {len({(m.selection(), m.reference_only) for m in selected})} "
                  "selections on the unmutated tree", flush=True)
            failures = baseline(selected, template, args.timeout)
            if failures:
                print("\nthe unmutated tree fails these selections; fix that first, the "
                      "mutants would mean nothing:\n\n" + "\n\n".join(failures),
                      file=sys.stderr)
                return 2

        def one(m: Mutant) -> Result:
            r = run_mutant(m, template, args.timeout, args.keep)
            print(f"{r.outcome:8} {r.seconds:6.0f} s  {m.id}: {r.detail}", flush=True)
            return r

        print(f"{len(selected)} mutants, {args.jobs} at a time", flush=True)
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            results = list(pool.map(one, selected))
        seconds = time.monotonic() - t0
    finally:
        shutil.rmtree(template, ignore_errors=True)
    if out_dir is not None:
        write_results(results, out_dir, seconds, state)
        print(f"wrote {out_dir / 'RESULTS.md'} and results.json")
    counts = {o: sum(r.outcome == o for r in results) for o in ("KILLED", "SURVIVED", "ERROR")}
    print(f"{counts['KILLED']} killed, {counts['SURVIVED']} survived, {counts['ERROR']} errors "
          f"in {seconds / 60:.1f} min")
    for r in results:
        if r.outcome != "KILLED":
            print(f"  {r.outcome}: {r.id} ({r.tests})")
    return 0 if counts["KILLED"] == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
