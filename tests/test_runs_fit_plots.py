"""Run registry (lit_gpt.runs), power-law fits (lit_gpt.fit) and the plot scripts (plots/*.py)."""

from __future__ import annotations

import csv
import filecmp
import glob
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from lit_gpt import runs as R
from lit_gpt.fit import fit_loss_vs_compute, fit_loss_vs_data, fit_power_law, predict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(REPO, "tests", "fixtures")
FIXTURE_RUNS = sorted(glob.glob(os.path.join(FIXTURES, "runs", "*")))
HEADER = "step,tokens,flops,train_loss,lr,tokens_per_sec,mfu,max_mem_gb,elapsed_s,val_loss,val_loss_1x,val_loss_2x"


# -------------------------------------------------------------------------------------------------- fitting
def _synthetic(A, b, E, lo, hi, n, noise, seed):
    rng = np.random.default_rng(seed)
    x = np.geomspace(lo, hi, n)
    y = (A * x ** (-b) + E) * (1 + noise * rng.standard_normal(n))
    return x, y


def test_fit_exact_data_recovers_parameters():
    x = np.geomspace(1e18, 1e21, 12)
    y = 49.64 * x ** -0.07 + 0.64
    fit = fit_power_law(x, y, bootstrap=0)
    assert fit.b == pytest.approx(0.07, rel=1e-3)
    assert fit.E == pytest.approx(0.64, rel=1e-2)
    assert fit.A == pytest.approx(49.64, rel=1e-2)
    assert fit.r2 > 0.999999
    assert math.isnan(fit.ci["b"][0])  # no bootstrap, no interval


@pytest.mark.parametrize("truth,x_range", [
    ((49.64, 0.07, 0.64), (1e18, 1e21)),   # SPEC §7 Transformer++ μP++ style: shallow, weakly curved
    ((239.9, 0.12, 1.11), (1e18, 1e21)),   # SPEC §7 SP
    ((400.0, 0.30, 1.80), (1e8, 1e11)),    # steeper (loss vs tokens style)
])
def test_fit_recovers_known_law_from_noisy_data(truth, x_range):
    A, b, E = truth
    x, y = _synthetic(A, b, E, *x_range, n=20, noise=0.001, seed=3)
    fit = fit_power_law(x, y, bootstrap=100, seed=0)
    assert fit.n == 20 and fit.n_boot > 75
    for name, value in zip(("A", "b", "E"), truth):
        lo, hi = fit.ci[name]
        assert lo <= value <= hi, f"{name}={value} outside its 95% CI [{lo}, {hi}]"
    assert fit.b == pytest.approx(b, rel=0.15)
    assert fit.E == pytest.approx(E, abs=0.15 * max(E, 1))
    # the curve itself is pinned much tighter than its parameters, in range and a decade beyond
    xs = np.geomspace(x_range[0], x_range[1] * 10, 9)
    true = A * xs ** -b + E
    assert np.max(np.abs(fit.predict(xs) / true - 1)) < 0.01
    assert np.allclose(predict(fit, xs), fit.predict(xs))
    assert 0.0 < fit.b < 2.0 and 0.0 <= fit.E < y.min()


def test_fit_with_five_points_reports_wide_intervals():
    """Five depths weakly identify three parameters: the intervals must be wide, not falsely tight."""
    x, y = _synthetic(49.64, 0.07, 0.64, 1e18, 1e21, n=5, noise=0.003, seed=1)
    fit = fit_power_law(x, y, bootstrap=150, seed=0)
    lo, hi = fit.ci["E"]
    assert hi - lo > 0.3
    assert fit.ci["A"][1] / fit.ci["A"][0] > 1.5
    assert 10 <= fit.n_boot < 150  # resamples with < 3 distinct points are skipped
    assert "A:" in str(fit) and fit.as_row()["E_hi"] == hi


