"""μP++ coordinate check (tiny, CPU) and the sweep tool's planning, resuming and tables."""

from __future__ import annotations

import json
import math
import os

import pytest

torch = pytest.importorskip("torch")

from lit_gpt import coord_check as cc  # noqa: E402
from lit_gpt import sweep  # noqa: E402
from lit_gpt.scaling import BaseHyperparameters  # noqa: E402


# ------------------------------------------------------------------------------------------------ coord check
def _run(entries, depths=(2, 8), steps=2, ar=4):
    rows = cc.synthetic_rows(256, 32, 2 * (steps + 1), seed=0)
    base = BaseHyperparameters(d0=min(depths), eta0=2e-3, b0=2 * 32, warmup_tokens0=0)
    return [cc.run_one("transformer", d, ar, e, rows, steps=steps, batch_size=2, base=base, vocab=256, seed=0)
            for e in entries for d in depths]


def test_recorder_sees_every_coordinate():
    [r] = _run(["mup++"], depths=(2,), steps=1, ar=8)
    assert set(r.rms) == {"embedding", "branch.attention", "branch_raw.attention", "branch.mlp", "branch_raw.mlp",
                          "block", "logits"}
    assert all(len(v) == 2 for v in r.rms.values())
    assert r.delta["block"][0] == 0.0 and r.delta["block"][1] > 0
    assert r.rms["logits"][0] == 0.0  # μP zero readout
    mult = 1 / math.sqrt(2 * 2)
    assert r.rms["branch.mlp"][1] == pytest.approx(r.rms["branch_raw.mlp"][1] * mult, rel=1e-5)


def test_mup_plus_plus_flatter_than_sp():
    results = _run(["sp", "mup++"])
    summary = cc.summarize(results)
    sp, mpp = summary["sp"], summary["mup++"]
    assert mpp["worst"]["ratio"] < sp["worst"]["ratio"]
    # the residual stream is where SP visibly grows with depth x width and μP++ does not
    for metric in ("rms", "delta"):
        assert mpp["flatness"][metric]["block"] < sp["flatness"][metric]["block"]
    assert mpp["flatness"]["rms"]["block"] < 1.5 < 3 < sp["flatness"]["rms"]["block"]


def test_flatness_and_parsing():
    a = cc.CoordResult("mup++", 2, 32, 0, 1e-3, rms={"x": [1.0, 2.0]}, delta={"x": [0.0, 1.0]})
    b = cc.CoordResult("mup++", 4, 64, 0, 1e-3, rms={"x": [1.0, 3.0]}, delta={"x": [0.0, 0.0]})
    assert cc.flatness([a, b])["x"] == pytest.approx(1.5)
    assert cc.flatness([a, b], "delta")["x"] == math.inf
    assert cc.parse_parameterization("mup++/hidden") == ("mup++", "hidden")
    assert cc.parse_parameterization("sp") == ("sp", "all")
    with pytest.raises(ValueError):
        cc.parse_parameterization("sp/hidden")


def test_depth_scaled_branch_updates():
    """μP++ shrinks each raw branch's update as sqrt(d0/L) by design; dividing that out must leave it flat, while a
    coordinate that really drifts keeps drifting."""
    rs = [cc.CoordResult("mup++", L, 8 * L, 0, 1e-3, rms={"block": [1.0, 1.0]},
                         delta={"branch_raw.mlp": [0.0, 0.8 / math.sqrt(L)], "branch_raw.attention": [0.0, 0.5],
                                "block": [0.0, 0.3]})
          for L in (2, 8)]
    summary = cc.summarize(rs)
    assert summary["mup++"]["flatness"]["delta"]["branch_raw.mlp"] == pytest.approx(2.0)
    scaled = summary["mup++"]["branch_raw_delta_x_sqrt_depth"]
    assert scaled == {"branch_raw.attention": pytest.approx(2.0), "branch_raw.mlp": pytest.approx(1.0)}
    assert "branch_raw_delta_x_sqrt_depth" not in cc.summarize([cc.CoordResult(**{**r.__dict__, "parameterization": "sp"})
                                                                 for r in rs])["sp"]
    assert "raw-branch delta x sqrt(L/d0)" in cc.format_summary(summary)


def test_coord_check_cli_writes_outputs(tmp_path):
    rc = cc.main(["--synthetic", "--vocab_size", "128", "--depths", "1", "2", "--ar", "4", "--steps", "1",
                  "--ctx_len", "16", "--batch_size", "2", "--parameterizations", "sp", "mup++",
                  "--out", str(tmp_path)])
    assert rc == 0
    data = json.loads((tmp_path / "coord_check.json").read_text())
    assert set(data["summary"]) == {"sp", "mup++"}
    assert (tmp_path / "coord_check.png").stat().st_size > 1000


# ------------------------------------------------------------------------------------------------ sweep
def fake_run(path, train_name, depth, eta0, loss, status="finished", ctx=128):
    os.makedirs(path, exist_ok=True)
    info = {"run_name": f"{train_name}_transformer_d{depth}_ctx{ctx}", "status": status,
            "options": {"train_name": train_name, "train_model": "transformer", "depth": depth, "ctx_len": ctx,
                        "base_hps": {"eta0": eta0}},
            "config": {"arch": "transformer", "n_layer": depth, "n_embd": 16 * depth,
                       "parameterization": "mup++" if "mup" in train_name else "sp"},
            "plan": {"lr": eta0, "max_steps": 10, "n_params": 1000, "n_params_non_embedding": 500}}
    with open(os.path.join(path, "run.json"), "w") as f:
        json.dump(info, f)
    with open(os.path.join(path, "metrics.csv"), "w") as f:
        f.write("step,tokens,flops,train_loss,val_loss\n")
        f.write(f"10,1000,1e9,{loss},{loss if status == 'finished' else ''}\n")


