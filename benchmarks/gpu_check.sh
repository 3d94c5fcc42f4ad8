#!/usr/bin/env bash
# The GPU check of micro_fast: builds the CUDA extension for this machine's GPU, runs the GPU
# benchmarks, the CUDA tests, Nsight Compute and compute-sanitizer on its kernels and one
# training epoch at Clothing size, and writes REPORT.md. At most 9 minutes on one GPU. From the
# repository root:
#
#   OUT=/path/to/results bash benchmarks/gpu_check.sh
#   GPU_CHECK_DRY_RUN=1 OUT=$(mktemp -d) bash benchmarks/gpu_check.sh   # rehearsal, no GPU
#   bash benchmarks/gpu_check.sh --dry-run --out DIR                   # the same
#   bash benchmarks/gpu_check.sh --stages "build bench"                # some stages only
#
# Stages (in this order, the most valuable first; each under its own timeout, recorded in
# $OUT/stages.tsv as stage, status pass|fail|timeout|skipped, seconds, exit code, timeout, note; a
# failing or stopped stage does not stop the next ones; the whole within GPU_CHECK_TOTAL_S, 540 s):
#   build      MICRO_FAST_CUDA=1 MICRO_FAST_CUDA_ARCHS=<the GPU's compute capability, e.g. 90>
#              MICRO_FAST_BUILD_JOBS=$(nproc) python setup.py build_ext --inplace (no pip;
#              every source compiled in parallel), then `import micro_fast._cuda`
#   (gate)     see below
#   info       micro-fast info
#   tune       micro-fast tune with tuning on and a fresh cache: what `auto` would run on this GPU
#              (cuda, numba_cuda or torch_ref's blocked cuBLAS products, for the top-k search,
#              the contrastive loss and spmm) and each candidate's time; the other stages keep
#              MICRO_FAST_TUNE=0, so they measure the cuda kernels themselves
#   bench      benchmarks/gpu_bench.py (kNN, contrastive, spmm, evaluation; see its docstring)
#   tests      pytest -k "cuda and not simulator" over tests/: tests/test_cuda_parity.py, the cuda
#              cases of test_spmm.py and every test of test_numba_cuda.py on the real GPU (not
#              its simulator subprocess); JUnit XML in $OUT/tests.xml
#   ncu        Nsight Compute (SpeedOfLight, Occupancy, LaunchStats) over one launch of each of
#              this library's kernels (float32, benchmarks/gpu_sanitize_ops.py); "not found"
#              when ncu is neither on PATH nor in /usr/local/cuda*/bin
#   sanitize   compute-sanitizer --tool memcheck on this library's kernels only (kernel names
#              holding micro_fast), float32 and float64, on benchmarks/gpu_sanitize_ops.py with
#              PyTorch's caching allocator off so that every buffer is an allocation of its
#              own; then racecheck and synccheck (float32) only while the epoch keeps its share
#              of the time; the ERROR SUMMARY count goes into the note ("not found" when
#              compute-sanitizer is neither on PATH nor in /usr/local/cuda*/bin)
#   epoch      benchmarks/gpu_epoch.py (micro-fast train --data synthetic:clothing --epochs 1
#              --device cuda, and the published step timed on the same GPU), with all the time
#              left
# then $OUT/REPORT.md (benchmarks/gpu_report.py) and a short summary, printed last.
#
# $OUT holds at most 7 files, no folder: REPORT.md, stages.tsv, tests.xml, bench.json,
# epoch.json, logs.tgz and, while a stage runs, its log ($OUT/<stage>.log). logs.tgz and
# REPORT.md are rewritten after every stage, so a stopped check keeps what it did; logs.tgz
# holds the stage logs (the build's among them), info.txt, machine.json, bench.md, epoch.md,
# the parsed sanitizer results and the training run's metrics. The run's checkpoints stay in
# the work folder.
#
# The gate: after the build, unless `import micro_fast._cuda` works and `auto` runs top-k, spmm
# and the contrastive loss on CUDA tensors with the cuda kernels, the tests, sanitize, bench and
# epoch stages fail with the reason ("no cuda backend") instead of measuring a fallback.
#
# Dry run (GPU_CHECK_DRY_RUN=1 or --dry-run), for a machine without a GPU: no build, no GPU;
# a build that times out and the gate that must close after it, then `micro-fast info`, collects the CUDA test selection, runs a stage that must time out
# (the timeout bookkeeping), the sanitizer-log parser on canned logs, gpu_sanitize_ops.py,
# gpu_bench.py and gpu_epoch.py on the CPU (--device cpu, tiny problems), and the report.
#
# Environment: OUT (output folder; default a new folder under /tmp), GPU_CHECK_WORK (work
# folder; default a new folder under /tmp), PYTHON (default python3, else python),
# GPU_CHECK_STAGES, the budgets below (seconds), MICRO_FAST_TUNE (default 0 here: the
# built-in kernel choices, nothing calibrated mid-run). Exit status: 0 when every stage passed.
set -u
export LC_ALL=C
now() { if [ -n "${EPOCHREALTIME:-}" ]; then echo "$EPOCHREALTIME"; else date +%s.%N; fi; }
T_START=$(now)

