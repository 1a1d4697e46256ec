"""The run planner: what a run will be before it runs -- shape, parameters, the transferred hyperparameters with
the rule behind each, tokens, steps, FLOPs, memory per device and wall time.

    python -m lit_gpt.planner --train_model sambay --depth 16 --train_name scaling_mup --devices 8
    python -m lit_gpt.planner --train_model transformer --depth 24 --devices 8 --assumed_mfu 0.35 --json
    python pretrain.py ... --dry_run          # prints the same table (through ``render``) before the plan JSON

Every number comes from ``lit_gpt.scaling`` (``transfer``, ``count_parameters``, ``flops_per_token``); this module
adds only the memory and time model. Nothing here imports torch.

Memory model (bytes per device; n = micro_batch·T tokens per micro step, w = width, a = bytes of the compute
dtype (2 under bf16, 4 under fp32), r = 4 (the residual stream is kept in fp32)):

* states: weights, gradients and AdamW's two moments. ``bf16-mixed``/``32-true``: fp32 weights (these are the
  master copy), fp32 gradients, fp32 moments = 4 + 4 + 8 bytes per parameter; ``bf16-true``: 2 + 2 + 4.
  Under bf16-mixed autocast also keeps a bf16 copy of every weight it casts during a forward (+2 per parameter,
  for the gathered ones only under FSDP).
* sharding over the W processes that shard (W = world, or devices per node for ``hybrid``): FSDP ``full``
  shards weights, gradients and moments (and holds the gathered weights of the root unit -- embedding, final
  norm, head -- plus up to two blocks, compute dtype); ``grad_op`` shards gradients and moments and keeps the
  weights whole; ``none``/DDP/single replicate everything (DDP adds its gradient buckets, one more gradient).
* activations saved for backward, per block, from what our layers keep (see ``block_activation_bytes``):
  eager: attention ≈ n·(r·w + a·(w + (A+2K) + A + K + 2A)) + lse; MLP (SwiGLU, hidden H) ≈ n·(r·w + a·(w + 4H));
  Mamba ≈ n·a·(8·d_inner + dt_rank + 2·d_state) with a fused scan kernel; GMU ≈ 3·n·a·d_inner.
  Compiled Blocks (``Assumptions.compiled``, default on CUDA like pretrain's --compile): inductor's min-cut
  partitioner saves only what backward kernels read -- matmul/attention/scan inputs and the outputs of those
  ops -- and recomputes pointwise chains: per norm the fp32 x·rstd goes (a·w + 4 stay), the mid-block fp32
  residual becomes the out-projection's output (a·w), SwiGLU keeps 3H (silu recomputed), GMU 2·d_inner, Mamba
  drops silu(z), cross-attention its pre-RoPE q. Checked exactly on a compiled CPU Block (tests/test_planner.py).
  With activation checkpointing only each block's input (n·w·r) is kept, plus one block recomputed in backward;
  the peak is the larger of the forward/loss phase (L + 1 inputs, the head's saved tensors and transient) and the
  last Block's backward (L inputs, the arriving gradient, the recomputed Block and its backward transient).
* head: follows the loss ``kernels.cross_entropy.choose_impl`` will pick (``ce_impl``): fused (CUDA) and chunked
  keep the hidden gradient (n·w·r) and the head weight's gradient (V·w, fp32); fused holds one chunk's logits
  and their gradient in the compute dtype (chunks of ≈2^28 logits) plus the head weight's compute-dtype copy;
  chunked one 4096-row chunk of fp32 logits twice; dense (n·V ≤ 2^26) the fp32 log-softmax, and only there is
  the head weight's autocast copy kept among the weight copies.
* transient: the largest one-block gradient buffer in backward (≈ one block's activations in fp32).

The estimate is checked against measured peak tensor memory on CPU in tests/test_planner.py (within 15%). On an
H100 (Transformer++ d16 mbs 2 / d8 mbs 4, ctx 4096, compiled Blocks, fused CE) it gave 28.15 / 9.59 GB against
measured peaks of 28.23 / 10.19 GB (docs/mup.md). GPU runs add the CUDA context and allocator fragmentation (typically 1-3 GB), which is why the default
headroom warning triggers at 90% of the device memory.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import math
import os
import sys
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

from lit_gpt.config import Config
from lit_gpt.scaling import (SPEC_LEADING_MULT, Launch, Plan, count_parameters, flops_per_token,
                             spec_leading_term, transfer)

GB = 1e9
DEVICE_PEAKS = {"h100": 989e12, "h200": 989e12, "h800": 989e12, "a100": 312e12, "l4": 121e12}
DEVICE_MEMORY_GB = {"h100": 80.0, "h200": 141.0, "h800": 80.0, "a100": 80.0, "l4": 24.0}
CE_DENSE_LIMIT = 2**26  # lit_gpt.kernels.cross_entropy.DENSE_LIMIT (kept equal; tests check)
CE_CHUNK = 4096
FUSED_CE_CHUNK_ELEMENTS = 2**28  # lit_gpt.kernels.fused_ops.CHUNK_ELEMENTS (kept equal; tests check)
HEADROOM = 0.9  # warn above this share of device memory


@dataclass
class Assumptions:
    """What the planner assumes about the machine (pretrain resolves the real one at launch)."""

    accelerator: str = "cuda"
    devices: int = 1  # per node
    nodes: int = 1
    strategy: str = "auto"  # auto | single | ddp | fsdp
    sharding: str = "auto"  # auto | full | grad_op | hybrid | none
    precision: Optional[str] = None  # default: bf16-mixed on CUDA, 32-true on CPU
    activation_checkpointing: bool = False
    cpu_offload: bool = False  # FSDP keeps parameters, gradients and AdamW states in host memory (--fsdp_save_mem)
    compiled: Optional[bool] = None  # each Block through torch.compile; default: on CUDA (pretrain's --compile)
    ce_impl: Optional[str] = None  # head cross-entropy path; default: what kernels.cross_entropy.choose_impl picks
    device: str = "h100"
    device_memory_gb: Optional[float] = None  # default: the device's (80 for H100); None on CPU -> no check
    peak_flops: Optional[float] = None  # default: the device's dense bf16 peak
    mfu: float = 0.4

    def resolved(self) -> "Assumptions":
        a = copy.copy(self)
        world = a.devices * a.nodes
        if a.strategy == "auto":
            a.strategy = "single" if world == 1 else ("fsdp" if a.accelerator == "cuda" else "ddp")
        if a.sharding == "auto":
            a.sharding = ("hybrid" if a.nodes > 1 else "full") if a.strategy == "fsdp" else "none"
        if a.precision is None:
            a.precision = "bf16-mixed" if a.accelerator == "cuda" else "32-true"
        if a.compiled is None:
            a.compiled = a.accelerator == "cuda"
        if a.accelerator == "cuda":
            key = a.device.lower()
            if a.device_memory_gb is None:
                a.device_memory_gb = DEVICE_MEMORY_GB.get(key, 80.0)
            if a.peak_flops is None:
                a.peak_flops = DEVICE_PEAKS.get(key, 989e12)
        return a

    @property
    def world(self) -> int:
        return self.devices * self.nodes


# ------------------------------------------------------------------------------------------------ memory
def dtype_bytes(precision: str) -> tuple[int, int, int, int]:
    """(weight, gradient, optimizer moments, compute activation) bytes per element for a Fabric precision."""
    if precision in ("bf16-true", "16-true"):
        return 2, 2, 4, 2
    if precision in ("bf16-mixed", "16-mixed"):
        return 4, 4, 8, 2
    return 4, 4, 8, 4


def mixer_activation_bytes(config: Config, spec, n: int, a: int, compiled: bool = False) -> int:
    """Bytes one mixer keeps for backward for n tokens (the norm before it is counted by the block).

    ``compiled``: the Block runs through torch.compile, whose min-cut partitioner saves only what the backward
    kernels read (the inputs of matmuls, attention and scan, the outputs of those non-recomputable ops) and
    recomputes pointwise chains (SiLU, gates). The differences from eager are named below."""
    A, K = config.attn_dim, config.kv_dim
    lse = n * config.n_head * 4  # attention's fp32 log-sum-exp per query and head
    if spec.mixer == "attention":
        # fused qkv output (k, v are views of it), RoPE'd q and k (new tensors), attention output (whose
        # transpose-reshape into the out projection is a view: flash kernels return [B, T, H, D] memory).
        # Compiled: the same -- every one is an input of the attention kernel's backward (v keeps the qkv storage)
        core = n * a * ((A + 2 * K) + (A + K if spec.rope else 0) + A) + lse
    elif spec.mixer == "cross_attention":
        # q projection, RoPE'd q, output (k, v are the producer layer's). Compiled: the pre-RoPE q is recomputable
        # only from the saved RoPE'd one, so only the attention kernel's inputs and output stay
        core = n * a * (A + (A if spec.rope and not compiled else 0) + A) + lse
    elif spec.mixer == "mamba":
        d, N, r = config.d_inner, config.mamba_d_state, config.dt_rank
        # in_proj out (x | z), conv out, silu(conv), x_proj out, dt, scan output y, silu(z), y·silu(z);
        # compiled: silu(z) is recomputed from z (the other tensors feed conv, matmuls or the scan kernel)
        return n * a * (2 * d + d + d + (r + 2 * N) + d + d + (0 if compiled else d) + d)
    elif spec.mixer == "gmu":
        # in_proj out, silu, product (the memory is the Mamba layer's); compiled: silu recomputed
        return n * a * (2 if compiled else 3) * config.d_inner
    else:
        raise ValueError(f"unknown mixer {spec.mixer!r}")
    if spec.diff_attn:  # second softmax output, pair outputs and the fp32 sub-norm (not re-derived for compile)
        core += n * a * 2 * A + n * 4 * 2 * A + lse
    return core


def norm_activation_bytes(n: int, w: int, a: int, compiled: bool = False) -> int:
    """RMSNorm/LayerNorm in fp32 keeps x·rstd (fp32) for the weight's gradient, rstd, and its output in the
    compute dtype (saved by the Linear that follows). The residual input is counted separately.
    Compiled: x·rstd is recomputed from the (saved) input and rstd; the compute-dtype output stays saved because
    the Linear's weight-gradient matmul reads it in backward."""
    return (0 if compiled else n * w * 4) + n * w * a + n * 4


