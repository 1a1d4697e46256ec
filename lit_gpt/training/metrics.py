"""Run logging: ``metrics.csv`` (always), ``run.json`` (the resolved run and its status), a live console line,
and optionally wandb (offline when no API key is set) or TensorBoard."""

from __future__ import annotations

import csv
import json
import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

BASE_COLUMNS = ["step", "tokens", "flops", "train_loss", "lr", "tokens_per_sec", "mfu", "max_mem_gb", "elapsed_s",
                "val_loss"]


def metric_columns(val_multiple: int) -> list[str]:
    return BASE_COLUMNS + [f"val_loss_{k}x" for k in range(1, val_multiple + 1)]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunRecorder:
    """Writes the run folder's ``run.json`` and ``metrics.csv``; only rank 0 should create one."""

    def __init__(self, out_dir: str | Path, run: dict[str, Any], val_multiple: int, logger: str = "csv"):
        from lit_gpt import __version__

        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.columns = metric_columns(val_multiple)
        self.run = dict(run, status="running", litscale_version=__version__, started_at=_now(), updated_at=_now())
        run_json = self.dir / "run.json"
        if run_json.exists():  # a resumed run keeps its first start time
            try:
                self.run["started_at"] = json.loads(run_json.read_text()).get("started_at", self.run["started_at"])
            except (OSError, json.JSONDecodeError):
                pass
        write_json_atomic(run_json, self.run)
        self.csv_path = self.dir / "metrics.csv"
        new = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        if not new:  # a run killed mid-row left a partial last line: end it so appended rows stay whole
            with open(self.csv_path, "rb+") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")
        self._file = open(self.csv_path, "a", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=self.columns, extrasaction="ignore")
        if new:
            self._writer.writeheader()
            self._file.flush()
        self._external = self._open_external(logger)

    def _open_external(self, logger: str):
        if logger == "wandb":
            import wandb

            mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
            return wandb.init(project="litscale", name=self.run.get("run_name"), dir=str(self.dir), mode=mode,
                              config=self.run.get("options"), resume="allow")
        if logger == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter

            return SummaryWriter(log_dir=str(self.dir / "tensorboard"))
        return None

    def log(self, row: dict[str, Any]) -> None:
        clean = {k: ("" if v is None or (isinstance(v, float) and math.isnan(v)) else v) for k, v in row.items()}
        self._writer.writerow(clean)
        self._file.flush()
        numeric = {k: v for k, v in row.items() if isinstance(v, (int, float)) and v is not None and k != "step"}
        if self._external is not None:
            if hasattr(self._external, "add_scalar"):
                for k, v in numeric.items():
                    self._external.add_scalar(k, v, row["step"])
            else:
                self._external.log(numeric, step=row["step"])

    def update(self, **fields: Any) -> None:
        self.run.update(fields, updated_at=_now())
        write_json_atomic(self.dir / "run.json", self.run)

    def close(self, status: str) -> None:
        self.update(status=status)
        self._file.close()
        if self._external is not None:
            (self._external.close if hasattr(self._external, "close") else self._external.finish)()


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def live_line(step: int, max_steps: int, loss: float, tokens_per_sec: float, mfu: Optional[float],
              mem_gb: Optional[float], lr: float, eta_s: float) -> str:
    parts = [f"step {step}/{max_steps}", f"loss {loss:.4f}", f"lr {lr:.3e}", f"{tokens_per_sec:,.0f} tok/s"]
    if mfu is not None:
        parts.append(f"MFU {100 * mfu:.1f}%")
    if mem_gb is not None:
        parts.append(f"mem {mem_gb:.1f} GB")
    parts.append(f"ETA {format_duration(eta_s)}")
    return " | ".join(parts)


class Throughput:
    """Tokens/s and MFU over the window since the last log."""

    def __init__(self, flops_per_token: float, peak_flops: Optional[float], world_size: int):
        self.flops_per_token, self.peak, self.world = flops_per_token, peak_flops, world_size
        self.t0 = time.perf_counter()
        self.tokens0 = 0

    def measure(self, tokens: int) -> tuple[float, Optional[float]]:
        now = time.perf_counter()
        rate = (tokens - self.tokens0) / max(now - self.t0, 1e-9)
        self.t0, self.tokens0 = now, tokens
        mfu = None if self.peak is None else rate * self.flops_per_token / (self.peak * self.world)
        return rate, mfu
