"""Attention masks and the masked attention kernels built from them.

Semantics every path shares (the reference is ``reference_attention``): a query at position p sees a key at
position p' when p' <= p, p - p' < window (a window of w means itself and the previous w - 1 tokens) and,
with documents, both belong to the same document.

* ``attention_mask``: the explicit boolean mask the reference SDPA call uses.
* ``block_local_attention``: sliding-window attention as SDPA over tiles: the queries of tile i see keys of
  tiles i - 1 and i under a static band mask, so the work is O(T * 2 * tile) instead of O(T^2).
* ``flex_block_mask`` / ``flex_attention``: FlexAttention with block masks cached per (shape, window) and built
  per batch for document layouts (compiled on CUDA, eager elsewhere: eager is slow and for tests only).
* ``flash_attention``: the flash-attn package (guarded import), varlen through cu_seqlens from document ids.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any, Optional

import torch
import torch.nn.functional as F

__all__ = [
    "sdpa_gqa", "attention_mask", "reference_attention", "block_local_attention", "flex_available", "flex_block_mask",
    "flex_attention", "flash_attn_available", "flash_attention", "cu_seqlens_from_doc_ids",
]


# ------------------------------------------------------------------------------------------- SDPA with GQA
def _flash_sdpa_ok(q: torch.Tensor, v: torch.Tensor, attn_mask: Optional[torch.Tensor]) -> bool:
    return attn_mask is None and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] == v.shape[-1] <= 256


def sdpa_gqa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
             attn_mask: Optional[torch.Tensor] = None, is_causal: bool = False) -> torch.Tensor:
    """SDPA with G KV heads for H query heads. On CUDA only the flash backend takes ``enable_gqa``; every other
    layout (a mask, fp32, a value wider than the key) would silently fall back to the unfused math kernel, so K/V
    are expanded to H heads there and the memory-efficient kernel runs instead."""
    H, G = q.shape[1], k.shape[1]
    if H != G and q.is_cuda and not _flash_sdpa_ok(q, v, attn_mask):
        k, v = k.repeat_interleave(H // G, dim=1), v.repeat_interleave(H // G, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale,
                                          enable_gqa=k.shape[1] != H)


# ------------------------------------------------------------------------------------------- reference
def attention_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: Optional[int] = None,
                   q_doc: Optional[torch.Tensor] = None, k_doc: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Bool mask [Tq, Tk] (or [B, 1, Tq, Tk] with documents), True where a query may see a key."""
    diff = q_pos[:, None] - k_pos[None, :]
    allowed = diff >= 0
    if window is not None:
        allowed = allowed & (diff < window)
    if q_doc is not None and k_doc is not None:
        allowed = allowed[None] & (q_doc[:, :, None] == k_doc[:, None, :])  # [B, Tq, Tk]
        return allowed[:, None]  # broadcast over heads
    return allowed


def reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                        window: Optional[int] = None, q_pos: Optional[torch.Tensor] = None,
                        k_pos: Optional[torch.Tensor] = None, q_doc: Optional[torch.Tensor] = None,
                        k_doc: Optional[torch.Tensor] = None) -> torch.Tensor:
    """SDPA with an explicit boolean mask. q: [B, H, Tq, D]; k: [B, G, Tk, D]; v: [B, G, Tk, Dv].

    Positions default to the training layout: the queries are the last Tq of the Tk keys.
    """
    Tq, Tk = q.shape[2], k.shape[2]
    if q_pos is None:
        q_pos = torch.arange(Tk - Tq, Tk, device=q.device)
    if k_pos is None:
        k_pos = torch.arange(Tk, device=q.device)
    mask = attention_mask(q_pos, k_pos, window, q_doc, k_doc)
    return sdpa_gqa(q, k, v, attn_mask=mask, scale=scale)


# ------------------------------------------------------------------------------------------- block-local SWA
_BAND_MASKS: dict = {}


