"""The sweep launcher's axes (lr, depth, tokens, batch): printed commands, resuming, tables -- no training."""

from __future__ import annotations

import json
import os
import shlex

import pytest

from lit_gpt import sweep


def fake_run(path, *, arch="transformer", depth=4, train_name="scaling_mup", loss=5.0, status="finished",
             tokens=4096, ctx=128):
    """A run folder as pretrain.py leaves it (run.json + metrics.csv), without training anything."""
    os.makedirs(path, exist_ok=True)
    info = {"run_name": os.path.basename(str(path)), "status": status,
            "options": {"train_name": train_name, "train_model": arch, "depth": depth, "ctx_len": ctx},
            "config": {"arch": arch, "n_layer": depth, "n_embd": 8 * depth,
                       "parameterization": "mup++" if "mup" in train_name else "sp"},
            "plan": {"lr": 2e-3, "max_steps": 4, "train_tokens": tokens, "n_params": 1000,
                     "n_params_non_embedding": 500}}
    with open(os.path.join(path, "run.json"), "w") as f:
        json.dump(info, f)
    with open(os.path.join(path, "metrics.csv"), "w") as f:
        f.write("step,tokens,flops,train_loss,val_loss\n")
        f.write(f"4,{tokens},{6e3 * tokens:g},{loss},{loss if status == 'finished' else ''}\n")


def printed(capsys, argv):
    assert sweep.main(argv) == 0
    out = capsys.readouterr().out
    cmds = [shlex.split(line) for line in out.splitlines() if "pretrain.py" in line and not line.startswith("#")]
    return out, cmds


def flag(cmd, name):
    return cmd[cmd.index(name) + 1]


def test_every_axis_is_registered():
    assert {"lr", "depth", "tokens", "batch"} <= set(sweep.AXES)


def test_depth_print_only(tmp_path, capsys):
    out, cmds = printed(capsys, ["depth", "--train_model", "transformer", "sambay", "--depths", "4", "8",
                                 "--train_name", "scaling", "scaling_mup", "--ar", "8", "--ctx_len", "128",
                                 "--out_dir", str(tmp_path), "--print_only", "--", "--base_hps.d0", "4"])
    assert len(cmds) == 8 and "8 to run, 0 skipped" in out
    names = {os.path.basename(flag(c, "--out_dir")) for c in cmds}
    assert "scaling_mup_sambay_d8_ctx128" in names and "scaling_transformer_d4_ctx128" in names
    assert all(flag(c, "--ar") == "8" and flag(c, "--base_hps.d0") == "4" for c in cmds)
    assert not any((tmp_path / n).exists() for n in names)  # printing runs nothing


def test_lr_print_only(tmp_path, capsys):
    _, cmds = printed(capsys, ["lr", "--depths", "2", "--lrs", "1e-3", "4e-3", "--ctx_len", "64",
                               "--out_dir", str(tmp_path), "--print_only"])
    assert [flag(c, "--base_hps.eta0") for c in cmds] == ["0.001", "0.004"]


def test_tokens_print_only_absolute_budgets(tmp_path, capsys):
    out, cmds = printed(capsys, ["tokens", "--train_model", "transformer", "--depths", "4", "8",
                                 "--max_tokens", "4e4", "2e4", "--ctx_len", "128", "--out_dir", str(tmp_path),
                                 "--print_only"])
    assert len(cmds) == 4
    assert [flag(c, "--max_tokens") for c in cmds] == ["20000", "40000", "20000", "40000"]  # sorted per depth
    assert os.path.basename(flag(cmds[0], "--out_dir")) == "scaling_mup_tok20000_transformer_d4_ctx128"
    assert all(c.count("--max_tokens") == 1 for c in cmds)
    assert "tokens --collect_only" in out


def test_tokens_print_only_chinchilla_multiples(tmp_path, capsys):
    _, cmds = printed(capsys, ["tokens", "--depths", "4", "--chinchilla", "0.5", "2", "--ctx_len", "128",
                               "--out_dir", str(tmp_path), "--print_only", "--", "--base_hps.t0", "1e9",
                               "--base_hps.d0", "4"])
    assert [flag(c, "--base_hps.t0") for c in cmds] == ["5e+08", "2e+09"]
    assert all(c.count("--base_hps.t0") == 1 for c in cmds)  # the given t0 is replaced, not passed twice
    assert os.path.basename(flag(cmds[1], "--out_dir")) == "scaling_mup_chin2x_transformer_d4_ctx128"
    # without a given t0 the multiples apply to BaseHyperparameters.t0
    _, cmds = printed(capsys, ["tokens", "--depths", "4", "--chinchilla", "1", "--out_dir", str(tmp_path),
                               "--print_only"])
    from lit_gpt.scaling import BaseHyperparameters

    assert float(flag(cmds[0], "--base_hps.t0")) == pytest.approx(BaseHyperparameters.t0)