def test_fit_residual_bootstrap_and_errors():
    x, y = _synthetic(400.0, 0.3, 1.8, 1e8, 1e11, n=8, noise=0.002, seed=2)
    fit = fit_power_law(x, y, bootstrap=50, method="residuals")
    assert fit.n_boot == 50
    band_lo, band_hi = fit.predict_interval([1e9, 1e12])
    assert np.all(band_lo <= band_hi)
    with pytest.raises(ValueError, match="3 distinct"):
        fit_power_law([1e9, 1e9, 2e9], [3.0, 3.0, 2.9])
    with pytest.raises(ValueError, match="positive"):
        fit_power_law([1e9, 2e9, 3e9], [3.0, -1.0, 2.9])


# ------------------------------------------------------------------------------------------ run registry
def write_run(root, name, *, status="finished", rows=(), header=HEADER, updated_at=None, info_extra=None,
              raw_csv=None, write_json=True):
    folder = os.path.join(str(root), name)
    os.makedirs(folder, exist_ok=True)
    if write_json:
        info = {"run_name": name, "status": status,
                "options": {"train_model": "transformer", "depth": 8, "train_name": "scaling_mup", "ctx_len": 4096,
                            "base_hps": {"eta0": 4e-4}},
                "config": {"arch": "transformer", "n_layer": 8, "n_embd": 1024, "parameterization": "mup++"},
                "plan": {"n_params": 187_000_000, "n_params_non_embedding": 121_600_000, "train_tokens": 4000,
                         "global_batch_tokens": 1000, "max_steps": 4, "lr": 5.657e-4, "flops_per_token": 1e9,
                         "total_flops": 4e12},
                "litscale_version": "0.1.0", "started_at": "2025-08-01T00:00:00+00:00",
                "updated_at": updated_at or datetime.now(timezone.utc).isoformat()}
        info.update(info_extra or {})
        with open(os.path.join(folder, "run.json"), "w") as fh:
            json.dump(info, fh)
    with open(os.path.join(folder, "metrics.csv"), "w") as fh:
        fh.write(raw_csv if raw_csv is not None else header + "\n" + "".join(r + "\n" for r in rows))
    return folder


ROWS = ["1,1000,1e12,5.0,1e-4,100,0.4,10,1,,,",
        "2,2000,2e12,4.0,2e-4,110,0.4,10,2,4.1,4.1,4.5",
        "3,3000,3e12,3.5,1e-4,120,0.4,10,3,,,",
        "4,4000,4e12,3.2,0.0,130,0.4,10,4,3.3,3.3,3.6"]


def test_finished_run_summary(tmp_path):
    rec = R.load_run(write_run(tmp_path, "scaling_mup_transformer_d8_ctx4096", rows=ROWS))
    assert rec.status == "finished" and rec.problems == []
    assert (rec.arch, rec.parameterization, rec.depth, rec.ctx_len) == ("transformer", "mup++", 8, 4096)
    assert rec.n_params == 187_000_000 and rec.n_params_non_embedding == 121_600_000
    assert rec.tokens == 4000 and rec.flops == 4e12 and rec.step == 4
    assert rec.final_val_loss == 3.3 and rec.best_val_loss == 3.3 and rec.final_eval_step == 4
    assert rec.val_losses_by_multiple == {1: 3.3, 2: 3.6}
    assert rec.tokens_per_sec == 115.0
    assert rec.lr == 5.657e-4 and rec.base_lr == 4e-4
    tokens, losses = rec.curve("val_loss")
    assert tokens.tolist() == [2000, 4000] and losses.tolist() == [4.1, 3.3]


def test_crashed_and_running_runs(tmp_path):
    old = (datetime.now(timezone.utc) - timedelta(hours=5)).isoformat()
    crashed = R.load_run(write_run(tmp_path, "c", status="running", rows=ROWS[:3], updated_at=old))
    assert crashed.status == "crashed" and any("no update" in p for p in crashed.problems)
    running = R.load_run(write_run(tmp_path, "r", status="running", rows=ROWS[:3]))
    assert running.status == "running"
    assert R.load_run(os.path.join(tmp_path, "c"), stale_after=1e9).status == "running"
    # epoch-seconds heartbeat is understood too
    epoch = R.load_run(write_run(tmp_path, "e", status="running", rows=ROWS[:1], updated_at=time.time() - 10))
    assert epoch.status == "running"


