"""Where a training step's time goes: ``python benchmarks/throughput.py ... --profile_steps N [--profile_dir DIR]``.

After a variant's timed steps, ``N`` more of the same steps run under ``torch.profiler`` (CUDA kernels on a GPU, CPU
ops in ``--cpu`` smoke mode). Only leaf device events are counted — kernels, memcpy and memset, each once (on CPU:
each op's self time) — so nothing is double counted. Printed, and kept in the result JSON under ``profile``:

  (a) wall time per step vs kernel time and GPU busy time (union of kernel intervals): the gap is GPU idle, i.e.
      host-bound time (the profiler itself adds host overhead, so the unprofiled step time is printed next to it);
  (b) kernel time by category (``categorize``) and by phase of the step (``phase_of``: the CPU op that launched the
      kernel and its ancestors: forward, backward, head cross-entropy, clipping, optimizer), and the gemm category's
      achieved TF/s: FLOPs of the ``aten::mm/addmm/bmm/baddbmm`` ops (``with_flops=True``) and, analytically,
      6 · tokens · (weights of all nn.Linear modules) — the two differ when a gemm is not an aten op (e.g. a Triton
      mm template) or when activation checkpointing recomputes the forward;
  (c) the top kernels by total time, with calls and mean µs;
  (d) with ``--profile_dir``: the same JSON (``<variant>_profile.json``) and a gzipped Chrome trace
      (``<variant>_trace.json.gz``, open in https://ui.perfetto.dev).
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import torch

HEAD_MARK, CLIP_MARK = "litscale::head_ce", "litscale::clip"
CATEGORIES = ("gemm", "attn_fwd", "attn_bwd", "scan", "conv", "inductor", "cross_entropy", "optimizer", "aten_eager",
              "memcpy_memset", "nccl", "other")
PHASES = ("forward", "head_ce", "backward", "clip", "optimizer", "unattributed")
MM_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_scaled_mm")
INDUCTOR = ("triton_poi", "triton_red", "triton_per", "triton_for")
OUR_ELEMENTWISE = ("swiglu_bwd",)  # hand-written Triton kernels that replace an inductor kernel: counted with them
ATTENTION = ("flash", "fmha", "sdpa", "attention", "flex")
BACKWARD = ("bwd", "bprop", "backward", "cutlassb", "dot_do_o", "convert_dq")
GEMM = ("gemm", "gemv", "cutlass", "cublas", "xmma", "nvjet", "splitk", "triton_tem") + MM_OPS
CONV = ("conv1d", "conv2d", "conv3d", "convolution", "conv_depthwise", "causal_conv", "implicit_gemm", "wgrad", "dgrad",
        "cudnn::cnn")
CROSS_ENTROPY = ("cross_entropy", "softmax", "nll_loss", "logsumexp", "liger")
OPTIMIZER = ("multi_tensor_apply", "fused_adam", "adamw", "foreach", "lpnorm")


def categorize(name: str, phase: str = "") -> str:
    """The category of one kernel (CUDA kernel name, or aten op name on CPU); ``phase`` from ``phase_of``.

    Order matters: attention before gemm (``fmha_cutlass*``, cuDNN's ``*_sdpa_*``), our Triton scan before
    inductor, and inductor/eager kernels launched by the head's cross-entropy count as cross-entropy. "inductor" also
    holds our elementwise Triton kernels that take an inductor kernel's place (kernels/swiglu.py), so profiles
    before and after compare.
    """
    n = name.lower()
    has = lambda keys: any(k in n for k in keys)  # noqa: E731
    if "nccl" in n:
        return "nccl"
    if has(("memcpy", "memset")):
        return "memcpy_memset"
    if not n.startswith(INDUCTOR) and has(ATTENTION):
        return "attn_bwd" if has(BACKWARD) else "attn_fwd"
    if has(("_scan_", "selective_scan")):
        return "scan"
    if not n.startswith(INDUCTOR) and has(CONV):
        return "conv"
    if has(GEMM):
        return "gemm"
    if has(OPTIMIZER):
        return "optimizer"
    if phase == "head_ce" or (not n.startswith("triton_") and has(CROSS_ENTROPY)):
        return "cross_entropy"
    if n.startswith("triton_") or n.startswith(OUR_ELEMENTWISE):
        return "inductor"
    if has(("at::native", "elementwise", "reduce_kernel", "cub::", "aten::")):
        return "aten_eager"
    return "other"


def phase_of(ancestors: Iterable[str]) -> str:
    """The step phase of a kernel, from the names of its launching CPU op and that op's ancestors (innermost first)."""
    for name in ancestors:
        if name.startswith(HEAD_MARK):
            return "head_ce"
        if name.startswith(CLIP_MARK):
            return "clip"
        if name.startswith("Optimizer."):  # Optimizer.step#AdamW.step, Optimizer.zero_grad#AdamW.zero_grad
            return "optimizer"
        if name.startswith("autograd::engine::evaluate_function"):
            return "backward"
    return "forward"


def union_us(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of (start, end) intervals (time the device ran at least one kernel)."""
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e > end:
            total += e - max(s, end)
            end = e
    return total


def breakdown(rows: list[tuple[str, float, str]], steps: int, top: int = 25) -> dict[str, Any]:
    """rows: (kernel name, duration µs, phase) of every leaf kernel of ``steps`` steps -> per-step tables."""
    total = sum(d for _, d, _ in rows) or 1.0
    by_cat: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    by_phase: dict[str, float] = defaultdict(float)
    by_kernel: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0])
    for name, dur, phase in rows:
        cat = categorize(name, phase)
        for acc in (by_cat[cat], by_kernel[(name, cat)]):
            acc[0] += dur
            acc[1] += 1
        by_phase[phase] += dur
    per_step = lambda us: round(us / steps / 1e3, 3)  # noqa: E731  µs over all steps -> ms per step
    pct = lambda us: round(100 * us / total, 1)  # noqa: E731
    kernels = sorted(by_kernel.items(), key=lambda kv: -kv[1][0])[:top]
    return dict(
        kernel_ms=per_step(sum(d for _, d, _ in rows)),
        categories={c: dict(ms=per_step(by_cat[c][0]), pct=pct(by_cat[c][0]), calls=round(by_cat[c][1] / steps, 1))
                    for c in CATEGORIES if c in by_cat},
        phases={p: dict(ms=per_step(by_phase[p]), pct=pct(by_phase[p])) for p in PHASES if p in by_phase},
        top_kernels=[dict(name=n[:300], category=c, ms=per_step(us), pct=pct(us), calls=round(cnt / steps, 1),
                          mean_us=round(us / cnt, 1)) for (n, c), (us, cnt) in kernels])


# ------------------------------------------------------------------------------------------ torch side
def _ancestors(evt) -> Iterable[str]:
    while evt is not None:
        yield evt.name
        evt = evt.cpu_parent


def collect(prof, cuda: bool) -> tuple[list[tuple[str, float, str]], float, float]:
    """(rows, device busy µs, FLOPs of the aten mm ops) from a finished profiler.

    CUDA: one row per device event (kernel, memcpy, memset; ``device_type == CUDA``, the GPU copies of
    ``record_function`` ranges dropped), its duration from its own time range. Its phase comes from the CPU op that
    launched it: the profiler lists each kernel under that op (``FunctionEvent.kernels``: name and the same duration,
    an API every torch 2.x has), matched here by (name, duration). CPU: each op's self time, so nested ops are not
    counted twice.
    """
    from torch.autograd import DeviceType

    def annotation(e) -> bool:  # record_function ranges (on the CPU and their copies on the GPU timeline)
        return bool(getattr(e, "is_user_annotation", False)) or getattr(e, "activity_type", "") == "gpu_user_annotation"

    events = prof.events()
    cpu = [e for e in events if e.device_type == DeviceType.CPU]
    flops = float(sum(getattr(e, "flops", 0) or 0 for e in cpu if e.name in MM_OPS))
    if not cuda:
        return [(e.name, e.self_cpu_time_total, phase_of(_ancestors(e))) for e in cpu if not annotation(e)], 0.0, flops
    launchers = defaultdict(list)
    for e in cpu:
        for k in getattr(e, "kernels", None) or []:
            launchers[(k.name, k.duration)].append(e)
    rows, spans = [], []
    for d in events:
        if d.device_type != DeviceType.CUDA or annotation(d) or d.name.startswith("ProfilerStep"):
            continue
        start, end = d.time_range.start, d.time_range.end
        owners = launchers.get((d.name, end - start))
        if owners:
            phase = phase_of(_ancestors(owners.pop()))
        else:  # Triton kernels launched by our own code (not an aten op) have no launching op in the profile
            phase = "optimizer" if any(k in d.name for k in OPTIMIZER) else "unattributed"
        rows.append((d.name, end - start, phase))
        spans.append((start, end))
    return rows, union_us(spans), flops


@contextlib.contextmanager
def marked(obj: Any, attr: str, label: str):
    """Run ``obj.attr(...)`` inside ``record_function(label)`` (so its kernels get a phase); restored on exit."""
    own, old = attr in vars(obj), getattr(obj, attr)

    @functools.wraps(old)
    def wrapper(*args, **kwargs):
        with torch.profiler.record_function(label):
            return old(*args, **kwargs)

    setattr(obj, attr, wrapper)
    try:
        yield
    finally:
        setattr(obj, attr, old) if own else delattr(obj, attr)


def profile_steps(step: Callable[[], Any], steps: int, device: torch.device, *, name: str, tokens: int,
                  model_flops: float, linear_weights: int, step_ms: Optional[float] = None,
                  peak_flops: Optional[float] = None, marks: Iterable[tuple[Any, str, str]] = (),
                  out_dir: Optional[str] = None) -> dict[str, Any]:
    """Run ``steps`` calls of ``step`` (already warm) under the profiler; return, print and optionally write the
    breakdown. ``marks``: (object, attribute, label) callables to wrap in ``record_function`` while profiling."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    with contextlib.ExitStack() as stack:
        for obj, attr, label in marks:
            stack.enter_context(marked(obj, attr, label))
        with profile(activities=activities, with_flops=True) as prof:
            sync()
            t0 = time.perf_counter()
            for i in range(steps):
                with torch.profiler.record_function(f"ProfilerStep#{i}"):  # step ranges for summarize_trace
                    step()
            sync()
            wall_us = (time.perf_counter() - t0) * 1e6
    rows, busy_us, mm_flops = collect(prof, cuda)
    out = breakdown(rows, steps)
    gemm_s = out["categories"].get("gemm", {}).get("ms", 0.0) / 1e3
    analytic = 6.0 * tokens * linear_weights
    tfs = lambda f: round(f / gemm_s / 1e12, 2) if gemm_s and f else None  # noqa: E731
    busy_ms = busy_us / steps / 1e3 if cuda else None
    out = dict(name=name, device=str(device), steps=steps, tokens_per_step=tokens, step_ms_unprofiled=step_ms,
               wall_ms=round(wall_us / steps / 1e3, 3),
               busy_ms=None if busy_ms is None else round(busy_ms, 3),
               idle_ms=None if busy_ms is None else round((step_ms or wall_us / steps / 1e3) - busy_ms, 3),
               mfu_if_never_idle=round(model_flops / (busy_ms / 1e3) / peak_flops, 4) if busy_ms and peak_flops
               else None,
               gemm=dict(flops_profiler=mm_flops / steps, flops_analytic=analytic,
                         tflops_profiler=tfs(mm_flops / steps), tflops_analytic=tfs(analytic)), **out)
    if out_dir:
        path = Path(out_dir)
        path.mkdir(parents=True, exist_ok=True)
        stem = name.replace("+", "_")
        trace = path / f"{stem}_trace.json"
        prof.export_chrome_trace(str(trace))  # gzipped here: not every torch version gzips a ".gz" path itself
        with open(trace, "rb") as src, gzip.open(f"{trace}.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        trace.unlink()
        out["trace"] = f"{trace}.gz"
        if cuda:  # where the GPU waited: the longest stretches without a kernel, from the device timeline
            out["idle_gaps"] = summarize_trace(out["trace"], gaps=8)["idle_gaps"]
        (path / f"{stem}_profile.json").write_text(json.dumps(out, indent=2))
    print(format_breakdown(out), flush=True)
    return out


def format_breakdown(b: dict[str, Any]) -> str:
    f = lambda v, spec=".1f": "-" if v is None else format(v, spec)  # noqa: E731
    lines = [f"== profile {b['name']} on {b['device']}: {b['steps']} steps, {b['tokens_per_step']:,} tokens/step",
             f"(a) per step: wall {f(b['step_ms_unprofiled'])} ms unprofiled, {f(b['wall_ms'])} ms profiled | "
             f"kernels {f(b['kernel_ms'])} ms | GPU busy {f(b['busy_ms'])} ms | idle (unprofiled wall - busy) "
             f"{f(b['idle_ms'])} ms | MFU if never idle {f(b['mfu_if_never_idle'] and 100 * b['mfu_if_never_idle'])} %",
             f"(b) {'category':<16}{'ms/step':>9}{'%':>7}{'calls':>8}     {'phase':<14}{'ms/step':>9}{'%':>7}"]
    cats, phases = list(b["categories"].items()), list(b["phases"].items())
    for i in range(max(len(cats), len(phases))):
        left = (f"{cats[i][0]:<16}{cats[i][1]['ms']:>9.2f}{cats[i][1]['pct']:>7.1f}{cats[i][1]['calls']:>8.0f}"
                if i < len(cats) else " " * 40)
        right = f"{phases[i][0]:<14}{phases[i][1]['ms']:>9.2f}{phases[i][1]['pct']:>7.1f}" if i < len(phases) else ""
        lines.append(f"    {left}     {right}".rstrip())
    g = b["gemm"]
    lines.append(f"    gemm: {f(g['tflops_profiler'])} TF/s from profiler FLOPs ({g['flops_profiler'] / 1e12:.3g} "
                 f"TFLOP/step, aten mm ops), {f(g['tflops_analytic'])} TF/s analytic (6 x tokens x Linear weights = "
                 f"{g['flops_analytic'] / 1e12:.3g} TFLOP/step)")
    lines.append(f"(c) {'top kernels':<90}{'category':>14}{'ms/step':>9}{'%':>7}{'calls':>7}{'mean us':>10}")
    for k in b["top_kernels"]:
        name = k["name"] if len(k["name"]) <= 90 else k["name"][:87] + "..."
        lines.append(f"    {name:<90}{k['category']:>14}{k['ms']:>9.2f}{k['pct']:>7.1f}{k['calls']:>7.0f}"
                     f"{k['mean_us']:>10.1f}")
    if b.get("trace"):
        lines.append(f"(d) chrome trace: {b['trace']}")
    lines += [_gap_line(g) for g in b.get("idle_gaps", [])]
    return "\n".join(lines)


def _gap_line(g: dict[str, Any]) -> str:
    line = f"    idle gap {g['ms']:8.3f} ms after {g['before'][:60]} | before {g['after'][:60]}"
    if "waited_in" in g:
        line += f"\n        host waited in {g['waited_in']}"
    if "launch_ms" in g:
        line += f"\n        next kernel launched {g['launch_ms']:.3f} ms into the gap"
    if "host_ops" in g:
        line += "; host meanwhile: " + ", ".join(f"{k} {v:.3f} ms" for k, v in g["host_ops"].items())
    return line


# ------------------------------------------------------------------------------- traces from pretrain --profile
def summarize_trace(path: str | Path, top: int = 15, gaps: int = 5) -> dict[str, Any]:
    """Summarize a Chrome trace written by ``pretrain.py --profile N`` (one file per rank; .json or .json.gz).

    Same categories as above (no phases: a trace file keeps no CPU-op ancestry we rely on), plus what only matters
    across devices: how much collective time (``nccl``) is *exposed*, i.e. runs while no compute kernel does.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as fh:
        events = json.load(fh)["traceEvents"]
    kernels = [e for e in events if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    # each ProfilerStep# range appears twice, on the CPU and (as gpu_user_annotation) on the device timeline; the
    # device copies are the steps as the GPU ran them (without a host sync per step the host runs ahead, and the
    # CPU ranges end before their kernels do), the CPU ranges serve where a trace has no device copies
    marks = [e for e in events if e.get("ph") == "X" and str(e.get("name", "")).startswith("ProfilerStep#")]
    steps = [e for e in marks if e.get("cat") == "gpu_user_annotation"] or marks
    if not kernels or not steps:
        raise ValueError(f"{path}: no device kernels or no ProfilerStep# ranges; is it a GPU trace from --profile?")
    n = len(steps)
    lo, hi = min(e["ts"] for e in steps), max(e["ts"] + e["dur"] for e in steps)
    span = hi - lo
    kernels = [e for e in kernels if lo <= e["ts"] < hi]  # the profiled steps' kernels only
    host = [e for e in events if e.get("cat") in ("cuda_runtime", "cuda_driver", "cpu_op")]
    rows = [(e["name"], float(e["dur"]), "") for e in kernels]
    out = breakdown(rows, n, top=top)
    every = [(e["ts"], e["ts"] + e["dur"]) for e in kernels]
    compute = [(s, e) for (s, e), k in zip(every, kernels) if "nccl" not in k["name"].lower()]
    busy, busy_compute = union_us(every), union_us(compute)
    per_step = lambda us: round(us / n / 1e3, 3)  # noqa: E731
    out.update(trace=str(path), steps=n, step_ms=per_step(span), busy_ms=per_step(busy),
               compute_busy_ms=per_step(busy_compute), idle_ms=per_step(span - busy),
               nccl_exposed_ms=per_step(busy - busy_compute), idle_gaps=idle_gaps(kernels, gaps, host=host))
    return out


def idle_gaps(kernels: list[dict], top: int = 5, host: Iterable[dict] = ()) -> list[dict[str, Any]]:
    """The longest stretches with no kernel running on the device, each with the kernels on either side: where a
    host synchronization or slow host code leaves the GPU waiting shows as the same gap in every step.

    ``host``: the trace's CPU-side events. With them each gap also says what the host did: ``waited_in``, a CUDA
    runtime or driver call that ended as the gap began after lasting longer than it (the host waited for the device, which
    then drained: a synchronization), ``launch_ms``, how long after the gap began the host issued the kernel that
    ended it, and ``host_ops``, the CPU ops that started in between (ms summed by name, longest first)."""
    ordered = sorted(kernels, key=lambda e: e["ts"])
    found, end, last = [], float("-inf"), None
    for e in ordered:
        if last is not None and e["ts"] > end:
            found.append(dict(ms=round((e["ts"] - end) / 1e3, 3), before=last["name"][:120], after=e["name"][:120],
                              _span=(end, e["ts"]), _next=e))
        if e["ts"] + e["dur"] > end:
            end, last = e["ts"] + e["dur"], e
    found = sorted(found, key=lambda g: -g["ms"])[:top]
    host = [e for e in host if e.get("ph") == "X"]
    runtime = [e for e in host if e.get("cat") in ("cuda_runtime", "cuda_driver")]  # Triton launches: the driver
    launches = {e["args"]["correlation"]: e for e in runtime if "correlation" in e.get("args", {})}
    ops = [e for e in host if e.get("cat") == "cpu_op"]
    for g in found:
        (start, stop), nxt = g.pop("_span"), g.pop("_next")
        if not host:
            continue
        launch = launches.get(nxt.get("args", {}).get("correlation"))
        until = launch["ts"] if launch else stop
        if launch:
            g["launch_ms"] = round((launch["ts"] - start) / 1e3, 3)
        slack = 0.05 * (stop - start) + 20.0  # µs: clocks of host and device events are aligned, not identical
        waits = [e for e in runtime if abs(e["ts"] + e["dur"] - start) <= slack and e["dur"] > stop - start]
        if waits:
            wait = max(waits, key=lambda e: e["dur"])
            g["waited_in"] = f"{wait['name']} ({wait['dur'] / 1e3:.3f} ms)"
        spent: dict[str, float] = {}
        for e in ops:
            if start <= e["ts"] < until:
                spent[e["name"]] = spent.get(e["name"], 0.0) + e["dur"] / 1e3
        if spent:
            g["host_ops"] = {k: round(v, 3) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])[:3]}
    return found


def format_trace_summary(s: dict[str, Any]) -> str:
    lines = [f"== trace {s['trace']}: {s['steps']} steps",
             f"per step: wall {s['step_ms']:.1f} ms | GPU busy {s['busy_ms']:.1f} | compute busy "
             f"{s['compute_busy_ms']:.1f} | collectives exposed (no compute running) {s['nccl_exposed_ms']:.1f} | "
             f"idle {s['idle_ms']:.1f}"]
    lines += [f"    {c:<16}{v['ms']:>9.2f} ms {v['pct']:>6.1f} %{v['calls']:>8.0f} calls" for c, v in s["categories"].items()]
    lines += [f"    {k['name'][:90]:<90}{k['category']:>14}{k['ms']:>9.2f}{k['calls']:>7.0f}" for k in s["top_kernels"]]
    lines += [_gap_line(g) for g in s.get("idle_gaps", [])]
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Summarize pretrain.py --profile traces (Chrome JSON, per rank).")
    parser.add_argument("traces", nargs="+", help="trace files (*.pt.trace.json[.gz]) from <out_dir>/profile")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    for trace_path in args.traces:
        print(format_trace_summary(summarize_trace(trace_path, args.top)))
