"""Fused pieces of the training step for CUDA (plain PyTorch + torch.compile, no extensions).

* ``fused_linear_cross_entropy``: the head's cross-entropy in row chunks. Each chunk runs three bf16 GEMMs
  (logits, grad of hidden, grad of the head weight) and one compiled elementwise pass that reads the logits and
  writes their gradient once (log-sum-exp, target pick, label smoothing, ignore mask, scaling), instead of the
  eager chain of fp32 kernels and the fp32 weight-gradient GEMM of ``ChunkedLinearCrossEntropy``. Chunks are
  sized so one chunk's logits stay near 2**28 elements (8192 rows at vocab 32000, i.e. a single chunk for
  ``micro_bsz 2 x ctx 4096``).
* ``clip_and_guard_``: gradient clipping and the non-finite guard done by the fused AdamW kernel itself
  (its ``grad_scale`` / ``found_inf`` inputs, the ones ``GradScaler`` uses): no pass that rescales every
  gradient and no host synchronization; a non-finite step leaves parameters, moments and step counts untouched.

Both are exact reformulations (tests compare them with the plain PyTorch results).
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Callable, Iterable, Optional

import torch

IGNORE_INDEX = -100
CHUNK_ELEMENTS = 2**28  # logits elements per chunk (512 MB in bf16)
ENV_COMPILE = "LITSCALE_FUSED_CE_COMPILE"  # "0" forces the eager elementwise pass (debugging)


def _ce_chunk(logits: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor,
              label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [n, V], targets [n] (IGNORE_INDEX skipped), scale: 0-d fp32 (1 / valid tokens of the whole batch).

    Returns (sum of the chunk's token losses in fp32, d(mean loss)/d(logits) in the logits' dtype).
    """
    z = logits.float()
    vocab = z.shape[-1]
    ok = targets != IGNORE_INDEX
    y = torch.where(ok, targets, torch.zeros_like(targets))
    lse = torch.logsumexp(z, dim=-1)
    target_logit = z.gather(1, y[:, None]).squeeze(1)
    loss = (1.0 - label_smoothing) * (lse - target_logit)
    if label_smoothing:
        loss = loss + label_smoothing * (lse - z.mean(dim=-1))
    loss_sum = torch.where(ok, loss, torch.zeros_like(loss)).sum()
    hit = torch.arange(vocab, device=z.device)[None, :] == y[:, None]
    grad = torch.exp(z - lse[:, None]) - (1.0 - label_smoothing) * hit.to(z.dtype)
    if label_smoothing:
        grad = grad - label_smoothing / vocab
    grad = grad * torch.where(ok, scale, torch.zeros_like(scale))[:, None]
    return loss_sum, grad.to(logits.dtype)


_COMPILED: dict[str, object] = {}


def _chunk_fn(device: torch.device, compile_: Optional[bool]):
    """The elementwise pass: compiled on CUDA (or when asked), eager otherwise or if compiling fails."""
    if compile_ is None:
        compile_ = device.type == "cuda" and os.environ.get(ENV_COMPILE, "1") != "0"
    if not compile_:
        return _ce_chunk
    if "fn" not in _COMPILED:
        _COMPILED["fn"] = torch.compile(_ce_chunk, dynamic=False)
    return _COMPILED["fn"]


def _run_chunk(fn, *args):
    if fn is _ce_chunk:
        return fn(*args)
    try:
        return fn(*args)
    except Exception as err:  # a compiler problem must not stop training: fall back to the eager pass
        warnings.warn(f"compiled cross-entropy chunk failed ({type(err).__name__}: {err}); using the eager pass")
        _COMPILED["fn"] = _ce_chunk
        return _ce_chunk(*args)


