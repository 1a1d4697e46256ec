"""Sliding-window perplexity at several context lengths -> JSON + PNG (ppl vs length).

    python eval_ppl.py --checkpoint_path OUT --data docs/ --seq_lengths 512,1024,2048 [--stride 256]
    python eval_ppl.py --checkpoint_path OUT --data data/builtin --seq_lengths 128,256 --num_docs 64

``--data``: text files / folders (.txt/.md one document per file; .jsonl/.parquet one per record) or a prepared
data folder (rows of its val split). Lengths beyond the training length of a RoPE model need
``--allow_extrapolation`` (NoPE/SSM models, sliding-window-only RoPE models and rbase models are allowed).
See lit_gpt/eval/perplexity.py for the exact protocol and docs/eval.md.
"""

from __future__ import annotations

import argparse
import sys
import time


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint_path", required=True, help="run folder, checkpoint folder, export or weights file")
    p.add_argument("--config", default=None, help="optional model name/JSON checked against the checkpoint's")
    p.add_argument("--tokenizer", default=None, help="override the checkpoint's tokenizer.json")
    p.add_argument("--data", nargs="+", default=None, help="text files/folders or a prepared data folder")
    p.add_argument("--split", default="val", help="split of a prepared data folder (val or train)")
    p.add_argument("--text_field", default="text", help="field of .jsonl/.parquet records holding the text")
    p.add_argument("--seq_lengths", "--seq_length", dest="seq_lengths", nargs="+", default=None,
                   help="evaluation lengths, e.g. 1024 2048 or 1k,2k,4k (default: the training length)")
    p.add_argument("--stride", "--sliding_window", dest="stride", type=int, default=None,
                   help="window step in tokens (default: the window, i.e. disjoint windows)")
    p.add_argument("--window", type=int, default=None,
                   help="model inputs per window (default: the evaluation length, one window per document)")
    p.add_argument("--no_truncate", action="store_true",
                   help="score whole documents with sliding windows instead of their first L+1 tokens")
    p.add_argument("--num_docs", "--samples", dest="num_docs", type=int, default=None, help="at most this many documents")
    p.add_argument("--batch_size", type=int, default=1)
    p.add_argument("--output_dir", default=None, help="default: RUN/eval/ppl for a run folder")
    p.add_argument("--tag", default=None, help="name of the output files (default: ppl)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16")
    p.add_argument("--allow_extrapolation", action="store_true",
                   help="evaluate RoPE models beyond their training length anyway")
    return p


def main(argv: list[str] | None = None, prog: str | None = None, default_data_env: str | None = None) -> dict:
    args = build_parser(prog).parse_args(argv)
    from lit_gpt.data import DataError
    from lit_gpt.eval.common import default_output_dir, fail, load_for_eval, parse_lengths, write_json
    from lit_gpt.eval.perplexity import load_documents, plot_perplexity, run_perplexity
    from lit_gpt.eval.scoring import extrapolation_problem

    if not args.data and default_data_env:
        import os

        if os.environ.get(default_data_env):
            args.data = [os.environ[default_data_env]]
    if not args.data:
        fail("pass --data: text files, folders of them, or a prepared data folder (nothing is downloaded)"
             + (f"; or set {default_data_env}" if default_data_env else ""))
    model, cfg, tok, info = load_for_eval(args.checkpoint_path, args.config, args.device, args.dtype, args.tokenizer)
    lengths = parse_lengths(args.seq_lengths) if args.seq_lengths else [cfg.block_size]
    if not lengths or min(lengths) < 2:
        fail(f"evaluation lengths must be >= 2, got {lengths}")
    for L in lengths:
        span = min(L, args.window) if args.window else L
        problem = extrapolation_problem(cfg, span)
        if problem and not args.allow_extrapolation:
            fail(problem)
    try:
        docs, source = load_documents(args.data, tok, max_tokens=(None if args.no_truncate else max(lengths) + 1)
                                      or 10**12, num_docs=args.num_docs, split=args.split,
                                      text_field=args.text_field, tokenizer_path=info.tokenizer_path,
                                      model_vocab=cfg.padded_vocab_size)
        result = run_perplexity(model, docs, lengths, stride=args.stride, window=args.window,
                                batch_size=args.batch_size, truncate=not args.no_truncate,
                                log=lambda m: print(m, file=sys.stderr))
    except (DataError, ValueError) as e:
        fail(str(e))
    if all(r["ppl"] is None for r in result["lengths"]):
        fail(f"no document is long enough for any of the lengths {lengths} (longest has "
             f"{max(len(d) for d in docs)} tokens): pass shorter --seq_lengths, longer documents, or --no_truncate")
    result.update(source, model=cfg.name, checkpoint=info.checkpoint, run_dir=info.run_dir, step=info.step,
                  tokens_trained=info.tokens, created=time.strftime("%Y-%m-%dT%H:%M:%S"))
    out = default_output_dir(info, "ppl", args.output_dir)
    tag = args.tag or "ppl"
    path = write_json(out / f"{tag}.json", result)
    plot_perplexity(result, out / f"{tag}.png", title=f"{cfg.name} step {info.step}")
    for r in result["lengths"]:
        ppl = "n/a" if r["ppl"] is None else f"{r['ppl']:.4f}"
        print(f"  length {r['seq_length']:>7}  docs {r['docs']:>5}  tokens {r['tokens']:>9}  ppl {ppl}")
    print(f"wrote {path} and {tag}.png")
    return result


if __name__ == "__main__":
    main()
