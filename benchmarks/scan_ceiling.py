"""How fast can any selective-scan forward be on this GPU? Kernels that do the scan's per-element work without its
time dependency, against the bytes the scan must move.

    python benchmarks/scan_ceiling.py --json ceiling.json            # 64k tokens x d_inner 4096, N = 16, bf16

Why: issue #4 asks the Triton scan's main loop for half of the H100's memory bandwidth. The forward must move
x, dt and y (2 bytes each per token and channel in bf16, 4 with ``--dtype fp32``; B and C per token) but also
evaluate one exponential per token, channel and state. These kernels stream the same bytes over a [tokens, channels]
grid with all the GPU's parallelism (no recurrence, so no sequential chain to wait on) and each do more of the scan's
arithmetic:

* ``copy``      — y = x + dt: the bytes alone;
* ``ex2``       — plus, per state, exp2(dt·A) on the special-function unit and one FMA (Σₙ a·B);
* ``scan_work`` — plus the rest of a scan step per state (h = a·x + dt·x·B, y += C·h): the forward's arithmetic;
* ``*_polyK``   — the same with K of the 16 exponentials per element evaluated on the FMA pipe instead (a degree-6
  polynomial after range reduction, as FlashAttention-4 does to relieve the special-function unit).

The fastest of them bounds what the scan's forward could reach; ``--scan`` also times the real Triton forward on
the same data. Each kernel's output is checked against a float64 reference on a slice before it is timed.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import environment, time_call_ms  # noqa: E402

LOG2E = 1.4426950408889634


@triton.jit
def exp2_fma(x):
    """2^x for x ≤ 0 with FMAs and integer ops only: x = j + f (j = round(x), |f| ≤ 1/2), 2^f by Taylor to f⁶
    (relative error < 2e-7), then j added to the exponent bits."""
    x = tl.maximum(x, -125.0)  # keeps 2^f·2^j a normal number
    t = x + 12582912.0  # 1.5·2²³: the add rounds x to an integer, kept in t's low mantissa bits
    j = t - 12582912.0
    f = x - j
    p = 1.5403530393381606e-4 * f + 1.3333558146428443e-3
    p = p * f + 9.618129107628477e-3
    p = p * f + 5.550410866482158e-2
    p = p * f + 0.2402265069591007
    p = p * f + 0.6931471805599453
    p = p * f + 1.0
    bits = p.to(tl.int32, bitcast=True) + ((t.to(tl.int32, bitcast=True) - 0x4B400000) << 23)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def exp2_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, exp2_fma(tl.load(x_ptr + offs, mask=mask)), mask=mask)


@triton.jit
def ceiling_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, y_ptr, DIM, NS: tl.constexpr, WORK: tl.constexpr,
                   POLY: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    offs = rows[:, None] * DIM + cols[None, :]
    x = tl.load(x_ptr + offs).to(tl.float32)
    dt = tl.load(dt_ptr + offs).to(tl.float32)
    if WORK == 0:
        y = x + dt
    else:
        dtx = dt * x
        y = tl.zeros([BLOCK_T, BLOCK_D], tl.float32)
        for n in tl.static_range(NS):
            An = tl.load(A_ptr + n * DIM + cols)  # A·log2 e, states-major as in the scan kernels
            Bn = tl.load(B_ptr + rows * NS + n).to(tl.float32)
            arg = dt * An[None, :]
            if n < POLY:
                a = exp2_fma(arg)
            else:
                a = tl.exp2(arg)
            if WORK == 1:
                y += a * Bn[:, None]
            else:
                Cn = tl.load(C_ptr + rows * NS + n).to(tl.float32)
                h = a * x + dtx * Bn[:, None]
                y += Cn[:, None] * h
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty))


WORKS = {"copy": 0, "ex2": 1, "scan_work": 2}


def reference(work: str, x, dt, A2, B, C) -> torch.Tensor:
    """What ``ceiling_kernel`` computes, in float64 (A2 = A·log2 e, [NS, DIM])."""
    x, dt, A2, B, C = (t.double() for t in (x, dt, A2, B, C))
    if work == "copy":
        return x + dt
    a = torch.exp2(dt[:, None, :] * A2[None])  # [tokens, NS, DIM]
    if work == "ex2":
        return (a * B[:, :, None]).sum(1)
    h = a * x[:, None, :] + (dt * x)[:, None, :] * B[:, :, None]
    return (C[:, :, None] * h).sum(1)


def make_inputs(tokens: int, dim: int, ns: int, dtype: torch.dtype, device, seed: int = 0):
    """x [tokens, dim]; dt in the softplus range 1e-3 .. 0.1; S4D-real decays A = -(1..N) as [NS, DIM] and their
    A·log2 e (what the kernels take); B, C [tokens, NS] — as a trained Mamba layer sees them."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(tokens, dim, generator=g).to(device, dtype)
    dt = torch.exp(torch.empty(tokens, dim).uniform_(math.log(1e-3), math.log(0.1), generator=g)).to(device, dtype)
    A = -torch.arange(1, ns + 1, dtype=torch.float32)[:, None].repeat(1, dim).to(device)
    B = torch.randn(tokens, ns, generator=g).to(device, dtype)
    C = torch.randn(tokens, ns, generator=g).to(device, dtype)
    return x, dt, A, (A * LOG2E).contiguous(), B, C


def exp2_fma_error(device, n: int) -> float:
    """Largest relative error of ``exp2_fma`` against float64 over n points of the scan's range [-125, 0]."""
    probe = torch.linspace(-125.0, 0.0, n, device=device)
    got = torch.empty_like(probe)
    exp2_kernel[(triton.cdiv(n, 1024),)](probe, got, n, BLOCK=1024)
    exact = torch.exp2(probe.double())
    return ((got.double() - exact).abs() / exact).max().item()


