"""Validation loss vs training tokens, with power-law fits L(D) = A·D^(−b) + E.

    python plots/plot_data_scaling.py --runs 'out/*' --out data.png
    python plots/plot_data_scaling.py --log_dir out --output_file data.pdf --mode curve --arch sambay

Two kinds of evidence, chosen by ``--mode``:
* ``budgets`` -- runs of one model (arch, parameterization, depth) trained to several token budgets: one point
  per budget (final validation loss; the lowest loss where an LR sweep gives several), one fit per model.
  This is the clean data-scaling measurement: every point finished its own LR schedule.
* ``curve`` -- the evaluations along each run's training (past ``--min_fraction`` of its tokens), one fit
  per run. Cheaper, but points before the end of a decaying schedule sit above the annealed loss, so the
  exponent is only indicative.
``auto`` (default) uses ``budgets`` when some model has at least three budgets, else ``curve``.
Writes IMAGE_fits.csv / .md (A, b, E, R², 95% bootstrap CIs) and IMAGE_points.csv beside the image.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import numpy as np

import _common as C


def model_key(r):
    return (*C.group_key(r), r.depth)


def model_label(key) -> str:
    return f"{C.group_label(key[:2])} d{key[2]}"


def budgets(runs, args):
    runs = C.usable(runs, args, lambda r: bool(r.tokens and r.final_val_loss),
                    "a final validation loss and a token count")
    best = C.best_per(runs, lambda r: (model_key(r), r.planned_tokens or r.tokens), lambda r: r.final_val_loss)
    groups = C.group_runs(best, model_key)
    return {k: g for k, g in groups.items() if len({r.tokens for r in g}) >= 3}, groups


def body(args: argparse.Namespace) -> None:
    runs = C.load(args)
    mode = args.mode
    if mode in ("auto", "budgets"):
        multi, groups = budgets(runs, args)
        if not multi:
            if mode == "budgets":
                most = max((len({r.tokens for r in g}) for g in groups.values()), default=0)
                raise C.PlotError(f"no model has finished runs at three or more token budgets (most: {most}); "
                                  "try --mode curve")
            mode = "curve"
        else:
            mode = "budgets"
    fig, ax = C.plt.subplots(figsize=(6.4, 4.4))
    rows, points = [], []
    if mode == "budgets":
        depths = sorted({k[2] for k in multi})
        for key, group in multi.items():
            group.sort(key=lambda r: r.tokens)
            x = np.array([r.tokens for r in group], dtype=float)
            y = np.array([r.final_val_loss for r in group], dtype=float)
            _draw(ax, args, key, x, y, rows, depth_shade=(depths.index(key[2]), len(depths)))
            points += [{"model": model_label(key), "run_name": r.run_name, "tokens": r.tokens,
                        "final_val_loss": r.final_val_loss, "path": r.path} for r in group]
        ax.set_title("Loss vs training tokens (final loss per token budget)" if not args.title else "")
    else:
        runs = C.usable(runs, args, lambda r: r.curve("val_loss", "tokens")[0].size >= 1,
                        "validation losses along training")
        runs.sort(key=lambda r: (C.group_key(r), r.depth or 0, r.run_name))
        depths = sorted({r.depth for r in runs if r.depth is not None})
        for r in runs:
            t, v = r.curve("val_loss", "tokens")
            sel = (t >= args.min_fraction * t.max()) & (t > 0)
            key = model_key(r)
            shade = (depths.index(r.depth), len(depths)) if r.depth in depths else (0, 1)
            _draw(ax, args, key, t[sel], v[sel], rows, depth_shade=shade, name=r.run_name)
            points += [{"model": model_label(key), "run_name": r.run_name, "tokens": a, "val_loss": b}
                       for a, b in zip(t[sel], v[sel])]
        ax.set_title("Loss along training (evaluations)" if not args.title else "")
    ax.set_xscale("log")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("validation loss")
    ax.legend(loc="upper right", fontsize=8.5 if len(rows) > 6 else 9)
    path = C.save(fig, args)
    C.write_table(rows, path, "fits", C.FIT_COLUMNS)
    C.write_table(points, path, "points")


def _draw(ax, args, key, x, y, rows, *, depth_shade, name=None):
    base = C.color_for(key[:2])
    i, n = depth_shade
    # darker for deeper models within one (arch, parameterization) colour
    color = C.mcolors.to_hex(tuple(c * (0.55 + 0.45 * (1 - i / max(1, n - 1))) for c in C.mcolors.to_rgb(base)))
    label = name or model_label(key)
    fit, note = C.try_fit(x, y, args)
    if fit is not None:
        xs = np.geomspace(x.min() / 1.3, x.max() * 1.3, 200)
        ax.plot(xs, fit.predict(xs), color=color, ls=C.linestyle_for(key[:2]), lw=1.4,
                label=f"{label}: b={fit.b:.3f}, E={fit.E:.3f}")
    ax.plot(x, y, ls="none", marker=C.marker_for(key[:2]), ms=4.5, color=color,
            label=None if fit is not None else f"{label} ({note})")
    rows.append(C.fit_row(label, "training tokens", fit, len(x), note))


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = C.make_parser("Validation loss vs training tokens with power-law fits.", default_out="data_scaling.png",
                       fits=True)
    ap.add_argument("--mode", choices=("auto", "budgets", "curve"), default="auto",
                    help="fit final losses across token budgets, or evaluations along training (default auto)")
    ap.add_argument("--min_fraction", type=float, default=0.2,
                    help="curve mode: ignore evaluations before this fraction of a run's tokens")
    return C.run_main("plot_data_scaling", body, ap, argv)


if __name__ == "__main__":
    sys.exit(main())
