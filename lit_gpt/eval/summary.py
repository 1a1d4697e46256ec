"""Collect every eval result under run folders into one table and one bar chart.

    python -m lit_gpt.eval.summary OUT_A OUT_B [--out summary.png] [--csv summary.csv] [--metrics acc,ppl]

Reads, under each ``RUN/eval/`` (recursively; a folder without ``eval/`` is searched itself):

* lm-eval results (``results_*.json``, written by eval.py): every numeric ``metric,filter`` of every task
  (stderr entries dropped); when a task was evaluated several times the newest file wins;
* ``phonebook.json``: overall accuracy and accuracy per length bucket;
* ``ppl.json`` / ``proofpile.json`` (``"kind": "ppl"``): perplexity per evaluation length.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from lit_gpt.eval.common import agg_pyplot, save_figure

__all__ = ["Row", "collect", "collect_run", "format_table", "plot_summary", "main"]


@dataclass
class Row:
    run: str
    task: str
    metric: str
    value: float
    step: Optional[int] = None
    source: str = ""
    mtime: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.task}/{self.metric}"


def _lm_eval_rows(path: Path, run: str, data: dict) -> list[Row]:
    rows = []
    step = None
    for task, metrics in (data.get("results") or {}).items():
        if not isinstance(metrics, dict):
            continue
        for name, value in metrics.items():
            if "stderr" in name or name in ("alias", "sample_len", "sample_count") or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            metric = name[:-len(",none")] if name.endswith(",none") else name
            rows.append(Row(run, task, metric, float(value), step, str(path), path.stat().st_mtime))
    return rows


def _phonebook_rows(path: Path, run: str, data: dict) -> list[Row]:
    t = path.stat().st_mtime
    step = data.get("step")
    rows = [Row(run, "phonebook", "acc", float(data["accuracy"]), step, str(path), t)]
    for b in data.get("buckets", []):
        if b.get("accuracy") is not None:
            rows.append(Row(run, "phonebook", f"acc@{b['lo']}-{b['hi']}", float(b["accuracy"]), step, str(path), t))
    return rows


def _ppl_rows(path: Path, run: str, data: dict) -> list[Row]:
    t = path.stat().st_mtime
    rows = []
    for r in data.get("lengths", []):
        if r.get("ppl") is not None:
            rows.append(Row(run, path.stem, f"ppl@{r['seq_length']}", float(r["ppl"]), data.get("step"), str(path), t))
    return rows


def collect_run(run_dir: str | Path) -> list[Row]:
    run_dir = Path(run_dir)
    root = run_dir / "eval" if (run_dir / "eval").is_dir() else run_dir
    name = run_dir.name or str(run_dir)
    rows: list[Row] = []
    for path in sorted(root.rglob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(data, dict):
            continue
        if path.name.startswith("results") and "results" in data:
            rows += _lm_eval_rows(path, name, data)
        elif data.get("kind") == "phonebook":
            rows += _phonebook_rows(path, name, data)
        elif data.get("kind") == "ppl":
            rows += _ppl_rows(path, name, data)
    newest: dict[str, Row] = {}
    for r in rows:  # one value per metric: the newest file wins
        if r.key not in newest or r.mtime >= newest[r.key].mtime:
            newest[r.key] = r
    return sorted(newest.values(), key=_natural)


def _natural(r: Row) -> tuple:
    """ppl@128 after ppl@64: numbers compare as numbers."""
    import re

    return tuple((0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", r.key) if t)


def collect(run_dirs: Sequence[str | Path]) -> list[Row]:
    names: dict[str, int] = {}
    rows: list[Row] = []
    for d in run_dirs:
        got = collect_run(d)
        name = Path(d).name
        if name in names:  # two runs with one folder name: keep them apart
            names[name] += 1
            for r in got:
                r.run = f"{name}#{names[name]}"
        else:
            names[name] = 1
        rows += got
    return rows


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "nan"
    return f"{v:.4f}" if abs(v) < 1000 else f"{v:.4g}"


def format_table(rows: Sequence[Row]) -> str:
    runs = list(dict.fromkeys(r.run for r in rows))
    keys = list(dict.fromkeys(r.key for r in rows))
    table = {(r.run, r.key): r.value for r in rows}
    width = max([len("metric")] + [len(k) for k in keys])
    cols = [max(len(run), 10) for run in runs]
    lines = ["metric".ljust(width) + "  " + "  ".join(run.rjust(c) for run, c in zip(runs, cols))]
    lines.append("-" * len(lines[0]))
    for k in keys:
        cells = [(_fmt(table[(run, k)]) if (run, k) in table else "-").rjust(c) for run, c in zip(runs, cols)]
        lines.append(k.ljust(width) + "  " + "  ".join(cells))
    return "\n".join(lines)


def plot_summary(rows: Sequence[Row], path: str | Path, max_metrics: int = 24) -> Path:
    plt = agg_pyplot()
    runs = list(dict.fromkeys(r.run for r in rows))
    keys = list(dict.fromkeys(r.key for r in rows))[:max_metrics]
    table = {(r.run, r.key): r.value for r in rows}
    ncol = min(4, max(1, len(keys)))
    nrow = math.ceil(len(keys) / ncol) if keys else 1
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.2 * ncol, 2.6 * nrow), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, k in zip(axes.flat, keys):
        vals = [table.get((run, k), float("nan")) for run in runs]
        ax.bar(range(len(runs)), vals, color=[colors[i % len(colors)] for i in range(len(runs))])
        ax.set_title(k, fontsize=8)
        ax.set_xticks(range(len(runs)))
        ax.set_xticklabels(runs, rotation=30, ha="right", fontsize=6)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    return save_figure(fig, path)


def main(argv: Optional[list[str]] = None) -> list[Row]:
    p = argparse.ArgumentParser(prog="python -m lit_gpt.eval.summary", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders (their eval/ subfolders are searched)")
    p.add_argument("--out", default="eval_summary.png", help="bar chart PNG")
    p.add_argument("--csv", default=None, help="also write the rows as CSV")
    p.add_argument("--metrics", default=None, help="comma-separated substrings: keep only matching task/metric")
    args = p.parse_args(argv)
    missing = [r for r in args.runs if not Path(r).is_dir()]
    if missing:
        print(f"error: not a folder: {', '.join(missing)}", file=sys.stderr)
        raise SystemExit(2)
    rows = collect(args.runs)
    if args.metrics:
        wanted = [m.strip() for m in args.metrics.split(",") if m.strip()]
        rows = [r for r in rows if any(w in r.key for w in wanted)]
    if not rows:
        print("error: no eval results found (looked for results_*.json, phonebook.json, ppl.json under RUN/eval/)",
              file=sys.stderr)
        raise SystemExit(1)
    print(format_table(rows))
    png = plot_summary(rows, args.out)
    print(f"\nwrote {png}")
    if args.csv:
        with open(args.csv, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["run", "task", "metric", "value", "step", "source"])
            for r in rows:
                w.writerow([r.run, r.task, r.metric, r.value, r.step if r.step is not None else "", r.source])
        print(f"wrote {args.csv}")
    return rows


if __name__ == "__main__":
    main()
