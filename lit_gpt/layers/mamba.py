"""Mamba-1 mixer (SPEC §5): in_proj -> depthwise causal conv -> SiLU -> selective scan -> z-gate -> out_proj.

Parameter names matter for the μP groups (``lit_gpt.scaling.is_vector_like``): ``conv1d.*``, ``A_log``, ``D``
and ``dt_proj.bias`` are vector-like; ``in_proj``/``x_proj``/``dt_proj``/``out_proj`` weights are matrices.

Varlen: with ``ctx.doc_ids`` the conv taps never reach a previous document and the scan state is zeroed at
every document start. Decoding: the layer state keeps ``conv`` (the last K - 1 conv inputs, [B, d_inner, K-1])
and ``ssm`` (the scan state, fp32 [B, d_inner, d_state]); one-token calls take the single-step update, longer
calls (prefill, chunks) the full scan from the stored state.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lit_gpt.config import Config, LayerSpec
from lit_gpt.kernels.causal_conv import causal_conv1d
from lit_gpt.layers.context import SeqContext, document_starts

__all__ = ["Mamba"]

DT_MIN, DT_MAX, DT_FLOOR = 1e-3, 1e-1, 1e-4


class Mamba(nn.Module):
    def __init__(self, config: Config, layer: LayerSpec):
        super().__init__()
        self.config, self.layer = config, layer
        w, d = config.n_embd, config.d_inner
        self.d_inner, self.d_state, self.dt_rank = d, config.mamba_d_state, config.dt_rank
        self.d_conv = config.mamba_d_conv
        self.in_proj = nn.Linear(w, 2 * d, bias=False)
        self.conv1d = nn.Conv1d(d, d, self.d_conv, groups=d, padding=self.d_conv - 1, bias=True)
        self.x_proj = nn.Linear(d, self.dt_rank + 2 * self.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, d, bias=True)
        self.A_log = nn.Parameter(torch.empty(d, self.d_state))
        self.D = nn.Parameter(torch.empty(d))
        self.out_proj = nn.Linear(d, w, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Mamba-specific init: dt_proj weight U(±dt_rank^-1/2), dt bias = softplus^-1(dt), A_log = log(1..N), D = 1.

        (GPT.reset_parameters re-initializes the other Linears; under SP also dt_proj's weight.)
        """
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        dev = self.dt_proj.bias.device
        dt = torch.exp(torch.rand(self.d_inner, device=dev) * (math.log(DT_MAX) - math.log(DT_MIN)) + math.log(DT_MIN))
        dt = dt.clamp(min=DT_FLOOR)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_log.device)
        self.A_log.copy_(torch.log(A).expand(self.d_inner, self.d_state))
        nn.init.ones_(self.D)
        self.conv1d.reset_parameters()

    def forward(self, x: torch.Tensor, ctx: SeqContext) -> torch.Tensor:
        from lit_gpt.kernels.selective_scan import selective_scan, selective_scan_step

        B, T, _ = x.shape
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        state = ctx.layer_state(self.layer.index)
        doc_ids = ctx.doc_ids if state is None else None
        if state is None:
            xc = causal_conv1d(xs, self.conv1d.weight, self.conv1d.bias, doc_ids=doc_ids)
        else:
            xc, conv_state = causal_conv1d(xs, self.conv1d.weight, self.conv1d.bias, initial_state=state.get("conv"),
                                           return_final_state=True)
        xc = F.silu(xc)
        dt, Bm, Cm = self.x_proj(xc).split((self.dt_rank, self.d_state, self.d_state), dim=-1)
        dt = F.linear(dt, self.dt_proj.weight)  # dt_proj's bias is fused into the scan
        A = -torch.exp(self.A_log.float())
        if state is None:
            reset = document_starts(doc_ids) if doc_ids is not None else None
            y = selective_scan(xc, dt, A, Bm, Cm, self.D, dt_bias=self.dt_proj.bias, dt_softplus=True, reset=reset)
        elif T == 1 and "ssm" in state:
            y, ssm = selective_scan_step(state["ssm"], xc[:, 0], dt[:, 0], A, Bm[:, 0], Cm[:, 0], self.D,
                                         dt_bias=self.dt_proj.bias, dt_softplus=True)
            y = y.unsqueeze(1)
        else:
            y, ssm = selective_scan(xc, dt, A, Bm, Cm, self.D, dt_bias=self.dt_proj.bias, dt_softplus=True,
                                    initial_state=state.get("ssm"), return_final_state=True)
        if state is not None:
            state["conv"], state["ssm"] = conv_state, ssm
        if self.layer.saves_memory:
            ctx.shared["memory"] = y  # YOCO: the scan output (before the z-gate) feeds the GMU layers
        return self.out_proj(y * F.silu(z))