def block_activation_bytes(config: Config, spec, n: int, a: int, r: int = 4, compiled: bool = False) -> int:
    """Bytes one block keeps for backward: its input (fp32 residual stream), both norms, mixer, MLP, and in
    between the mid-block residual (eager: the fp32 sum; compiled: the mixer's out-projection output in the
    compute dtype, from which the partitioner recomputes the sum).

    Compiled Transformer++ block per token: r·w + (a·w + 4) + a·(A+2K + A+K + A) + 4·heads + a·w + (a·w + 4)
    + a·(2H + H) -- fc output (gate | up) and the product silu(gate)·up (the down projection's input); silu
    itself is recomputed. Checked against a compiled Block on CPU in tests/test_planner.py."""
    w, H = config.n_embd, config.intermediate_size
    total = n * w * r + norm_activation_bytes(n, w, a, compiled) + mixer_activation_bytes(config, spec, n, a, compiled)
    if config.mlp:
        mid = n * w * a if compiled else n * w * r
        mlp = n * a * (3 if compiled else 4) * H  # fc out (gate|up), silu (eager only), product
        total += mid + norm_activation_bytes(n, w, a, compiled) + mlp
    return total


def ce_impl(n: int, vocab: int, assumptions: "Assumptions") -> str:
    """The head cross-entropy path training will take: ``lit_gpt.kernels.cross_entropy.choose_impl``'s rule
    (LITSCALE_CE_IMPL, else liger on CUDA when installed, else dense when n·V ≤ 2^26, else fused on CUDA and
    chunked elsewhere), unless ``Assumptions.ce_impl`` names one."""
    if assumptions.ce_impl:
        return assumptions.ce_impl
    forced = os.environ.get("LITSCALE_CE_IMPL")
    if forced:
        return forced
    if assumptions.accelerator == "cuda" and importlib.util.find_spec("liger_kernel") is not None:
        return "liger"
    if n * vocab <= CE_DENSE_LIMIT:
        return "dense"
    return "fused" if assumptions.accelerator == "cuda" else "chunked"


