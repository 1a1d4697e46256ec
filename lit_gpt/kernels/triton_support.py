"""Where this package's Triton kernels run: on CUDA tensors, and on CPU tensors under ``TRITON_INTERPRET=1``
(Triton's interpreter, which the tests use; it must be set before triton is first imported)."""

from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def runs_on(t: torch.Tensor) -> bool:
    """Whether a Triton kernel can take ``t``: triton importable, and ``t`` on a GPU or, under the interpreter, on
    the CPU. Traceable by torch.compile without a graph break."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return t.is_cuda or (t.device.type == "cpu" and interpreting())
