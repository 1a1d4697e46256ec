"""Loaders over prepared data folders (see ``lit_gpt.data.prepare`` for the layout).

* ``build_train_loader`` streams rows of ``seq_len + 1`` token ids (inputs = row[:-1], targets = row[1:]) as a
  LongTensor ``[micro_batch, seq_len + 1]``, from one folder or a weighted mixture of folders. It is a litdata
  ``StreamingDataLoader``: sharding across ranks comes from litdata (torch.distributed or the launcher's
  environment), every rank gets full batches only, and ``state_dict()`` / ``load_state_dict()`` resume exactly
  where a run stopped (no batch is replayed or skipped). One pass over the loader is one epoch; iterate again for
  the next (litdata reshuffles per epoch).
* ``build_val_loader`` reads rows of ``multiple * seq_len + 1`` tokens in a fixed order so validation can report
  the loss at T, 2T, ..., kT from the same rows (length extrapolation).
* ``read_meta`` / ``check_vocab`` / ``load_mixture`` help the trainer validate its inputs before it starts.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lit_gpt.data import DataError

PREPARE_HINT = "python -m lit_gpt.data.prepare --output_dir {dir}"


# ---------------------------------------------------------------------------------------------- metadata
def read_meta(data_dir: str | os.PathLike) -> dict[str, Any]:
    """``DIR/meta.json`` of a prepared folder; DataError naming the fix when the folder is not prepared."""
    folder = Path(data_dir)
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist: prepare it with {PREPARE_HINT.format(dir=folder)}")
    path = folder / "meta.json"
    if not path.is_file():
        raise DataError(
            f"{folder} has no meta.json (not a prepared data folder): prepare it with "
            f"{PREPARE_HINT.format(dir=folder)}"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc.msg}): prepare again with --overwrite") from None
    for key in ("vocab_size", "eos_id", "tokens"):
        if key not in meta:
            raise DataError(f"{path} lacks '{key}': prepare again with --overwrite")
    return meta


def check_vocab(meta: Mapping[str, Any], model_vocab_size: int) -> None:
    """Every token id of the data must have an embedding row."""
    vocab = int(meta["vocab_size"])
    if vocab > model_vocab_size:
        raise DataError(
            f"tokenizer vocab {vocab} larger than the model's {model_vocab_size}: pass --vocab_size {vocab} "
            "(or more) to the model, or prepare the data with a smaller tokenizer"
        )


def load_mixture(path: str | os.PathLike, base_dir: str | os.PathLike | None = None) -> dict[str, float]:
    """Read a data mixture file: a JSON object mapping a prepared folder to its sampling weight.

    Relative folders are resolved against ``base_dir`` when given, else against the JSON file's folder, else
    the current directory (the first place where the folder exists; the JSON file's folder when none does).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"mixture file {path} does not exist: pass --data_mixture a JSON file {{\"DIR\": weight}}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"mixture file {path} is not valid JSON ({exc.msg}): write {{\"DIR\": weight, ...}}") from None
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"mixture file {path} must be a non-empty JSON object {{\"DIR\": weight, ...}}")
    out: dict[str, float] = {}
    for name, weight in raw.items():
        folder = Path(name).expanduser()
        if not folder.is_absolute():
            bases = [Path(base_dir)] if base_dir is not None else [path.parent, Path.cwd()]
            candidates = [b / folder for b in bases]
            folder = next((c for c in candidates if c.exists()), candidates[0])
        out[str(folder)] = _check_weight(name, weight)
    return out


def _check_weight(name: str, weight: Any) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0 or weight != weight:
        raise DataError(f"mixture weight for {name} must be a positive number, got {weight!r}")
    return float(weight)


# ---------------------------------------------------------------------------------------------- rows
def _split_index(data_dir: str | os.PathLike, split: str) -> list[int]:
    """Tokens in each litdata chunk of ``DIR/split``."""
    index = Path(data_dir) / split / "index.json"
    if not index.is_file():
        if split == "val":
            raise DataError(
                f"{data_dir} has no validation split: prepare it with --val_fraction > 0 (and --overwrite)"
            )
        raise DataError(f"{data_dir} has no {split} split: prepare it again with --overwrite")
    chunks = json.loads(index.read_text(encoding="utf-8"))["chunks"]
    return [int(c.get("dim") or 0) for c in chunks]


