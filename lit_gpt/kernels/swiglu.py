"""SwiGLU's elementwise part, silu(gate) · up of a fused [gate | up] projection, with a one-pass Triton backward.

Why: the gradient of the fused projection's output is [d gate | d up]. Compiled from autograd's graph, inductor
writes it as a pointwise ``cat`` that evaluates each half on its own, so gate and the incoming gradient are read
twice: 7 bytes moved per 5 needed. For Transformer++ d16 that kernel took 4.9 ms of a 119.8 ms step on an H100
(docs/benchmarks.md, "Where the time goes"). Here one Triton program reads gate, up and the gradient once and
writes both halves. The forward stays plain torch ops: inductor's kernel for it already streams at HBM bandwidth.

Paths: the Triton backward for CUDA tensors that need a gradient (and for CPU tensors under ``TRITON_INTERPRET=1``,
the tests); plain ``F.silu(gate) * up`` everywhere else, or with ``LITSCALE_SWIGLU_TRITON=0``. The kernel computes
in fp32 and rounds once, like inductor's fused kernel (eager autograd rounds the intermediate silu and products).
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_gpt.kernels.triton_support import runs_on

__all__ = ["swiglu", "swiglu_reference"]

ENV = "LITSCALE_SWIGLU_TRITON"  # "0": always the plain torch path
BLOCK = 1024  # columns per program (8 per thread at 4 warps: 16-byte loads of bf16)
_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def swiglu_reference(fused: Tensor) -> Tensor:
    gate, up = fused.chunk(2, dim=-1)
    return F.silu(gate) * up


def _triton_applies(fused: Tensor) -> bool:
    return (os.environ.get(ENV, "1") != "0" and fused.requires_grad and fused.dtype in _DTYPES
            and fused.shape[-1] % 2 == 0 and runs_on(fused))


def swiglu(fused: Tensor) -> Tensor:
    """silu(gate) · up for ``fused`` = [..., gate | up] (last dimension 2H); returns [..., H]."""
    if _triton_applies(fused):
        return _SwiGLU.apply(fused)
    return swiglu_reference(fused)


class _SwiGLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, fused):
        ctx.save_for_backward(fused)
        return swiglu_reference(fused)

    @staticmethod
    def backward(ctx, grad):
        (fused,) = ctx.saved_tensors
        return torch.ops.litscale.swiglu_bwd(fused, grad)


@functools.lru_cache(maxsize=None)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def swiglu_bwd(fused_ptr, grad_ptr, out_ptr, H, BLOCK: tl.constexpr):
        """One row, BLOCK columns: d up = grad · silu(gate), d gate = grad · up · s · (1 + gate · (1 - s))."""
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < H
        g_off = row * 2 * H + cols
        gate = tl.load(fused_ptr + g_off, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
        up = tl.load(fused_ptr + g_off + H, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
        dh = tl.load(grad_ptr + row * H + cols, mask=mask, other=0.0, eviction_policy="evict_first").to(tl.float32)
        s = tl.sigmoid(gate)
        d_up = dh * gate * s
        d_gate = dh * up * s * (1.0 + gate * (1.0 - s))
        tl.store(out_ptr + g_off, d_gate.to(out_ptr.dtype.element_ty), mask=mask)
        tl.store(out_ptr + g_off + H, d_up.to(out_ptr.dtype.element_ty), mask=mask)

    return swiglu_bwd


@torch.library.custom_op("litscale::swiglu_bwd", mutates_args=())
def _swiglu_bwd(fused: Tensor, grad: Tensor) -> Tensor:
    """d(silu(gate) · up)/d[gate | up] given the gradient of the product: [..., 2H] in ``fused``'s dtype."""
    import triton

    fused, grad = fused.contiguous(), grad.contiguous()
    out = torch.empty_like(fused)
    hidden = fused.shape[-1] // 2
    rows = grad.numel() // hidden if hidden else 0
    if rows == 0:
        return out
    _kernel()[(rows, triton.cdiv(hidden, BLOCK))](fused, grad, out, hidden, BLOCK=BLOCK, num_warps=4)
    return out


@_swiglu_bwd.register_fake
def _swiglu_bwd_fake(fused: Tensor, grad: Tensor) -> Tensor:
    return torch.empty_like(fused, memory_format=torch.contiguous_format)
