"""Rotary position embedding (RoPE), rotate-half convention over the whole head."""

from __future__ import annotations

import torch


def rope_cache(head_size: int, positions: torch.Tensor, base: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [T, head_size] for the given absolute positions (fp32)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_size, 2, device=positions.device, dtype=torch.float32) / head_size))
    angles = torch.outer(positions.float(), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, heads, T, head_size]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    rotated = torch.cat((-x2, x1), dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)
