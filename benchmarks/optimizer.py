"""AdamW step on a real model's parameter shapes: torch's fused multi-tensor kernel vs ``TritonAdamW``.

    python benchmarks/optimizer.py --train_model transformer --depth 16 [--json out.json]

Both optimizers get identical parameters, gradients and μP groups; each step is timed between CUDA events with
the device guard armed as pretrain arms it (``grad_scale`` from a clip, ``found_inf``). Prints ms per step,
the bytes an fp32 AdamW must move (param, grad, exp_avg, exp_avg_sq read; three written: 28 B per parameter)
and the bandwidth that implies, plus the largest relative difference of the parameters after the steps.
``--cpu`` (with ``TRITON_INTERPRET=1``) is a smoke test of the same code on a tiny model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_params(train_model: str, depth: int, device: torch.device, seed: int = 0, ar=None):
    """(name, parameter) pairs and gradients of the model's shapes, random, on ``device``."""
    from lit_gpt.config import Config

    config = Config.from_arch(train_model, depth, ar=ar)
    with torch.device("meta"):
        from lit_gpt.model import GPT

        shapes = [(n, p.shape) for n, p in GPT(config).named_parameters()]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    params = [(n, torch.randn(s, generator=gen).mul_(0.02).to(device)) for n, s in shapes]
    grads = [torch.randn(s, generator=gen).mul_(1e-3).to(device) for _, s in shapes]
    return params, grads


def groups_of(named):
    """Two groups split by the μP rule's own classification (lit_gpt.scaling.param_groups), with fixed lr/decay."""
    from lit_gpt.scaling import is_vector_like

    vector = [p for n, p in named if is_vector_like(n)]
    matrix = [p for n, p in named if not is_vector_like(n)]
    return [{"params": matrix, "weight_decay": 0.1, "lr": 1e-3}, {"params": vector, "weight_decay": 0.0, "lr": 2e-3}]


def run(kind: str, named, grads, steps: int, warmup: int, device: torch.device):
    from lit_gpt.kernels.adamw import TritonAdamW
    from lit_gpt.kernels.fused_ops import clip_and_guard_

    named = [(n, torch.nn.Parameter(p.clone())) for n, p in named]
    for (_, p), g in zip(named, grads):
        p.grad = g.clone()
    cls = TritonAdamW if kind == "triton" else torch.optim.AdamW
    opt = cls(groups_of(named), betas=(0.9, 0.95), eps=1e-8, fused=True)
    cuda = device.type == "cuda"
    times = []
    for i in range(warmup + steps):
        for (_, p), g in zip(named, grads):  # fresh gradients each step, as in training (torch's kernel unscales
            p.grad.copy_(g)                   # .grad in place, this one does not)
        clip_and_guard_(opt, [p for _, p in named], 1.0)  # armed as the Trainer arms it (--guard device)
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        opt.step()
        host_ms = (time.perf_counter() - t0) * 1e3
        if cuda:
            end.record()
            torch.cuda.synchronize()
            ms = start.elapsed_time(end)
        else:
            ms = host_ms
        if i >= warmup:
            times.append((ms, host_ms))
    params = [p.detach() for _, p in named]
    del opt, named
    return statistics.median(t for t, _ in times), statistics.median(h for _, h in times), params


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train_model", default="transformer")
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--ar", type=int, default=None, help="aspect ratio (width per layer) for a smaller model")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--cpu", action="store_true", help="tiny smoke test on CPU (set TRITON_INTERPRET=1)")
    ap.add_argument("--launch", default="", help="extra Triton launch shapes to time, e.g. 2048x4,8192x8 "
                    "(elements per program x warps; the module's BLOCK/WARPS are the default row)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    device = torch.device("cpu" if args.cpu or not torch.cuda.is_available() else "cuda")
    named, grads = build_params(args.train_model, args.depth, device, ar=args.ar)
    n = sum(p.numel() for _, p in named)
    bytes_moved = 28 * n
    rows, finals = [], {}
    import lit_gpt.kernels.adamw as adamw

    default_launch = (adamw.BLOCK, adamw.WARPS)
    launches = [tuple(int(v) for v in item.split("x")) for item in args.launch.split(",") if item]
    for kind, launch in [("torch_fused", None), ("triton", default_launch)] + [("triton", x) for x in launches]:
        if launch is not None:
            adamw.BLOCK, adamw.WARPS = launch
        name = kind if launch in (None, default_launch) else f"triton_{launch[0]}x{launch[1]}"
        ms, host_ms, finals[name] = run(kind, named, grads, args.steps, args.warmup, device)
        rows.append({"optimizer": name, "ms": round(ms, 3), "host_ms": round(host_ms, 3),
                     "TB_per_s": round(bytes_moved / ms / 1e9, 3)})
    adamw.BLOCK, adamw.WARPS = default_launch
    diff = max(float(((a - b).abs().max() / b.abs().max().clamp_min(1e-30))) for name in finals
               for a, b in zip(finals[name], finals["torch_fused"]))
    from benchmarks.timing import environment

    result = {"benchmark": "optimizer", **environment(device), "train_model": args.train_model, "depth": args.depth,
              "params": n, "steps": args.steps, "rows": rows, "max_rel_diff": diff}
    for r in rows:
        print(f"{r['optimizer']:18s} {r['ms']:9.3f} ms  host {r['host_ms']:7.3f} ms  {r['TB_per_s']:6.3f} TB/s "
              f"({n:,} params, 28 B each)")
    print(f"largest parameter difference after {args.warmup + args.steps} steps (relative to max |p|): {diff:.2e}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
