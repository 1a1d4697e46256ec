"""Training curves: loss vs tokens (or FLOPs / steps) for every run, finished or not.

    python plots/plot_training_curves.py --runs 'out/*' --out curves.png
    python plots/plot_training_curves.py --log_dir out --metric val --x flops --arch sambay

Train loss is drawn as a thin line, validation loss (at length T) as markers joined by a line; colour by
(architecture, parameterization), darker for deeper models, the depth written at the end of each curve.
Unfinished runs are included (their last point is marked ×: crashed / failed, or ▷: still running) since a
curve is most useful while a run is going. Writes IMAGE_runs.csv (the last values of every curve drawn).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import numpy as np

import _common as C

X_LABELS = {"tokens": "training tokens", "flops": "training FLOPs", "step": "step"}


def smooth(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or y.size < window:
        return y
    kernel = np.ones(window) / window
    pad = np.concatenate([np.full(window - 1, y[0]), y])
    return np.convolve(pad, kernel, mode="valid")


def body(args: argparse.Namespace) -> None:
    runs = [r for r in C.load(args) if r.history]
    metrics = {"train": ["train_loss"], "val": ["val_loss"], "both": ["train_loss", "val_loss"]}[args.metric]

    def has_curve(r) -> bool:
        return any(r.curve(m, args.x)[0].size >= 1 for m in metrics)

    drawable = [r for r in runs if r.status != "broken" and has_curve(r)]
    if not drawable:
        raise C.PlotError(f"no run has {' or '.join(metrics)} against {args.x} ({len(runs)} with metrics)")
    drawable.sort(key=lambda r: (C.group_key(r), r.depth or 0, r.run_name))
    depths = sorted({r.depth for r in drawable if r.depth is not None})
    fig, ax = C.plt.subplots(figsize=(7.0, 4.6))
    seen_groups, tops, bottoms, table = set(), [], [], []
    for r in drawable:
        key = C.group_key(r)
        i = depths.index(r.depth) if r.depth in depths else 0
        shade = 0.55 + 0.45 * (1 - i / max(1, len(depths) - 1))
        color = C.mcolors.to_hex(tuple(c * shade for c in C.mcolors.to_rgb(C.color_for(key))))
        label = C.group_label(key) if key not in seen_groups else None
        seen_groups.add(key)
        last = None
        for m in metrics:
            x, y = r.curve(m, args.x)
            keep = x > 0
            x, y = x[keep], y[keep]
            if not x.size:
                continue
            if m == "train_loss":
                ys = smooth(y, args.smooth)
                ax.plot(x, ys, color=color, lw=0.9, alpha=0.55 if len(metrics) > 1 else 0.9,
                        ls=C.linestyle_for(key), label=label if len(metrics) == 1 else None)
            else:
                ys = y
                ax.plot(x, ys, color=color, lw=1.4, marker=C.marker_for(key), ms=3.5,
                        ls=C.linestyle_for(key), label=label)
            tail = ys[x >= 0.1 * x.max()]
            tops.append(float(np.max(tail)) if tail.size else float(np.max(ys)))
            bottoms.append(float(np.min(ys)))
            last = (x[-1], ys[-1])
        if last is not None:
            ax.annotate(f"d{r.depth}" if r.depth else r.run_name, last, textcoords="offset points", xytext=(3, 0),
                        fontsize=7.5, color=color, va="center")
            if r.status in ("crashed", "failed", "running"):
                ax.plot([last[0]], [last[1]], marker="x" if r.status != "running" else ">", ms=7, color="black",
                        ls="none")
        table.append({"run_name": r.run_name, "status": r.status, "arch": r.arch,
                      "parameterization": r.parameterization, "depth": r.depth, "step": r.step,
                      "tokens": r.tokens, "flops": r.flops, "final_val_loss": r.final_val_loss,
                      "last_train_loss": _last(r.column("train_loss"))})
    if tops:
        lo, hi = min(bottoms), max(tops)
        ax.set_ylim(lo - 0.03 * (hi - lo), hi + 0.05 * (hi - lo))
    if args.x != "step":
        ax.set_xscale("log")
    ax.set_xlabel(X_LABELS[args.x])
    ax.set_ylabel({"train": "training loss", "val": "validation loss",
                   "both": "loss (thin: train, markers: validation)"}[args.metric])
    if not args.title:
        ax.set_title(f"Training curves ({len(drawable)} runs)")
    if any(r.status in ("crashed", "failed") for r in drawable):
        ax.plot([], [], marker="x", color="black", ls="none", label="crashed / failed")
    ax.legend(loc="upper right")
    path = C.save(fig, args)
    C.write_table(table, path, "runs")


def _last(col: np.ndarray) -> Optional[float]:
    finite = col[np.isfinite(col)] if col.size else col
    return float(finite[-1]) if finite.size else None


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = C.make_parser("Loss vs tokens for every run.", default_out="training_curves.png")
    ap.add_argument("--metric", choices=("train", "val", "both"), default="both")
    ap.add_argument("--x", choices=("tokens", "flops", "step"), default="tokens")
    ap.add_argument("--smooth", type=int, default=1, help="moving-average window over train-loss rows")
    return C.run_main("plot_training_curves", body, ap, argv)


if __name__ == "__main__":
    sys.exit(main())
