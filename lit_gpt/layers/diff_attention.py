"""Differential attention (SPEC §5) as self-attention and as YOCO cross-attention.

Heads are taken in pairs (2h, 2h+1) for q, k and v (KV groups likewise). With r = n_head / n_query_groups, query
pair h uses KV pair g = h // r: A1 = softmax(s·q_{2h} k_{2g}ᵀ), A2 = softmax(s·q_{2h+1} k_{2g+1}ᵀ) under the same
mask, and the pair outputs [A1 v_{2g}, A1 v_{2g+1}] − λ·[A2 v_{2g}, A2 v_{2g+1}] (width 2·head_dim), with
λ = exp(λq1·λk1) − exp(λq2·λk2) + λ_init and λ_init = 0.8 − 0.6·exp(−0.3·layer_index); then RMSNorm over
2·head_dim (with weight), × (1 − λ_init). The pair outputs laid side by side are n_head × head_dim again.

Both maps come out of one call of the shared attention dispatch: the even queries/keys are stacked before the
odd ones (so the GQA grouping stays consistent) and the value is the pair's concatenated [v_even, v_odd].
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lit_gpt.config import Config, LayerSpec
from lit_gpt.layers.attention import CausalSelfAttention, CrossAttention, attention
from lit_gpt.layers.norms import RMSNorm

__all__ = ["DiffSelfAttention", "DiffCrossAttention", "lambda_init", "differential_attention"]


def lambda_init(layer_index: int) -> float:
    return 0.8 - 0.6 * math.exp(-0.3 * layer_index)


def differential_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lam: torch.Tensor, *, scale: float,
                           **mask) -> torch.Tensor:
    """q: [B, H, Tq, D]; k, v: [B, G, Tk, D]; lam: scalar. Returns [B, H/2, Tq, 2D] (before the sub-norm)."""
    q2 = torch.cat((q[:, 0::2], q[:, 1::2]), dim=1)  # [even heads | odd heads]
    k2 = torch.cat((k[:, 0::2], k[:, 1::2]), dim=1)
    v_pair = torch.cat((v[:, 0::2], v[:, 1::2]), dim=-1)  # [B, G/2, Tk, 2D]
    o = attention(q2, k2, torch.cat((v_pair, v_pair), dim=1), scale=scale, **mask)  # [B, H, Tq, 2D]
    o1, o2 = o.chunk(2, dim=1)
    return o1 - lam.to(o.dtype) * o2


class _Differential(nn.Module):
    """λ parameters, the sub-norm and the combination shared by the self and cross variants."""

    def _init_differential(self, config: Config, layer: LayerSpec) -> None:
        """Called right after the base attention ``__init__``: checks the head counts, adds the λs and sub-norm."""
        if config.n_head % 2 or config.n_query_groups % 2:
            raise ValueError(f"differential attention needs an even n_head ({config.n_head}) and n_query_groups "
                             f"({config.n_query_groups})")
        hd = config.head_size
        self.lambda_init = lambda_init(layer.index)
        self.lambda_q1 = nn.Parameter(torch.empty(hd))
        self.lambda_k1 = nn.Parameter(torch.empty(hd))
        self.lambda_q2 = nn.Parameter(torch.empty(hd))
        self.lambda_k2 = nn.Parameter(torch.empty(hd))
        self.sub_norm = RMSNorm(2 * hd, eps=1e-5)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for p in (self.lambda_q1, self.lambda_k1, self.lambda_q2, self.lambda_k2):
            nn.init.normal_(p, mean=0.0, std=0.1)
        self.sub_norm.reset_parameters()

    def lam(self) -> torch.Tensor:
        l1 = torch.exp(torch.dot(self.lambda_q1.float(), self.lambda_k1.float()))
        l2 = torch.exp(torch.dot(self.lambda_q2.float(), self.lambda_k2.float()))
        return l1 - l2 + self.lambda_init

    def core(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **mask) -> torch.Tensor:
        o = differential_attention(q, k, v, self.lam(), scale=self.config.attention_scale, **mask)
        return self.sub_norm(o) * (1.0 - self.lambda_init)  # [B, H/2, T, 2D]: pairs side by side = H x D


class DiffSelfAttention(_Differential, CausalSelfAttention):
    def __init__(self, config: Config, layer: LayerSpec):
        CausalSelfAttention.__init__(self, config, layer)
        self._init_differential(config, layer)
        self.reset_parameters()


class DiffCrossAttention(_Differential, CrossAttention):
    def __init__(self, config: Config, layer: LayerSpec):
        CrossAttention.__init__(self, config, layer)
        self._init_differential(config, layer)
        self.reset_parameters()
