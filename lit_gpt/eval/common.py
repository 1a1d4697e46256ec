"""Shared plumbing of the eval command lines: model loading with CLI-friendly errors, output folders, JSON."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Optional

__all__ = ["load_for_eval", "default_output_dir", "write_json", "parse_lengths", "fail", "agg_pyplot", "save_figure"]


def fail(message: str) -> "None":
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def load_for_eval(checkpoint: str, config: Optional[str], device: Optional[str], dtype: Optional[str],
                  tokenizer: Optional[str] = None):
    """``load_model`` with the errors a user can fix turned into ``error: ...`` lines."""
    import torch

    from lit_gpt.inference import ModelLoadError, load_model
    from lit_gpt.training.checkpoint import CheckpointError

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        model, cfg, tok, info = load_model(checkpoint, device, dtype, config_override=config or None,
                                           tokenizer=tokenizer)
    except (ModelLoadError, CheckpointError, FileNotFoundError) as e:
        fail(str(e))
    for note in info.notes:
        print(f"note: {note}", file=sys.stderr)
    return model, cfg, tok, info


def default_output_dir(info: Any, kind: str, given: Optional[str]) -> Path:
    """``given``, else ``RUN/eval/<kind>`` when the checkpoint belongs to a run folder, else ``./eval_<kind>``."""
    if given:
        return Path(given)
    if getattr(info, "run_dir", None):
        return Path(info.run_dir) / "eval" / kind
    return Path(f"eval_{kind}")


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(data), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


def agg_pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported only when a plot is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path) -> Path:
    """Lay out ``fig``, write it to ``path`` (parent folders made) at 120 dpi and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def parse_lengths(values: Any) -> list[int]:
    """``[1024, "2048,4096", "8k"]`` -> [1024, 2048, 4096, 8192]."""
    out: list[int] = []
    for v in values if isinstance(values, (list, tuple)) else [values]:
        for part in str(v).replace(" ", "").split(","):
            if not part:
                continue
            mult = 1
            if part[-1] in "kK":
                part, mult = part[:-1], 1024
            out.append(int(float(part.replace("_", "")) * mult))
    return out
