"""Shared fixtures: one prepared copy of the built-in corpus per test session (small vocab, fast)."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a whole module (``pytestmark = pytest.mark.usefixtures("one_thread")``): tiny ops run
    fastest single-threaded, and on a busy shared CPU 2+ threads only add contention. The old count is restored."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def builtin_data(tmp_path_factory) -> str:
    from lit_gpt.data.prepare import prepare

    out = tmp_path_factory.mktemp("builtin_data")
    prepare(out, builtin=True, vocab_size=512, quiet=True)
    return str(out)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
