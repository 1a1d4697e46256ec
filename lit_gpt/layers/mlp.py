"""SwiGLU feed-forward: one fused w -> 2·hidden projection split into gate and up, then hidden -> w."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SwiGLU(nn.Module):
    def __init__(self, n_embd: int, hidden: int, bias: bool = False):
        super().__init__()
        self.fc = nn.Linear(n_embd, 2 * hidden, bias=bias)  # [gate | up]
        self.proj = nn.Linear(hidden, n_embd, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.fc(x).chunk(2, dim=-1)
        return self.proj(F.silu(gate) * up)
