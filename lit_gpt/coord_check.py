"""Coordinate check: do activations keep their size as depth (and with it width) grows?

For every depth L (width w = ar·L) and every parameterization, this builds ``GPT(Config)`` with the real
initialization, trains it a few steps with the real optimizer groups (``scaling.transfer`` +
``scaling.param_groups``, AdamW, gradient clipping) on the same rows of the prepared data with the same seed,
and records, on one fixed probe batch before the first step and after every step, per coordinate:

* ``rms``   -- root mean square of the activation (per layer, then averaged over the layers of that kind);
* ``delta`` -- root mean square of its change since step 0 (what training has added).

Coordinates: ``embedding`` (wte output), ``branch.<mixer>`` and ``branch.mlp`` (each residual-branch output
*after* the branch multiplier, i.e. what is added to the residual stream), ``branch_raw.<...>`` (the same
before the multiplier), ``block`` (block output = residual stream) and ``logits`` (lm_head output).

``flatness`` of a coordinate = max/min over depths at the last step (1.0 = perfectly depth-invariant).

    python -m lit_gpt.coord_check --train_model transformer --train_name scaling_mup --depths 2 4 8 16
    python -m lit_gpt.coord_check --train_model sambay --depths 4 8 16 --ar 16 --out out/coord_sambay

Writes ``OUT/coord_check.json`` (every number + flatness) and ``OUT/coord_check.png`` (rows: parameterization
x {rms, delta}; columns: coordinates; x: depth on a log axis (width = ar·depth); one line per step).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from lit_gpt.config import Config
from lit_gpt.scaling import BaseHyperparameters, Launch, param_groups, transfer

# A parameterization entry: "sp" | "mup" | "mup++" | "mup++/hidden" (μP++ with the depth LR factor on hidden
# matrices only -- SPEC §3's improvement option, ``--depth_lr_scope hidden``).
PARAMETERIZATIONS = ("sp", "mup", "mup++")
LABELS = {"sp": "SP", "mup": "μP", "mup++": "μP++", "mup++/hidden": "μP++ (depth LR on hidden only)"}
DEFAULT_THRESHOLD = 1.5


def parse_parameterization(entry: str) -> tuple[str, str]:
    """'mup++/hidden' -> ('mup++', 'hidden'); 'sp' -> ('sp', 'all')."""
    p, _, scope = entry.partition("/")
    if p not in PARAMETERIZATIONS or scope not in ("", "all", "hidden") or (scope == "hidden" and p != "mup++"):
        raise ValueError(f"parameterization {entry!r} must be one of sp, mup, mup++, mup++/hidden")
    return p, scope or "all"


def parameterization_from_train_name(train_name: str) -> str:
    """SPEC §3: 'ori_mup' -> μP, 'mup' -> μP++, else SP."""
    return "mup" if "ori_mup" in train_name else ("mup++" if "mup" in train_name else "sp")


# ------------------------------------------------------------------------------------------------ data
def load_rows(data_dir: str, seq_len: int, n_rows: int, seed: int) -> torch.Tensor:
    """``n_rows`` rows of ``seq_len + 1`` tokens from the prepared train split (deterministic for a seed)."""
    from lit_gpt.data.loader import build_train_loader

    loader = build_train_loader(data_dir, seq_len=seq_len, micro_batch=1, seed=seed, num_workers=0)
    rows = []
    for batch in loader:
        rows.append(batch[0])
        if len(rows) == n_rows:
            break
    if len(rows) < n_rows:
        raise ValueError(f"{data_dir} gives only {len(rows)} rows of {seq_len + 1} tokens; need {n_rows}: "
                         f"lower --ctx_len, --batch_size or --steps")
    return torch.stack(rows).long()


def synthetic_rows(vocab: int, seq_len: int, n_rows: int, seed: int) -> torch.Tensor:
    """Random tokens (for tests without prepared data)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n_rows, seq_len + 1), generator=g)


