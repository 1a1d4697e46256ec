"""SwiGLU feed-forward: one fused w -> 2·hidden projection split into gate and up, then hidden -> w."""

from __future__ import annotations

import torch
from torch import nn

from lit_gpt.kernels.swiglu import swiglu


class SwiGLU(nn.Module):
    def __init__(self, n_embd: int, hidden: int, bias: bool = False):
        super().__init__()
        self.fc = nn.Linear(n_embd, 2 * hidden, bias=bias)  # [gate | up]
        self.proj = nn.Linear(hidden, n_embd, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(swiglu(self.fc(x)))
