"""Run options: one typed object from CLI flags and YAML, with ArchScale's ``train_name`` tokens resolved once.

``train_name`` keeps working as in ArchScale (``scaling_mup_tie_rbase_varlen``); each token it carries becomes
an explicit option here, printed and saved with the run. An explicit flag always wins over a token.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional, Union

from lit_gpt.config import ARCHS, Config, ConfigError
from lit_gpt.scaling import BaseHyperparameters, Launch, SCHEDULES

BUILTIN_DATA_DIR = os.path.join("data", "builtin")
ROPE_BASE_LONG = 640_000


class OptionsError(ValueError):
    """Bad options; the message names the flag and the fix."""


@dataclass
class RunOptions:
    """Everything that defines a training run. ``None`` means "derive it" (from train_name, data or device)."""

    # model
    train_model: str = "transformer"
    depth: int = 8
    ar: Optional[int] = None
    vocab_size: Optional[int] = None
    mlp: bool = True
    swa_len: Optional[int] = None
    # ArchScale-style run name; its tokens resolve to the explicit options below
    train_name: str = "scaling"
    parameterization: Optional[str] = None  # sp | mup | mup++
    tied_embeddings: Optional[bool] = None
    rope_base: Optional[int] = None
    varlen: Optional[bool] = None
    label_smoothing: Optional[float] = None
    schedule: Optional[str] = None  # linear | cosine | wsd
    validation_only: Optional[bool] = None
    depth_lr_scope: str = "all"  # all (ArchScale) | hidden (sqrt(d0/L) on hidden matrices only)
    # data
    train_data_dir: Optional[str] = None
    val_data_dir: Optional[str] = None
    data_mixture: Optional[str] = None
    num_workers: int = 2
    # budget and batch
    base_hps: BaseHyperparameters = field(default_factory=BaseHyperparameters)
    ctx_len: int = 4096
    micro_bsz: int = 4
    total_bsz: Optional[int] = None
    max_tokens: Optional[float] = None
    max_steps: Optional[int] = None
    grad_clip: float = 1.0
    # evaluation, logging, checkpoints
    out_dir: Optional[str] = None
    eval_step: int = 1000
    eval_iters: int = 16
    val_multiple: Optional[int] = None  # k: validation rows of k*T+1 tokens (4, or 2 for long context)
    log_step: int = 10
    save_step: int = 1000
    save_interval_minutes: Optional[float] = None
    keep_last: Optional[int] = None
    logger: str = "csv"  # csv | wandb | tensorboard (metrics.csv is always written)
    resume: Union[bool, str] = False  # False | "auto" | path to a checkpoint folder
    load_dir: Optional[str] = None
    # system
    devices: Union[int, str] = "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # auto | single | ddp | fsdp
    fsdp_sharding: str = "auto"  # auto | full | grad_op | hybrid | none
    fsdp_save_mem: bool = False  # activation checkpointing + CPU offload
    # 2: fully_shard (per-parameter DTensor shards; runs on CPU too); 1: FSDP (flat parameters, Lightning's
    # FSDPStrategy). 2 is the default since it measured 3 points more per-GPU efficiency on 2 GPUs (FSDP1 leaves the
    # GPU idle while its hooks run on the host; docs/benchmarks.md, section 4)
    fsdp_version: int = 2
    fsdp_forward_prefetch: bool = False  # FSDP1 only: the next unit's all-gather before this unit's forward
    fsdp_limit_all_gathers: bool = True  # FSDP1 only: at most two all-gathers in flight (bounds memory)
    activation_checkpointing: bool = False
    precision: Optional[str] = None  # default: bf16-mixed on GPU, 32-true on CPU
    compile: Optional[bool] = None  # default: on for CUDA
    seed: int = 42
    profile: int = 0  # steps to record with the torch profiler (0 = off)
    # training guards
    skip_nonfinite: bool = True
    # where clipping and the skip guard run: "device" = inside the fused AdamW step (no host synchronization per
    # step; skipped steps are reported, and --max_skips checked, at log steps); "host" = one sync per step (needed
    # by --spike_threshold and 16-mixed's GradScaler); "auto" = device on CUDA unless one of those, else host
    guard: str = "auto"
    # the AdamW kernel: "triton" = lit_gpt/kernels/adamw.py (one streaming kernel per large parameter on the GPU;
    # small tensors, and every step off the GPU, go to torch's); "torch" = torch's fused multi-tensor AdamW;
    # "auto" = triton on CUDA
    adamw_kernel: str = "auto"
    # where the forward's bf16 weights come from under bf16-mixed: "forward" = autocast casts each fp32 weight at every
    # forward; "optimizer" = the Triton AdamW writes a bf16 copy of each large Linear weight as it updates it and the
    # weight gradients leave their GEMMs in fp32, added in place to the gradient so far when accumulating
    # (training/working_copies.py; not with FSDP, whose policy gathers bf16 weights itself); "auto" = optimizer on
    # CUDA where it applies
    weight_cast: str = "auto"
    spike_threshold: Optional[float] = None  # skip a step whose loss exceeds threshold x moving average
    max_skips: int = 20  # within the last 100 steps, then stop with a checkpoint
    dry_run: bool = False

    # ------------------------------------------------------------------ train_name resolution
    def resolve(self) -> "RunOptions":
        """Fill every derived option from ``train_name`` (explicit flags win) and check values."""
        name = self.train_name
        tokens = set(name.split("_"))
        if self.parameterization is None:
            self.parameterization = "mup" if "ori_mup" in name else ("mup++" if "mup" in name else "sp")
        if self.tied_embeddings is None:
            self.tied_embeddings = True if "tie" in name else None  # None: the architecture's default
        if self.rope_base is None:
            self.rope_base = ROPE_BASE_LONG if "rbase" in name else 10_000
        if self.varlen is None:
            self.varlen = "varlen" in name
        if self.label_smoothing is None:
            self.label_smoothing = 0.1 if "ls" in tokens else 0.0
        if self.schedule is None:
            self.schedule = "cosine" if "cosine" in name else ("wsd" if "wsd" in name else "linear")
        if self.validation_only is None:
            self.validation_only = "validation" in name
        if self.val_multiple is None:
            self.val_multiple = 2 if self.ctx_len > 16384 else 4
        self.check()
        return self

    def check(self) -> None:
        if self.train_model not in ARCHS:
            raise OptionsError(f"unknown --train_model {self.train_model!r}; valid: {', '.join(ARCHS)}")
        if self.parameterization not in ("sp", "mup", "mup++"):
            raise OptionsError(f"--parameterization {self.parameterization!r} must be sp, mup or mup++")
        if self.schedule not in SCHEDULES:
            raise OptionsError(f"--schedule {self.schedule!r} must be one of {', '.join(SCHEDULES)}")
        for flag in ("depth", "ctx_len", "micro_bsz", "log_step", "eval_step", "save_step", "num_nodes"):
            if getattr(self, flag) < 1:
                raise OptionsError(f"--{flag} must be >= 1, got {getattr(self, flag)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise OptionsError(f"--max_steps must be >= 1, got {self.max_steps}")
        if self.logger not in ("csv", "wandb", "tensorboard"):
            raise OptionsError(f"--logger {self.logger!r} must be csv, wandb or tensorboard")
        if self.strategy not in ("auto", "single", "ddp", "fsdp"):
            raise OptionsError(f"--strategy {self.strategy!r} must be auto, single, ddp or fsdp")
        if self.fsdp_sharding not in ("auto", "full", "grad_op", "hybrid", "none"):
            raise OptionsError(f"--fsdp_sharding {self.fsdp_sharding!r} must be auto, full, grad_op, hybrid or none")
        if self.fsdp_version not in (1, 2):
            raise OptionsError(f"--fsdp_version {self.fsdp_version!r} must be 1 or 2")
        if self.fsdp_version == 2 and self.fsdp_sharding == "none":
            raise OptionsError("--fsdp_sharding none with --fsdp_version 2 shards nothing: use --strategy ddp")
        if self.fsdp_version == 2 and (self.fsdp_forward_prefetch or not self.fsdp_limit_all_gathers):
            raise OptionsError("--fsdp_forward_prefetch and --fsdp_limit_all_gathers tune FSDP1 only (FSDP2 prefetches "
                               "and bounds its all-gathers itself): add --fsdp_version 1, or drop them")
        if self.adamw_kernel not in ("auto", "torch", "triton"):
            raise OptionsError(f"--adamw_kernel {self.adamw_kernel!r} must be auto, torch or triton")
        if self.weight_cast not in ("auto", "forward", "optimizer"):
            raise OptionsError(f"--weight_cast {self.weight_cast!r} must be auto, forward or optimizer")
        if self.guard not in ("auto", "host", "device"):
            raise OptionsError(f"--guard {self.guard!r} must be auto, host or device")
        if self.guard == "device" and self.precision == "16-mixed":
            raise OptionsError("--precision 16-mixed scales gradients with a GradScaler that drives the fused AdamW's "
                               "skip inputs itself: use --guard host (or auto), or bf16-mixed")
        if self.guard == "device" and self.spike_threshold:
            raise OptionsError("--spike_threshold compares each step's loss on the host: use --guard host (or auto), "
                               "or drop --spike_threshold")
        if isinstance(self.resume, str) and self.resume.lower() in ("false", "none", ""):
            self.resume = False
        if isinstance(self.resume, str) and self.resume.lower() == "true":
            self.resume = "auto"
        if self.resume is True:
            self.resume = "auto"
        if self.keep_last is not None and self.keep_last < 1:
            raise OptionsError(f"--keep_last must be >= 1, got {self.keep_last}")

    # ------------------------------------------------------------------ derived objects
    @property
    def run_name(self) -> str:
        name = f"{self.train_name}_{self.train_model}_d{self.depth}_ctx{self.ctx_len}"
        if self.swa_len is not None:
            name += f"_swa{self.swa_len}"
        return name

    @property
    def resolved_out_dir(self) -> str:
        return self.out_dir or os.path.join("out", self.run_name)

    @property
    def resolved_train_data_dir(self) -> Optional[str]:
        if self.data_mixture:
            return None
        return self.train_data_dir or BUILTIN_DATA_DIR

    def model_config(self, vocab_size: Optional[int] = None, eos_id: Optional[int] = None) -> Config:
        overrides: dict[str, Any] = dict(
            block_size=self.ctx_len, parameterization=self.parameterization, base_depth=self.base_hps.d0,
            base_head_size=self.base_hps.hd0, w_init=self.base_hps.w_init0, rope_base=self.rope_base,
            varlen=self.varlen, eos_id=eos_id, mlp=self.mlp,
        )
        vocab = self.vocab_size or vocab_size
        if vocab is not None:
            overrides["vocab_size"] = vocab
        if self.tied_embeddings is not None:
            overrides["tied_embeddings"] = self.tied_embeddings
        if self.swa_len is not None:
            overrides["sliding_window"] = self.swa_len
        try:
            return Config.from_arch(self.train_model, self.depth, ar=self.ar, **overrides)
        except ConfigError as err:
            raise OptionsError(str(err)) from None

    def launch(self, devices_per_node: int, nodes: int) -> Launch:
        return Launch(nodes=nodes, devices=devices_per_node, micro_batch=self.micro_bsz, seq_len=self.ctx_len)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunOptions":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("base_hps"), dict):
            values["base_hps"] = BaseHyperparameters(**values["base_hps"])
        return cls(**values)

    def model_defining(self) -> dict[str, Any]:
        """The options a resumed run must share with its checkpoint."""
        keys = ("train_model", "depth", "ar", "vocab_size", "mlp", "swa_len", "parameterization", "tied_embeddings",
                "rope_base", "varlen", "ctx_len")
        return {k: getattr(self, k) for k in keys}