def _band_mask(tile: int, window: int, keys: int, device: torch.device) -> torch.Tensor:
    """[tile, keys] bool: query r (the last ``tile`` positions) sees key c when 0 <= diff < window.

    Cached per shape in eager mode; under torch.compile it is built in the graph (a few small ops).
    """
    if not torch.compiler.is_compiling():
        key = (tile, window, keys, device)
        if key not in _BAND_MASKS:
            if len(_BAND_MASKS) > 64:
                _BAND_MASKS.clear()
            _BAND_MASKS[key] = _band_mask_uncached(tile, window, keys, device)
        return _BAND_MASKS[key]
    return _band_mask_uncached(tile, window, keys, device)


def _band_mask_uncached(tile: int, window: int, keys: int, device: torch.device) -> torch.Tensor:
    r = torch.arange(tile, device=device)[:, None]
    c = torch.arange(keys, device=device)[None, :]
    diff = (keys - tile) + r - c  # query position minus key position
    return (diff >= 0) & (diff < window)


def block_local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, window: int,
                          doc_ids: Optional[torch.Tensor] = None, tile: Optional[int] = None) -> torch.Tensor:
    """Sliding-window causal attention by tiles (training layout, Tq == Tk). Needs tile >= window.

    q: [B, H, T, D]; k: [B, G, T, D]; v: [B, G, T, Dv]; doc_ids: [B, T] or None. Returns [B, H, T, Dv].
    The first tile attends to itself (a [tile, tile] band mask); every later tile, batched, to [previous, own]
    under one shared [tile, 2·tile] band mask (broadcast, never materialized per tile). With documents the mask
    also carries the per-token document test ([B·n, 1, tile, 2·tile] bools).
    """
    B, H, T, _ = q.shape
    G, Dv = k.shape[1], v.shape[-1]
    tile = window if tile is None else tile
    if tile < window:
        raise ValueError(f"block-local attention needs tile ({tile}) >= window ({window})")
    n = -(-T // tile)
    pad = n * tile - T
    if n == 1 and doc_ids is None:
        return sdpa_gqa(q, k, v, attn_mask=_band_mask(T, window, T, q.device), scale=scale)

    def tiles(x: torch.Tensor, front: int) -> torch.Tensor:  # [B, h, T, d] -> [B, h, front + n, tile, d]
        x = F.pad(x, (0, 0, front * tile, pad))
        return x.view(x.shape[0], x.shape[1], -1, tile, x.shape[-1])

    def to_batch(x: torch.Tensor) -> torch.Tensor:  # [B, h, m, t, d] -> [B * m, h, t, d]
        return x.transpose(1, 2).reshape(B * x.shape[2], x.shape[1], x.shape[3], x.shape[4])

    if doc_ids is None:
        qt, kt, vt = tiles(q, 0), tiles(k, 0), tiles(v, 0)
        y0 = sdpa_gqa(qt[:, :, 0], kt[:, :, 0], vt[:, :, 0], scale=scale,
                      attn_mask=_band_mask(tile, window, tile, q.device))
        kw = to_batch(torch.cat((kt[:, :, :-1], kt[:, :, 1:]), dim=3))  # [B * (n-1), G, 2 * tile, D]
        vw = to_batch(torch.cat((vt[:, :, :-1], vt[:, :, 1:]), dim=3))
        y = sdpa_gqa(to_batch(qt[:, :, 1:]), kw, vw, scale=scale,
                     attn_mask=_band_mask(tile, window, 2 * tile, q.device))
        y = y.view(B, n - 1, H, tile, Dv).transpose(1, 2).reshape(B, H, (n - 1) * tile, Dv)
        return torch.cat((y0, y), dim=2)[:, :, :T]
    kt, vt = tiles(k, 1), tiles(v, 1)  # a zero tile in front: tile 0's "previous tile", masked out below
    kw = to_batch(torch.cat((kt[:, :, :-1], kt[:, :, 1:]), dim=3))  # [B * n, G, 2 * tile, D]
    vw = to_batch(torch.cat((vt[:, :, :-1], vt[:, :, 1:]), dim=3))
    # padding is document -2: it matches no real document, and padded queries still see themselves (no row of
    # the mask is empty, so no kernel ever normalizes over zero keys)
    dq = F.pad(doc_ids, (0, pad), value=-2).view(B, n, tile)
    dk = F.pad(doc_ids, (tile, pad), value=-2).view(B, n + 1, tile)
    dk = torch.cat((dk[:, :-1], dk[:, 1:]), dim=2)  # [B, n, 2 * tile]
    mask = _band_mask(tile, window, 2 * tile, q.device) & (dq[:, :, :, None] == dk[:, :, None, :])
    y = sdpa_gqa(to_batch(tiles(q, 0)), kw, vw, attn_mask=mask.view(B * n, 1, tile, 2 * tile), scale=scale)
    y = y.view(B, n, H, tile, Dv).transpose(1, 2).reshape(B, H, n * tile, Dv)
    return y[:, :, :T]


# ------------------------------------------------------------------------------------------- FlexAttention
# Backends are probed once at import (guarded), so the dispatch reads plain constants (torch.compile friendly).
try:
    from torch.nn.attention.flex_attention import create_block_mask as _create_block_mask
    from torch.nn.attention.flex_attention import flex_attention as _flex_attention
    FLEX_AVAILABLE = True
except Exception:  # pragma: no cover - old torch
    _create_block_mask = _flex_attention = None
    FLEX_AVAILABLE = False


def flex_available() -> bool:
    return FLEX_AVAILABLE


def _mask_mod(window: Optional[int], doc_ids: Optional[torch.Tensor]):
    def causal(b, h, q_idx, kv_idx):
        allowed = q_idx >= kv_idx
        if window is not None:
            allowed = allowed & (q_idx - kv_idx < window)
        if doc_ids is not None:
            allowed = allowed & (doc_ids[b, q_idx] == doc_ids[b, kv_idx])
        return allowed

    return causal


@functools.lru_cache(maxsize=32)
def _cached_block_mask(T: int, window: Optional[int], device: torch.device, compile_mask: bool):
    return _create_block_mask(_mask_mod(window, None), None, None, T, T, device=device, _compile=compile_mask)


@torch.compiler.disable
def flex_block_mask(T: int, window: Optional[int], doc_ids: Optional[torch.Tensor], device: torch.device):
    """Block mask for causal (+window) (+documents) attention over T tokens.

    Without documents the mask depends only on (T, window, device) and is cached; document layouts change every
    batch, so their mask is built per call (block-sparse, cheap compared with the attention itself). Always runs
    eagerly (a graph break under torch.compile) so the cache works and mask building is never traced.
    """
    compile_mask = device.type == "cuda"
    if doc_ids is None:
        return _cached_block_mask(T, window, device, compile_mask)
    return _per_batch(doc_ids, ("flex", T, window), lambda: _create_block_mask(
        _mask_mod(window, doc_ids), doc_ids.shape[0], None, T, T, device=device, _compile=compile_mask))


# Document layouts change every batch but every layer of one forward sees the same ``doc_ids`` tensor: what is
# derived from it (Flex block masks, cu_seqlens) is kept for the most recent ``doc_ids`` object only.
_PER_BATCH: dict = {"doc_ids": None, "values": {}}


def _per_batch(doc_ids: torch.Tensor, key: tuple, build):
    if _PER_BATCH["doc_ids"] is not doc_ids:
        _PER_BATCH["doc_ids"], _PER_BATCH["values"] = doc_ids, {}
    values = _PER_BATCH["values"]
    if key not in values:
        values[key] = build()
    return values[key]


_COMPILED_FLEX = None


def _compiled_flex():
    global _COMPILED_FLEX
    if _COMPILED_FLEX is None:
        import torch._dynamo

        # one graph per (shape, mask kind, grad mode): a 4k..32k sweep with windows and documents passes dynamo's
        # default of 8, after which Flex silently runs unfused (full score matrices)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        _COMPILED_FLEX = torch.compile(_flex_attention, dynamic=False)
    return _COMPILED_FLEX


def flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, window: Optional[int] = None,
                   doc_ids: Optional[torch.Tensor] = None, compiled: Optional[bool] = None,
                   block_mask: Optional[Any] = None) -> torch.Tensor:
    """FlexAttention in the training layout (Tq == Tk). Compiled on CUDA unless ``compiled`` says otherwise
    (inside a torch.compile'd model the surrounding compile handles it). ``block_mask``: built beforehand for
    this (T, window, doc_ids), else built here (eagerly: a graph break under torch.compile)."""
    T = q.shape[2]
    if block_mask is None:
        block_mask = flex_block_mask(T, window, doc_ids, q.device)
    compiled = q.is_cuda if compiled is None else compiled
    fn = _compiled_flex() if compiled and not torch.compiler.is_compiling() else _flex_attention
    if not q.is_cuda and not torch.is_grad_enabled():  # CPU Flex has no backward and refuses grad-requiring inputs
        q, k, v = q.detach(), k.detach(), v.detach()
    options = WIDE_VALUE_FLEX_OPTIONS if q.is_cuda and v.shape[-1] > 128 else None
    return fn(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1],
              kernel_options=options)


