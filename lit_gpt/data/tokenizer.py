"""Tokenizers: a thin wrapper over a Hugging Face ``tokenizers`` tokenizer, and a small built-in BPE.

``Tokenizer.from_path`` accepts a ``tokenizer.json`` file, or a folder that holds one (a Hugging Face model
folder with ``tokenizer.json`` + ``tokenizer_config.json`` works: EOS/BOS are read from the config when present,
otherwise recognised by their usual spellings). ``encode`` never adds special tokens on its own: the caller says
``bos=`` / ``eos=``, so preparation controls exactly what goes between documents (one EOS, no padding).

``train_builtin_tokenizer`` trains a byte-level BPE locally (any byte sequence can be encoded, nothing is
unknown) with ``<|endoftext|>`` as EOS and ``<|pad|>`` reserved; it is deterministic for a given text order.
The default vocabulary (4096) is small on purpose: CPU demos stay fast and the embedding stays tiny.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lit_gpt.data import DataError

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
# Spellings recognised when a tokenizer has no tokenizer_config.json saying which token is which.
_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>", "[SEP]")
_BOS_CANDIDATES = ("<s>", "<|begin_of_text|>", "<bos>", "<|bos|>", "[CLS]")


def _token_content(value: Any) -> str | None:
    """A tokenizer_config.json token entry is a string or a dict with ``content``."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


class Tokenizer:
    """A Hugging Face ``tokenizers.Tokenizer`` with explicit EOS/BOS handling."""

    def __init__(self, hf_tokenizer: Any, *, eos_token: str | None = None, bos_token: str | None = None) -> None:
        self.processor = hf_tokenizer
        self.eos_id = self._find_id(eos_token, _EOS_CANDIDATES)
        self.bos_id = self._find_id(bos_token, _BOS_CANDIDATES)
        if self.eos_id is None:
            raise DataError(
                "the tokenizer has no end-of-text token (looked for "
                + ", ".join(_EOS_CANDIDATES)
                + "): add eos_token to tokenizer_config.json"
            )

    def _find_id(self, named: str | None, candidates: Sequence[str]) -> int | None:
        for token in ([named] if named else []) + list(candidates):
            token_id = self.processor.token_to_id(token)
            if token_id is not None:
                return int(token_id)
        return None

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_path(cls, path: str | os.PathLike) -> Tokenizer:
        """Load ``path`` (a tokenizer.json file, or a folder holding tokenizer.json [+ tokenizer_config.json])."""
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        if path.is_dir():
            folder, file = path, path / "tokenizer.json"
        else:
            folder, file = path.parent, path
        if not file.is_file():
            where = f"{path} has no tokenizer.json" if path.is_dir() else f"tokenizer file {path} does not exist"
            raise DataError(f"{where}: pass --tokenizer a tokenizer.json file or a folder holding one, or 'builtin'")
        try:
            hf = HFTokenizer.from_file(str(file))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed files
            raise DataError(f"cannot read tokenizer {file} ({exc}): pass a Hugging Face tokenizer.json") from None
        eos = bos = None
        config = folder / "tokenizer_config.json"
        if config.is_file():
            try:
                data = json.loads(config.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                data = {}
            eos, bos = _token_content(data.get("eos_token")), _token_content(data.get("bos_token"))
        return cls(hf, eos_token=eos, bos_token=bos)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path`` (a ``.json`` file) or ``path/tokenizer.json`` + ``path/tokenizer_config.json``."""
        path = Path(path)
        if path.suffix == ".json":
            path.parent.mkdir(parents=True, exist_ok=True)
            self.processor.save(str(path))
            return path
        path.mkdir(parents=True, exist_ok=True)
        self.processor.save(str(path / "tokenizer.json"))
        config = {"eos_token": self.processor.id_to_token(self.eos_id)}
        if self.bos_id is not None:
            config["bos_token"] = self.processor.id_to_token(self.bos_id)
        (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        return path / "tokenizer.json"

    # ------------------------------------------------------------------ use
    @property
    def vocab_size(self) -> int:
        """Number of ids (added/special tokens included): every id the tokenizer emits is below this."""
        return int(self.processor.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
        ids = self.processor.encode(text, add_special_tokens=False).ids
        return self._wrap(ids, bos, eos)

    def encode_batch(self, texts: Sequence[str], bos: bool = False, eos: bool = False) -> list[list[int]]:
        """Encode many texts at once (the Rust side uses all cores)."""
        encode = getattr(self.processor, "encode_batch_fast", self.processor.encode_batch)  # fast: no offsets
        encodings = encode(list(texts), add_special_tokens=False)
        return [self._wrap(e.ids, bos, eos) for e in encodings]

    def _wrap(self, ids: list[int], bos: bool, eos: bool) -> list[int]:
        if bos:
            if self.bos_id is None:
                raise DataError("bos=True but the tokenizer has no BOS token: encode with bos=False")
            ids = [self.bos_id] + list(ids)
        if eos:
            ids = list(ids) + [self.eos_id]
        return list(ids)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        return self.processor.decode(ids, skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, eos_id={self.eos_id}, bos_id={self.bos_id})"


def train_builtin_tokenizer(
    texts: Iterable[str], vocab_size: int = 4096, *, min_frequency: int = 2, show_progress: bool = False
) -> Tokenizer:
    """Train a byte-level BPE on ``texts`` (deterministic for the same texts in the same order).

    Special tokens: ``<|endoftext|>`` (id 0, EOS) and ``<|pad|>`` (id 1, reserved; packed data never pads).
    The 256 byte symbols are always in the vocabulary, so ``vocab_size`` must be at least 258 + 1.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 259:
        raise DataError(f"vocab_size {vocab_size} is too small for a byte-level BPE: pass --vocab_size >= 259")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    hf.train_from_iterator(texts, trainer=trainer)
    return Tokenizer(hf, eos_token=EOS_TOKEN)
