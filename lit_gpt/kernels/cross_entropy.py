"""Cross-entropy of a linear head without holding the full logits.

``linear_cross_entropy(hidden, weight, targets)`` equals ``F.cross_entropy(hidden @ weight.T, targets)``.
The chunked path walks the tokens in chunks, computes each chunk's logits in fp32, and produces the gradients
for ``hidden`` and ``weight`` in the same pass, so peak memory is one chunk's logits instead of N × vocab.
liger-kernel's fused kernel is used on CUDA when it is installed. ``fused`` (kernels/fused_ops.py) is the chunked
path with bf16 GEMMs and one compiled elementwise pass per chunk (``LITSCALE_CE_IMPL=fused``).
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
DENSE_LIMIT = 2**26  # tokens × vocab below which plain logits are cheaper than chunking


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    if torch.is_autocast_enabled(t.device.type):
        return torch.get_autocast_dtype(t.device.type)
    return t.dtype


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, label_smoothing: float, chunk_size: int, dtype: torch.dtype):
        n, vocab = hidden.shape[0], weight.shape[0]
        valid = targets != IGNORE_INDEX
        n_valid = valid.sum().clamp(min=1).to(torch.float32)
        w = weight.to(dtype)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, n, chunk_size):
            h = hidden[start:start + chunk_size].to(dtype)
            y = targets[start:start + chunk_size]
            ok = valid[start:start + chunk_size]
            logits = (h @ w.T).float()
            lse = torch.logsumexp(logits, dim=-1)
            y_safe = torch.where(ok, y, torch.zeros_like(y))
            target_logit = logits.gather(1, y_safe[:, None]).squeeze(1)
            loss = (1 - label_smoothing) * (lse - target_logit)
            if label_smoothing:
                loss = loss + label_smoothing * (lse - logits.mean(dim=-1))
            total += (loss * ok).sum()
            grad = torch.softmax(logits, dim=-1)
            grad.scatter_add_(1, y_safe[:, None], torch.full_like(target_logit[:, None], -(1 - label_smoothing)))
            if label_smoothing:
                grad -= label_smoothing / vocab
            grad *= (ok.to(grad.dtype) / n_valid)[:, None]
            grad_hidden[start:start + chunk_size] = (grad.to(dtype) @ w).to(hidden.dtype)
            grad_weight += grad.T @ h.float()
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return total / n_valid

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_output, grad_weight * grad_output, None, None, None, None


def _liger_available() -> bool:
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        return False
    return True


def choose_impl(n_tokens: int, vocab: int, device: torch.device) -> str:
    forced = os.environ.get("LITSCALE_CE_IMPL")
    if forced:
        return forced
    if device.type == "cuda" and _liger_available():
        return "liger"
    if n_tokens * vocab <= DENSE_LIMIT:
        return "dense"
    # CUDA: the chunked path's weight gradient is an fp32 GEMM (no tensor cores); "fused" runs it in bf16
    return "fused" if device.type == "cuda" else "chunked"


def per_token_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                            chunk_size: int = 4096) -> torch.Tensor:
    """Loss of every token (fp32, shape of ``targets``) without building all logits at once; no label smoothing."""
    shape = targets.shape
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1)
    losses = [F.cross_entropy(F.linear(hidden[s:s + chunk_size], weight).float(), targets[s:s + chunk_size],
                              ignore_index=IGNORE_INDEX, reduction="none")
              for s in range(0, hidden.shape[0], chunk_size)]
    return torch.cat(losses).view(shape)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                         label_smoothing: float = 0.0, chunk_size: int = 4096,
                         impl: Optional[str] = None, reduction: str = "mean") -> torch.Tensor:
    """hidden [..., C], weight [V, C], targets [...] (IGNORE_INDEX = -100 skipped) -> mean loss (fp32).

    ``reduction="none"`` returns every token's loss (evaluation; label smoothing not applied).
    """
    if reduction == "none":
        return per_token_cross_entropy(hidden, weight, targets, chunk_size=chunk_size)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1)
    impl = impl or choose_impl(hidden.shape[0], weight.shape[0], hidden.device)
    if impl == "dense":
        logits = F.linear(hidden, weight).float()
        return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing)
    if impl == "liger":
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

        dtype = _compute_dtype(hidden)
        loss_fn = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing)
        return loss_fn(weight.to(dtype), hidden.to(dtype), targets).float()
    if impl == "fused":
        from lit_gpt.kernels.fused_ops import fused_linear_cross_entropy

        return fused_linear_cross_entropy(hidden, weight, targets, label_smoothing=label_smoothing)
    if impl != "chunked":
        raise ValueError(f"cross-entropy impl {impl!r} must be dense, chunked, fused or liger")
    dtype = _compute_dtype(hidden)
    with torch.autocast(hidden.device.type, enabled=False):
        return ChunkedLinearCrossEntropy.apply(hidden, weight, targets, float(label_smoothing), chunk_size, dtype)
