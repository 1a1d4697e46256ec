"""Causal self-attention (full or sliding window, GQA, optional RoPE, document masking) and YOCO cross-attention.

Every mixer's attention goes through ``attention()``, the one dispatch that picks a backend:

* ``sdpa``: PyTorch SDPA with ``is_causal`` for plain causal attention (reaches the flash kernel on GPUs);
* ``flash``: the flash-attn package (guarded import), causal / sliding window / varlen by cu_seqlens;
* ``flex``: FlexAttention with block masks (compiled on CUDA) for windows and documents;
* ``block_local``: SDPA over tiles of the window size for sliding windows, O(T * 2w);
* ``reference``: SDPA with the explicit boolean mask of ``attention_mask`` (what every path is tested against).

``LITSCALE_ATTN_IMPL=<name>`` forces one backend wherever it applies (``flash`` needs CUDA and fp16/bf16,
``block_local`` needs a window); layouts it cannot serve use the reference. Decoding with a KV cache
(queries at other positions than the keys) always uses the reference path (Tq is small there).
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import nn

from lit_gpt.config import Config, LayerSpec
from lit_gpt.kernels.attention_masks import (attention_mask, block_local_attention, flash_attention,
                                             flash_attn_available, flash_supports, flex_attention, flex_available,
                                             flex_block_mask, reference_attention, sdpa_gqa)
from lit_gpt.layers.context import SeqContext
from lit_gpt.layers.rotary import apply_rope

__all__ = ["attention", "attention_mask", "sdpa", "choose_impl", "flex_masks", "IMPLS", "CausalSelfAttention",
           "CrossAttention"]

IMPLS = ("reference", "sdpa", "flash", "flex", "block_local")
ENV_VAR = "LITSCALE_ATTN_IMPL"
# On CUDA without flash-attn, windows up to this size use the tiled SDPA path instead of FlexAttention
# (0 = never). H100, 2026-11-26 (docs/benchmarks.md §3): Flex SWA 128 / 512 beat the tiled path at every length
# from 4k to 32k (2.9 vs 9.6 ms and 4.4 vs 13.1 ms fwd+bwd at 32k), so Flex stays the default for ordinary heads.
BLOCK_LOCAL_MAX_WINDOW_CUDA = 0
# FlexAttention's compiled backward needs more shared memory than an H100 has (≈247 KB > 232 KB) once the value
# width passes 128 (differential attention's 2·head_dim values): those calls take the tiled SDPA path.
FLEX_MAX_VALUE_WIDTH = 128


def choose_impl(q: torch.Tensor, v: torch.Tensor, *, window: Optional[int], doc_ids: Optional[torch.Tensor],
                impl: Optional[str] = None) -> str:
    """The backend for a training-layout call (Tq == Tk, queries at the keys' positions)."""
    return _pick_backend(q.shape[2], window, doc_ids is not None, v.shape[-1], q.is_cuda, flash_supports(q, v),
                         torch.is_grad_enabled() and q.requires_grad, impl)


def _pick_backend(T: int, window: Optional[int], has_docs: bool, value_width: int, on_cuda: bool, flash_ok: bool,
                  needs_grad: bool, impl: Optional[str]) -> str:
    """``choose_impl``'s rule on plain values, so that ``flex_masks`` can ask it before any tensor exists."""
    if window is not None and window >= T:
        window = None  # the window does not bind
    impl = impl or os.environ.get(ENV_VAR) or None
    if impl is not None:
        if impl not in IMPLS:
            raise ValueError(f"{ENV_VAR}/impl must be one of {', '.join(IMPLS)}, got {impl!r}")
        if impl == "flash" and not flash_ok:
            raise RuntimeError("attention impl 'flash' needs flash-attn installed, CUDA tensors and fp16/bf16")
        if impl == "block_local" and window is None:
            return "sdpa" if not has_docs else "reference"
        if impl == "sdpa" and (window is not None or has_docs):
            return "reference"
        if impl == "flex" and (not flex_available() or (not on_cuda and needs_grad)):
            return "reference"  # CPU Flex has no backward
        return impl
    if window is None and not has_docs:
        return "flash" if flash_ok else "sdpa"
    if on_cuda:
        if flash_ok:
            return "flash"
        if window is not None and (window <= BLOCK_LOCAL_MAX_WINDOW_CUDA or value_width > FLEX_MAX_VALUE_WIDTH):
            return "block_local"
        if has_docs and window is None and value_width > FLEX_MAX_VALUE_WIDTH:
            return "reference"
        return "flex" if flex_available() else "reference"
    # CPU and others: the tiled path wins once the sequence spans a few windows; else the explicit mask
    if window is not None and T >= 2 * window:
        return "block_local"
    return "reference"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, window: Optional[int] = None,
              doc_ids: Optional[torch.Tensor] = None, q_pos: Optional[torch.Tensor] = None,
              k_pos: Optional[torch.Tensor] = None, impl: Optional[str] = None,
              block_mask: Optional[object] = None) -> torch.Tensor:
    """Causal attention. q: [B, H, Tq, D]; k: [B, G, Tk, D]; v: [B, G, Tk, Dv] (G divides H). Returns [B, H, Tq, Dv].

    Without positions the call is in the training layout (Tq == Tk, same positions); with ``q_pos``/``k_pos``
    (decoding with a cache) the reference path handles any layout. ``doc_ids`` [B, T] masks across documents.
    ``block_mask``: a Flex block mask already built for this (T, window, doc_ids) (``flex_masks``); used only if
    the Flex backend is chosen, else built here.
    """
    if q_pos is not None or k_pos is not None or q.shape[2] != k.shape[2]:
        return reference_attention(q, k, v, scale=scale, window=window, q_pos=q_pos, k_pos=k_pos,
                                   q_doc=doc_ids, k_doc=doc_ids)
    T = q.shape[2]
    if window is not None and window >= T:
        window = None
    backend = choose_impl(q, v, window=window, doc_ids=doc_ids, impl=impl)
    if backend == "sdpa":
        return sdpa_gqa(q, k, v, is_causal=True, scale=scale)
    if backend == "flash":
        return flash_attention(q, k, v, scale=scale, window=window, doc_ids=doc_ids)
    if backend == "flex":
        return flex_attention(q, k, v, scale=scale, window=window, doc_ids=doc_ids, block_mask=block_mask)
    if backend == "block_local":
        return block_local_attention(q, k, v, scale=scale, window=window, doc_ids=doc_ids)
    return reference_attention(q, k, v, scale=scale, window=window, q_doc=doc_ids, k_doc=doc_ids)


