"""Scaling rules: base hyperparameters, μP++ transfer to a target run, parameter counts and FLOPs.

Everything researchers read as a number (learning rates, token budgets, steps, FLOPs) is computed here and
nowhere else, so the planner, the training log and the plots cannot disagree. ``transfer`` is a pure
function of (base hyperparameters, model config, launch shape); only ``param_groups`` touches torch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Optional

from lit_gpt.config import ARCHS, Config, default_query_groups

if TYPE_CHECKING:  # pragma: no cover
    import torch

SCHEDULES = ("linear", "cosine", "wsd")
PEAK_FLOPS = {"h100": 989e12, "h200": 989e12, "a100": 312e12}


@dataclass
class BaseHyperparameters:
    """Hyperparameters tuned once at base depth ``d0``; every target run derives from them."""

    d0: int = 16
    eta0: float = 4e-4
    b0: int = 2**21
    t0: float = 1e11
    hd0: int = 128
    w_init0: float = 1.0
    n0_mult: float = 237568.0
    weight_decay0: float = 0.1
    eps0: float = 1e-8
    min_lr0: float = 0.0
    warmup_tokens0: float = 1e9
    beta1_0: float = 0.9
    beta2_0: float = 0.95
    # Newer ArchScale spellings; when given they win over the *0 names above.
    warmup_tokens: Optional[float] = None
    weight_decay: Optional[float] = None
    eps: Optional[float] = None
    min_lr_mult: Optional[float] = None
    beta1: Optional[float] = None
    beta2: Optional[float] = None

    def __post_init__(self) -> None:
        for alias, canonical in (("warmup_tokens", "warmup_tokens0"), ("weight_decay", "weight_decay0"),
                                 ("eps", "eps0"), ("min_lr_mult", "min_lr0"), ("beta1", "beta1_0"),
                                 ("beta2", "beta2_0")):
            value = getattr(self, alias)
            if value is not None:
                setattr(self, canonical, value)
                setattr(self, alias, None)
        self.b0 = int(self.b0)
        if self.d0 < 1 or self.b0 < 1 or self.eta0 <= 0:
            raise ValueError(f"base hyperparameters need d0 >= 1, b0 >= 1, eta0 > 0; got d0={self.d0}, "
                             f"b0={self.b0}, eta0={self.eta0}")

    @property
    def n0(self) -> float:
        """Base non-embedding parameter count: n0_mult · d0³."""
        return self.n0_mult * self.d0**3


@dataclass
class Launch:
    """The shape of one launch: how many processes and how much each sees per micro step."""

    nodes: int = 1
    devices: int = 1
    micro_batch: int = 1
    seq_len: int = 4096

    @property
    def world_size(self) -> int:
        return self.nodes * self.devices

    @property
    def tokens_per_micro_step(self) -> int:
        return self.world_size * self.micro_batch * self.seq_len


# ------------------------------------------------------------------------------------------- counting
@dataclass(frozen=True)
class ParamCount:
    total: int
    embedding: int  # token embedding (shared with the head when tied)
    lm_head: int  # separate head weights (0 when tied)
    non_embedding: int
    matmul: int  # weights used in matrix products per token, lm_head included (tied or not)


def _norm_params(config: Config, dim: int) -> int:
    return 2 * dim if config.norm == "layernorm" else dim


def layer_param_counts(config: Config, spec) -> tuple[int, int]:
    """(all parameters, matmul parameters) of one block, from sizes alone."""
    w, bias = config.n_embd, config.attn_bias
    total = _norm_params(config, w) * 2
    matmul = 0
    if spec.mixer in ("attention", "cross_attention"):
        q_out = config.attn_dim + (2 * config.kv_dim if spec.mixer == "attention" else 0)
        mixer_mm = w * q_out + config.attn_dim * w
        total += mixer_mm + (q_out + w if bias else 0)
        matmul += mixer_mm
        if spec.diff_attn:
            total += 4 * config.head_size + 2 * config.head_size  # λ vectors + sub-norm over 2·head_size
    elif spec.mixer == "mamba":
        d, n, r = config.d_inner, config.mamba_d_state, config.dt_rank
        mixer_mm = w * 2 * d + d * (r + 2 * n) + r * d + d * w
        total += mixer_mm + d * config.mamba_d_conv + d + d + d * n + d
        matmul += mixer_mm
    elif spec.mixer == "gmu":
        mixer_mm = 2 * w * config.d_inner
        total += mixer_mm
        matmul += mixer_mm
    if config.mlp:
        mlp_mm = w * 2 * config.intermediate_size + config.intermediate_size * w
        total += mlp_mm
        matmul += mlp_mm
    else:
        total -= _norm_params(config, w)  # no MLP, no second norm
    return total, matmul


def count_parameters(config: Config) -> ParamCount:
    """Exact parameter count of ``GPT(config)`` computed from the config (a test checks it against the model)."""
    blocks_total = blocks_mm = 0
    for spec in config.layer_plan():
        t, m = layer_param_counts(config, spec)
        blocks_total += t
        blocks_mm += m
    embedding = config.padded_vocab_size * config.n_embd
    lm_head = 0 if config.tied_embeddings else embedding
    final_norm = _norm_params(config, config.n_embd)
    non_embedding = blocks_total + final_norm
    return ParamCount(total=non_embedding + embedding + lm_head, embedding=embedding, lm_head=lm_head,
                      non_embedding=non_embedding, matmul=blocks_mm + embedding)


# SPEC §5's table: N ≈ (a·ar² + b·ar)·L³, the leading term only, kept for reference (the planner prints it next to
# the exact count). It writes Mamba as 6w² (x_proj/dt_proj add w²/8 each) outside the all-Mamba row, gives
# phi4miniflash SambaY's row, and cannot hold YOCO's extra Mamba + full-attention layers (O(L²)): up to 8% off
# at d4, 2.4% at d16 (docs/scaling.md). The budget uses the exact count.
SPEC_LEADING_MULT = {
    "transformer": (14.5, 0.0), "transformerls": (14.5, 0.0), "samba": (15.0, 160.0), "sambay": (14.5, 144.0),
    "sambayda": (14.5, 144.0), "sambayoco": (13.5, 208.0), "mambay": (16.0, 64.0), "mamba": (18.25, 0.0),
    "phi4miniflash": (14.5, 144.0),
}


def spec_leading_term(arch: str, depth: int, ar: Optional[int] = None) -> float:
    """SPEC §5's shortcut mult·L³ (the leading term of ``closed_form_non_embedding``)."""
    a, b = SPEC_LEADING_MULT[arch]
    ar = ARCHS[arch].ar if ar is None else ar
    return (a * ar**2 + b * ar) * depth**3


