"""pretrain.py end to end on CPU: learning, resume equality, torchrun (gloo) equivalence, dry run, bad input."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_gpt.training.cli import main, parse_options

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--train_model", "transformer", "--depth", "2", "--ar", "16", "--train_name", "test_mup", "--ctx_len", "64",
        "--micro_bsz", "4", "--total_bsz", "512", "--num_workers", "0", "--eval_iters", "2", "--compile", "false",
        "--base_hps.d0", "2", "--base_hps.eta0", "0.003", "--base_hps.b0", "512", "--base_hps.warmup_tokens0", "1024"]


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from lit_gpt.training.checkpoint import find_resume_checkpoint, load_checkpoint

    return load_checkpoint(find_resume_checkpoint(run_dir, log=None))[0]["model"]


def resume_from(full: Path, resumed: Path, step: int) -> None:
    """An interrupted run: only ``full``'s checkpoint at ``step`` survived in ``resumed``."""
    name = f"step-{step:08d}"
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / name, resumed / "checkpoints" / name)


def assert_same_run(full: Path, resumed: Path, steps: range) -> None:
    """The resumed run logged exactly ``steps`` with the uninterrupted run's losses and ended on its weights."""
    a = {int(r["step"]): float(r["train_loss"]) for r in read_metrics(full) if r["train_loss"]}
    b = {int(r["step"]): float(r["train_loss"]) for r in read_metrics(resumed) if r["train_loss"]}
    assert sorted(b) == list(steps)
    for step in b:
        assert b[step] == pytest.approx(a[step], abs=1e-6)
    wa, wb = final_weights(full), final_weights(resumed)
    assert set(wa) == set(wb)
    for name in wa:
        assert torch.allclose(wa[name], wb[name], atol=1e-6), name


def test_training_lowers_loss_and_writes_run_folder(builtin_data, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(TINY + ["--train_data_dir", builtin_data, "--out_dir", str(out), "--max_steps", "40", "--log_step", "10",
                      "--eval_step", "40", "--save_step", "20"])
    assert rc == 0
    rows = read_metrics(out)
    train = [float(r["train_loss"]) for r in rows if r["train_loss"]]
    assert min(train[1:]) < train[0] - 0.5, train
    val = [r for r in rows if r["val_loss"]]
    assert val and all(r["val_loss_1x"] and r["val_loss_4x"] for r in val)
    vocab = json.loads((Path(builtin_data) / "meta.json").read_text())["vocab_size"]
    assert float(val[-1]["val_loss"]) < math.log(vocab) - 0.5  # well below the uniform guess
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished"
    assert run["options"]["parameterization"] == "mup++" and run["plan"]["max_steps"] == 40
    assert (out / "tokenizer.json").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir() if p.name.startswith("step-")) == \
        ["step-00000020", "step-00000040"]
    printed = capsys.readouterr().out
    assert "tok/s" in printed and "ETA" in printed