# --- budgets (seconds) ------------------------------------------------------------------------
TOTAL_S=${GPU_CHECK_TOTAL_S:-540}          # the whole check; stage timeouts are cut to fit it
REPORT_RESERVE_S=${GPU_CHECK_REPORT_RESERVE_S:-12}   # kept for the report at the end
BUILD_S=${GPU_CHECK_BUILD_S:-90}
INFO_S=${GPU_CHECK_INFO_S:-20}
TUNE_S=${GPU_CHECK_TUNE_S:-30}
BENCH_S=${GPU_CHECK_BENCH_S:-160}
TESTS_S=${GPU_CHECK_TESTS_S:-75}
NCU_S=${GPU_CHECK_NCU_S:-45}
MEMCHECK_S=${GPU_CHECK_MEMCHECK_S:-75}
RACECHECK_S=${GPU_CHECK_RACECHECK_S:-35}   # only with this much time left beyond the epoch's
SYNCCHECK_S=${GPU_CHECK_SYNCCHECK_S:-20}   # likewise
EPOCH_S=${GPU_CHECK_EPOCH_S:-55}           # at least; the last stage gets all that is left
MIN_STAGE_S=5                               # a stage with less time left than this is skipped

STAGES=${GPU_CHECK_STAGES:-"build info tune bench tests ncu sanitize epoch"}
SANITIZER_TOOLS=${GPU_CHECK_SANITIZER_TOOLS:-"memcheck racecheck synccheck"}
DRY_RUN=${GPU_CHECK_DRY_RUN:-0}

usage() { sed -n '2,/^set -u/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --out) OUT=$2; shift ;;
    --out=*) OUT=${1#--out=} ;;
    --stages) STAGES=$2; shift ;;
    --stages=*) STAGES=${1#--stages=} ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  shift
done
case "$DRY_RUN" in 1|yes|true) DRY_RUN=1 ;; *) DRY_RUN=0 ;; esac

OUT=${OUT:-$(mktemp -d /tmp/gpu_check_out.XXXXXX)}
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
WORK=${GPU_CHECK_WORK:-$(mktemp -d /tmp/gpu_check_work.XXXXXX)}
mkdir -p "$WORK/logs" || exit 2
WORK=$(cd "$WORK" && pwd)
LOGS=$WORK/logs
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
export MICRO_FAST_TUNE=${MICRO_FAST_TUNE:-0}
export PYTHONUNBUFFERED=1
# the scripts import micro_fast from this tree, installed or built in place
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
[ "$DRY_RUN" = 1 ] && echo "dry run: no build, nothing on a GPU" > "$LOGS/DRY_RUN"

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3 python "$ROOT/venv/bin/python" "$ROOT/.venv/bin/python"; do
    if command -v "$cand" >/dev/null 2>&1 && "$cand" -c "import torch" >/dev/null 2>&1; then
      PY=$cand; break
    fi
  done
  PY=${PY:-python3}
