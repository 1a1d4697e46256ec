"""The data room: tokenizer, built-in corpus, preparation, loaders, errors and the CLI (CPU, a few seconds)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lit_gpt.data import DataError
from lit_gpt.data.corpus import builtin_documents
from lit_gpt.data.loader import (
    build_train_loader,
    build_val_loader,
    check_vocab,
    count_rows,
    load_mixture,
    read_meta,
)
from lit_gpt.data.prepare import prepare
from lit_gpt.data.tokenizer import Tokenizer, train_builtin_tokenizer

REPO = Path(__file__).resolve().parents[1]
WORDS = (
    "the model reads long documents and learns to predict every next token from the ones before it while "
    "the loss falls quickly at first and slowly later as the scaling law says"
).split()


def _doc(i: int, n_words: int = 40, vocab: tuple[str, ...] = WORDS) -> str:
    rng = np.random.default_rng(i)
    return f"Document {i}. " + " ".join(vocab[j] for j in rng.integers(0, len(vocab), n_words)) + "."


def _split_tokens(folder: Path) -> np.ndarray:
    """Every token of one split, in order (rows of one token never cross chunks, so nothing is dropped)."""
    from litdata import StreamingDataset, TokensLoader

    ds = StreamingDataset(str(folder), item_loader=TokensLoader(block_size=1), shuffle=False)
    return np.concatenate([np.asarray(ds[i]) for i in range(len(ds))])


def _docs_of(tokens: np.ndarray, tok: Tokenizer) -> list[str]:
    ends = np.flatnonzero(tokens == tok.eos_id)
    assert len(ends) and ends[-1] == len(tokens) - 1, "every document ends with EOS"
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [tok.decode(tokens[s:e]) for s, e in zip(starts, ends)]


@pytest.fixture(scope="module")
def raw_folder(tmp_path_factory) -> tuple[Path, list[str]]:
    """A folder of .txt, .md, .jsonl and .jsonl.gz files; returns it with the list of its documents."""
    root = tmp_path_factory.mktemp("raw")
    docs: list[str] = []
    (root / "sub").mkdir()
    for i in range(6):
        text = _doc(i)
        (root / ("sub" if i % 2 else ".") / f"file{i}.{'md' if i == 5 else 'txt'}").write_text(text)
        docs.append(text)
    rows = [{"id": i, "text": _doc(100 + i)} for i in range(20)]
    (root / "part0.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:10]) + "\n\n")
    with gzip.open(root / "part1.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps(r) for r in rows[10:]))
    (root / "ignored.csv").write_text("a,b\n1,2\n")
    docs += [r["text"] for r in rows]
    return root, docs


@pytest.fixture(scope="module")
def prepared(raw_folder, tmp_path_factory) -> Path:
    root, _ = raw_folder
    out = tmp_path_factory.mktemp("tok")
    prepare(out, root, vocab_size=320, context_length=16, val_fraction=0.2, chunk_tokens=200, quiet=True)
    return out


@pytest.fixture(scope="module")
def builtin_prepared(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("builtin")
    prepare(out, builtin=True, vocab_size=512, context_length=64, chunk_tokens=20_000, quiet=True)
    return out


# ---------------------------------------------------------------------------------------------- tokenizer
def test_tokenizer_round_trip_save_load_and_determinism(tmp_path):
    texts = [_doc(i) for i in range(30)] + ["Ünïcode — tabs\tand\nnewlines 日本語 ok"]
    tok = train_builtin_tokenizer(texts, vocab_size=300)
    assert tok.vocab_size == 300 and tok.eos_id == 0 and tok.bos_id is None
    for text in texts:
        ids = tok.encode(text, eos=True)
        assert ids[-1] == tok.eos_id and tok.eos_id not in ids[:-1]
        assert tok.decode(ids[:-1]) == text
    assert tok.encode_batch(texts[:3], eos=True) == [tok.encode(t, eos=True) for t in texts[:3]]
    again = train_builtin_tokenizer(texts, vocab_size=300)
    assert again.processor.to_str() == tok.processor.to_str()

    file = tok.save(tmp_path / "a" / "tokenizer.json")
    folder_file = tok.save(tmp_path / "b")
    for path in (file, tmp_path / "b", folder_file):
        loaded = Tokenizer.from_path(path)
        assert loaded.encode(texts[0]) == tok.encode(texts[0]) and loaded.eos_id == tok.eos_id


def test_tokenizer_reads_hf_config_and_bos(tmp_path):
    from tokenizers import Tokenizer as HF
    from tokenizers import models

    hf = HF(models.WordLevel({"<unk>": 0, "<s>": 1, "</s>": 2, "<my_eos>": 3, "hi": 4}, unk_token="<unk>"))
    from tokenizers import pre_tokenizers

    hf.pre_tokenizer = pre_tokenizers.Whitespace()
    hf.save(str(tmp_path / "tokenizer.json"))
    config = {"eos_token": {"content": "<my_eos>"}, "bos_token": "<s>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer.from_path(tmp_path)
    assert (tok.eos_id, tok.bos_id) == (3, 1)
    assert tok.encode("hi hi", bos=True, eos=True) == [1, 4, 4, 3]


def test_tokenizer_missing_path(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Tokenizer.from_path(tmp_path / "nope.json")
    with pytest.raises(DataError, match="has no tokenizer.json"):
        Tokenizer.from_path(tmp_path)


# ---------------------------------------------------------------------------------------------- corpus
def test_builtin_corpus_is_deterministic_english():
    docs = builtin_documents()
    assert len(docs) > 100 and sum(map(len, docs)) > 500_000
    assert docs == builtin_documents()
    text = " ".join(docs[:50])
    assert all(word in text for word in (" the ", " statement ", " is "))


# ---------------------------------------------------------------------------------------------- prepare
def test_prepare_folder_layout_split_and_packing(raw_folder, prepared):
    _, docs = raw_folder
    meta = read_meta(prepared)
    assert meta["documents"]["train"] + meta["documents"]["val"] == len(docs) == 26
    assert meta["documents"]["val"] >= 1 and meta["input_files"] == 8  # the .csv is ignored
    assert meta["vocab_size"] == 320 and meta["eos_id"] == 0 and meta["context_length"] == 16
    assert (prepared / "tokenizer.json").is_file() and meta["files"]["train"] >= 2  # several chunks
    tok = Tokenizer.from_path(prepared)

    train = _split_tokens(prepared / "train")
    val = _split_tokens(prepared / "val")
    assert train.dtype == np.int32 and len(train) == meta["tokens"]["train"] and len(val) == meta["tokens"]["val"]
    train_docs, val_docs = _docs_of(train, tok), _docs_of(val, tok)
    assert len(train_docs) == meta["documents"]["train"] and len(val_docs) == meta["documents"]["val"]
    assert not set(train_docs) & set(val_docs)  # disjoint by document
    assert sorted(train_docs + val_docs) == sorted(docs)  # nothing lost, exact round trip

    # Rows of T+1 tokens, EOS between documents inside rows.
    from litdata import StreamingDataset, TokensLoader

    ds = StreamingDataset(str(prepared / "train"), item_loader=TokensLoader(block_size=17))
    rows = [np.asarray(ds[i]) for i in range(len(ds))]
    assert len(rows) == count_rows(prepared, "train", 17) > 10
    assert all(len(r) == 17 for r in rows)
    assert any(0 < int(np.flatnonzero(r == tok.eos_id)[0]) < 16 for r in rows if (r == tok.eos_id).any())


def test_prepare_is_deterministic_and_cached(raw_folder, prepared, tmp_path, capsys):
    root, _ = raw_folder
    again = prepare(tmp_path, root, vocab_size=320, context_length=16, val_fraction=0.2, chunk_tokens=200, quiet=True)
    assert again["tokens"] == read_meta(prepared)["tokens"]
    assert np.array_equal(_split_tokens(tmp_path / "train"), _split_tokens(prepared / "train"))
    prepare(tmp_path, root, vocab_size=320, context_length=16, val_fraction=0.2, chunk_tokens=200)
    assert "skipping" in capsys.readouterr().out
    # A different request redoes the work.
    other = prepare(
        tmp_path, root, vocab_size=320, context_length=16, val_fraction=0.2, seed=7, chunk_tokens=200, quiet=True
    )
    assert other["request"]["seed"] == 7


def test_prepare_max_length_and_shuffle(raw_folder, prepared, tmp_path):
    root, _ = raw_folder
    base = read_meta(prepared)
    meta = prepare(
        tmp_path, root, tokenizer=prepared / "tokenizer.json", context_length=16, val_fraction=0.2,
        max_length=8, shuffle=True, chunk_tokens=200, quiet=True,
    )
    assert meta["tokens"] == base["tokens"] and meta["documents"] == base["documents"]
    assert meta["pieces"]["train"] > 3 * meta["documents"]["train"]
    train = _split_tokens(tmp_path / "train")
    assert sorted(train.tolist()) == sorted(_split_tokens(prepared / "train").tolist())
    assert not np.array_equal(train, _split_tokens(prepared / "train"))  # shuffled pieces


def test_prepare_builtin_corpus(builtin_prepared):
    meta = read_meta(builtin_prepared)
    assert meta["vocab_size"] == 512 and meta["tokens"]["train"] > 300_000 and meta["tokens"]["val"] > 5_000
    assert meta["documents"]["val"] >= 5 and meta["request"]["input"] == "builtin"
    loader = build_train_loader(builtin_prepared, seq_len=64, micro_batch=4, num_workers=0)
    batch = next(iter(loader))
    assert batch.shape == (4, 65) and str(batch.dtype) == "torch.int64"
    assert int(batch.max()) < meta["vocab_size"]


def test_prepare_single_file_and_concurrent_calls(raw_folder, prepared, tmp_path):
    import threading

    root, _ = raw_folder
    meta = prepare(tmp_path / "one", root / "part0.jsonl", tokenizer=prepared, context_length=16, quiet=True)
    assert meta["input_files"] == 1 and meta["documents"]["train"] + meta["documents"]["val"] == 10

    results, errors = [], []

    def run():
        try:
            results.append(prepare(tmp_path / "same", root, tokenizer=prepared, context_length=16, quiet=True))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 3
    assert all(r["tokens"] == results[0]["tokens"] for r in results)
    assert count_rows(tmp_path / "same", "train", 17) > 0


# ---------------------------------------------------------------------------------------------- loaders
@pytest.mark.parametrize("num_workers", [0, 2])
def test_train_loader_resume_does_not_replay(builtin_prepared, num_workers):
    import torch

    def make():
        return build_train_loader(builtin_prepared, seq_len=64, micro_batch=4, num_workers=num_workers, seed=3)

    loader = make()
    it = iter(loader)
    seen = [next(it) for _ in range(5)]
    state = loader.state_dict()
    expected = [next(it) for _ in range(2)]

    fresh = make()
    fresh.load_state_dict(state)
    got_it = iter(fresh)
    got = [next(got_it) for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    assert not any(torch.equal(got[0], s) for s in seen)
    # Without loading the state the first batch is the same as the first run's (seeded), i.e. a replay.
    assert torch.equal(next(iter(make())), seen[0])


def test_val_loader_multiples_and_fallback(builtin_prepared):
    loader = build_val_loader(builtin_prepared, seq_len=64, multiple=4, micro_batch=2)
    batch = next(iter(loader))
    assert loader.multiple == 4 and batch.shape == (2, 257)
    chunks = json.loads((builtin_prepared / "val" / "index.json").read_text())["chunks"]
    longest = max(c["dim"] for c in chunks)  # rows never cross chunks
    seq_len = longest // 3 + 1  # fits 2 multiples, not 3 or 4
    with pytest.warns(UserWarning, match="too small"):
        small = build_val_loader(builtin_prepared, seq_len=seq_len, multiple=4, micro_batch=1)
    assert small.multiple == 2 and next(iter(small)).shape == (1, 2 * seq_len + 1)
    with pytest.raises(DataError, match="ctx longer than the data rows"):
        build_val_loader(builtin_prepared, seq_len=longest, micro_batch=1)


def test_mixture_weights_are_respected(tmp_path):
    a_docs = [_doc(i, 60, ("alpha", "apple", "anchor")) for i in range(60)]
    b_docs = [_doc(i, 60, ("omega", "orange", "ocean")) for i in range(60)]
    tok = train_builtin_tokenizer(a_docs + b_docs, vocab_size=300)
    tok.save(tmp_path / "tok")
    for name, docs in (("a", a_docs), ("b", b_docs)):
        (tmp_path / f"raw_{name}").mkdir()
        (tmp_path / f"raw_{name}" / "d.jsonl").write_text("\n".join(json.dumps({"text": d}) for d in docs))
        prepare(tmp_path / name, tmp_path / f"raw_{name}", tokenizer=tmp_path / "tok", context_length=16, quiet=True)
    (tmp_path / "mix.json").write_text(json.dumps({"a": 3, "b": 1}))
    mixture = load_mixture(tmp_path / "mix.json")
    assert mixture == {str(tmp_path / "a"): 3.0, str(tmp_path / "b"): 1.0}
    loader = build_train_loader(mixture=mixture, seq_len=16, micro_batch=8, num_workers=0)
    rows = []
    for i, batch in enumerate(loader):
        rows += [tok.decode(r) for r in batch.tolist()]
        if i == 50:
            break
    share_a = sum("alpha" in r or "apple" in r or "anchor" in r for r in rows) / len(rows)
    assert 0.65 < share_a < 0.85, share_a

    # A folder tokenized by another BPE of the same size cannot join the mixture.
    prepare(tmp_path / "c", tmp_path / "raw_b", vocab_size=300, context_length=16, quiet=True)
    with pytest.raises(DataError, match="different tokenizer"):
        build_train_loader(mixture={str(tmp_path / "a"): 1, str(tmp_path / "c"): 1}, seq_len=16, micro_batch=2)


# ---------------------------------------------------------------------------------------------- errors
def test_bad_inputs_raise_data_error(tmp_path, raw_folder, prepared):
    root, _ = raw_folder
    out = tmp_path / "out"
    with pytest.raises(DataError, match="does not exist"):
        prepare(out, tmp_path / "missing", quiet=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        prepare(out, tmp_path / "empty", quiet=True)
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "x.csv").write_text("a,b")
    with pytest.raises(DataError, match=r"no files of a known type .*found \.csv"):
        prepare(out, tmp_path / "csv", quiet=True)
    (tmp_path / "jl").mkdir()
    (tmp_path / "jl" / "x.jsonl").write_text(json.dumps({"content": "hello", "id": 1}) + "\n")
    with pytest.raises(DataError, match=r"no 'text' field \(fields: content, id\).*--text_field"):
        prepare(out, tmp_path / "jl", quiet=True)
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "x.txt").write_text("  \n")
    with pytest.raises(DataError, match="no text found"):
        prepare(out, tmp_path / "blank", quiet=True)
    with pytest.raises(DataError, match="tokenizer path .* does not exist"):
        prepare(out, root, tokenizer=tmp_path / "no_tokenizer.json", quiet=True)
    before = (prepared / "meta.json").read_text()
    with pytest.raises(DataError, match="has no tokenizer.json"):  # fails before touching the output folder
        prepare(prepared, root, tokenizer=tmp_path / "empty", overwrite=True, quiet=True)
    assert (prepared / "meta.json").read_text() == before
    with pytest.raises(DataError, match="val_fraction"):
        prepare(out, root, val_fraction=1.0, quiet=True)


def test_loader_errors(tmp_path, prepared):
    with pytest.raises(DataError, match="no meta.json"):
        read_meta(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        build_train_loader(tmp_path / "nowhere", seq_len=8, micro_batch=1)
    tokens = read_meta(prepared)["tokens"]["train"]
    with pytest.raises(DataError, match=rf"{tokens:,} tokens.*seq_len\+1 = 100,001.*at most"):
        build_train_loader(prepared, seq_len=100_000, micro_batch=1)
    with pytest.raises(DataError, match="tokenizer vocab 320 larger than the model's 256: pass --vocab_size"):
        check_vocab(read_meta(prepared), 256)
    check_vocab(read_meta(prepared), 320)
    with pytest.raises(DataError, match="exactly one"):
        build_train_loader(seq_len=8, micro_batch=1)
    (tmp_path / "bad_mix.json").write_text(json.dumps({"a": -1}))
    with pytest.raises(DataError, match="positive number"):
        load_mixture(tmp_path / "bad_mix.json")


# ---------------------------------------------------------------------------------------------- CLI
@pytest.mark.parametrize(
    "entry", [[sys.executable, "-m", "lit_gpt.data.prepare"], [sys.executable, str(REPO / "scripts/prepare_data.py")]]
)
def test_cli_error_is_one_line_exit_2(tmp_path, entry):
    proc = subprocess.run(
        entry + ["--input_dir", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_archscale_spelling(raw_folder, prepared, tmp_path, capsys):
    """The shim's argument spelling, in process (a subprocess would pay torch's import again)."""
    import runpy

    shim = runpy.run_path(str(REPO / "scripts/prepare_data.py"), run_name="shim")
    rc = shim["main"](
        ["--input_dir", str(raw_folder[0]), "--output_dir", str(tmp_path), "--tokenizer", str(prepared),
         "--context_length", "16", "--max_length", "64", "--shuffle"],
        prog="scripts/prepare_data.py",
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "documents:" in out and "tokens:" in out
    meta = read_meta(tmp_path)
    assert meta["vocab_size"] == 320 and meta["request"]["shuffle"] is True and meta["request"]["max_length"] == 64
