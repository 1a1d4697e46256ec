"""Sliding-window perplexity at several context lengths, over text files or a prepared data folder.

For each evaluation length L: every document with at least L + 1 tokens is cut to its first L + 1 tokens
(``truncate``; the L predictions of one length are the same tokens for every model), then scored with windows of
``window`` inputs (default L: one window) moved by ``stride`` (each token is predicted once; with
``stride < window`` every token after the first window keeps at least ``window - stride`` tokens of context).
Documents shorter than L + 1 tokens are skipped at that length (and counted). ppl(L) = exp(total NLL / tokens).

Sources: text files (``.txt``/``.md``: one document per file; ``.jsonl``/``.jsonl.gz``/``.parquet``: one per
record's ``text``), folders of them, or a prepared data folder (``meta.json`` + litdata chunks): rows of
max(L) + 1 tokens of its ``val`` (or ``train``) split, documents packed with EOS as in training.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from lit_gpt.eval.common import agg_pyplot, save_figure

__all__ = ["load_documents", "run_perplexity", "plot_perplexity"]


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_documents(sources: Sequence[str], tokenizer: Any, *, max_tokens: int, num_docs: Optional[int] = None,
                   split: str = "val", text_field: str = "text", tokenizer_path: Optional[str] = None,
                   model_vocab: Optional[int] = None) -> tuple[list[list[int]], dict[str, Any]]:
    """Token lists (each cut to ``max_tokens``) and a description of where they came from."""
    from lit_gpt.data import DataError

    docs: list[list[int]] = []
    described: list[str] = []
    for src in sources:
        path = Path(src)
        if num_docs is not None and len(docs) >= num_docs:
            break
        if path.is_dir() and (path / "meta.json").is_file():
            from lit_gpt.data.loader import build_val_loader, read_meta

            meta = read_meta(path)
            if model_vocab is not None and int(meta["vocab_size"]) > model_vocab:
                raise DataError(f"{path} was tokenized with a vocabulary of {meta['vocab_size']} ids, more than the "
                                f"model's {model_vocab}: use data prepared with the model's tokenizer")
            theirs = meta.get("tokenizer_sha256")
            if theirs is None and (path / "tokenizer.json").is_file():
                theirs = _file_sha256(path / "tokenizer.json")
            if theirs and tokenizer_path and Path(tokenizer_path).is_file() and theirs != _file_sha256(
                    Path(tokenizer_path)):
                raise DataError(f"{path} was prepared with a different tokenizer than the model's "
                                f"({tokenizer_path}): prepare the text again with --tokenizer {tokenizer_path}")
            if split == "val":
                loader = build_val_loader(path, seq_len=max_tokens - 1, multiple=1, micro_batch=1)
            else:
                from litdata import StreamingDataset, TokensLoader

                loader = StreamingDataset(str(path / split), item_loader=TokensLoader(block_size=max_tokens),
                                          shuffle=False)
            for row in loader:
                row = row[0] if getattr(row, "dim", lambda: 1)() == 2 else row
                docs.append([int(t) for t in row.tolist()])
                if num_docs is not None and len(docs) >= num_docs:
                    break
            described.append(f"{path} ({split} rows of {max_tokens} tokens)")
            continue
        from lit_gpt.data.prepare import discover_files, iter_file_documents

        files = discover_files(path)
        for f in files:
            for text in iter_file_documents(f, text_field):
                if not text.strip():
                    continue
                docs.append(tokenizer.encode(text)[:max_tokens])
                if num_docs is not None and len(docs) >= num_docs:
                    break
            if num_docs is not None and len(docs) >= num_docs:
                break
        described.append(str(path))
    if not docs:
        raise DataError(f"no documents found in {', '.join(map(str, sources))}")
    return docs, {"sources": described, "documents": len(docs)}


def run_perplexity(model: Any, docs: Sequence[Sequence[int]], lengths: Sequence[int], *,
                   stride: Optional[int] = None, window: Optional[int] = None, batch_size: int = 1,
                   truncate: bool = True, log: Optional[Callable[[str], None]] = print) -> dict[str, Any]:
    from lit_gpt.eval.scoring import perplexity, score_continuations, sliding_window_pairs

    rows = []
    for L in sorted(set(int(x) for x in lengths)):
        t0 = time.time()
        win = min(int(window), L) if window else L
        st = min(int(stride), win) if stride else win
        pairs: list[tuple[list[int], list[int]]] = []
        used = skipped = 0
        for doc in docs:
            if truncate and len(doc) < L + 1:
                skipped += 1
                continue
            toks = list(doc[:L + 1]) if truncate else list(doc)
            pairs += sliding_window_pairs(toks, window=win, stride=st)
            used += 1
        if not pairs:
            rows.append({"seq_length": L, "window": win, "stride": st, "docs": 0, "skipped_docs": skipped,
                         "tokens": 0, "loss": None, "ppl": None})
            if log:
                log(f"ppl: length {L}: no document has {L + 1} tokens ({skipped} skipped)")
            continue
        scores = score_continuations(model, pairs, max_length=win, batch_size=batch_size)
        nll = -sum(s for s, _ in scores)
        n = sum(len(c) for _, c in pairs)
        row = {"seq_length": L, "window": win, "stride": st, "docs": used, "skipped_docs": skipped, "tokens": n,
               "loss": nll / n, "ppl": perplexity(nll, n), "elapsed_s": round(time.time() - t0, 2)}
        rows.append(row)
        if log:
            log(f"ppl: length {L:>7} window {win} stride {st}: {used} docs, {n} tokens, loss {row['loss']:.4f}, "
                f"ppl {row['ppl']:.3f} ({row['elapsed_s']}s)")
    return {"kind": "ppl", "truncate": truncate, "lengths": rows}


def plot_perplexity(result: dict[str, Any], path: str | Path, title: str = "") -> Path:
    plt = agg_pyplot()
    rows = [r for r in result["lengths"] if r.get("ppl") is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["seq_length"] for r in rows], [r["ppl"] for r in rows], marker="o")
    if len(rows) > 1 and rows[-1]["seq_length"] / rows[0]["seq_length"] > 4:
        ax.set_xscale("log", base=2)
    ax.set_xlabel("evaluation length (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title(title or "Perplexity vs context length")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