def test_failed_run_keeps_error(tmp_path):
    rec = R.load_run(write_run(tmp_path, "f", status="failed", rows=ROWS[:2],
                               info_extra={"error": "Traceback ...\nRuntimeError: NaN loss at step 2"}))
    assert rec.status == "failed"
    assert any("NaN loss" in p for p in rec.problems)
    assert rec.final_val_loss == 4.1


def test_trainer_stop_words(tmp_path):
    pre = R.load_run(write_run(tmp_path, "p", status="preempted", rows=ROWS[:2]))
    assert pre.status == "crashed" and pre.declared_status == "preempted"
    assert any("resume" in p for p in pre.problems)
    stopped = R.load_run(write_run(tmp_path, "s", status="stopped", rows=ROWS[:2]))
    assert stopped.status == "failed"
    odd = R.load_run(write_run(tmp_path, "o", status="exploded", rows=ROWS[:2]))
    assert odd.status == "broken" and "exploded" in odd.problems[0]


def test_truncated_and_garbled_lines(tmp_path):
    raw = HEADER + "\n" + "\n".join(ROWS[:3]) + "\n" + "4,4000,4e12,3.2,0.0,13"  # crash mid-write
    rec = R.load_run(write_run(tmp_path, "t", status="running", raw_csv=raw,
                               updated_at="2020-01-01T00:00:00Z"))
    assert rec.status == "crashed"
    assert rec.step == 3 and rec.final_val_loss == 4.1
    assert any("truncated" in p for p in rec.problems)
    raw = HEADER + "\n" + ROWS[0] + "\n" + HEADER + "\nxx,yy\n" + "2,2000,2e12,nan?,1e-4,100,0.4,10,1,,,\n" + ROWS[3] + "\n"
    rec = R.load_run(write_run(tmp_path, "g", raw_csv=raw))
    assert rec.status == "finished" and rec.step == 4
    assert any("skipped 2 unreadable" in p for p in rec.problems)


def test_resumed_run_dedupes_steps(tmp_path):
    rows = [ROWS[0], ROWS[1], ROWS[2],
            "4,4000,4e12,9.9,0.0,130,0.4,10,4,9.9,9.9,9.9",     # first attempt, then rolled back
            "2,2000,2e12,3.9,2e-4,110,0.4,10,5,,,",             # resumed from the step-2 checkpoint
            "2,2000,2e12,,,,,,,4.0,4.0,4.4",                     # eval logged as its own row
            "3,3000,3e12,3.4,1e-4,120,0.4,10,6,,,",
            "4,4000,4e12,3.1,0.0,130,0.4,10,7,3.2,3.2,3.5"]
    rec = R.load_run(write_run(tmp_path, "resumed", rows=rows))
    steps = rec.column("step").tolist()
    assert steps == [1, 2, 3, 4]
    assert rec.column("train_loss").tolist() == [5.0, 3.9, 3.4, 3.1]
    assert rec.column("val_loss")[1] == 4.0  # merged eval row of step 2
    assert rec.final_val_loss == 3.2 and rec.best_val_loss == 3.2
    assert rec.val_losses_by_multiple == {1: 3.2, 2: 3.5}
    assert any("resumed" in p for p in rec.problems)


def test_val_loss_falls_back_on_1x_column(tmp_path):
    rows = ["1,1000,1e12,5.0,1e-4,100,0.4,10,1,,4.2,4.4"]
    rec = R.load_run(write_run(tmp_path, "fallback", rows=rows))
    assert rec.final_val_loss == 4.2


