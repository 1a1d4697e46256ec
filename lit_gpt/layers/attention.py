"""Causal self-attention (full or sliding window, GQA, optional RoPE, document masking) and YOCO cross-attention.

The reference path is PyTorch SDPA with an explicit boolean mask built by ``attention_mask``; plain causal
attention with no documents uses SDPA's ``is_causal`` so it reaches the flash kernel on GPUs.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from lit_gpt.config import Config, LayerSpec
from lit_gpt.layers.context import SeqContext
from lit_gpt.layers.rotary import apply_rope


def attention_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: Optional[int] = None,
                   q_doc: Optional[torch.Tensor] = None, k_doc: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Bool mask [.., Tq, Tk], True where a query may see a key: causal, inside the window, same document.

    A window of w means each query sees itself and the previous w - 1 tokens.
    """
    diff = q_pos[:, None] - k_pos[None, :]
    allowed = diff >= 0
    if window is not None:
        allowed = allowed & (diff < window)
    if q_doc is not None and k_doc is not None:
        allowed = allowed[None] & (q_doc[:, :, None] == k_doc[:, None, :])  # [B, Tq, Tk]
        return allowed[:, None]  # broadcast over heads
    return allowed


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, window: Optional[int] = None,
         q_pos: Optional[torch.Tensor] = None, k_pos: Optional[torch.Tensor] = None,
         q_doc: Optional[torch.Tensor] = None, k_doc: Optional[torch.Tensor] = None) -> torch.Tensor:
    """q: [B, H, Tq, D]; k, v: [B, G, Tk, D] with G dividing H. Positions default to 0..T-1 (training)."""
    Tq, Tk = q.shape[2], k.shape[2]
    gqa = q.shape[1] != k.shape[1]
    plain_causal = window is None and q_doc is None and q_pos is None and Tq == Tk
    if plain_causal:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    if q_pos is None:
        q_pos = torch.arange(Tk - Tq, Tk, device=q.device)
    if k_pos is None:
        k_pos = torch.arange(Tk, device=q.device)
    mask = attention_mask(q_pos, k_pos, window, q_doc, k_doc)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


class CausalSelfAttention(nn.Module):
    """Fused qkv projection laid out as [q | k | v]; GQA with ``n_query_groups`` K/V heads."""

    def __init__(self, config: Config, layer: LayerSpec):
        super().__init__()
        self.config, self.layer = config, layer
        self.n_head, self.n_groups, self.head_size = config.n_head, config.n_query_groups, config.head_size
        self.qkv = nn.Linear(config.n_embd, config.attn_dim + 2 * config.kv_dim, bias=config.attn_bias)
        self.proj = nn.Linear(config.attn_dim, config.n_embd, bias=config.attn_bias)

    def split_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split((self.config.attn_dim, self.config.kv_dim, self.config.kv_dim), dim=-1)
        q = q.view(B, T, self.n_head, self.head_size).transpose(1, 2)
        k = k.view(B, T, self.n_groups, self.head_size).transpose(1, 2)
        v = v.view(B, T, self.n_groups, self.head_size).transpose(1, 2)
        return q, k, v

    def forward(self, x: torch.Tensor, ctx: SeqContext) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.split_heads(x)
        if self.layer.rope and ctx.rope is not None:
            cos, sin = ctx.rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        cache = ctx.layer_state(self.layer.index)
        if cache is None:
            if self.layer.produces_kv:
                ctx.shared["kv"] = (k, v, None)
            y = self.attend(q, k, v, ctx)
        else:
            y = self.attend_cached(q, k, v, ctx, cache)
        return self.proj(y.transpose(1, 2).reshape(B, T, self.config.attn_dim))

    def attend(self, q, k, v, ctx: SeqContext) -> torch.Tensor:
        return sdpa(q, k, v, scale=self.config.attention_scale, window=self.layer.window,
                    q_doc=ctx.doc_ids, k_doc=ctx.doc_ids)

    def attend_cached(self, q, k, v, ctx: SeqContext, cache: dict) -> torch.Tensor:
        offset, T = ctx.offset, q.shape[2]
        if "k" in cache:
            k = torch.cat((cache["k"], k), dim=2)
            v = torch.cat((cache["v"], v), dim=2)
            k_start = cache["start"]
        else:
            k_start = offset
        q_pos = torch.arange(offset, offset + T, device=q.device)
        k_pos = torch.arange(k_start, k_start + k.shape[2], device=q.device)
        if self.layer.produces_kv:
            ctx.shared["kv"] = (k, v, k_pos)
        y = sdpa(q, k, v, scale=self.config.attention_scale, window=self.layer.window, q_pos=q_pos, k_pos=k_pos)
        window = self.layer.window
        if window is not None and k.shape[2] > window - 1:  # keep only what a future query can still see
            keep = window - 1
            k, v, k_start = k[:, :, k.shape[2] - keep:], v[:, :, v.shape[2] - keep:], k_start + k.shape[2] - keep
        cache.update(k=k, v=v, start=k_start)
        return y


class CrossAttention(nn.Module):
    """YOCO cross-decoder attention: own queries, the producer layer's shared K/V, causal over positions."""

    def __init__(self, config: Config, layer: LayerSpec):
        super().__init__()
        self.config, self.layer = config, layer
        self.q = nn.Linear(config.n_embd, config.attn_dim, bias=config.attn_bias)
        self.proj = nn.Linear(config.attn_dim, config.n_embd, bias=config.attn_bias)

    def forward(self, x: torch.Tensor, ctx: SeqContext) -> torch.Tensor:
        B, T, _ = x.shape
        if "kv" not in ctx.shared:
            raise RuntimeError("cross-attention layer ran before the YOCO layer that produces the shared K/V")
        k, v, k_pos = ctx.shared["kv"]
        q = self.q(x).view(B, T, self.config.n_head, self.config.head_size).transpose(1, 2)
        if k_pos is None:
            y = sdpa(q, k, v, scale=self.config.attention_scale, q_doc=ctx.doc_ids, k_doc=ctx.doc_ids)
        else:
            q_pos = torch.arange(ctx.offset, ctx.offset + T, device=q.device)
            y = sdpa(q, k, v, scale=self.config.attention_scale, q_pos=q_pos, k_pos=k_pos)
        return self.proj(y.transpose(1, 2).reshape(B, T, self.config.attn_dim))
