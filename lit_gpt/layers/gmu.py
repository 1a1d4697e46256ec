"""Gated memory unit (SPEC §5): y = out_proj(SiLU(in_proj(x)) ⊙ m), m = the YOCO memory layer's scan output."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lit_gpt.config import Config, LayerSpec
from lit_gpt.layers.context import SeqContext

__all__ = ["GatedMemoryUnit"]


class GatedMemoryUnit(nn.Module):
    def __init__(self, config: Config, layer: LayerSpec):
        super().__init__()
        self.config, self.layer = config, layer
        self.d_mem = config.d_inner
        self.in_proj = nn.Linear(config.n_embd, self.d_mem, bias=False)
        self.out_proj = nn.Linear(self.d_mem, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor, ctx: SeqContext) -> torch.Tensor:
        memory = ctx.shared.get("memory")
        if memory is None:
            raise RuntimeError(f"GMU layer {self.layer.index} found no memory: the YOCO Mamba layer that saves its "
                               "scan output (LayerSpec.saves_memory) must run earlier in the same forward")
        if memory.shape[:-1] != x.shape[:-1] or memory.shape[-1] != self.d_mem:
            raise RuntimeError(f"GMU layer {self.layer.index}: memory of shape {tuple(memory.shape)} does not match "
                               f"input {tuple(x.shape)} with memory width {self.d_mem}")
        return self.out_proj(F.silu(self.in_proj(x)) * memory)
