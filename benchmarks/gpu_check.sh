#!/usr/bin/env bash
# The GPU check: one command, at most 9 minutes, no network.
#
#   bash benchmarks/gpu_check.sh                  # first call on the GPU machine, its python3 as it is (no venv, pip, make)
#   MODE=followup bash benchmarks/gpu_check.sh    # a second call on the still-warm machine: <= 150 s, no build
#   DRY_RUN=1 bash benchmarks/gpu_check.sh        # the same phases on CPU (make gpu-check; tested in CI)
#
# Phases of the first call, in order of value per second, each under its cap cut to the time left of BUDGET,
# each adding its line to summary.txt (and to the state record) as soon as it ends:
#   build           setup.py build_ext --inplace (sm_90, 16 jobs; ptxas registers and spills in build.txt), in the
#                   background while edge-triton runs
#   edge-triton     Triton kernels against the reference (gpu_edge.py: small set, bf16 and fp32, streams)
#   backend         after the build: the CUDA backend must load, else exit 2 (never a green run of skips)
#   edge-cuda       CUDA kernels against the reference: every dtype and path, B = 70,000, > 2^31 elements, streams
#   sass            store and load widths per kernel in the built objects (sass_stores.py)
#   memcheck        compute-sanitizer memcheck on the small edge set, caching allocator off
#   tests-cuda      the suite's CUDA op tests (correctness, opcheck, autograd, torch.compile)
#   tests-triton    the suite's Triton op tests with heuristic tiles (MIXSHARE_OPS_TRITON_AUTOTUNE=0)
#   tests-autotune  a subset of the Triton op tests, autotuned
#   bench           op benchmark, bf16, both layouts: bandwidth-bound shapes of every op with cuda, triton and eager
#                   first, CIFAR shapes next, torch.compile last; results.json and report.md written case by case
#   train           training step, WRN-28-2, bf16, channels_last: single vs MixShare with cuda and with triton kernels
#   cost            the cost of a prediction, WRN-28-2, B = 500, float32 and bf16: single vs MIMO (M = 2, 3) vs the
#                   Deep Ensemble of M networks, timed side by side (prediction_cost.py; cost/ in bench.tar.gz)
#   racecheck       compute-sanitizer racecheck on the pooling kernels
#   edge-triton-big Triton at full size, B = 70,000 and > 2^31 elements
# The last two usually fall to the follow-up call, which runs (BUDGET default 140 s) the backend check, then
# the phases the last first call on this tree did not finish ($STATE), or those named in PHASES, then
# bench-compile (torch.compile against cuda and triton on the bandwidth-bound and CIFAR shapes).
#
# Every step runs under a timeout: a hang ends as a TIMEOUT line, the other phases still run and the summary is
# written. Everything but the build runs with MIXSHARE_OPS_JIT=0, so no import starts a second (first-use) build.
# pytest is stopped with SIGINT, so it still prints its summary and the names of the failed tests.
#
# Environment: OUT (result folder; default a new temporary one), BUDGET (seconds), PY (the python; default python3
# on PATH), MODE (full or followup), PHASES (follow-up: the phases to run), CAPS (e.g. "bench=60 memcheck=30":
# phase caps in seconds instead of the defaults), STATE (the record of the phases that
# ended, default build/gpu-check/state), DRY_RUN (1: CPU stand-ins, below), FUSED_BACKEND (the compiled backend
# that must load: cuda, or cpu in the dry run), DRY_RUN_LIBRARY (dry run: a built _C the build step copies in
# when the tree has none).
# Results, at most 8 files in $OUT: summary.txt, env.txt (versions; nvidia-smi clocks and throttle reasons at start
# and end), build.txt, edge.txt, sass.txt, sanitizer.txt, tests.txt, bench.tar.gz (bench/report.md, results.json,
# CSVs, plots, log.txt; train/ the same for the training step).
# Exit status: 0 all phases passed; 1 a phase failed or ran out of time; 2 the CUDA backend did not load.
#
# Dry run: device cpu; the compiled C++ CPU kernels stand in for CUDA, Triton runs in its interpreter on the tiny
# case set in float32; the build step uses the tree's _C (or copies DRY_RUN_LIBRARY after 10 s, the time an
# import takes to reach the JIT); no sass, and the sanitizer phases run their edge set without compute-sanitizer.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
MODE=${MODE:-full}
case $MODE in
  full) BUDGET=${BUDGET:-530} ;;
  followup) BUDGET=${BUDGET:-140} ;;
  *) echo "MODE must be full or followup, got '$MODE'" >&2; exit 64 ;;