# ------------------------------------------------------------------------------------------------ recording
class Recorder:
    """Forward hooks that keep, per coordinate, the list of per-layer activations of the last forward."""

    def __init__(self, model: torch.nn.Module):
        self.current: dict[str, list[torch.Tensor]] = {}
        self.active = False
        self.handles = []
        h = self.handles
        h.append(model.transformer.wte.register_forward_hook(self._hook("embedding")))
        for block in model.transformer.h:
            mult = float(block.residual_multiplier)
            kind = block.layer.mixer
            h.append(block.mixer.register_forward_hook(self._hook(f"branch.{kind}", mult)))
            if getattr(block, "mlp", None) is not None:
                h.append(block.mlp.register_forward_hook(self._hook("branch.mlp", mult)))
            h.append(block.register_forward_hook(self._hook("block")))
        h.append(model.lm_head.register_forward_hook(self._hook("logits")))

    def _hook(self, name: str, multiplier: Optional[float] = None):
        def hook(_module, _inputs, output):
            if not self.active:
                return
            out = output[0] if isinstance(output, tuple) else output
            out = out.detach().float()
            if multiplier is None:
                self.current.setdefault(name, []).append(out.clone())
            else:
                self.current.setdefault(name.replace("branch.", "branch_raw.", 1), []).append(out.clone())
                self.current.setdefault(name, []).append(out * multiplier)
        return hook

    def capture(self, model: torch.nn.Module, probe: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        self.current = {}
        self.active = True
        try:
            with torch.no_grad():
                model(probe)
        finally:
            self.active = False
        return self.current

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def rms(t: torch.Tensor) -> float:
    return float(t.pow(2).mean().sqrt())


@dataclass
class CoordResult:
    """One (parameterization, depth) model: per coordinate, per step, the layer-averaged rms and delta."""

    parameterization: str
    depth: int
    width: int
    n_params: int
    lr: float
    rms: dict[str, list[float]] = field(default_factory=dict)
    delta: dict[str, list[float]] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)


def build_config(arch: str, depth: int, ar: int, parameterization: str, vocab: int, seq_len: int, d0: int,
                 **overrides: Any) -> Config:
    return Config.from_arch(arch, depth, ar=ar, parameterization=parameterization, vocab_size=vocab,
                            block_size=seq_len, base_depth=d0, **overrides)


def run_one(arch: str, depth: int, ar: int, entry: str, rows: torch.Tensor, *, steps: int, batch_size: int,
            base: BaseHyperparameters, vocab: int, seed: int, config_overrides: Optional[dict[str, Any]] = None,
            device: str = "cpu") -> CoordResult:
    """Train one model ``steps`` steps on rows[1:] (batches of ``batch_size``) recording on rows[:batch_size]."""
    p, scope = parse_parameterization(entry)
    seq_len = rows.shape[1] - 1
    config = build_config(arch, depth, ar, p, vocab, seq_len, base.d0, **(config_overrides or {}))
    torch.manual_seed(seed)
    from lit_gpt.model import GPT

    model = GPT(config).to(device)
    rows = rows.to(device)
    launch = Launch(nodes=1, devices=1, micro_batch=batch_size, seq_len=seq_len)
    plan = transfer(base, config, launch, total_batch_tokens=batch_size * seq_len, max_steps=steps,
                    depth_lr_scope=scope, run_name=f"coord_{entry}_{arch}_d{depth}")
    groups = param_groups(model, plan)  # constant lr at the transferred peak: lr = plan.lr × group multiplier
    optimizer = torch.optim.AdamW(groups, lr=plan.lr, betas=plan.betas, eps=plan.eps)
    recorder = Recorder(model)
    probe = rows[:batch_size, :-1]
    result = CoordResult(entry, depth, config.n_embd, sum(t.numel() for t in model.parameters()), plan.lr)
    reference: dict[str, list[torch.Tensor]] = {}
    model.train()
    for step in range(steps + 1):
        acts = recorder.capture(model, probe)
        if step == 0:
            reference = acts
        for name, layers in acts.items():
            result.rms.setdefault(name, []).append(sum(rms(a) for a in layers) / len(layers))
            result.delta.setdefault(name, []).append(
                sum(rms(a - r) for a, r in zip(layers, reference[name])) / len(layers))
        if step == steps:
            break
        start = batch_size * (1 + step)
        batch = rows[start:start + batch_size]
        loss = model(batch[:, :-1], targets=batch[:, 1:]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), plan.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        result.losses.append(float(loss.detach()))
    recorder.remove()
    return result


# ------------------------------------------------------------------------------------------------ analysis
def flatness(results: Sequence[CoordResult], metric: str = "rms", step: int = -1) -> dict[str, float]:
    """max/min over depths of each coordinate at ``step`` (inf when a value is 0 or not finite)."""
    names = sorted(set().union(*(getattr(r, metric).keys() for r in results)))
    out = {}
    for name in names:
        values = [getattr(r, metric)[name][step] for r in results if name in getattr(r, metric)]
        if len(values) < 2:
            continue
        lo, hi = min(values), max(values)
        out[name] = hi / lo if lo > 0 and math.isfinite(hi) else float("inf")
    return out


