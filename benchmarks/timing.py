"""Timing helpers shared by the benchmarks: warm-up, then timed steps between device synchronizations."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step: Callable[[], Any], *, steps: int, warmup: int, device: torch.device) -> dict[str, Any]:
    """Run ``warmup`` untimed steps (compilation happens there), then ``steps`` timed ones.

    The mean step time is wall time between two synchronizations divided by ``steps`` (what tokens/s uses);
    on CUDA each step is also bracketed by events (no synchronization inside the timed window) for the median.
    Returns ``step_s``, ``median_step_s``, ``warmup_s`` and ``last`` (the last step's return value).
    """
    t0 = time.perf_counter()
    out = None
    for _ in range(warmup):
        out = step()
    sync(device)
    warmup_s = time.perf_counter() - t0
    cuda = device.type == "cuda"
    events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)] if cuda else []
    cpu_times = []
    t0 = time.perf_counter()
    if cuda:
        events[0].record()
    for i in range(steps):
        ts = time.perf_counter()
        out = step()
        if cuda:
            events[i + 1].record()
        else:
            cpu_times.append(time.perf_counter() - ts)
    sync(device)
    total = time.perf_counter() - t0
    per_step = [events[i].elapsed_time(events[i + 1]) / 1e3 for i in range(steps)] if cuda else cpu_times
    return dict(step_s=total / steps, median_step_s=statistics.median(per_step) if per_step else total,
                warmup_s=warmup_s, last=out)


def time_call_ms(fn: Callable[[], Any], cuda: bool) -> float:
    """Milliseconds of one call of ``fn``: between CUDA events (then a synchronization) on CUDA, else wall time."""
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def cuda_peak_mib(fn: Callable[[], Any]) -> float:
    """Peak MiB allocated on the current CUDA device during ``fn`` above what was allocated before."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def failure_note(exc: BaseException) -> str:
    """The note of a benchmark row whose case raised: ``OOM`` (after emptying the CUDA cache) or the error."""
    if isinstance(exc, torch.OutOfMemoryError):
        torch.cuda.empty_cache()
        return "OOM"
    return f"error: {type(exc).__name__}: {str(exc)[:120]}"


def cli_device(parser: Any, args: Any) -> torch.device:
    """``--cpu`` (which also sets ``args.dtype`` to fp32) or CUDA; a parser error when there is no CUDA device."""
    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA device: pass --cpu (with --small for a smoke run)")
    device = torch.device("cpu" if args.cpu else "cuda")
    if args.cpu:
        args.dtype = "fp32"
    return device


def apply_small(parser: Any, args: Any, small: dict[str, Any]) -> None:
    """``--small``: these tiny values, except where the command line says otherwise (not the default)."""
    for key, value in small.items():
        if getattr(args, key) == parser.get_default(key):
            setattr(args, key, value)


def device_label(device: torch.device) -> str:
    return torch.cuda.get_device_name() if device.type == "cuda" else "CPU"


def cell(x: Any, fmt: str) -> str:
    """A markdown table cell: ``x`` formatted, or empty for None."""
    return "" if x is None else format(x, fmt)


def report(rows: list, table: str, dev_name: str, args: Any) -> int:
    """Print the markdown table, write the rows to ``args.json`` when given; 1 when a row failed parity, else 0."""
    print(table)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": dev_name, "torch": torch.__version__, "args": vars(args),
                       "rows": [asdict(r) for r in rows]}, fh, indent=1)
    return 1 if any("FAIL" in r.note for r in rows) else 0


def peak_memory_gb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 1e9, 2) if device.type == "cuda" else None


def environment(device: torch.device) -> dict[str, Any]:
    """Device, software versions, date and commit for a result row."""
    info: dict[str, Any] = dict(date=datetime.now(timezone.utc).strftime("%Y-%m-%d"), torch=torch.__version__,
                                python=platform.python_version(), host_cpus=os.cpu_count())
    if device.type == "cuda":
        info.update(device=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError:
            pass
    else:
        info["device"] = f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    try:
        root = Path(__file__).resolve().parents[1]
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5).stdout.strip()
        if commit:
            info["commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    return info
