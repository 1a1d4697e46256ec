"""Shared plumbing of the plot scripts: arguments, run loading, colours, saving, tables.

Every script reads run folders through ``lit_gpt.runs`` (never hard-coded numbers), accepts
``--runs GLOB...`` and ArchScale's ``--log_dir DIR`` (every run folder under DIR), ``--out`` (alias
``--output_file``), ``--format png|pdf|svg`` and ``--title``, and exits with status 2 and a one-line error when
nothing usable matches.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import sys
from collections import Counter
from typing import Any, Callable, Iterable, Optional, Sequence

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:  # `python plots/x.py` from a checkout without `pip install -e .`
    sys.path.insert(0, _REPO)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.colors as mcolors  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from lit_gpt.fit import PowerLawFit, fit_power_law  # noqa: E402
from lit_gpt.runs import DEFAULT_STALE_AFTER, RunRecord, load_runs  # noqa: E402

ARCH_NAMES = {"transformer": "Transformer++", "transformerls": "Transformer++ (SWA)", "samba": "Samba",
              "sambay": "SambaY", "sambayda": "SambaY-DA", "sambayoco": "SambaYOCO", "mambay": "MambaY",
              "mamba": "Mamba", "phi4miniflash": "Phi4-mini-flash"}
PARAM_NAMES = {"sp": "SP", "mup": "μP", "mup++": "μP++"}
ARCH_COLORS = {"transformer": "#1f77b4", "sambay": "#d62728", "samba": "#2ca02c", "sambayda": "#9467bd",
               "sambayoco": "#ff7f0e", "mambay": "#8c564b", "mamba": "#e377c2", "transformerls": "#17becf",
               "phi4miniflash": "#bcbd22"}
EXTRA_COLORS = ["#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173"]
PARAM_LIGHTEN = {"mup++": 0.0, "mup": 0.3, "sp": 0.5}  # same hue per arch, lighter for SP
PARAM_LINESTYLE = {"mup++": "-", "mup": "-.", "sp": "--"}
PARAM_MARKER = {"mup++": "o", "mup": "s", "sp": "^"}


class PlotError(Exception):
    """Raised for a user-facing failure; ``main`` turns it into one line on stderr and exit status 2."""


def style() -> None:
    plt.rcParams.update({
        "font.size": 10.5, "axes.titlesize": 11, "axes.labelsize": 10.5, "legend.fontsize": 9,
        "xtick.labelsize": 9.5, "ytick.labelsize": 9.5, "axes.grid": True, "grid.alpha": 0.3,
        "grid.linewidth": 0.6, "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": 100,
        "savefig.dpi": 150, "legend.frameon": False,
    })


# ------------------------------------------------------------------------------------------------ arguments
def make_parser(description: str, *, default_out: str, fits: bool = False) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--runs", nargs="+", default=[], metavar="GLOB", help="run folders or glob patterns")
    ap.add_argument("--log_dir", action="append", default=[], metavar="DIR",
                    help="use every run folder under DIR (ArchScale's spelling); may repeat")
    ap.add_argument("--out", "--output_file", dest="out", default=default_out,
                    help=f"image path (default {default_out}); tables are written beside it")
    ap.add_argument("--format", choices=("png", "pdf", "svg"), default=None,
                    help="image format (default: from --out's suffix, else png)")
    ap.add_argument("--title", default=None, help="figure title")
    ap.add_argument("--arch", nargs="+", default=None, help="only these architectures")
    ap.add_argument("--parameterization", nargs="+", default=None, choices=("sp", "mup", "mup++"),
                    help="only these parameterizations")
    ap.add_argument("--train_name", default=None, metavar="REGEX",
                    help="only runs whose train_name matches REGEX (full match)")
    ap.add_argument("--include_unfinished", action="store_true",
                    help="also use running/crashed/failed runs where they have the needed values")
    ap.add_argument("--stale_after", type=float, default=DEFAULT_STALE_AFTER,
                    help="seconds without an update before a 'running' run counts as crashed")
    ap.add_argument("--dpi", type=int, default=150)
    if fits:
        ap.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
        ap.add_argument("--seed", type=int, default=0)
    return ap


def run_main(prog: str, body: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser,
             argv: Optional[Sequence[str]] = None) -> int:
    """Parse, run ``body``, and turn a PlotError into ``prog: error: ...`` with exit status 2."""
    args = parser.parse_args(argv)
    style()
    try:
        body(args)
    except PlotError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    return 0


def load(args: argparse.Namespace) -> list[RunRecord]:
    """Runs named by --runs / --log_dir after the filters; raises PlotError when none match."""
    if not args.runs and not args.log_dir:
        raise PlotError("name run folders with --runs GLOB... or --log_dir DIR")
    runs = load_runs(args.runs, log_dirs=args.log_dir, stale_after=args.stale_after)
    if not runs:
        raise PlotError(f"no run folders match {' '.join(args.runs + args.log_dir)}")
    if args.arch:
        runs = [r for r in runs if r.arch in args.arch]
    if args.parameterization:
        runs = [r for r in runs if r.parameterization in args.parameterization]
    if args.train_name:
        pat = re.compile(args.train_name)
        runs = [r for r in runs if r.train_name is not None and pat.fullmatch(str(r.train_name))]
    if not runs:
        raise PlotError("no runs left after the --arch / --parameterization / --train_name filters")
    return runs


def usable(runs: Iterable[RunRecord], args: argparse.Namespace, need: Callable[[RunRecord], bool],
           what: str) -> list[RunRecord]:
    """Finished runs (all with --include_unfinished) for which ``need`` holds; PlotError if none.
    Runs left out for their status are summarised on stderr so nothing disappears silently."""
    runs = list(runs)
    allowed = [r for r in runs if r.status == "finished" or (args.include_unfinished and r.status != "broken")]
    out = [r for r in allowed if need(r)]
    skipped = Counter(r.status for r in runs if r not in allowed)
    if skipped:
        print("skipped " + ", ".join(f"{n} {s}" for s, n in sorted(skipped.items())) + " run(s)"
              + ("" if args.include_unfinished else " (--include_unfinished to use running/crashed/failed)"),
              file=sys.stderr)
    if not out:
        statuses = Counter(r.status for r in runs)
        summary = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items()))
        raise PlotError(f"no {'usable' if args.include_unfinished else 'finished'} run has {what} "
                        f"({len(runs)} matched: {summary})")
    return out


# -------------------------------------------------------------------------------------------------- styling
def group_key(run: RunRecord) -> tuple[str, str]:
    return (run.arch or "?", run.parameterization or "?")


def group_label(key: tuple[str, str]) -> str:
    arch, param = key
    return f"{ARCH_NAMES.get(arch, arch)} {PARAM_NAMES.get(param, param)}"


def color_for(key: tuple[str, str]) -> str:
    arch, param = key
    base = ARCH_COLORS.get(arch)
    if base is None:
        base = EXTRA_COLORS[sum(map(ord, arch)) % len(EXTRA_COLORS)]
    rgb = mcolors.to_rgb(base)
    t = PARAM_LIGHTEN.get(param, 0.15)
    return mcolors.to_hex(tuple(c + (1 - c) * t for c in rgb))


def linestyle_for(key: tuple[str, str]) -> str:
    return PARAM_LINESTYLE.get(key[1], ":")


def marker_for(key: tuple[str, str]) -> str:
    return PARAM_MARKER.get(key[1], "D")


def group_runs(runs: Iterable[RunRecord], key: Callable[[RunRecord], Any] = group_key) -> dict[Any, list]:
    groups: dict[Any, list[RunRecord]] = {}
    for r in runs:
        groups.setdefault(key(r), []).append(r)
    return dict(sorted(groups.items(), key=lambda kv: tuple(str(k) for k in kv[0]) if isinstance(kv[0], tuple)
                       else str(kv[0])))


def fmt_count(v: Optional[float]) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:.3g}"


def mathtext_number(v: float, digits: int = 3) -> str:
    """``1.42e+03`` as mathtext ``1.42\\times10^{3}`` (plain ``%.3g`` when no exponent)."""
    text = f"{v:.{digits}g}"
    if "e" not in text:
        return text
    mant, exp = text.split("e")
    return f"{mant}\\times10^{{{int(exp)}}}"


# ---------------------------------------------------------------------------------------------------- output
def output_path(args: argparse.Namespace) -> str:
    root, ext = os.path.splitext(args.out)
    fmt = args.format or (ext.lstrip(".").lower() if ext.lower() in (".png", ".pdf", ".svg") else "png")
    if ext.lower() not in (".png", ".pdf", ".svg"):
        root = args.out
    return f"{root}.{fmt}"


def save(fig: "plt.Figure", args: argparse.Namespace) -> str:
    path = output_path(args)
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    if args.title:
        fig.suptitle(args.title)
    fig.savefig(path, dpi=args.dpi, bbox_inches="tight")
    plt.close(fig)
    print(f"wrote {path}")
    return path


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if not math.isfinite(v):
            return ""
        return f"{v:.6g}"
    return str(v)


def write_table(rows: Sequence[dict[str, Any]], image_path: str, suffix: str,
                columns: Optional[Sequence[str]] = None) -> tuple[str, str]:
    """``rows`` as IMAGE_suffix.csv and IMAGE_suffix.md beside the image; returns both paths."""
    root = os.path.splitext(image_path)[0]
    cols = list(columns) if columns else list(dict.fromkeys(k for r in rows for k in r))
    csv_path, md_path = f"{root}_{suffix}.csv", f"{root}_{suffix}.md"
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(cols)
        for r in rows:
            w.writerow([_cell(r.get(c)) for c in cols])
    with open(md_path, "w") as fh:
        fh.write("| " + " | ".join(cols) + " |\n")
        fh.write("|" + "|".join("---" for _ in cols) + "|\n")
        for r in rows:
            fh.write("| " + " | ".join(_cell(r.get(c)).replace("|", "\\|") for c in cols) + " |\n")
    print(f"wrote {csv_path} and {md_path}")
    return csv_path, md_path


FIT_COLUMNS = ["group", "x", "n", "A", "A_lo", "A_hi", "b", "b_lo", "b_hi", "E", "E_lo", "E_hi", "r2", "rmse",
               "x_min", "x_max", "n_boot", "note"]


def fit_row(group: str, x_name: str, fit: Optional[PowerLawFit], n: int, note: str = "") -> dict[str, Any]:
    row: dict[str, Any] = {"group": group, "x": x_name, "n": n, "note": note}
    if fit is not None:
        row.update(fit.as_row())
    return row


def try_fit(x: Sequence[float], y: Sequence[float], args: argparse.Namespace
            ) -> tuple[Optional[PowerLawFit], str]:
    """Fit when the points allow it; otherwise (None, reason) so the table can say why there is no fit."""
    distinct = len(set(float(v) for v in x))
    if distinct < 3:
        return None, f"no fit: {distinct} distinct x value(s), need 3"
    try:
        fit = fit_power_law(x, y, bootstrap=args.bootstrap, seed=args.seed)
    except (ValueError, RuntimeError) as err:
        return None, f"no fit: {err}"
    note = ""
    if fit.n <= 5:
        note = f"only {fit.n} points: A, b, E weakly identified, see CIs"
    return fit, note


def best_per(runs: Iterable[RunRecord], key: Callable[[RunRecord], Any],
             value: Callable[[RunRecord], Optional[float]]) -> list[RunRecord]:
    """The run with the lowest ``value`` for each ``key`` (e.g. the best LR of a sweep at one size)."""
    best: dict[Any, RunRecord] = {}
    for r in runs:
        v = value(r)
        if v is None:
            continue
        k = key(r)
        if k not in best or v < value(best[k]):  # type: ignore[operator]
            best[k] = r
    return list(best.values())
