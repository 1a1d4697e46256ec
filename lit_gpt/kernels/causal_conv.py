"""Depthwise causal 1-D convolution (Mamba's short conv), with document boundaries and decoding state.

``causal_conv1d(x, weight, bias, doc_ids=None, initial_state=None, return_final_state=False)``:
x [B, T, C] (channels last, as the model holds activations); weight [C, K] or [C, 1, K]; bias [C] or None;
doc_ids [B, T] (a tap never reaches a token of another document); initial_state [B, C, K - 1] (the K - 1 inputs
before x, oldest first); returns y [B, T, C] and, when asked, the final state [B, C, K - 1].

out[t, c] = bias[c] + sum_j weight[c, K - 1 - j] · x[t - j, c] (taps j = 0..K-1; x before the start = state or 0).

Paths: the causal_conv1d package when importable (CUDA, no documents, no state); ``F.conv1d`` (groups = C) when
no documents are given; otherwise K masked shifted multiply-adds (K = 4, elementwise, cheap).
"""

from __future__ import annotations

import importlib.util
from typing import Optional, Union

import torch
import torch.nn.functional as F

__all__ = ["causal_conv1d", "causal_conv1d_reference"]


def _probe_package():
    try:
        if importlib.util.find_spec("causal_conv1d") is None:
            return None
        from causal_conv1d import causal_conv1d_fn
    except Exception:  # not installed, blocked, or a broken build
        return None
    return causal_conv1d_fn


_PACKAGE_FN = _probe_package()  # probed once at import, so dispatch reads a constant (torch.compile friendly)


def _prepend(x: torch.Tensor, initial_state: Optional[torch.Tensor], K: int) -> torch.Tensor:
    """[B, T, C] -> [B, K - 1 + T, C] with the state (or zeros) in front."""
    if initial_state is None:
        return F.pad(x, (0, 0, K - 1, 0))
    return torch.cat((initial_state.transpose(1, 2).to(x.dtype), x), dim=1)


def _final_state(xp: torch.Tensor, K: int) -> torch.Tensor:
    return xp[:, xp.shape[1] - (K - 1):].transpose(1, 2).contiguous()  # [B, C, K - 1]


def causal_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                  doc_ids: Optional[torch.Tensor] = None, initial_state: Optional[torch.Tensor] = None,
                  return_final_state: bool = False, impl: Optional[str] = None
                  ) -> Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """See the module docstring. ``impl`` in {None (auto), "package", "conv1d", "shift"}."""
    w = weight.reshape(weight.shape[0], -1)  # [C, K]
    C, K = w.shape
    if impl is None:
        if (doc_ids is None and initial_state is None and not return_final_state and x.is_cuda
                and _PACKAGE_FN is not None):
            impl = "package"
        elif doc_ids is None and not (x.is_cuda and torch.compiler.is_compiling()):
            impl = "conv1d"
        else:
            # inside a compiled CUDA graph the K shifted multiply-adds fuse into one pass over channels-last
            # memory, while aten's depthwise conv runs on a [B, C, T] transpose with layout copies around it
            # (SambaY d16 on an H100: 4.5 ms of conv kernels + ~3 ms of copies per step, docs/benchmarks.md)
            impl = "shift"
    if impl == "package":
        if _PACKAGE_FN is None or doc_ids is not None or initial_state is not None or return_final_state:
            raise RuntimeError("impl 'package' needs the causal_conv1d package and serves only calls without "
                               "documents or decoding state")
        y = _PACKAGE_FN(x.transpose(1, 2), w, bias, activation=None)  # [B, C, T] view of channels-last memory
        return y.transpose(1, 2)
    xp = _prepend(x, initial_state, K)
    if impl == "conv1d":
        if doc_ids is not None:
            raise ValueError("impl 'conv1d' cannot mask documents; use 'shift'")
        y = F.conv1d(xp.transpose(1, 2), w.unsqueeze(1).to(x.dtype), None if bias is None else bias.to(x.dtype),
                     groups=C).transpose(1, 2)
    elif impl == "shift":
        y = causal_conv1d_reference(x, w, bias, doc_ids=doc_ids, xp=xp)
    else:
        raise ValueError(f"unknown causal_conv1d impl {impl!r}")
    if return_final_state:
        return y, _final_state(xp, K)
    return y


def causal_conv1d_reference(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                            doc_ids: Optional[torch.Tensor] = None, initial_state: Optional[torch.Tensor] = None,
                            xp: Optional[torch.Tensor] = None) -> torch.Tensor:
    """K shifted multiply-adds with a per-tap document mask (the tokens in the state count as x[0]'s document)."""
    w = weight.reshape(weight.shape[0], -1).to(x.dtype)
    K = w.shape[1]
    B, T, C = x.shape
    if xp is None:
        xp = _prepend(x, initial_state, K)
    y = x * w[:, K - 1]
    if doc_ids is not None:
        dp = torch.cat((doc_ids[:, :1].expand(B, K - 1), doc_ids), dim=1)  # [B, K - 1 + T]
    for j in range(1, K):
        tap = xp[:, K - 1 - j: K - 1 - j + T] * w[:, K - 1 - j]
        if doc_ids is not None:
            same = (dp[:, K - 1 - j: K - 1 - j + T] == doc_ids).unsqueeze(-1)
            tap = tap * same.to(tap.dtype)
        y = y + tap
    if bias is not None:
        y = y + bias.to(x.dtype)
    return y
