"""Run registry: read run folders (``run.json`` + ``metrics.csv``) into one record per run.

A run folder is what the trainer writes (docs/design.md, "Run folder"). This module is the only reader the
scaling tools (fits, plots, sweeps) use, so every tool sees the same numbers and the same verdict on a run:

* ``finished`` -- run.json says so;
* ``running``  -- run.json says "running" and its heartbeat (``updated_at``) is recent;
* ``crashed``  -- run.json says "running" but the heartbeat is older than ``stale_after`` seconds, or
  "preempted" (stopped on a signal, resumable);
* ``failed``   -- run.json says "failed" (the trainer caught an exception) or "stopped" (its guards stopped it);
* ``broken``   -- the folder cannot be read as a run (no run.json, unreadable JSON, no metrics, ...).

Broken runs are never dropped: they are returned with ``status="broken"`` and the reason in ``problems``, so a
table or plot can say what it skipped. Metrics parsing tolerates truncated or garbled lines (skipped, noted
in ``problems``) and resumed runs: when the step number goes back (a resume from an earlier checkpoint) the
superseded rows are dropped, and rows repeating a step are merged column by column with the later value
winning.

CLI: ``python -m lit_gpt.runs out/*`` prints a table; ``--csv`` / ``--json`` print machine-readable forms.
"""

from __future__ import annotations

import argparse
import csv
import glob
import io
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np

STATUSES = ("finished", "running", "crashed", "failed", "broken")
DEFAULT_STALE_AFTER = 3600.0  # seconds without a heartbeat before a "running" run counts as crashed
VAL_MULT_RE = re.compile(r"^val_loss_(\d+)x$")
RUN_NAME_RE = re.compile(r"^(?P<train_name>.*?)_?(?P<arch>[a-z0-9]+)_d(?P<depth>\d+)_ctx(?P<ctx>\d+)")
PARAMETERIZATIONS = ("sp", "mup", "mup++")


@dataclass
class RunRecord:
    """One run folder, summarised. Numbers are ``None`` where the run does not have them."""

    path: str
    run_name: str
    arch: Optional[str] = None
    parameterization: Optional[str] = None
    depth: Optional[int] = None
    n_params: Optional[int] = None
    n_params_non_embedding: Optional[int] = None
    tokens: Optional[float] = None  # last logged value
    flops: Optional[float] = None  # last logged value (cumulative training FLOPs)
    final_val_loss: Optional[float] = None  # val loss at length T at the last evaluation
    best_val_loss: Optional[float] = None
    val_losses_by_multiple: dict[int, float] = field(default_factory=dict)  # {k: loss at k*T} at the last eval
    tokens_per_sec: Optional[float] = None  # median over logged rows
    status: str = "broken"
    problems: list[str] = field(default_factory=list)
    # useful extras
    train_name: Optional[str] = None
    ctx_len: Optional[int] = None
    lr: Optional[float] = None  # peak learning rate of the run (plan.lr)
    base_lr: Optional[float] = None  # base learning rate eta0 the run was transferred from
    step: Optional[int] = None  # last logged step
    max_steps: Optional[int] = None
    planned_tokens: Optional[float] = None
    planned_flops: Optional[float] = None
    final_eval_step: Optional[int] = None
    updated_at: Optional[str] = None
    declared_status: Optional[str] = None  # run.json's own status word (running, finished, failed, preempted, ...)
    info: dict[str, Any] = field(default_factory=dict, repr=False)  # run.json as read
    history: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # metrics.csv columns, deduped

    # ------------------------------------------------------------------ conveniences
    @property
    def label(self) -> str:
        """``arch parameterization`` -- the grouping key plots colour by."""
        return f"{self.arch or '?'} {self.parameterization or '?'}"

    @property
    def ok(self) -> bool:
        return self.status == "finished"

    @property
    def compute(self) -> Optional[float]:
        """Training FLOPs spent: the logged value, else the plan's total for a finished run."""
        if self.flops is not None:
            return self.flops
        if self.status == "finished":
            return self.planned_flops
        return None

    def column(self, name: str) -> np.ndarray:
        """A metrics column (NaN where the row had no value); empty if the column is absent."""
        return self.history.get(name, np.empty(0))

    def curve(self, y: str = "val_loss", x: str = "tokens") -> tuple[np.ndarray, np.ndarray]:
        """(x, y) over the rows where both are present, in step order."""
        xs, ys = self.column(x), self.column(y)
        if xs.size == 0 or ys.size == 0:
            return np.empty(0), np.empty(0)
        keep = np.isfinite(xs) & np.isfinite(ys)
        return xs[keep], ys[keep]

    def to_dict(self) -> dict[str, Any]:
        keys = ["path", "run_name", "status", "arch", "parameterization", "depth", "train_name", "ctx_len",
                "n_params", "n_params_non_embedding", "lr", "base_lr", "step", "max_steps", "tokens",
                "planned_tokens", "flops", "planned_flops", "final_val_loss", "best_val_loss", "final_eval_step",
                "tokens_per_sec", "updated_at", "declared_status"]
        out = {k: getattr(self, k) for k in keys}
        out["val_losses_by_multiple"] = {str(k): v for k, v in sorted(self.val_losses_by_multiple.items())}
        out["problems"] = list(self.problems)
        return out


