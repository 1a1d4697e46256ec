#!/usr/bin/env bash
# eval_reason.sh: reasoning evaluation (aime24, math_500, gpqa_diamond, gsm8k) with lighteval.
#
# Usage:
#   ./eval_reason.sh MODEL TASK OUTPUT_DIR            # seed from $SEED (default 0), or every seed in $SEEDS
#   ./eval_reason.sh SEED MODEL TASK OUTPUT_DIR       # ArchScale's newer form: the first argument is an integer
#   options (anywhere): --backend vllm|transformers   (or env BACKEND; default vllm)
#                       --dry-run                     (or env DRY_RUN=1: print the command(s), run nothing)
#                       --summarize                   (only average the results already in OUTPUT_DIR)
#                       -h | --help
#
# MODEL   a Hugging Face format model directory (config.json, tokenizer files, *.safetensors), e.g. made by
#           python -m lit_gpt.export hf CKPT OUT
#         (ALLOW_HUB_MODEL=1 also accepts a Hub id such as an official baseline; not needed for litscale runs.)
# TASK    aime24 | math_500 | gpqa_diamond | gsm8k  (lighteval's tasks lighteval|aime24, lighteval|math_500,
#         lighteval|gpqa:diamond, lighteval|gsm8k, zero-shot).
# OUTPUT  results go to OUTPUT_DIR/TASK/seed_SEED/ (lighteval's results/ and details/ folders) and the mean
#         over every seed found there to OUTPUT_DIR/TASK/summary.json.
#
# Requirements: pip install "lighteval[vllm]"  (vLLM backend, needs a CUDA GPU)
#               pip install lighteval accelerate   (transformers backend: slower, for models vLLM cannot load)
#
# What it does: one lighteval run per seed, sampling with temperature 0.6, top_p 0.95 and up to 32768 new
# tokens (the usual reasoning-model settings), i.e. one sampled answer per problem and seed; each run reports
# lighteval's metric for the task (as defined by the installed lighteval version).  pass@1 is the mean of that
# metric over seeds: run several seeds (SEEDS="0 1 2 3" ./eval_reason.sh MODEL TASK OUT, or one call per seed,
# e.g. as separate jobs) and the summary averages every seed_* folder present.
#
# Environment overrides (defaults in brackets):
#   SEED [0]  SEEDS [$SEED]  TEMPERATURE [0.6]  TOP_P [0.95]  MAX_NEW_TOKENS [32768]
#   MAX_MODEL_LENGTH [MAX_NEW_TOKENS + 2048]  DTYPE [bfloat16]  NUM_GPUS [visible GPUs, else 1]
#   TENSOR_PARALLEL [1] (vLLM: data parallel = NUM_GPUS / TENSOR_PARALLEL)  GPU_MEMORY_UTILIZATION [0.8]
#   CHAT_TEMPLATE [auto: on when the tokenizer defines one]  MAX_SAMPLES [all]  TASK_SPEC [derived]
#   EXTRA_ARGS [none: more lighteval flags, split on spaces]  LIGHTEVAL [lighteval]
set -euo pipefail

PROG=$(basename "$0")
VALID_TASKS="aime24 math_500 gpqa_diamond gsm8k"

die() {
    echo "${PROG}: $*" >&2
    exit 2
}

usage() {
    sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'
}

# ------------------------------------------------------------------------------------------- arguments
BACKEND=${BACKEND:-vllm}
DRY_RUN=${DRY_RUN:-0}
SUMMARIZE_ONLY=0
positional=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        -h | --help) usage; exit 0 ;;
        --dry-run | --dry_run) DRY_RUN=1 ;;
        --summarize) SUMMARIZE_ONLY=1 ;;
        --backend) [[ $# -ge 2 ]] || die "--backend needs a value (vllm or transformers)"; BACKEND=$2; shift ;;
        --backend=*) BACKEND=${1#--backend=} ;;
        --) shift; positional+=("$@"); break ;;
        -*) die "unknown option '$1' (see --help)" ;;
        *) positional+=("$1") ;;
    esac
    shift
done

