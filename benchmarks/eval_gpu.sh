#!/usr/bin/env bash
# Evaluation on one GPU in one call (issue #6), run from the repository root with ".whl" carried:
#   bash benchmarks/eval_gpu.sh [CKPT_DIR]
# CKPT_DIR: a run folder / checkpoint / export. Without one (or when it holds no checkpoint) the built-in corpus is
# prepared and a Transformer++ d8 is trained briefly through pretrain.py (bf16, torch.compile, ctx 4096) into
# CKPT_DIR (default /tmp/eval_gpu_run, outside $OUT: the checkpoint is large). Then, each stage under `timeout`
# and timed, one failing stage never stopping the next:
#   lm_eval      python eval.py --model ArchScale ... --include_path tests/fixtures/eval_task
#                --tasks litscale_toy,litscale_toy_gen,litscale_toy_ppl --batch_size N --device cuda
#   lm_eval_dp   the same under `accelerate launch --multi_gpu` on all GPUs (only when there are 2 or more)
#   phonebook_L  python eval_phonebook.py at exactly L tokens for each L in PB_LENS (default "2048 CTX-16":
#                a RoPE model trained at CTX must fit prompt + answer; 4080 for the default CTX 4096)
# Under $OUT (default /tmp/eval_gpu): summary.json (environment, seconds and exit code per stage, every lm-eval
# metric, Phonebook accuracy per length) and <stage>.log at the top (at most 8 files: a device call's $OUT brings
# back 8), everything else under $OUT/detail/ (stages.tsv, env.txt, train_metrics.csv, lm-eval results_*.json,
# phonebook_<L>/phonebook.json + samples + PNG); a summary is printed at the end.
# Knobs (env): STEPS (120), CTX (4096), EVAL_BS (16), DEVICE (cuda), DATA (data/builtin),
#   PB_LENS, PB_SAMPLES (32), PB_BS (8),
#   TRAIN_LIMIT_S (150), EVAL_LIMIT_S (150), PB_LIMIT_S (90).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
set -u
export PYTHONPATH="${PYTHONPATH:-$PWD}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
export HF_DATASETS_CACHE="${HF_DATASETS_CACHE:-/tmp/eval_gpu_hf_datasets}"
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-/tmp/litscale_inductor}"
OUT="${OUT:-/tmp/eval_gpu}"
CKPT="${1:-/tmp/eval_gpu_run}"
STEPS="${STEPS:-120}"
CTX="${CTX:-4096}"
EVAL_BS="${EVAL_BS:-16}"
DEVICE="${DEVICE:-cuda}"
DATA="${DATA:-data/builtin}"
PB_LENS="${PB_LENS:-2048 $((CTX - 16))}"
PB_SAMPLES="${PB_SAMPLES:-32}"
PB_BS="${PB_BS:-8}"
TASKS="litscale_toy,litscale_toy_gen,litscale_toy_ppl"
DETAIL="$OUT/detail"
mkdir -p "$OUT" "$DETAIL"
: > "$DETAIL/stages.tsv"
T0=$(date +%s.%N)
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count(), 'python', sys.version.split()[0])"
  python3 -c "import lm_eval, datasets; from importlib.metadata import version; print('lm_eval', version('lm_eval'), 'datasets', datasets.__version__)"
} > "$DETAIL/env.txt" 2>&1
cat "$DETAIL/env.txt"

elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

stage() {  # stage NAME LIMIT_S CMD... : run CMD under a time limit, log to $OUT/NAME.log, record rc and seconds
  local name=$1 limit=$2
  shift 2
  echo "=== [$(elapsed "$T0")s] $name (limit ${limit}s): $*"
  local t0
  t0=$(date +%s.%N)
  timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  local secs
  secs=$(elapsed "$t0")
  printf '%s\t%s\t%s\n' "$name" "$rc" "$secs" >> "$DETAIL/stages.tsv"
  if [ "$rc" -eq 0 ]; then
    echo "    $name: ok in ${secs}s"
  else
    [ "$rc" -eq 124 ] && echo "    $name: stopped at the ${limit}s limit" || echo "    $name: exit $rc after ${secs}s"
    tail -n 12 "$OUT/$name.log" | sed 's/^/    | /'
  fi
  return 0
}

has_checkpoint() {
  python3 -c "import sys; from lit_gpt.inference import resolve_checkpoint; resolve_checkpoint(sys.argv[1])" "$1" 2>/dev/null
}

# 1) a checkpoint: the one given, or a quick Transformer++ d8
if has_checkpoint "$CKPT"; then
  echo "=== using the checkpoint in $CKPT"
else
  echo "=== no checkpoint in $CKPT: preparing the built-in corpus and training transformer d8 for $STEPS steps"
  stage prepare 120 python3 -m lit_gpt.data.prepare --builtin --output_dir "$DATA" --context_length "$CTX"
  stage train "${TRAIN_LIMIT_S:-150}" python3 pretrain.py --train_model transformer --depth 8 \
    --train_name scaling_mup --train_data_dir "$DATA" --ctx_len "$CTX" --micro_bsz 2 --total_bsz $((2 * CTX)) \
    --max_steps "$STEPS" --log_step 20 --eval_step "$STEPS" --eval_iters 2 --save_step "$STEPS" --num_workers 2 --devices 1 \
    --out_dir "$CKPT" \
    --base_hps.d0 8 --base_hps.b0 $((2 * CTX)) --base_hps.eta0 2e-3 --base_hps.warmup_tokens0 163840
  grep -E "^step [0-9]+[:/]" "$OUT/train.log" | tail -n 2 | sed 's/^/    /'
  cp "$CKPT/metrics.csv" "$DETAIL/train_metrics.csv" 2>/dev/null
  has_checkpoint "$CKPT" || echo "    no checkpoint was written in $CKPT: the stages below will fail"