# ------------------------------------------------------------------------------------------ small helpers
def _num(value: Any) -> Optional[float]:
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _int(value: Any) -> Optional[int]:
    out = _num(value)
    return int(out) if out is not None else None


def _first(*values: Any) -> Any:
    for v in values:
        if v is not None and v != "":
            return v
    return None


def _lookup(options: dict[str, Any], dotted: str) -> Any:
    """``options['a']['b']`` or ``options['a.b']`` for ``dotted='a.b'``."""
    if dotted in options:
        return options[dotted]
    node: Any = options
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _parse_time(value: Any) -> Optional[float]:
    """Epoch seconds from an ISO-8601 string or a number; None if unreadable."""
    if value is None:
        return None
    num = _num(value)
    if num is not None:
        return num
    try:
        text = str(value).strip().replace("Z", "+00:00")
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def normalize_parameterization(value: Any) -> Optional[str]:
    if value is None:
        return None
    text = str(value).strip().lower().replace("μ", "mu")
    aliases = {"sp": "sp", "standard": "sp", "mup": "mup", "ori_mup": "mup", "mup++": "mup++", "muppp": "mup++",
               "mupp": "mup++", "mup_plus_plus": "mup++"}
    return aliases.get(text, text)


def parameterization_from_train_name(train_name: str) -> str:
    """SPEC §3: ``ori_mup`` -> μP, ``mup`` -> μP++, else SP."""
    if "ori_mup" in train_name:
        return "mup"
    if "mup" in train_name:
        return "mup++"
    return "sp"


