"""Turn raw text into pre-tokenized, packed litdata chunks (``python -m lit_gpt.data.prepare``).

Output folder ``DIR``::

    DIR/train/         litdata chunks of int32 token ids + index.json (read with TokensLoader(block_size=T+1))
    DIR/val/           the same for the validation documents (absent when --val_fraction 0)
    DIR/tokenizer.json the tokenizer the ids belong to (+ tokenizer_config.json naming EOS/BOS)
    DIR/meta.json      vocab_size, eos_id, bos_id, documents and tokens per split, files, context_length, ...

How the text becomes tokens:
    * Inputs: a folder (searched recursively, files in sorted path order) of ``.txt`` / ``.md`` files (one
      document per file), ``.jsonl`` / ``.jsonl.gz`` files and ``.parquet`` files (one document per row, text
      in ``--text_field``), or the built-in corpus (``--builtin``, the default without ``--input_dir``).
    * Split by document: a document goes to validation when a hash of (seed, file, row) falls below
      ``--val_fraction`` — deterministic, independent of the order of other files, and streaming. The first
      document always trains; when no document drew validation, the last training document moves there.
    * Every document is encoded without BOS and followed by one EOS, then all documents of a split are
      concatenated (packed, never padded). ``--max_length`` cuts longer documents into pieces of at most that
      many tokens (with ``--shuffle`` the pieces are shuffled independently, so one long document does not
      fill consecutive training rows). ``--shuffle`` shuffles documents/pieces with ``--seed`` before packing
      (this holds one split's tokens in memory).
    * The stream is cut into chunks of ``chunk_tokens`` ids, a multiple of ``context_length + 1`` (about 16M
      tokens, 64 MB), each written as one litdata item. litdata's TokensLoader never reads a row across a
      chunk boundary, so for rows of T+1 tokens nothing is lost except the tail of each chunk (none at all
      when T = context_length).
    * Tokenization runs through ``tokenizers``' batch encoder, which uses ``--num_workers`` threads in Rust.

Re-running with the same request (same inputs, sizes and modification times included) is a no-op; pass
``--overwrite`` to redo. Bad input raises ``DataError``; the CLI prints ``error: <message>`` and exits 2.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lit_gpt.data import DataError

TEXT_SUFFIXES = (".txt", ".md")
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
PARQUET_SUFFIXES = (".parquet",)
KNOWN_SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
TARGET_CHUNK_TOKENS = 1 << 24  # ~64 MB of int32 per chunk
FORMAT = "litdata-tokens-int32-v1"
_BATCH_CHARS = 4_000_000  # text handed to the batch encoder at once
_BATCH_DOCS = 2048


# ---------------------------------------------------------------------------------------------- inputs
def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(KNOWN_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return "".join(path.suffixes[-2:]).lower() or "(no suffix)"


def discover_files(input_dir: str | os.PathLike) -> list[Path]:
    """Files of known types under ``input_dir`` (recursive, sorted); DataError when there are none."""
    root = Path(input_dir)
    if not root.exists():
        raise DataError(f"input folder {root} does not exist: pass --input_dir a folder of .txt/.md/.jsonl files")
    if root.is_file():
        if _suffix(root) in KNOWN_SUFFIXES:
            return [root]
        raise DataError(f"--input_dir {root} is not a folder or a known file type: use {', '.join(KNOWN_SUFFIXES)}")
    everything = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not everything:
        raise DataError(f"input folder {root} is empty: put .txt/.md/.jsonl/.jsonl.gz/.parquet files in it")
    files = [p for p in everything if _suffix(p) in KNOWN_SUFFIXES]
    if not files:
        found = sorted({_suffix(p) for p in everything})
        raise DataError(
            f"no files of a known type in {root} (found {', '.join(found)}): "
            f"use {', '.join(KNOWN_SUFFIXES)} (one document per .txt/.md file, one per .jsonl line)"
        )
    return files


def _read_jsonl(path: Path, text_field: str) -> Iterator[str]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{lineno} is not valid JSON ({exc.msg}): fix or remove the line") from None
                if not isinstance(row, dict) or text_field not in row:
                    fields = ", ".join(sorted(row)) if isinstance(row, dict) else type(row).__name__
                    raise DataError(
                        f"{path}:{lineno} has no '{text_field}' field (fields: {fields}): "
                        f"pass --text_field with the name of the text field"
                    )
                value = row[text_field]
                if value is None:
                    continue
                if not isinstance(value, str):
                    raise DataError(
                        f"{path}:{lineno} field '{text_field}' is a {type(value).__name__}, not text: "
                        "pass --text_field naming a string field"
                    )
                yield value
    except (OSError, EOFError) as exc:  # e.g. a truncated .gz
        raise DataError(f"cannot read {path} ({exc}): re-download or remove the file") from None


def _read_parquet(path: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"reading {path} needs pyarrow: pip install pyarrow (or convert to .jsonl)") from None
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if text_field not in names:
        raise DataError(
            f"{path} has no '{text_field}' column (columns: {', '.join(names)}): "
            "pass --text_field with the name of the text column"
        )
    for batch in pf.iter_batches(columns=[text_field]):
        for value in batch.column(0).to_pylist():
            if isinstance(value, str):
                yield value


def iter_file_documents(path: Path, text_field: str = "text") -> Iterator[str]:
    """The documents of one input file (empty ones included; the caller skips them)."""
    suffix = _suffix(path)
    if suffix in TEXT_SUFFIXES:
        yield path.read_text(encoding="utf-8", errors="replace")
    elif suffix in JSONL_SUFFIXES:
        yield from _read_jsonl(path, text_field)
    elif suffix in PARQUET_SUFFIXES:
        yield from _read_parquet(path, text_field)
    else:  # discover_files filters these out
        raise DataError(f"unsupported file type {path}: use {', '.join(KNOWN_SUFFIXES)}")


@dataclass(frozen=True)
class _Source:
    """Where documents come from: a list of files, or the built-in corpus."""

    root: Path | None
    files: tuple[Path, ...]
    text_field: str

    @property
    def builtin(self) -> bool:
        return self.root is None

    def documents(self) -> Iterator[tuple[str, str]]:
        """(key, text) for every non-empty document, in a fixed order; the key names the document stably."""
        if self.builtin:
            from lit_gpt.data.corpus import builtin_documents

            for i, text in enumerate(builtin_documents()):
                if text.strip():
                    yield f"builtin:{i}", text
            return
        for path in self.files:
            rel = path.relative_to(self.root).as_posix()
            for i, text in enumerate(iter_file_documents(path, self.text_field)):
                if text.strip():
                    yield f"{rel}:{i}", text

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        if self.builtin:
            h.update(f"builtin python {sys.version_info[:3]}".encode())
        else:
            for path in self.files:
                st = path.stat()
                h.update(f"{path.relative_to(self.root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:16]


def _is_val(key: str, seed: int, val_fraction: float) -> bool:
    if val_fraction <= 0:
        return False
    digest = hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64 < val_fraction


# ---------------------------------------------------------------------------------------------- output
class _PackedWriter:
    """Concatenate token arrays and write them as litdata chunks of exactly ``chunk_tokens`` ids (last: fewer)."""

    def __init__(self, folder: Path, chunk_tokens: int) -> None:
        self.folder = folder
        self.chunk_tokens = chunk_tokens
        self.tokens = 0
        self.documents = 0
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._writer: Any = None
        self._items = 0

    def add(self, ids: np.ndarray) -> None:
        self._buffer.append(ids)
        self._buffered += len(ids)
        self.tokens += len(ids)
        while self._buffered >= self.chunk_tokens:
            stream = np.concatenate(self._buffer)
            self._emit(stream[: self.chunk_tokens])
            rest = stream[self.chunk_tokens :]
            self._buffer, self._buffered = ([rest] if len(rest) else []), len(rest)

    def _emit(self, ids: np.ndarray) -> None:
        if self._writer is None:
            from litdata.streaming.item_loader import TokensLoader
            from litdata.streaming.writer import BinaryWriter

            self.folder.mkdir(parents=True, exist_ok=True)
            self._writer = BinaryWriter(str(self.folder), chunk_size=self.chunk_tokens, item_loader=TokensLoader())
        self._writer.add_item(self._items, np.ascontiguousarray(ids, dtype=np.int32))
        self._items += 1

    def close(self) -> None:
        if self._buffered:
            self._emit(np.concatenate(self._buffer))
            self._buffer, self._buffered = [], 0
        if self._writer is None:
            return
        self._writer.done()
        # One writer wrote everything: merge its index without waiting for other ranks (prepare may be called
        # from inside a distributed job, where litdata's merge() would wait for every rank's index).
        merge_no_wait = getattr(self._writer, "_merge_no_wait", None)
        if merge_no_wait is not None:
            merge_no_wait()
        else:  # pragma: no cover - older litdata
            self._writer.merge(1)

    @property
    def files(self) -> int:
        return self._items


def _chunk_tokens_for(context_length: int, requested: int | None) -> int:
    row = context_length + 1
    if requested is not None:
        if requested < 1:
            raise DataError(f"chunk_tokens must be positive, got {requested}")
        return max(row, (requested // row) * row)
    return max(1, TARGET_CHUNK_TOKENS // row) * row


# ---------------------------------------------------------------------------------------------- main work
def _resolve_tokenizer_arg(tokenizer: str | os.PathLike | None) -> str:
    if tokenizer is None or str(tokenizer) == "builtin":
        return "builtin"
    path = Path(tokenizer).expanduser()
    if not path.exists():
        raise DataError(
            f"tokenizer path {path} does not exist: pass --tokenizer a tokenizer.json, a folder holding one, "
            "or 'builtin' to train one on the input"
        )
    return str(path.resolve())


def _tokenizer_fingerprint(resolved: str) -> str:
    if resolved == "builtin":
        return "builtin"
    path = Path(resolved)
    files = [path / "tokenizer.json", path / "tokenizer_config.json"] if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """An advisory lock (POSIX flock) so concurrent prepares of one folder run one after the other."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no locking
        yield
        return
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _log(quiet: bool, *args: Any) -> None:
    if not quiet:
        print(*args, flush=True)


