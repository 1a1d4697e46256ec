"""What the Triton selective-scan kernels compile to on an H100 (sm_90a), without a GPU.

    python benchmarks/scan_codegen.py                 # forward and backward at the current CONFIG
    python benchmarks/scan_codegen.py --kernel fwd --block_d 32 --json out.json

Triton ships ptxas and cuobjdump, so the kernels compile for sm_90a on any machine. Per kernel this prints what a
profiler would otherwise be needed for: registers per thread and spill bytes (ptxas), the blocked layouts Triton
chose (TTGIR; the scan wants lanes along channels: ``threadsPerWarp = [1, 32]`` for its [state, channel] tiles),
the PTX counts of warp shuffles, barriers and shared-memory stores, and the instruction mix of the main loop (the
longest backward branch in the SASS; for the backward that is the tile loop of phase B). Compare the mix before and
after a change; time it on the GPU (``benchmarks/scan.py``) before believing it. The layouts depend on the Triton
version: the lent GPU machine has 3.6 (docs/benchmarks.md, section 3).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# bf16 activations, fp32 states, uint8 document starts: the dtypes training passes
_POINTERS = {"A_ptr": "*fp32", "D_ptr": "*fp32", "bias_ptr": "*fp32", "reset_ptr": "*u8", "h0_ptr": "*fp32",
             "hT_ptr": "*fp32", "ckpt_ptr": "*fp32", "sumU_ptr": "*fp32", "sumP_ptr": "*fp32", "gT_ptr": "*fp32",
             "scratch_ptr": "*fp32", "dApart_ptr": "*fp32", "dB_ptr": "*fp32", "dC_ptr": "*fp32",
             "dDpart_ptr": "*fp32", "dbpart_ptr": "*fp32", "dh0_ptr": "*fp32"}


def _constexprs(kind: str, cfg: dict, d_state: int, reset: bool) -> dict[str, Any]:
    from lit_gpt.kernels import selective_scan_triton as st

    common = dict(NP=max(1, 1 << (d_state - 1).bit_length()), HAS_D=True, HAS_BIAS=True, HAS_RESET=reset,
                  SOFTPLUS=st._softplus_mode(True))
    if kind == "fwd":
        return dict(common, BLOCK_D=cfg["FWD_BLOCK_D"], CKPT_STEPS=cfg["CKPT_STEPS"], EVEN_D=True,
                    EVEN_N=common["NP"] == d_state, HAS_H0=False, SUMMARY=False)
    assert kind == "bwd", kind
    return dict(common, BLOCK_T=cfg["BWD_BLOCK_T"], BLOCK_D=cfg["BWD_BLOCK_D"],
                CKPT_TILES=st.checkpoint_steps() // cfg["BWD_BLOCK_T"], HAS_GT=False, WANT_DH0=False)


def compile_kernel(kind: str, cfg: Optional[dict] = None, d_state: int = 16, reset: bool = False):
    """Compile the forward ("fwd") or backward ("bwd") scan kernel for sm_90a; returns Triton's compiled kernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from lit_gpt.kernels import selective_scan_triton as st

    cfg = dict(st.CONFIG, **(cfg or {}))
    kernel = st._scan_fwd_step_kernel if kind == "fwd" else st._scan_bwd_kernel
    const = _constexprs(kind, cfg, d_state, reset)
    names = kernel.arg_names
    signature = {n: "constexpr" if n in const else _POINTERS.get(n, "*bf16" if n.endswith("_ptr") else "i32")
                 for n in names}
    src = ASTSource(fn=kernel, signature=signature, constexprs={(names.index(n),): v for n, v in const.items()})
    warps = cfg["FWD_WARPS"] if kind == "fwd" else cfg["BWD_WARPS"]
    maxnreg = cfg.get("FWD_MAXNREG" if kind == "fwd" else "BWD_MAXNREG", 0)
    options = {"num_warps": warps, **({"maxnreg": maxnreg} if maxnreg > 0 else {})}
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