def depth_scaled_branch_flatness(results: Sequence[CoordResult], d0: int) -> dict[str, float]:
    """Flatness of each raw branch's update times sqrt(L/d0): μP++ scales every hidden matrix's LR by sqrt(d0/L) so
    that a branch's own update shrinks as 1/sqrt(L) (the 2L branches then sum to an O(1) change of the residual
    stream); with that designed factor divided out, the updates should be depth-invariant."""
    scaled = [CoordResult(r.parameterization, r.depth, r.width, r.n_params, r.lr,
                          delta={c: [v * math.sqrt(r.depth / d0) for v in vs] for c, vs in r.delta.items()
                                 if c.startswith("branch_raw")})
              for r in results]
    return flatness(scaled, "delta")


def summarize(results: Sequence[CoordResult], threshold: float = DEFAULT_THRESHOLD,
              d0: Optional[int] = None) -> dict[str, Any]:
    d0 = d0 or min(r.depth for r in results)
    by_p: dict[str, list[CoordResult]] = {}
    for r in results:
        by_p.setdefault(r.parameterization, []).append(r)
    summary: dict[str, Any] = {}
    for p, rs in by_p.items():
        rs = sorted(rs, key=lambda r: r.depth)
        fl = {"rms": flatness(rs, "rms"), "delta": flatness(rs, "delta")}
        tracked = {f"{m}:{c}": v for m, vals in fl.items() for c, v in vals.items() if not c.startswith("branch_raw")}
        worst = max(tracked.items(), key=lambda kv: kv[1]) if tracked else (None, float("nan"))
        # depth-μP's Θ(1) quantities: a branch's own output before the 1/sqrt(2L) multiplier, not after it
        invariant = {f"{m}:{c}": v for m, vals in fl.items() for c, v in vals.items()
                     if c.startswith("branch_raw") or not c.startswith("branch")}
        worst_inv = max(invariant.items(), key=lambda kv: kv[1]) if invariant else (None, float("nan"))
        summary[p] = {
            "depths": [r.depth for r in rs], "widths": [r.width for r in rs],
            "flatness": fl, "worst": {"coordinate": worst[0], "ratio": worst[1]},
            "within_threshold": bool(tracked) and all(v <= threshold for v in tracked.values()),
            "worst_invariant": {"coordinate": worst_inv[0], "ratio": worst_inv[1]},
            "invariants_within_threshold": bool(invariant) and all(v <= threshold for v in invariant.values()),
            "final_train_loss": {r.depth: (r.losses[-1] if r.losses else None) for r in rs},
        }
        if p.startswith("mup++"):
            summary[p]["branch_raw_delta_x_sqrt_depth"] = depth_scaled_branch_flatness(rs, d0)
    return summary


def coordinate_order(names: Sequence[str]) -> list[str]:
    order = {"embedding": 0, "block": 8, "logits": 9}

    def key(n: str) -> tuple[int, str]:
        if n in order:
            return order[n], n
        return (5 if n.endswith(".mlp") else 3), n

    return sorted(names, key=key)


