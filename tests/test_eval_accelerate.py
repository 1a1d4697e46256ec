"""eval.py data parallel: two CPU processes (``accelerate launch --multi_gpu --num_processes 2`` or torchrun, gloo)
split the requests of the local task and produce one result equal to the single-process run."""

from __future__ import annotations

import glob
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "eval_task"))
from tiny_run import make_run  # noqa: E402

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install lm-eval)")

REPO = Path(__file__).resolve().parents[1]
TASK_DIR = REPO / "tests" / "fixtures" / "eval_task"
TASKS = "litscale_toy,litscale_toy_gen,litscale_toy_ppl"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launcher(nproc: int) -> list[str]:
    port = str(_free_port())
    try:
        import accelerate  # noqa: F401
    except ImportError:
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                "--master_addr", "127.0.0.1", "--master_port", port]
    # accelerate's --cpu starts ONE process unless --mpirun_hostfile (mpirun) is given; --multi_gpu is its torchrun
    # launcher, which on a CPU-only machine (or with --device cpu) gives N CPU processes joined with gloo
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_ip", "127.0.0.1", "--main_process_port", port]


def _eval(run: Path, out: Path, env: dict, prefix: list[str]) -> tuple[dict, str]:
    cmd = [*prefix, "eval.py", "--model", "ArchScale", "--model_args", f"pretrained={run},dtype=float32",
           "--include_path", str(TASK_DIR), "--tasks", TASKS, "--device", "cpu", "--batch_size", "3",
           "--output_path", str(out), "--log_samples"]
    if not prefix:
        cmd = [sys.executable, *cmd]
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, " ".join(cmd) + "\n" + r.stdout[-3000:] + r.stderr[-5000:]
    files = glob.glob(str(out / "**" / "results_*.json"), recursive=True)
    assert len(files) == 1, files  # one result, written by rank 0 only
    return json.loads(Path(files[0]).read_text()), r.stderr


@pytest.mark.slow
def test_two_process_cpu_launch_equals_one_process(tmp_path):
    run = make_run(tmp_path / "run", steps=(5,))
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_DATASETS_CACHE=str(tmp_path / "hfc"),
               TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU"):
        env.pop(var, None)
    one, _ = _eval(run, tmp_path / "one", env, [])
    two, log = _eval(run, tmp_path / "two", env, _launcher(2))

    # the work was split: rank 1 built its own share of every task
    for task in TASKS.split(","):
        assert f"Building contexts for {task} on rank 1" in log, log[-3000:]
    assert two["n-samples"] == one["n-samples"]
    for task, metrics in one["results"].items():
        assert task in two["results"]
        for name, value in metrics.items():
            if isinstance(value, float):
                got = two["results"][task][name]
                if "perplexity" in name:  # exp(mean NLL): compare the NLL (fp32 sums differ with the batch split)
                    got, value = math.log(got), math.log(value)
                assert got == pytest.approx(value, rel=1e-5, abs=1e-7), (task, name)
    # every document is scored exactly once (padding requests of the shorter rank are dropped)
    for task in TASKS.split(","):
        (samples,) = glob.glob(str(tmp_path / "two" / "**" / f"samples_{task}_[0-9]*.jsonl"), recursive=True)
        ids = [json.loads(x)["doc_id"] for x in Path(samples).read_text().splitlines() if x.strip()]
        assert sorted(ids) == [0, 1, 2, 3, 4], ids


def test_launch_env_reads_torchrun_and_mpi_variables(monkeypatch):
    from lit_gpt.eval.harness import _launch_env

    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
                "OMPI_COMM_WORLD_LOCAL_RANK", "PMI_SIZE", "PMI_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_SIZE",
                "MV2_COMM_WORLD_RANK", "MV2_COMM_WORLD_LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    assert _launch_env() == (0, 1, 0)
    monkeypatch.setenv("PMI_SIZE", "4")
    monkeypatch.setenv("PMI_RANK", "3")
    assert _launch_env() == (3, 4, 3)  # Intel MPI / MPICH (accelerate launch --cpu --mpirun_hostfile)
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "2")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "1")
    monkeypatch.setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1")
    assert _launch_env() == (1, 2, 1)  # Open MPI
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert _launch_env() == (5, 8, 1)  # torchrun / accelerate --multi_gpu win
