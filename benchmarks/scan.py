"""Selective-scan benchmark: parity, forward / forward+backward time, peak memory, effective bandwidth.

GPU (default):  python benchmarks/scan.py --json scan.json [--sweep]
CPU smoke test: python benchmarks/scan.py --cpu --small

Shapes: batch * T tokens in {8k, 16k, 32k, 64k} (T = --seq-len, default 4096), d_inner in {2048, 4096},
d_state 16, bf16 x / dt / B / C, fp32 A / D / dt_bias (as in the Mamba layer).  Every implementation that
can run here is timed (triton, chunked, mamba_ssm when importable; reference only with --cpu).

Effective bandwidth counts the bytes an ideal fused kernel must move (no recomputation, no scratch):
forward reads x, dt, B, C and writes y; backward also reads dy and writes dx, ddt, dB, dC (B/C grads in
fp32).  It is compared with --peak-bw (3.0 TB/s: measured H100 SXM device-to-device copy bandwidth).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import cuda_peak_mib, time_call_ms  # noqa: E402
from lit_gpt.kernels import selective_scan as ss  # noqa: E402


def make_inputs(b, T, d, n, dtype, device, seed=0, requires_grad=True):
    g = torch.Generator(device="cpu").manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    x = r(b, T, d).to(device, dtype)
    dt = (r(b, T, d) * 0.5 - 1.0).to(device, dtype)
    A = -torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1).to(device)  # Mamba init: A_log = log(1..n)
    A = A * torch.exp(torch.rand(d, n, generator=g) * 0.2).to(device)
    B = r(b, T, n).to(device, dtype)
    C = r(b, T, n).to(device, dtype)
    D = torch.ones(d, device=device)
    bias = (torch.rand(d, generator=g) * 2 - 4).to(device)  # softplus^-1 of dt in [1e-3, 1e-1]-ish
    ts = [x, dt, A, B, C, D, bias]
    if requires_grad:
        for t in ts:
            t.requires_grad_(True)
    return ts


def call(impl, ts, reset=None):
    x, dt, A, B, C, D, bias = ts
    return ss.selective_scan(x, dt, A, B, C, D, dt_bias=bias, reset=reset, impl=impl)


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


BUDGET_S = 1.0  # per measurement


def timeit(fn, device, budget_s=None, min_reps=3, max_reps=25):
    """Median wall time in ms (CUDA events on GPU)."""
    budget_s = BUDGET_S if budget_s is None else budget_s
    fn()  # warmup / compile
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - t0
    reps = int(max(min_reps, min(max_reps, budget_s / max(first, 1e-6))))
    return statistics.median([time_call_ms(fn, device == "cuda") for _ in range(reps)])


def fwd_bwd_fn(impl, ts, gy, reset=None):
    def f():
        y = call(impl, ts, reset)
        torch.autograd.grad(y, ts, gy)
    return f


def fwd_fn(impl, ts, reset=None):
    def f():
        with torch.no_grad():
            call(impl, ts, reset)
    return f


def peak_mem_mb(fn, device):
    if device != "cuda":
        return float("nan")
    return cuda_peak_mib(fn)


def ideal_bytes(b, T, d, n, elt):
    fwd = b * T * (3 * d * elt + 2 * n * elt)  # x, dt, y ; B, C
    bwd = b * T * (5 * d * elt + 2 * n * elt + 2 * n * 4)  # x, dt, dy, dx, ddt ; B, C, dB, dC (fp32)
    return fwd, bwd


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def parity(impls, device, shape, dtype, with_reset=True):
    """max |impl - reference| / max |reference| for y and all grads (reference in fp32 from the same inputs)."""
    b, T, d, n = shape
    ts = make_inputs(b, T, d, n, dtype, device, seed=1)
    reset = None
    if with_reset:
        reset = torch.zeros(b, T, dtype=torch.bool, device=device)
        reset[:, T // 3] = True
    ref_ts = [t.detach().float().requires_grad_(True) for t in ts]
    gy = torch.randn(b, T, d, device=device, dtype=dtype)
    y_ref = call("reference", ref_ts, reset)
    g_ref = torch.autograd.grad(y_ref, ref_ts, gy.float())
    out = {}
    for impl in impls:
        if impl == "mamba_ssm" and with_reset:
            continue
        y = call(impl, ts, reset)
        g = torch.autograd.grad(y, ts, gy)
        errs = {"y": rel_err(y, y_ref)}
        errs.update({"d" + k: rel_err(a, r) for k, a, r in zip(("x", "dt", "A", "B", "C", "D", "dt_bias"), g, g_ref)})
        out[impl] = errs
    return out


def available_impls(device, requested):
    impls = []
    for impl in requested:
        if impl == "mamba_ssm" and not (device == "cuda" and ss.mamba_ssm_available()):
            continue
        if impl == "triton" and not (device == "cuda" and ss.triton_available()):
            continue
        impls.append(impl)
    return impls


SWEEP_STAGES = ("fwd", "tiles", "ckpt", "segments", "regs", "bwd_regs")


def sweep(device, shapes, n, dtype, stage_names=SWEEP_STAGES):
    """Try Triton launch configurations; print the best forward and fwd+bwd ones per shape (tokens, d, T).
    Stages run in order, each starting from the best configuration so far."""
    from lit_gpt.kernels import selective_scan_triton as st

    default = dict(st.CONFIG)
    tiles = [(32, 1), (64, 2), (128, 4)]  # (BLOCK_D, warps): one channel per lane
    wide = [(64, 1), (128, 2)]  # two channels per lane: half the cross-lane reductions per channel
    all_stages = {
        "fwd": ("fwd", [dict(FWD_BLOCK_D=bd, FWD_WARPS=w) for bd, w in tiles + wide]),
        "tiles": ("bwd", [dict(BWD_BLOCK_T=bt, BWD_BLOCK_D=bd, BWD_WARPS=w) for bt in (1, 2, 4)
                          for bd, w in tiles[:2]]),
        "ckpt": ("bwd", [dict(CKPT_STEPS=c) for c in (8, 16, 32, 64)]),
        "segments": ("bwd", [dict(SEGMENTS=sg) for sg in (0, 1, 2, 4, 8)]),
        "regs": ("fwd", [dict(FWD_MAXNREG=r) for r in (0, 168, 128)]),
        "bwd_regs": ("bwd", [dict(BWD_MAXNREG=r) for r in (0, 168, 128)]),
    }
    stages = [all_stages[name] for name in stage_names]
    out = []
    for tokens, d, T in shapes:
        b = max(1, tokens // T)
        ts = make_inputs(b, T, d, n, dtype, device, seed=2)
        gy = torch.randn(b, T, d, device=device, dtype=dtype)
        st.CONFIG.update(default)
        y0 = call("triton", ts).detach()
        g0 = torch.autograd.grad(call("triton", ts), ts, gy)
        best_cfg = dict(default)
        print(f"\n# sweep tokens={tokens} d_inner={d} (batch {b} x T {T})")
        results = []
        for kind, space in stages:
            base = dict(best_cfg)
            best = None
            for cfg in space:
                st.CONFIG.update(base)
                st.CONFIG.update(cfg)
                try:
                    if kind == "fwd":
                        ms = timeit(fwd_fn("triton", ts), device, budget_s=0.3)
                        ok = rel_err(call("triton", ts).detach(), y0) < 1e-2
                    else:
                        ms = timeit(fwd_bwd_fn("triton", ts, gy), device, budget_s=0.3)
                        g = torch.autograd.grad(call("triton", ts), ts, gy)
                        ok = all(rel_err(a, r) < 2e-2 for a, r in zip(g, g0))
                except Exception as e:  # out of resources etc.
                    print(f"  {kind} {cfg}: failed ({type(e).__name__}: {str(e)[:80]})")
                    continue
                results.append({"kind": kind, "config": dict(st.CONFIG), "changed": cfg, "ms": ms, "ok": ok})
                print(f"  {kind} {cfg}: {ms:.3f} ms{'' if ok else '  MISMATCH'}", flush=True)
                if ok and (best is None or ms < best[1]):
                    best = (cfg, ms)
            if best is not None:
                best_cfg.update(best[0])
        st.CONFIG.update(default)
        changed = {k: v for k, v in best_cfg.items() if default.get(k) != v}
        print("best config:", best_cfg)
        print("as env: " + (" ".join(f"LITSCALE_SCAN_{k}={v}" for k, v in changed.items()) or "(defaults)"))
        out.append({"shape": {"tokens": b * T, "d_inner": d, "d_state": n, "seq_len": T}, "results": results,
                    "best": best_cfg})
        del ts, gy
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="run on CPU (chunked and reference paths)")
    p.add_argument("--small", action="store_true", help="tiny shapes (smoke test)")
    p.add_argument("--json", type=Path, default=None, help="write results here")
    p.add_argument("--impls", default="triton,mamba_ssm,chunked")
    p.add_argument("--seq-len", type=int, default=None)
    p.add_argument("--tokens", default=None, help="comma list of batch*T token counts")
    p.add_argument("--d-inner", default=None, help="comma list")
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--reset", action="store_true", help="also pass a reset mask (document starts)")
    p.add_argument("--peak-bw", type=float, default=3.0e12, help="reference bandwidth in bytes/s")
    p.add_argument("--sweep", action="store_true", help="also sweep Triton launch configurations")
    p.add_argument("--sweep-only", action="store_true", help="only the parity check and the sweep")
    p.add_argument("--sweep-stages", default=",".join(SWEEP_STAGES),
                   help=f"comma-separated sweep stages, in order (default {','.join(SWEEP_STAGES)})")
    p.add_argument("--max-chunked-tokens", type=int, default=1 << 30,
                   help="skip the chunked path above this many tokens (it is slow)")
    args = p.parse_args(argv)
    stage_names = [x for x in args.sweep_stages.split(",") if x]
    unknown = sorted(set(stage_names) - set(SWEEP_STAGES))
    if unknown:
        p.error(f"--sweep-stages: unknown {unknown}; choose from {','.join(SWEEP_STAGES)}")

    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    global BUDGET_S
    if args.small:
        BUDGET_S = 0.1
    if device == "cpu":
        torch.set_num_threads(1 if args.small else max(1, min(8, os.cpu_count() or 1)))
    dtype = getattr(torch, args.dtype)
    n = args.d_state
    if args.small:
        tokens, dims, T = [256, 512], [32, 64], args.seq_len or 128
    else:
        tokens, dims, T = [8192, 16384, 32768, 65536], [2048, 4096], args.seq_len or 4096
    if args.tokens:
        tokens = [int(v) for v in args.tokens.split(",")]
    if args.d_inner:
        dims = [int(v) for v in args.d_inner.split(",")]
    requested = [s for s in args.impls.split(",") if s]
    if device == "cpu" and "reference" not in requested:
        requested.append("reference")
    impls = available_impls(device, requested)
    env = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
           "dtype": args.dtype, "impls": impls}
    try:
        import triton
        env["triton"] = triton.__version__
    except Exception:
        pass
    print("#", json.dumps(env))

    # 1) parity first
    pshape = (2, 64, 16, n) if args.small or device == "cpu" else (2, 1000, 256, n)
    par = {}
    for pdt in ([torch.float32, dtype] if dtype != torch.float32 else [torch.float32]):
        check = [i for i in impls if i != "reference"]
        res = parity(check, device, pshape, pdt, with_reset=True)
        if "mamba_ssm" in check:
            res.update(parity(["mamba_ssm"], device, pshape, pdt, with_reset=False))
        par[str(pdt).replace("torch.", "")] = res
        for impl, errs in res.items():
            print(f"parity {impl:9s} {str(pdt):15s} max rel err: "
                  + " ".join(f"{k}={v:.1e}" for k, v in errs.items()))

    # 2) timing
    rows = []
    if args.sweep_only:
        args.sweep, dims, tokens = True, [], []
    elt = torch.finfo(dtype).bits // 8
    for d in dims:
        for tok in tokens:
            T_ = min(T, tok)
            b = max(1, tok // T_)
            ts = make_inputs(b, T_, d, n, dtype, device)
            gy = torch.randn(b, T_, d, device=device, dtype=dtype)
            reset = None
            if args.reset:
                reset = torch.rand(b, T_, device=device) < 1.0 / 1024
            fwd_b, bwd_b = ideal_bytes(b, T_, d, n, elt)
            y_cmp = None
            for impl in impls:
                if impl == "reference" and b * T_ * d > 2**16:
                    continue
                if impl == "chunked" and b * T_ > args.max_chunked_tokens:
                    continue
                if impl == "mamba_ssm" and reset is not None:
                    continue
                try:
                    with torch.no_grad():
                        y = call(impl, ts, reset)
                    err = rel_err(y, y_cmp) if y_cmp is not None else 0.0
                    if y_cmp is None:
                        y_cmp = y
                    t_f = timeit(fwd_fn(impl, ts, reset), device)
                    t_fb = timeit(fwd_bwd_fn(impl, ts, gy, reset), device)
                    mem = peak_mem_mb(fwd_bwd_fn(impl, ts, gy, reset), device)
                except torch.cuda.OutOfMemoryError:
                    print(f"{impl} d={d} tokens={tok}: OOM")
                    torch.cuda.empty_cache()
                    continue
                row = {"impl": impl, "d_inner": d, "tokens": b * T_, "batch": b, "seq_len": T_, "d_state": n,
                       "fwd_ms": t_f, "fwd_bwd_ms": t_fb, "peak_mem_mb": mem,
                       "fwd_gbps": fwd_b / t_f / 1e6, "fwd_bwd_gbps": (fwd_b + bwd_b) / t_fb / 1e6,
                       "max_rel_err_vs_first": err}
                row["fwd_bwd_pct_peak"] = 100 * row["fwd_bwd_gbps"] * 1e9 / args.peak_bw
                rows.append(row)
                print(f"{impl:9s} d={d:5d} tokens={b * T_:6d} fwd {t_f:9.3f} ms  fwd+bwd {t_fb:9.3f} ms  "
                      f"mem {mem:8.1f} MB  {row['fwd_bwd_gbps']:7.1f} GB/s  err {err:.1e}", flush=True)
            del ts, gy
            if device == "cuda":
                torch.cuda.empty_cache()

    # 3) table
    print()
    print(f"| impl | d_inner | tokens (b x T) | fwd ms | fwd+bwd ms | peak MB | fwd GB/s | fwd+bwd GB/s | "
          f"% of {args.peak_bw / 1e12:.1f} TB/s | speedup vs chunked | max rel err |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    base = {(r["d_inner"], r["tokens"]): r["fwd_bwd_ms"] for r in rows if r["impl"] == "chunked"}
    for r in rows:
        sp = base.get((r["d_inner"], r["tokens"]))
        sp = f"{sp / r['fwd_bwd_ms']:.1f}x" if sp else "-"
        print(f"| {r['impl']} | {r['d_inner']} | {r['tokens']} ({r['batch']}x{r['seq_len']}) | {r['fwd_ms']:.3f} | "
              f"{r['fwd_bwd_ms']:.3f} | {r['peak_mem_mb']:.0f} | {r['fwd_gbps']:.3g} | {r['fwd_bwd_gbps']:.3g} | "
              f"{r['fwd_bwd_pct_peak']:.3g} | {sp} | {r['max_rel_err_vs_first']:.1e} |")

    result = {"env": env, "parity": par, "rows": rows}
    if args.sweep and "triton" in impls:
        shapes = [(512, 64, T)] if args.small else [(8192, 2048, T), (32768, 4096, T)]
        if args.tokens and args.d_inner:
            shapes = [(int(tk), int(dd), T) for tk in args.tokens.split(",") for dd in args.d_inner.split(",")]
        result["sweep"] = sweep(device, shapes, n, dtype, stage_names)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
        print(f"\nwrote {args.json}")
    bad = [f"{impl}/{k}" for dt_res in par.values() for impl, errs in dt_res.items() for k, v in errs.items()
           if not math.isfinite(v) or v > 5e-2]
    if bad:
        print("PARITY FAILURES:", bad)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
