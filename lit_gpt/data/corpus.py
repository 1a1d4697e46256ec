"""The built-in corpus: English text that every Python installation already has.

Why this text:
    * It is real English prose written by people (the Python Language Reference and the library's
      documentation strings), not generated filler, so a small language model trained on it shows the usual
      loss curve shape: fast drop, then slow improvement.
    * It ships with every CPython (``pydoc_data/topics.py`` is what ``help("if")`` prints), so tests, CI and
      first-time users need no download, no network and no credentials.
    * Its licence is clear: the Python Software Foundation License, which permits redistribution and
      derived works.

What it is:
    1. Every topic of ``pydoc_data.topics.topics`` (the language reference: statements, expressions, the data
       model, ...), one document per topic, in sorted topic order.
    2. For each module of ``STDLIB_MODULES`` (a fixed list of modules that import without side effects; no
       ``this``, ``antigravity``, ``idlelib``, ``tkinter``, ``turtle``, nothing that opens windows, prints, or
       starts threads), one document: the module docstring followed by the docstrings of its public
       classes, their methods and its functions, in sorted name order.

The result is deterministic for a given Python version (docstrings change a little between releases; a module
missing from a particular build is skipped). On CPython 3.11: 190 documents, about 1.2 MB of text (0.46 MB reference, the rest docstrings), roughly
300 thousand tokens with the 4096-entry built-in BPE — enough for CPU demos and tests.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import warnings

# Modules that are safe to import anywhere (no output, no GUI, no network, no threads started on import).
STDLIB_MODULES: tuple[str, ...] = (
    "abc", "argparse", "ast", "base64", "bdb", "bisect", "calendar", "cmd", "code", "codecs", "collections",
    "colorsys", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib",
    "dis", "doctest", "email.message", "email.utils", "enum", "filecmp", "fnmatch", "fractions", "ftplib",
    "functools", "getopt", "gettext", "glob", "graphlib", "gzip", "hashlib", "heapq", "hmac", "html",
    "html.parser", "http.client", "http.cookies", "http.server", "imaplib", "inspect", "io", "ipaddress",
    "itertools", "json", "keyword", "linecache", "locale", "logging", "logging.handlers", "lzma", "mailbox",
    "mimetypes", "numbers", "operator", "optparse", "os", "pathlib", "pdb", "pickle", "pickletools", "pkgutil",
    "platform", "plistlib", "poplib", "pprint", "profile", "pstats", "queue", "quopri", "random", "re",
    "reprlib", "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib", "socket",
    "socketserver", "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap",
    "threading", "timeit", "tokenize", "trace", "traceback", "types", "typing", "unittest.case",
    "unittest.mock", "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref",
    "xml.dom.minidom", "xml.etree.ElementTree", "zipfile", "zoneinfo",
)


def _clean(doc: object) -> str:
    return inspect.cleandoc(doc).strip() if isinstance(doc, str) else ""


def _module_document(name: str) -> str:
    """Module docstring + own docstrings of its public classes (and their methods) and functions."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            module = importlib.import_module(name)
        except Exception:  # not built on this interpreter (e.g. no _lzma); skip, deterministically per build
            return ""
    parts = [_clean(module.__doc__)]
    for attr in sorted(vars(module)):
        if attr.startswith("_"):
            continue
        obj = vars(module)[attr]
        if getattr(obj, "__module__", None) != module.__name__:
            continue  # re-exported from elsewhere
        if inspect.isclass(obj):
            doc = _clean(obj.__dict__.get("__doc__"))
            if doc:
                parts.append(f"class {attr}: {doc}")
            for meth in sorted(obj.__dict__):
                if meth.startswith("_") and meth != "__init__":
                    continue
                member = obj.__dict__[meth]
                if isinstance(member, (staticmethod, classmethod)):
                    member = member.__func__
                if inspect.isfunction(member) or isinstance(member, property):
                    doc = _clean(member.__doc__)
                    if doc:
                        parts.append(f"{attr}.{meth}: {doc}")
        elif inspect.isfunction(obj):
            doc = _clean(obj.__doc__)
            if doc:
                parts.append(f"{attr}: {doc}")
    return "\n\n".join(p for p in parts if p)


@functools.lru_cache(maxsize=1)
def _documents() -> tuple[str, ...]:
    from pydoc_data.topics import topics

    docs = [topics[key].strip() for key in sorted(topics)]
    docs += [_module_document(name) for name in STDLIB_MODULES]
    return tuple(d for d in docs if d)


def builtin_documents() -> list[str]:
    """The built-in corpus as a list of documents, always in the same order (see the module docstring)."""
    return list(_documents())
