"""What every layer of one forward pass shares: positions, document boundaries, decoding state, YOCO outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from lit_gpt.layers.state import DecodeState


@dataclass
class SeqContext:
    rope: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # cos, sin for this call's positions: [T, head_size]
    doc_ids: Optional[torch.Tensor] = None  # [B, T] document index of every token (varlen), or None
    state: Optional[DecodeState] = None  # set while decoding: the call continues the state's sequence
    shared: dict[str, Any] = field(default_factory=dict)  # YOCO: "kv" from the producer, "memory" for GMUs
    # FlexAttention block masks for this call's training layout, by layer window (None = full causal), built
    # eagerly before the (compiled) Blocks run: building one inside a compiled Block is a graph break per layer
    flex_masks: dict[Optional[int], Any] = field(default_factory=dict)

    @property
    def offset(self) -> int:
        """Absolute position of this call's first token."""
        return 0 if self.state is None else self.state.pos

    def layer_state(self, index: int) -> Optional[dict[str, Any]]:
        return None if self.state is None else self.state.layers[index]


def document_ids(idx: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Document index per token: a token after an EOS starts a new document (the EOS ends its own)."""
    is_eos = (idx == eos_id).to(torch.int32)
    return torch.cumsum(is_eos, dim=1) - is_eos


def document_starts(doc_ids: torch.Tensor) -> torch.Tensor:
    """Bool [B, T], True where a token begins a new document (never at t = 0)."""
    starts = torch.zeros_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    return starts