def layer_counts(layer_rule: str, depth: int) -> dict[str, int]:
    """How many layers of each mixer kind an architecture's layout has at ``depth`` (SPEC §5), in closed form."""
    L, half = depth, depth // 2
    if layer_rule == "attention" or layer_rule == "transformerls":
        return {"attention": L}
    if layer_rule == "samba":
        return {"mamba": (L + 1) // 2, "attention": L // 2}
    if layer_rule == "mamba":
        return {"mamba": L}
    # YOCO: self-decoder (L/2 layers), one memory-saving Mamba, one KV-producing attention, cross-decoder.
    cross_layers = L - half - 2
    self_mamba = half if layer_rule == "mambay" else (half + 1) // 2
    counts = {"mamba": self_mamba + 1, "attention": half - self_mamba + 1}
    if layer_rule == "sambayoco":
        counts["cross_attention"] = cross_layers
    else:  # GMU on even indices half+2 … L−1, cross-attention on odd ones
        first = half + 2
        counts["gmu"] = (L - first + 1 - first % 2) // 2 if cross_layers > 0 else 0
        counts["cross_attention"] = cross_layers - counts["gmu"]
    return counts


def closed_form_non_embedding(arch: str, depth: int, ar: Optional[int] = None) -> float:
    """Non-embedding parameters as a polynomial in depth, derived from SPEC §5's layer rules and sizes.

    Equal to ``count_parameters`` whenever the width is a multiple of 16 (Mamba's dt_rank = ⌈w/16⌉ is then w/16);
    otherwise off only by that rounding. With w = ar·L, A = attention width, K = KV width, ν = 1 (RMSNorm) or
    2 (LayerNorm) per norm:
    every layer 12w² (SwiGLU MLP) + 2νw; attention 2wA + 2wK (+ biases A + 2K + w); cross-attention 2wA
    (+ A + w); Mamba 6w² + 4w·(w/16) + 64w + 46w (in/out proj, x_proj + dt_proj, conv 4+1, dt bias, A_log 16,
    D per channel); GMU 4w²; differential attention 6·head λ/norm parameters per attention layer; final norm νw.
    """
    spec = ARCHS[arch]
    L = depth
    ar = spec.ar if ar is None else ar
    w = ar * L
    head = spec.scaled_head_size(None if ar == spec.ar else ar)
    n_head = L if spec.heads_per_depth is None else w // head
    if spec.layer_rule == "attention" and ar == spec.ar:
        head = w / n_head
    A, K = n_head * head, default_query_groups(int(n_head), spec.kv_ratio, paired=spec.diff_attn) * head
    nu = 2 if spec.norm == "layernorm" else 1
    bias = 1 if spec.attn_bias else 0
    diff = 6 * head if spec.diff_attn else 0
    per_kind = {
        "attention": 2 * w * A + 2 * w * K + bias * (A + 2 * K + w) + diff,
        "cross_attention": 2 * w * A + bias * (A + w) + diff,
        "mamba": 6 * w**2 + 4 * w * (w / 16) + 2 * w * 32 + 46 * w,
        "gmu": 4 * w**2,
    }
    counts = layer_counts(spec.layer_rule, L)
    return L * (12 * w**2 + 2 * nu * w) + sum(per_kind[k] * n for k, n in counts.items()) + nu * w


def average_keys_per_query(seq_len: int, window: Optional[int]) -> float:
    """Mean number of keys a causal query attends to, with an optional sliding window."""
    if window is None or window >= seq_len:
        return (seq_len + 1) / 2
    return (window * (window + 1) / 2 + (seq_len - window) * window) / seq_len


def flops_per_token(config: Config, seq_len: Optional[int] = None) -> float:
    """Training FLOPs per token: 6·N_matmul + attention (12·heads·head_dim·c̄) + selective scan."""
    seq_len = seq_len or config.block_size
    flops = 6.0 * count_parameters(config).matmul
    for spec in config.layer_plan():
        if spec.mixer in ("attention", "cross_attention"):
            flops += 12.0 * config.attn_dim * average_keys_per_query(seq_len, spec.window)
        elif spec.mixer == "mamba":
            flops += 3 * 9.0 * config.d_inner * config.mamba_d_state
    return flops


# ------------------------------------------------------------------------------------------- transfer
@dataclass
class GroupRule:
    lr_mult: float
    weight_decay: float
    rule: str


@dataclass
class Plan:
    run_name: str
    parameterization: str
    depth: int
    n_params: int
    n_params_non_embedding: int
    train_tokens: int
    global_batch_tokens: int
    micro_batch_size: int
    seq_len: int
    world_size: int
    nodes: int
    grad_accum_steps: int
    global_batch_sequences_per_node: int
    max_iters: int
    max_steps: int
    warmup_tokens: float
    warmup_iters: int
    warmup_steps: int
    lr: float
    min_lr: float
    schedule: str
    groups: dict[str, GroupRule]
    betas: tuple[float, float]
    eps: float
    grad_clip: float
    flops_per_token: float
    total_flops: float
    rules: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["lr_mult"] = {k: g.lr_mult for k, g in self.groups.items()}
        data["weight_decay"] = {k: g.weight_decay for k, g in self.groups.items()}
        return data

    def lr_at(self, step: int) -> float:
        """Peak-relative learning rate at optimizer step ``step`` (0-based) times the peak lr."""
        return self.lr * lr_factor(step, self.warmup_steps, self.max_steps, self.min_lr / self.lr if self.lr else 0.0,
                                   self.schedule)


def lr_factor(step: int, warmup_steps: int, max_steps: int, min_ratio: float, schedule: str) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, max_steps - warmup_steps)
    progress = min(1.0, max(0.0, (step - warmup_steps) / decay_steps))
    if schedule == "cosine":
        return min_ratio + 0.5 * (1 + math.cos(math.pi * progress)) * (1 - min_ratio)
    if schedule == "wsd":
        stable = 5 / 7
        if progress <= stable:
            return 1.0
        return 1.0 - (1 - min_ratio) * (progress - stable) / (1 - stable)
    return 1.0 - (1 - min_ratio) * progress  # linear


