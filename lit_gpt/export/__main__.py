"""``python -m lit_gpt.export hf CKPT OUT`` (Llama for Transformer++, litscale format otherwise) or
``python -m lit_gpt.export litscale CKPT OUT``. See lit_gpt/export/hf.py."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m lit_gpt.export", description=__doc__)
    p.add_argument("format", choices=("hf", "litscale"), help="hf: Hugging Face Llama when possible")
    p.add_argument("checkpoint", help="run folder, checkpoint folder, export or weights file")
    p.add_argument("out", help="output folder")
    p.add_argument("--config", default=None, help="optional model name/JSON checked against the checkpoint's")
    p.add_argument("--tokenizer", default=None, help="override the checkpoint's tokenizer.json")
    p.add_argument("--dtype", default=None, help="weights dtype in the export (default float32)")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    from lit_gpt.export.hf import ExportError, export
    from lit_gpt.inference import ModelLoadError
    from lit_gpt.training.checkpoint import CheckpointError

    try:
        result = export(args.checkpoint, args.out, fmt=args.format, config=args.config, tokenizer=args.tokenizer,
                        dtype=args.dtype, overwrite=args.overwrite)
    except (ExportError, ModelLoadError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
    if args.format == "hf" and result["format"] != "hf-llama":
        print("note: " + result["notes"][0] + " -> wrote litscale format (load with lit_gpt.inference.load_model)",
              file=sys.stderr)
    for n in result["notes"]:
        print(f"  {n}")
    print(f"exported {args.checkpoint} as {result['format']} to {result['out']}")
    return result


if __name__ == "__main__":
    main()
