"""The GPT model: an embedding, a stack of pre-norm blocks whose mixers follow ``config.layer_plan()``, a head.

Plain ``nn.Module``: it knows nothing of training, distribution or precision. μP++ shows up here only as the
multipliers the config derives (residual branch, logits, attention scale) and the initialization rules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from lit_gpt.config import Config, LayerSpec
from lit_gpt.layers.attention import flex_masks
from lit_gpt.layers.context import SeqContext, document_ids
from lit_gpt.layers.mlp import SwiGLU
from lit_gpt.layers.norms import build_norm
from lit_gpt.layers.rotary import rope_cache
from lit_gpt.layers.state import DecodeState

__all__ = ["GPT", "Block", "Config", "ModelOutput", "build_mixer"]

# Output projections of residual branches (GPT-2 style 1/sqrt(2L) init under SP, or μP with tied embeddings).
OUTPUT_PROJECTIONS = ("mixer.proj", "mixer.out_proj", "mlp.proj")


@dataclass
class ModelOutput:
    logits: Optional[torch.Tensor]
    hidden: Optional[torch.Tensor] = None  # final-norm output times the logit multiplier (input of the head)
    loss: Optional[torch.Tensor] = None  # mean next-token loss when targets were given


def build_mixer(config: Config, layer: LayerSpec) -> nn.Module:
    """The one place that maps a layer's mixer kind to its module."""
    if layer.mixer == "mamba":
        from lit_gpt.layers.mamba import Mamba

        return Mamba(config, layer)
    if layer.mixer == "gmu":
        from lit_gpt.layers.gmu import GatedMemoryUnit

        return GatedMemoryUnit(config, layer)
    if layer.diff_attn:
        from lit_gpt.layers.diff_attention import DiffCrossAttention, DiffSelfAttention

        return DiffCrossAttention(config, layer) if layer.mixer == "cross_attention" else DiffSelfAttention(config, layer)
    from lit_gpt.layers.attention import CausalSelfAttention, CrossAttention

    return CrossAttention(config, layer) if layer.mixer == "cross_attention" else CausalSelfAttention(config, layer)


class Block(nn.Module):
    def __init__(self, config: Config, layer: LayerSpec):
        super().__init__()
        self.layer = layer
        self.residual_multiplier = config.residual_multiplier
        self.norm_1 = build_norm(config.norm, config.n_embd, config.norm_eps)
        self.mixer = build_mixer(config, layer)
        if config.mlp:
            self.norm_2 = build_norm(config.norm, config.n_embd, config.norm_eps)
            self.mlp = SwiGLU(config.n_embd, config.intermediate_size)
        else:
            self.norm_2 = self.mlp = None

    def forward(self, x: torch.Tensor, ctx: SeqContext) -> torch.Tensor:
        x = x + self.mixer(self.norm_1(x), ctx) * self.residual_multiplier
        if self.mlp is not None:
            x = x + self.mlp(self.norm_2(x)) * self.residual_multiplier
        return x


class GPT(nn.Module):
    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.padded_vocab_size, config.n_embd),
            h=nn.ModuleList(Block(config, layer) for layer in config.layer_plan()),
            ln_f=build_norm(config.norm, config.n_embd, config.norm_eps),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tied_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
        if not any(p.is_meta for p in self.parameters()):
            self.reset_parameters()

    # ------------------------------------------------------------------ forward
    def forward(self, idx: torch.Tensor, *, targets: Optional[torch.Tensor] = None, label_smoothing: float = 0.0,
                loss_reduction: str = "mean", state: Optional[DecodeState] = None, doc_ids: Optional[torch.Tensor] = None,
                return_logits: bool = True) -> ModelOutput:
        """idx: [B, T] token ids. With ``state`` the call continues that sequence (decoding).

        With ``targets`` the loss is computed inside forward (so sharded wrappers have the head's weight
        gathered) through the chunked head, and logits are not materialized.
        """
        B, T = idx.shape
        cfg = self.config
        if doc_ids is None and cfg.varlen and state is None:
            doc_ids = document_ids(idx, cfg.eos_id)
        offset = 0 if state is None else state.pos
        rope = None
        if cfg.rope:
            rope = rope_cache(cfg.head_size, torch.arange(offset, offset + T, device=idx.device), cfg.rope_base)
        ctx = SeqContext(rope=rope, doc_ids=doc_ids, state=state,
                         flex_masks=flex_masks(cfg, T, doc_ids, idx.device) if state is None else {})
        x = self.transformer.wte(idx)
        if torch.is_autocast_enabled(x.device.type) and x.dtype != torch.float32:
            # SPEC: the residual stream stays fp32 under mixed precision, also when FSDP hands the Blocks
            # compute-dtype (bf16) weights, which would otherwise make the embedding output bf16
            x = x.float()
        for block in self.transformer.h:
            x = block(x, ctx)
        x = self.transformer.ln_f(x)
        if cfg.logit_multiplier != 1.0:
            x = x * cfg.logit_multiplier
        if state is not None:
            state.pos += T
        if targets is not None:
            from lit_gpt.kernels.cross_entropy import linear_cross_entropy

            loss = linear_cross_entropy(x, self.lm_head.weight, targets, label_smoothing=label_smoothing,
                                        reduction=loss_reduction)
            return ModelOutput(logits=None, hidden=x, loss=loss)
        logits = self.lm_head(x) if return_logits else None
        return ModelOutput(logits=logits, hidden=x)

    def init_state(self, batch_size: int) -> DecodeState:
        return DecodeState(self.config.n_layer, batch_size)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor, *, label_smoothing: float = 0.0,
             doc_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Mean next-token cross-entropy (see ``forward``)."""
        return self(idx, targets=targets, label_smoothing=label_smoothing, doc_ids=doc_ids).loss

    # ------------------------------------------------------------------ initialization
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """SPEC §3 initialization for the config's parameterization (deterministic under a seed)."""
        cfg = self.config
        sp = cfg.parameterization == "sp"
        out_scale = 1.0 / math.sqrt(2 * cfg.n_layer)
        for name, module in self.named_modules():
            if hasattr(module, "reset_parameters") and module is not self and not isinstance(module, nn.Linear):
                module.reset_parameters()  # norms, convs, embeddings, and mixer-specific inits (Mamba's dt, A, D)
        for name, module in self.named_modules():
            if not isinstance(module, nn.Linear) or name == "lm_head":
                continue
            if name.endswith("dt_proj"):
                if sp:  # ArchScale quirk: SP's N(0, 0.02) re-init reaches Mamba's dt_proj weight too
                    nn.init.normal_(module.weight, std=0.02 * cfg.w_init)
                continue  # μP/μP++ keep Mamba's own dt_proj init and its dt bias
            if sp:
                nn.init.normal_(module.weight, std=0.02 * cfg.w_init)
            else:
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))
                module.weight.mul_(cfg.w_init)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
            if name.endswith(OUTPUT_PROJECTIONS) and (sp or cfg.tied_embeddings):
                module.weight.mul_(out_scale)
        nn.init.normal_(self.transformer.wte.weight, std=0.02 if cfg.tied_embeddings else 1e-4)
        if not cfg.tied_embeddings:
            if sp:
                nn.init.normal_(self.lm_head.weight, std=0.02)
            else:
                nn.init.zeros_(self.lm_head.weight)  # μP zero readout

    def num_parameters(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wte.weight.numel()
            if not self.config.tied_embeddings:
                n -= self.lm_head.weight.numel()
        return n