def transfer(base: BaseHyperparameters, config: Config, launch: Launch, *, max_tokens: Optional[float] = None,
             total_batch_tokens: Optional[int] = None, schedule: str = "linear", run_name: str = "",
             depth_lr_scope: str = "all", grad_clip: float = 1.0, max_steps: Optional[int] = None) -> Plan:
    """Derive the target run's hyperparameters from the base ones (SPEC §2-3)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r} must be one of {', '.join(SCHEDULES)}")
    if depth_lr_scope not in ("all", "hidden"):
        raise ValueError(f"depth_lr_scope {depth_lr_scope!r} must be 'all' (ArchScale) or 'hidden'")
    p, L, d0 = config.parameterization, config.n_layer, base.d0
    rules: dict[str, str] = {}
    micro = launch.tokens_per_micro_step
    target = int(total_batch_tokens) if total_batch_tokens else base.b0
    b = (target // micro) * micro
    if b == 0:
        raise ValueError(f"global batch of {target} tokens is smaller than one micro step "
                         f"({launch.world_size} processes x {launch.micro_batch} x {launch.seq_len} = {micro} tokens); "
                         f"lower --micro_bsz or --ctx_len, or raise --total_bsz / --base_hps.b0")
    rules["global_batch_tokens"] = f"floor({target}/M)*M with M = nodes*devices*mbs*T = {micro}"
    counts = count_parameters(config)
    if max_tokens:
        train_tokens = int(max_tokens)
        rules["train_tokens"] = "--max_tokens"
    else:
        train_tokens = int(base.t0 * counts.non_embedding / base.n0)
        rules["train_tokens"] = f"t0*N/n0 = {base.t0:.3g}*{counts.non_embedding}/{base.n0:.6g}"
    lr = base.eta0 * math.sqrt(b / base.b0)
    rules["lr"] = "eta0*sqrt(b/b0)"
    depth_factor = math.sqrt(d0 / L)
    groups: dict[str, GroupRule]
    if p == "mup++":
        if depth_lr_scope == "all":
            lr *= depth_factor
            rules["lr"] += "*sqrt(d0/L)"
            groups = {"vector": GroupRule(1.0, 0.0, "lr x1, no weight decay"),
                      "matrix": GroupRule(d0 / L, base.weight_decay0, "lr x d0/L")}
        else:
            groups = {"vector": GroupRule(1.0, 0.0, "lr x1, no weight decay"),
                      "matrix": GroupRule(d0 / L * depth_factor, base.weight_decay0, "lr x d0/L x sqrt(d0/L)")}
    elif p == "mup":
        groups = {"vector": GroupRule(1.0, base.weight_decay0, "lr x1"),
                  "matrix": GroupRule(d0 / L, base.weight_decay0, "lr x d0/L")}
    else:
        groups = {"all": GroupRule(1.0, base.weight_decay0, "SP: one group")}
    max_iters = train_tokens // micro
    grad_accum = b // micro
    steps = max(1, max_iters // grad_accum)
    warmup_iters = int(base.warmup_tokens0 // micro)
    warmup_steps = warmup_iters // grad_accum
    if max_steps is not None:
        steps = int(max_steps)
        warmup_steps = min(warmup_steps, steps)
        rules["max_steps"] = "--max_steps"
    fpt = flops_per_token(config, launch.seq_len)
    return Plan(
        run_name=run_name, parameterization=p, depth=L, n_params=counts.total,
        n_params_non_embedding=counts.non_embedding, train_tokens=train_tokens, global_batch_tokens=b,
        micro_batch_size=launch.micro_batch, seq_len=launch.seq_len, world_size=launch.world_size,
        nodes=launch.nodes, grad_accum_steps=grad_accum,
        global_batch_sequences_per_node=b // (launch.seq_len * launch.nodes), max_iters=max_iters,
        max_steps=steps, warmup_tokens=base.warmup_tokens0, warmup_iters=warmup_iters, warmup_steps=warmup_steps,
        lr=lr, min_lr=base.min_lr0 * lr, schedule=schedule, groups=groups, betas=(base.beta1_0, base.beta2_0),
        eps=base.eps0, grad_clip=grad_clip, flops_per_token=fpt, total_flops=fpt * steps * b, rules=rules)


# ------------------------------------------------------------------------------------------- optimizer groups
VECTOR_MARKERS = ("conv1d", "wte", "lm_head", "norm", "ln", "layernorm")


def is_vector_like(name: str) -> bool:
    """SPEC §3: names without 'weight', or naming embeddings, head, norms or conv, are vector-like."""
    return "weight" not in name or any(m in name for m in VECTOR_MARKERS)


def param_groups(model: "torch.nn.Module | Iterable[tuple[str, torch.nn.Parameter]]", plan: Plan) -> list[dict[str, Any]]:
    """Optimizer parameter groups with each group's lr (peak × multiplier) and weight decay.

    ``model`` is a module or its (name, parameter) pairs (callers behind wrappers pass cleaned names).
    """
    pairs = model.named_parameters() if hasattr(model, "named_parameters") else model
    named = [(n, p) for n, p in pairs if p.requires_grad]
    if "all" in plan.groups:
        rule = plan.groups["all"]
        return [{"name": "all", "params": [p for _, p in named], "lr": plan.lr * rule.lr_mult,
                 "lr_mult": rule.lr_mult, "weight_decay": rule.weight_decay}]
    split: dict[str, list] = {"vector": [], "matrix": []}
    for name, param in named:
        split["vector" if is_vector_like(name) else "matrix"].append(param)
    return [{"name": k, "params": v, "lr": plan.lr * plan.groups[k].lr_mult, "lr_mult": plan.groups[k].lr_mult,
             "weight_decay": plan.groups[k].weight_decay} for k, v in split.items() if v]
