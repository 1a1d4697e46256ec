#!/usr/bin/env bash
# μP++ LR-transfer sweep on one GPU with a corpus larger than the built-in one: the running interpreter's standard
# library sources (no tests), copied as .txt and tokenized with a BPE trained on them (nothing is downloaded).
# DEPTHS (default "4 8 16"), LRS (default "1e-3 2e-3 4e-3 8e-3 1.6e-2"), STEPS (default 200), JOBS (default 5).
[ -d .whl ] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
export PYTHONUNBUFFERED=1 OUT=${OUT:-/tmp/lr_sweep}
mkdir -p "$OUT"
python3 - <<'PY'
import pathlib, shutil, sysconfig
root = pathlib.Path(sysconfig.get_paths()["stdlib"])
out = pathlib.Path("/tmp/stdlib_text"); out.mkdir(exist_ok=True)
files = sorted(p for p in root.rglob("*.py") if not {"test", "tests", "site-packages", "idlelib"} & set(p.parts))
for i, p in enumerate(files):
    shutil.copyfile(p, out / f"{i:05d}_{p.stem}.txt")
print(f"{len(files)} files, {sum(p.stat().st_size for p in files) / 1e6:.1f} MB from {root}")
PY
python3 -m lit_gpt.data.prepare --input_dir /tmp/stdlib_text --output_dir data/stdlib --context_length 256 \
  --val_fraction 0.02 --vocab_size 4096 2>&1 | tail -n 4
python3 -m lit_gpt.sweep lr --train_model transformer --train_name scaling_mup --depths ${DEPTHS:-4 8 16} \
  --lrs ${LRS:-1e-3 2e-3 4e-3 8e-3 1.6e-2} --ar 32 --ctx_len 256 --micro_bsz 32 --total_bsz 8192 \
  --max_steps ${STEPS:-200} --jobs ${JOBS:-5} --drop_checkpoints --out_dir /tmp/lr_sweep_runs -- \
  --train_data_dir data/stdlib --base_hps.d0 8 --base_hps.b0 8192 --base_hps.warmup_tokens0 163840 --compile ${COMPILE:-false} \
  --num_workers 1 --eval_iters 16 --eval_step 100000 --log_step 50 --save_step 100000 ${EXTRA:-} 2>&1 | tail -n 30
cp /tmp/lr_sweep_runs/lr_sweep.csv /tmp/lr_sweep_runs/lr_sweep.md /tmp/lr_sweep_runs/lr_transfer*.png \
  /tmp/lr_sweep_runs/lr_transfer_optima.md "$OUT/" 2>/dev/null; ls "$OUT"
