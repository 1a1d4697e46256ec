"""Everything that changes how a model runs without changing what it computes: devices, sharding,
precision, torch.compile and activation checkpointing. Applied from outside the model (torchtitan habit)."""

from __future__ import annotations

import os
from collections import deque
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
    if strategy == "fsdp" and accelerator != "cuda" and opts.fsdp_version == 1:
        raise OptionsError("--strategy fsdp needs CUDA devices with --fsdp_version 1; use --fsdp_version 2 (runs on "
                           "CPU too) or --strategy ddp")
    if strategy == "fsdp" and accelerator != "cuda" and opts.fsdp_save_mem:
        raise OptionsError("--fsdp_save_mem offloads FSDP's shards from the GPUs to host memory, and this run has no "
                           "GPU; drop it (use --activation_checkpointing true for the memory saving that applies here)")
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
    from lightning.fabric.strategies import DDPStrategy

    if system.strategy == "fsdp" and opts.fsdp_version == 2:
        from lightning.fabric.strategies import ModelParallelStrategy

        strategy = ModelParallelStrategy(
            parallelize_fn=fully_shard_blocks(opts, system), data_parallel_size=system.devices * system.nodes,
            tensor_parallel_size=1, save_distributed_checkpoint=False,
            process_group_backend="nccl" if system.accelerator == "cuda" else "gloo")
    elif system.strategy == "fsdp":
        strategy = fsdp1_strategy(opts, system)
    elif system.strategy == "ddp":
        strategy = DDPStrategy(process_group_backend="nccl" if system.accelerator == "cuda" else "gloo")
    else:
        strategy = "auto"
    return L.Fabric(accelerator=system.accelerator, devices=system.devices, num_nodes=system.nodes,
                    strategy=strategy, precision=system.precision, loggers=loggers)


def fsdp1_strategy(opts: RunOptions, system: System):
    """Lightning's FSDPStrategy (FSDP1): one flat-parameter unit per Block, the root holding the rest."""
    from lightning.fabric.strategies import FSDPStrategy

    return FSDPStrategy(
        auto_wrap_policy={Block}, sharding_strategy=fsdp_sharding(opts, system.nodes),
        activation_checkpointing_policy={Block} if (opts.fsdp_save_mem or opts.activation_checkpointing) else None,
        cpu_offload=opts.fsdp_save_mem, state_dict_type="full", use_orig_params=True,
        limit_all_gathers=opts.fsdp_limit_all_gathers, forward_prefetch=opts.fsdp_forward_prefetch)


def fully_shard_blocks(opts: RunOptions, system: System):
    """FSDP2: each Block (or its checkpoint wrapper) and then the root become ``fully_shard`` units.

    Parameters are gathered in the autocast dtype and gradients reduced in it (what Lightning's FSDP1 bf16-mixed
    policy does, so the two versions compute the same thing); grad_op keeps a Block's parameters gathered from its
    forward to its backward; hybrid shards within a node and replicates across nodes; --fsdp_save_mem offloads
    parameters, gradients and optimizer states to the CPU.
    """

    def parallelize(model: nn.Module, device_mesh) -> nn.Module:
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

        sharding = fsdp_sharding(opts, system.nodes)
        if sharding == "HYBRID_SHARD":
            from torch.distributed.device_mesh import init_device_mesh

            mesh = init_device_mesh(device_mesh.device_type, (system.nodes, system.devices),
                                    mesh_dim_names=("replicate", "shard"))
        else:
            mesh = device_mesh["data_parallel"]
        dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(system.precision)
        # cast_forward_inputs=False: the residual stream entering each Block stays fp32 (SPEC), only weights are bf16
        policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=dtype, cast_forward_inputs=False)
        unit = dict(mesh=mesh, mp_policy=policy,
                    offload_policy=CPUOffloadPolicy() if opts.fsdp_save_mem else OffloadPolicy())
        for layer in model.transformer.h:
            fully_shard(layer, reshard_after_forward=sharding != "SHARD_GRAD_OP", **unit)
        fully_shard(model, reshard_after_forward=False, **unit)  # embedding and head: used first and last
        return model

    return parallelize


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each Block's activations in backward (outside FSDP, which applies its own policy)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing as apply_ac
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    apply_ac(model, checkpoint_wrapper_fn=checkpoint_wrapper, check_fn=lambda m: isinstance(m, Block))