def test_broken_runs_are_listed_not_dropped(tmp_path):
    write_run(tmp_path, "ok", rows=ROWS)
    write_run(tmp_path, "scaling_transformer_d12_ctx4096", rows=ROWS, write_json=False)
    bad = os.path.join(tmp_path, "badjson")
    os.makedirs(bad)
    with open(os.path.join(bad, "run.json"), "w") as fh:
        fh.write('{"status": "finished", ')
    os.makedirs(os.path.join(tmp_path, "empty"))
    write_run(tmp_path, "nocsvrows", rows=[])
    (tmp_path / "notes.txt").write_text("not a run")
    runs = R.load_runs([os.path.join(tmp_path, "*"), os.path.join(tmp_path, "missing")])
    by = {r.run_name: r for r in runs}
    assert set(by) == {"ok", "scaling_transformer_d12_ctx4096", "badjson", "empty", "nocsvrows", "missing"}
    assert by["ok"].status == "finished"
    nojson = by["scaling_transformer_d12_ctx4096"]
    assert nojson.status == "broken" and "run.json missing" in nojson.problems
    assert (nojson.arch, nojson.depth, nojson.parameterization) == ("transformer", 12, "sp")  # from the name
    assert nojson.final_val_loss == 3.3  # metrics still read
    assert by["badjson"].status == "broken" and "unreadable" in by["badjson"].problems[0]
    assert by["empty"].status == "broken" and "not a run folder" in by["empty"].problems[0]
    assert by["missing"].status == "broken" and by["missing"].problems == ["no such run folder"]
    assert by["nocsvrows"].status == "broken"
    # --log_dir style discovery finds nested run folders and skips checkpoints
    nested = os.path.join(tmp_path, "group", "inner")
    write_run(os.path.dirname(nested), "inner", rows=ROWS)
    os.makedirs(os.path.join(nested, "checkpoints", "step-00000004"))
    found = R.load_runs([], log_dirs=[str(tmp_path)])
    assert "inner" in {r.run_name for r in found} and len(found) == 5  # empty and missing are not discovered


def test_fixture_runs_load():
    runs = R.load_runs(FIXTURE_RUNS)  # TRUTH.json (a plain file) is ignored
    statuses = [r.status for r in runs]
    assert statuses.count("crashed") == 1 and statuses.count("failed") == 1
    assert statuses.count("finished") == len(runs) - 2 and len(runs) >= 12
    resumed = next(r for r in runs if r.run_name == "scaling_mup_sambay_d12_ctx4096")
    assert any("resumed" in p for p in resumed.problems)
    assert np.all(np.diff(resumed.column("step")) > 0)
    crashed = next(r for r in runs if r.status == "crashed")
    assert any("truncated" in p for p in crashed.problems)


def test_fit_helpers_on_fixture_runs():
    runs = [r for r in R.load_runs(FIXTURE_RUNS) if r.train_name == "scaling_mup" and r.arch == "transformer"]
    fit = fit_loss_vs_compute(runs, bootstrap=50)  # d8..d20 at the base LR; d24 crashed and is left out
    assert fit.n == 4 and fit.r2 > 0.99
    with open(os.path.join(FIXTURES, "runs", "TRUTH.json")) as fh:
        truth = json.load(fh)["law_at_base_lr"]["transformer mup++"]
    xs = np.array([1e19, 1e20, 1e21])
    true = truth["A"] * xs ** -truth["b"] + truth["E"]
    assert np.max(np.abs(fit.predict(xs) / true - 1)) < 0.01
    budgets = [r for r in R.load_runs(FIXTURE_RUNS)
               if r.arch == "transformer" and r.depth == 8 and r.train_name in
               ("scaling_mup", "scaling_mup_tok0.25x", "scaling_mup_tok0.5x", "scaling_mup_tok2x")]
    data_fit = fit_loss_vs_data(budgets, bootstrap=0)
    assert data_fit.n == 4 and data_fit.r2 > 0.99