def fused_ce_chunk_rows(n: int, vocab: int) -> int:
    """``lit_gpt.kernels.fused_ops.default_chunk_rows`` (kept equal; tests check)."""
    return min(n, max(256, (FUSED_CE_CHUNK_ELEMENTS // max(vocab, 1)) // 256 * 256))


def head_bytes(config: Config, n: int, a: int, impl: str = "chunked", r: int = 4, wb: int = 4) -> dict[str, int]:
    """Final norm + cross-entropy: bytes saved for backward and the transient peak inside the loss, for the CE
    path ``impl`` (see ``ce_impl``). r: bytes of the hidden state (the residual stream), wb: of the head weight."""
    V, w = config.padded_vocab_size, config.n_embd
    final_norm = n * w * 4 + n * 4  # x·rstd; its input is the last block's output (counted there)
    if impl == "dense":  # the head's input (compute dtype) and the fp32 log-softmax are saved;
        # the fp32 logits (and, under autocast, their compute-dtype original) live only inside the loss
        return {"saved": final_norm + n * V * 4 + n * w * a, "transient": n * V * (4 + (a if a < 4 else 0))}
    if impl in ("fused", "liger"):
        # kernels/fused_ops.py: per chunk of c rows, logits and their gradient in the compute dtype (the compiled
        # elementwise pass keeps no fp32 copy), next to the compute-dtype head weight, the chunk's input and the
        # weight-gradient GEMM's output (or the chunk's hidden gradient before its fp32 copy, whichever is larger).
        # Saved: the hidden gradient (r bytes) and the weight gradient (weight dtype). liger is taken as the same.
        c = fused_ce_chunk_rows(n, V)
        transient = 2 * c * V * a + V * w * a + c * w * a + max(V * w * a, c * w * (a + r))
        return {"saved": final_norm + V * w * wb + n * w * r, "transient": transient}
    chunk = min(CE_CHUNK, n)  # chunked: the gradients of hidden (fp32) and of the head weight (fp32) are saved
    return {"saved": final_norm + V * w * 4 + n * w * 4, "transient": chunk * V * 4 * 2 + V * w * a}


def backward_transient_bytes(config: Config, n: int, a: int) -> int:
    """The widest activation gradient a block's backward holds next to the saved activations."""
    widest = max(2 * config.intermediate_size if config.mlp else 0, config.attn_dim + 2 * config.kv_dim,
                 2 * config.d_inner if any(s.mixer == "mamba" for s in config.layer_plan()) else 0)
    return n * widest * max(a, 4) if a >= 4 else n * widest * a * 2


def memory_estimate(config: Config, micro_batch: int, seq_len: int, assumptions: Assumptions,
                    grad_accum: int = 1) -> dict[str, Any]:
    """Per-device memory terms in bytes (see the module docstring), with and without activation checkpointing.

    Peak = resident states + the larger of (saved activations + the loss's transient) and (saved activations +
    a block's backward transient); with gradient accumulation (grad_accum > 1) the gradients are resident too.
    """
    s = assumptions.resolved()
    counts = count_parameters(config)
    P = counts.total
    wb, gb, ob, a = dtype_bytes(s.precision)
    r = 4
    n = micro_batch * seq_len
    plan = config.layer_plan()
    per_block_params = [_block_params(config, spec)[0] for spec in plan]
    root_params = P - sum(per_block_params)
    shard = 1
    if s.strategy == "fsdp" and s.sharding != "none":
        shard = s.devices if s.sharding == "hybrid" else s.world
    # every FSDP sharding but "none" keeps the fp32 master weights sharded at rest; grad_op (ZeRO-2) additionally
    # keeps each unit's gathered compute copy from its forward to its backward, i.e. all of them at the peak
    sharded_weights = s.strategy == "fsdp" and s.sharding in ("full", "hybrid", "grad_op")
    gathered_all = s.strategy == "fsdp" and s.sharding == "grad_op"
    terms: dict[str, float] = {}
    terms["weights"] = P * wb / (shard if sharded_weights else 1)
    terms["optimizer"] = P * ob / shard
    # gradients: resident between micro steps when accumulating (FSDP's no_sync keeps them unsharded), else
    # produced in backward as activations are freed (counted at the optimizer step only)
    accum_grads = P * gb if (grad_accum > 1 and s.strategy == "fsdp") else P * gb / shard
    terms["gradients"] = accum_grads if grad_accum > 1 else 0.0
    if s.strategy == "ddp" and s.world > 1:
        terms["ddp_buckets"] = P * gb
    impl = ce_impl(n, config.padded_vocab_size, s)
    # the head weight's compute-dtype copy is autocast's (cached, saved) only on the dense path; the chunked,
    # fused and liger losses cast it themselves inside the loss (counted in their transient)
    head_copy = 0 if impl == "dense" else config.padded_vocab_size * config.n_embd
    # FSDP gathers in the compute dtype (its mixed-precision param_dtype), so those copies are autocast's too
    gathered = P if gathered_all else root_params + 2 * max(per_block_params, default=0)  # root + two (prefetch)
    if s.precision in ("bf16-mixed", "16-mixed"):  # autocast's bf16 weight copies, saved by each Linear
        # (compiled Blocks save them too: each is an input of a matmul in backward)
        terms["weight_copies"] = (counts.matmul - head_copy) * 2 if not sharded_weights else gathered * 2
    elif sharded_weights:
        terms["weight_copies"] = gathered * wb
    blocks = [block_activation_bytes(config, spec, n, a, r, compiled=bool(s.compiled)) for spec in plan]
    head = head_bytes(config, n, a, impl, r=r, wb=wb)
    embed_out = n * config.n_embd * r
    terms["activations"] = sum(blocks) + embed_out + head["saved"]
    terms["head_transient"] = head["transient"]
    terms["backward_transient"] = backward_transient_bytes(config, n, a)
    transient = max(terms["head_transient"], terms["backward_transient"])
    offloaded = {}
    if s.cpu_offload and s.strategy == "fsdp":  # the sharded states live in host memory; AdamW steps there
        offloaded = {k: terms.pop(k) for k in ("weights", "optimizer", "gradients") if k in terms}
        offloaded["gradients"] = max(offloaded.get("gradients", 0.0), P * gb / shard)
        optimizer_step = 0.0
    else:
        optimizer_step = terms["weights"] + terms["optimizer"] + (P * gb / shard) + terms.get("ddp_buckets", 0)
    resident = sum(v for k, v in terms.items() if k not in ("activations", "head_transient", "backward_transient"))
    peak = max(resident + terms["activations"] + transient, optimizer_step)
    biggest = max(blocks, default=0)
    residual = n * config.n_embd * r
    # Checkpointed, the peak falls in one of two phases. Forward and loss: the L + 1 residual tensors the checkpoints
    # and the final norm keep, the head's saved tensors and the loss's transient. Backward of the last Block: the
    # head's saved tensors are spent (only the head weight's gradient remains), its L inputs, the residual gradient
    # arriving from above, and the Block being recomputed -- whose own saved set already holds its input -- plus its
    # backward transient. (Counting the head's tensors and the L + 1 inputs in the backward phase overestimated
    # the 128K GPU peaks by 2.2 GB; docs/mup.md.)
    head_weight_grad = config.padded_vocab_size * config.n_embd * wb
    ac_forward = (len(plan) + 1) * residual + head["saved"]
    ac_backward = len(plan) * residual + biggest + head_weight_grad  # (biggest holds the arriving gradient's size)
    ac_acts = max(ac_forward, ac_backward)
    # a checkpointed Block keeps no autocast weight copies between its forward and its backward: only the Block
    # being recomputed holds its own (plus whatever non-Block matmul copies the unsharded path keeps)
    resident_ac = resident
    if "weight_copies" in terms and not sharded_weights:
        block_copies = sum(per_block_params) * 2
        resident_ac = resident - block_copies + max(per_block_params, default=0) * 2
    peak_ac = max(resident_ac + max(ac_forward + terms["head_transient"], ac_backward + terms["backward_transient"]),
                  optimizer_step)
    return {
        "bytes": {k: int(v) for k, v in terms.items()},
        "per_block_activation_bytes": {spec.describe(): int(b) for spec, b in zip(plan, blocks)},
        "activations_checkpointed": int(ac_acts),
        "total": int(peak), "total_with_checkpointing": int(peak_ac),
        "host_offload_bytes": {k: int(v) for k, v in offloaded.items()},
        "sharded_over": shard, "precision": s.precision, "strategy": s.strategy, "sharding": s.sharding,
        "compiled": bool(s.compiled), "ce_impl": impl, "tokens_per_micro_step": n, "grad_accum": grad_accum,
    }


def _block_params(config: Config, spec) -> tuple[int, int]:
    from lit_gpt.scaling import layer_param_counts

    return layer_param_counts(config, spec)


# ------------------------------------------------------------------------------------------------ measuring
def measure_peak_tensor_bytes(fn, resident: Sequence[Any] = ()) -> dict[str, int]:
    """Run ``fn()`` and measure the tensor memory it allocates (CPU or any device), op by op.

    Method: a ``TorchDispatchMode`` sees every ATen op (forward, backward and optimizer alike); each output
    tensor whose storage is new (not an input of the op, not in ``resident``) is counted with its storage size
    until a weak reference on the storage says it was freed. ``peak`` is the largest sum of live new storages,
    i.e. the peak on top of what existed before (pass the parameters and optimizer states as ``resident`` and
    add their size). Unlike RSS this ignores the allocator's caching, and unlike tracemalloc it sees torch's
    own allocations. Returns {"peak": bytes, "end": bytes still alive when fn returned}.
    """
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class Tracker(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.live: dict[int, tuple[Any, int]] = {}
            self.known = {t.untyped_storage().data_ptr() for t in resident}
            self.current = self.peak = 0

        def _free(self, key: int) -> None:
            _, nbytes = self.live.pop(key, (None, 0))
            self.current -= nbytes

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                      if isinstance(t, torch.Tensor)}
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if not isinstance(t, torch.Tensor):
                    continue
                storage = t.untyped_storage()
                key, nbytes = storage.data_ptr(), storage.nbytes()
                if nbytes == 0 or key in inputs or key in self.known or key in self.live:
                    continue
                try:
                    ref = weakref.ref(storage, lambda _ref, k=key: self._free(k))
                except TypeError:  # pragma: no cover - storages without weakref support
                    continue
                self.live[key] = (ref, nbytes)
                self.current += nbytes
                self.peak = max(self.peak, self.current)
            return out

    tracker = Tracker()
    with tracker:
        fn()
    return {"peak": tracker.peak, "end": tracker.current}


# ------------------------------------------------------------------------------------------------ report
def hyperparameter_rows(plan: Plan, config: Config) -> list[dict[str, Any]]:
    rows = [
        {"name": "global batch (tokens)", "value": plan.global_batch_tokens, "rule": plan.rules.get("global_batch_tokens", "")},
        {"name": "train tokens", "value": plan.train_tokens, "rule": plan.rules.get("train_tokens", "")},
        {"name": "peak lr", "value": plan.lr, "rule": plan.rules.get("lr", "")},
    ]
    for name, g in plan.groups.items():
        rows.append({"name": f"lr[{name}]", "value": plan.lr * g.lr_mult, "rule": f"peak {g.rule}"})
        rows.append({"name": f"weight decay[{name}]", "value": g.weight_decay,
                     "rule": "none on vectors (μP++)" if g.weight_decay == 0 else "weight_decay0"})
    rows += [
        {"name": "min lr", "value": plan.min_lr, "rule": "min_lr0 x peak"},
        {"name": "schedule", "value": plan.schedule, "rule": "linear warmup, then " + plan.schedule},
        {"name": "warmup steps", "value": plan.warmup_steps, "rule": "warmup_tokens0 / (world*mbs*T) / grad_accum"},
        {"name": "max steps", "value": plan.max_steps, "rule": plan.rules.get("max_steps", "train_tokens / global batch")},
        {"name": "residual branch multiplier", "value": config.residual_multiplier,
         "rule": "1/sqrt(2L) (μP++)" if config.parameterization == "mup++" else "1"},
        {"name": "logit multiplier", "value": config.logit_multiplier,
         "rule": "d0/L" if config.parameterization in ("mup", "mup++") else "1"},
        {"name": "attention scale", "value": config.attention_scale,
         "rule": "sqrt(hd0)/hd" if config.parameterization in ("mup", "mup++") else "1/sqrt(hd)"},
        {"name": "betas / eps / clip", "value": f"{plan.betas[0]}, {plan.betas[1]} / {plan.eps:g} / {plan.grad_clip}",
         "rule": "base"},
    ]
    return rows


def _spec_leading_term(config: Config) -> Optional[float]:
    """SPEC §5's mult·L³ for this arch and aspect ratio (what ArchScale's papers quote), None for custom shapes."""
    if config.arch not in SPEC_LEADING_MULT or config.n_embd % config.n_layer:
        return None
    return spec_leading_term(config.arch, config.n_layer, config.n_embd // config.n_layer)


def build_report(plan: Plan, config: Config, assumptions: Assumptions, run_name: str = "") -> dict[str, Any]:
    s = assumptions.resolved()
    counts = count_parameters(config)
    mem = memory_estimate(config, plan.micro_batch_size, plan.seq_len, s, plan.grad_accum_steps)
    total_tokens = plan.max_steps * plan.global_batch_tokens
    total_flops = plan.flops_per_token * total_tokens
    report: dict[str, Any] = {
        "run_name": run_name or plan.run_name,
        "model": {"name": config.name, "arch": config.arch, "depth": config.n_layer, "width": config.n_embd,
                  "heads": config.n_head, "head_size": config.head_size, "kv_groups": config.n_query_groups,
                  "mlp_hidden": config.intermediate_size if config.mlp else 0, "vocab": config.padded_vocab_size,
                  "tied_embeddings": config.tied_embeddings, "parameterization": config.parameterization,
                  "layers": config.describe_layers()},
        "parameters": {"total": counts.total, "non_embedding": counts.non_embedding, "embedding": counts.embedding,
                       "lm_head": counts.lm_head, "matmul": counts.matmul,
                       "spec_leading_term": _spec_leading_term(config)},
        "hyperparameters": hyperparameter_rows(plan, config),
        "budget": {"train_tokens": plan.train_tokens, "tokens_run": total_tokens, "steps": plan.max_steps,
                   "global_batch_tokens": plan.global_batch_tokens, "micro_batch": plan.micro_batch_size,
                   "seq_len": plan.seq_len, "grad_accum": plan.grad_accum_steps, "world_size": s.world,
                   "warmup_steps": plan.warmup_steps},
        "flops": {"per_token": plan.flops_per_token, "six_n": 6.0 * counts.matmul,
                  "attention_and_scan": plan.flops_per_token - 6.0 * counts.matmul, "total": total_flops},
        "memory": mem,
        "system": asdict(s),
        "warnings": [],
    }
    if s.peak_flops:
        seconds = total_flops / (s.world * s.peak_flops * s.mfu)
        report["time"] = {"assumed_mfu": s.mfu, "peak_flops_per_device": s.peak_flops, "seconds": seconds,
                          "hours": seconds / 3600, "gpu_hours": seconds * s.world / 3600,
                          "tokens_per_sec": total_tokens / seconds if seconds else None}
    if s.device_memory_gb:
        cap = s.device_memory_gb * GB
        mem["device_memory_gb"] = s.device_memory_gb
        mem["fits"] = mem["total"] <= HEADROOM * cap
        mem["fits_with_checkpointing"] = mem["total_with_checkpointing"] <= HEADROOM * cap
        used = mem["total_with_checkpointing"] if s.activation_checkpointing else mem["total"]
        if used > HEADROOM * cap:
            hint = ("" if s.activation_checkpointing or not mem["fits_with_checkpointing"]
                    else "; --activation_checkpointing true would fit")
            report["warnings"].append(
                f"estimated {used / GB:.1f} GB per device exceeds {HEADROOM:.0%} of {s.device_memory_gb:g} GB: "
                f"lower --micro_bsz, shard more (--strategy fsdp --fsdp_sharding full) or add devices{hint}")
    return report


def assumptions_from_options(options: Any, **overrides: Any) -> Assumptions:
    """Assumptions from RunOptions fields (devices, num_nodes, strategy, precision, ...) and explicit overrides."""
    a = Assumptions()
    devices = getattr(options, "devices", "auto")
    if devices not in ("auto", None):
        a.devices = int(devices)
    a.nodes = int(getattr(options, "num_nodes", 1) or 1)
    a.strategy = getattr(options, "strategy", "auto") or "auto"
    a.sharding = getattr(options, "fsdp_sharding", "auto") or "auto"
    a.precision = getattr(options, "precision", None)
    a.activation_checkpointing = bool(getattr(options, "activation_checkpointing", False)
                                      or getattr(options, "fsdp_save_mem", False))
    a.cpu_offload = bool(getattr(options, "fsdp_save_mem", False))
    compile_ = getattr(options, "compile", None)
    if compile_ is not None:
        a.compiled = bool(compile_)
    for name in ("assumed_mfu", "device_memory_gb"):  # optional RunOptions fields
        value = getattr(options, name, None)
        if value is not None:
            setattr(a, "mfu" if name == "assumed_mfu" else name, value)
    for k, v in overrides.items():
        if v is not None:
            setattr(a, k, v)
    return a


def _vocab_from_data(options: Any) -> Optional[int]:
    try:
        from lit_gpt.data.loader import read_meta

        data_dir = options.resolved_train_data_dir
        if data_dir and os.path.exists(os.path.join(data_dir, "meta.json")):
            return int(read_meta(data_dir)["vocab_size"])
    except Exception:  # planning must not fail on data problems
        return None
    return None


def plan_report(options: Any, **overrides: Any) -> dict[str, Any]:
    """The full report for RunOptions (resolved on a copy); ``overrides`` set Assumptions fields."""
    opts = copy.deepcopy(options).resolve()
    a = assumptions_from_options(opts, **overrides)
    s = a.resolved()
    config = opts.model_config(opts.vocab_size or _vocab_from_data(opts))
    plan = transfer(opts.base_hps, config, Launch(nodes=s.nodes, devices=s.devices, micro_batch=opts.micro_bsz,
                                                  seq_len=opts.ctx_len),
                    max_tokens=opts.max_tokens, total_batch_tokens=opts.total_bsz, schedule=opts.schedule,
                    run_name=opts.run_name, depth_lr_scope=opts.depth_lr_scope, grad_clip=opts.grad_clip,
                    max_steps=opts.max_steps)
    return build_report(plan, config, s, opts.run_name)


def report_for(plan: Plan, config: Config, system: Any = None, options: Any = None, **overrides: Any) -> dict[str, Any]:
    """The report of an existing plan; ``system`` is training.parallel.System (or any object with accelerator,
    devices, nodes, strategy, precision), ``options`` the RunOptions (for sharding, checkpointing, MFU)."""
    a = assumptions_from_options(options) if options is not None else Assumptions()
    for field_name in ("accelerator", "devices", "nodes", "strategy", "precision", "compile"):
        value = getattr(system, field_name, None) if system is not None else None
        if value is not None:
            setattr(a, "compiled" if field_name == "compile" else field_name, value)
    for k, v in overrides.items():
        if v is not None:
            setattr(a, k, v)
    return build_report(plan, config, a, getattr(options, "run_name", "") if options is not None else "")


def render(plan: Plan, config: Config, system: Any = None, options: Any = None, **overrides: Any) -> str:
    """The human-readable table for ``pretrain.py --dry_run`` (see ``report_for``)."""
    return format_plan_table(report_for(plan, config, system, options, **overrides))


# ------------------------------------------------------------------------------------------------ formatting
def human(n: float, unit: str = "") -> str:
    for div, suffix in ((1e12, "T"), (1e9, "B" if not unit else "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}{unit}"
    return f"{n:.3g}{unit}"


def format_plan_table(report: dict[str, Any]) -> str:
    m, p, b, f, mem = report["model"], report["parameters"], report["budget"], report["flops"], report["memory"]
    s = report["system"]
    out = [f"== plan: {report['run_name']} ==",
           f"model      {m['name']} ({m['parameterization']}): width {m['width']}, {m['heads']} heads x {m['head_size']} "
           f"({m['kv_groups']} kv groups), MLP {m['mlp_hidden']}, vocab {m['vocab']}"
           + (", tied" if m["tied_embeddings"] else ""),
           f"layers     " + ", ".join(_compress(m["layers"])),
           f"params     {p['total']:,} total, {p['non_embedding']:,} non-embedding ({human(p['non_embedding'])})"
           + (f"; SPEC §5 mult·L³ gives {human(p['spec_leading_term'])} "
              f"({p['spec_leading_term'] / p['non_embedding'] - 1:+.1%})" if p.get("spec_leading_term") else ""),
           f"budget     {human(b['tokens_run'])} tokens = {b['steps']:,} steps x {b['global_batch_tokens']:,} tokens "
           f"({b['world_size']} devices x {b['micro_batch']} x {b['seq_len']} x {b['grad_accum']} accum), "
           f"warmup {b['warmup_steps']:,} steps",
           f"FLOPs      {human(f['per_token'])}/token (6N {human(f['six_n'])} + attention/scan "
           f"{human(f['attention_and_scan'])}), total {f['total']:.3e}",
           "", "hyperparameter".ljust(30) + "value".ljust(16) + "rule"]
    for row in report["hyperparameters"]:
        v = row["value"]
        text = f"{v:.4g}" if isinstance(v, float) else (f"{v:,}" if isinstance(v, int) else str(v))
        out.append(f"  {row['name']:<28}{text:<15} {row['rule']}")
    bts = mem["bytes"]
    out += ["", f"memory per device ({mem['precision']}, {mem['strategy']}"
            + (f" {mem['sharding']} over {mem['sharded_over']}" if mem["strategy"] == "fsdp" else "") + ", GB):"]
    for k in ("weights", "gradients", "optimizer", "ddp_buckets", "weight_copies", "activations", "head_transient",
              "backward_transient"):
        if bts.get(k):
            out.append(f"  {k:<22}{bts[k] / GB:10.2f}")
    out.append(f"  {'total (peak)':<22}{mem['total'] / GB:10.2f}   with activation checkpointing "
               f"{mem['total_with_checkpointing'] / GB:.2f}")
    if mem.get("host_offload_bytes"):
        host = mem["host_offload_bytes"]
        out.append(f"  offloaded to host memory per process: {sum(host.values()) / GB:.2f} GB ("
                   + ", ".join(f"{k} {v / GB:.2f}" for k, v in host.items()) + ")")
    if "device_memory_gb" in mem:
        out.append(f"  device {mem['device_memory_gb']:g} GB: {'fits' if mem['fits'] else 'does NOT fit'}"
                   f" ({'fits' if mem['fits_with_checkpointing'] else 'does not fit'} with checkpointing)")
    if "time" in report:
        t = report["time"]
        out.append(f"\ntime       {t['hours']:.2f} h on {b['world_size']} x {s['device']} at MFU {t['assumed_mfu']:.0%} "
                   f"({t['gpu_hours']:.1f} GPU-hours, {human(t['tokens_per_sec'])} tokens/s)")
    for w in report["warnings"]:
        out.append(f"WARNING: {w}")
    return "\n".join(out)


def _compress(layers: list[str]) -> list[str]:
    """'0: attn', '1: attn', ... -> 'attn x2'."""
    kinds = [s.split(": ", 1)[1] for s in layers]
    out, i = [], 0
    while i < len(kinds):
        j = i
        while j < len(kinds) and kinds[j] == kinds[i]:
            j += 1
        out.append(kinds[i] + (f" x{j - i}" if j - i > 1 else ""))
        i = j
    return out


# ------------------------------------------------------------------------------------------------ CLI
def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lit_gpt.planner", add_help=False,
                                 description="Plan a run: every pretrain.py flag plus the assumptions below.")
    ap.add_argument("--assumed_mfu", type=float, default=None, help="model FLOPs utilization (default 0.4)")
    ap.add_argument("--device_memory_gb", type=float, default=None, help="per device (default: the device's)")
    ap.add_argument("--device", default=None, help="h100 (default), h200, a100, l4: peak FLOPs and memory")
    ap.add_argument("--accelerator", default=None, help="cuda (default) or cpu")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("-h", "--help", action="store_true")
    args, rest = ap.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    if args.help:
        ap.print_help()
        print("\nand any pretrain.py flag (python pretrain.py --help), e.g. --train_model --depth --devices")
        return 0
    from lit_gpt.training.cli import parse_options

    options = parse_options(rest)
    try:
        report = plan_report(options, mfu=args.assumed_mfu, device_memory_gb=args.device_memory_gb,
                             device=args.device, accelerator=args.accelerator)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, default=str) if args.json else format_plan_table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
