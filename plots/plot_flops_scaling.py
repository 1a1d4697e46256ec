"""Validation loss vs training compute, one power-law fit L(C) = A·C^(−b) + E per (architecture,
parameterization).

    python plots/plot_flops_scaling.py --runs 'out/*' --out flops.png
    python plots/plot_flops_scaling.py --log_dir out --output_file flops.pdf --x_max 1e22

Each finished run contributes (total training FLOPs, final validation loss). Where several runs share an
(arch, parameterization, depth, token budget) -- a learning-rate sweep -- the lowest loss is used (``--select
all`` keeps them all). Writes IMAGE_fits.csv / .md (A, b, E, R², 95% bootstrap CIs) and IMAGE_points.csv
(the runs behind every point) beside the image.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import numpy as np

import _common as C


def body(args: argparse.Namespace) -> None:
    runs = C.load(args)
    runs = C.usable(runs, args, lambda r: bool(r.compute and r.final_val_loss),
                    "a final validation loss and training FLOPs")
    if args.select == "best":
        runs = C.best_per(runs, lambda r: (C.group_key(r), r.depth, r.planned_tokens or r.tokens),
                          lambda r: r.final_val_loss)
    fig, ax = C.plt.subplots(figsize=(6.4, 4.4))
    rows, points = [], []
    groups = C.group_runs(runs)
    n_groups = len(groups)
    for key, group in groups.items():
        group.sort(key=lambda r: r.compute)
        x = np.array([r.compute for r in group], dtype=float)
        y = np.array([r.final_val_loss for r in group], dtype=float)
        color, label = C.color_for(key), C.group_label(key)
        fit, note = C.try_fit(x, y, args)
        if fit is not None:
            lo = x.min() / 1.3
            hi = max(x.max() * 1.3, args.x_max or 0)
            xs = np.geomspace(lo, hi, 200)
            ax.plot(xs, fit.predict(xs), color=color, ls=C.linestyle_for(key), lw=1.6,
                    label=f"{label}: ${C.mathtext_number(fit.A)}\\,C^{{-{fit.b:.3f}}} + {fit.E:.3f}$")
            if args.band and fit.boot is not None:
                band_lo, band_hi = fit.predict_interval(xs)
                ax.fill_between(xs, band_lo, band_hi, color=color, alpha=0.12, lw=0)
            if args.x_max and args.x_max > x.max():
                ax.plot([args.x_max], [float(fit.predict(args.x_max))], marker="*", ms=9, color=color, ls="none")
        else:
            label += f" ({note})"
        ax.plot(x, y, ls="none", marker=C.marker_for(key), ms=5.5, color=color,
                label=None if fit is not None else label)
        if args.annotate or (args.annotate is None and n_groups <= 2):
            for r in group:
                ax.annotate(f"d{r.depth}", (r.compute, r.final_val_loss), textcoords="offset points",
                            xytext=(4, -10), fontsize=8, color=color)
        row = C.fit_row(label, "training FLOPs", fit, len(x), note)
        if args.x_max:
            row["x_pred"], row["loss_pred"] = args.x_max, float(fit.predict(args.x_max)) if fit else None
        rows.append(row)
        points += [{"group": label, "run_name": r.run_name, "depth": r.depth, "flops": r.compute,
                    "tokens": r.tokens, "final_val_loss": r.final_val_loss, "path": r.path} for r in group]
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("validation loss")
    if not args.title:
        ax.set_title("Loss vs compute")
    ax.legend(loc="upper right")
    path = C.save(fig, args)
    C.write_table(rows, path, "fits", C.FIT_COLUMNS + (["x_pred", "loss_pred"] if args.x_max else []))
    C.write_table(points, path, "points")
    for row in rows:
        print(f"  {row['group']}: " + (f"A={row['A']:.4g} b={row['b']:.4g} E={row['E']:.4g} R²={row['r2']:.4f}"
                                       if "A" in row else row["note"]))


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = C.make_parser(__doc__.splitlines()[0] + " " + __doc__.splitlines()[1], default_out="flops_scaling.png",
                       fits=True)
    ap.add_argument("--select", choices=("best", "all"), default="best",
                    help="per (arch, parameterization, depth, token budget): lowest-loss run (default) or all")
    ap.add_argument("--x_max", type=float, default=None, help="extend the fitted curves to this many FLOPs "
                    "and mark the predicted loss there")
    ap.add_argument("--band", action=C.argparse.BooleanOptionalAction, default=True,
                    help="shade the pointwise 95%% bootstrap band of each fit")
    ap.add_argument("--annotate", action=C.argparse.BooleanOptionalAction, default=None,
                    help="label points with their depth (default: when at most two curves)")
    return C.run_main("plot_flops_scaling", body, ap, argv)


if __name__ == "__main__":
    sys.exit(main())
