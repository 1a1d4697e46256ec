"""Average the model weights of several checkpoints of one run (checkpoint averaging / "model soup" of a run).

    python -m lit_gpt.average OUT/checkpoints/step-00009000 OUT/checkpoints/step-00010000 --out AVG
    python -m lit_gpt.average --last 3 OUT --out AVG

All checkpoints must have the same model config (else a clear error names the differing fields). The mean is
taken in float32 and stored in each tensor's original dtype (integer tensors must be equal and are copied).
``AVG`` becomes a run-like folder that every eval tool accepts: ``AVG/checkpoints/step-<newest step>/``
(``state.pt`` with ``{"model": ...}`` + ``manifest.json`` written by ``save_checkpoint``, the source manifest's
config/options/plan kept, ``averaged_from`` added), plus ``AVG/tokenizer.json`` (also inside the checkpoint folder)
and ``AVG/average.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

__all__ = ["AverageError", "average_checkpoints", "last_checkpoints", "main"]


class AverageError(ValueError):
    pass


def last_checkpoints(run_dir: str | Path, n: int) -> list[Path]:
    """The ``n`` newest intact checkpoints of a run, oldest first."""
    from lit_gpt.training.checkpoint import list_checkpoints

    if n < 1:
        raise AverageError(f"--last needs N >= 1, got {n}")
    intact = [c.path for c in list_checkpoints(run_dir) if c.intact]
    if len(intact) < n:
        raise AverageError(f"{run_dir} has {len(intact)} intact checkpoint(s), fewer than --last {n}")
    return intact[-n:]


def _config_diff(a: dict, b: dict) -> dict:
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def average_checkpoints(paths: Sequence[str | Path], out: str | Path, *, overwrite: bool = False,
                        log=print) -> Path:
    from lit_gpt.inference import clean_state_dict, resolve_checkpoint
    from lit_gpt.training.checkpoint import load_checkpoint, save_checkpoint

    if len(paths) < 2:
        raise AverageError("give at least two checkpoints to average")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise AverageError(f"{out} exists and is not empty: pass --overwrite or choose another folder")
    resolved = []
    for p in paths:
        kind, where, run_dir = resolve_checkpoint(p)
        if kind not in ("run", "checkpoint"):
            raise AverageError(f"{p} is not a litscale checkpoint (found {kind}); averaging needs checkpoints "
                               "with manifests (run or checkpoint folders)")
        resolved.append((Path(where), run_dir))
    if len({str(w.resolve()) for w, _ in resolved}) != len(resolved):
        raise AverageError("the same checkpoint is listed twice")
    acc: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    first_meta: Optional[dict] = None
    first_config: Optional[dict] = None
    steps, tokens = [], []
    for n, (where, _) in enumerate(resolved):
        state, manifest = load_checkpoint(where)
        meta = manifest.get("meta") or {}
        config = meta.get("config")
        if not isinstance(config, dict):
            raise AverageError(f"{where} records no model config in its manifest")
        sd = clean_state_dict(state["model"])
        if first_config is None:
            first_meta, first_config = meta, config
            acc = {k: v.detach().to(torch.float32).clone() if v.is_floating_point() else v.clone()
                   for k, v in sd.items()}
            dtypes = {k: v.dtype for k, v in sd.items()}
        else:
            diff = _config_diff(first_config, config)
            if diff:
                shown = ", ".join(f"{k}: {a!r} vs {b!r}" for k, (a, b) in list(diff.items())[:6])
                raise AverageError(f"{where} has a different model config than {resolved[0][0]} ({shown}): only "
                                   "checkpoints of one model can be averaged")
            if set(sd) != set(acc):
                raise AverageError(f"{where} holds different tensors than {resolved[0][0]}")
            for k, v in sd.items():
                if tuple(v.shape) != tuple(acc[k].shape):
                    raise AverageError(f"{where}: {k} has shape {tuple(v.shape)}, expected {tuple(acc[k].shape)}")
                if v.is_floating_point():
                    acc[k] += v.to(torch.float32)
                elif not torch.equal(v, acc[k]):
                    raise AverageError(f"{where}: integer tensor {k} differs between checkpoints")
        steps.append(int(manifest.get("step") or 0))
        tokens.append(manifest.get("tokens"))
        log(f"average: loaded {where} (step {steps[-1]})")
    k_n = float(len(resolved))
    avg = {k: (v / k_n).to(dtypes[k]) if v.is_floating_point() else v for k, v in acc.items()}

    tok_src = None
    for where, run_dir in resolved:
        for cand in (where / "tokenizer.json", (Path(run_dir) / "tokenizer.json") if run_dir else None):
            if cand is not None and cand.is_file():
                tok_src = cand
                break
        if tok_src:
            break
    assert first_meta is not None
    meta = {k: v for k, v in first_meta.items() if k in ("options_hash", "model_options", "options", "config", "plan")}
    meta.update(tokens=tokens[-1] if tokens[-1] is not None else None, reason="average",
                averaged_from=[str(w) for w, _ in resolved], averaged_steps=steps)
    if out.exists() and overwrite:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    extra = {"tokenizer.json": tok_src.read_bytes()} if tok_src else None
    path = save_checkpoint(out, max(steps), {"model": avg}, meta=meta, extra_files=extra)
    if tok_src:
        shutil.copyfile(tok_src, out / "tokenizer.json")
    else:
        log("average: warning: no tokenizer.json found with the sources; pass tokenizer= when evaluating")
    (out / "average.json").write_text(json.dumps({"averaged_from": meta["averaged_from"], "steps": steps,
                                                  "checkpoint": str(path)}, indent=2) + "\n", encoding="utf-8")
    log(f"average: wrote the mean of {len(resolved)} checkpoints to {path}")
    return path


def main(argv: Optional[list[str]] = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m lit_gpt.average", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="*", help="checkpoint folders (or run folders: their newest checkpoint)")
    p.add_argument("--last", nargs=2, metavar=("N", "RUN_DIR"), help="the N newest intact checkpoints of RUN_DIR")
    p.add_argument("--out", required=True, help="output folder (becomes a run-like folder)")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    from lit_gpt.inference import ModelLoadError
    from lit_gpt.training.checkpoint import CheckpointError

    try:
        paths = list(args.checkpoints)
        if args.last:
            try:
                n = int(args.last[0])
            except ValueError:
                raise AverageError(f"--last N RUN_DIR: N must be an integer, got {args.last[0]!r}") from None
            paths += [str(x) for x in last_checkpoints(args.last[1], n)]
        return average_checkpoints(paths, args.out, overwrite=args.overwrite)
    except (AverageError, ModelLoadError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)


if __name__ == "__main__":
    main()