if [[ ${#positional[@]} -gt 0 && ${positional[0]} =~ ^[0-9]+$ ]]; then
    [[ ${#positional[@]} -eq 4 ]] || die "usage: ${PROG} SEED MODEL TASK OUTPUT_DIR (got ${#positional[@]} arguments; see --help)"
    SEEDS=${positional[0]}
    MODEL=${positional[1]}
    TASK=${positional[2]}
    OUTPUT_DIR=${positional[3]}
else
    [[ ${#positional[@]} -eq 3 ]] || die "usage: ${PROG} [SEED] MODEL TASK OUTPUT_DIR (got ${#positional[@]} arguments; see --help)"
    MODEL=${positional[0]}
    TASK=${positional[1]}
    OUTPUT_DIR=${positional[2]}
    SEEDS=${SEEDS:-${SEED:-0}}
fi
for s in ${SEEDS}; do
    [[ $s =~ ^[0-9]+$ ]] || die "seed '$s' is not a non-negative integer"
done

case "${TASK}" in
    aime24) TASK_NAME="aime24" ;;
    math_500) TASK_NAME="math_500" ;;
    gpqa_diamond) TASK_NAME="gpqa:diamond" ;;
    gsm8k) TASK_NAME="gsm8k" ;;
    *) die "unknown task '${TASK}' (valid tasks: ${VALID_TASKS})" ;;
esac

case "${BACKEND}" in
    vllm | transformers) ;;
    *) die "unknown backend '${BACKEND}' (valid: vllm transformers)" ;;
esac

TASK_DIR="${OUTPUT_DIR%/}/${TASK}"

# ------------------------------------------------------------------------------------------- summary
summarize() {
    python3 - "${TASK_DIR}" "${TASK_NAME}" <<'PY'
import glob, json, os, sys
task_dir, task_name = sys.argv[1], sys.argv[2]
per_seed = {}
for seed_dir in sorted(glob.glob(os.path.join(task_dir, "seed_*"))):
    files = sorted(glob.glob(os.path.join(seed_dir, "**", "results_*.json"), recursive=True), key=os.path.getmtime)
    if not files:
        continue
    with open(files[-1]) as f:
        results = json.load(f).get("results", {})
    key = next((k for k in results if k.split("|")[1:2] == [task_name]), None)
    if key is None:
        continue
    metrics = {m: v for m, v in results[key].items() if isinstance(v, (int, float)) and not m.endswith("_stderr")}
    per_seed[os.path.basename(seed_dir)[len("seed_"):]] = metrics
if not per_seed:
    print(f"no lighteval results for {task_name} under {task_dir}/seed_*", file=sys.stderr)
    sys.exit(1)
names = sorted(set.intersection(*(set(m) for m in per_seed.values())))
mean = {m: sum(s[m] for s in per_seed.values()) / len(per_seed) for m in names}
summary = {"task": task_name, "seeds": sorted(per_seed, key=int), "n_seeds": len(per_seed),
           "mean_over_seeds": mean, "per_seed": per_seed}
with open(os.path.join(task_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
for m in names:
    print(f"{task_name} {m}: {mean[m]:.4f} (mean over {len(per_seed)} seed(s): {', '.join(summary['seeds'])})")
PY
}

if [[ ${SUMMARIZE_ONLY} == 1 ]]; then
    summarize
    exit $?
fi

# ------------------------------------------------------------------------------------------- model
if [[ -d ${MODEL} ]]; then
    [[ -f ${MODEL}/config.json ]] || die "model directory '${MODEL}' has no config.json: it must be a Hugging Face format folder (python -m lit_gpt.export hf CKPT OUT)"
elif [[ ${ALLOW_HUB_MODEL:-0} == 1 && ${MODEL} == */* ]]; then
    :
else
    die "model directory '${MODEL}' does not exist (MODEL must be a Hugging Face format folder, e.g. from: python -m lit_gpt.export hf CKPT OUT)"
fi

# chat template: on when the tokenizer has one (reasoning / SFT models), off for base models
chat=${CHAT_TEMPLATE:-auto}
if [[ ${chat} == auto ]]; then
    chat=0
    if [[ -f ${MODEL}/chat_template.jinja || -f ${MODEL}/chat_template.json ]] \
        || { [[ -f ${MODEL}/tokenizer_config.json ]] && grep -q '"chat_template"' "${MODEL}/tokenizer_config.json"; }; then
        chat=1
    fi
fi
trust_remote_code=0
if [[ -f ${MODEL}/config.json ]] && grep -q '"auto_map"' "${MODEL}/config.json"; then
    trust_remote_code=1
fi

# ------------------------------------------------------------------------------------------- settings
TEMPERATURE=${TEMPERATURE:-0.6}
TOP_P=${TOP_P:-0.95}
MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-32768}
MAX_MODEL_LENGTH=${MAX_MODEL_LENGTH:-$((MAX_NEW_TOKENS + 2048))}
DTYPE=${DTYPE:-bfloat16}
TENSOR_PARALLEL=${TENSOR_PARALLEL:-1}
GPU_MEMORY_UTILIZATION=${GPU_MEMORY_UTILIZATION:-0.8}
LIGHTEVAL=${LIGHTEVAL:-lighteval}
if [[ -z ${NUM_GPUS:-} ]]; then
    NUM_GPUS=1
    if command -v nvidia-smi > /dev/null 2>&1; then
        n=$(nvidia-smi -L 2> /dev/null | grep -c '^GPU' || true)
        if [[ ${n} =~ ^[0-9]+$ && ${n} -gt 0 ]]; then
            NUM_GPUS=${n}
        fi
    fi
fi
[[ ${NUM_GPUS} =~ ^[1-9][0-9]*$ ]] || die "NUM_GPUS must be a positive integer, got '${NUM_GPUS}'"
[[ ${TENSOR_PARALLEL} =~ ^[1-9][0-9]*$ ]] || die "TENSOR_PARALLEL must be a positive integer"
(( NUM_GPUS % TENSOR_PARALLEL == 0 )) || die "NUM_GPUS (${NUM_GPUS}) must be a multiple of TENSOR_PARALLEL (${TENSOR_PARALLEL})"
DATA_PARALLEL=$((NUM_GPUS / TENSOR_PARALLEL))

# lighteval >= 0.10 names tasks suite|task|num_fewshot; older releases want suite|task|num_fewshot|truncate
if [[ -z ${TASK_SPEC:-} ]]; then
    TASK_SPEC="lighteval|${TASK_NAME}|0"
    le_version=$(python3 -c 'import importlib.metadata as m; print(m.version("lighteval"))' 2> /dev/null || true)
    if [[ -n ${le_version} ]] && python3 -c 'import sys; v = tuple(int(x) for x in sys.argv[1].split(".")[:2] if x.isdigit()); sys.exit(0 if v < (0, 10) else 1)' "${le_version}"; then
        TASK_SPEC="${TASK_SPEC}|0"
    fi
fi

# ------------------------------------------------------------------------------------------- commands
build_command() {  # fills the array CMD for seed $1
    local seed=$1 gen model_args
    gen="generation_parameters={max_new_tokens:${MAX_NEW_TOKENS},temperature:${TEMPERATURE},top_p:${TOP_P},seed:${seed}}"
    model_args="model_name=${MODEL},dtype=${DTYPE}"
    if [[ ${trust_remote_code} == 1 ]]; then
        model_args+=",trust_remote_code=True"
    fi
    if [[ ${BACKEND} == vllm ]]; then
        model_args+=",max_model_length=${MAX_MODEL_LENGTH},gpu_memory_utilization=${GPU_MEMORY_UTILIZATION}"
        model_args+=",tensor_parallel_size=${TENSOR_PARALLEL},data_parallel_size=${DATA_PARALLEL},${gen}"
        CMD=(env VLLM_WORKER_MULTIPROC_METHOD=spawn "${LIGHTEVAL}" vllm "${model_args}" "${TASK_SPEC}")
    else
        model_args+=",${gen}"
        if [[ ${NUM_GPUS} -gt 1 ]]; then
            CMD=(accelerate launch --multi_gpu "--num_processes=${NUM_GPUS}" -m lighteval accelerate "${model_args}" "${TASK_SPEC}")
        else
            CMD=("${LIGHTEVAL}" accelerate "${model_args}" "${TASK_SPEC}")
        fi
    fi
    CMD+=(--output-dir "${TASK_DIR}/seed_${seed}" --save-details)
    if [[ ${chat} == 1 ]]; then
        CMD+=(--use-chat-template)
    fi
    if [[ -n ${MAX_SAMPLES:-} ]]; then
        CMD+=(--max-samples "${MAX_SAMPLES}")
    fi
    if [[ -n ${EXTRA_ARGS:-} ]]; then
        local extra
        read -r -a extra <<< "${EXTRA_ARGS}"
        CMD+=("${extra[@]}")
    fi
}

shell_quote() {  # print the arguments as one shell command line, quoting only where needed
    local out=() arg
    for arg in "$@"; do
        if [[ ${arg} =~ ^[A-Za-z0-9_./:=@%+-]+$ ]]; then
            out+=("${arg}")
        else
            out+=("'${arg//\'/\'\\\'\'}'")
        fi
    done
    echo "${out[*]}"
}

if [[ ${DRY_RUN} == 1 ]]; then
    for seed in ${SEEDS}; do
        build_command "${seed}"
        shell_quote "${CMD[@]}"
    done
    exit 0
fi

if [[ ${BACKEND} == vllm ]]; then
    command -v "${LIGHTEVAL}" > /dev/null 2>&1 || die "'${LIGHTEVAL}' not found: pip install \"lighteval[vllm]\" (or use --backend transformers)"
    python3 -c 'import vllm' 2> /dev/null || die "vllm is not importable: pip install \"lighteval[vllm]\" (or use --backend transformers)"
else
    command -v "${LIGHTEVAL}" > /dev/null 2>&1 || die "'${LIGHTEVAL}' not found: pip install lighteval accelerate"
fi

mkdir -p "${TASK_DIR}"
for seed in ${SEEDS}; do
    build_command "${seed}"
    echo "+ $(shell_quote "${CMD[@]}")" >&2
    "${CMD[@]}"
done
summarize