def prepare(
    output_dir: str | os.PathLike,
    input_dir: str | os.PathLike | None = None,
    *,
    builtin: bool = False,
    tokenizer: str | os.PathLike | None = "builtin",
    vocab_size: int = 4096,
    context_length: int = 4096,
    val_fraction: float = 0.05,
    seed: int = 42,
    max_length: int | None = None,
    shuffle: bool = False,
    text_field: str = "text",
    num_workers: int | None = None,
    chunk_tokens: int | None = None,
    overwrite: bool = False,
    quiet: bool = False,
) -> dict[str, Any]:
    """Tokenize ``input_dir`` (or the built-in corpus) into ``output_dir``; returns the meta.json contents.

    ``tokenizer`` is a tokenizer.json / folder, or "builtin" to train a byte-level BPE of ``vocab_size`` on the
    training documents. See the module docstring for the layout and the rules.
    """
    start = time.perf_counter()
    if input_dir is not None and builtin:
        raise DataError("pass either --input_dir or --builtin, not both")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"--val_fraction must be in [0, 1), got {val_fraction}")
    if context_length < 1:
        raise DataError(f"--context_length must be positive, got {context_length}")
    if max_length is not None and max_length < 2:
        raise DataError(f"--max_length must be at least 2 tokens, got {max_length}")
    if num_workers is not None and num_workers > 0:
        # tokenizers' Rust thread pool reads this when it first starts (a no-op if it already runs).
        os.environ.setdefault("RAYON_NUM_THREADS", str(num_workers))

    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"--output_dir {out} is a file: pass a folder")
    if input_dir is None:
        source = _Source(None, (), text_field)
    else:
        root = Path(input_dir).expanduser()
        files = discover_files(root)
        base = root.resolve() if root.is_dir() else root.resolve().parent
        source = _Source(base, tuple(f.resolve() for f in files), text_field)
    tok_arg = _resolve_tokenizer_arg(tokenizer)
    from lit_gpt.data.tokenizer import Tokenizer, train_builtin_tokenizer

    given_tok = None if tok_arg == "builtin" else Tokenizer.from_path(tok_arg)  # fail before touching the output
    chunk = _chunk_tokens_for(context_length, chunk_tokens)

    request = {
        "format": FORMAT,
        "input": "builtin" if source.builtin else str(source.root),
        "input_fingerprint": source.fingerprint(),
        "text_field": text_field,
        "tokenizer": tok_arg,
        "tokenizer_fingerprint": _tokenizer_fingerprint(tok_arg),
        "vocab_size": vocab_size if tok_arg == "builtin" else None,
        "context_length": context_length,
        "chunk_tokens": chunk,
        "val_fraction": val_fraction,
        "seed": seed,
        "max_length": max_length,
        "shuffle": bool(shuffle),
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / ".prepare.lock").touch()
    except OSError as exc:
        reason = exc.strerror or exc
        raise DataError(f"cannot write to --output_dir {out} ({reason}): choose a writable folder") from None
    with _exclusive(out / ".prepare.lock"):  # ranks or shells preparing the same folder take turns
        meta_path = out / "meta.json"
        if meta_path.is_file() and not overwrite:
            try:
                old = json.loads(meta_path.read_text())
            except json.JSONDecodeError:
                old = {}
            if old.get("request") == request and (out / "train" / "index.json").is_file():
                _log(quiet, f"{out} is already prepared for this request (meta.json matches): skipping; "
                     "--overwrite to redo")
                return old

        # Start clean: only the things this tool writes (the folder may hold other files).
        meta_path.unlink(missing_ok=True)
        for name in ("train", "val"):
            shutil.rmtree(out / name, ignore_errors=True)

        # Tokenizer
        if tok_arg == "builtin":
            _log(quiet, f"training a byte-level BPE tokenizer (vocab {vocab_size}) on the training documents ...")
            first = True

            def training_texts() -> Iterator[str]:
                nonlocal first
                for key, text in source.documents():
                    if first or not _is_val(key, seed, val_fraction):
                        yield text
                    first = False

            tok = train_builtin_tokenizer(training_texts(), vocab_size=vocab_size)
        else:
            tok = given_tok
        tok.save(out)
        if tok.vocab_size > np.iinfo(np.int32).max:  # pragma: no cover - absurd
            raise DataError("vocabulary too large for int32 ids")

        writers = {"train": _PackedWriter(out / "train", chunk), "val": _PackedWriter(out / "val", chunk)}
        held: dict[str, list[list[np.ndarray]]] = {"train": [], "val": []}  # only with --shuffle
        held_back: list[np.ndarray] | None = None  # the newest training document, written one step late
        counts = {"train": 0, "val": 0}
        pieces = {"train": 0, "val": 0}
        chars = 0

        def route(split: str, doc_pieces: list[np.ndarray]) -> None:
            counts[split] += 1
            pieces[split] += len(doc_pieces)
            if shuffle:
                held[split].append(doc_pieces)
            else:
                for p in doc_pieces:
                    writers[split].add(p)

        def handle(key: str, ids: list[int], first_doc: bool) -> None:
            nonlocal held_back
            arr = np.asarray(ids, dtype=np.int32)
            doc_pieces = [arr] if not max_length else [arr[i : i + max_length] for i in range(0, len(arr), max_length)]
            if not first_doc and _is_val(key, seed, val_fraction):
                route("val", doc_pieces)
                return
            if held_back is not None:
                route("train", held_back)
            held_back = doc_pieces

        from tqdm.auto import tqdm

        bar = tqdm(
            unit="doc",
            desc="tokenizing",
            disable=quiet,
            dynamic_ncols=True,
        )
        batch_keys: list[str] = []
        batch_texts: list[str] = []
        batch_chars = 0
        seen = 0

        def flush() -> None:
            nonlocal batch_keys, batch_texts, batch_chars, seen
            if not batch_texts:
                return
            for key, ids in zip(batch_keys, tok.encode_batch(batch_texts, eos=True)):
                handle(key, ids, seen == 0)
                seen += 1
            bar.update(len(batch_texts))
            bar.set_postfix(tokens=writers["train"].tokens + writers["val"].tokens, refresh=False)
            batch_keys, batch_texts, batch_chars = [], [], 0

        for key, text in source.documents():
            batch_keys.append(key)
            batch_texts.append(text)
            batch_chars += len(text)
            chars += len(text)
            if batch_chars >= _BATCH_CHARS or len(batch_texts) >= _BATCH_DOCS:
                flush()
        flush()
        bar.close()

        if seen == 0:
            where = "the built-in corpus" if source.builtin else f"{len(source.files)} file(s) under {source.root}"
            hint = "" if source.builtin else f" (check --text_field {text_field!r} and the file contents)"
            raise DataError(f"no text found in {where}: every document is empty{hint}")
        if held_back is not None:
            # No document drew validation (tiny inputs): the last training document becomes the validation split.
            split = "val" if val_fraction > 0 and counts["val"] == 0 and counts["train"] >= 1 else "train"
            route(split, held_back)
        if shuffle:
            rng = random.Random(seed)
            for split in ("train", "val"):
                flat = [p for doc in held[split] for p in doc]
                rng.shuffle(flat)
                for p in flat:
                    writers[split].add(p)
                held[split].clear()
        for w in writers.values():
            w.close()

        tokens = {s: writers[s].tokens for s in writers}
        meta = {
            "format": FORMAT,
            "vocab_size": tok.vocab_size,
            "eos_id": tok.eos_id,
            "bos_id": tok.bos_id,
            "tokenizer": "tokenizer.json",
            "tokenizer_source": tok_arg,
            "tokenizer_sha256": hashlib.sha256((out / "tokenizer.json").read_bytes()).hexdigest(),
            "dtype": "int32",
            "documents": dict(counts),
            "pieces": dict(pieces),
            "tokens": tokens,
            "files": {s: writers[s].files for s in writers},
            "input_files": len(source.files) if not source.builtin else 0,
            "input_chars": chars,
            "context_length": context_length,
            "chunk_tokens": chunk,
            "splits": [s for s in ("train", "val") if tokens[s] > 0],
            "request": request,
            "seconds": round(time.perf_counter() - start, 2),
        }
        tmp = meta_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, meta_path)  # meta.json appears only once everything else is written

        src = "built-in corpus" if source.builtin else f"{len(source.files)} input file(s) from {source.root}"
        _log(
            quiet,
            f"prepared {src} -> {out}\n"
            f"  documents: train {counts['train']:,}, val {counts['val']:,}"
            + (f" (pieces: train {pieces['train']:,}, val {pieces['val']:,})" if max_length else "")
            + f"\n  tokens:    train {tokens['train']:,}, val {tokens['val']:,}"
            f"\n  chunks:    train {writers['train'].files}, val {writers['val'].files} (litdata, int32, "
            f"{chunk:,} tokens each)"
            f"\n  tokenizer: vocab {tok.vocab_size:,}, eos {tok.eos_id}, bos {tok.bos_id} ({tok_arg})"
            f"\n  time:      {meta['seconds']:.1f} s",
        )
        if tokens["train"] < context_length + 1:
            _log(
                quiet,
                f"warning: the training split has {tokens['train']:,} tokens, fewer than one row of "
                f"context_length+1 = {context_length + 1:,}: train with a shorter context or add data",
            )
        return meta