esac
OUT=${OUT:-$(mktemp -d -t mixshare-gpu-check-XXXXXX)}
mkdir -p "$OUT"
DRY_RUN=${DRY_RUN:-0}
PY=${PY:-$(command -v python3)}
STATE=${STATE:-$ROOT/build/gpu-check/state}
T0=$(date +%s)
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
FAILED=0
CUDA_OK=0
note() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$SUMMARY"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
# bounded SECONDS CMD...: CMD under a timeout (KILL 5 s after TERM).
bounded() { local s=$1; shift; timeout -k 5 "$s" "$@"; }

# No import of mixshare_ops compiles it: the build step is the only build.
export MIXSHARE_OPS_JIT=0
# The python's own bin folder first: its ninja (on the GPU machine nothing else is installed).
PYBIN=$(bounded 60 "$PY" -c 'import sys; print(sys.executable)') || { note "python $PY does not start"; exit 1; }
export PATH="$(dirname "$PYBIN"):$PATH"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export MIXSHARE_OPS_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
unset MIXSHARE_OPS_BACKEND MIXSHARE_OPS_TRITON_AUTOTUNE

EDGE=("$PY" -m benchmarks.gpu_edge)
PYTEST=("$PY" -m pytest -q -rfE -p no:cacheprovider --maxfail=25 -m "not slow"
        tests/test_ops_correctness.py tests/test_ops_library.py tests/test_ops_autograd.py)