def count_rows(data_dir: str | os.PathLike, split: str, row_len: int) -> int:
    """How many rows of ``row_len`` tokens litdata's TokensLoader yields (rows never cross chunk boundaries)."""
    return sum(dim // row_len for dim in _split_index(data_dir, split))


def _tokenizer_identity(folder: str | os.PathLike, meta: Mapping[str, Any]) -> tuple[Any, ...]:
    """What must agree between mixture folders: the tokenizer file itself (hash), vocab and EOS."""
    digest = meta.get("tokenizer_sha256")
    file = Path(folder) / str(meta.get("tokenizer", "tokenizer.json"))
    if digest is None and file.is_file():
        import hashlib

        digest = hashlib.sha256(file.read_bytes()).hexdigest()
    return int(meta["vocab_size"]), meta["eos_id"], digest


def _longest_seq_len(chunks: list[int], rows_needed: int) -> int:
    """The largest seq_len whose rows of seq_len+1 tokens still give ``rows_needed`` rows (0 if none)."""
    lo, hi = 0, max(chunks, default=0)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(d // (mid + 1) for d in chunks) >= rows_needed:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _world_size() -> int:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_world_size()
    except Exception:  # pragma: no cover
        pass
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def _collate_long(items: list[Any]) -> Any:
    """Stack rows of int32 ids into one LongTensor (module level so worker processes can pickle it)."""
    import torch

    return torch.from_numpy(np.stack([np.asarray(item) for item in items])).long()


def _dataset(folder: Path, block: int, *, shuffle: bool, seed: int, drop_last: bool | None = None) -> Any:
    from litdata import StreamingDataset, TokensLoader

    return StreamingDataset(
        str(folder), item_loader=TokensLoader(block_size=block), shuffle=shuffle, seed=seed, drop_last=drop_last
    )


def _loader(dataset: Any, *, micro_batch: int, num_workers: int, drop_last: bool) -> Any:
    import torch
    from litdata import StreamingDataLoader

    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["prefetch_factor"] = 4
    return StreamingDataLoader(
        dataset,
        batch_size=micro_batch,
        num_workers=num_workers,
        collate_fn=_collate_long,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last,
        **kwargs,
    )


# ---------------------------------------------------------------------------------------------- loaders
def build_train_loader(
    data_dir: str | os.PathLike | None = None,
    mixture: Mapping[str, float] | None = None,
    *,
    seq_len: int,
    micro_batch: int,
    seed: int = 42,
    num_workers: int = 2,
    shuffle: bool = True,
) -> Any:
    """A stateful litdata loader of LongTensor batches ``[micro_batch, seq_len + 1]``.

    Pass ``data_dir`` (one prepared folder) or ``mixture`` (``{folder: weight}``, see ``load_mixture``), not
    both. The returned loader carries ``seq_len``, ``row_len`` and ``meta`` (the first folder's meta.json) as
    attributes. Raises DataError when a folder is not prepared, the folders disagree on the tokenizer, or the
    data cannot fill one batch of rows per rank.
    """
    if (data_dir is None) == (mixture is None or len(mixture) == 0):
        raise DataError("pass a data folder (--train_data_dir) or a data mixture (--data_mixture), exactly one")
    if seq_len < 1 or micro_batch < 1:
        raise DataError(f"seq_len and micro_batch must be positive, got {seq_len} and {micro_batch}")
    if data_dir is not None:
        weights = {str(data_dir): 1.0}
    else:
        weights = {str(k): _check_weight(k, v) for k, v in mixture.items()}
    row_len = seq_len + 1
    world = _world_size()
    metas = {folder: read_meta(folder) for folder in weights}
    first_folder, first = next(iter(metas.items()))
    for folder, meta in metas.items():
        if _tokenizer_identity(folder, meta) != _tokenizer_identity(first_folder, first):
            raise DataError(
                f"{folder} was tokenized with a different tokenizer than {first_folder} (vocab {meta['vocab_size']}"
                f" vs {first['vocab_size']}): prepare every mixture folder with the same --tokenizer "
                f"(e.g. --tokenizer {Path(first_folder) / 'tokenizer.json'})"
            )
        rows = count_rows(folder, "train", row_len)
        need = micro_batch * world
        if rows < need:
            tokens = int(meta["tokens"].get("train", 0))
            fits = _longest_seq_len(_split_index(folder, "train"), need)
            raise DataError(
                f"{folder}/train holds {tokens:,} tokens = {rows:,} rows of seq_len+1 = {row_len:,} tokens, fewer "
                f"than one batch of micro_batch {micro_batch} x {world} rank(s) needs: use a shorter --ctx_len "
                f"(at most {fits:,}), a smaller --micro_batch_size, or more data"
            )
    # litdata splits the rows of each rank over the workers; keep every worker able to fill one batch.
    min_rows = min(count_rows(folder, "train", row_len) for folder in weights)
    workers = max(0, num_workers)
    while workers > 1 and min_rows // (world * workers) < micro_batch:
        workers -= 1
    if workers < num_workers:
        warnings.warn(
            f"train data too small for {num_workers} loader workers per rank: using {workers}", stacklevel=2
        )

    datasets = [_dataset(Path(folder) / "train", row_len, shuffle=shuffle, seed=seed) for folder in weights]
    if len(datasets) == 1:
        dataset = datasets[0]
    else:
        from litdata import CombinedStreamingDataset

        total = sum(weights.values())
        dataset = CombinedStreamingDataset(
            datasets, seed=seed, weights=[w / total for w in weights.values()], iterate_over_all=False
        )
    loader = _loader(dataset, micro_batch=micro_batch, num_workers=workers, drop_last=True)
    loader.seq_len, loader.row_len, loader.meta = seq_len, row_len, first
    return loader


def build_val_loader(
    data_dir: str | os.PathLike,
    *,
    seq_len: int,
    multiple: int = 4,
    micro_batch: int,
    num_workers: int = 0,
) -> Any:
    """Validation rows of ``multiple * seq_len + 1`` tokens, in file order, LongTensor ``[<=micro_batch, row]``.

    When the split is too small for one such row, fewer multiples are used (with a warning); the loader's
    ``multiple`` and ``row_len`` attributes say what was chosen. DataError when not even ``seq_len + 1`` fits.
    """
    if seq_len < 1 or micro_batch < 1 or multiple < 1:
        raise DataError(f"seq_len, micro_batch and multiple must be positive, got {seq_len}, {micro_batch}, {multiple}")
    meta = read_meta(data_dir)
    chunks = _split_index(data_dir, "val")
    chosen = next((k for k in range(multiple, 0, -1) if any(d >= k * seq_len + 1 for d in chunks)), 0)
    if chosen == 0:
        tokens = int(meta["tokens"].get("val", sum(chunks)))
        raise DataError(
            f"ctx longer than the data rows: the validation split of {data_dir} has {tokens:,} tokens (largest "
            f"chunk {max(chunks, default=0):,}), fewer than one row of seq_len+1 = {seq_len + 1:,}: use a shorter "
            "--ctx_len or prepare with a larger --val_fraction"
        )
    if chosen < multiple:
        warnings.warn(
            f"validation split of {data_dir} is too small for rows of {multiple}x{seq_len}+1 tokens: "
            f"validating at up to {chosen}x{seq_len} instead",
            stacklevel=2,
        )
    row_len = chosen * seq_len + 1
    dataset = _dataset(Path(data_dir) / "val", row_len, shuffle=False, seed=0)
    loader = _loader(dataset, micro_batch=micro_batch, num_workers=max(0, num_workers), drop_last=False)
    loader.seq_len, loader.multiple, loader.row_len, loader.meta = seq_len, chosen, row_len, meta
    return loader


__all__ = [
    "DataError",
    "build_train_loader",
    "build_val_loader",
    "check_vocab",
    "count_rows",
    "load_mixture",
    "read_meta",
]