def test_fixtures_are_reproducible(tmp_path):
    out = tmp_path / "runs"
    subprocess.run([sys.executable, os.path.join(FIXTURES, "make_runs.py"), "--out", str(out)], check=True,
                   capture_output=True)
    committed = os.path.join(FIXTURES, "runs")
    assert sorted(os.listdir(out)) == sorted(os.listdir(committed))
    for name in os.listdir(out):
        if os.path.isdir(out / name):
            match, mismatch, errors = filecmp.cmpfiles(out / name, os.path.join(committed, name),
                                                       ["run.json", "metrics.csv"], shallow=False)
            assert not mismatch and not errors, f"{name}: regenerate with python tests/fixtures/make_runs.py"


def test_runs_cli(capsys):
    assert R.main(FIXTURE_RUNS) == 0
    table = capsys.readouterr().out
    assert "scaling_mup_transformer_d8_ctx4096" in table and "crashed" in table and "problems:" in table
    assert R.main(["--json", *FIXTURE_RUNS]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {d["status"] for d in data} == {"finished", "crashed", "failed"}
    assert R.main(["--csv", "--status", "failed", *FIXTURE_RUNS]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("path,run_name,status")
    assert R.main(["/nonexistent/*"]) == 2


# -------------------------------------------------------------------------------------------------- plots
PLOTS = {  # each runs as a subprocess, the way users call it
    "flops": ["plot_flops_scaling.py", "--bootstrap", "40", "--x_max", "1e22"],
    "data": ["plot_data_scaling.py", "--bootstrap", "40"],
    "lr": ["plot_lr_transfer.py"],
    "curves": ["plot_training_curves.py"],
    "extrap": ["plot_extrapolation.py", "--relative"],
}
EXPECTED_TABLES = {"flops": "fits", "data": "fits", "lr": "optima", "curves": "runs", "extrap": "values"}


@pytest.fixture(scope="module")
def plot_results(tmp_path_factory):
    """Run every plot script at once (subprocesses in parallel keep the suite fast)."""
    out = tmp_path_factory.mktemp("plots")
    procs = {}
    for name, (script, *extra) in PLOTS.items():
        cmd = [sys.executable, os.path.join(REPO, "plots", script), "--runs", *FIXTURE_RUNS,
               "--out", str(out / f"{name}.png"), *extra]
        procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    results = {}
    for name, p in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        results[name] = (p.returncode, stdout, stderr)
    return out, results


@pytest.mark.parametrize("name", list(PLOTS))
def test_plot_script_writes_image_and_table(plot_results, name):
    out, results = plot_results
    rc, stdout, stderr = results[name]
    assert rc == 0, stderr
    image = out / f"{name}.png"
    assert image.stat().st_size > 5000
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = out / f"{name}_{EXPECTED_TABLES[name]}.csv"
    md = out / f"{name}_{EXPECTED_TABLES[name]}.md"
    assert table.stat().st_size > 0 and md.read_text().startswith("| ")


def test_flops_fit_table_contents(plot_results):
    out, _ = plot_results
    with open(out / "flops_fits.csv") as fh:
        rows = list(csv.DictReader(fh))
    groups = {r["group"] for r in rows}
    assert groups == {"SambaY μP++", "SambaY SP", "Transformer++ μP++", "Transformer++ SP"}
    for r in rows:
        assert float(r["r2"]) > 0.99
        assert float(r["b_lo"]) <= float(r["b"]) <= float(r["b_hi"])
        assert float(r["loss_pred"]) < 1.9  # 1e22 FLOPs predicted below the d20 losses


def _script(name):
    """Import plots/NAME.py in-process (cheaper than a subprocess for the option variants)."""
    plots_dir = os.path.join(REPO, "plots")
    if plots_dir not in sys.path:
        sys.path.insert(0, plots_dir)
    spec = importlib.util.spec_from_file_location(f"_test_{name}", os.path.join(plots_dir, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_plot_variants_aliases_and_errors(tmp_path, capsys):
    flops = _script("plot_flops_scaling")
    # the ArchScale spelling: --log_dir / --output_file, and PDF output
    assert flops.main(["--log_dir", os.path.join(FIXTURES, "runs"), "--output_file", str(tmp_path / "alias"),
                       "--format", "pdf", "--bootstrap", "0"]) == 0
    assert (tmp_path / "alias.pdf").read_bytes()[:4] == b"%PDF"
    assert (tmp_path / "alias_fits.md").exists()
    # nothing finished: one-line error, exit status 2
    crashed = [p for p in FIXTURE_RUNS if p.endswith("scaling_mup_transformer_d24_ctx4096")]
    capsys.readouterr()
    assert flops.main(["--runs", *crashed, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("plot_flops_scaling: error: no finished run")
    # nothing matches
    extrap = _script("plot_extrapolation")
    assert extrap.main(["--runs", str(tmp_path / "no-such-*"), "--out", str(tmp_path / "y.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no run folders match" in err[0]
    # data scaling along training curves (one fit per run)
    data = _script("plot_data_scaling")
    assert data.main(["--runs", *FIXTURE_RUNS, "--mode", "curve", "--arch", "sambay", "--parameterization", "mup++",
                      "--bootstrap", "20", "--out", str(tmp_path / "curve.png")]) == 0
    with open(tmp_path / "curve_fits.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 and all(r["b"] for r in rows)
    # an LR sweep is needed for the transfer plot
    lr = _script("plot_lr_transfer")
    assert lr.main(["--runs", *FIXTURE_RUNS, "--train_name", "scaling_mup", "--out", str(tmp_path / "z.png")]) == 2
    assert "two or more learning rates" in capsys.readouterr().err


def test_contract_with_the_trainers_run_recorder(tmp_path):
    """What lit_gpt.training.metrics.RunRecorder writes (crash, resume, finish) reads back as one clean run."""
    metrics = pytest.importorskip("lit_gpt.training.metrics")
    run = {"run_name": "scaling_mup_transformer_d8_ctx4096",
           "options": {"train_model": "transformer", "depth": 8, "train_name": "scaling_mup", "ctx_len": 4096,
                       "base_hps": {"eta0": 4e-4}},
           "config": {"arch": "transformer", "n_layer": 8, "parameterization": "mup++"},
           "plan": {"lr": 5.657e-4, "max_steps": 4, "n_params": 187_000_000, "flops_per_token": 1e9}}

    def row(step, loss, val=None):
        out = {"step": step, "tokens": 100 * step, "flops": 1e11 * step, "train_loss": loss, "lr": 1e-4,
               "tokens_per_sec": 10.0, "mfu": None, "max_mem_gb": None, "elapsed_s": float(step)}
        if val is not None:
            out.update(val_loss=val, val_loss_1x=val, val_loss_2x=val + 0.2)
        return out

    first = metrics.RunRecorder(tmp_path, run, 2)
    for step, loss in ((1, 5.0), (2, 4.0), (3, 9.0)):
        first.log(row(step, loss, val=4.1 if step == 2 else None))
        first.update(step=step)
    first._file.close()  # killed: status stays "running"
    second = metrics.RunRecorder(tmp_path, run, 2)  # resumed from the step-2 checkpoint
    for step, loss in ((3, 3.5), (4, 3.2)):
        second.log(row(step, loss, val=3.3 if step == 4 else None))
    second.close("finished")
    rec = R.load_run(str(tmp_path))
    assert rec.status == "finished", rec.problems
    assert rec.column("step").tolist() == [1, 2, 3, 4]
    assert rec.column("train_loss").tolist() == [5.0, 4.0, 3.5, 3.2]
    assert rec.final_val_loss == 3.3 and rec.val_losses_by_multiple == {1: 3.3, 2: 3.5}
    assert (rec.arch, rec.parameterization, rec.depth, rec.base_lr) == ("transformer", "mup++", 8, 4e-4)
