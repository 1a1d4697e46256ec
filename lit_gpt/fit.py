"""Saturating power-law fits for scaling studies: L(x) = A * x^(-b) + E.

``fit_power_law`` fits by bounded least squares on log-residuals, log(L_pred) - log(L), which weighs every
point by its relative error. It solves for (log a, b, E) with x rescaled by its geometric mean x0 (so the
amplitude and the exponent are not nearly collinear), then reports A = a * x0^b in the caller's units.
Bounds: 0 < b < 2, 0 <= E < min(y). Starting points come from a grid over E: for each E, log(y - E) is
linear in log x, so a straight-line fit gives a and b; the best few seed the nonlinear solve.

Confidence intervals come from a bootstrap (resampling points with replacement by default, or residuals),
reported as percentile intervals. With few points (five depths is typical) the three parameters are weakly
identified -- A and E trade off against b -- and the intervals are wide; that is the honest answer, and the
reason the fit table prints them next to every estimate. Resamples with fewer than three distinct x values
cannot determine three parameters and are skipped (``n_boot`` says how many were used).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

import numpy as np
from scipy.optimize import least_squares

PARAMS = ("A", "b", "E")
B_BOUNDS = (1e-6, 2.0)


@dataclass
class PowerLawFit:
    """L(x) = A * x^(-b) + E with 95% bootstrap intervals in ``ci`` (name -> (lo, hi))."""

    A: float
    b: float
    E: float
    r2: float
    ci: dict[str, tuple[float, float]]
    n: int
    rmse: float = math.nan
    n_boot: int = 0
    x_range: tuple[float, float] = (math.nan, math.nan)
    level: float = 0.95
    boot: Optional[np.ndarray] = field(default=None, repr=False)  # (n_boot, 3) samples of A, b, E

    def predict(self, x: Any) -> np.ndarray:
        return predict(self, x)

    def predict_interval(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        """Pointwise bootstrap band of the prediction at ``x`` (same level as ``ci``); NaN without samples."""
        x = np.asarray(x, dtype=float)
        if self.boot is None or len(self.boot) < 2:
            nan = np.full(x.shape, math.nan)
            return nan, nan
        A, b, E = self.boot[:, 0:1], self.boot[:, 1:2], self.boot[:, 2:3]
        preds = A * np.exp(-b * np.log(x.reshape(1, -1))) + E
        alpha = (1 - self.level) / 2
        lo, hi = np.quantile(preds, [alpha, 1 - alpha], axis=0)
        return lo.reshape(x.shape), hi.reshape(x.shape)

    def formula(self, var: str = "x", digits: int = 4) -> str:
        return f"{self.A:.{digits}g}·{var}^(−{self.b:.{digits}g}) + {self.E:.{digits}g}"

    def as_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"A": self.A, "b": self.b, "E": self.E, "r2": self.r2, "rmse": self.rmse,
                               "n": self.n, "n_boot": self.n_boot}
        for name in PARAMS:
            lo, hi = self.ci.get(name, (math.nan, math.nan))
            row[f"{name}_lo"], row[f"{name}_hi"] = lo, hi
        row["x_min"], row["x_max"] = self.x_range
        return row

    def __str__(self) -> str:
        parts = [f"L(x) = {self.formula()}  (R²={self.r2:.4f}, n={self.n})"]
        for name in PARAMS:
            lo, hi = self.ci.get(name, (math.nan, math.nan))
            parts.append(f"  {name}: {getattr(self, name):.4g}  [{lo:.4g}, {hi:.4g}]")
        return "\n".join(parts)


def predict(fit: PowerLawFit, x: Any) -> np.ndarray:
    """A * x^(-b) + E, computed in log space (x may be 1e21 or beyond)."""
    x = np.asarray(x, dtype=float)
    return fit.A * np.exp(-fit.b * np.log(x)) + fit.E


# ---------------------------------------------------------------------------------------------- core solve
def _model(theta: np.ndarray, u: np.ndarray) -> np.ndarray:
    log_a, b, E = theta
    return np.exp(log_a - b * u) + E


def _seeds(u: np.ndarray, y: np.ndarray, e_hi: float, n_grid: int) -> list[tuple[float, np.ndarray]]:
    """Starting points from a grid over E: for each E, a straight-line fit of log(y - E) on u = log(x / x0)
    gives (log a, b). Returned as (cost, theta), best first."""
    E = np.linspace(0.0, e_hi, n_grid, endpoint=False)[:, None]  # (G, 1)
    r = np.log(y[None, :] - E)  # (G, n)
    uc = u - u.mean()
    slope = (r - r.mean(axis=1, keepdims=True)) @ uc / float(uc @ uc)
    b = np.clip(-slope, B_BOUNDS[0] * 10, B_BOUNDS[1] * 0.999)
    log_a = np.mean(r + b[:, None] * u[None, :], axis=1)
    thetas = np.stack([log_a, b, E[:, 0]], axis=1)
    costs = [_cost(t, u, np.log(y)) for t in thetas]
    order = np.argsort(costs)
    return [(float(costs[i]), thetas[i]) for i in order]


def _cost(theta: np.ndarray, u: np.ndarray, log_y: np.ndarray) -> float:
    with np.errstate(all="ignore"):
        r = np.log(_model(theta, u)) - log_y
    c = float(0.5 * np.sum(r * r))
    return c if math.isfinite(c) else math.inf


def _solve(u: np.ndarray, y: np.ndarray, *, n_grid: int = 32, starts: int = 4,
           extra: Sequence[np.ndarray] = ()) -> Optional[np.ndarray]:
    """Best (log a, b, E) by bounded least squares from the ``starts`` best of the E-grid seeds and
    ``extra``; None if no start converged."""
    e_hi = float(np.min(y)) * (1 - 1e-6)
    lb = np.array([-50.0, B_BOUNDS[0], 0.0])
    ub = np.array([50.0, B_BOUNDS[1], e_hi])
    log_y = np.log(y)

    def resid(theta: np.ndarray) -> np.ndarray:
        return np.log(_model(theta, u)) - log_y

    def jac(theta: np.ndarray) -> np.ndarray:
        p = np.exp(theta[0] - theta[1] * u)
        m = p + theta[2]
        return np.stack([p / m, -u * p / m, 1.0 / m], axis=1)

    cands = _seeds(u, y, e_hi, n_grid) + [(_cost(np.asarray(t, float), u, log_y), np.asarray(t, float))
                                          for t in extra]
    cands.sort(key=lambda c: c[0])
    best, best_cost = None, math.inf
    for _, theta0 in cands[:starts]:
        theta0 = np.clip(theta0, lb + 1e-9 * (ub - lb), ub - 1e-9 * (ub - lb))
        try:
            res = least_squares(resid, theta0, jac=jac, bounds=(lb, ub), method="trf", x_scale="jac",
                                xtol=1e-10, ftol=1e-12, gtol=1e-10, max_nfev=500)
        except (ValueError, FloatingPointError):
            continue
        if np.all(np.isfinite(res.x)) and res.cost < best_cost:
            best, best_cost = res.x, res.cost
    return best


def fit_power_law(x: Iterable[float], y: Iterable[float], *, bootstrap: int = 1000, seed: int = 0,
                  method: str = "pairs", level: float = 0.95) -> PowerLawFit:
    """Fit L(x) = A * x^(-b) + E to positive (x, y); 95% percentile bootstrap intervals on A, b, E.

    ``method``: ``"pairs"`` resamples (x, y) points with replacement; ``"residuals"`` keeps x and adds
    resampled log-residuals to the fitted curve (steadier with very few points, but assumes the model form).
    ``bootstrap=0`` skips the intervals (they are then NaN).
    """
    x = np.asarray(list(x), dtype=float)
    y = np.asarray(list(y), dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D and the same length, got {x.shape} and {y.shape}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if np.any(x <= 0) or np.any(y <= 0):
        raise ValueError("power-law fit needs positive x and y")
    if len(np.unique(x)) < 3:
        raise ValueError(f"need at least 3 distinct x values to fit A, b and E, got {len(np.unique(x))}")
    if method not in ("pairs", "residuals"):
        raise ValueError(f"method must be 'pairs' or 'residuals', not {method!r}")
    log_x0 = float(np.mean(np.log(x)))
    u = np.log(x) - log_x0
    theta = _solve(u, y)
    if theta is None:
        raise RuntimeError("power-law fit did not converge from any starting point")
    log_a, b, E = (float(t) for t in theta)
    A = math.exp(log_a + b * log_x0)
    pred = _model(theta, u)
    ss_res = float(np.sum((y - pred) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1 - ss_res / ss_tot if ss_tot > 0 else math.nan
    rmse = math.sqrt(ss_res / len(y))

    samples = []
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        log_resid = np.log(y) - np.log(pred)
        for _ in range(bootstrap):
            if method == "pairs":
                idx = rng.integers(0, len(x), len(x))
                if len(np.unique(idx)) < 3:
                    continue
                ub_, yb = u[idx], y[idx]
            else:
                ub_ = u
                yb = pred * np.exp(rng.choice(log_resid, len(y), replace=True))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tb = _solve(ub_, yb, n_grid=16, starts=1, extra=[theta])
            if tb is not None:
                samples.append([math.exp(tb[0] + tb[1] * log_x0), tb[1], tb[2]])
    boot = np.array(samples, dtype=float).reshape(-1, 3)
    alpha = (1 - level) / 2
    ci: dict[str, tuple[float, float]] = {}
    for j, name in enumerate(PARAMS):
        if len(boot) >= 10:
            lo, hi = np.quantile(boot[:, j], [alpha, 1 - alpha])
            ci[name] = (float(lo), float(hi))
        else:
            ci[name] = (math.nan, math.nan)
    return PowerLawFit(A=A, b=b, E=E, r2=r2, ci=ci, n=len(x), rmse=rmse, n_boot=len(boot),
                       x_range=(float(x.min()), float(x.max())), level=level, boot=boot if len(boot) else None)


# --------------------------------------------------------------------------------------- run-level helpers
def loss_vs_compute_points(runs: Sequence[Any], *, finished_only: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(training FLOPs, final val loss) of each run that has both."""
    pts = [(r.compute, r.final_val_loss) for r in runs
           if (r.status == "finished" or not finished_only) and r.compute and r.final_val_loss]
    return np.array([p[0] for p in pts], dtype=float), np.array([p[1] for p in pts], dtype=float)


