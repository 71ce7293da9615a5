#!/usr/bin/env bash
# The GPU check: one command, at most 9 minutes, no network.
#
#   bash benchmarks/gpu_check.sh              # on the GPU machine, with its python3 as it is (no venv, pip, make)
#   DRY_RUN=1 bash benchmarks/gpu_check.sh    # the same phases on CPU (make gpu-check; tested in CI)
#
# Phases, in order of importance, each under a cap cut to the time left of BUDGET:
#   build       the CUDA extension (sm_90, ninja, 16 jobs) in the background while edge-triton runs
#   edge-triton Triton kernels against the reference (benchmarks/gpu_edge.py: vector paths, layouts, M, streams)
#   backend     the CUDA backend must have loaded: else exit 2 after the Triton phases, never a green run of skips
#   edge-cuda   CUDA kernels against the reference: every dtype and path, B = 70,000, > 2^31 elements, streams
#   sass        store and load widths per kernel in the built objects (benchmarks/sass_stores.py)
#   memcheck    compute-sanitizer memcheck on the small edge set (vector, scalar, misaligned, strided, wild boxes)
#   tests       the suite's CUDA and Triton op tests (correctness, opcheck, autograd, torch.compile)
#   bench       op benchmark, bf16, both layouts: cuda, triton, eager, compile (GB/s against the copy bandwidth)
#   racecheck   compute-sanitizer racecheck on the pooling kernels (shared memory, warp shuffles)
#   edge-triton-big  Triton at full size with B = 70,000 and > 2^31 elements, if time is left
#
# Environment: OUT (result folder; default a new temporary one), BUDGET (seconds; default 530),
# PY (the python; default python3 on PATH), DRY_RUN (1: CPU stand-ins, see below), FUSED_BACKEND (the
# compiled backend that must load: cuda, or cpu in the dry run).
# Results, at most 8 files in $OUT: summary.txt (a line per phase, written as it goes), env.txt,
# build.txt, edge.txt, sass.txt, sanitizer.txt, tests.txt, bench.tar.gz (report.md, results.json, CSVs, plots).
# Exit status: 0 all phases passed; 1 a phase failed or ran out of time; 2 the CUDA backend did not load.
#
# Dry run: device cpu; the compiled C++ CPU kernels stand in for CUDA, Triton runs in its interpreter on
# the tiny case set in float32; no build (the installed extension is used), no sass, and the sanitizer
# phases run their edge set without compute-sanitizer.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=${OUT:-$(mktemp -d -t mixshare-gpu-check-XXXXXX)}
mkdir -p "$OUT"
BUDGET=${BUDGET:-530}
DRY_RUN=${DRY_RUN:-0}
PY=${PY:-$(command -v python3)}
# The python's own bin folder first: its ninja (and, on the GPU machine, nothing else is installed).
export PATH="$(dirname "$("$PY" -c 'import sys; print(sys.executable)')"):$PATH"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export MIXSHARE_OPS_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
export NVCC_APPEND_FLAGS=${NVCC_APPEND_FLAGS:--lineinfo}
unset MIXSHARE_OPS_BACKEND

EDGE=("$PY" -m benchmarks.gpu_edge)
TESTS=(tests/test_ops_correctness.py tests/test_ops_library.py tests/test_ops_autograd.py)
if (( DRY_RUN )); then
  DEVICE=cpu FUSED=${FUSED_BACKEND:-cpu}
  export TRITON_INTERPRET=1
  SANITIZER=()
  EDGE_FUSED=(--device cpu --backends cpu --size tiny --dtypes float32)
  EDGE_FUSED_SMALL=("${EDGE_FUSED[@]}")
  EDGE_TRITON=(--device cpu --backends triton --size tiny --dtypes float32)
  EDGE_TRITON_BIG=()
  TEST_SELECT=(-k "cpu-cpu" --require-backends cpu)
  BENCH=(--device cpu --quick --dtypes float32)
  BENCH_PROVIDERS=(cpu eager) BENCH_WITHOUT_FUSED=(eager)
else
  DEVICE=cuda FUSED=${FUSED_BACKEND:-cuda}
  SANITIZER=(compute-sanitizer --error-exitcode 3 --print-limit 20)
  EDGE_FUSED=(--device cuda --backends cuda --size full --big --stream)
  EDGE_FUSED_SMALL=(--device cuda --backends cuda --size small --dtypes float32 bfloat16)
  EDGE_TRITON=(--device cuda --backends triton --size small --dtypes bfloat16 float32 --stream)
  EDGE_TRITON_BIG=(--device cuda --backends triton --size full --big)
  TEST_SELECT=(-k "cuda" --require-backends cuda,triton)
  BENCH=(--device cuda --dtypes bfloat16 --repeat 5 --shapes "cifar-mix B=128" wrn28-10-final imagenet-stem vit-grid)
  BENCH_PROVIDERS=(cuda triton eager compile) BENCH_WITHOUT_FUSED=(triton eager compile)
fi
# Cases not started after 80 s are listed as skipped, so the report is written within the phase's cap.
BENCH+=(--layouts channels_first channels_last --ops box_mix cutmix_unmix cutmix_unmix_pool --no-train --time-limit 80)

T0=$(date +%s)
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
FAILED=0
note() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$SUMMARY"; }

