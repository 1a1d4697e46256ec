#!/usr/bin/env bash
# FSDP on 2 GPUs: (1) exact equivalence of the optimizer steps with 1 GPU on a fixed global batch stream (fp32),
# (2) Transformer++ d16 tokens/s per GPU at the same global batch, 1 GPU vs torchrun NPROC GPUs (FSDP full shard).
# NPROC (default 2) sets the GPU count: NPROC=8 bash benchmarks/fsdp2_gpu.sh on an 8-GPU machine.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/fsdp2}
mkdir -p "$OUT"
export EQ_PRECISION=32-true EQ_STRATEGY=fsdp EQ_GLOBAL_ROWS=${EQ_GLOBAL_ROWS:-$(( ${NPROC:-2} > 4 ? 8 : 4 ))}
CUDA_VISIBLE_DEVICES=0 python3 tests/helpers/ddp_equivalence.py "$OUT/eq_w1.json" > "$OUT/eq.log" 2>&1
torchrun --nproc_per_node=${NPROC:-2} tests/helpers/ddp_equivalence.py "$OUT/eq_w2.json" >> "$OUT/eq.log" 2>&1
echo "== equivalence"; cat "$OUT/eq_w1.json"; echo; cat "$OUT/eq_w2.json"; echo; tail -n 3 "$OUT/eq.log"
python3 -m lit_gpt.data.prepare --builtin --output_dir data/builtin > /dev/null 2>&1
ARGS="--train_model transformer --depth 16 --train_name fsdp_mup --ctx_len 4096 --micro_bsz 2 --total_bsz 16384 \
 --max_steps ${STEPS:-24} --log_step 8 --eval_step 1000 --save_step 1000 --val_multiple 1 --eval_iters 1 --num_workers 2"
CUDA_VISIBLE_DEVICES=0 timeout 150 python3 pretrain.py $ARGS --out_dir runs/g1 > "$OUT/g1.log" 2>&1
echo "== 1 GPU rc=$?"; grep -E "^step [0-9]+/" "$OUT/g1.log" | tail -n 3
timeout 150 torchrun --nproc_per_node=${NPROC:-2} pretrain.py $ARGS --strategy fsdp --out_dir runs/g2 > "$OUT/g2.log" 2>&1
echo "== ${NPROC:-2} GPUs FSDP rc=$?"; grep -E "^step [0-9]+/|run " "$OUT/g2.log" | tail -n 4
cp runs/g1/metrics.csv "$OUT/g1_metrics.csv" 2>/dev/null; cp runs/g2/metrics.csv "$OUT/g2_metrics.csv" 2>/dev/null
