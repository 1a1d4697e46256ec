#!/usr/bin/env bash
# Kernel work in one device call (<= 9.5 minutes): the selective-scan launch sweep and timings, the GPU parity
# tests of the mixers, and the attention benchmark.  Run from the repository root with ".whl" carried:
#   bash benchmarks/kernels_gpu.sh            (results under $OUT, default /tmp/litscale_kernels)
# Budgets (seconds): K_SWEEP_S, K_SCAN_S, K_TESTS_S, K_ATTN_S.  Each stage runs under its own timeout.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/litscale_kernels}"
mkdir -p "$OUT"
T0=$(date +%s)
stage() {  # stage NAME LIMIT_S CMD...
  local name=$1 limit=$2; shift 2
  echo "=== [$(( $(date +%s) - T0 ))s] $name (limit ${limit}s): $*"
  timeout -k 10 "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  echo "    rc=$rc"; tail -n "${TAIL:-12}" "$OUT/$name.txt"
}
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee "$OUT/env.txt"
TAIL=40 stage scan_sweep "${K_SWEEP_S:-200}" python3 benchmarks/scan.py --impls triton --sweep-only \
  --tokens 8192,65536 --d-inner 4096 --json "$OUT/scan_sweep.json"
stage scan "${K_SCAN_S:-90}" python3 benchmarks/scan.py --impls triton --tokens 8192,65536 --d-inner 2048,4096 \
  --json "$OUT/scan.json"
stage gpu_tests "${K_TESTS_S:-200}" python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_selective_scan.py \
  tests/test_mixers.py tests/test_zoo.py
stage attention "${K_ATTN_S:-80}" python3 benchmarks/attention.py --json "$OUT/attention.json"
echo "=== [$(( $(date +%s) - T0 ))s] done"
