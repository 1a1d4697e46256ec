"""Timing helpers shared by the benchmarks: warm-up, then timed steps between device synchronizations."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
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