def plot(results: Sequence[CoordResult], path: str, title: str = "", raw: bool = False, dpi: int = 72) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entries = list(dict.fromkeys(r.parameterization for r in results))
    names = coordinate_order([n for n in set().union(*(r.rms.keys() for r in results))
                              if raw or not n.startswith("branch_raw")])
    rows = [(e, m) for e in entries for m in ("rms", "delta")]
    fig, axes = plt.subplots(len(rows), len(names), figsize=(2.3 * len(names), 1.9 * len(rows)), squeeze=False)
    n_steps = max(len(r.losses) for r in results) + 1
    cmap = plt.get_cmap("viridis")
    for i, (entry, metric) in enumerate(rows):
        rs = sorted((r for r in results if r.parameterization == entry), key=lambda r: r.depth)
        fl = flatness(rs, metric)
        for j, name in enumerate(names):
            ax = axes[i][j]
            depths = [r.depth for r in rs if name in r.rms]
            for step in range(1 if metric == "delta" else 0, n_steps):
                ys = [getattr(r, metric)[name][step] for r in rs if name in r.rms]
                if any(y > 0 for y in ys):
                    ax.plot(depths, ys, "o-", ms=2.5, lw=1.1, color=cmap(step / max(1, n_steps - 1)),
                            label=f"step {step}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(depths)
            ax.set_xticklabels([f"{d}\n{r.width}" for d, r in zip(depths, rs)], fontsize=7)
            ax.tick_params(axis="y", labelsize=7)
            ratio = fl.get(name)
            head = f"{LABELS.get(entry, entry)} · {metric}" if j == 0 else metric
            ax.set_title(f"{head}\n{name}  (×{ratio:.2f})" if ratio is not None else f"{head}\n{name}", fontsize=8)
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6, loc="best")
    fig.supxlabel("depth L (top) / width ar·L (bottom), log scale", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    _shrink_png(path)


def _shrink_png(path: str) -> None:
    """Palette-quantize the PNG (line plots need few colours) so figures stay small enough to commit."""
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(path) as im:
        small = im.convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def format_summary(summary: dict[str, Any], threshold: float = DEFAULT_THRESHOLD) -> str:
    lines = []
    for p, s in summary.items():
        ok = "PASS" if s["within_threshold"] else "FAIL"
        lines.append(f"{LABELS.get(p, p)}: depths {s['depths']} (widths {s['widths']}); worst max/min at the last "
                     f"step {s['worst']['ratio']:.2f} ({s['worst']['coordinate']}) -> {ok} at {threshold}x; "
                     f"depth-μP invariants (embedding, branch_raw.*, block, logits): worst "
                     f"{s['worst_invariant']['ratio']:.2f} ({s['worst_invariant']['coordinate']}) -> "
                     f"{'PASS' if s['invariants_within_threshold'] else 'FAIL'}")
        for metric in ("rms", "delta"):
            cells = ", ".join(f"{c} {v:.2f}" for c, v in s["flatness"][metric].items())
            lines.append(f"    {metric:5s}: {cells}")
        if s.get("branch_raw_delta_x_sqrt_depth"):
            cells = ", ".join(f"{c} {v:.2f}" for c, v in s["branch_raw_delta_x_sqrt_depth"].items())
            lines.append(f"    raw-branch delta x sqrt(L/d0) (the rule's designed 1/sqrt(L) divided out): {cells}")
    return "\n".join(lines)


def flatness_markdown(summary: dict[str, Any]) -> str:
    """One row per parameterization, one column per coordinate: max/min over depths at the last step (rms / delta)."""
    names = coordinate_order(sorted({c for s in summary.values() for c in s["flatness"]["rms"]}))
    lines = ["| parameterization | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for p, s in summary.items():
        cells = [f"{s['flatness']['rms'].get(c, float('nan')):.2f} / {s['flatness']['delta'].get(c, float('nan')):.2f}"
                 for c in names]
        lines.append(f"| {LABELS.get(p, p)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m lit_gpt.coord_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--train_model", default="transformer", help="architecture (lit_gpt.config.ARCHS)")
    ap.add_argument("--train_name", default="scaling_mup",
                    help="only used to name the output; every parameterization runs unless --parameterizations")
    ap.add_argument("--depths", type=int, nargs="+", default=[2, 4, 8, 16])
    ap.add_argument("--ar", type=int, default=16, help="aspect ratio: width = ar x depth (default 16 for CPU)")
    ap.add_argument("--parameterizations", nargs="+", default=list(PARAMETERIZATIONS),
                    help="any of sp mup mup++ mup++/hidden (default: sp mup mup++)")
    ap.add_argument("--steps", type=int, default=5, help="optimizer steps after the initial record")
    ap.add_argument("--batch_size", type=int, default=4, help="sequences per step (and in the probe batch)")
    ap.add_argument("--ctx_len", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3, help="base peak LR eta0 (held constant, no warmup)")
    ap.add_argument("--d0", type=int, default=None, help="base depth (default: the smallest depth)")
    ap.add_argument("--data_dir", default=os.path.join("data", "builtin"))
    ap.add_argument("--synthetic", action="store_true", help="random tokens instead of --data_dir")
    ap.add_argument("--vocab_size", type=int, default=None, help="with --synthetic (default 4096)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, or auto (cuda when available); fp32 throughout")
    ap.add_argument("--out", default=None, help="output folder (default out/coord_check/<train_model>)")
    ap.add_argument("--raw", action="store_true", help="also plot the branch outputs before the multiplier")
    ap.add_argument("--dpi", type=int, default=72)
    ap.add_argument("--replot", default=None, metavar="JSON",
                    help="redraw the figure and summary from a coord_check.json (no training)")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.replot:
        return replot(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        entries = [e for e in args.parameterizations]
        for e in entries:
            parse_parameterization(e)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    depths = sorted(set(args.depths))
    d0 = args.d0 or depths[0]
    n_rows = args.batch_size * (args.steps + 1)
    if args.synthetic:
        vocab = args.vocab_size or 4096
        rows = synthetic_rows(vocab, args.ctx_len, n_rows, args.seed)
    else:
        from lit_gpt.data.loader import read_meta

        if not os.path.exists(os.path.join(args.data_dir, "meta.json")):
            print(f"error: {args.data_dir} is not prepared: run `python -m lit_gpt.data.prepare --builtin "
                  f"--output_dir {args.data_dir}` (or pass --synthetic)", file=sys.stderr)
            return 2
        vocab = args.vocab_size or int(read_meta(args.data_dir)["vocab_size"])
        rows = load_rows(args.data_dir, args.ctx_len, n_rows, args.seed)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    base = BaseHyperparameters(d0=d0, eta0=args.lr, b0=args.batch_size * args.ctx_len, warmup_tokens0=0)
    out = args.out or os.path.join("out", "coord_check", args.train_model)
    os.makedirs(out, exist_ok=True)
    results: list[CoordResult] = []
    t0 = time.time()
    for entry in entries:
        for depth in depths:
            r = run_one(args.train_model, depth, args.ar, entry, rows, steps=args.steps, batch_size=args.batch_size,
                        base=base, vocab=vocab, seed=args.seed, device=device)
            results.append(r)
            print(f"{LABELS.get(entry, entry):>6} d{depth:<3} w{r.width:<5} {r.n_params / 1e6:7.2f}M params, "
                  f"lr {r.lr:.2e}: loss {r.losses[0]:.3f} -> {r.losses[-1]:.3f}  ({time.time() - t0:.0f} s)",
                  flush=True)
    summary = summarize(results, args.threshold, d0)
    payload = {
        "arch": args.train_model, "train_name": args.train_name, "depths": depths, "ar": args.ar, "d0": d0,
        "steps": args.steps, "batch_size": args.batch_size, "ctx_len": args.ctx_len, "eta0": args.lr,
        "seed": args.seed, "device": device, "threshold": args.threshold, "data": "synthetic" if args.synthetic else args.data_dir,
        "summary": summary,
        "results": [r.__dict__ for r in results],
    }
    with open(os.path.join(out, "coord_check.json"), "w") as f:
        json.dump(payload, f, indent=1, default=float)
    title = (f"coordinate check: {args.train_model}, ar {args.ar}, d0 {d0}, eta0 {args.lr:g}, "
             f"{args.steps} Adam steps of {args.batch_size}x{args.ctx_len} tokens")
    plot(results, os.path.join(out, "coord_check.png"), title=title, raw=args.raw, dpi=args.dpi)
    with open(os.path.join(out, "flatness.md"), "w") as f:
        f.write(flatness_markdown(summary) + "\n")
    print(format_summary(summary, args.threshold))
    print(f"wrote {out}/coord_check.json, coord_check.png and flatness.md ({time.time() - t0:.0f} s)")
    return 0


def replot(args: argparse.Namespace) -> int:
    with open(args.replot) as f:
        payload = json.load(f)
    results = [CoordResult(**r) for r in payload["results"]]
    out = args.out or os.path.dirname(os.path.abspath(args.replot))
    os.makedirs(out, exist_ok=True)
    title = (f"coordinate check: {payload['arch']}, ar {payload['ar']}, d0 {payload['d0']}, eta0 {payload['eta0']:g}, "
             f"{payload['steps']} Adam steps of {payload['batch_size']}x{payload['ctx_len']} tokens")
    plot(results, os.path.join(out, "coord_check.png"), title=title, raw=args.raw, dpi=args.dpi)
    summary = summarize(results, payload.get("threshold", args.threshold), payload.get("d0"))
    with open(os.path.join(out, "flatness.md"), "w") as f:
        f.write(flatness_markdown(summary) + "\n")
    print(format_summary(summary, args.threshold))
    print(f"wrote {out}/coord_check.png and flatness.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
