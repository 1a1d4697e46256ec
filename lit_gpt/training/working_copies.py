"""bf16 working copies of the fp32 Linear weights, written by the optimizer instead of cast at every forward.

Why: under bf16 autocast each Linear casts its fp32 weight to bf16 in every forward (4 bytes read and 2 written per
parameter), and its weight gradient leaves the GEMM in bf16 only to be cast to fp32 for ``.grad`` (2 more written,
then 2 read and 4 written). For Transformer++ d16 those casts took ≈ 4.6 ms of a 124 ms step on an H100
(docs/benchmarks.md, "Where the time goes"), and with gradient accumulation the forward cast is paid per micro step.
Here the Triton AdamW writes each updated weight's bf16 copy while it has the new value in registers (2 bytes more
in a kernel that moves 28), the forward multiplies by that copy, and the weight-gradient GEMM writes fp32 itself.

With gradient accumulation, each micro step after the first hands the gradient summed so far to the weight-gradient
GEMM (``WorkingCopies.accumulating``), which reads and writes it in place in its epilogue (cuBLAS β = 1): 8 bytes
per parameter instead of the fresh gradient's 4 plus autograd's ``.grad += new`` (12 more; ≈ 4.4 ms per micro step
at Transformer++ d16 on an H100).

Numerics: the forward is autocast's exactly (the same round-to-nearest bf16 of the same fp32 weight). On CUDA the
weight gradient reaches ``.grad`` without the intermediate rounding to bf16 (cuBLAS accumulates in fp32 either way),
and an accumulated one is rounded once instead of twice, so it is slightly more precise than autocast's; elsewhere
it is autocast's bit for bit.

Applied from outside the model: ``attach`` swaps the class of each eligible ``nn.Linear`` (parameters, names and
state_dicts unchanged; the copy is a plain attribute, so checkpoints and DDP's buffer broadcast never see it) and
registers the copy with the optimizer. Whatever else changes the weights (loading a checkpoint) must call the
optimizer's ``refresh_working_copies``. Not for FSDP, whose mixed-precision policy already gathers bf16 weights.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["WorkingCopies", "WorkingCopyLinear", "attach"]


def weight_gradient(grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """grad_outᵀ·x in fp32 from bf16 operands: on CUDA the GEMM writes fp32 (no bf16 rounding, no cast kernel)."""
    if grad_out.is_cuda:
        return torch.mm(grad_out.t(), x, out_dtype=torch.float32)
    return (grad_out.t() @ x).float()  # what autocast's backward computes: a bf16 product, then the cast


@torch.library.custom_op("litscale::accumulate_weight_gradient_", mutates_args=("accumulated",))
def accumulate_weight_gradient_(accumulated: torch.Tensor, grad_out: torch.Tensor, x: torch.Tensor) -> None:
    """accumulated += grad_outᵀ·x in place. On CUDA one GEMM that reads and writes the fp32 ``accumulated`` in its
    epilogue (β = 1); elsewhere autocast's bf16 product, cast, added as autograd's accumulation adds it."""
    if accumulated.is_cuda:
        torch.addmm(accumulated, grad_out.t(), x, out_dtype=torch.float32, out=accumulated)
    else:
        accumulated.add_(weight_gradient(grad_out, x))


class _LinearOnWorkingCopy(torch.autograd.Function):
    """y = x·Wᵀ + b with the low-precision copy of W; the gradient goes to the fp32 W, or into ``accumulated`` in place
    when that is given (the weight's gradient so far)."""

    @staticmethod
    def forward(ctx, x, weight, working, bias, accumulated):
        x_low = x.to(working.dtype)
        ctx.save_for_backward(x_low, working, accumulated)
        ctx.x_dtype, ctx.has_bias = x.dtype, bias is not None
        return F.linear(x_low, working, None if bias is None else bias.to(working.dtype))

    @staticmethod
    def backward(ctx, grad_out):
        x_low, working, accumulated = ctx.saved_tensors
        grad_out = grad_out.to(working.dtype)
        grad_x = (grad_out @ working).to(ctx.x_dtype) if ctx.needs_input_grad[0] else None
        rows, inputs = grad_out.reshape(-1, grad_out.shape[-1]), x_low.reshape(-1, x_low.shape[-1])
        grad_w = None
        if ctx.needs_input_grad[1] and accumulated is None:
            grad_w = weight_gradient(rows, inputs)
        elif ctx.needs_input_grad[1]:  # summed in place; WorkingCopies.accumulating hands it back to .grad
            accumulate_weight_gradient_(accumulated, rows, inputs)
        grad_b = rows.sum(0, dtype=torch.float32) if ctx.has_bias and ctx.needs_input_grad[3] else None
        return grad_x, grad_w, None, grad_b, None


class WorkingCopyLinear(nn.Linear):
    """An ``nn.Linear`` whose forward under autocast multiplies by ``working``, a copy the optimizer keeps current.
    Outside autocast (nothing to cast to) it is a plain Linear on the fp32 weight. ``accumulated``: the weight's
    gradient so far while ``WorkingCopies.accumulating`` holds it (else None)."""

    working: torch.Tensor
    accumulated: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_autocast_enabled(x.device.type):
            return F.linear(x, self.weight, self.bias)
        return _LinearOnWorkingCopy.apply(x, self.weight, self.working, self.bias, self.accumulated)


@dataclass
class WorkingCopies:
    """The swapped modules (the optimizer keeps their copies; it also re-derives them after a load)."""

    modules: list[WorkingCopyLinear] = field(default_factory=list)

    @property
    def n_params(self) -> int:
        return sum(m.weight.numel() for m in self.modules)

    @property
    def nbytes(self) -> int:
        return sum(m.working.numel() * m.working.element_size() for m in self.modules)

    @contextmanager
    def accumulating(self) -> Iterator[None]:
        """Around a micro step after the first: each weight's gradient so far leaves ``.grad`` for its module, whose
        backward adds the new product to it in place and gives autograd no weight gradient to accumulate; on exit
        the sums go back to ``.grad`` (unchanged where no backward reached a weight)."""
        for m in self.modules:
            m.accumulated, m.weight.grad = m.weight.grad, None
        try:
            yield
        finally:
            for m in self.modules:
                if m.weight.grad is None:
                    m.weight.grad = m.accumulated
                m.accumulated = None


def attach(model: nn.Module, optimizer: torch.optim.Optimizer, skip: Iterable[nn.Module] = ()) -> WorkingCopies:
    """Give every eligible ``nn.Linear`` of ``model`` a bf16 working copy kept by ``optimizer`` (a TritonAdamW).

    Eligible: exactly ``nn.Linear`` (not a subclass with its own forward), not in ``skip`` (modules whose weight is
    read other than through their forward: a copy would be written and never used), a weight no other module
    shares (a tied head also feeds the embedding, which must read fp32), fp32, and one the optimizer's kernel
    updates (``kernel_takes``: large enough, dense, contiguous, aligned)."""
    from lit_gpt.kernels import adamw

    if not hasattr(optimizer, "keep_working_copy"):
        raise TypeError(f"{type(optimizer).__name__} cannot keep working copies: use lit_gpt.kernels.adamw.TritonAdamW")
    uses = Counter(id(p) for _, p in model.named_parameters(remove_duplicate=False))
    skipped = {id(m) for m in skip}
    copies = WorkingCopies()
    for module in model.modules():
        if (type(module) is not nn.Linear or id(module) in skipped or uses[id(module.weight)] != 1
                or module.weight.dtype != torch.float32 or not adamw.kernel_takes(module.weight, module.weight)):
            continue
        module.__class__ = WorkingCopyLinear
        module.working = module.weight.detach().to(torch.bfloat16, memory_format=torch.contiguous_format)
        optimizer.keep_working_copy(module.weight, module.working)
        copies.modules.append(module)
    return copies
