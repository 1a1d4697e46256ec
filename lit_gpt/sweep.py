"""Sweeps: many short trainings along one axis, each through the normal ``pretrain.py`` code path.

    python -m lit_gpt.sweep lr --train_model transformer --depths 2 4 8 --lrs 1e-3 2e-3 4e-3 8e-3 1.6e-2 \\
        --train_name scaling_mup --ar 16 --max_steps 40 --out_dir out/sweep_lr -- --base_hps.d0 4
    python -m lit_gpt.sweep depth --train_model transformer sambay --depths 4 8 12 16 --train_name scaling_mup
    python -m lit_gpt.sweep tokens --depths 4 8 --max_tokens 1e9 2e9 4e9     # or --chinchilla 0.5 1 2 (x t0*N/n0)
    python -m lit_gpt.sweep batch --depths 4 8 --total_bsz 524288 1048576 2097152 --max_tokens 2e9
    python -m lit_gpt.sweep lr ... --dry_run               # print the commands, run nothing
    python -m lit_gpt.sweep lr ... --script sweep.sh       # write them to a script for a cluster
    python -m lit_gpt.sweep lr ... --collect_only          # tables and figures from finished run folders

Every run is ``[launcher] pretrain.py <flags> --out_dir ROOT/<name>``; flags this module does not know
(e.g. ``--base_hps.d0 4``, ``--eval_iters 4``) are passed to every run unchanged. A sweep can be started
again at any time: runs whose ``run.json`` says finished are skipped; interrupted ones restart from scratch
(their folder is moved to ``ROOT/.trash/``), or continue from their last checkpoint with ``--resume auto``.

Axes live in a registry (``AXES``); an axis says which runs it needs (``points``) and what to make of their
results (``analyze``). To add one, write those two functions and call ``register_axis`` (see ``lr`` and
``depth`` below for the pattern).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PRETRAIN = os.path.join(REPO_ROOT, "pretrain.py")
FORWARDED = ("ar", "ctx_len", "micro_bsz", "total_bsz", "max_steps", "max_tokens")  # common flags given to every run


@dataclass
class Point:
    """One run of a sweep: its folder name under the sweep root, its pretrain flags, and its axis values."""

    name: str
    flags: list[str]
    labels: dict[str, Any] = field(default_factory=dict)


@dataclass
class Axis:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    points: Callable[[argparse.Namespace], list[Point]]
    analyze: Callable[[argparse.Namespace, list[Point]], int]
    owns: tuple[str, ...] = ()  # common flags the axis defines itself (e.g. tokens: --max_tokens as a list)


AXES: dict[str, Axis] = {}


def register_axis(axis: Axis) -> Axis:
    if axis.name in AXES:
        raise ValueError(f"sweep axis {axis.name!r} is already registered")
    AXES[axis.name] = axis
    return axis


# ------------------------------------------------------------------------------------------------ helpers
def default_ctx_len() -> int:
    from lit_gpt.training.options import RunOptions

    return RunOptions.ctx_len


def ctx_of(args: argparse.Namespace) -> int:
    return args.ctx_len if args.ctx_len is not None else default_ctx_len()


def common_flags(args: argparse.Namespace) -> list[str]:
    flags: list[str] = []
    for name in FORWARDED:
        value = getattr(args, name, None)
        if value is not None:
            flags += [f"--{name}", f"{value:g}" if isinstance(value, float) else str(value)]
    return flags


def fmt_lr(lr: float) -> str:
    return f"{lr:g}"


def run_dir(args: argparse.Namespace, point: Point) -> str:
    return os.path.join(args.out_dir, point.name)


def load_point(args: argparse.Namespace, point: Point):
    from lit_gpt.runs import load_run

    return load_run(run_dir(args, point), stale_after=getattr(args, "stale_after", 1800.0))


def build_command(args: argparse.Namespace, point: Point, resume: bool = False) -> list[str]:
    launcher = shlex.split(args.launcher) if args.launcher else [args.python]
    cmd = launcher + [args.pretrain] + point.flags + common_flags(args) + list(args.extra)
    cmd += ["--out_dir", run_dir(args, point)]
    if resume:
        cmd += ["--resume", "auto"]
    return cmd


def plan_actions(args: argparse.Namespace, points: list[Point]) -> list[tuple[Point, str]]:
    """(point, action) with action in: skip (finished), busy (running elsewhere), resume, restart, new."""
    actions = []
    for p in points:
        path = run_dir(args, p)
        if not os.path.exists(path):
            actions.append((p, "new"))
            continue
        rec = load_point(args, p)
        if rec.status == "finished" and rec.final_val_loss is not None:
            actions.append((p, "skip"))
        elif rec.status == "running":
            actions.append((p, "busy"))
        elif args.resume == "auto" and rec.status != "broken":
            actions.append((p, "resume"))
        else:
            actions.append((p, "restart"))
    return actions


def move_aside(args: argparse.Namespace, point: Point) -> str:
    trash = os.path.join(args.out_dir, ".trash")
    os.makedirs(trash, exist_ok=True)
    target = os.path.join(trash, f"{point.name}.{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.move(run_dir(args, point), target)
    return target


def collect_command(args: argparse.Namespace) -> list[str]:
    argv = [a for a in args.argv if a not in ("--dry_run", "--print_only", "--collect_only")]
    if "--script" in argv:
        i = argv.index("--script")
        del argv[i:i + 2]
    axis_at = argv.index(args.axis)  # flags after "--" belong to pretrain.py: put ours before them
    return [args.python, "-m", "lit_gpt.sweep"] + argv[:axis_at + 1] + ["--collect_only"] + argv[axis_at + 1:]


def write_script(args: argparse.Namespace, todo: list[tuple[Point, str]]) -> None:
    lines = ["#!/usr/bin/env bash", f"# {len(todo)} runs of `python -m lit_gpt.sweep {args.axis}`; "
             "rerun the sweep command to skip finished runs", f"cd {shlex.quote(REPO_ROOT)}",
             f"mkdir -p {shlex.quote(os.path.join(args.out_dir, 'logs'))}"]
    for p, action in todo:
        log = os.path.join(args.out_dir, "logs", f"{p.name}.log")
        cmd = shlex.join(build_command(args, p, resume=action == "resume"))
        lines.append(f"{cmd} > {shlex.quote(log)} 2>&1 || echo 'run failed: {p.name} (see {log})'")
    lines.append(shlex.join(collect_command(args)))
    with open(args.script, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(args.script, 0o755)
    print(f"wrote {args.script} ({len(todo)} runs)")


def execute(args: argparse.Namespace, todo: list[tuple[Point, str]]) -> int:
    """Run the points (``--jobs`` at a time); returns the number of failed runs."""
    logs = os.path.join(args.out_dir, "logs")
    os.makedirs(logs, exist_ok=True)
    queue = list(todo)
    running: list[tuple[subprocess.Popen, Point, float, Any]] = []
    try:
        failed = _execute_loop(args, queue, running, logs)
    except KeyboardInterrupt:  # stop the runs cleanly: pretrain checkpoints on SIGTERM, so --resume auto continues
        for proc, p, _, log in running:
            if proc.poll() is None:
                proc.terminate()
        for proc, p, _, log in running:
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        print(f"[sweep] interrupted; {len(running)} run(s) stopped; rerun the command (with --resume auto to continue "
              "them from their checkpoints)", file=sys.stderr)
        raise
    return failed


def _execute_loop(args: argparse.Namespace, queue: list, running: list, logs: str) -> int:
    failed = 0
    slot = 0
    while queue or running:
        while queue and len(running) < args.jobs:
            p, action = queue.pop(0)
            if action == "restart":
                print(f"[sweep] {p.name}: unfinished run moved to {move_aside(args, p)}; starting again", flush=True)
            env = dict(os.environ)
            if args.gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(args.gpus[slot % len(args.gpus)])
            slot += 1
            cmd = build_command(args, p, resume=action == "resume")
            log = open(os.path.join(logs, f"{p.name}.log"), "a")
            log.write(f"$ {shlex.join(cmd)}\n")
            log.flush()
            print(f"[sweep] start {p.name} ({action})", flush=True)
            running.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT),
                            p, time.time(), log))
        time.sleep(0.5)
        for item in list(running):
            proc, p, t0, log = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            rec = load_point(args, p)
            ok = proc.returncode == 0 and rec.status == "finished"
            failed += not ok
            loss = f"val loss {rec.final_val_loss:.4f}" if rec.final_val_loss is not None else "no val loss"
            print(f"[sweep] {'done' if ok else 'FAILED'} {p.name} in {time.time() - t0:.0f} s: {loss}"
                  + ("" if ok else f" (exit {proc.returncode}; log {logs}/{p.name}.log)"), flush=True)
            if ok and args.drop_checkpoints:
                shutil.rmtree(os.path.join(run_dir(args, p), "checkpoints"), ignore_errors=True)
    return failed


def write_csv(path: str, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    cols = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def fmt_loss(v: Optional[float]) -> str:
    if v is None:
        return "—"
    return f"{v:.4f}" if math.isfinite(v) else "div"


def run_plot_script(script: str, argv: list[str]) -> bool:
    """Call ``plots/<script>.py``'s main (the plot helpers own the figures); False when unavailable."""
    plots = os.path.join(REPO_ROOT, "plots")
    if not os.path.exists(os.path.join(plots, f"{script}.py")):
        print(f"[sweep] plots/{script}.py not found: no figure", file=sys.stderr)
        return False
    if plots not in sys.path:
        sys.path.insert(0, plots)
    import importlib

    module = importlib.import_module(script)
    return module.main(argv) == 0


