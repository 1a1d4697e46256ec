#!/usr/bin/env bash
# FSDP on several GPUs of one host, in three sections (each switched by an env variable, 1 = run):
#   EQ       (1) exact equivalence of the optimizer steps with 1 GPU on a fixed global batch stream (fp32; the
#                default FSDP version, EQ_FSDP_VERSION=1 for FSDP1);
#   SCALING  (1) Transformer++ d16 tokens/s per GPU at the same global batch: 1 GPU, then torchrun NPROC GPUs for
#                each variant in FSDP_VARIANTS (default "full"): a sharding (full, grad_op, hybrid), optionally
#                "+v1" (--fsdp_version 1: FSDP1's flat parameters; the default is 2, fully_shard), "+v2",
#                "+prefetch" (implies +v1: --fsdp_forward_prefetch true --fsdp_limit_all_gathers false), "+host_guard"
#                (--guard host); G1=0 skips the 1-GPU run; PROFILE=N
#                also traces N steps of each multi-GPU run and prints where rank 0's time went
#                (benchmarks/profile_breakdown.py: exposed collectives, idle);
#   SAVE_MEM (0) MODELS (default "transformer sambay") at d16 and SAVE_MEM_CTX (default 131072) tokens with
#                --fsdp_save_mem (per-Block activation checkpointing + CPU offload of parameters) on NPROC GPUs,
#                on a local corpus (the built-in one written three times) long enough for rows of that length;
#                SAVE_MEM_EXTRA adds pretrain options (e.g. "--fsdp_version 2").
# NPROC (default 2) sets the GPU count: NPROC=8 bash benchmarks/fsdp2_gpu.sh on an 8-GPU machine.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/fsdp2}
NPROC=${NPROC:-2}
mkdir -p "$OUT"
if [ "${EQ:-1}" = 1 ]; then
  export EQ_PRECISION=32-true EQ_STRATEGY=fsdp EQ_GLOBAL_ROWS=${EQ_GLOBAL_ROWS:-$(( NPROC > 4 ? 8 : 4 ))}
  CUDA_VISIBLE_DEVICES=0 python3 tests/helpers/ddp_equivalence.py "$OUT/eq_w1.json" > "$OUT/eq.log" 2>&1
  torchrun --nproc_per_node=$NPROC tests/helpers/ddp_equivalence.py "$OUT/eq_w2.json" >> "$OUT/eq.log" 2>&1
  echo "== equivalence"; cat "$OUT/eq_w1.json"; echo; cat "$OUT/eq_w2.json"; echo; tail -n 3 "$OUT/eq.log"
fi
if [ "${SCALING:-1}" = 1 ]; then
  python3 -m lit_gpt.data.prepare --builtin --output_dir data/builtin > /dev/null 2>&1
  STEPS=${STEPS:-64}
  ARGS="--train_model transformer --depth 16 --train_name fsdp_mup --ctx_len 4096 --micro_bsz 2 --total_bsz $(( 8192 * NPROC )) \
   --max_steps $STEPS --log_step ${LOG_STEP:-16} --eval_step 100000 --save_step 100000 --val_multiple 1 --eval_iters 1 --num_workers 2"
  if [ "${G1:-1}" = 1 ]; then
    rm -rf runs/g1
    CUDA_VISIBLE_DEVICES=0 timeout 240 python3 pretrain.py $ARGS ${G1_EXTRA:-} --out_dir runs/g1 > "$OUT/g1.log" 2>&1
    echo "== 1 GPU rc=$?"; grep -E "^step [0-9]+/" "$OUT/g1.log" | tail -n 4
    cp runs/g1/metrics.csv "$OUT/g1_metrics.csv" 2>/dev/null
  fi
  for VARIANT in ${FSDP_VARIANTS:-full}; do
    EXTRA="--fsdp_sharding ${VARIANT%%+*}"
    case "$VARIANT" in *+prefetch*) EXTRA="$EXTRA --fsdp_version 1 --fsdp_forward_prefetch true --fsdp_limit_all_gathers false";; esac
    case "$VARIANT" in *+host_guard*) EXTRA="$EXTRA --guard host";; esac
    case "$VARIANT" in *+v1*) EXTRA="$EXTRA --fsdp_version 1";; esac
    case "$VARIANT" in *+v2*) EXTRA="$EXTRA --fsdp_version 2";; esac
    [ "${PROFILE:-0}" -gt 0 ] && EXTRA="$EXTRA --profile $PROFILE"
    NAME="g${NPROC}_${VARIANT//+/_}"
    rm -rf runs/$NAME  # a warm machine keeps the last call's runs (and their traces)
    timeout ${RUN_TIMEOUT:-240} torchrun --nproc_per_node=$NPROC pretrain.py $ARGS --strategy fsdp $EXTRA --out_dir runs/$NAME \
      > "$OUT/$NAME.log" 2>&1
    RC=$?; echo "== $NPROC GPUs FSDP $VARIANT rc=$RC"; grep -E "^step [0-9]+/" "$OUT/$NAME.log" | tail -n 4
    [ $RC != 0 ] && grep -v Warning "$OUT/$NAME.log" | tail -n 25
    cp runs/$NAME/metrics.csv "$OUT/${NAME}_metrics.csv" 2>/dev/null
    if [ "${PROFILE:-0}" -gt 0 ]; then
      TRACE=$(ls runs/$NAME/profile/*.json* 2>/dev/null | head -n 1)
      [ -n "$TRACE" ] && python3 benchmarks/profile_breakdown.py "$TRACE" --top 6 | tee "$OUT/${NAME}_trace.txt"
    fi
  done
fi
if [ "${SAVE_MEM:-0}" = 1 ]; then
  CTX=${SAVE_MEM_CTX:-131072}
  python3 -c "
from pathlib import Path
from lit_gpt.data.corpus import builtin_documents
out = Path('/tmp/corpus_x3'); out.mkdir(exist_ok=True)
for r in range(3):
    for i, doc in enumerate(builtin_documents()):
        (out / f'{r}_{i}.txt').write_text(doc)"
  python3 -m lit_gpt.data.prepare --input_dir /tmp/corpus_x3 --output_dir data/long --context_length $CTX \
    --val_fraction 0.3 --quiet
  for MODEL in ${MODELS:-transformer sambay}; do
    rm -rf runs/long_$MODEL
    timeout ${SAVE_MEM_TIMEOUT:-270} torchrun --nproc_per_node=$NPROC pretrain.py --train_model $MODEL --depth 16 \
      --train_name long_mup --train_data_dir data/long --ctx_len $CTX --micro_bsz 1 --total_bsz $(( CTX * NPROC )) \
      --max_steps ${SAVE_MEM_STEPS:-4} --log_step 1 --eval_step 100000 --save_step 100000 --eval_iters 1 \
      --val_multiple 1 --num_workers 1 --strategy fsdp --fsdp_save_mem ${SAVE_MEM_EXTRA:-} --out_dir runs/long_$MODEL \
      > "$OUT/save_mem_$MODEL.log" 2>&1
    echo "== $MODEL ctx $CTX --fsdp_save_mem on $NPROC GPUs rc=$?"; grep -E "^step [0-9]+/|error|Error" "$OUT/save_mem_$MODEL.log" | tail -n 5
    cp runs/long_$MODEL/metrics.csv "$OUT/save_mem_${MODEL}_metrics.csv" 2>/dev/null
  done
fi
