"""The data room: tokenizers, the built-in corpus, preparation of packed token chunks, and loaders.

Modules:
    ``tokenizer``  ``Tokenizer`` (a Hugging Face ``tokenizers`` wrapper) and ``train_builtin_tokenizer``.
    ``corpus``     ``builtin_documents()``: English text that ships with every Python (no download).
    ``prepare``    ``prepare(...)`` and ``python -m lit_gpt.data.prepare``: text → litdata chunks of int32 ids.
    ``loader``     ``build_train_loader`` / ``build_val_loader`` / ``read_meta`` / ``check_vocab`` / ``load_mixture``.

Importing this package is cheap (no torch, no litdata); the submodules import what they need.
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad data input or a data folder that cannot serve the request.

    The message is one line that says what is wrong and how to fix it; CLIs print it as ``error: <message>``.
    """


__all__ = ["DataError"]