def point_rows(args: argparse.Namespace, points: list[Point]) -> list[dict[str, Any]]:
    rows = []
    for p in points:
        rec = load_point(args, p)
        cfg = rec.info.get("config", {}) if rec.info else {}
        row = dict(p.labels)
        row.update(parameterization=rec.parameterization, width=cfg.get("n_embd"), n_params=rec.n_params,
                   n_params_non_embedding=rec.n_params_non_embedding, peak_lr=rec.lr, tokens=rec.tokens,
                   flops=rec.flops, final_val_loss=rec.final_val_loss, status=rec.status,
                   path=run_dir(args, p))
        rows.append(row)
    return rows


def publish(root: str, stem: str, rows: list[dict[str, Any]], md: list[str], plot_script: str, png: str,
            plot: bool = True) -> None:
    """Write ROOT/STEM.md beside STEM.csv, draw the finished runs with a plots/ script, say what was written."""
    with open(os.path.join(root, f"{stem}.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    dirs = [r["path"] for r in rows if r["status"] == "finished"]
    drawn = bool(dirs) and plot
    if drawn:
        run_plot_script(plot_script, ["--runs", *dirs, "--out", os.path.join(root, png)])
    print(f"wrote {root}/{stem}.csv, {root}/{stem}.md" + (f", {root}/{png}" if drawn else ""))


# ------------------------------------------------------------------------------------------------ the grid
def grid_points(args: argparse.Namespace, variants: list[tuple[str, list[str], dict[str, Any]]]) -> list[Point]:
    """One run per (train_name, arch, depth, variant); a variant is (name tag, extra flags, labels).

    ``--lr`` (axes other than lr) pins the base learning rate of every run.
    """
    T = ctx_of(args)
    lr = getattr(args, "lr", None)
    points = []
    for train_name in args.train_name:
        for arch in args.train_model:
            for depth in args.depths:
                for tag, extra, label in variants:
                    flags = ["--train_model", arch, "--depth", str(depth), "--train_name", train_name] + extra
                    if lr is not None:
                        flags += ["--base_hps.eta0", fmt_lr(lr)]
                    name = f"{train_name}_{tag}_{arch}_d{depth}_ctx{T}" if tag else f"{train_name}_{arch}_d{depth}_ctx{T}"
                    points.append(Point(name, flags, dict(train_name=train_name, arch=arch, depth=depth, **label)))
    return points


# ------------------------------------------------------------------------------------------------ axis: lr
def lr_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--lrs", type=float, nargs="+", required=True, help="base learning rates eta0 to try")


def lr_points(args: argparse.Namespace) -> list[Point]:
    return grid_points(args, [(f"lr{fmt_lr(lr)}", ["--base_hps.eta0", fmt_lr(lr)], dict(eta0=lr))
                              for lr in sorted(args.lrs)])


def lr_analyze(args: argparse.Namespace, points: list[Point]) -> int:
    rows = point_rows(args, points)
    root = args.out_dir
    write_csv(os.path.join(root, "lr_sweep.csv"), rows)
    lrs = sorted(set(args.lrs))

    def optimum_moves(arch: str, train_name: str, param: str, best_idx: dict[int, int]) -> Optional[str]:
        if len(best_idx) < 2:
            return None
        spread = max(best_idx.values()) - min(best_idx.values())
        edge = [d for d, i in best_idx.items() if i in (0, len(lrs) - 1)]
        return (f"{arch} {train_name} ({param}): optimum eta0 moves by {spread} grid step(s) across depths "
                f"{min(best_idx)}–{max(best_idx)}" + (f"; at the grid edge for d{edge}" if edge else ""))

    md, verdicts = grid_table(args, rows, "eta0", lrs, "best eta0", lambda lr: f"{lr:g}", "",
                              summarize=optimum_moves)
    md = [f"# LR sweep ({', '.join(args.train_model)}; depths {', '.join(map(str, args.depths))})", "",
          "Final validation loss per base learning rate eta0; **bold** = each depth's optimum; "
          "div = non-finite loss; — = no finished run.", ""] + md
    for v in verdicts:
        print(v)
    publish(root, "lr_sweep", rows, md, "plot_lr_transfer", "lr_transfer.png")
    return 0


register_axis(Axis("lr", "base learning rate eta0 x depth (μP transfer check)", lr_arguments, lr_points, lr_analyze))


# ------------------------------------------------------------------------------------------------ axis: depth
def depth_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--lr", type=float, default=None, help="base learning rate eta0 (default: BaseHyperparameters)")


def depth_points(args: argparse.Namespace) -> list[Point]:
    return grid_points(args, [("", [], {})])


def depth_analyze(args: argparse.Namespace, points: list[Point]) -> int:
    rows = point_rows(args, points)
    root = args.out_dir
    write_csv(os.path.join(root, "depth_sweep.csv"), rows)
    md = ["# Depth sweep", "", "| train_name | arch | depth | width | params (non-emb) | tokens | FLOPs | val loss |",
          "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['train_name']} | {r['arch']} | {r['depth']} | {r['width'] or ''} | "
                  f"{(r['n_params_non_embedding'] or 0) / 1e6:.2f}M | {r['tokens'] or 0:.3g} | "
                  f"{r['flops'] or 0:.3g} | {fmt_loss(r['final_val_loss'])} |")
    enough = len({(r["arch"], r["depth"]) for r in rows if r["status"] == "finished"}) >= 3  # a curve to fit
    publish(root, "depth_sweep", rows, md, "plot_flops_scaling", "depth_scaling.png", plot=enough)
    return 0


register_axis(Axis("depth", "depth x architecture at fixed base HPs (scaling study)", depth_arguments, depth_points,
                   depth_analyze))


# ------------------------------------------------------------------------------------------------ axes: tokens, batch
def fmt_count(value: float) -> str:
    """Token counts in folder names: 40960 -> 40960, 2e9 -> 2e9 (no '+', no trailing zeros)."""
    if value == int(value) and abs(value) < 1e7:
        return str(int(value))
    return f"{value:.4g}".replace("e+0", "e").replace("e+", "e")


def pop_extra(args: argparse.Namespace, flag: str) -> Optional[str]:
    """Remove ``flag VALUE`` / ``flag=VALUE`` from the pass-through flags and return the (last) value."""
    value, kept, i = None, [], 0
    while i < len(args.extra):
        a = args.extra[i]
        if a == flag and i + 1 < len(args.extra):
            value, i = args.extra[i + 1], i + 2
            continue
        if a.startswith(flag + "="):
            value = a.split("=", 1)[1]
        else:
            kept.append(a)
        i += 1
    args.extra = kept
    return value


def tokens_arguments(ap: argparse.ArgumentParser) -> None:
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--max_tokens", dest="token_budgets", type=float, nargs="+",
                   help="absolute training-token budgets, the same for every model")
    g.add_argument("--chinchilla", dest="chinchilla", type=float, nargs="+",
                   help="multiples of each model's own budget t0*N/n0 (passed as --base_hps.t0 m*t0)")
    ap.add_argument("--lr", type=float, default=None, help="base learning rate eta0 (default: BaseHyperparameters)")


def tokens_points(args: argparse.Namespace) -> list[Point]:
    if args.chinchilla:
        if not hasattr(args, "base_t0"):  # points() may be called twice; the flag is consumed once
            given = pop_extra(args, "--base_hps.t0")
            if given is None:
                from lit_gpt.scaling import BaseHyperparameters

                args.base_t0 = float(BaseHyperparameters.t0)
            else:
                args.base_t0 = float(given)
        budgets = [("chin" + f"{m:g}x", ["--base_hps.t0", f"{m * args.base_t0:g}"], dict(chinchilla=m))
                   for m in sorted(args.chinchilla)]
    else:
        budgets = [("tok" + fmt_count(t), ["--max_tokens", f"{t:g}"], dict(max_tokens=t))
                   for t in sorted(args.token_budgets)]
    return grid_points(args, budgets)


def grid_table(args: argparse.Namespace, rows: list[dict[str, Any]], key: str, values: list, heading: str,
               fmt: Callable[[Any], str], lower_is_better: str,
               summarize: Optional[Callable[[str, str, str, dict[int, int]], Optional[str]]] = None
               ) -> tuple[list[str], list[str]]:
    """Markdown: one table per (train_name, arch); a row per depth, a column per axis value; best in bold.
    ``summarize(arch, train_name, parameterization, {depth: best column})`` may add a verdict under a table."""
    md, verdicts = [], []
    for train_name in args.train_name:
        for arch in args.train_model:
            sub = [r for r in rows if r["train_name"] == train_name and r["arch"] == arch]
            if not sub:
                continue
            param = next((r["parameterization"] for r in sub if r["parameterization"]), "?")
            md += [f"## {arch}, {train_name} ({param})", "",
                   f"| depth | width | " + " | ".join(fmt(v) for v in values) + f" | {heading} |",
                   "|---|---|" + "---|" * len(values) + "---|"]
            best_idx = {}
            for depth in args.depths:
                cells = {r[key]: r for r in sub if r["depth"] == depth}
                vals = [cells[v]["final_val_loss"] if v in cells and cells[v]["status"] == "finished" else None
                        for v in values]
                finite = [(x, i) for i, x in enumerate(vals) if x is not None and math.isfinite(x)]
                best = min(finite)[1] if finite else None
                if best is not None:
                    best_idx[depth] = best
                width = next((r["width"] for r in cells.values() if r["width"]), "")
                text = [(f"**{fmt_loss(x)}**" if i == best else fmt_loss(x)) for i, x in enumerate(vals)]
                md.append(f"| {depth} | {width} | " + " | ".join(text) + " | "
                          + (fmt(values[best]) if best is not None else "—") + " |")
                if best is not None and lower_is_better and len(finite) >= 2:
                    ordered = [x for x in vals if x is not None and math.isfinite(x)]
                    if any(b > a for a, b in zip(ordered, ordered[1:])):
                        verdicts.append(f"{arch} {train_name} d{depth}: loss does not fall monotonically with "
                                        f"{lower_is_better}")
            summary = summarize(arch, train_name, param, best_idx) if summarize else None
            if summary:
                verdicts.append(summary)
                md += ["", summary]
            md.append("")
    return md, verdicts


def tokens_analyze(args: argparse.Namespace, points: list[Point]) -> int:
    rows = point_rows(args, points)
    root = args.out_dir
    key = "chinchilla" if args.chinchilla else "max_tokens"
    values = sorted(args.chinchilla or args.token_budgets)
    write_csv(os.path.join(root, "tokens_sweep.csv"), rows)
    fmt = (lambda v: f"{v:g}× Chinchilla") if args.chinchilla else (lambda v: f"{v:.3g} tok")
    md, verdicts = grid_table(args, rows, key, values, "best", fmt, "more tokens")
    md = [f"# Token-budget sweep ({', '.join(args.train_model)}; depths {', '.join(map(str, args.depths))})", "",
          "Final validation loss per training-token budget; **bold** = lowest; div = non-finite; "
          "— = no finished run.", ""] + md + verdicts
    for v in verdicts:
        print(v)
    publish(root, "tokens_sweep", rows, md, "plot_data_scaling", "data_scaling.png")
    return 0


register_axis(Axis("tokens", "training-token budget x depth (data scaling)", tokens_arguments, tokens_points,
                   tokens_analyze, owns=("max_tokens",)))


def batch_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--total_bsz", dest="batch_sizes", type=int, nargs="+", required=True,
                    help="global batch sizes in tokens (rounded down to a multiple of devices*micro_bsz*ctx_len; "
                         "the peak LR follows sqrt(b/b0))")
    ap.add_argument("--lr", type=float, default=None, help="base learning rate eta0 (default: BaseHyperparameters)")


