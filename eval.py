"""lm-evaluation-harness with litscale checkpoints: registers the model ``ArchScale`` (alias ``litscale``) and runs
lm-eval's own command line, so every lm-eval flag works (``--include_path``, ``--output_path``, ``--metadata``,
``--trust_remote_code``, ``--limit``, ``--log_samples``, ...).

    python eval.py --model ArchScale --model_args pretrained=OUT[,config=sambay_d16,tokenizer=PATH,max_length=N,
        dtype=bfloat16] --tasks wikitext,lambada_openai,arc_easy --device cuda --batch_size 16

When ``pretrained`` is a run folder (or a checkpoint inside one) and no ``--output_path`` is given, results go to
``OUT/eval/lm_eval/`` where ``python -m lit_gpt.eval.summary OUT`` finds them. Data parallel:
``accelerate launch --multi_gpu --num_processes N eval.py ...`` or torchrun (each process takes its share of the
requests). See docs/eval.md.
"""

from __future__ import annotations

import sys
from pathlib import Path


def _model_args(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--model_args" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--model_args="):
            return a.split("=", 1)[1]
    return None


def default_output_path(argv: list[str]) -> str | None:
    """``RUN/eval/lm_eval`` when ``pretrained`` is a run folder or a checkpoint inside one, else None."""
    if any(a == "--output_path" or a.startswith("--output_path=") or a == "-o" for a in argv):
        return None
    args = _model_args(argv)
    if not args or args.lstrip().startswith("{"):
        return None
    fields = dict(kv.split("=", 1) for kv in args.split(",") if "=" in kv)
    pretrained = fields.get("pretrained", "").strip().strip("'\"")
    if not pretrained:
        return None
    from lit_gpt.inference import ModelLoadError, resolve_checkpoint

    try:
        _, _, run_dir = resolve_checkpoint(pretrained)
    except ModelLoadError:
        return None  # the model itself will report the problem
    return str(Path(run_dir) / "eval" / "lm_eval") if run_dir is not None else None


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from lit_gpt.eval.harness import register
    except ImportError as e:
        raise SystemExit(f"error: eval.py needs lm-evaluation-harness ({e}); install it with "
                         "`pip install lm-eval` or `pip install -e .[eval]`") from None
    register()
    out = default_output_path(argv)
    if out is not None:
        argv += ["--output_path", out]
        print(f"eval.py: results will be written under {out}", file=sys.stderr)
    from lm_eval.__main__ import cli_evaluate

    sys.argv = [sys.argv[0] if sys.argv else "eval.py", *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