fi

# 2) lm-evaluation-harness through eval.py on the bundled local task (offline)
stage lm_eval "${EVAL_LIMIT_S:-150}" python3 eval.py --model ArchScale --model_args "pretrained=$CKPT" \
  --include_path tests/fixtures/eval_task --tasks "$TASKS" --batch_size "$EVAL_BS" --device "$DEVICE" \
  --output_path "$DETAIL/lm_eval"

NGPU=$(python3 -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if [ "${NGPU:-0}" -ge 2 ]; then
  stage lm_eval_dp "${EVAL_LIMIT_S:-150}" python3 -m accelerate.commands.launch --multi_gpu --num_processes "$NGPU" \
    --num_machines 1 --mixed_precision no --dynamo_backend no eval.py --model ArchScale \
    --model_args "pretrained=$CKPT" --include_path tests/fixtures/eval_task --tasks "$TASKS" \
    --batch_size "$EVAL_BS" --device cuda --output_path "$DETAIL/lm_eval_dp"
fi

# 3) Phonebook at each length (one bucket of exactly L tokens per call)
for L in $PB_LENS; do
  stage "phonebook_$L" "${PB_LIMIT_S:-90}" python3 eval_phonebook.py --checkpoint_path "$CKPT" \
    --min_eval_len "$L" --max_eval_len "$L" --num_buckets 1 --num_samples "$PB_SAMPLES" --eval_batch_size "$PB_BS" \
    --output_dir "$DETAIL/phonebook_$L" --device "$DEVICE"
done

# 4) summary (metrics + seconds per stage) -> stdout and $OUT/summary.json
python3 - "$OUT" "$CKPT" <<'EOF'
import glob, json, math, os, re, sys
out, ckpt = sys.argv[1], sys.argv[2]
detail = os.path.join(out, "detail")
read = lambda path: open(path, encoding="utf-8", errors="replace").read() if os.path.exists(path) else ""
summary = {"checkpoint": ckpt, "env": read(os.path.join(detail, "env.txt")).strip().splitlines(), "stages": {},
           "train": None, "lm_eval": {}, "phonebook": {}}
for line in read(os.path.join(detail, "stages.tsv")).splitlines():
    name, rc, secs = line.split("\t")
    summary["stages"][name] = {"rc": int(rc), "seconds": float(secs)}
steps = [x for x in read(os.path.join(out, "train.log")).splitlines() if re.match(r"step \d+[:/]", x)]
if steps:
    summary["train"] = steps[-2:]
for key in ("lm_eval", "lm_eval_dp"):
    files = sorted(glob.glob(os.path.join(detail, key, "**", "results_*.json"), recursive=True), key=os.path.getmtime)
    if files:
        res = json.load(open(files[-1]))
        secs = res.get("total_evaluation_time_seconds")
        summary[key] = {"file": files[-1], "evaluation_seconds": round(float(secs), 1) if secs else None,
                        "n_samples": {t: n.get("effective") for t, n in res.get("n-samples", {}).items()},
                        "results": {t: {m: v for m, v in r.items() if isinstance(v, (int, float)) and not
                                        isinstance(v, bool) and "stderr" not in m and m != "sample_len"}
                                    for t, r in res.get("results", {}).items()}}
if summary["lm_eval"] and summary.get("lm_eval_dp"):  # data parallel vs one GPU: largest relative difference
    diffs = []
    for t, ms in summary["lm_eval"]["results"].items():
        for m, v in ms.items():
            w = summary["lm_eval_dp"]["results"].get(t, {}).get(m)
            if w is not None:
                a, b = (math.log(v), math.log(w)) if "perplexity" in m and v > 0 and w > 0 else (v, w)
                diffs.append(abs(a - b) / max(abs(a), 1e-12))
    summary["lm_eval_dp"]["max_rel_diff_vs_one_gpu"] = max(diffs) if diffs else None
for path in sorted(glob.glob(os.path.join(detail, "phonebook_*", "phonebook.json"))):
    pb = json.load(open(path))
    row = {k: pb.get(k) for k in ("accuracy", "num_samples", "min_eval_len", "max_eval_len", "elapsed_s", "step")}
    row["mean_len"] = pb["buckets"][0].get("mean_len") if pb.get("buckets") else None
    summary["phonebook"][os.path.basename(os.path.dirname(path))] = row
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
print("\n=== summary (" + os.path.join(out, "summary.json") + ")")
print("\n".join(summary["env"]))
print("stage                rc   seconds")
for name, st in summary["stages"].items():
    print(f"{name:<20} {st['rc']:>3} {st['seconds']:>9.1f}")
for line in summary["train"] or []:
    print("train: " + line)
for key in ("lm_eval", "lm_eval_dp"):
    if summary.get(key):
        print(f"{key} (lm-eval's own evaluation time {summary[key]['evaluation_seconds']} s):")
        for task, metrics in summary[key]["results"].items():
            n = summary[key]["n_samples"].get(task)
            print(f"  {task:<18} n={n}  " + "  ".join(f"{m.split(',')[0]}={v:.4g}" for m, v in metrics.items()))
        if "max_rel_diff_vs_one_gpu" in summary[key]:
            print(f"  largest relative difference to one GPU: {summary[key]['max_rel_diff_vs_one_gpu']}")
for name, pb in summary["phonebook"].items():
    print(f"{name:<20} accuracy {pb['accuracy']:.3f} over {pb['num_samples']} prompts of {pb['mean_len']} tokens "
          f"(generation {pb['elapsed_s']} s)")
EOF
echo "=== total $(elapsed "$T0")s; logs and JSON under $OUT"
