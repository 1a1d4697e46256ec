#!/usr/bin/env bash
# The GPU benchmark suite in one device call (<= 9 minutes wall): run from the repository root,
#   bash benchmarks/gpu_suite.sh            (carry ".whl"; results under $OUT, or /tmp/litscale_gpu_suite)
# Sections, each under its own `timeout` so one hang cannot take the others down:
#   a) Transformer++ d16 ctx 4096 mbs 2: our step (variants) vs the compiled HF Llama peer, same process
#   b) Transformer++ d8 mbs 4: ours (base, fast) vs the peer
#   c) SambaY d16 ctx 4096 mbs 2 (skipped when the hybrid mixers do not import)
#   d) the planner's memory estimate vs the measured peak (attached to a/b rows; skipped without a planner)
# Each section writes $OUT/<section>.json (rewritten after every run, so a timeout keeps what finished) and
# $OUT/<section>.log; the end prints one summary table. Budgets: SUITE_A_S, SUITE_B_S, SUITE_C_S (seconds).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
set -u
export PYTHONPATH="${PYTHONPATH:-$PWD}"
OUT="${OUT:-/tmp/litscale_gpu_suite}"
mkdir -p "$OUT"
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-/tmp/litscale_inductor}"
T0=$(date +%s)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  python3 -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'python', sys.version.split()[0])"
} | tee "$OUT/env.txt"

section() {  # section NAME LIMIT_S ARGS... : one throughput.py process under a time limit
  local name=$1 limit=$2
  shift 2
  echo "=== [$(( $(date +%s) - T0 ))s] $name (limit ${limit}s): python3 benchmarks/throughput.py $*"
  timeout -k 15 "$limit" python3 benchmarks/throughput.py "$@" --json "$OUT/$name.json" >"$OUT/$name.log" 2>&1
  local rc=$?
  [ $rc -eq 124 ] && echo "   $name: stopped at the ${limit}s limit (finished runs are kept)"
  [ $rc -ne 0 ] && [ $rc -ne 124 ] && echo "   $name: exit $rc; last lines:" && tail -n 8 "$OUT/$name.log"
  return 0
}

PLANNER=""
if python3 -c "import lit_gpt.planner" 2>/dev/null; then PLANNER="--planner"; fi

# a) the headline comparison; cheap variants first (they reuse the compiled Block), the peer after `fast`
section a_d16 "${SUITE_A_S:-270}" --train_model transformer --depth 16 --ctx_len 4096 --micro_bsz 2 \
  --variants base,fast,hf_llama,chunked_ce,no_guard,dense_ce,fast+expand_kv,fast+cudnn_attn $PLANNER

# b) a smaller model where launch and elementwise overheads weigh more
section b_d8 "${SUITE_B_S:-120}" --train_model transformer --depth 8 --ctx_len 4096 --micro_bsz 4 \
  --variants fast,hf_llama,base $PLANNER

# c) the hybrid, if its mixers import
if python3 -c "from lit_gpt.config import Config; from lit_gpt.model import GPT; GPT(Config.from_arch('sambay', 4, ar=16, block_size=64))" >"$OUT/c_import.log" 2>&1; then
  section c_sambay_d16 "${SUITE_C_S:-100}" --train_model sambay --depth 16 --ctx_len 4096 --micro_bsz 2 \
    --variants fast,base,fast+no_compile
else
  echo "=== c) SambaY skipped: the hybrid mixers do not import ($(tail -n 1 "$OUT/c_import.log"))"
fi

# d) planner
[ -z "$PLANNER" ] && echo "=== d) planner skipped: lit_gpt.planner does not import (estimates not attached)"

echo "=== [$(( $(date +%s) - T0 ))s] summary"
python3 benchmarks/throughput.py --summarize "$OUT"/a_d16.json "$OUT"/b_d8.json $(ls "$OUT"/c_sambay_d16.json 2>/dev/null) \
  | tee "$OUT/summary.txt"