def _tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def _assemble(ptx: str) -> tuple[str, str]:
    """(ptxas -v report, SASS listing) of a PTX module."""
    with tempfile.TemporaryDirectory() as tmp:
        src, cubin = Path(tmp) / "k.ptx", Path(tmp) / "k.cubin"
        src.write_text(ptx)
        arch = re.search(r"^\.target\s+(\S+)", ptx, re.M).group(1)
        report = subprocess.run([_tool("ptxas"), f"-arch={arch}", "-v", str(src), "-o", str(cubin)],
                                capture_output=True, text=True, check=True).stderr
        sass = subprocess.run([_tool("cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True,
                              check=True).stdout
    return report, sass


def loop_mix(sass: str) -> Counter:
    """Opcode counts (predicates and modifiers dropped) of the longest backward branch's body in a SASS listing."""
    instructions = []
    for line in sass.splitlines():
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if m:
            instructions.append((int(m.group(1), 16), m.group(2)))
    body = None
    for address, text in instructions:
        target = re.search(r"\bBRA\s+(0x[0-9a-f]+)", text)
        if target and int(target.group(1), 16) < address:
            span = (int(target.group(1), 16), address)
            if body is None or span[1] - span[0] > body[1] - body[0]:
                body = span
    if body is None:
        return Counter()
    words = (text.split() for address, text in instructions if body[0] <= address <= body[1])
    return Counter((w[1] if w[0].startswith("@") else w[0]).split(".")[0] for w in words)


def report(kind: str, cfg: Optional[dict] = None, d_state: int = 16, reset: bool = False) -> dict[str, Any]:
    import triton

    compiled = compile_kernel(kind, cfg, d_state, reset)
    ptx, ttgir = compiled.asm["ptx"], compiled.asm["ttgir"]
    ptxas, sass = _assemble(ptx)
    registers = re.search(r"Used (\d+) registers", ptxas)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", ptxas)
    mix = loop_mix(sass)
    return {
        "kernel": kind, "triton": triton.__version__,
        "registers": int(registers.group(1)) if registers else None,
        "spill_store_bytes": int(spills.group(1)) if spills else 0,
        "spill_load_bytes": int(spills.group(2)) if spills else 0,
        "layouts": sorted(set(re.findall(r"#ttg\.blocked<\{[^}]*\}>", ttgir))),
        "ptx": {"shfl": ptx.count("shfl.sync"), "bar": ptx.count("bar.sync"), "st_shared": ptx.count("st.shared")},
        "loop_instructions": sum(mix.values()), "loop_mix": dict(mix.most_common()),
    }


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernel", choices=("fwd", "bwd", "all"), default="all")
    p.add_argument("--d_state", type=int, default=16)
    p.add_argument("--reset", action="store_true", help="with document starts (varlen)")
    p.add_argument("--block_d", type=int, default=None, help="FWD_/BWD_BLOCK_D instead of CONFIG's")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    try:
        import triton  # noqa: F401
    except ImportError:
        p.error("needs triton (pip install triton)")
    cfg = {"FWD_BLOCK_D": args.block_d, "BWD_BLOCK_D": args.block_d} if args.block_d else None
    results = [report(k, cfg, args.d_state, args.reset) for k in (("fwd", "bwd") if args.kernel == "all" else
                                                                  (args.kernel,))]
    for r in results:
        print(f"== {r['kernel']} (triton {r['triton']}): {r['registers']} registers, spills "
              f"{r['spill_store_bytes']}/{r['spill_load_bytes']} B; PTX shuffles {r['ptx']['shfl']}, barriers "
              f"{r['ptx']['bar']}, shared stores {r['ptx']['st_shared']}")
        for layout in r["layouts"]:
            print("   ", layout)
        top = ", ".join(f"{op} {n}" for op, n in list(r["loop_mix"].items())[:14])
        print(f"    main loop: {r['loop_instructions']} instructions ({top})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