# The autotuned subset: box_mix and pooling, both layouts, M = 2 and 3.
AUTOTUNE_SUBSET="(test_box_mix or test_cutmix_unmix_pool) and (m2 or default or channels_last)"
if (( DRY_RUN )); then
  DEVICE=cpu FUSED=${FUSED_BACKEND:-cpu}
  export TRITON_INTERPRET=1
  SANITIZER=()
  EDGE_FUSED=(--device cpu --backends cpu --size tiny --dtypes float32)
  EDGE_FUSED_SMALL=("${EDGE_FUSED[@]}")
  EDGE_TRITON=(--device cpu --backends triton --size tiny --dtypes float32)
  EDGE_TRITON_BIG=(--device cpu --backends triton --size tiny --dtypes float32 --ops boxes)
  TESTS_FUSED=(-k "cpu-cpu" --require-backends cpu)
  CAPS=${CAPS:-tests-cuda=150}  # 84 CPU tests on 2 cores
  TESTS_TRITON=(-k "triton-cpu and test_box_mix and (m2 or channels_last)")
  TESTS_AUTOTUNE=(-k "triton-cpu and test_cutmix_boxes_bitwise")
  BENCH=(--device cpu --quick --dtypes float32 --rotate-bytes 1000000)
  BENCH_PROVIDERS=(cpu eager) BENCH_WITHOUT_FUSED=(eager)
  COMPILE_PROVIDERS=(cpu compile) COMPILE_SHAPES=(--shapes "wrn-final B=4" --ops cutmix_unmix_pool)
  TRAIN=(--device cpu --quick --train-variants single mixshare/cpu)
  COST=(--device cpu --model wrn-10-1 --subnets 2 --batch 4 --repeats 1 --warmup 0)
  BUILD=(bash -c 'if ls mixshare_ops/_C*.so >/dev/null 2>&1; then echo "dry run: the built extension is used";
         elif [[ -f ${DRY_RUN_LIBRARY:-} ]]; then sleep 10 && cp "$DRY_RUN_LIBRARY" mixshare_ops/ &&
           echo "dry run: $DRY_RUN_LIBRARY copied in place of compiling";
         else echo "dry run: no built extension and no DRY_RUN_LIBRARY"; exit 1; fi')
else
  DEVICE=cuda FUSED=${FUSED_BACKEND:-cuda}
  SANITIZER=(compute-sanitizer --error-exitcode 3 --print-limit 20)
  EDGE_FUSED=(--device cuda --backends cuda --size full --big --stream)
  EDGE_FUSED_SMALL=(--device cuda --backends cuda --size small --dtypes float32 bfloat16)
  EDGE_TRITON=(--device cuda --backends triton --size small --dtypes bfloat16 float32 --stream)
  EDGE_TRITON_BIG=(--device cuda --backends triton --size full --big)
  TESTS_FUSED=(-k "cuda-cuda" --require-backends cuda,triton)
  TESTS_TRITON=(-k "triton-cuda" --require-backends triton)
  TESTS_AUTOTUNE=(-k "triton-cuda and $AUTOTUNE_SUBSET" --require-backends triton)
  BENCH=(--device cuda --dtypes bfloat16 --repeat 5 --shapes imagenet-stem vit-grid "cifar-mix B=128" wrn28-10-final)
  BENCH_PROVIDERS=(cuda triton eager compile) BENCH_WITHOUT_FUSED=(triton eager compile)
  COMPILE_PROVIDERS=(cuda triton compile) COMPILE_SHAPES=()
  TRAIN=(--device cuda --train-models wrn-28-2 --train-variants single mixshare/cuda mixshare/triton --train-steps 10)
  COST=(--device cuda --model wrn-28-2 --subnets 2 3 --batch 500 --repeats 20 --warmup 3)
  BUILD=(env "NVCC_APPEND_FLAGS=${NVCC_APPEND_FLAGS:--lineinfo} -Xptxas -v" "$PY" setup.py -q build_ext --inplace)
fi
BENCH+=(--layouts channels_first channels_last --ops box_mix cutmix_unmix cutmix_unmix_pool)
BENCH_TMP=$(mktemp -d -t mixshare-bench-XXXXXX)
BENCH_DIR="$BENCH_TMP/bench"
mkdir -p "$BENCH_DIR"

# cap_for NAME CAP: the phase's cap (CAP, or its value in CAPS) cut to the time left.
cap_for() {
  local cap=$2 override budget_left
  for override in ${CAPS:-}; do [[ $override == "$1="* ]] && cap=${override#*=}; done
  budget_left=$(left)
  echo $(( cap < budget_left ? cap : budget_left ))
}

# phase NAME CAP LOG CMD...: CMD under min(CAP, time left), its output appended to LOG; its verdict, and its
# count and failure lines, added to the summary and the state. PHASE_SIGNAL (default TERM) is the signal a
# phase gets when its time is up.
phase() {
  local name=$1 cap log=$3
  cap=$(cap_for "$1" "$2")
  shift 3
  if (( cap < 10 )); then
    note "$name SKIPPED: no time left"
    echo "$name SKIPPED" >>"$STATE"
    return 0
  fi
  echo "=== $name: $*" >>"$log"
  local start rc first
  first=$(( $(wc -l <"$log") + 1 ))
  start=$(date +%s)
  # pytest gets 20 s after its SIGINT to print its summary; anything else 5 s after its SIGTERM.
  timeout -s "${PHASE_SIGNAL:-TERM}" -k "$([[ ${PHASE_SIGNAL:-TERM} == INT ]] && echo 20 || echo 5)" "$cap" "$@" >>"$log" 2>&1
  rc=$?
  local verdict=ok
  (( rc == 124 || rc == 137 )) && verdict="TIMEOUT"
  (( rc != 0 && rc != 124 && rc != 137 )) && verdict="FAILED"
  [[ $verdict == ok ]] || FAILED=1
  echo "$name $verdict" >>"$STATE"
  note "$name $verdict (rc=$rc) in $(( $(date +%s) - start ))s, cap ${cap}s"
  # Its count lines first (the last three), then up to six failure lines; else its last lines.
  local lines
  lines=$(tail -n "+$first" "$log" | grep -E "^edge: |ERROR SUMMARY|RACECHECK SUMMARY|[0-9]+ (passed|failed)|^report: |^sass: |^cost: " | tail -n 3)
  lines+=$'\n'$(tail -n "+$first" "$log" | grep -E "^FAIL|^ERROR|Error|KeyboardInterrupt" | grep -v "ERROR SUMMARY" | head -n 6)
  [[ -n ${lines//$'\n'/} ]] || lines=$(tail -n 3 "$log")
  printf '%s\n' "$lines" | sed '/^$/d' | cut -c1-300 | sed 's/^/    /' >>"$SUMMARY"
}

# gpu_state WHEN: clocks, temperature, power and throttle reasons into env.txt, one line into the summary.
gpu_state() {
  command -v nvidia-smi >/dev/null || return 0
  # clocks_event_reasons is the current name (drivers >= 535) of clocks_throttle_reasons, tried second
  local query line reasons
  for reasons in clocks_event_reasons.active clocks_throttle_reasons.active; do
    query=clocks.sm,clocks.max.sm,clocks.mem,temperature.gpu,power.draw,$reasons
    line=$(bounded 20 nvidia-smi --query-gpu=$query --format=csv,noheader 2>&1 | head -n 1)
    [[ $line == *"not a valid field"* || $line == *"Invalid"* ]] || break
  done
  { echo "--- nvidia-smi at $1: $query"; echo "$line"; bounded 20 nvidia-smi -q -d CLOCK,PERFORMANCE; } >>"$OUT/env.txt" 2>&1
  note "gpu at $1: $line (sm MHz, max sm MHz, mem MHz, C, W, throttle reasons)"
}

pack_bench() {
  [[ -n $(ls -A "$BENCH_TMP" 2>/dev/null) ]] || return 0
  bounded 60 tar -czf "$OUT/bench.tar.gz.tmp" -C "$BENCH_TMP" . && mv "$OUT/bench.tar.gz.tmp" "$OUT/bench.tar.gz"
}

finish() {
  trap - EXIT INT TERM
  pack_bench
  rm -rf "$BENCH_TMP"
  gpu_state end
  note "done: $( (( CUDA_OK )) || echo 'CUDA BACKEND NOT LOADED, ')$( (( FAILED )) && echo 'FAILED' || echo 'all phases passed'); results in $OUT"
}
trap 'FAILED=1; note "interrupted"; finish; exit 1' INT TERM
trap finish EXIT

# Environment, as the machine has it.
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')  mode: $MODE  dry_run: $DRY_RUN  budget: ${BUDGET}s"
  git -C "$ROOT" log -1 --format='commit: %h %s' 2>/dev/null
  bounded 90 "$PY" - <<'EOF'
import importlib, sys, torch
print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'device',
      torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')
for name in ('triton', 'pytest', 'numpy'):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as exc:  # reported, not fatal
        print(name, 'unavailable:', exc)
EOF
  for tool in nvidia-smi nvcc ninja g++ compute-sanitizer; do echo "$tool: $(command -v $tool || echo absent)"; done
  command -v nvidia-smi >/dev/null && bounded 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  command -v nvcc >/dev/null && bounded 20 nvcc --version | tail -n 1
  echo "cpus: $(nproc)"
} >"$OUT/env.txt" 2>&1
note "env: $(grep -m 1 "^python " "$OUT/env.txt")"
gpu_state start

# The build (first call only) in the background while the Triton kernels are checked; then the backend check.
mkdir -p "$(dirname "$STATE")"
if [[ $MODE == full ]]; then
  : >"$STATE"
  ( start=$(date +%s); bounded 240 "${BUILD[@]}"; rc=$?; echo "build rc=$rc in $(( $(date +%s) - start ))s" ) >"$OUT/build.txt" 2>&1 &
  BUILD_PID=$!
  phase edge-triton 90 "$OUT/edge.txt" "${EDGE[@]}" "${EDGE_TRITON[@]}"
  wait "$BUILD_PID"
  note "$(tail -n 1 "$OUT/build.txt")"
  if grep -q "registers" "$OUT/build.txt"; then
    note "ptxas: $(grep -c "Used [0-9]* registers" "$OUT/build.txt") kernels, at most $(grep -o "Used [0-9]* registers" "$OUT/build.txt" | awk '{print $2}' | sort -n | tail -n 1) registers, $(grep -E "[1-9][0-9]* bytes spill (stores|loads)" "$OUT/build.txt" | grep -c .) with spills"
  fi
else
  [[ -f $STATE ]] || note "no record of a first call ($STATE): follow-up runs its default phases"
  : >>"$OUT/build.txt"
fi
if bounded 120 "$PY" -c "import runpy, sys, mixshare_ops; runpy.run_module('mixshare_ops', run_name='__main__');
sys.exit('$FUSED' not in mixshare_ops.available_backends('$DEVICE'))" >>"$OUT/build.txt" 2>&1; then
  CUDA_OK=1
  note "backend ok: '$FUSED' kernels loaded"
else
  FAILED=1
  if [[ $MODE == full ]]; then
    note "backend FAILED: '$FUSED' kernels NOT loaded (build.txt); the $FUSED phases do not run"
  else
    note "backend FAILED: '$FUSED' kernels NOT loaded: the follow-up needs the _C the first call built on this machine (given back since?); run the first call again"
  fi
fi

# run_named NAME: one phase by name (both modes).
run_named() {
  local name=$1
  if (( ! CUDA_OK )) && [[ $name != edge-triton* && $name != bench && $name != tests-triton && $name != tests-autotune ]]; then
    return 0
  fi
  case $name in
    edge-triton) phase edge-triton 90 "$OUT/edge.txt" "${EDGE[@]}" "${EDGE_TRITON[@]}" ;;
    edge-cuda) phase edge-cuda 60 "$OUT/edge.txt" "${EDGE[@]}" "${EDGE_FUSED[@]}" ;;
    sass)
      if (( DRY_RUN )); then note "sass SKIPPED: dry run"; echo "sass ok" >>"$STATE"
      else phase sass 20 "$OUT/sass.txt" "$PY" -m benchmarks.sass_stores build; fi ;;
    memcheck) phase memcheck 75 "$OUT/sanitizer.txt" env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
      "${SANITIZER[@]}" ${SANITIZER[@]:+--tool memcheck} "${EDGE[@]}" "${EDGE_FUSED_SMALL[@]}" ;;
    tests-cuda) PHASE_SIGNAL=INT phase tests-cuda 60 "$OUT/tests.txt" "${PYTEST[@]}" "${TESTS_FUSED[@]}" ;;
    tests-triton) PHASE_SIGNAL=INT phase tests-triton 75 "$OUT/tests.txt" \
      env MIXSHARE_OPS_TRITON_AUTOTUNE=0 "${PYTEST[@]}" "${TESTS_TRITON[@]}" ;;
    tests-autotune) PHASE_SIGNAL=INT phase tests-autotune 40 "$OUT/tests.txt" "${PYTEST[@]}" "${TESTS_AUTOTUNE[@]}" ;;
    bench)
      local providers=("${BENCH_PROVIDERS[@]}") cap
      (( CUDA_OK )) || providers=("${BENCH_WITHOUT_FUSED[@]}")
      cap=$(cap_for bench 100)
      phase bench "$cap" "$BENCH_DIR/log.txt" "$PY" -m benchmarks.report --out "$BENCH_DIR" --no-train \
        --providers "${providers[@]}" "${BENCH[@]}" --time-limit $(( cap > 30 ? cap - 20 : 10 ))
      pack_bench ;;
    train)
      mkdir -p "$BENCH_TMP/train"
      phase train 50 "$BENCH_TMP/train/log.txt" "$PY" -m benchmarks.report --out "$BENCH_TMP/train" --train-only "${TRAIN[@]}"
      pack_bench ;;
    cost)
      mkdir -p "$BENCH_TMP/cost"
      phase cost 40 "$BENCH_TMP/cost/log.txt" "$PY" -m benchmarks.prediction_cost --out "$BENCH_TMP/cost" "${COST[@]}"
      pack_bench ;;
    racecheck) phase racecheck 40 "$OUT/sanitizer.txt" "${SANITIZER[@]}" ${SANITIZER[@]:+--tool racecheck} \
      "${EDGE[@]}" "${EDGE_FUSED_SMALL[@]}" --ops pool ;;
    edge-triton-big) phase edge-triton-big 60 "$OUT/edge.txt" "${EDGE[@]}" "${EDGE_TRITON_BIG[@]}" ;;
    bench-compile)
      mkdir -p "$BENCH_TMP/compile"
      local cap
      cap=$(cap_for bench-compile 60)
      phase bench-compile "$cap" "$BENCH_TMP/compile/log.txt" "$PY" -m benchmarks.report --out "$BENCH_TMP/compile" \
        --no-train --providers "${COMPILE_PROVIDERS[@]}" "${BENCH[@]}" "${COMPILE_SHAPES[@]}" \
        --time-limit $(( cap > 30 ? cap - 20 : 10 ))
      pack_bench ;;
    *) note "unknown phase '$name'"; FAILED=1 ;;
  esac
}

ORDER=(edge-cuda sass memcheck tests-cuda tests-triton tests-autotune bench train cost racecheck edge-triton-big)
if [[ $MODE == full ]]; then
  TODO=("${ORDER[@]}")
elif [[ -n ${PHASES:-} ]]; then
  read -r -a TODO <<<"$PHASES"
else
  TODO=()
  if [[ -f $STATE ]]; then
    for name in edge-triton "${ORDER[@]}"; do
      grep -qx "$name ok" "$STATE" || TODO+=("$name")
    done
  else
    TODO=(racecheck edge-triton-big)
  fi
  TODO+=(bench-compile)
fi
(( ${#TODO[@]} )) && note "phases: ${TODO[*]}"
for name in "${TODO[@]}"; do
  run_named "$name"
done

(( CUDA_OK )) || exit 2
exit "$FAILED"
