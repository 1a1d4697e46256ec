"""AdamW whose CUDA step is one streaming Triton kernel per large parameter.

Why: the optimizer is memory-bound (per fp32 parameter it reads param, grad, exp_avg, exp_avg_sq and writes three
of them: 28 bytes), and torch's fused multi-tensor AdamW moves those bytes at ≈ 2.28 TB/s on an H100 (13.5 ms for
Transformer++ d16's 1.1B parameters) where a plain streaming kernel per tensor reaches 2.84 TB/s (10.9 ms;
``python benchmarks/optimizer.py``, docs/benchmarks.md). One launch over all tensors through a table of addresses
measured slower (1.97 TB/s: addresses loaded from memory lose the alignment facts vector loads need).

``TritonAdamW`` is ``torch.optim.AdamW(fused=True)`` in everything but the kernel: same parameter groups, same
state (``step`` as a 0-d fp32 device tensor, ``exp_avg``, ``exp_avg_sq``), same state_dict, so checkpoints move
between the two freely; the guard's ``grad_scale`` (divide gradients by it: clipping) and ``found_inf`` (skip the
step, leave ``step`` unchanged) attributes work as for torch's fused kernel (see ``fused_ops.clip_and_guard_``).
The arithmetic is the fused kernel's: decoupled weight decay ``p *= 1 - lr·wd``; moments; ``p -= lr / (1 - β1^t) ·
m / (sqrt(v) / sqrt(1 - β2^t) + eps)``. One difference: torch's kernel also writes the unscaled gradient back into
``.grad``; this one leaves ``.grad`` as it was (the loop zeroes it next). FSDP2's DTensors are updated through their
local shards. ``keep_working_copy(param, copy)`` makes the step also write the updated parameter into a
bf16 copy (training/working_copies.py: the bf16 weights the forward multiplies by). Tensors under
``MIN_TRITON_NUMEL`` elements, and any that are not contiguous and 16-byte aligned, take
torch's fused kernel (one launch per group and dtype); parameters off the GPU (CPU runs, CPU-offloaded FSDP) and
``amsgrad``/``maximize``/``capturable`` make the whole step torch's own.
``TRITON_INTERPRET=1`` (set before triton is imported) runs the kernel on CPU tensors (tests).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import torch

from lit_gpt.kernels.triton_support import runs_on

__all__ = ["TritonAdamW", "kernel_takes", "triton_step_applies"]

BLOCK = 4096  # elements per program: 16 per thread at 8 warps, enough bytes in flight per SM to saturate HBM
WARPS = 8
# smaller tensors (norm gains, biases, Mamba's A_log/D) go to torch's fused multi-tensor kernel in one launch: a Triton
# launch costs ≈ 30 µs of host time, more than such a tensor's update takes on the GPU
MIN_TRITON_NUMEL = 1 << 20


def _local(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's shard on this rank (FSDP2 parameters, gradients and their optimizer states); else ``t``."""
    return getattr(t, "_local_tensor", t)


_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def triton_step_applies(params: list[torch.Tensor]) -> bool:
    """Whether the Triton kernel can run these parameters' step: triton importable and every one on a CUDA device
    (CPU tensors too under the interpreter). Otherwise (CPU-offloaded FSDP, CPU runs) torch's fused step runs."""
    return all(runs_on(p) for p in params)


def kernel_takes(p: torch.Tensor, g: torch.Tensor) -> bool:
    """Large, dense, contiguous, 16-byte aligned, same device (anything else goes to torch's fused kernel)."""
    return (p.numel() >= MIN_TRITON_NUMEL and p.dtype in _DTYPES and g.dtype in _DTYPES and not g.is_sparse
            and p.is_contiguous() and g.is_contiguous() and p.device == g.device
            and p.data_ptr() % 16 == 0 and g.data_ptr() % 16 == 0)


@functools.lru_cache(maxsize=None)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def adamw_step(p_ptr, g_ptr, m_ptr, v_ptr, w_ptr, n, step_ptr, scale_ptr, inf_ptr, lr, beta1, beta2, eps, decay,
                   HAS_SCALE: tl.constexpr, HAS_INF: tl.constexpr, HAS_COPY: tl.constexpr, BLOCK: tl.constexpr):
        if HAS_INF:
            if tl.load(inf_ptr) != 0:
                return
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        step = tl.load(step_ptr).to(tl.float32)
        p = tl.load(p_ptr + offs, mask=mask, eviction_policy="evict_first").to(tl.float32)
        g = tl.load(g_ptr + offs, mask=mask, eviction_policy="evict_first").to(tl.float32)
        m = tl.load(m_ptr + offs, mask=mask, eviction_policy="evict_first").to(tl.float32)
        v = tl.load(v_ptr + offs, mask=mask, eviction_policy="evict_first").to(tl.float32)
        if HAS_SCALE:
            g = g / tl.load(scale_ptr).to(tl.float32)
        p = p * (1.0 - lr * decay)
        m = beta1 * m + (1.0 - beta1) * g
        v = beta2 * v + (1.0 - beta2) * g * g
        bias1 = 1.0 - tl.exp2(step * tl.log2(beta1))
        bias2_sqrt = tl.sqrt(1.0 - tl.exp2(step * tl.log2(beta2)))
        p = p - (lr / bias1) * m / (tl.sqrt(v) / bias2_sqrt + eps)
        tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=mask)
        tl.store(m_ptr + offs, m.to(m_ptr.dtype.element_ty), mask=mask)
        tl.store(v_ptr + offs, v.to(v_ptr.dtype.element_ty), mask=mask)
        if HAS_COPY:  # the bf16 working copy the forward multiplies by (training/working_copies.py)
            # rounded to nearest even in integer arithmetic, as torch's .to(torch.bfloat16) does (Triton's
            # interpreter truncates in a plain cast); a few integer ops in a memory-bound kernel
            bits = p.to(tl.uint32, bitcast=True)
            bits = bits + 0x7FFF + ((bits >> 16) & 1)
            bits = tl.where(p != p, 0x7FC00000, bits)  # NaN stays NaN
            tl.store(w_ptr + offs, (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True), mask=mask)

    return adamw_step