def test_resume_reproduces_uninterrupted_run(builtin_data, tmp_path):
    common = TINY + ["--train_data_dir", builtin_data, "--max_steps", "12", "--log_step", "1", "--eval_step", "100",
                     "--save_step", "6"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert main(common + ["--out_dir", str(full)]) == 0
    resume_from(full, resumed, 6)
    assert main(common + ["--out_dir", str(resumed), "--resume", "auto"]) == 0
    assert_same_run(full, resumed, range(7, 13))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_gpu_resume_with_triton_adamw_reproduces_uninterrupted_run(builtin_data, tmp_path, monkeypatch):
    """On CUDA the optimizer step is TritonAdamW's kernel (every tensor here, the size floor lowered); its state goes
    through the checkpoint and the resumed run matches the uninterrupted one."""
    import lit_gpt.kernels.adamw as adamw

    monkeypatch.setattr(adamw, "MIN_TRITON_NUMEL", 1)
    launches = []
    original = adamw.adamw_step_
    monkeypatch.setattr(adamw, "adamw_step_", lambda *a, **k: launches.append(1) or original(*a, **k))
    common = TINY + ["--train_data_dir", builtin_data, "--max_steps", "12", "--log_step", "1", "--eval_step", "100",
                     "--save_step", "6", "--precision", "32-true", "--adamw_kernel", "triton"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert main(common + ["--out_dir", str(full)]) == 0
    assert launches, "the Triton kernel did not run"
    resume_from(full, resumed, 6)
    assert main(common + ["--out_dir", str(resumed), "--resume", "auto"]) == 0
    assert_same_run(full, resumed, range(7, 13))


@pytest.mark.slow
def test_fsdp2_resume_reproduces_uninterrupted_run(builtin_data, tmp_path):
    """FSDP2 on 2 CPU ranks (gloo): sharded weights and AdamW states go through the full-state checkpoint and come
    back exactly; each rank's loader position too."""
    common = TINY + ["--train_data_dir", builtin_data, "--max_steps", "8", "--log_step", "1", "--eval_step", "100",
                     "--save_step", "4", "--strategy", "fsdp", "--fsdp_version", "2"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"

    def launch(out: Path, *extra: str) -> None:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29625",
               str(ROOT / "pretrain.py"), *common, "--out_dir", str(out), *extra]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=400,
                             env=dict(os.environ, OMP_NUM_THREADS="1"))
        assert res.returncode == 0, res.stderr[-3000:]

    launch(full)
    resume_from(full, resumed, 4)
    launch(resumed, "--resume", "auto")
    assert json.loads((full / "run.json").read_text())["system"]["strategy"] == "fsdp"
    assert_same_run(full, resumed, range(5, 9))
    assert not any("_fsdp" in name or "_checkpoint" in name for name in final_weights(full))


def test_load_dir_starts_new_run_from_weights(builtin_data, tmp_path):
    src = tmp_path / "src"
    assert main(TINY + ["--train_data_dir", builtin_data, "--out_dir", str(src), "--max_steps", "16", "--save_step", "16",
                        "--eval_step", "100", "--log_step", "1"]) == 0
    dst = tmp_path / "dst"
    assert main(TINY + ["--train_data_dir", builtin_data, "--out_dir", str(dst), "--max_steps", "1", "--save_step", "100",
                        "--eval_step", "100", "--log_step", "1", "--load_dir", str(src)]) == 0
    first = float(read_metrics(dst)[0]["train_loss"])
    src_losses = [float(r["train_loss"]) for r in read_metrics(src) if r["train_loss"]]
    # starts from the trained weights (near where src ended), not from scratch (near where src began)
    assert abs(first - src_losses[-1]) < abs(first - src_losses[0]), (first, src_losses)


@pytest.mark.slow
@pytest.mark.parametrize("launch", [
    {},  # DDP, guard on the host
    # FSDP2 on CPU (gloo), the guard in the fused AdamW: clipping needs the norm summed over the two shards
    {"EQ_STRATEGY": "fsdp", "EQ_FSDP_VERSION": "2", "EQ_GUARD": "device"},
], ids=["ddp", "fsdp2_device_guard"])
def test_torchrun_gloo_matches_single_process(tmp_path, launch):
    script = ROOT / "tests" / "helpers" / "ddp_equivalence.py"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, str(script), str(tmp_path / "w1.json")], check=True, env=env, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29623",
                    str(script), str(tmp_path / "w2.json")], check=True, env=dict(env, **launch), timeout=300)
    one = json.loads((tmp_path / "w1.json").read_text())
    two = json.loads((tmp_path / "w2.json").read_text())
    assert one["grad_accum"] == 2 * two["grad_accum"] or two["grad_accum"] == one["grad_accum"]
    # random tokens hold nothing to learn (ln V is optimal), but every step must move the model
    assert max(one["losses"]) - min(one["losses"]) > 1e-3
    for a, b in zip(one["losses"], two["losses"]):
        assert a == pytest.approx(b, abs=1e-5)
    assert max(one["grad_norms"]) > one["grad_clip"]  # clipping is exercised, so a wrong global norm would show
    for a, b in zip(one["grad_norms"], two["grad_norms"]):
        assert a == pytest.approx(b, rel=1e-4)