def loss_vs_data_points(runs: Sequence[Any], *, finished_only: bool = True,
                        along_curve: bool = False, min_fraction: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, val loss) points: the final point of each run, or (``along_curve``) every evaluation past
    ``min_fraction`` of each run's tokens (early evaluations sit in warmup and bend the fit)."""
    xs: list[float] = []
    ys: list[float] = []
    for r in runs:
        if finished_only and r.status != "finished":
            continue
        if along_curve:
            t, v = r.curve("val_loss", "tokens")
            if t.size == 0:
                t, v = r.curve("val_loss_1x", "tokens")
            if t.size:
                sel = t >= min_fraction * t.max()
                xs.extend(t[sel & (t > 0)])
                ys.extend(v[sel & (t > 0)])
        elif r.tokens and r.final_val_loss:
            xs.append(r.tokens)
            ys.append(r.final_val_loss)
    return np.array(xs, dtype=float), np.array(ys, dtype=float)


def fit_loss_vs_compute(runs: Sequence[Any], *, finished_only: bool = True, **kwargs: Any) -> PowerLawFit:
    """L(C) = A * C^(-b) + E over the final validation loss and total training FLOPs of each run."""
    x, y = loss_vs_compute_points(runs, finished_only=finished_only)
    return fit_power_law(x, y, **kwargs)


def fit_loss_vs_data(runs: Sequence[Any], *, finished_only: bool = True, along_curve: bool = False,
                     min_fraction: float = 0.2, **kwargs: Any) -> PowerLawFit:
    """L(D) = A * D^(-b) + E over training tokens: final losses of runs of one model size at several token
    budgets, or (``along_curve``) the evaluations along training."""
    x, y = loss_vs_data_points(runs, finished_only=finished_only, along_curve=along_curve,
                               min_fraction=min_fraction)
    return fit_power_law(x, y, **kwargs)