fi
REPORT="$PY $ROOT/benchmarks/gpu_report.py"

# --- clock and stage bookkeeping ----------------------------------------------------------------
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
# seconds the whole check has left for stages
time_left() {
  awk -v start="$T_START" -v now="$(now)" -v total="$TOTAL_S" -v reserve="$REPORT_RESERVE_S" \
      'BEGIN { left = total - reserve - (now - start); printf "%d", (left > 0) ? left : 0 }'
}
# the timeout of a stage: its budget, cut to what the whole check has left
stage_limit() {
  local left; left=$(time_left)
  if [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}

printf 'stage\tstatus\tseconds\trc\ttimeout_s\tnote\n' > "$OUT/stages.tsv"
ALL_OK=1
LAST_STATUS=skipped LAST_RC=- LAST_SECS=0 LAST_LIMIT=0 LAST_LOG=/dev/null

# run_stage NAME BUDGET CMD...: runs CMD under its timeout, output in $OUT/NAME.log
run_stage() {
  local name=$1 budget=$2; shift 2
  LAST_LIMIT=$(stage_limit "$budget")
  LAST_LOG=$OUT/$name.log
  if [ "$(time_left)" -lt "$MIN_STAGE_S" ]; then
    LAST_STATUS=skipped LAST_RC=- LAST_SECS=0
    echo "no time left in the ${TOTAL_S} s budget" > "$LAST_LOG"
    return 0
  fi
  echo "== $name (timeout ${LAST_LIMIT} s): $*"
  local t0; t0=$(now)
  timeout -k 10 "$LAST_LIMIT" "$@" > "$LAST_LOG" 2>&1 < /dev/null
  LAST_RC=$?
  LAST_SECS=$(since "$t0")
  if [ "$LAST_RC" -eq 0 ]; then
    LAST_STATUS=pass
  elif [ "$LAST_RC" -eq 124 ] || { [ "$LAST_RC" -eq 137 ] &&
      awk -v s="$LAST_SECS" -v l="$LAST_LIMIT" 'BEGIN { exit !(s >= l) }'; }; then
    LAST_STATUS=timeout
  else
    LAST_STATUS=fail
  fi
  return 0
}

# a log of more than 16 MB keeps its first 2 and last 8 MB
cap_log() {
  local f=$1 size
  size=$(wc -c < "$f" 2>/dev/null || echo 0)
  if [ "$size" -gt 16000000 ]; then
    { head -c 2000000 "$f"; printf '\n[... %s bytes cut ...]\n' "$((size - 10000000))";
      tail -c 8000000 "$f"; } > "$f.cut" && mv "$f.cut" "$f"
  fi
}

refresh() {
  $REPORT report --out "$OUT" --work "$LOGS" > /dev/null 2>&1 || true
  cp "$OUT/REPORT.md" "$LOGS/REPORT.md" 2>/dev/null || true
  tar -czf "$OUT/logs.tgz.part" -C "$WORK" logs 2>/dev/null &&
    mv "$OUT/logs.tgz.part" "$OUT/logs.tgz"
  rm -f "$OUT/logs.tgz.part"
}

# record NAME NOTE [EXPECTED]: the row of the last stage; its log moves into logs.tgz
record() {
  local name=$1 note=${2:-} expected=${3:-pass}
  if [ "$LAST_STATUS" = fail ] || [ "$LAST_STATUS" = timeout ]; then
    [ "$LAST_STATUS" != "$expected" ] && note="${note:+$note; }log ends: $(last_line "$LAST_LOG")"
  fi
  note=$(printf '%s' "$note" | tr '\t\n|' '  /' | cut -c1-300)
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$LAST_STATUS" "$LAST_SECS" "$LAST_RC" \
    "$LAST_LIMIT" "$note" >> "$OUT/stages.tsv"
  echo "   $name: $LAST_STATUS in $LAST_SECS s${note:+ ($note)}"
  if [ "$LAST_STATUS" != "$expected" ] && [ "$LAST_STATUS" != skipped ]; then ALL_OK=0; fi
  if [ "$LAST_STATUS" = skipped ] && [ "$expected" != skipped ]; then ALL_OK=0; fi
  if [ -f "$LAST_LOG" ] && [ "$LAST_LOG" != /dev/null ]; then
    cap_log "$LAST_LOG"
    mv "$LAST_LOG" "$LOGS/$name.log"
  fi
  refresh
}

skip() {  # skip NAME NOTE: a stage that does not apply here
  LAST_STATUS=skipped LAST_RC=- LAST_SECS=0 LAST_LIMIT=0 LAST_LOG=/dev/null
  record "$1" "$2" skipped
}

last_line() { grep -v '^\s*$' "$1" 2>/dev/null | tail -n 1 | cut -c1-200; }
has_stage() { case " $STAGES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

find_sanitizer() {
  local c
  c=$(command -v compute-sanitizer 2>/dev/null) && { echo "$c"; return 0; }
  for c in /usr/local/cuda*/bin/compute-sanitizer /usr/local/cuda*/compute-sanitizer/compute-sanitizer \
           /opt/nvidia/*/compute-sanitizer /opt/cuda*/bin/compute-sanitizer; do
    [ -x "$c" ] && { echo "$c"; return 0; }
  done
  return 1
}

# sanitizer_note LOG TOOL: parses a compute-sanitizer log into $LOGS/sanitize_TOOL.json
sanitizer_note() {
  local parsed
  parsed=$($REPORT sanitizer "$1" --json "$LOGS/sanitize_$2.json" 2>&1) ||
    { echo "parser failed: $(printf '%s' "$parsed" | tail -n 1)"; return; }
  local errors=${parsed%%$'\t'*} status=${parsed#*$'\t'}
  local calls; calls=$(grep -E '^[0-9]+ calls, ' "$1" | tail -n 1)
  echo "errors=$errors ($status)${calls:+; $calls}"
}

# --- the stages -----------------------------------------------------------------------------
SANITIZER=$(find_sanitizer || true)
find_ncu() {
  local c
  c=$(command -v ncu 2>/dev/null) && { echo "$c"; return 0; }
  for c in /usr/local/cuda*/bin/ncu /opt/nvidia/nsight-compute/*/ncu; do
    [ -x "$c" ] && { echo "$c"; return 0; }
  done
  return 1
}
NCU=$(find_ncu || true)
echo "micro_fast GPU check: $ROOT -> $OUT (work $WORK), python $PY, dry run $DRY_RUN,"\
     "budget ${TOTAL_S} s, stages: $STAGES"
$PY "$ROOT/benchmarks/gpu_report.py" machine --out "$LOGS/machine.json" \
  --sanitizer "${SANITIZER:-}" > /dev/null 2>&1 || echo "machine record failed"

if has_stage build; then
  if [ "$DRY_RUN" = 1 ]; then
    skip build "dry run"
    run_stage import 30 "$PY" -c "from micro_fast import backends as b; \
print('; '.join(f'{k}: {v}' for k, v in b.status().items()))"
    record import "$(last_line "$LAST_LOG")"
  else
    # the GPU's compute capability (GPU_ARCH, not CC: CC names the C compiler to the build)
    GPU_ARCH=$("$PY" -c "import torch; M, m = torch.cuda.get_device_capability(0); print(f'{M}{m}')" \
         2>/dev/null | tail -n 1)
    if [ -z "$GPU_ARCH" ] && command -v nvidia-smi >/dev/null 2>&1; then
      GPU_ARCH=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null |
                 head -n 1 | tr -d ' .')
    fi
    if [ -n "$GPU_ARCH" ]; then export MICRO_FAST_CUDA_ARCHS=$GPU_ARCH; fi
    # no pip (nothing to resolve or download): both extensions in place, every source file
    # compiled in parallel (about 40 s of CPU in all; the slowest file, bindings.cu, 13 s)
    export MICRO_FAST_CUDA=1 MICRO_FAST_INPLACE_INFO=1 PY
    export MICRO_FAST_BUILD_JOBS=${MICRO_FAST_BUILD_JOBS:-$(nproc 2>/dev/null || echo 4)}
    run_stage build "$BUILD_S" "$PY" setup.py build_ext --inplace
    if [ "$LAST_STATUS" = pass ]; then
      IMPORT=$("$PY" -c "import micro_fast._cuda; from micro_fast import backends; \
print('cuda:', backends.status()['cuda'], '| numba_cuda:', backends.status()['numba_cuda'])" \
               2>&1 | tail -n 1)
      "$PY" -c "import micro_fast._cuda" > /dev/null 2>&1 || LAST_STATUS=fail
    else
      IMPORT="build $LAST_STATUS: $(last_line "$LAST_LOG")"
    fi
    record build "archs ${MICRO_FAST_CUDA_ARCHS:-default}; $IMPORT"
  fi
fi

# --- the gate: the GPU stages measure the cuda kernels or say that they cannot ----------------
# cuda_gate prints why `auto` would not run CUDA tensors on the cuda kernels (nothing when it
# would); with the gate closed, tests, sanitize, bench and epoch fail with that reason instead
# of passing on a fallback (numba_cuda or torch_ref)
cuda_gate() {
  "$PY" - 2>&1 <<'PY' | tail -n 1
import torch
try:
    import micro_fast._cuda  # noqa: F401
except Exception as exc:
    raise SystemExit(print(f"import micro_fast._cuda failed: {type(exc).__name__}: {exc}"))
from micro_fast import backends
if not torch.cuda.is_available():
    raise SystemExit(print("torch sees no CUDA device"))
for op in ("topk_similarity", "spmm", "contrastive_forward"):
    name = backends.get("auto", torch.device("cuda"), op=op).__name__.rsplit(".", 1)[-1]
    if name != "cuda":
        raise SystemExit(print(f"auto runs {op} on CUDA tensors with {name}, not cuda"))
PY
}
# gated NAME [EXPECTED]: with the gate closed, records NAME as failed without running it
gated() {
  [ -z "$NO_CUDA" ] && return 1
  LAST_STATUS=fail LAST_RC=- LAST_SECS=0 LAST_LIMIT=0 LAST_LOG=/dev/null
  record "$1" "not run: no cuda backend ($NO_CUDA)" "${2:-pass}"
  return 0
}
NO_CUDA=""
if [ "$DRY_RUN" = 1 ]; then
  # the gate after a build that cannot finish: it must close, and close the stages after it
  run_stage selftest_slow_build 2 sleep 30
  record selftest_slow_build "a build past its timeout (dry-run self-test)" timeout
  GATE=$(CUDA_VISIBLE_DEVICES="" cuda_gate)  # as after a failed build: no usable GPU
  if [ -n "$GATE" ]; then
    LAST_STATUS=pass NOTE="closed as it must: $GATE"
  else
    LAST_STATUS=fail NOTE="open without a cuda build"
  fi
  LAST_RC=- LAST_SECS=0 LAST_LIMIT=0 LAST_LOG=/dev/null
  record selftest_gate "$NOTE"
  NO_CUDA=$GATE
  gated selftest_gated_stage fail || { LAST_STATUS=pass; record selftest_gated_stage \
    "ran although the gate was closed" fail; }
  NO_CUDA=""  # the dry-run stages below run on the CPU
else
  NO_CUDA=$(cuda_gate)
  if [ -z "$NO_CUDA" ]; then LAST_STATUS=pass; else LAST_STATUS=fail; fi
  LAST_RC=- LAST_SECS=0 LAST_LIMIT=0 LAST_LOG=/dev/null
  record gate "${NO_CUDA:-open: auto runs top-k, spmm and the contrastive loss with cuda}"
fi

MF=(micro-fast)
command -v micro-fast > /dev/null 2>&1 || MF=("$PY" -m micro_fast.cli)
if has_stage info; then
  run_stage info "$INFO_S" "${MF[@]}" info
  cp "$LAST_LOG" "$LOGS/info.txt" 2>/dev/null || true
  record info "$(grep -E '^ +cuda ' "$LAST_LOG" | head -n 1 | sed 's/^ *//')"
fi

if has_stage tune && ! gated tune; then
  # exit 3: a measurement was taken on a busy machine and kept the defaults (noted, not failed)
  run_stage tune "$TUNE_S" env MICRO_FAST_TUNE=1 MICRO_FAST_CACHE_DIR="$WORK/tuning" \
    "${MF[@]}" tune
  # exit 2: nothing to tune (no compiled core importable, as in a dry run from a source tree)
  TUNE_NOTE=$(grep -E '\-> ' "$LAST_LOG" | grep -E 'backend' | sed 's/^ *//' | tr '\n' ';' \
    | cut -c1-300)
  if [ "$LAST_STATUS" = fail ] && { [ "$LAST_RC" = 3 ] || [ "$LAST_RC" = 2 ]; }; then
    LAST_STATUS=pass
    [ "$LAST_RC" = 2 ] && TUNE_NOTE="nothing to tune: $(last_line "$LAST_LOG")"
  fi
  cp "$LAST_LOG" "$LOGS/tune.txt" 2>/dev/null || true
  record tune "$TUNE_NOTE"
fi

if has_stage bench && ! gated bench; then
  if [ "$DRY_RUN" = 1 ]; then
    DEV=(--device cpu --quick)
  else
    DEV=(--device cuda)
  fi
  # right after the build: what the GPU is lent for comes first
  LIMIT_NOW=$(stage_limit "$BENCH_S")
  run_stage bench "$BENCH_S" "$PY" benchmarks/gpu_bench.py "${DEV[@]}" \
    --budget "$((LIMIT_NOW > 20 ? LIMIT_NOW - 10 : 10))" \
    --out "$OUT/bench.json" --md "$LOGS/bench.md"
  record bench "$($REPORT targets "$OUT/bench.json" 2>&1 | tail -n 1)"
fi

if has_stage tests; then
  SELECT=(-q -p no:cacheprovider -k "cuda and not simulator" tests)
  if [ "$DRY_RUN" = 1 ]; then
    run_stage tests "$TESTS_S" "$PY" -m pytest --collect-only "${SELECT[@]}" \
      --junitxml="$OUT/tests.xml"
    record tests "collect only: $(last_line "$LAST_LOG")"
    # the timeout bookkeeping: this stage must end as a timeout after about 2 s
    run_stage selftest_timeout 2 sleep 30
    record selftest_timeout "must time out (dry-run self-test)" timeout
  elif ! gated tests; then
    run_stage tests "$TESTS_S" "$PY" -m pytest "${SELECT[@]}" --junitxml="$OUT/tests.xml"
    record tests "$(last_line "$LAST_LOG")"
  fi
fi

if has_stage ncu; then
  if [ "$DRY_RUN" = 1 ]; then
    skip ncu "dry run; ncu: ${NCU:-not found}"
  elif [ -z "$NCU" ]; then
    skip ncu "ncu not found (PATH, /usr/local/cuda*/bin)"
  elif ! gated ncu; then
    # one launch of each of this library's kernels (float32): speed of light, occupancy and
    # launch statistics, to explain a missed target
    run_stage ncu "$NCU_S" "$NCU" --section SpeedOfLight --section Occupancy \
      --section LaunchStats --kernel-name-base mangled --kernel-name regex:micro_fast \
      --launch-count 40 --csv --page details "$PY" benchmarks/gpu_sanitize_ops.py \
      --dtypes float32
    cp "$LAST_LOG" "$LOGS/ncu.csv" 2>/dev/null || true
    record ncu "$(grep -c '"Duration"' "$LAST_LOG" 2>/dev/null || echo 0) kernel launches profiled"
  fi
fi

if has_stage sanitize; then
  if [ "$DRY_RUN" = 1 ]; then
    run_stage sanitizer_parser 30 $REPORT selftest
    record sanitizer_parser "$(last_line "$LAST_LOG")"
    # a canned memcheck log through the path the real stage takes
    $PY -c "import sys; sys.path.insert(0, 'benchmarks'); import gpu_report as g; \
print(g._SAMPLES['memcheck_errors'][0])" > "$LOGS/canned_memcheck.log" 2>&1
    LAST_STATUS=pass LAST_RC=0 LAST_SECS=0 LAST_LIMIT=0 LAST_LOG=/dev/null
    record sanitize_canned "canned memcheck log (not a measurement): \
$(sanitizer_note "$LOGS/canned_memcheck.log" canned-sample)"
    run_stage sanitize_ops_cpu 90 "$PY" benchmarks/gpu_sanitize_ops.py --device cpu
    record sanitize_ops_cpu "$(last_line "$LAST_LOG"); compute-sanitizer: ${SANITIZER:-not found}"
  elif [ -z "$SANITIZER" ]; then
    for tool in $SANITIZER_TOOLS; do
      skip "sanitize_$tool" "compute-sanitizer not found (PATH, /usr/local/cuda*/bin)"
    done
  else
    for tool in $SANITIZER_TOOLS; do
      gated "sanitize_$tool" && continue
      case $tool in
        memcheck) budget=$MEMCHECK_S; extra=() ;;
        racecheck) budget=$RACECHECK_S; extra=(--dtypes float32) ;;
        synccheck) budget=$SYNCCHECK_S; extra=(--dtypes float32) ;;
        *) budget=20; extra=(--dtypes float32) ;;
      esac
      # memcheck always; the others only when the epoch keeps its share
      if [ "$tool" != memcheck ] && [ "$(time_left)" -lt $((budget + EPOCH_S)) ]; then
        skip "sanitize_$tool" "not enough time left (the epoch keeps ${EPOCH_S} s)"
        continue
      fi
      # this library's kernels only (their names hold micro_fast): torch's are not ours to
      # check, and instrumenting them would spend the budget
      run_stage "sanitize_$tool" "$budget" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
        "$SANITIZER" --tool "$tool" --kernel-name kns=micro_fast --print-limit 100 \
        --error-exitcode 99 "$PY" benchmarks/gpu_sanitize_ops.py "${extra[@]}"
      record "sanitize_$tool" "$(sanitizer_note "$LAST_LOG" "$tool")"
    done
  fi