def sweep_args(tmp_path, *extra):
    return ["lr", "--train_model", "transformer", "--depths", "2", "4", "--lrs", "1e-3", "2e-3", "4e-3",
            "--ctx_len", "128", "--out_dir", str(tmp_path), *extra]


def test_lr_points_and_commands(tmp_path, capsys):
    args = sweep.parse_args(sweep_args(tmp_path, "--ar", "16", "--launcher", "torchrun --nproc_per_node=8",
                                       "--", "--base_hps.d0", "4"))
    points = sweep.AXES["lr"].points(args)
    assert [p.name for p in points][:2] == ["scaling_mup_lr0.001_transformer_d2_ctx128",
                                           "scaling_mup_lr0.002_transformer_d2_ctx128"]
    cmd = sweep.build_command(args, points[0])
    assert cmd[:2] == ["torchrun", "--nproc_per_node=8"] and cmd[2].endswith("pretrain.py")
    i = cmd.index("--base_hps.eta0")
    assert cmd[i + 1] == "0.001" and "--base_hps.d0" in cmd and cmd[-2:] == ["--out_dir", sweep.run_dir(args, points[0])]
    assert sweep.collect_command(args) is not None
    assert sweep.main(sweep_args(tmp_path, "--dry_run")) == 0
    out = capsys.readouterr().out
    assert out.count("pretrain.py") == 6 and "--collect_only" in out


def test_resume_skips_finished_and_restarts_interrupted(tmp_path, capsys):
    fake_run(tmp_path / "scaling_mup_lr0.001_transformer_d2_ctx128", "scaling_mup", 2, 1e-3, 5.0)
    fake_run(tmp_path / "scaling_mup_lr0.002_transformer_d2_ctx128", "scaling_mup", 2, 2e-3, 4.0, status="failed")
    args = sweep.parse_args(sweep_args(tmp_path))
    actions = dict((p.name, a) for p, a in sweep.plan_actions(args, sweep.AXES["lr"].points(args)))
    assert actions["scaling_mup_lr0.001_transformer_d2_ctx128"] == "skip"
    assert actions["scaling_mup_lr0.002_transformer_d2_ctx128"] == "restart"
    assert actions["scaling_mup_lr0.004_transformer_d2_ctx128"] == "new"
    args = sweep.parse_args(sweep_args(tmp_path, "--resume", "auto"))
    actions = dict((p.name, a) for p, a in sweep.plan_actions(args, sweep.AXES["lr"].points(args)))
    assert actions["scaling_mup_lr0.002_transformer_d2_ctx128"] == "resume"
    script = tmp_path / "run.sh"
    assert sweep.main(sweep_args(tmp_path, "--script", str(script))) == 0
    text = script.read_text()
    assert text.count("pretrain.py") == 5 and "--collect_only" in text


def test_lr_tables_mark_optimum(tmp_path, capsys):
    losses = {2: {1e-3: 5.0, 2e-3: 4.5, 4e-3: 4.8}, 4: {1e-3: 4.9, 2e-3: 4.6, 4e-3: 4.4}}
    for d, row in losses.items():
        for lr, loss in row.items():
            fake_run(tmp_path / f"scaling_mup_lr{lr:g}_transformer_d{d}_ctx128", "scaling_mup", d, lr, loss)
    assert sweep.main(sweep_args(tmp_path, "--collect_only")) == 0
    md = (tmp_path / "lr_sweep.md").read_text()
    assert "**4.5000**" in md and "**4.4000**" in md
    assert "moves by 1 grid step" in md
    rows = (tmp_path / "lr_sweep.csv").read_text().splitlines()
    assert len(rows) == 7 and "final_val_loss" in rows[0]


def test_axis_registry():
    assert {"lr", "depth"} <= set(sweep.AXES)
    with pytest.raises(ValueError):
        sweep.register_axis(sweep.AXES["lr"])
    args = sweep.parse_args(["depth", "--train_model", "transformer", "sambay", "--depths", "4", "8",
                             "--ctx_len", "256", "--out_dir", "/tmp/x"])
    names = [p.name for p in sweep.AXES["depth"].points(args)]
    assert names == ["scaling_mup_transformer_d4_ctx256", "scaling_mup_transformer_d8_ctx256",
                     "scaling_mup_sambay_d4_ctx256", "scaling_mup_sambay_d8_ctx256"]


def test_depth_axis_tables(tmp_path):
    for depth, loss in [(2, 5.0), (4, 4.5), (8, 4.2)]:
        fake_run(tmp_path / f"scaling_mup_transformer_d{depth}_ctx128", "scaling_mup", depth, 4e-4, loss)
    assert sweep.main(["depth", "--depths", "2", "4", "8", "--ctx_len", "128", "--out_dir", str(tmp_path),
                       "--collect_only"]) == 0
    md = (tmp_path / "depth_sweep.md").read_text()
    assert "| 8 | 128 |" in md and "4.2000" in md