def median_ms(fn, reps: int) -> float:
    fn()  # compile and warm up
    return statistics.median(time_call_ms(fn, cuda=True) for _ in range(reps))


def result(kernel: str, ms: float, bytes_moved: int, peak_bw: float, exps=None, tile: str = "", err=None) -> dict:
    """One printed and saved row: time, bandwidth (and its share of ``peak_bw``), exponentials per second."""
    row = dict(kernel=kernel, ms=round(ms, 4), tile=tile, gb_s=round(bytes_moved / ms / 1e6, 1),
               bw_fraction=round(bytes_moved / (ms / 1e3) / peak_bw, 3),
               exp2_per_s=None if exps is None else float(f"{exps / (ms / 1e3):.4g}"),
               max_rel_err=None if err is None else float(f"{err:.2e}"))
    print(row, flush=True)
    return row


def sm_clock_mhz() -> dict:
    """Current and maximum SM clock from nvidia-smi (empty when it is missing)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm,clocks.max.sm", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout.split(",")
        return dict(sm_mhz=float(out[0]), max_sm_mhz=float(out[1]))
    except Exception:  # noqa: BLE001 - the clock is context, not a result
        return {}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=65536)
    p.add_argument("--d-inner", type=int, default=4096)
    p.add_argument("--d-state", type=int, default=16)
    p.add_argument("--polys", type=int, nargs="+", default=[0, 2, 4, 8], help="exponentials per element on FMAs")
    p.add_argument("--tiles", default="16x128x4,32x128x4,16x256x8,64x64x4,8x256x4",
                   help="BLOCK_TxBLOCK_DxWARPS launch shapes; each kernel's fastest is reported")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16",
                   help="of x, dt, B, C and y (bf16 under the layer's autocast)")
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--peak-bw", type=float, default=3.0e12, help="bytes/s of a device-to-device copy (H100: 3.0e12)")
    p.add_argument("--scan", action="store_true", help="also time the Triton scan forward on the same data")
    p.add_argument("--json")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        p.error("needs a CUDA device")
    dev, ns, dim, tokens = torch.device("cuda"), args.d_state, args.d_inner, args.tokens
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    x, dt, A, A2, B, C = make_inputs(tokens, dim, ns, dtype, dev)
    y = torch.empty_like(x)
    poly_err = exp2_fma_error(dev, 1 << 20)

    tiles = [tuple(int(v) for v in s.split("x")) for s in args.tiles.split(",")]
    cases = [("copy", 0)] + [(w, k) for w in ("ex2", "scan_work") for k in args.polys]
    size = x.element_size()
    bytes_moved = tokens * dim * 3 * size + tokens * ns * 2 * size
    exps = tokens * dim * ns
    rows = []
    for work, poly in cases:
        def launch(tile, out=y, n_tok=tokens):
            bt, bd, warps = tile
            ceiling_kernel[(n_tok // bt, dim // bd)](x, dt, A2, B, C, out, dim, NS=ns, WORK=WORKS[work], POLY=poly,
                                                     BLOCK_T=bt, BLOCK_D=bd, num_warps=warps)

        check_rows = 256
        want = reference(work, x[:check_rows], dt[:check_rows], A2, B[:check_rows], C[:check_rows])
        best = None
        for tile in tiles:
            out = torch.empty(check_rows, dim, device=dev, dtype=torch.float32)
            launch(tile, out, check_rows)
            err = ((out.double() - want).abs().max() / want.abs().max()).item()
            if err > 1e-5:
                raise SystemExit(f"{work} poly {poly} tile {tile}: max error {err:.2e} against float64 (> 1e-5)")
            ms = median_ms(lambda: launch(tile), args.reps)
            if best is None or ms < best[0]:
                best = (ms, tile, err)
        ms, tile, err = best
        rows.append(result(work if not poly else f"{work}_poly{poly}", ms, bytes_moved, args.peak_bw,
                           exps=None if work == "copy" else exps, tile="x".join(map(str, tile)), err=err))
    if args.scan:
        from lit_gpt.kernels import selective_scan as ss

        batch = max(1, tokens // 4096)  # sequences of 4096, as the scan benchmark
        xs, dts = x.view(batch, -1, dim), dt.view(batch, -1, dim)
        Bs, Cs = B.view(batch, -1, ns), C.view(batch, -1, ns)
        At = A.t().contiguous()
        for softplus in (False, True):  # the ceiling kernels take dt as the step; the layer's scan adds softplus
            with torch.no_grad():
                ms = median_ms(lambda: ss.selective_scan(xs, dts, At, Bs, Cs, None, dt_softplus=softplus,
                                                         impl="triton"), args.reps)
            rows.append(result(f"triton scan forward ({'softplus' if softplus else 'no softplus'}, no D)", ms,
                               bytes_moved, args.peak_bw, exps=exps))
    props = torch.cuda.get_device_properties(dev)
    clock = sm_clock_mhz()
    sfu_peak = props.multi_processor_count * 16 * clock.get("max_sm_mhz", 1980.0) * 1e6
    half_bw_ms = bytes_moved / (args.peak_bw / 2) * 1e3
    summary = dict(tokens=tokens, d_inner=dim, d_state=ns, bytes=bytes_moved, exponentials=exps,
                   half_bandwidth_ms=round(half_bw_ms, 4), sfu_exp2_per_s_at_max_clock=sfu_peak,
                   sfu_bound_ms_at_max_clock=round(exps / sfu_peak * 1e3, 4), poly_exp2_max_rel_err=poly_err,
                   sms=props.multi_processor_count, **clock)
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(environment=environment(dev), args=vars(args), summary=summary,
                                                   rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
