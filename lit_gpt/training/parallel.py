"""Everything that changes how a model runs without changing what it computes: devices, sharding,
precision, torch.compile and activation checkpointing. Applied from outside the model (torchtitan habit)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from lit_gpt.model import Block
from lit_gpt.training.options import OptionsError, RunOptions


@dataclass
class System:
    accelerator: str
    devices: int  # per node
    nodes: int
    strategy: str  # single | ddp | fsdp
    precision: str
    compile: bool


def detect_accelerator() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_system(opts: RunOptions) -> System:
    accelerator = detect_accelerator()
    local_world = os.environ.get("LOCAL_WORLD_SIZE")
    world = os.environ.get("WORLD_SIZE")
    if opts.devices == "auto":
        if local_world:  # launched by torchrun: one process per device
            devices = int(local_world)
        else:
            devices = torch.cuda.device_count() if accelerator == "cuda" else 1
    else:
        devices = int(opts.devices)
    nodes = opts.num_nodes
    if world and local_world and opts.num_nodes == 1:
        nodes = max(1, int(world) // int(local_world))
    total = devices * nodes
    strategy = opts.strategy
    if strategy == "auto":
        strategy = "single" if total == 1 else ("fsdp" if accelerator == "cuda" else "ddp")
    if strategy == "single" and total > 1:
        raise OptionsError(f"--strategy single needs one process, but {total} were asked for; use ddp or fsdp")
    if strategy == "fsdp" and accelerator != "cuda":
        raise OptionsError("--strategy fsdp needs CUDA devices; use --strategy ddp on CPU")
    precision = opts.precision or ("bf16-mixed" if accelerator == "cuda" else "32-true")
    compile_ = accelerator == "cuda" if opts.compile is None else opts.compile
    return System(accelerator, devices, nodes, strategy, precision, compile_)


def fsdp_sharding(opts: RunOptions, nodes: int) -> str:
    mapping = {"full": "FULL_SHARD", "grad_op": "SHARD_GRAD_OP", "hybrid": "HYBRID_SHARD", "none": "NO_SHARD"}
    choice = opts.fsdp_sharding
    if choice == "auto":
        choice = "hybrid" if nodes > 1 else "full"
    return mapping[choice]


def build_fabric(opts: RunOptions, system: System, loggers=None):
    import lightning as L
    from lightning.fabric.strategies import DDPStrategy, FSDPStrategy

    if system.strategy == "fsdp":
        strategy = FSDPStrategy(
            auto_wrap_policy={Block}, sharding_strategy=fsdp_sharding(opts, system.nodes),
            activation_checkpointing_policy={Block} if (opts.fsdp_save_mem or opts.activation_checkpointing) else None,
            cpu_offload=opts.fsdp_save_mem, state_dict_type="full", use_orig_params=True,
            limit_all_gathers=opts.fsdp_limit_all_gathers, forward_prefetch=opts.fsdp_forward_prefetch)
    elif system.strategy == "ddp":
        strategy = DDPStrategy(process_group_backend="nccl" if system.accelerator == "cuda" else "gloo")
    else:
        strategy = "auto"
    return L.Fabric(accelerator=system.accelerator, devices=system.devices, num_nodes=system.nodes,
                    strategy=strategy, precision=system.precision, loggers=loggers)


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each Block's activations in backward (outside FSDP, which applies its own policy)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing as apply_ac
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    apply_ac(model, checkpoint_wrapper_fn=checkpoint_wrapper, check_fn=lambda m: isinstance(m, Block))


def compile_blocks(model: nn.Module) -> None:
    """Regional compile: each Block compiles in place (names and state dicts stay unchanged).

    Hybrids have several block kinds (Mamba, SWA, GMU, cross-attention, ...) and validation runs at k·T, each a
    separate graph: dynamo's default of 8 recompiles would silently drop later blocks back to eager.
    """
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for module in model.modules():
        if isinstance(module, Block):
            module.compile()


def parallelize(model: nn.Module, fabric, opts: RunOptions, system: System) -> nn.Module:
    if system.compile:
        compile_blocks(model)
    if system.strategy != "fsdp" and (opts.activation_checkpointing or opts.fsdp_save_mem):
        apply_activation_checkpointing(model)
    return fabric.setup_module(model)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain GPT behind Fabric's wrappers."""
    module = getattr(model, "module", model)
    return getattr(module, "module", module) if not hasattr(module, "config") else module


def device_peak_flops(device: torch.device) -> Optional[float]:
    """Dense bf16 peak of the device (MFU denominator), or None where unknown (CPU)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).lower()
    for key, peak in (("h100", 989e12), ("h200", 989e12), ("h800", 989e12), ("a100", 312e12), ("l4", 121e12)):
        if key in name:
            return peak
    return None
