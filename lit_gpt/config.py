"""Model configuration and the architecture registry.

An architecture is data: an aspect ratio, a layer rule and a few flags. ``Config.from_name("sambay_d16")``
turns that data into the concrete sizes of one model, and ``Config.layer_plan()`` says which mixer every
layer uses. Nothing here imports torch, so the planner and the plots can use it anywhere.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal, Optional

Parameterization = Literal["sp", "mup", "mup++"]
MixerKind = Literal["attention", "mamba", "cross_attention", "gmu"]
LAYER_RULES = ("attention", "transformerls", "samba", "sambay", "sambayoco", "mambay", "mamba")
YOCO_RULES = ("sambay", "sambayoco", "mambay")


class ConfigError(ValueError):
    """A configuration that cannot be built; the message names the rule and the fix."""


@dataclass(frozen=True)
class LayerSpec:
    """What one block does. ``window`` is None for full causal attention."""

    index: int
    mixer: MixerKind
    window: Optional[int] = None
    diff_attn: bool = False
    rope: bool = False
    produces_kv: bool = False  # YOCO: the one full-attention layer whose K, V every cross layer reuses
    saves_memory: bool = False  # YOCO: the Mamba layer whose scan output feeds the GMU layers

    def describe(self) -> str:
        name = {"attention": "attn", "mamba": "mamba", "cross_attention": "cross-attn", "gmu": "gmu"}[self.mixer]
        if self.diff_attn:
            name = "diff-" + name
        if self.window is not None:
            name += f"(swa {self.window})"
        if self.produces_kv:
            name += "[shared kv]"
        if self.saves_memory:
            name += "[memory]"
        return name


@dataclass(frozen=True)
class ArchSpec:
    """Registry entry: everything that distinguishes one architecture from another."""

    ar: int
    layer_rule: str
    window: Optional[int] = None
    rope: bool = False
    diff_attn: bool = False
    head_size: int = 128
    heads_per_depth: Optional[float] = None  # None: n_head = depth; else n_head = n_embd / head_size
    kv_ratio: int = 4  # n_head / n_query_groups
    norm: str = "rmsnorm"
    attn_bias: bool = False
    tied_embeddings: bool = False
    vocab_size: int = 32000
    note: str = ""

    def scaled_head_size(self, ar: Optional[int]) -> int:
        """The head size at aspect ratio ``ar`` (None: the SPEC's): reduced-width studies shrink heads with the
        width, to an even size (Transformer++ at its own ar keeps head = width / n_head, set by the caller)."""
        return self.head_size if ar is None else max(2, 2 * round(self.head_size * ar / self.ar / 2))


ARCHS: dict[str, ArchSpec] = {
    "transformer": ArchSpec(128, "attention", rope=True, note="Transformer++: full causal attention, RoPE"),
    "transformerls": ArchSpec(128, "transformerls", window=128, rope=True,
                              note="SWA 128 with a full-attention layer every 4th"),
    "samba": ArchSpec(122, "samba", window=2048, rope=True, note="Mamba / SWA 2048 alternating"),
    "sambay": ArchSpec(124, "sambay", window=128, note="YOCO: Samba self-decoder, GMU + cross-attention decoder"),
    "sambayda": ArchSpec(124, "sambay", window=128, diff_attn=True, note="SambaY with differential attention"),
    "sambayoco": ArchSpec(126, "sambayoco", window=128, note="YOCO with an all cross-attention decoder"),
    "mambay": ArchSpec(120, "mambay", note="YOCO: Mamba self-decoder, GMU + cross-attention decoder"),
    "mamba": ArchSpec(112, "mamba", note="Mamba-1 + MLP in every layer"),
    "phi4miniflash": ArchSpec(80, "sambay", window=512, diff_attn=True, head_size=64, heads_per_depth=1.0,
                              kv_ratio=2, norm="layernorm", attn_bias=True, tied_embeddings=True,
                              vocab_size=200064, note="Phi4-mini-Flash: SambaY-DA, LayerNorm, biases, tied"),
}

_NAME = re.compile(r"^(?P<arch>[a-z0-9]+)_d(?P<depth>\d+)$")


def _round_up(n: int, multiple: int) -> int:
    return n if n % multiple == 0 else n + multiple - n % multiple


def default_query_groups(n_head: int, kv_ratio: int = 4, paired: bool = False) -> int:
    """n_head / kv_ratio when it divides, else the largest divisor of n_head not above max(1, n_head / kv_ratio).

    ``paired`` (differential attention takes groups in pairs) doubles an odd group count when the heads allow it.
    """
    if n_head % kv_ratio == 0:
        groups = n_head // kv_ratio
    else:
        limit = max(1, n_head // kv_ratio)
        groups = max(g for g in range(1, limit + 1) if n_head % g == 0)
    if paired and groups % 2 and n_head % (2 * groups) == 0:
        groups *= 2
    return groups


@dataclass
class Config:
    name: str = "transformer_d8"
    arch: str = "transformer"
    layer_rule: str = "attention"
    n_layer: int = 8
    n_embd: int = 1024
    n_head: int = 8
    head_size: int = 128
    n_query_groups: int = 2
    intermediate_size: int = 4096
    mlp: bool = True
    vocab_size: int = 32000
    padding_multiple: int = 64
    padded_vocab_size: Optional[int] = None
    block_size: int = 4096
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    attn_bias: bool = False
    rope: bool = False
    rope_base: int = 10000
    tied_embeddings: bool = False
    sliding_window: Optional[int] = None
    diff_attn: bool = False
    mamba_d_state: int = 16
    mamba_d_conv: int = 4
    mamba_expand: int = 2
    # parameterization (model-side multipliers and init); the optimizer side lives in scaling.py
    parameterization: str = "sp"
    base_depth: int = 16
    base_head_size: int = 128
    w_init: float = 1.0
    # variable-length training: documents separated by eos_id never see each other
    varlen: bool = False
    eos_id: Optional[int] = None

    def __post_init__(self) -> None:
        if self.padded_vocab_size is None:
            self.padded_vocab_size = _round_up(self.vocab_size, self.padding_multiple)
        self.validate()

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_name(cls, name: str, ar: Optional[int] = None, **overrides: Any) -> "Config":
        """``<arch>_d<depth>`` for any registered arch and depth >= 1; ``ar`` shrinks the width for small studies."""
        match = _NAME.match(name)
        if match is None or match["arch"] not in ARCHS:
            raise ConfigError(f"unknown model name {name!r}: use <arch>_d<depth> with arch one of {', '.join(ARCHS)}")
        arch_name, depth = match["arch"], int(match["depth"])
        return cls.from_arch(arch_name, depth, ar=ar, **overrides)

    @classmethod
    def from_arch(cls, arch_name: str, depth: int, ar: Optional[int] = None, **overrides: Any) -> "Config":
        if arch_name not in ARCHS:
            raise ConfigError(f"unknown architecture {arch_name!r}: choose one of {', '.join(ARCHS)}")
        if depth < 1:
            raise ConfigError(f"depth must be >= 1, got {depth}")
        spec = ARCHS[arch_name]
        ar_used = spec.ar if ar is None else int(ar)
        n_embd = ar_used * depth
        head_size = overrides.pop("head_size", None)
        if head_size is None:
            head_size = spec.scaled_head_size(ar)
        if spec.heads_per_depth is None:
            n_head = depth
        else:
            if n_embd % head_size:
                raise ConfigError(f"{arch_name}_d{depth}: width {n_embd} is not a multiple of head size {head_size}; "
                                  f"choose a depth that makes ar*depth divisible by {head_size}")
            n_head = n_embd // head_size
        if spec.layer_rule == "attention" and ar is None:
            head_size = n_embd // n_head
        n_query_groups = default_query_groups(n_head, spec.kv_ratio, paired=spec.diff_attn)
        values: dict[str, Any] = dict(
            name=f"{arch_name}_d{depth}", arch=arch_name, layer_rule=spec.layer_rule, n_layer=depth,
            n_embd=n_embd, n_head=n_head, head_size=head_size, n_query_groups=n_query_groups,
            intermediate_size=4 * n_embd, vocab_size=spec.vocab_size, norm=spec.norm, attn_bias=spec.attn_bias,
            rope=spec.rope, tied_embeddings=spec.tied_embeddings, sliding_window=spec.window,
            diff_attn=spec.diff_attn,
        )
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown Config field(s) {sorted(unknown)}; valid: {sorted(f.name for f in fields(cls))}")
        values.update(overrides)
        if "vocab_size" in overrides and "padded_vocab_size" not in overrides:
            values["padded_vocab_size"] = None
        return cls(**values)

    def replace(self, **changes: Any) -> "Config":
        if "vocab_size" in changes and "padded_vocab_size" not in changes:
            changes["padded_vocab_size"] = None
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    # ---------------------------------------------------------------- derived sizes
    @property
    def d_inner(self) -> int:
        return self.mamba_expand * self.n_embd

    @property
    def dt_rank(self) -> int:
        return math.ceil(self.n_embd / 16)

    @property
    def attn_dim(self) -> int:
        return self.n_head * self.head_size

    @property
    def kv_dim(self) -> int:
        return self.n_query_groups * self.head_size

    @property
    def is_yoco(self) -> bool:
        return self.layer_rule in YOCO_RULES

    # ---------------------------------------------------------------- μP multipliers (model side)
    @property
    def residual_multiplier(self) -> float:
        """μP++ scales every branch output by 1/sqrt(2L) before the residual add."""
        return 1.0 / math.sqrt(2 * self.n_layer) if self.parameterization == "mup++" else 1.0

    @property
    def logit_multiplier(self) -> float:
        """μP and μP++ scale the final-norm output by d0/L before the lm_head."""
        return self.base_depth / self.n_layer if self.parameterization in ("mup", "mup++") else 1.0

    @property
    def attention_scale(self) -> float:
        if self.parameterization in ("mup", "mup++"):
            return math.sqrt(self.base_head_size) / self.head_size
        return 1.0 / math.sqrt(self.head_size)

    # ---------------------------------------------------------------- validation and layer plan
    def validate(self) -> None:
        if self.parameterization not in ("sp", "mup", "mup++"):
            raise ConfigError(f"parameterization {self.parameterization!r} must be one of sp, mup, mup++")
        if self.layer_rule not in LAYER_RULES:
            raise ConfigError(f"layer_rule {self.layer_rule!r} must be one of {', '.join(LAYER_RULES)}")
        if self.n_layer < 1:
            raise ConfigError(f"n_layer must be >= 1, got {self.n_layer}")
        if self.is_yoco and self.n_layer % 4:
            raise ConfigError(f"{self.name}: YOCO architectures ({self.layer_rule}) need a depth divisible by 4, "
                              f"got {self.n_layer}; pick e.g. {_round_up(self.n_layer, 4)}")
        if self.n_head % self.n_query_groups:
            raise ConfigError(f"{self.name}: n_head {self.n_head} is not divisible by n_query_groups "
                              f"{self.n_query_groups}; choose a group count that divides the heads")
        if self.diff_attn and (self.n_head % 2 or self.n_query_groups % 2):
            raise ConfigError(f"{self.name}: differential attention pairs heads, so n_head ({self.n_head}) and "
                              f"n_query_groups ({self.n_query_groups}) must both be even")
        if self.norm not in ("rmsnorm", "layernorm"):
            raise ConfigError(f"norm {self.norm!r} must be rmsnorm or layernorm")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ConfigError(f"sliding_window must be >= 1 or None, got {self.sliding_window}")
        if self.varlen and self.eos_id is None:
            raise ConfigError("varlen=True needs eos_id (the tokenizer's end-of-document id)")

    def layer_plan(self) -> list[LayerSpec]:
        L, rule, w = self.n_layer, self.layer_rule, self.sliding_window
        attn = dict(diff_attn=self.diff_attn, rope=self.rope)

        def self_decoder(i: int) -> LayerSpec:
            if rule == "mambay" or i % 2 == 0:
                return LayerSpec(i, "mamba")
            return LayerSpec(i, "attention", window=w, **attn)

        plan: list[LayerSpec] = []
        for i in range(L):
            if rule == "attention":
                plan.append(LayerSpec(i, "attention", **attn))
            elif rule == "transformerls":
                plan.append(LayerSpec(i, "attention", window=None if i % 4 == 3 else w, **attn))
            elif rule == "samba":
                plan.append(LayerSpec(i, "mamba") if i % 2 == 0 else LayerSpec(i, "attention", window=w, **attn))
            elif rule == "mamba":
                plan.append(LayerSpec(i, "mamba"))
            else:  # YOCO family
                half = L // 2
                if i < half:
                    plan.append(self_decoder(i))
                elif i == half:
                    plan.append(LayerSpec(i, "mamba", saves_memory=True))
                elif i == half + 1:
                    plan.append(LayerSpec(i, "attention", produces_kv=True, **attn))
                elif rule != "sambayoco" and i % 2 == 0:
                    plan.append(LayerSpec(i, "gmu"))
                else:
                    plan.append(LayerSpec(i, "cross_attention", **attn))
        return plan

    def describe_layers(self) -> list[str]:
        return [f"{s.index}: {s.describe()}" for s in self.layer_plan()]


def list_model_names() -> str:
    return ", ".join(f"{a}_d<N>" for a in ARCHS)