def test_tokens_needs_a_budget(tmp_path):
    with pytest.raises(SystemExit):
        sweep.parse_args(["tokens", "--depths", "4", "--out_dir", str(tmp_path)])


def test_batch_print_only(tmp_path, capsys):
    out, cmds = printed(capsys, ["batch", "--train_model", "sambay", "--depths", "4", "--total_bsz", "2048", "1024",
                                 "--max_tokens", "16384", "--ctx_len", "128", "--lr", "0.002",
                                 "--out_dir", str(tmp_path), "--print_only"])
    assert [flag(c, "--total_bsz") for c in cmds] == ["1024", "2048"]
    assert all(c.count("--total_bsz") == 1 and flag(c, "--max_tokens") == "16384" for c in cmds)
    assert all(flag(c, "--base_hps.eta0") == "0.002" for c in cmds)
    assert os.path.basename(flag(cmds[0], "--out_dir")) == "scaling_mup_bsz1024_sambay_d4_ctx128"


def test_script_for_a_cluster(tmp_path):
    script = tmp_path / "sweep.sh"
    argv = ["batch", "--depths", "4", "--total_bsz", "1024", "2048", "--launcher", "torchrun --nproc_per_node=8",
            "--out_dir", str(tmp_path / "root"), "--script", str(script)]
    assert sweep.main(argv) == 0
    lines = script.read_text().splitlines()
    runs = [ln for ln in lines if "pretrain.py" in ln]
    assert len(runs) == 2 and all(ln.startswith("torchrun --nproc_per_node=8 ") for ln in runs)
    assert "--collect_only" in lines[-1]


@pytest.mark.parametrize("axis_argv, finished, interrupted", [
    (["depth", "--train_model", "transformer", "--depths", "4", "8", "12"],
     "scaling_mup_transformer_d4_ctx128", "scaling_mup_transformer_d8_ctx128"),
    (["tokens", "--depths", "4", "--max_tokens", "1e4", "2e4", "4e4"],
     "scaling_mup_tok10000_transformer_d4_ctx128", "scaling_mup_tok20000_transformer_d4_ctx128"),
    (["batch", "--depths", "4", "--total_bsz", "512", "1024", "2048"],
     "scaling_mup_bsz512_transformer_d4_ctx128", "scaling_mup_bsz1024_transformer_d4_ctx128"),
])
def test_resumed_sweep_skips_finished_runs(tmp_path, capsys, axis_argv, finished, interrupted):
    fake_run(tmp_path / finished)
    fake_run(tmp_path / interrupted, status="preempted")
    argv = axis_argv + ["--ctx_len", "128", "--out_dir", str(tmp_path), "--print_only"]
    out, cmds = printed(capsys, argv)
    assert f"{finished}: finished, skipped" in out and "2 to run, 1 skipped" in out
    dirs = [os.path.basename(flag(c, "--out_dir")) for c in cmds]
    assert finished not in dirs and interrupted in dirs
    assert "restart (folder moved to .trash first)" in out and not any("--resume" in c for c in cmds)
    out, cmds = printed(capsys, argv + ["--resume", "auto"])
    resumed = [c for c in cmds if os.path.basename(flag(c, "--out_dir")) == interrupted]
    assert resumed and flag(resumed[0], "--resume") == "auto"
    assert (tmp_path / finished / "run.json").exists()  # nothing touched by printing


def test_tokens_and_batch_tables(tmp_path, capsys):
    for t, loss in ((1e4, 6.0), (2e4, 5.5), (4e4, 5.6)):
        fake_run(tmp_path / f"scaling_mup_tok{int(t)}_transformer_d4_ctx128", tokens=t, loss=loss)
    argv = ["tokens", "--depths", "4", "--max_tokens", "1e4", "2e4", "4e4", "--ctx_len", "128",
            "--out_dir", str(tmp_path), "--collect_only"]
    assert sweep.main(argv) == 0
    md = (tmp_path / "tokens_sweep.md").read_text()
    assert "**5.5000**" in md and "does not fall monotonically" in md
    rows = (tmp_path / "tokens_sweep.csv").read_text().splitlines()
    assert len(rows) == 4 and "max_tokens" in rows[0]
    for b, loss in ((512, 5.2), (1024, 5.1)):
        fake_run(tmp_path / f"scaling_mup_bsz{b}_transformer_d4_ctx128", loss=loss)
    argv = ["batch", "--depths", "4", "--total_bsz", "512", "1024", "--ctx_len", "128",
            "--out_dir", str(tmp_path), "--collect_only"]
    assert sweep.main(argv) == 0
    md = (tmp_path / "batch_sweep.md").read_text()
    assert "**5.1000**" in md and "| 1024 |" in md
