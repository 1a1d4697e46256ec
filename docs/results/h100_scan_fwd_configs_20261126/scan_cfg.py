"""Throwaway probe (ninth session, 2026-11-26): forward-kernel launch configs at 64k tokens x 4096 channels, fp32 and
bf16.  Run from the repository root: PYTHONPATH=$PWD python docs/results/h100_scan_fwd_configs_20261126/scan_cfg.py.
The JSON beside it came from a version whose bw_frac_3TBs divided by 3000 instead of 3.0 (it reads 0.0); ms are right."""
import json, os, statistics
import torch
from lit_gpt.kernels import selective_scan_triton as sst

def run(dtype, configs, b=16, T=4096, dim=4096, ns=16):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(b, T, dim, device="cuda", generator=g).to(dtype)
    dt = (torch.randn(b, T, dim, device="cuda", generator=g) * 0.5 - 2).to(dtype)
    A = -torch.exp(torch.randn(dim, ns, device="cuda", generator=g) * 0.5)
    B = torch.randn(b, T, ns, device="cuda", generator=g).to(dtype)
    C = torch.randn(b, T, ns, device="cuda", generator=g).to(dtype)
    D = torch.randn(dim, device="cuda", generator=g)
    bias = torch.randn(dim, device="cuda", generator=g) * 0.1
    ref = None
    out = []
    base = dict(sst.CONFIG)
    for cfg in configs:
        sst.CONFIG.update(base); sst.CONFIG.update(cfg)
        f = lambda: torch.ops.litscale.selective_scan_fwd(x, dt, A, B, C, D, bias, None, None, True)
        try:
            y = f()[0]
            torch.cuda.synchronize()
        except Exception as e:
            out.append(dict(cfg=cfg, error=str(e)[:200])); print(cfg, "ERR", str(e)[:200]); continue
        if ref is None:
            ref = y.float()
        err = ((y.float() - ref).abs().max() / ref.abs().max()).item()
        ts = []
        for _ in range(12):
            s, e = torch.cuda.Event(True), torch.cuda.Event(True)
            s.record(); f(); e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e))
        ms = statistics.median(ts[2:])
        nbytes = (3 * x.numel() + 2 * B.numel()) * x.element_size()
        row = dict(dtype=str(dtype), cfg=cfg, ms=round(ms, 3), bw_frac_3TBs=round(nbytes / ms / 1e9 / 3.0, 3), err=err)
        print(row, flush=True); out.append(row)
    sst.CONFIG.update(base)
    return out

cfgs = [dict()] + [dict(FWD_BLOCK_D=bd, FWD_WARPS=w, FWD_MAXNREG=r) for bd, w, r in
        [(64, 1, 128), (32, 1, 0), (32, 1, 128), (32, 1, 96), (16, 1, 0), (16, 1, 96), (16, 1, 64),
         (16, 2, 96), (32, 2, 128), (16, 4, 64), (32, 4, 96)]]
res = run(torch.float32, cfgs) + run(torch.bfloat16, cfgs)
json.dump(res, open(os.path.join(os.environ.get("OUT", "/tmp"), "scan_cfg.json"), "w"), indent=1)