fi

if has_stage epoch && ! gated epoch; then
  if [ "$DRY_RUN" = 1 ]; then
    DEV=(--device cpu --quick)
  else
    DEV=(--device cuda)
  fi
  BUDGET=$EPOCH_S
  [ "$(time_left)" -gt "$BUDGET" ] && BUDGET=$(time_left)
  run_stage epoch "$BUDGET" "$PY" benchmarks/gpu_epoch.py "${DEV[@]}" \
    --run-dir "$WORK/run-clothing" --out "$OUT/epoch.json" --md "$LOGS/epoch.md"
  mkdir -p "$LOGS/run-clothing"
  for f in config.json metrics.jsonl summary.json curves.png; do
    cp "$WORK/run-clothing/$f" "$LOGS/run-clothing/" 2>/dev/null || true
  done
  record epoch "$(grep -E '^- (batch|epoch|metrics):' "$LOGS/epoch.md" 2>/dev/null | head -n 1 |
                 cut -c3-160)"
fi

# --- the report -------------------------------------------------------------------------------
refresh
echo
echo "total $(since "$T_START") s; REPORT.md, stages.tsv, logs.tgz in $OUT"
echo
$REPORT report --out "$OUT" --work "$LOGS" --summary || cat "$OUT/stages.tsv"
[ "$ALL_OK" = 1 ]
