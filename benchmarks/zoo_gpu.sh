#!/usr/bin/env bash
# Every architecture at d8 through pretrain.py on one GPU (bf16, torch.compile), one after another, then Phonebook
# on the Transformer++ checkpoint. Usage (repo root, wheels carried in .whl): bash benchmarks/zoo_gpu.sh [STEPS]
# ZOO_ARCHS="a b …" picks architectures (default: all nine), ZOO_LIMIT_S caps each run (compile included),
# ZOO_PHONEBOOK=0 skips Phonebook.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1
STEPS=${1:-300}
OUT=${OUT:-/tmp/zoo}
mkdir -p "$OUT"
python3 -m lit_gpt.data.prepare --builtin --output_dir data/builtin --quiet >/dev/null 2>&1 || python3 -m lit_gpt.data.prepare --builtin --output_dir data/builtin
for arch in ${ZOO_ARCHS:-transformer transformerls samba sambay sambayda sambayoco mambay mamba phi4miniflash}; do
  t0=$(date +%s)
  vocab=""; [ "$arch" = phi4miniflash ] && vocab="--vocab_size 200064"
  timeout -k 10 "${ZOO_LIMIT_S:-120}" python3 pretrain.py --train_model "$arch" --depth 8 --train_name zoo_mup \
    --ctx_len 4096 --micro_bsz 2 --total_bsz 8192 --max_steps "$STEPS" --log_step 50 --eval_step "$STEPS" \
    --eval_iters 2 --save_step "$STEPS" --num_workers 2 --out_dir "runs/zoo_$arch" $vocab \
    --base_hps.d0 8 --base_hps.b0 8192 --base_hps.eta0 2e-3 --base_hps.warmup_tokens0 163840 \
    > "$OUT/zoo_$arch.log" 2>&1
  rc=$?
  echo "== $arch rc=$rc wall=$(( $(date +%s) - t0 ))s"; grep -E "^step (50|$STEPS)[:/ ]|val" "$OUT/zoo_$arch.log" | tail -n 4
done
for f in runs/zoo_*/metrics.csv; do echo "# $f"; cat "$f"; done > "$OUT/zoo_metrics.csv" 2>/dev/null
[ "${ZOO_PHONEBOOK:-1}" = 0 ] && exit 0
timeout 100 python3 eval_phonebook.py --checkpoint_path runs/zoo_transformer --min_eval_len 1850 --max_eval_len 4000 \
  --num_buckets 2 --num_samples 32 --eval_batch_size 4 --output_dir "$OUT/phonebook" > "$OUT/phonebook.log" 2>&1
echo "== phonebook rc=$?"; tail -n 6 "$OUT/phonebook.log"
