"""Token mixers as whole layers: forward and forward+backward time and peak memory, after a parity check.

    python benchmarks/mixers.py                         # CUDA, bf16 autocast: Mamba per scan impl, D 2048..4096,
                                                        # B·L = 8k..64k tokens (L = 4096), plus attention/GMU layers
    python benchmarks/mixers.py --json out.json
    python benchmarks/mixers.py --cpu --small           # seconds-long smoke run on CPU

Mamba rows: one per selective-scan implementation that can run (``LITSCALE_SCAN_IMPL``: mamba_ssm, triton,
chunked), with and without document resets (``varlen``: mean document length --doc-len). Parity: each impl's
layer output and input gradient vs the chunked fp32 scan on a short sequence (relative max error), before timing.
Other rows (for scale): full causal attention, SWA 128, differential full / SWA 128, GMU, same width, head 128;
their attention backend is the automatic choice (force one with LITSCALE_ATTN_IMPL=flex|block_local|flash|...).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from attention import make_docs, peak_memory, timeit  # noqa: E402  (benchmarks/attention.py)

from benchmarks.timing import apply_small, cell, cli_device, device_label, failure_note, report  # noqa: E402
from lit_gpt.config import Config, LayerSpec  # noqa: E402
from lit_gpt.kernels import selective_scan as ss  # noqa: E402
from lit_gpt.layers.attention import CausalSelfAttention  # noqa: E402
from lit_gpt.layers.context import SeqContext  # noqa: E402
from lit_gpt.layers.diff_attention import DiffSelfAttention  # noqa: E402
from lit_gpt.layers.gmu import GatedMemoryUnit  # noqa: E402
from lit_gpt.layers.mamba import Mamba  # noqa: E402


@dataclass
class Row:
    mixer: str
    impl: str
    width: int
    batch: int
    seq_len: int
    varlen: bool
    fwd_ms: Optional[float] = None
    fwd_bwd_ms: Optional[float] = None
    peak_mib: Optional[float] = None
    tokens_per_s: Optional[float] = None
    parity_err: Optional[float] = None
    note: str = ""


def layer_config(width: int, head_size: int) -> Config:
    n_head = max(2, width // head_size)
    n_head -= n_head % 2
    groups = max(2, n_head // 4)
    while n_head % groups or groups % 2:
        groups -= 1
    return Config(name=f"bench_w{width}", arch="samba", layer_rule="samba", n_layer=2, n_embd=width, n_head=n_head,
                  head_size=head_size, n_query_groups=groups, intermediate_size=4 * width, vocab_size=256)


def scan_impls(device: torch.device) -> list[str]:
    impls = ["chunked"]
    if device.type == "cuda":
        if ss.triton_available():
            impls.insert(0, "triton")
        if ss.mamba_ssm_available():
            impls.insert(0, "mamba_ssm")
    return impls


class ScanImpl:
    """Force a scan implementation through the environment (what training uses too)."""

    def __init__(self, impl: Optional[str]):
        self.impl, self.old = impl, None

    def __enter__(self):
        self.old = os.environ.get("LITSCALE_SCAN_IMPL")
        if self.impl is not None:
            os.environ["LITSCALE_SCAN_IMPL"] = self.impl
        return self

    def __exit__(self, *exc):
        if self.old is None:
            os.environ.pop("LITSCALE_SCAN_IMPL", None)
        else:
            os.environ["LITSCALE_SCAN_IMPL"] = self.old


def build(mixer: str, cfg: Config, device) -> torch.nn.Module:
    torch.manual_seed(0)
    if mixer == "mamba":
        m = Mamba(cfg, LayerSpec(0, "mamba"))
    elif mixer == "attn":
        m = CausalSelfAttention(cfg, LayerSpec(1, "attention"))
    elif mixer == "swa128":
        m = CausalSelfAttention(cfg, LayerSpec(1, "attention", window=128))
    elif mixer == "diff-attn":
        m = DiffSelfAttention(cfg, LayerSpec(1, "attention", diff_attn=True))
    elif mixer == "diff-swa128":
        m = DiffSelfAttention(cfg, LayerSpec(1, "attention", window=128, diff_attn=True))
    elif mixer == "gmu":
        m = GatedMemoryUnit(cfg, LayerSpec(2, "gmu"))
    else:
        raise ValueError(mixer)
    return m.to(device)


def make_ctx(mixer: str, cfg: Config, x: torch.Tensor, docs: Optional[torch.Tensor]) -> SeqContext:
    shared = {}
    if mixer == "gmu":
        shared["memory"] = torch.randn(*x.shape[:2], cfg.d_inner, device=x.device, dtype=x.dtype)
    return SeqContext(doc_ids=docs, shared=shared)


def mamba_parity(impl: str, cfg: Config, device, amp_dtype, varlen: bool, T: int) -> float:
    """Relative max error of output and input gradient vs the chunked scan in fp32 (same weights)."""
    m = build("mamba", cfg, device)
    x = torch.randn(2, T, cfg.n_embd, device=device)
    docs = make_docs(2, T, max(8, T // 5), device, seed=2) if varlen else None
    results = []
    for which, dtype in ((impl, amp_dtype), ("chunked", None)):
        xi = x.clone().requires_grad_()
        with ScanImpl(which), torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            y = m(xi, SeqContext(doc_ids=docs))
        y.float().square().mean().backward()
        results.append((y.detach().float(), xi.grad.float()))
    (y, g), (y_ref, g_ref) = results
    return max(((y - y_ref).abs().max() / y_ref.abs().max()).item(), ((g - g_ref).abs().max() / g_ref.abs().max()).item())


def bench(mixer: str, impl: str, cfg: Config, B: int, T: int, varlen: bool, args, device, amp_dtype) -> Row:
    row = Row(mixer, impl, cfg.n_embd, B, T, varlen)
    m = build(mixer, cfg, device)
    x = torch.randn(B, T, cfg.n_embd, device=device, requires_grad=True)
    docs = make_docs(B, T, args.doc_len, device) if varlen else None
    ctx_kw = dict(mixer=mixer, cfg=cfg, x=x, docs=docs)
    grad = torch.randn(B, T, cfg.n_embd, device=device)
    autocast = dict(device_type=device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)

    def fwd():
        with torch.no_grad(), torch.autocast(**autocast):
            m(x, make_ctx(**ctx_kw))

    def fwd_bwd():
        with torch.autocast(**autocast):
            y = m(x, make_ctx(**ctx_kw))
        y.backward(grad)
        x.grad = None
        for p in m.parameters():
            p.grad = None

    try:
        with ScanImpl(impl if mixer == "mamba" else None):
            row.fwd_ms = timeit(fwd, device, args.warmup, args.repeats)
            row.fwd_bwd_ms = timeit(fwd_bwd, device, args.warmup, args.repeats)
            row.peak_mib = peak_memory(fwd_bwd, device)
    except Exception as exc:  # OOM included
        row.note = failure_note(exc)
        return row
    row.tokens_per_s = B * T / (row.fwd_bwd_ms * 1e-3)
    return row


def to_markdown(rows: list[Row], header: str) -> str:
    f = cell
    lines = [header, "", "| mixer | impl | D | B×L | varlen | fwd ms | fwd+bwd ms | peak MiB | Mtok/s (f+b) | parity | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tps = None if r.tokens_per_s is None else r.tokens_per_s / 1e6
        lines.append(f"| {r.mixer} | {r.impl} | {r.width} | {r.batch}×{r.seq_len} | {'yes' if r.varlen else 'no'} | "
                     f"{f(r.fwd_ms, '.2f')} | {f(r.fwd_bwd_ms, '.2f')} | {f(r.peak_mib, '.0f')} | {f(tps, '.3g')} | "
                     f"{f(r.parity_err, '.1e')} | {r.note} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--small", action="store_true")
    p.add_argument("--widths", type=int, nargs="+", default=[2048, 3072, 4096])
    p.add_argument("--tokens", type=int, nargs="+", default=[8192, 16384, 32768, 65536], help="B·L per step")
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--head-size", type=int, default=128)
    p.add_argument("--doc-len", type=int, default=1024)
    p.add_argument("--mixers", nargs="+", default=["mamba", "attn", "swa128", "diff-attn", "diff-swa128", "gmu"])
    p.add_argument("--scan-impls", nargs="*", default=None, help="default: every impl that can run here")
    p.add_argument("--no-varlen", action="store_true", help="skip the document-reset Mamba rows")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="autocast dtype")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--parity-len", type=int, default=512)
    p.add_argument("--parity-tol", type=float, default=5e-2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = cli_device(p, args)
    if args.small:  # tiny shapes, except where the command line says otherwise
        apply_small(p, args, dict(widths=[64], tokens=[256, 512], seq_len=128, head_size=16, doc_len=32,
                                  parity_len=64, warmup=1, repeats=2))
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[args.dtype]
    impls = args.scan_impls or scan_impls(device)
    rows: list[Row] = []
    for width in args.widths:
        cfg = layer_config(width, args.head_size)
        parity = {}
        if "mamba" in args.mixers:
            for impl in impls:
                for varlen in ((False,) if args.no_varlen else (False, True)):
                    try:
                        parity[impl, varlen] = mamba_parity(impl, cfg, device, amp_dtype, varlen, args.parity_len)
                    except Exception as exc:
                        print(f"[parity] {impl} varlen={varlen}: {type(exc).__name__}: {exc}", file=sys.stderr)
                        parity[impl, varlen] = float("inf")
        for tokens in args.tokens:
            T = min(args.seq_len, tokens)
            B = max(1, tokens // T)
            for mixer in args.mixers:
                variants = ([(i, v) for i in impls for v in ((False,) if args.no_varlen else (False, True))]
                            if mixer == "mamba" else [("-", False)])
                for impl, varlen in variants:
                    err = parity.get((impl, varlen))
                    if err is not None and err > args.parity_tol:
                        rows.append(Row(mixer, impl, width, B, T, varlen, parity_err=err,
                                        note=f"PARITY FAIL (> {args.parity_tol})"))
                        continue
                    row = bench(mixer, impl, cfg, B, T, varlen, args, device, amp_dtype)
                    row.parity_err = err
                    rows.append(row)
                    print(f"{mixer:12s} {impl:9s} D={width} {B}x{T} varlen={varlen}: fwd {row.fwd_ms} "
                          f"fwd+bwd {row.fwd_bwd_ms} ms peak {row.peak_mib} MiB {row.note}", file=sys.stderr,
                          flush=True)
    dev_name = device_label(device)
    header = (f"### Mixer layers on {dev_name} (torch {torch.__version__}, autocast {args.dtype}, L={args.seq_len}, "
              f"head {args.head_size}, docs mean {args.doc_len} tokens)")
    return report(rows, to_markdown(rows, header), dev_name, args)


if __name__ == "__main__":
    raise SystemExit(main())