# phase NAME CAP LOG CMD...: run CMD under min(CAP, time left), append its output to LOG,
# add its status and its verdict lines to the summary.
phase() {
  local name=$1 cap=$2 log=$3
  shift 3
  local left=$(( BUDGET - ($(date +%s) - T0) ))
  (( cap > left )) && cap=$left
  if (( cap < 10 )); then
    note "$name SKIPPED: no time left"
    return 0
  fi
  echo "=== $name: $*" >>"$log"
  local start rc first
  first=$(( $(wc -l <"$log") + 1 ))
  start=$(date +%s)
  timeout -k 5 "$cap" "$@" >>"$log" 2>&1
  rc=$?
  local verdict=ok
  (( rc == 124 || rc == 137 )) && verdict="TIMEOUT"
  (( rc != 0 && rc != 124 && rc != 137 )) && verdict="FAILED"
  [[ $verdict == ok ]] || FAILED=1
  note "$name $verdict (rc=$rc) in $(( $(date +%s) - start ))s, cap ${cap}s"
  # The phase's failure and count lines, else its last lines.
  local lines
  lines=$(tail -n "+$first" "$log" | grep -E "^FAIL|^edge: |^ERROR|ERROR SUMMARY|RACECHECK SUMMARY| passed| failed|error|^report: |Error" | head -n 8)
  [[ -n $lines ]] || lines=$(tail -n 3 "$log")
  printf '%s\n' "$lines" | cut -c1-300 | sed 's/^/    /' >>"$SUMMARY"
}

# Environment, as the machine has it.
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')  dry_run: $DRY_RUN  budget: ${BUDGET}s"
  git -C "$ROOT" log -1 --format='commit: %h %s' 2>/dev/null
  "$PY" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
  "$PY" -c "import triton; print('triton', triton.__version__)" 2>&1 | tail -n 1
  "$PY" -c "import pytest, numpy; print('pytest', pytest.__version__, 'numpy', numpy.__version__)" 2>&1 | tail -n 1
  for tool in nvidia-smi nvcc ninja g++ compute-sanitizer; do echo "$tool: $(command -v $tool || echo absent)"; done
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  command -v nvcc >/dev/null && nvcc --version | tail -n 1
  echo "cpus: $(nproc)"
} >"$OUT/env.txt" 2>&1
note "env: $(sed -n 3p "$OUT/env.txt")"

# Build in the background while the Triton kernels are checked.
if (( DRY_RUN )); then
  BUILD=("$PY" -c "import mixshare_ops; print('dry run: the installed extension is used')")
else
  BUILD=("$PY" setup.py -q build_ext --inplace)
fi
( start=$(date +%s); timeout -k 5 240 "${BUILD[@]}"; echo "build rc=$? in $(( $(date +%s) - start ))s" ) >"$OUT/build.txt" 2>&1 &
BUILD_PID=$!
phase edge-triton 90 "$OUT/edge.txt" "${EDGE[@]}" "${EDGE_TRITON[@]}"
wait "$BUILD_PID"
note "$(tail -n 1 "$OUT/build.txt")"
"$PY" -m mixshare_ops >>"$OUT/build.txt" 2>&1
if "$PY" -c "import sys, mixshare_ops; sys.exit('$FUSED' not in mixshare_ops.available_backends('$DEVICE'))" >>"$OUT/build.txt" 2>&1; then
  CUDA_OK=1
  note "backend ok: '$FUSED' kernels loaded"
else
  CUDA_OK=0
  FAILED=1
  note "backend FAILED: '$FUSED' kernels NOT loaded (build.txt); the $FUSED phases do not run"
fi

if (( CUDA_OK )); then
  phase edge-cuda 75 "$OUT/edge.txt" "${EDGE[@]}" "${EDGE_FUSED[@]}"
  if (( DRY_RUN )); then
    note "sass SKIPPED: dry run"
  else
    phase sass 20 "$OUT/sass.txt" "$PY" -m benchmarks.sass_stores build
  fi
  phase memcheck 75 "$OUT/sanitizer.txt" "${SANITIZER[@]}" ${SANITIZER[@]:+--tool memcheck} \
    "${EDGE[@]}" "${EDGE_FUSED_SMALL[@]}"
  phase tests 100 "$OUT/tests.txt" "$PY" -m pytest -q -p no:cacheprovider --maxfail=25 -m "not slow" \
    "${TESTS[@]}" "${TEST_SELECT[@]}"
fi
BENCH_OUT="$OUT/bench"
(( CUDA_OK )) || BENCH_PROVIDERS=("${BENCH_WITHOUT_FUSED[@]}")
phase bench 110 "$OUT/bench.log" "$PY" -m benchmarks.report --out "$BENCH_OUT" --providers "${BENCH_PROVIDERS[@]}" \
  "${BENCH[@]}"
mkdir -p "$BENCH_OUT" && mv "$OUT/bench.log" "$BENCH_OUT/log.txt"
tar -czf "$OUT/bench.tar.gz" -C "$OUT" bench && rm -rf "$BENCH_OUT"
if (( CUDA_OK )); then
  phase racecheck 40 "$OUT/sanitizer.txt" "${SANITIZER[@]}" ${SANITIZER[@]:+--tool racecheck} \
    "${EDGE[@]}" "${EDGE_FUSED_SMALL[@]}" --ops pool
fi
if (( ${#EDGE_TRITON_BIG[@]} )); then
  phase edge-triton-big 60 "$OUT/edge.txt" "${EDGE[@]}" "${EDGE_TRITON_BIG[@]}"
fi

note "done: $( (( CUDA_OK )) || echo 'CUDA BACKEND NOT LOADED, ')$( (( FAILED )) && echo 'FAILED' || echo 'all phases passed'); results in $OUT"
(( CUDA_OK )) || exit 2
exit "$FAILED"