@pytest.mark.slow
def test_torchrun_gloo_working_copies_match_autocast_casts(tmp_path):
    """DDP on 2 CPU ranks in bf16-mixed: with the optimizer's bf16 working copies (training/working_copies.py) every
    loss and gradient norm equals autocast's per-forward casts exactly (on the CPU the weight gradient is rounded as
    autocast rounds it), so the copies stay current on every rank. Three micro steps per optimizer step: the second
    adds its weight gradients in place (working_copies.WorkingCopies.accumulating), the third, which DDP reduces, goes
    through autograd."""
    script = ROOT / "tests" / "helpers" / "ddp_equivalence.py"
    runs = {}
    for mode in ("forward", "optimizer"):
        env = dict(os.environ, OMP_NUM_THREADS="1", EQ_PRECISION="bf16-mixed", EQ_WEIGHT_CAST=mode, EQ_MICRO_STEPS="3")
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29627",
                        str(script), str(tmp_path / f"{mode}.json")], check=True, env=env, timeout=300)
        runs[mode] = json.loads((tmp_path / f"{mode}.json").read_text())
    cast, copies = runs["forward"], runs["optimizer"]
    assert cast["world"] == copies["world"] == 2 and cast["grad_accum"] == copies["grad_accum"] == 3
    assert cast["working_copies"] == 0 and copies["working_copies"] == 8
    assert max(cast["losses"]) - min(cast["losses"]) > 1e-3  # the steps move the model
    assert cast["losses"] == copies["losses"] and cast["grad_norms"] == copies["grad_norms"]


def test_rank_vote_agrees_across_ranks_without_a_barrier(tmp_path):
    """Stop and save flags are agreed by all ranks `lag` steps late, from a device all-reduce (no host sync)."""
    from lit_gpt.training.parallel import RankVote

    single = RankVote(torch.device("cpu"), world_size=1)
    assert single(True, False) == (True, False)  # one process: no lag
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29626",
                    str(ROOT / "tests" / "helpers" / "rank_vote.py"), str(tmp_path / "vote")], check=True, env=env,
                   timeout=120)
    ranks = [json.loads((tmp_path / f"vote_{r}.json").read_text()) for r in (0, 1)]
    f, t = False, True
    # call s returns the votes of call s - 2; clear() after call 5 drops the votes of calls 4 and 5
    expected = [[f, f], [f, f], [f, f], [f, t], [f, f], [t, f], [f, f], [f, f]]
    for result in ranks:
        assert result["verdicts"] == expected
        assert result["sum"] == 3.0


@pytest.mark.slow
def test_torchrun_pretrain_cli_smoke(builtin_data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29624",
           str(ROOT / "pretrain.py"), *TINY, "--train_data_dir", builtin_data, "--out_dir", str(out),
           "--max_steps", "4", "--log_step", "2", "--eval_step", "4", "--save_step", "4"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2 and run["system"]["strategy"] == "ddp" and run["status"] == "finished"
    assert len(final_weights(out)) > 0


def test_dry_run_prints_plan(capsys):
    assert main(["--train_model", "transformer", "--depth", "16", "--train_name", "scaling_mup", "--vocab_size",
                 "32000", "--devices", "8", "--micro_bsz", "4", "--dry_run"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("run_name", "model_config", "n_params", "n_params_non_embedding", "train_tokens", "global_batch_tokens",
                "micro_batch_size", "grad_accum_steps", "max_steps", "lr", "lr_mult", "weight_decay", "warmup_tokens",
                "flops_per_token"):
        assert key in report, key
    assert report["run_name"] == "scaling_mup_transformer_d16_ctx4096"
    assert report["lr"] == pytest.approx(4e-4) and report["grad_accum_steps"] == 16


def test_archscale_spellings_and_train_name_tokens(tmp_path):
    opts = parse_options(["--train_model", "phi4miniflash", "--depth", "32", "--train_name", "scaling_mup_tie_rbase_varlen_ls_wsd",
                          "--base_hps.eta0=5e-4", "--base_hps.b0=8388608", "--base_hps.warmup_tokens0=25_165_824_000",
                          "--ctx_len", "8192", "--max_tokens", "5e12", "--resume=auto", "--fsdp_save_mem=true"]).resolve()
    assert opts.base_hps.eta0 == 5e-4 and opts.base_hps.b0 == 8388608 and opts.base_hps.warmup_tokens0 == 25_165_824_000
    assert (opts.parameterization, opts.tied_embeddings, opts.rope_base, opts.varlen, opts.label_smoothing,
            opts.schedule, opts.resume, opts.fsdp_save_mem) == ("mup++", True, 640_000, True, 0.1, "wsd", "auto", True)
    explicit = parse_options(["--train_name", "scaling_mup", "--parameterization", "sp", "--schedule", "cosine"]).resolve()
    assert explicit.parameterization == "sp" and explicit.schedule == "cosine"
    assert parse_options(["--train_name", "x_ori_mup"]).resolve().parameterization == "mup"
    assert parse_options(["--train_name", "tools"]).resolve().label_smoothing == 0.0  # 'ls' is a token, not a substring
    cfg = tmp_path / "run.yaml"
    cfg.write_text("train_model: sambay\ndepth: 8\nbase_hps:\n  eta0: 0.001\n")
    from_yaml = parse_options(["--config", str(cfg), "--depth", "12"])
    assert (from_yaml.train_model, from_yaml.depth, from_yaml.base_hps.eta0) == ("sambay", 12, 0.001)


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "pretrain.py"), *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", ["unknown_model", "missing_data", "ctx_too_long", "vocab_too_small", "bad_yaml",
                                  "yoco_depth", "resume_mismatch", "unwritable_out"])
