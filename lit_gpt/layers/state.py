"""Decoding state: what each layer keeps between calls so generation never recomputes the prefix."""

from __future__ import annotations

from typing import Any


class DecodeState:
    """Per-sequence-batch decoding state. ``pos`` counts tokens consumed; each layer keeps a dict of tensors.

    Attention layers keep their K/V cache (bounded by the window for sliding-window layers), Mamba layers their
    conv and scan states; the YOCO producer's cache also serves the cross-attention layers.
    """

    def __init__(self, n_layer: int, batch_size: int):
        self.pos = 0
        self.batch_size = batch_size
        self.layers: list[dict[str, Any]] = [dict() for _ in range(n_layer)]

    def layer(self, index: int) -> dict[str, Any]:
        """Layer ``index``'s state dict (mixers mutate it in place)."""
        return self.layers[index]

    def reset(self) -> None:
        self.pos = 0
        for layer in self.layers:
            layer.clear()
