#!/usr/bin/env bash
# What a session with a lent GPU runs, in phases that each fit one device call:
#
#   bash benchmarks/gpu_session.sh build test      # build with CUDA, run the suite (cuda + triton backends)
#   bash benchmarks/gpu_session.sh sanitize        # compute-sanitizer memcheck and racecheck
#   bash benchmarks/gpu_session.sh ops             # the op benchmarks -> $OUT/report-ops.tar.gz
#   bash benchmarks/gpu_session.sh train           # the training-step benchmark -> $OUT/report-train.tar.gz
#
# Logs go to $OUT (the device tool brings back at most 8 files: reports are tarred).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/mixshare-gpu}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-16}
PY=${PY:-python3}
status=0

for phase in "$@"; do
  case "$phase" in
    build)
      { nvidia-smi; $PY -c "import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__)"; } \
        >"$OUT/env.log" 2>&1
      MIXSHARE_OPS_CUDA=1 $PY setup.py -q build_ext --inplace >"$OUT/build.log" 2>&1 || status=1
      $PY -m mixshare_ops >>"$OUT/build.log" 2>&1 || status=1
      tail -5 "$OUT/build.log" ;;
    test)
      timeout 540 $PY -m pytest -q -x -m "not slow" tests -p no:cacheprovider >"$OUT/test.log" 2>&1 || status=1
      tail -5 "$OUT/test.log" ;;
    sanitize)
      for tool in memcheck racecheck; do
        timeout 280 compute-sanitizer --tool "$tool" --error-exitcode 3 $PY -m benchmarks.sanitize_cuda \
          >"$OUT/sanitize-$tool.log" 2>&1 || status=1
        tail -3 "$OUT/sanitize-$tool.log"
      done ;;
    ops)
      timeout 570 $PY -m benchmarks.report --out "$OUT/report-ops" --no-train ${BENCH_ARGS:-} >"$OUT/ops.log" 2>&1 || status=1
      tar -czf "$OUT/report-ops.tar.gz" -C "$OUT" report-ops && rm -rf "$OUT/report-ops"
      tail -25 "$OUT/ops.log" ;;
    train)
      timeout 570 $PY -m benchmarks.report --out "$OUT/report-train" --ops cutmix_mask --dtypes bfloat16 \
        >"$OUT/train.log" 2>&1 || status=1
      tar -czf "$OUT/report-train.tar.gz" -C "$OUT" report-train && rm -rf "$OUT/report-train"
      tail -15 "$OUT/train.log" ;;
    *) echo "unknown phase $phase (build test sanitize ops train)"; exit 2 ;;
  esac
done
exit $status
