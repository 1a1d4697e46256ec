"""Attention backends: forward and forward+backward time and peak memory, after a parity check.

    python benchmarks/attention.py                       # CUDA: B=2, H=16 (4 KV heads), D=128, bf16, T 4k..32k
    python benchmarks/attention.py --json out.json       # also write the rows as JSON
    python benchmarks/attention.py --cpu --small         # seconds-long smoke run on CPU (fp32, tiny shapes)

Cases: SDPA is_causal (flash kernel), flash-attn (when installed), FlexAttention causal / SWA 128, 512, 2048 /
document mask, block-local SDPA SWA, and the explicit-mask reference (only where its T² mask fits). Parity: every
case is compared with the fp32 reference on a short sequence first (max abs error in the table); a case that fails
parity is reported and not timed. Effective TFLOP/s counts 4·B·H·D·c̄·T per forward (c̄ = keys per query), 2.5x that
for the backward.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.timing import (apply_small, cell, cli_device, cuda_peak_mib, device_label,  # noqa: E402
                               failure_note, report, sync, time_call_ms)
from lit_gpt.kernels.attention_masks import (flash_attn_available, flex_block_mask,  # noqa: E402
                                             reference_attention)
from lit_gpt.layers.attention import attention  # noqa: E402
from lit_gpt.scaling import average_keys_per_query  # noqa: E402


@dataclass
class Case:
    name: str
    impl: str
    window: Optional[int] = None
    docs: bool = False


@dataclass
class Row:
    case: str
    impl: str
    T: int
    window: Optional[int]
    docs: bool
    fwd_ms: Optional[float] = None
    fwd_bwd_ms: Optional[float] = None
    peak_mib: Optional[float] = None
    tflops: Optional[float] = None
    parity_err: Optional[float] = None
    note: str = ""
    extra: dict = field(default_factory=dict)


def timeit(fn: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> float:
    """Median milliseconds of ``fn``."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = sorted(time_call_ms(fn, device.type == "cuda") for _ in range(repeats))
    return times[len(times) // 2]


def peak_memory(fn: Callable[[], None], device: torch.device) -> Optional[float]:
    """Peak MiB allocated during ``fn`` above what was allocated before (CUDA only)."""
    if device.type != "cuda":
        return None
    return cuda_peak_mib(fn)


def make_docs(B: int, T: int, mean_len: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """Document ids with lengths ~ exponential(mean_len) (as packed pretraining data looks)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(B):
        ids, pos, d = torch.empty(T, dtype=torch.long), 0, 0
        while pos < T:
            n = max(1, int(torch.empty(1).exponential_(1.0 / mean_len, generator=g).item()))
            ids[pos:pos + n] = d
            pos, d = pos + n, d + 1
        rows.append(ids)
    return torch.stack(rows).to(device)


def mean_keys(T: int, window: Optional[int], docs: Optional[torch.Tensor]) -> float:
    if docs is None:
        return average_keys_per_query(T, window)
    total, B = 0.0, docs.shape[0]
    for b in range(B):
        _, counts = torch.unique_consecutive(docs[b].cpu(), return_counts=True)
        for n in counts.tolist():
            total += average_keys_per_query(n, window) * n
    return total / (B * T)


def cases(windows: list[int], include_flash: bool) -> list[Case]:
    out = [Case("sdpa causal", "sdpa"), Case("flex causal", "flex")]
    if include_flash:
        out.append(Case("flash causal", "flash"))
    for w in windows:
        out += [Case(f"flex swa{w}", "flex", w), Case(f"block-local swa{w}", "block_local", w)]
        if include_flash:
            out.append(Case(f"flash swa{w}", "flash", w))
    out += [Case("flex docs", "flex", None, True), Case("block-local swa512 docs", "block_local", 512, True)]
    if include_flash:
        out.append(Case("flash varlen docs", "flash", None, True))
    out.append(Case("reference causal", "reference"))
    return out


def run_case(case: Case, T: int, args, device, dtype, parity: dict) -> Row:
    row = Row(case.name, case.impl, T, case.window, case.docs, parity_err=parity.get(case.name))
    if parity.get(case.name) is None:
        row.note = "parity not run"
    elif parity[case.name] > args.parity_tol:
        row.note = f"PARITY FAIL (> {args.parity_tol})"
        return row
    B, H, G, D = args.batch, args.heads, args.kv_heads, args.head_dim
    if case.impl == "reference" and B * H * T * T * (4 if device.type == "cuda" else 4) > args.max_reference_bytes:
        row.note = "skipped: T² scores do not fit"
        return row
    window = case.window
    docs = make_docs(B, T, args.doc_len, device) if case.docs else None
    q = torch.randn(B, H, T, D, device=device, dtype=dtype, requires_grad=True)
    k = torch.randn(B, G, T, D, device=device, dtype=dtype, requires_grad=True)
    v = torch.randn(B, G, T, D, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(B, H, T, D, device=device, dtype=dtype)
    scale = D ** -0.5

    def fwd():
        with torch.no_grad():
            attention(q, k, v, scale=scale, window=window, doc_ids=docs, impl=case.impl)

    def fwd_bwd():
        out = attention(q, k, v, scale=scale, window=window, doc_ids=docs, impl=case.impl)
        out.backward(grad)
        q.grad = k.grad = v.grad = None

    try:
        row.fwd_ms = timeit(fwd, device, args.warmup, args.repeats)
        if case.impl == "flex" and device.type != "cuda":
            row.note = "forward only (no Flex backward on CPU)"
            return row
        row.fwd_bwd_ms = timeit(fwd_bwd, device, args.warmup, args.repeats)
        row.peak_mib = peak_memory(fwd_bwd, device)
    except Exception as exc:  # report (OOM included) and continue with the other cases
        row.note = failure_note(exc)
        return row
    if case.impl == "flex" and docs is not None:  # per-step cost the timings above exclude (cached per doc_ids)
        row.extra["mask_build_ms"] = timeit(lambda: flex_block_mask(T, window, docs.clone(), device), device,
                                            1, max(1, args.repeats // 2))
        row.note = f"+{row.extra['mask_build_ms']:.2f} ms block-mask build per batch"
    flops = 4 * B * H * D * mean_keys(T, window, docs) * T * 3.5
    row.tflops = flops / (row.fwd_bwd_ms * 1e-3) / 1e12
    row.extra["mean_keys"] = mean_keys(T, window, docs)
    return row


def parity_check(case_list: list[Case], args, device, dtype) -> dict:
    """Max abs error of each case vs the fp32 reference on a short sequence: the output, and on CUDA also the
    query gradient (relative to its scale) — the larger of the two is reported."""
    T, B, H, G, D = args.parity_len, args.batch, args.heads, args.kv_heads, args.head_dim
    torch.manual_seed(0)
    with_grad = device.type == "cuda"
    q = torch.randn(B, H, T, D, device=device, dtype=dtype, requires_grad=with_grad)
    k = torch.randn(B, G, T, D, device=device, dtype=dtype)
    v = torch.randn(B, G, T, D, device=device, dtype=dtype)
    g = torch.randn(B, H, T, D, device=device, dtype=dtype)
    docs = make_docs(B, T, max(8, T // 6), device, seed=1)
    errors = {}
    for case in case_list:
        d = docs if case.docs else None
        qf = q.detach().float().requires_grad_(with_grad)
        ref = reference_attention(qf, k.float(), v.float(), scale=D ** -0.5, window=case.window, q_doc=d, k_doc=d)
        try:
            out = attention(q, k, v, scale=D ** -0.5, window=case.window, doc_ids=d, impl=case.impl)
            err = (out.float() - ref).abs().max().item()
            if with_grad:
                (dq,) = torch.autograd.grad(out, q, g)
                (dq_ref,) = torch.autograd.grad(ref, qf, g.float())
                err = max(err, ((dq.float() - dq_ref).abs().max() / dq_ref.abs().max().clamp_min(1e-6)).item())
        except Exception as exc:
            print(f"[parity] {case.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            errors[case.name] = float("inf")
            continue
        errors[case.name] = err
    return errors


def to_markdown(rows: list[Row], header: str) -> str:
    f = cell
    lines = [header, "", "| case | T | fwd ms | fwd+bwd ms | peak MiB | TFLOP/s | parity err | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.case} | {r.T} | {f(r.fwd_ms, '.2f')} | {f(r.fwd_bwd_ms, '.2f')} | {f(r.peak_mib, '.0f')} | "
                     f"{f(r.tflops, '.3g')} | {f(r.parity_err, '.1e')} | {r.note} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="run on CPU (fp32)")
    p.add_argument("--small", action="store_true", help="tiny shapes for a smoke run")
    p.add_argument("--seq-lens", type=int, nargs="+", default=[4096, 8192, 16384, 32768])
    p.add_argument("--windows", type=int, nargs="+", default=[128, 512, 2048])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--doc-len", type=int, default=2048, help="mean document length for the document-mask cases")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    p.add_argument("--impls", nargs="*", default=None, help="only these impls (sdpa flash flex block_local reference)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--parity-len", type=int, default=1024)
    p.add_argument("--parity-tol", type=float, default=3e-2)
    p.add_argument("--max-reference-bytes", type=float, default=8e9)
    p.add_argument("--json", default=None, help="write the rows to this JSON file")
    args = p.parse_args(argv)
    device = cli_device(p, args)
    if args.small:  # tiny shapes, except where the command line says otherwise
        apply_small(p, args, dict(seq_lens=[256, 512], windows=[32, 64], batch=1, heads=4, kv_heads=2, head_dim=32,
                                  doc_len=64, parity_len=128, warmup=1, repeats=2))
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    include_flash = device.type == "cuda" and flash_attn_available()
    case_list = cases(args.windows, include_flash)
    if args.impls:
        case_list = [c for c in case_list if c.impl in args.impls]
    parity = parity_check(case_list, args, device, dtype)
    rows = []
    for T in args.seq_lens:
        for case in case_list:
            row = run_case(case, T, args, device, dtype, parity)
            rows.append(row)
            print(f"{row.case:28s} T={T:6d} fwd {row.fwd_ms} ms  fwd+bwd {row.fwd_bwd_ms} ms  "
                  f"peak {row.peak_mib} MiB  {row.note}", file=sys.stderr, flush=True)
    dev_name = device_label(device)
    header = (f"### Attention backends on {dev_name} (torch {torch.__version__}, {args.dtype}, B={args.batch}, "
              f"H={args.heads}, KV heads={args.kv_heads}, D={args.head_dim}, docs mean {args.doc_len} tokens)")
    return report(rows, to_markdown(rows, header), dev_name, args)


if __name__ == "__main__":
    raise SystemExit(main())
