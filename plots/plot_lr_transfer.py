"""Learning-rate transfer across depth: final validation loss vs learning rate, one line per depth, one panel
per (architecture, parameterization), each depth's optimum marked.

    python plots/plot_lr_transfer.py --runs 'out/*lr*' 'out/*' --out lr_transfer.png
    python plots/plot_lr_transfer.py --log_dir sweeps --lr peak

If the parameterization transfers, the optima of all depths line up at one base learning rate. ``--lr base``
(default) puts the base LR eta0 the run was transferred from on the x axis (the quantity a sweep at d0
tunes); ``--lr peak`` puts the run's own peak LR (plan.lr, which μP++ scales by √(d0/L)). Runs of one depth
at different token budgets are kept apart. Writes IMAGE_optima.csv / .md: per depth, the best measured LR and
the optimum of a parabola in log2(LR) through the best point and its neighbours.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Optional, Sequence

import numpy as np

import _common as C


def lr_of(r, kind: str) -> Optional[float]:
    if kind == "base":
        return r.base_lr if r.base_lr is not None else None
    return r.lr


def parabola_optimum(lrs: np.ndarray, losses: np.ndarray) -> Optional[float]:
    """Vertex of a parabola in log2(lr) through the best point and its two neighbours; None at an edge."""
    i = int(np.argmin(losses))
    if i == 0 or i == len(lrs) - 1:
        return None
    u = np.log2(lrs[i - 1:i + 2])
    a, b, _ = np.polyfit(u, losses[i - 1:i + 2], 2)
    if a <= 0:
        return None
    return float(2 ** (-b / (2 * a)))


def body(args: argparse.Namespace) -> None:
    runs = C.load(args)
    kind = args.lr
    if kind == "base" and not any(r.base_lr for r in runs):
        print("no run records its base learning rate (options.base_hps.eta0): using the peak LR",
              file=sys.stderr)
        kind = "peak"
    runs = C.usable(runs, args, lambda r: bool(r.final_val_loss and lr_of(r, kind)),
                    "a final validation loss and a learning rate")
    panels = {}
    for key, group in C.group_runs(runs).items():
        lines = C.group_runs(group, lambda r: (r.depth or 0, r.planned_tokens or r.tokens or 0))
        lines = {k: g for k, g in lines.items() if len({lr_of(r, kind) for r in g}) >= 2}
        if lines:
            panels[key] = lines
    if not panels:
        raise C.PlotError("no depth has finished runs at two or more learning rates "
                          "(an LR sweep needs several runs per depth)")
    n = len(panels)
    cols = min(n, 3)
    rows_n = math.ceil(n / cols)
    fig, axes = C.plt.subplots(rows_n, cols, figsize=(4.6 * cols, 3.8 * rows_n), squeeze=False, sharey=True)
    all_depths = sorted({d for lines in panels.values() for d, _ in lines})
    cmap = C.plt.get_cmap("viridis")
    table = []
    for ax, (key, lines) in zip(axes.flat, panels.items()):
        depth_budgets = {}
        for d, t in lines:
            depth_budgets.setdefault(d, []).append(t)
        for (depth, tokens), group in sorted(lines.items()):
            best = C.best_per(group, lambda r: lr_of(r, kind), lambda r: r.final_val_loss)
            best.sort(key=lambda r: lr_of(r, kind))
            lrs = np.array([lr_of(r, kind) for r in best])
            losses = np.array([r.final_val_loss for r in best])
            color = cmap(all_depths.index(depth) / max(1, len(all_depths) - 1) * 0.9)
            label = f"d{depth}" + (f", {C.fmt_count(tokens)} tok" if len(depth_budgets[depth]) > 1 else "")
            ax.plot(lrs, losses, marker="o", ms=4, lw=1.4, color=color, label=label)
            i = int(np.argmin(losses))
            ax.plot([lrs[i]], [losses[i]], marker="*", ms=13, color=color, markeredgecolor="black",
                    markeredgewidth=0.6, ls="none", zorder=5)
            opt = parabola_optimum(lrs, losses)
            table.append({"arch": key[0], "parameterization": key[1], "depth": depth, "tokens": tokens,
                          "lr_kind": kind, "n_lrs": len(lrs), "best_lr": float(lrs[i]),
                          "best_loss": float(losses[i]), "parabola_opt_lr": opt,
                          "edge": "optimum at the edge of the sweep" if i in (0, len(lrs) - 1) else ""})
        ax.set_xscale("log")
        ticks = sorted({float(lr_of(r, kind)) for g in lines.values() for r in g})
        if len(ticks) <= 8:
            ax.set_xticks(ticks, [f"{t:.2g}" for t in ticks])
            ax.xaxis.set_minor_locator(C.matplotlib.ticker.NullLocator())
        ax.set_title(C.group_label(key))
        ax.set_xlabel("base learning rate η₀" if kind == "base" else "peak learning rate")
        ax.legend(title="depth", fontsize=8.5)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("final validation loss")
    fig.tight_layout()
    path = C.save(fig, args)
    C.write_table(table, path, "optima")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = C.make_parser("Final validation loss vs learning rate per depth (LR transfer).",
                       default_out="lr_transfer.png")
    ap.add_argument("--lr", choices=("base", "peak"), default="base",
                    help="x axis: base LR eta0 (default) or the run's peak LR (plan.lr)")
    return C.run_main("plot_lr_transfer", body, ap, argv)


if __name__ == "__main__":
    sys.exit(main())
