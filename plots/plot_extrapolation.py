"""Length extrapolation: validation loss vs evaluation length (1×, 2×, … k× the training context) per run.

    python plots/plot_extrapolation.py --runs 'out/*' --out extrapolation.png
    python plots/plot_extrapolation.py --log_dir out --relative   # loss minus the 1x loss

Uses the losses at the final evaluation (metrics.csv columns val_loss_1x … val_loss_{k}x). A model that
extrapolates keeps a flat or falling curve; RoPE attention beyond its training length usually rises.
Writes IMAGE_values.csv / .md (loss at every multiple per run) beside the image.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import _common as C


def body(args: argparse.Namespace) -> None:
    runs = C.load(args)
    runs = C.usable(runs, args, lambda r: len(r.val_losses_by_multiple) >= 2,
                    "validation losses at two or more evaluation lengths (val_loss_1x, val_loss_2x, ...)")
    runs.sort(key=lambda r: (C.group_key(r), r.depth or 0, r.run_name))
    depths = sorted({r.depth for r in runs if r.depth is not None})
    mults = sorted({k for r in runs for k in r.val_losses_by_multiple})
    fig, ax = C.plt.subplots(figsize=(6.4, 4.4))
    seen, table = set(), []
    for r in runs:
        key = C.group_key(r)
        i = depths.index(r.depth) if r.depth in depths else 0
        shade = 0.55 + 0.45 * (1 - i / max(1, len(depths) - 1))
        color = C.mcolors.to_hex(tuple(c * shade for c in C.mcolors.to_rgb(C.color_for(key))))
        ks = sorted(r.val_losses_by_multiple)
        ys = [r.val_losses_by_multiple[k] for k in ks]
        if args.relative:
            ref = r.val_losses_by_multiple.get(1, ys[0])
            ys = [y - ref for y in ys]
        ax.plot(ks, ys, color=color, ls=C.linestyle_for(key), marker=C.marker_for(key), ms=4, lw=1.3,
                label=C.group_label(key) if key not in seen else None)
        seen.add(key)
        if r.depth:
            ax.annotate(f"d{r.depth}", (ks[-1], ys[-1]), textcoords="offset points", xytext=(4, 0), fontsize=7.5,
                        color=color, va="center")
        row = {"run_name": r.run_name, "status": r.status, "arch": r.arch, "parameterization": r.parameterization,
               "depth": r.depth, "ctx_len": r.ctx_len, "eval_step": r.final_eval_step}
        row.update({f"loss_{k}x": r.val_losses_by_multiple.get(k) for k in mults})
        table.append(row)
    ax.set_xscale("log", base=2)
    ax.set_xticks(mults, [f"{k}×" for k in mults])
    ax.xaxis.set_minor_locator(C.matplotlib.ticker.NullLocator())
    ctx = {r.ctx_len for r in runs if r.ctx_len}
    unit = f" (T = {ctx.pop()})" if len(ctx) == 1 else ""
    ax.set_xlabel(f"evaluation length, multiple of the training context T{unit}")
    ax.set_ylabel("validation loss − loss at 1×" if args.relative else "validation loss")
    if args.relative:
        ax.axhline(0, color="black", lw=0.8, alpha=0.5)
    if not args.title:
        ax.set_title("Length extrapolation")
    ax.legend(loc="best")
    path = C.save(fig, args)
    C.write_table(table, path, "values")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = C.make_parser("Validation loss vs evaluation length multiple per run.", default_out="extrapolation.png")
    ap.add_argument("--relative", action="store_true", help="plot the loss minus each run's 1x loss")
    return C.run_main("plot_extrapolation", body, ap, argv)


if __name__ == "__main__":
    sys.exit(main())