def flex_masks(config: Config, T: int, doc_ids: Optional[torch.Tensor], device: torch.device) -> dict:
    """The Flex block masks the attention layers of ``config`` will use for a training-layout call over T tokens,
    by layer window: built wherever ``choose_impl``'s rule picks Flex for a layer. Two things are not known before
    the layers run and are assumed: the compute dtype suits flash-attn when it is installed (autocast), and the
    call may skip Flex on CPU for gradients (a mask built then goes unused). Without documents the masks are
    cached."""
    flash_ok = device.type == "cuda" and flash_attn_available()
    out = {}
    for spec in config.layer_plan():
        if spec.mixer not in ("attention", "cross_attention") or spec.window in out:
            continue
        width = config.head_size * (2 if spec.diff_attn else 1)  # differential attention's values are 2 heads wide
        backend = _pick_backend(T, spec.window, doc_ids is not None, width, device.type == "cuda", flash_ok,
                                needs_grad=False, impl=None)
        if backend == "flex":
            window = spec.window if spec.window is not None and spec.window < T else None
            out[spec.window] = flex_block_mask(T, window, doc_ids, device)
    return out


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, window: Optional[int] = None,
         q_pos: Optional[torch.Tensor] = None, k_pos: Optional[torch.Tensor] = None,
         q_doc: Optional[torch.Tensor] = None, k_doc: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Backward-compatible entry point: ``attention`` with separate query/key document ids (must be equal)."""
    return attention(q, k, v, scale=scale, window=window, doc_ids=q_doc if q_doc is not None else k_doc,
                     q_pos=q_pos, k_pos=k_pos)


class CausalSelfAttention(nn.Module):
    """Fused qkv projection laid out as [q | k | v]; GQA with ``n_query_groups`` K/V heads.

    Subclasses change only ``core`` (q, k, v -> per-head outputs), so caching and YOCO sharing live here once.
    """

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
            y = self.core(q, k, v, window=self.layer.window, doc_ids=ctx.doc_ids,
                          block_mask=ctx.flex_masks.get(self.layer.window))
        else:
            y = self.attend_cached(q, k, v, ctx, cache)
        return self.proj(y.transpose(1, 2).reshape(B, T, self.config.attn_dim))

    def core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **mask) -> torch.Tensor:
        """[B, H, T, D] queries, [B, G, Tk, D] keys/values -> [B, H, T, D] (or any [B, h, T, d] with h·d = attn_dim)."""
        return attention(q, k, v, scale=self.config.attention_scale, **mask)

    def attend_cached(self, q, k, v, ctx: SeqContext, cache: dict) -> torch.Tensor:
        offset, T = ctx.offset, q.shape[2]
        if "k" in cache:
            k = torch.cat((cache["k"], k), dim=2)
            v = torch.cat((cache["v"], v), dim=2)
            k_start = cache["start"]
            q_pos = torch.arange(offset, offset + T, device=q.device)
            k_pos = torch.arange(k_start, k_start + k.shape[2], device=q.device)
            y = self.core(q, k, v, window=self.layer.window, q_pos=q_pos, k_pos=k_pos)
        else:  # prefill: the training layout, so the fast paths apply
            k_start = offset
            y = self.core(q, k, v, window=self.layer.window)
        if self.layer.produces_kv:
            ctx.shared["kv"] = (k, v, k_start)  # the cross layers' keys start at absolute position k_start
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
        k, v, k_start = ctx.shared["kv"]  # k_start: None in training, else the keys' first absolute position
        q = self.q(x).view(B, T, self.config.n_head, self.config.head_size).transpose(1, 2)
        if self.layer.rope and ctx.rope is not None:
            cos, sin = ctx.rope
            q = apply_rope(q, cos, sin)
        if k_start is None or (k.shape[2] == T and k_start == ctx.offset):
            y = self.core(q, k, v, doc_ids=ctx.doc_ids,  # training layout (or a prefill)
                          block_mask=ctx.flex_masks.get(None) if k_start is None else None)
        else:
            q_pos = torch.arange(ctx.offset, ctx.offset + T, device=q.device)
            k_pos = torch.arange(k_start, k_start + k.shape[2], device=q.device)
            y = self.core(q, k, v, q_pos=q_pos, k_pos=k_pos)
        return self.proj(y.transpose(1, 2).reshape(B, T, self.config.attn_dim))

    def core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **mask) -> torch.Tensor:
        return attention(q, k, v, scale=self.config.attention_scale, **mask)
