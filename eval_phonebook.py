"""Phonebook long-context retrieval (SPEC §8): accuracy per context-length bucket -> JSON + PNG.

    python eval_phonebook.py --checkpoint_path OUT --min_eval_len 1850 --max_eval_len 32000 \
        --eval_batch_size 4 --num_samples 1000 [--config sambay_d16] [--output_dir DIR]

See lit_gpt/eval/phonebook.py for the prompt format and docs/eval.md for the options.
"""

from __future__ import annotations

import argparse
import sys
import time


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint_path", required=True, help="run folder, checkpoint folder, export or weights file")
    p.add_argument("--config", default=None, help="optional model name/JSON checked against the checkpoint's")
    p.add_argument("--tokenizer", default=None, help="override the checkpoint's tokenizer.json")
    p.add_argument("--min_eval_len", type=int, default=1850, help="shortest prompt, tokens")
    p.add_argument("--max_eval_len", type=int, default=32000, help="longest prompt, tokens")
    p.add_argument("--num_buckets", type=int, default=8, help="context-length buckets between min and max")
    p.add_argument("--bucket_spacing", choices=("log", "linear"), default="log")
    p.add_argument("--num_samples", type=int, default=1000, help="prompts in total (spread over the buckets)")
    p.add_argument("--eval_batch_size", type=int, default=1, help="prompts per batch (they share one length)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--output_dir", default=None, help="default: RUN/eval/phonebook for a run folder")
    p.add_argument("--device", default=None, help="default: cuda when available")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16")
    p.add_argument("--allow_extrapolation", action="store_true",
                   help="run lengths beyond the training length of a RoPE model anyway")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    from lit_gpt.eval.common import default_output_dir, fail, load_for_eval, write_json
    from lit_gpt.eval.phonebook import plot_phonebook, run_phonebook
    from lit_gpt.eval.scoring import extrapolation_problem

    model, cfg, tok, info = load_for_eval(args.checkpoint_path, args.config, args.device, args.dtype, args.tokenizer)
    answer_tokens = len(tok.encode(" 9876543210")) + 2
    problem = extrapolation_problem(cfg, args.max_eval_len + answer_tokens)
    if problem and not args.allow_extrapolation:
        fail(problem)
    out = default_output_dir(info, "phonebook", args.output_dir)
    print(f"phonebook: {cfg.name} step {info.step} from {info.checkpoint}; lengths {args.min_eval_len}.."
          f"{args.max_eval_len} in {args.num_buckets} buckets, {args.num_samples} samples -> {out}", file=sys.stderr)
    try:
        result = run_phonebook(model, tok, min_len=args.min_eval_len, max_len=args.max_eval_len,
                               num_samples=args.num_samples, num_buckets=args.num_buckets,
                               batch_size=args.eval_batch_size, seed=args.seed, spacing=args.bucket_spacing, answer_tokens=answer_tokens,
                               log=lambda m: print(m, file=sys.stderr))
    except ValueError as e:
        fail(str(e))
    result.update(model=cfg.name, checkpoint=info.checkpoint, run_dir=info.run_dir, step=info.step,
                  tokens=info.tokens, created=time.strftime("%Y-%m-%dT%H:%M:%S"))
    samples = result.pop("samples")
    path = write_json(out / "phonebook.json", result)
    import json

    with open(out / "phonebook_samples.jsonl", "w", encoding="utf-8") as f:
        for r in samples:
            f.write(json.dumps(r) + "\n")
    plot_phonebook(result, out / "phonebook.png", title=f"Phonebook: {cfg.name} step {info.step}")
    for b in result["buckets"]:
        acc = "n/a" if b["accuracy"] is None else f"{b['accuracy']:.3f}"
        print(f"  {b['lo']:>7}-{b['hi']:<7} n={b['n']:<5} accuracy {acc}")
    print(f"phonebook accuracy {result['accuracy']:.4f}; wrote {path} and phonebook.png")
    result["samples"] = samples
    return result


if __name__ == "__main__":
    main()