def test_bad_input_gives_one_line_error(case, builtin_data, tmp_path, capsys):
    base = TINY + ["--train_data_dir", builtin_data, "--out_dir", str(tmp_path / "out"), "--max_steps", "2"]
    protected = None
    if case == "unknown_model":
        args = base + ["--train_model", "gpt9"]
        expect = "valid:"
    elif case == "missing_data":
        args = TINY + ["--train_data_dir", str(tmp_path / "nope"), "--out_dir", str(tmp_path / "out")]
        expect = "nope"
    elif case == "ctx_too_long":
        args = base + ["--ctx_len", "10000000", "--micro_bsz", "1", "--total_bsz", "10000000"]
        expect = "ctx"
    elif case == "vocab_too_small":
        args = base + ["--vocab_size", "64"]
        expect = "vocab"
    elif case == "bad_yaml":
        bad = tmp_path / "bad.yaml"
        bad.write_text("train_model: [unclosed\n")
        args = ["--config", str(bad)]
        expect = ""
    elif case == "yoco_depth":
        args = base + ["--train_model", "sambay", "--depth", "6"]
        expect = "divisible by 4"
    elif case == "resume_mismatch":
        run = tmp_path / "out"
        assert main(base + ["--save_step", "2", "--eval_step", "100", "--log_step", "1"]) == 0
        protected = tree_digest(run / "checkpoints")
        args = base + ["--depth", "4", "--resume", "auto"]
        expect = "depth"
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        args = TINY + ["--train_data_dir", builtin_data, "--out_dir", str(ro / "sub")]
        expect = "out_dir"
        if os.geteuid() == 0:  # root ignores permission bits: use a path below a regular file instead
            blocker = tmp_path / "file"
            blocker.write_text("x")
            args = TINY + ["--train_data_dir", builtin_data, "--out_dir", str(blocker / "sub")]
    res = run_cli(args, tmp_path)
    rc, err = res.returncode, res.stderr
    assert rc != 0
    assert "Traceback" not in err
    assert expect.lower() in err.lower(), err
    assert [line for line in err.splitlines() if line.startswith("error:")], err
    if protected is not None:
        assert tree_digest(tmp_path / "out" / "checkpoints") == protected


@pytest.mark.parametrize("logger", ["wandb", "tensorboard"])
def test_external_loggers(logger, builtin_data, tmp_path, monkeypatch):
    pytest.importorskip(logger)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)  # no key: wandb must go offline, never to the network
    monkeypatch.delenv("WANDB_MODE", raising=False)
    out = tmp_path / logger
    assert main(TINY + ["--train_data_dir", builtin_data, "--out_dir", str(out), "--max_steps", "2", "--log_step", "1",
                        "--eval_step", "2", "--save_step", "2", "--logger", logger]) == 0
    assert read_metrics(out)  # metrics.csv is written whatever the logger
    if logger == "wandb":
        assert list((out / "wandb").glob("offline-run-*"))
    else:
        assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_save_interval_minutes_checkpoints_by_time(builtin_data, tmp_path):
    out = tmp_path / "timed"
    assert main(TINY + ["--train_data_dir", builtin_data, "--out_dir", str(out), "--max_steps", "3", "--log_step", "1",
                        "--eval_step", "100", "--save_step", "1000", "--save_interval_minutes", "1e-6"]) == 0
    steps = sorted(p.name for p in (out / "checkpoints").glob("step-*"))
    assert steps == ["step-00000001", "step-00000002", "step-00000003"]