# ---------------------------------------------------------------------------------------------- metrics
def read_metrics(path: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """Parse ``metrics.csv`` into deduplicated columns. Returns (columns, problems).

    Rows that cannot be parsed (wrong field count, e.g. a truncated last line; non-numeric cells; no step)
    are skipped and reported. A step lower than the previous one marks a resume from an earlier checkpoint:
    rows at or after that step are dropped. Rows repeating a step are merged, the later non-empty cell wins.
    """
    problems: list[str] = []
    with open(path, "r", encoding="utf-8", errors="replace", newline="") as fh:
        text = fh.read()
    if not text.strip():
        return {}, ["metrics.csv is empty"]
    lines = text.splitlines()
    ends_cleanly = text.endswith("\n")
    reader = csv.reader(io.StringIO(lines[0]))
    header = [h.strip() for h in next(reader)]
    if "step" not in header:
        return {}, [f"metrics.csv header has no 'step' column: {lines[0][:80]!r}"]
    step_col = header.index("step")
    kept: list[list[float]] = []  # rows in step order
    skipped: list[str] = []
    resumes = 0
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        cells = next(csv.reader(io.StringIO(line)), [])
        last_line = lineno == len(lines)
        if [c.strip() for c in cells] == header:  # a header repeated by an appending writer
            continue
        if len(cells) != len(header):
            why = "truncated" if last_line and not ends_cleanly else "malformed"
            skipped.append(f"line {lineno} {why} ({len(cells)} of {len(header)} fields)")
            continue
        row: list[float] = []
        bad = None
        for name, cell in zip(header, cells):
            cell = cell.strip()
            if cell == "":
                row.append(math.nan)
                continue
            try:
                row.append(float(cell))
            except ValueError:
                bad = f"line {lineno}: non-numeric {name}={cell[:20]!r}"
                break
        if bad:
            skipped.append(bad)
            continue
        step = row[step_col]
        if not math.isfinite(step):
            skipped.append(f"line {lineno}: no step")
            continue
        if kept and step < kept[-1][step_col]:
            resumes += 1
            kept = [r for r in kept if r[step_col] < step]
        if kept and step == kept[-1][step_col]:
            merged = kept[-1]
            for i, v in enumerate(row):
                if math.isfinite(v):
                    merged[i] = v
        else:
            kept.append(row)
    if skipped:
        shown = "; ".join(skipped[:3]) + (f"; ... {len(skipped) - 3} more" if len(skipped) > 3 else "")
        problems.append(f"metrics.csv: skipped {len(skipped)} unreadable line(s): {shown}")
    if resumes:
        problems.append(f"metrics.csv: resumed {resumes} time(s) from an earlier step; superseded rows dropped")
    data = np.array(kept, dtype=float).reshape(len(kept), len(header))
    columns = {name: data[:, i] for i, name in enumerate(header)}
    return columns, problems


def _last(values: np.ndarray) -> Optional[float]:
    finite = values[np.isfinite(values)] if values.size else values
    return float(finite[-1]) if finite.size else None


# ------------------------------------------------------------------------------------------------ loading
def load_run(path: str, *, stale_after: float = DEFAULT_STALE_AFTER, now: Optional[float] = None) -> RunRecord:
    """Read one run folder (or its run.json / metrics.csv). Never raises for a bad run: see ``status``."""
    if os.path.basename(path) in ("run.json", "metrics.csv") and os.path.isfile(path):
        path = os.path.dirname(path) or "."
    path = os.path.normpath(path)
    rec = RunRecord(path=path, run_name=os.path.basename(os.path.abspath(path)))
    if not os.path.isdir(path):
        rec.problems.append("no such run folder")
        return rec
    run_json = os.path.join(path, "run.json")
    metrics_csv = os.path.join(path, "metrics.csv")
    has_json, has_csv = os.path.isfile(run_json), os.path.isfile(metrics_csv)
    if not has_json and not has_csv:
        rec.problems.append("not a run folder: no run.json or metrics.csv")
        return rec

    declared: Optional[str] = None
    if has_json:
        try:
            with open(run_json, "r", encoding="utf-8") as fh:
                info = json.load(fh)
            if not isinstance(info, dict):
                raise ValueError("top level is not an object")
            rec.info = info
            declared = info.get("status")
            rec.declared_status = declared if isinstance(declared, str) else None
        except (OSError, ValueError) as err:
            rec.problems.append(f"run.json unreadable: {err}")
    else:
        rec.problems.append("run.json missing")
    _fill_from_info(rec)

    if has_csv:
        try:
            rec.history, problems = read_metrics(metrics_csv)
            rec.problems.extend(problems)
        except (OSError, csv.Error, StopIteration) as err:
            rec.problems.append(f"metrics.csv unreadable: {err}")
    else:
        rec.problems.append("metrics.csv missing")
    _fill_from_metrics(rec)

    # ---- status
    if not rec.info:
        rec.status = "broken"
    elif declared == "finished":
        rec.status = "finished"
    elif declared == "failed":
        rec.status = "failed"
        err = _first(rec.info.get("error"), rec.info.get("exception"))
        if err:
            rec.problems.append(f"failed: {str(err).strip().splitlines()[-1][:200]}")
    elif declared == "stopped":  # the trainer's guards stopped it (e.g. too many skipped steps)
        rec.status = "failed"
        rec.problems.append("stopped by the training guards (see the log); a checkpoint was saved")
    elif declared == "preempted":  # stopped on a signal with a checkpoint: interrupted, resumable
        rec.status = "crashed"
        rec.problems.append("preempted (stopped on a signal with a checkpoint); resume with --resume auto")
    elif declared == "running":
        beat = _parse_time(rec.info.get("updated_at"))
        if beat is None:  # no heartbeat in run.json: fall back on the files' modification times
            beat = max(os.path.getmtime(p) for p in (run_json, metrics_csv) if os.path.isfile(p))
        age = (time.time() if now is None else now) - beat
        if age > stale_after:
            rec.status = "crashed"
            rec.problems.append(f"status 'running' but no update for {_age(age)} (crashed or killed)")
        else:
            rec.status = "running"
    else:
        rec.status = "broken"
        rec.problems.append(f"run.json status {declared!r} is not one of running/finished/failed/preempted/stopped")
    if rec.info and not rec.history.get("step", np.empty(0)).size:
        if rec.status == "finished":
            rec.status = "broken"
        rec.problems.append("no metrics rows")
    if rec.status == "finished":
        if rec.final_val_loss is None:
            rec.problems.append("finished without a validation loss")
        if rec.max_steps is not None and rec.step is not None and rec.step < rec.max_steps:
            rec.problems.append(f"finished at step {rec.step} of {rec.max_steps}")
    return rec


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _fill_from_info(rec: RunRecord) -> None:
    info = rec.info
    options = info.get("options") if isinstance(info.get("options"), dict) else {}
    config = info.get("config") if isinstance(info.get("config"), dict) else {}
    plan = info.get("plan") if isinstance(info.get("plan"), dict) else {}
    name = _first(info.get("run_name"), plan.get("run_name"))
    if name:
        rec.run_name = str(name)
    m = RUN_NAME_RE.match(rec.run_name)
    rec.arch = _first(config.get("arch"), options.get("train_model"), m and m.group("arch"))
    rec.depth = _int(_first(config.get("n_layer"), options.get("depth"), plan.get("depth"),
                            m and m.group("depth")))
    rec.train_name = _first(options.get("train_name"), m and m.group("train_name"))
    rec.parameterization = normalize_parameterization(
        _first(config.get("parameterization"), options.get("parameterization"), plan.get("parameterization"),
               rec.train_name is not None and parameterization_from_train_name(str(rec.train_name)) or None))
    rec.ctx_len = _int(_first(options.get("ctx_len"), plan.get("seq_len"), config.get("block_size"),
                              m and m.group("ctx")))
    rec.n_params = _int(plan.get("n_params"))
    rec.n_params_non_embedding = _int(plan.get("n_params_non_embedding"))
    rec.lr = _num(_first(plan.get("lr"), options.get("lr"), options.get("learning_rate")))
    rec.base_lr = _num(_first(_lookup(options, "base_hps.eta0"), options.get("eta0"), plan.get("eta0")))
    rec.max_steps = _int(_first(plan.get("max_steps"), options.get("max_steps")))
    rec.planned_tokens = _num(_first(plan.get("train_tokens"), options.get("max_tokens")))
    rec.planned_flops = _num(plan.get("total_flops"))
    rec.updated_at = _first(info.get("updated_at"))
    if not info and m:
        rec.problems.append("arch/depth inferred from the folder name")


def _fill_from_metrics(rec: RunRecord) -> None:
    h = rec.history
    if not h or not h["step"].size:
        return
    steps = h["step"]
    rec.step = int(steps[-1]) if steps.size else None
    if "tokens" in h:
        rec.tokens = _last(h["tokens"])
    if "flops" in h:
        rec.flops = _last(h["flops"])
    if rec.flops is None and rec.tokens is not None:
        fpt = _num((rec.info.get("plan") or {}).get("flops_per_token")) if rec.info else None
        if fpt:
            rec.flops = rec.tokens * fpt
    if "tokens_per_sec" in h:
        tps = h["tokens_per_sec"][np.isfinite(h["tokens_per_sec"])]
        rec.tokens_per_sec = float(np.median(tps)) if tps.size else None
    mult_cols = sorted(((int(VAL_MULT_RE.match(c).group(1)), c) for c in h if VAL_MULT_RE.match(c)))
    val_cols = (["val_loss"] if "val_loss" in h else []) + [c for _, c in mult_cols]
    if not val_cols:
        return
    has_eval = np.zeros(steps.shape, dtype=bool)
    for c in val_cols:
        has_eval |= np.isfinite(h[c])
    if not has_eval.any():
        return
    i = int(np.nonzero(has_eval)[0][-1])
    rec.final_eval_step = int(steps[i])
    rec.val_losses_by_multiple = {k: float(h[c][i]) for k, c in mult_cols if math.isfinite(h[c][i])}
    main = h["val_loss"] if "val_loss" in h else h[mult_cols[0][1]]
    if not math.isfinite(main[i]) and 1 in rec.val_losses_by_multiple:  # val_loss empty: fall back on 1x
        main = h["val_loss_1x"]
    if math.isfinite(main[i]):
        rec.final_val_loss = float(main[i])
    finite = main[np.isfinite(main)]
    rec.best_val_loss = float(finite.min()) if finite.size else None


def run_dirs_under(root: str) -> list[str]:
    """Every folder under ``root`` (itself included) holding a run.json or metrics.csv; checkpoints skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "checkpoints" and not d.startswith("."))
        if "run.json" in filenames or "metrics.csv" in filenames:
            found.append(dirpath)
            dirnames[:] = []
    return found


def expand(patterns: Union[str, Iterable[str]], *, log_dirs: Sequence[str] = ()) -> list[str]:
    """Run folders named by glob patterns (shell-expanded or not) and by ``log_dirs`` (searched below).

    A literal path that does not exist is kept (it becomes a broken record); a pattern matching nothing
    yields nothing; plain files other than run.json / metrics.csv are ignored.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    paths: list[str] = []
    for pat in patterns:
        matches = sorted(glob.glob(pat)) if glob.has_magic(pat) else [pat]
        for p in matches:
            if os.path.isfile(p):
                if os.path.basename(p) not in ("run.json", "metrics.csv"):
                    continue
                p = os.path.dirname(p) or "."
            paths.append(p)
    for root in log_dirs:
        paths.extend(run_dirs_under(root) if os.path.isdir(root) else [root])
    seen, out = set(), []
    for p in paths:
        key = os.path.normpath(os.path.abspath(p))
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def load_runs(patterns: Union[str, Iterable[str]] = (), *, log_dirs: Sequence[str] = (),
              stale_after: float = DEFAULT_STALE_AFTER, now: Optional[float] = None) -> list[RunRecord]:
    """Load every run the patterns / log dirs name, broken ones included (``status == 'broken'``)."""
    return [load_run(p, stale_after=stale_after, now=now) for p in expand(patterns, log_dirs=log_dirs)]


# ---------------------------------------------------------------------------------------------------- CLI
def _fmt(value: Any, kind: str = "") -> str:
    if value is None:
        return "-"
    if kind == "count":
        v = float(value)
        for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
            if abs(v) >= div:
                return f"{v / div:.3g}{unit}"
        return f"{v:.3g}"
    if kind == "sci":
        return f"{float(value):.3g}"
    if kind == "loss":
        return f"{float(value):.4f}"
    return str(value)


TABLE_COLUMNS = [("run", "run_name", ""), ("status", "status", ""), ("arch", "arch", ""),
                 ("param", "parameterization", ""), ("L", "depth", ""), ("N", "n_params", "count"),
                 ("N_ne", "n_params_non_embedding", "count"), ("lr", "lr", "sci"), ("step", "step", ""),
                 ("tokens", "tokens", "count"), ("flops", "flops", "sci"), ("val", "final_val_loss", "loss"),
                 ("best", "best_val_loss", "loss"), ("tok/s", "tokens_per_sec", "count")]


def format_table(runs: Sequence[RunRecord]) -> str:
    mults = sorted({k for r in runs for k in r.val_losses_by_multiple})
    header = [c[0] for c in TABLE_COLUMNS] + [f"{k}x" for k in mults if k != 1]
    rows = []
    for r in runs:
        row = [_fmt(getattr(r, attr), kind) for _, attr, kind in TABLE_COLUMNS]
        row += [_fmt(r.val_losses_by_multiple.get(k), "loss") for k in mults if k != 1]
        rows.append(row)
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    notes = [f"  {r.run_name}: {p}" for r in runs for p in r.problems]
    counts = {s: sum(r.status == s for r in runs) for s in STATUSES}
    lines.append("")
    lines.append(f"{len(runs)} run(s): " + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    if notes:
        lines.append("problems:")
        lines += notes
    return "\n".join(lines)


def format_csv(runs: Sequence[RunRecord]) -> str:
    mults = sorted({k for r in runs for k in r.val_losses_by_multiple})
    buf = io.StringIO()
    fields = [k for k in runs[0].to_dict() if k not in ("val_losses_by_multiple", "problems")] if runs else []
    fields = fields or [k for k in RunRecord(path="", run_name="").to_dict()
                        if k not in ("val_losses_by_multiple", "problems")]
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(fields + [f"val_loss_{k}x" for k in mults] + ["problems"])
    for r in runs:
        d = r.to_dict()
        writer.writerow([("" if d[k] is None else d[k]) for k in fields]
                        + [("" if r.val_losses_by_multiple.get(k) is None else r.val_losses_by_multiple[k])
                           for k in mults] + ["; ".join(r.problems)])
    return buf.getvalue()


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lit_gpt.runs", description="Summarise run folders.")
    ap.add_argument("runs", nargs="*", help="run folders or glob patterns (e.g. out/*)")
    ap.add_argument("--log_dir", action="append", default=[], help="search run folders under this folder")
    fmt = ap.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="print CSV")
    fmt.add_argument("--json", action="store_true", help="print JSON")
    ap.add_argument("--status", action="append", choices=STATUSES, help="only runs with this status")
    ap.add_argument("--stale_after", type=float, default=DEFAULT_STALE_AFTER,
                    help="seconds without an update before a 'running' run counts as crashed")
    args = ap.parse_args(argv)
    if not args.runs and not args.log_dir:
        ap.error("name run folders (e.g. out/*) or --log_dir")
    runs = load_runs(args.runs, log_dirs=args.log_dir, stale_after=args.stale_after)
    if args.status:
        runs = [r for r in runs if r.status in args.status]
    if not runs:
        print("runs: error: no run folders match", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([r.to_dict() for r in runs], indent=2))
    elif args.csv:
        sys.stdout.write(format_csv(runs))
    else:
        print(format_table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
