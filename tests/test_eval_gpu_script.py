"""benchmarks/eval_gpu.sh: shell checks, and one run of its stages on the CPU with a tiny checkpoint (a stage that
fails must not stop the next one; the summary must hold every stage's exit code, seconds and metrics)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "eval_task"))
from tiny_run import make_run, tiny_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "eval_gpu.sh"
INSTALL = ("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "
           ".whl/*.whl && export PYTHONPATH=/tmp/site:$PWD")


def test_eval_gpu_script_shell():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    if shutil.which("shellcheck"):
        r = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout
    lines = SCRIPT.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    first = next(x for x in lines[1:] if x.strip() and not x.startswith("#"))
    assert first == INSTALL  # the wheels carried in .whl, as the other GPU scripts
    # the Phonebook flags the script passes exist
    sys.path.insert(0, str(REPO))
    from eval_phonebook import build_parser

    build_parser().parse_args(["--checkpoint_path", "X", "--min_eval_len", "2048", "--max_eval_len", "2048",
                               "--num_buckets", "1", "--num_samples", "32", "--eval_batch_size", "8",
                               "--output_dir", "D", "--device", "cuda"])


@pytest.mark.slow
def test_eval_gpu_script_stages_on_cpu(tmp_path):
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install lm-eval)")
    run = make_run(tmp_path / "run", tiny_config(block_size=512), steps=(5,))
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), DEVICE="cpu", EVAL_BS="4", PB_SAMPLES="2", PB_BS="2",
               PB_LENS="200 4000", HF_DATASETS_CACHE=str(tmp_path / "hfc"), CUDA_VISIBLE_DEVICES="")
    r = subprocess.run(["bash", str(SCRIPT), str(run)], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    stages = summary["stages"]
    assert "train" not in stages and "prepare" not in stages  # the checkpoint given was used
    assert stages["lm_eval"]["rc"] == 0 and stages["phonebook_200"]["rc"] == 0, r.stdout[-4000:]
    assert stages["phonebook_4000"]["rc"] != 0  # beyond the training length: fails, after the others ran
    assert all(s["seconds"] > 0 for s in stages.values())
    res = summary["lm_eval"]["results"]
    assert set(res) == {"litscale_toy", "litscale_toy_gen", "litscale_toy_ppl"}
    assert 0.0 <= res["litscale_toy"]["acc,none"] <= 1.0 and res["litscale_toy_ppl"]["bits_per_byte,none"] > 0
    pb = summary["phonebook"]["phonebook_200"]
    assert pb["num_samples"] == 2 and pb["mean_len"] == 200 and 0.0 <= pb["accuracy"] <= 1.0
    assert "phonebook_4000" not in summary["phonebook"]
    assert "=== summary" in r.stdout and "phonebook_4000" in r.stdout
    # a device call brings back at most 8 files from $OUT: the top holds the summary and the stage logs only
    assert len([p for p in out.iterdir() if p.is_file()]) <= 8