def adamw_step_(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                step: torch.Tensor, *, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                grad_scale: Optional[torch.Tensor] = None, found_inf: Optional[torch.Tensor] = None,
                working: Optional[torch.Tensor] = None) -> None:
    """One AdamW update of one tensor in place (``step`` already counts this step); ``working``, if given, receives
    the updated parameter in its dtype."""
    n = param.numel()
    if n == 0:
        return
    _kernel()[((n + BLOCK - 1) // BLOCK,)](param, grad, exp_avg, exp_avg_sq,
                                           param if working is None else working, n, step,  # unread when absent
                                           step if grad_scale is None else grad_scale,
                                           step if found_inf is None else found_inf,
                                           float(lr), float(beta1), float(beta2), float(eps), float(weight_decay),
                                           HAS_SCALE=grad_scale is not None, HAS_INF=found_inf is not None,
                                           HAS_COPY=working is not None, BLOCK=BLOCK, num_warps=WARPS)


class TritonAdamW(torch.optim.AdamW):
    """``torch.optim.AdamW(fused=True)`` with the CUDA step in Triton (module docstring)."""

    def keep_working_copy(self, param: torch.Tensor, copy: torch.Tensor) -> None:
        """After every step, ``copy`` holds ``param`` rounded to bf16 (the kernel writes it with the update; any
        other path copies it). For lit_gpt.training.working_copies; not part of the state_dict: re-derived on load."""
        if copy.shape != param.shape or copy.device != param.device or copy.dtype != torch.bfloat16:
            raise ValueError(f"working copy {tuple(copy.shape)} {copy.dtype} on {copy.device} must be bf16 and match "
                             f"its parameter {tuple(param.shape)} on {param.device}")
        self.__dict__.setdefault("_working", {})[param] = copy

    @torch.no_grad()
    def refresh_working_copies(self) -> None:
        """Re-derive every working copy from its parameter (after weights change outside the optimizer: loading)."""
        working = self.__dict__.get("_working")
        if working:
            torch._foreach_copy_(list(working.values()), list(working.keys()))

    def _triton_usable(self) -> bool:
        for group in self.param_groups:
            if group.get("amsgrad") or group.get("maximize") or group.get("capturable") or group.get("differentiable"):
                return False
            if torch.is_tensor(group["lr"]):
                return False
        return triton_step_applies([p for g in self.param_groups for p in g["params"] if p.grad is not None])

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None) -> Any:
        if not self._triton_usable():
            loss = super().step(closure)
            self.refresh_working_copies()
            return loss
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        working = self.__dict__.get("_working", {})
        steps, work, copied = [], [], []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:  # the fused AdamW's layout, so state_dicts interchange
                    state["step"] = torch.zeros((), dtype=torch.float32, device=_local(p).device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                steps.append(state["step"])
                work.append((group, [_local(t) for t in (p, p.grad, state["exp_avg"], state["exp_avg_sq"])],
                             state["step"], working.get(p)))
        if not work:
            return loss
        torch._foreach_add_(steps, 1.0)
        rest: dict[tuple, list] = {}  # torch's fused kernel, one launch per group, dtype pair and device
        for group, (p, g, m, v), step, copy in work:
            beta1, beta2 = group["betas"]
            if kernel_takes(p, g) and (copy is None or kernel_takes(copy, g)):
                adamw_step_(p, g, m, v, step, lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                            weight_decay=group["weight_decay"], grad_scale=grad_scale, found_inf=found_inf,
                            working=copy)
            elif p.numel():
                if copy is not None:
                    copied.append((copy, p))
                columns = rest.setdefault((id(group), p.dtype, g.dtype, p.device), [group, [], [], [], [], []])
                for column, tensor in zip(columns[1:], (p, g, m, v, step)):
                    column.append(tensor)
        for group, params, grads, exp_avgs, exp_avg_sqs, group_steps in rest.values():
            beta1, beta2 = group["betas"]
            torch._fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, [], group_steps, lr=group["lr"], beta1=beta1,
                                beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"], amsgrad=False,
                                maximize=False, grad_scale=grad_scale, found_inf=found_inf)
        if copied:  # working copies of parameters torch's kernel updated
            torch._foreach_copy_(*map(list, zip(*copied)))
        if found_inf is not None:  # a skipped step does not count, as in torch's fused AdamW
            torch._foreach_sub_(steps, [found_inf] * len(steps))
        return loss