def compile_blocks(model: nn.Module) -> None:
    """Regional compile: each Block compiles in place (names and state dicts stay unchanged).

    Hybrids have several block kinds (Mamba, SWA, GMU, cross-attention, ...) and validation runs at k·T, each a
    separate graph: dynamo's default of 8 recompiles would silently drop later blocks back to eager. Shapes are
    static: on a recompile dynamo would otherwise make the dimensions that differ from the first graph symbolic, and
    with gradient accumulation (a second graph per kind, training/working_copies.py) that left SambaY's Mamba
    backward kernels 3-4x slower (docs/benchmarks.md, section 1).
    """
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for module in model.modules():
        if isinstance(module, Block):
            module.compile(dynamic=False)


def parallelize(model: nn.Module, fabric, opts: RunOptions, system: System) -> nn.Module:
    if system.compile:
        compile_blocks(model)
    fsdp1 = system.strategy == "fsdp" and opts.fsdp_version == 1  # FSDP1 applies checkpointing itself
    if not fsdp1 and (opts.activation_checkpointing or opts.fsdp_save_mem):
        apply_activation_checkpointing(model)
    return fabric.setup_module(model)


def reduce_across_ranks(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``tensor`` reduced over all ranks ("sum" or "max"), queued on the device: the host does not wait.

    For reductions inside the step. Fabric's ``all_reduce`` first calls ``barrier()``, and an NCCL barrier blocks the
    host until the GPU has run everything queued; once per step that left the GPU idle while the host launched the
    next work (docs/benchmarks.md, section 4). Reduces in place; NCCL needs GPU tensors, so a CPU tensor (gradients
    offloaded with --fsdp_save_mem) goes through this rank's GPU and is copied back with a blocking copy: the CPU
    code that reads it next (the offloaded optimizer step) must not see it before it arrives. In one process this
    returns ``tensor`` unchanged.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return tensor
    reduce_op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
    if tensor.device.type != "cuda" and dist.get_backend() == "nccl":
        on_gpu = tensor.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_gpu, op=reduce_op)
        return tensor.copy_(on_gpu)  # blocking device-to-host copy
    dist.all_reduce(tensor, op=reduce_op)
    return tensor


class RankVote:
    """Host-side flags every rank must act on at the same step (a stop signal arrived, a timed save is due), true
    when any rank raised them, without a host synchronization per step.

    Each call casts this step's flags (max-reduced on the device) and returns the verdict on the flags cast ``lag``
    calls earlier: the GPU finished those long ago, so reading them waits for nothing queued since. Every rank reads
    the same call's verdict, so all act together, ``lag`` steps after a flag went up. In one process the verdict is
    the flags themselves, at once. ``clear()`` drops the votes in flight (after a save they are stale); call it at
    the same step on every rank.
    """

    def __init__(self, device: torch.device, world_size: int, lag: int = 2):
        if lag < 1:
            raise ValueError(f"lag={lag}: must be at least 1 step")
        self.device, self.world_size, self.lag = device, world_size, lag
        self._pending: deque = deque()

    def __call__(self, *flags: bool) -> tuple[bool, ...]:
        if self.world_size == 1:
            return tuple(bool(f) for f in flags)
        cuda = self.device.type == "cuda"
        cast = torch.tensor([float(f) for f in flags], pin_memory=cuda)
        votes = reduce_across_ranks(cast.to(self.device, non_blocking=True), "max")
        done = None
        if cuda:  # copied back into pinned memory behind the all-reduce; the event marks its arrival
            votes = torch.empty(len(flags), pin_memory=True).copy_(votes, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
        self._pending.append((cast, votes, done))  # `cast` stays alive until its copy to the device has run
        if len(self._pending) <= self.lag:
            return (False,) * len(flags)
        _cast, votes, done = self._pending.popleft()
        if done is not None:
            done.synchronize()
        return tuple(bool(v) for v in votes.tolist())

    def clear(self) -> None:
        self._pending.clear()


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