# The default FlexAttention backward tiles need ~247 KB of shared memory once values are 256 wide (differential
# attention), more than an H100's 232 KB: smaller tiles and a single pipeline stage fit.
WIDE_VALUE_FLEX_OPTIONS = {"BLOCK_M1": 32, "BLOCK_N1": 64, "BLOCK_M2": 64, "BLOCK_N2": 32, "num_stages": 1}


# ------------------------------------------------------------------------------------------- flash-attn
def _probe_flash() -> Any:
    if os.environ.get("LITSCALE_NO_FLASH_ATTN", "0") not in ("", "0"):
        return None
    try:
        if importlib.util.find_spec("flash_attn") is None:
            return None
        from flash_attn import flash_attn_func, flash_attn_varlen_func
    except Exception:  # not installed, blocked, or a broken build
        return None
    return flash_attn_func, flash_attn_varlen_func


_FLASH = _probe_flash()


def flash_attn_available() -> bool:
    return _FLASH is not None


def flash_supports(q: torch.Tensor, v: torch.Tensor) -> bool:
    return (q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256
            and flash_attn_available())


@torch.compiler.disable
def cu_seqlens_from_doc_ids(doc_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Cumulative sequence lengths (int32, [n_docs + 1]) over the flattened batch, and the longest document.

    Every row starts a new document, and so does every change of document id within a row. Computed once per
    ``doc_ids`` tensor (one host sync per forward, not per layer).
    """
    return _per_batch(doc_ids, ("cu_seqlens",), lambda: _cu_seqlens(doc_ids))


def _cu_seqlens(doc_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    B, T = doc_ids.shape
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    idx = torch.nonzero(starts.reshape(-1), as_tuple=False).squeeze(1)
    cu = torch.cat((idx, torch.tensor([B * T], device=idx.device, dtype=idx.dtype))).to(torch.int32)
    max_len = int((cu[1:] - cu[:-1]).max().item())
    return cu, max_len


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float,
                    window: Optional[int] = None, doc_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
    """flash-attn in the training layout. Inputs [B, H, T, D] (any strides with a unit last stride).

    flash-attn needs equal q/k/v head sizes, so a wider value (differential attention) is split into chunks.
    """
    flash_func, varlen_func = _FLASH
    Dq, Dv = q.shape[-1], v.shape[-1]
    if Dv != Dq and Dv % Dq == 0:
        return torch.cat([flash_attention(q, k, vc, scale=scale, window=window, doc_ids=doc_ids)
                          for vc in v.split(Dq, dim=-1)], dim=-1)
    B, H, T, _ = q.shape
    win = (-1, -1) if window is None else (window - 1, 0)
    qt, kt, vt = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, T, h, d]
    if doc_ids is None:
        y = flash_func(qt, kt, vt, softmax_scale=scale, causal=True, window_size=win)
    else:
        cu, max_len = cu_seqlens_from_doc_ids(doc_ids)
        y = varlen_func(qt.reshape(B * T, H, Dq), kt.reshape(B * T, k.shape[1], Dq), vt.reshape(B * T, v.shape[1], Dv),
                        cu, cu, max_len, max_len, softmax_scale=scale, causal=True, window_size=win)
        y = y.view(B, T, H, Dv)
    return y.transpose(1, 2)