def batch_points(args: argparse.Namespace) -> list[Point]:
    return grid_points(args, [(f"bsz{b}", ["--total_bsz", str(b)], dict(total_bsz=b)) for b in sorted(args.batch_sizes)])


def batch_analyze(args: argparse.Namespace, points: list[Point]) -> int:
    rows = point_rows(args, points)
    root = args.out_dir
    write_csv(os.path.join(root, "batch_sweep.csv"), rows)
    md, _ = grid_table(args, rows, "total_bsz", sorted(args.batch_sizes), "best batch", lambda v: f"{v}", "")
    md = [f"# Batch-size sweep ({', '.join(args.train_model)}; depths {', '.join(map(str, args.depths))})", "",
          "Final validation loss per global batch (tokens) at the same token budget; **bold** = lowest; "
          "— = no finished run.", ""] + md
    publish(root, "batch_sweep", rows, md, "plot_training_curves", "batch_curves.png")
    return 0


register_axis(Axis("batch", "global batch size x depth at a fixed token budget", batch_arguments, batch_points,
                   batch_analyze, owns=("total_bsz",)))


# ------------------------------------------------------------------------------------------------ CLI
def add_common(ap: argparse.ArgumentParser, axis: str) -> None:
    ap.add_argument("--train_model", nargs="+", default=["transformer"], help="architecture(s)")
    ap.add_argument("--train_name", nargs="+", default=["scaling_mup"],
                    help="train_name(s); each is one parameterization (SPEC §3), e.g. scaling scaling_mup")
    ap.add_argument("--depths", type=int, nargs="+", required=True)
    ap.add_argument("--ar", type=int, default=None, help="aspect ratio (width = ar x depth)")
    ap.add_argument("--ctx_len", type=int, default=None)
    ap.add_argument("--micro_bsz", type=int, default=None)
    owns = AXES[axis].owns
    if "total_bsz" not in owns:
        ap.add_argument("--total_bsz", type=int, default=None)
    ap.add_argument("--max_steps", type=int, default=None)
    if "max_tokens" not in owns:
        ap.add_argument("--max_tokens", type=float, default=None)
    ap.add_argument("--out_dir", default=None, help=f"sweep root (default out/sweep_{axis})")
    ap.add_argument("--launcher", default=None,
                    help='prefix instead of the Python interpreter, e.g. "torchrun --nproc_per_node=8"')
    ap.add_argument("--python", default=sys.executable, help="interpreter for pretrain.py (without --launcher)")
    ap.add_argument("--pretrain", default=DEFAULT_PRETRAIN, help="path of pretrain.py")
    ap.add_argument("--resume", choices=("none", "auto"), default="none",
                    help="interrupted runs: restart from scratch (none) or continue from their last checkpoint")
    ap.add_argument("--jobs", type=int, default=1, help="runs at the same time")
    ap.add_argument("--gpus", nargs="+", default=None, help="CUDA_VISIBLE_DEVICES of successive jobs, round robin")
    ap.add_argument("--dry_run", "--print_only", dest="print_only", action="store_true",
                    help="print the commands (and what would be skipped) and exit")
    ap.add_argument("--script", default=None, help="write the commands to this bash script and exit")
    ap.add_argument("--collect_only", action="store_true", help="only build the tables and figures")
    ap.add_argument("--drop_checkpoints", action="store_true", help="delete a run's checkpoints once it finished")
    ap.add_argument("--stale_after", type=float, default=1800.0,
                    help="seconds without a heartbeat after which a 'running' run counts as interrupted "
                         "(younger ones are left alone: they may be running elsewhere)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m lit_gpt.sweep", description=__doc__.split("\n\n")[0],
                                 epilog="Unknown flags (e.g. --base_hps.d0 4) are passed to every pretrain.py run.")
    sub = ap.add_subparsers(dest="axis", required=True, metavar="AXIS")
    for axis in AXES.values():
        p = sub.add_parser(axis.name, help=axis.help)
        add_common(p, axis.name)
        axis.add_arguments(p)
    return ap


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    original = list(argv)
    if "--" in argv:  # everything after "--" goes to pretrain.py verbatim
        i = argv.index("--")
        argv, tail = argv[:i], argv[i + 1:]
    else:
        tail = []
    args, unknown = build_parser().parse_known_args(argv)
    args.extra = unknown + tail
    args.argv = original
    if args.out_dir is None:
        args.out_dir = os.path.join("out", f"sweep_{args.axis}")
    args.out_dir = os.path.abspath(args.out_dir)
    args.pretrain = os.path.abspath(args.pretrain)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    axis = AXES[args.axis]
    points = axis.points(args)
    names = [p.name for p in points]
    if len(set(names)) != len(names):
        print("error: two runs of this sweep would share a folder; check for repeated values", file=sys.stderr)
        return 2
    if args.collect_only:
        return axis.analyze(args, points)
    actions = plan_actions(args, points)
    todo = [(p, a) for p, a in actions if a not in ("skip", "busy")]
    for p, a in actions:
        if a in ("skip", "busy"):
            print(f"[sweep] {p.name}: {'finished, skipped' if a == 'skip' else 'running elsewhere, skipped'}")
    if args.print_only:
        for p, a in todo:
            print(("# restart (folder moved to .trash first)\n" if a == "restart" else "")
                  + shlex.join(build_command(args, p, resume=a == "resume")))
        print(f"# {len(todo)} to run, {len(points) - len(todo)} skipped; then: {shlex.join(collect_command(args))}")
        return 0
    if args.script:
        write_script(args, todo)
        return 0
    os.makedirs(args.out_dir, exist_ok=True)
    t0 = time.time()
    failed = execute(args, todo)
    print(f"[sweep] {len(todo) - failed}/{len(todo)} runs finished in {time.time() - t0:.0f} s "
          f"({len(points) - len(todo)} skipped)")
    axis.analyze(args, points)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