# ---------------------------------------------------------------------------------------------- CLI
def _bool(value: str) -> bool:
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "y", "on"):
        return True
    if v in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {value!r}")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog or "python -m lit_gpt.data.prepare",
        description="Tokenize text into packed litdata chunks (DIR/train, DIR/val, DIR/tokenizer.json, DIR/meta.json).",
    )
    p.add_argument("--input_dir", "--input-dir", default=None, help="folder of .txt/.md/.jsonl[.gz]/.parquet files")
    p.add_argument("--builtin", action="store_true", help="use the built-in corpus (default without --input_dir)")
    p.add_argument("--output_dir", "--output-dir", required=True, help="where to write the prepared data")
    p.add_argument("--tokenizer", "--tokenizer_path", default="builtin",
                   help="tokenizer.json, a folder holding one, or 'builtin' (train a BPE on the input)")
    p.add_argument("--vocab_size", "--vocab-size", type=int, default=4096, help="vocabulary of the builtin tokenizer")
    p.add_argument("--context_length", "--context-length", "--ctx_len", type=int, default=4096,
                   help="training context T; chunks hold a multiple of T+1 tokens")
    p.add_argument("--val_fraction", "--val-fraction", type=float, default=0.05,
                   help="share of documents for validation")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--max_length", "--max-length", type=int, default=None, help="cut longer documents into pieces")
    p.add_argument("--shuffle", nargs="?", const=True, default=False, type=_bool,
                   help="shuffle documents before packing")
    p.add_argument("--text_field", "--text-field", default="text",
                   help="field of .jsonl/.parquet rows holding the text")
    p.add_argument("--num_workers", "--num-workers", type=int, default=None,
                   help="tokenizer threads (default: all cores)")
    p.add_argument("--chunk_tokens", "--chunk-tokens", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--overwrite", nargs="?", const=True, default=False, type=_bool,
                   help="redo even if meta.json matches")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    return p


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """CLI entry point: returns 0, or 2 after printing ``error: <message>`` for bad input."""
    args = build_parser(prog).parse_args(argv)
    try:
        prepare(
            args.output_dir,
            args.input_dir,
            builtin=args.builtin,
            tokenizer=args.tokenizer,
            vocab_size=args.vocab_size,
            context_length=args.context_length,
            val_fraction=args.val_fraction,
            seed=args.seed,
            max_length=args.max_length,
            shuffle=args.shuffle,
            text_field=args.text_field,
            num_workers=args.num_workers,
            chunk_tokens=args.chunk_tokens,
            overwrite=args.overwrite,
            quiet=args.quiet,
        )
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