def default_chunk_rows(n_rows: int, vocab: int) -> int:
    rows = max(256, (CHUNK_ELEMENTS // max(vocab, 1)) // 256 * 256)
    return min(n_rows, rows)


class FusedLinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of ``hidden @ weight.T``; gradients are produced in the forward pass, chunk by chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, label_smoothing: float, chunk_rows: int, dtype: torch.dtype,
                compile_: Optional[bool]):
        n = hidden.shape[0]
        need_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        fn = _chunk_fn(hidden.device, compile_)
        n_valid = (targets != IGNORE_INDEX).sum().clamp(min=1).to(torch.float32)
        scale = 1.0 / n_valid
        w = weight.to(dtype)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if need_grad else None
        grad_weight: Optional[torch.Tensor] = None
        for start in range(0, n, chunk_rows):
            h = hidden[start:start + chunk_rows].to(dtype)
            logits = h @ w.T
            loss_sum, grad = _run_chunk(fn, logits, targets[start:start + chunk_rows], scale, float(label_smoothing))
            total = total + loss_sum
            if not need_grad:
                continue
            grad_hidden[start:start + chunk_rows] = (grad @ w).to(hidden.dtype)
            gw = grad.T @ h
            if grad_weight is None:
                grad_weight = gw.float() if chunk_rows < n else gw
            else:
                grad_weight += gw  # fp32 accumulation over chunks
        if need_grad:
            ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return total * scale

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_output.to(grad_hidden.dtype), grad_weight * grad_output.to(grad_weight.dtype), \
            None, None, None, None, None


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                               label_smoothing: float = 0.0, chunk_rows: Optional[int] = None,
                               compile: Optional[bool] = None) -> torch.Tensor:
    """hidden [..., C], weight [V, C], targets [...] -> mean loss (fp32) over tokens whose target is not -100.

    GEMMs run in the autocast dtype when autocast is on (else in hidden's dtype); softmax math is fp32.
    """
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1)
    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    rows = chunk_rows or default_chunk_rows(hidden.shape[0], weight.shape[0])
    with torch.autocast(device_type, enabled=False):
        return FusedLinearCrossEntropy.apply(hidden, weight, targets, float(label_smoothing), int(rows), dtype,
                                             compile)


# ------------------------------------------------------------------------------------------ clip + guard
def _base_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer behind Lightning Fabric's wrapper (``_FabricOptimizer.optimizer``)."""
    inner = getattr(optimizer, "optimizer", None)
    return inner if isinstance(inner, torch.optim.Optimizer) else optimizer


def supports_fused_guard(optimizer: torch.optim.Optimizer) -> bool:
    opt = _base_optimizer(optimizer)
    return isinstance(opt, (torch.optim.Adam, torch.optim.AdamW)) and all(g.get("fused") for g in opt.param_groups)


def clip_and_guard_(optimizer: torch.optim.Optimizer, parameters: Iterable[torch.Tensor], max_norm: Optional[float],
                    *, skip_nonfinite: bool = True,
                    sum_over_shards: Optional[Callable[[torch.Tensor], torch.Tensor]] = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Arm the next ``optimizer.step()`` to clip to ``max_norm`` and to skip the step if the norm is not finite.

    Returns (total gradient norm before clipping, found_inf as a 0-d fp32 tensor: 1.0 where the step will be
    skipped), both on the device and without a host synchronization. Needs a fused Adam/AdamW (see
    ``supports_fused_guard``); the settings hold for the next step only, so call this before every step.
    Sharded gradients (FSDP) pass ``sum_over_shards``: it turns this rank's sum of squares into the sum over all
    shards (an all-reduce that stays on the device), so every rank clips with the global norm.
    """
    opt = _base_optimizer(optimizer)
    if not supports_fused_guard(opt):
        raise ValueError("clip_and_guard_ needs torch.optim.Adam/AdamW with fused=True in every param group")
    # DTensor gradients (FSDP2) contribute their local shard; sum_over_shards adds the other ranks'
    grads = [getattr(p.grad, "_local_tensor", p.grad) for p in parameters if p.grad is not None]
    grads = [g for g in grads if g.numel()]
    if grads:
        norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0, foreach=True).float()
    elif sum_over_shards is None:
        zero = torch.zeros((), dtype=torch.float32)
        return zero, zero
    else:  # this rank holds no shard of any gradient, yet takes part in the sum
        norm = torch.zeros((), dtype=torch.float32, device=_optimizer_device(opt))
    if sum_over_shards is not None:
        norm = sum_over_shards(norm**2).sqrt()
    found_inf = (~torch.isfinite(norm)).float()
    opt.found_inf = found_inf if skip_nonfinite else None
    if max_norm is not None and max_norm > 0 and math.isfinite(max_norm):
        # clip_grad_norm_ multiplies by min(1, max_norm / (norm + 1e-6)); the kernel divides by grad_scale
        opt.grad_scale = torch.clamp((norm + 1e-6) / max_norm, min=1.0)
    else:
        opt.grad_scale = None
    return norm, found_inf


def _optimizer_device(opt: torch.optim.Optimizer) -> torch.device:
    for group in opt.param_groups:
        for p in group["params"]:
            return p.device
    return torch.device("cpu")


def disarm_(optimizer: torch.optim.Optimizer) -> None:
    """Undo ``clip_and_guard_`` (plain steps again)."""
    opt = _base_optimizer(optimizer)
    opt.grad_scale = None
    opt.found_inf = None