def test_activation_checkpointing_same_losses(builtin_data, tmp_path):
    common = TINY + ["--train_data_dir", builtin_data, "--max_steps", "3", "--log_step", "1", "--eval_step", "100",
                     "--save_step", "3"]
    assert main(common + ["--out_dir", str(tmp_path / "plain")]) == 0
    assert main(common + ["--out_dir", str(tmp_path / "ac"), "--activation_checkpointing", "true"]) == 0
    plain = [float(r["train_loss"]) for r in read_metrics(tmp_path / "plain")]
    ac = [float(r["train_loss"]) for r in read_metrics(tmp_path / "ac")]
    assert ac == pytest.approx(plain, abs=1e-6)
    assert set(final_weights(tmp_path / "ac")) == set(final_weights(tmp_path / "plain"))  # wrapper names stripped


def test_fsdp_options_reach_the_strategy():
    """The FSDP CLI knobs end up in what Lightning / torch receive (FSDP1 needs CUDA to run, not to be built)."""
    from lit_gpt.training.parallel import System, fsdp1_strategy, fsdp_sharding

    opts = parse_options(["--train_model", "transformer", "--depth", "2", "--train_name", "x", "--strategy", "fsdp",
                          "--fsdp_sharding", "grad_op", "--fsdp_forward_prefetch", "true",
                          "--fsdp_limit_all_gathers", "false", "--fsdp_save_mem", "true"])
    strategy = fsdp1_strategy(opts, System("cuda", 2, 1, "fsdp", "bf16-mixed", True))
    assert strategy.sharding_strategy.name == "SHARD_GRAD_OP" and strategy.cpu_offload.offload_params
    assert strategy._fsdp_kwargs["forward_prefetch"] is True and strategy._fsdp_kwargs["limit_all_gathers"] is False
    assert fsdp_sharding(parse_options(["--train_model", "transformer", "--depth", "2", "--train_name", "x"]), 2) \
        == "HYBRID_SHARD"


@pytest.mark.parametrize("strategy, version", [("auto", "1"), ("fsdp", "2")])
def test_residual_stream_stays_fp32_under_mixed_precision(strategy, version):
    """SPEC: the residual stream is fp32 under bf16-mixed, also when FSDP gathers bf16 weights (the embedding's
    output would be bf16) and would cast each unit's inputs to bf16. A subprocess: FSDP2 initializes a process group."""
    res = subprocess.run([sys.executable, str(ROOT / "tests" / "helpers" / "residual_dtype.py"), strategy, version],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr[-3000:]
    line = next(ln for ln in res.stdout.splitlines() if ln.startswith("residual dtypes:"))
    dtypes = line.split(":", 1)[1].split()
    assert len(dtypes) == 4 and set(dtypes) == {"torch.float32"}, line


def test_guard_auto_resolution():
    """auto: on the device on CUDA, except with --spike_threshold (host check) and 16-mixed (GradScaler owns the
    fused step's skip inputs); the host elsewhere."""
    from lit_gpt.training.loop import guard_on_device
    from lit_gpt.training.parallel import System

    base = ["--train_model", "transformer", "--depth", "2", "--train_name", "x"]
    cuda = System("cuda", 1, 1, "single", "bf16-mixed", True)
    assert guard_on_device(parse_options(base), cuda)
    assert not guard_on_device(parse_options(base + ["--spike_threshold", "3"]), cuda)
    assert not guard_on_device(parse_options(base), System("cuda", 1, 1, "single", "16-mixed", True))
    assert not guard_on_device(parse_options(base), System("cpu", 1, 1, "single", "32-true", False))
    assert not guard_on_device(parse_options(base + ["--guard", "host"]), cuda)
    assert guard_on_device(parse_options(base + ["--guard", "device"]), System("cpu", 1, 1, "single", "32-true", False))
