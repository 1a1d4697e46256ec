"""The training run: options -> plan -> model -> parallelize -> loop (step, log, eval, checkpoint).

One code path for one CPU process, one GPU, and torchrun on many GPUs and nodes. Nothing here is a
module-level mutable global: all run state lives on the ``Trainer``.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch

from lit_gpt.config import Config
from lit_gpt.model import GPT
from lit_gpt.scaling import Plan, param_groups, transfer
from lit_gpt.training.metrics import RunRecorder, Throughput, live_line
from lit_gpt.training.options import OptionsError, RunOptions
from lit_gpt.training.parallel import (RankVote, System, build_fabric, device_peak_flops, fsdp_sharding, parallelize,
                                      reduce_across_ranks, resolve_system)

EXIT_TOO_MANY_SKIPS = 3
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.", "_forward_module.")


class TrainingStopped(RuntimeError):
    """The guards stopped the run (a checkpoint was written first)."""


@dataclass
class StepResult:
    """What one optimizer step leaves on this rank (tensors stay on the device: no host synchronization)."""

    loss: torch.Tensor  # mean loss over the step's micro batches
    grad_norm: torch.Tensor  # global gradient norm before clipping
    skipped: Optional[torch.Tensor] = None  # guard on the device: 1.0 where the fused optimizer skipped the step
    skip_reason: Optional[str] = None  # guard on the host: why the step was skipped


def guard_on_device(opts: RunOptions, system: System) -> bool:
    """Whether clipping and the non-finite skip run inside the fused AdamW (see RunOptions.guard). Never under
    16-mixed: its GradScaler drives the same grad_scale/found_inf inputs of the fused step."""
    if opts.guard == "device":
        return True
    return (opts.guard == "auto" and system.accelerator == "cuda" and not opts.spike_threshold
            and system.precision != "16-mixed")


def adamw_class(opts: RunOptions, system: System) -> type[torch.optim.AdamW]:
    """torch's fused AdamW, or the same optimizer with its CUDA step in Triton (RunOptions.adamw_kernel)."""
    if opts.adamw_kernel == "torch" or (opts.adamw_kernel == "auto" and system.accelerator != "cuda"):
        return torch.optim.AdamW
    from lit_gpt.kernels.adamw import TritonAdamW

    return TritonAdamW


def weight_cast(opts: RunOptions, system: System) -> str:
    """"optimizer" where the Triton AdamW keeps bf16 working copies of the Linear weights, else "forward" (autocast
    casts at every forward); RunOptions.weight_cast. The copies need bf16-mixed, the Triton AdamW and unsharded
    parameters (FSDP's mixed-precision policy gathers bf16 weights itself)."""
    from lit_gpt.kernels.adamw import TritonAdamW

    why_not = None
    if system.precision != "bf16-mixed":
        why_not = f"--precision {system.precision} (they are bf16 copies for bf16-mixed)"
    elif system.strategy == "fsdp":
        why_not = "FSDP (its mixed-precision policy gathers bf16 weights already)"
    elif adamw_class(opts, system) is not TritonAdamW:
        why_not = "torch's AdamW (the Triton AdamW writes the copies: --adamw_kernel triton)"
    if opts.weight_cast == "optimizer" and why_not:
        raise OptionsError(f"--weight_cast optimizer does not apply with {why_not}: use --weight_cast auto or forward")
    on = opts.weight_cast == "optimizer" or (opts.weight_cast == "auto" and system.accelerator == "cuda")
    return "optimizer" if on and not why_not else "forward"


def clean_name(name: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def data_meta(opts: RunOptions) -> Optional[dict[str, Any]]:
    """Vocabulary and EOS of the prepared data (the built-in corpus is prepared on first use)."""
    from lit_gpt.data.loader import read_meta

    if opts.data_mixture:
        from lit_gpt.data.loader import load_mixture

        first = next(iter(load_mixture(opts.data_mixture)))
        return read_meta(first)
    data_dir = opts.resolved_train_data_dir
    if opts.train_data_dir is None and not Path(data_dir, "meta.json").exists():
        from lit_gpt.data.prepare import prepare

        print(f"preparing the built-in corpus in {data_dir} (first use)", flush=True)
        prepare(data_dir, builtin=True)
    return read_meta(data_dir)


def make_plan(opts: RunOptions, config: Config, system: System) -> Plan:
    return transfer(opts.base_hps, config, opts.launch(system.devices, system.nodes), max_tokens=opts.max_tokens,
                    total_batch_tokens=opts.total_bsz, schedule=opts.schedule, run_name=opts.run_name,
                    depth_lr_scope=opts.depth_lr_scope, grad_clip=opts.grad_clip, max_steps=opts.max_steps)


def dry_run_report(opts: RunOptions, config: Config, plan: Plan, system: System) -> dict[str, Any]:
    report = {"run_name": opts.run_name, "model_config": config.to_dict(), "layer_plan": config.describe_layers()}
    report.update(plan.to_dict())
    report["system"] = system.__dict__
    report["options"] = opts.to_dict()
    return report


def check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write_probe"
        probe.write_bytes(b"x" * 1024)
        probe.unlink()
    except OSError as err:
        raise OptionsError(f"cannot write to --out_dir {out_dir}: {err.strerror or err}; choose a writable folder "
                           f"with free space") from None


class Trainer:
    def __init__(self, opts: RunOptions):
        self.opts = opts.resolve()
        self.stop_requested = False
        self.skips: deque[int] = deque()
        self._skipped_at: Optional[torch.Tensor] = None  # --guard device: skip flags not yet read on the host
        self._unchecked_skips = 0  # skips recorded since the loop last compared them with --max_skips
        self.loss_ema: Optional[float] = None
        self.step = 0
        self.tokens = 0

    # ------------------------------------------------------------------ setup
    def setup(self, meta: Optional[dict[str, Any]] = None) -> None:
        """``meta``: vocabulary and EOS of the caller's own batches (benchmarks, no data folder); else read from data."""
        opts = self.opts
        self.system = resolve_system(opts)
        self.weight_cast = weight_cast(opts, self.system)  # checked here, so --dry_run refuses what build would
        if meta is None and not (opts.dry_run and opts.vocab_size):
            meta = data_meta(opts)
        vocab = meta["vocab_size"] if meta else None
        eos = meta.get("eos_id") if meta else None
        self.config = opts.model_config(vocab, eos)
        if meta:  # also when --vocab_size is explicit: token ids >= vocab would crash inside the embedding
            from lit_gpt.data.loader import check_vocab

            check_vocab(meta, self.config.padded_vocab_size)
        self.plan = make_plan(opts, self.config, self.system)
        self.out_dir = Path(opts.resolved_out_dir)

    def build(self) -> None:
        opts, system = self.opts, self.system
        self.fabric = build_fabric(opts, system)
        self.fabric.launch()
        self.fabric.seed_everything(opts.seed)
        if self.fabric.global_rank == 0:
            check_writable(self.out_dir)
            self._copy_tokenizer()
        # Initialize on the CPU, from the CPU generator: the same seed gives the same weights on a laptop, one GPU,
        # DDP or FSDP (drawing on the device would make the start depend on the launch shape). setup moves it.
        with torch.device("cpu"):
            model = GPT(self.config)
        self.model = parallelize(model, self.fabric, opts, system)
        groups = self._param_groups()
        self.guard_on_device = guard_on_device(opts, system)
        # the fused AdamW (CUDA, and CPU since torch 2.4) clips and skips inside its own kernel (--guard device)
        fused = system.accelerator == "cuda" or self.guard_on_device
        optimizer = adamw_class(opts, system)(groups, lr=self.plan.lr, betas=self.plan.betas, eps=self.plan.eps,
                                              fused=fused)
        self.optimizer = self.fabric.setup_optimizers(optimizer)
        self.working_copies = None
        if self.weight_cast == "optimizer":
            from lit_gpt.training.working_copies import attach

            # the head's weight goes to the fused cross-entropy directly, not through lm_head's forward
            copies = self.working_copies = attach(model, optimizer, skip=[model.lm_head])
            self.fabric.print(f"weight casts: the optimizer writes bf16 copies of {len(copies.modules)} Linear weights "
                              f"({copies.n_params:,} parameters, {copies.nbytes / 1e9:.2f} GB); --weight_cast forward "
                              f"casts per forward")
        self.peak_flops = device_peak_flops(self.fabric.device)

    def _copy_tokenizer(self) -> None:
        """The run folder carries its tokenizer, so evaluation needs nothing but the run folder."""
        import shutil

        data_dir = self.opts.resolved_train_data_dir
        if data_dir is None and self.opts.data_mixture:
            from lit_gpt.data.loader import load_mixture

            data_dir = next(iter(load_mixture(self.opts.data_mixture)))
        source = Path(data_dir, "tokenizer.json") if data_dir else None
        if source is not None and source.exists():
            shutil.copyfile(source, self.out_dir / "tokenizer.json")

    def _param_groups(self) -> list[dict[str, Any]]:
        """μP groups classify by parameter name, so wrapper prefixes (FSDP, AC, Fabric) are stripped first."""
        return param_groups([(clean_name(n), p) for n, p in self.model.named_parameters()], self.plan)

    def build_loaders(self) -> None:
        from lit_gpt.data.loader import build_train_loader, build_val_loader, load_mixture

        opts = self.opts
        mixture = load_mixture(opts.data_mixture) if opts.data_mixture else None
        self.train_loader = build_train_loader(None if mixture else opts.resolved_train_data_dir, mixture,
                                               seq_len=opts.ctx_len, micro_batch=opts.micro_bsz, seed=opts.seed,
                                               num_workers=opts.num_workers)
        val_dir = opts.val_data_dir or (opts.resolved_train_data_dir if not mixture else next(iter(mixture)))
        self.val_loader = build_val_loader(val_dir, seq_len=opts.ctx_len, multiple=opts.val_multiple,
                                           micro_batch=opts.micro_bsz)
        self.val_multiple = getattr(self.val_loader, "multiple", opts.val_multiple)

    def _batches(self) -> Iterator[torch.Tensor]:
        while True:
            for batch in self.train_loader:
                self._check_ids(batch, "training")
                yield batch

    def _check_ids(self, batch: torch.Tensor, split: str) -> None:
        """Token ids must index the embedding (on host tensors only: costs microseconds, never a device sync)."""
        if batch.device.type != "cpu" or batch.numel() == 0:
            return
        top, low = int(batch.max()), int(batch.min())
        if top >= self.config.padded_vocab_size or low < 0:
            from lit_gpt.data import DataError

            raise DataError(f"the {split} data holds token id {top if low >= 0 else low}, outside the model's "
                            f"vocabulary of {self.config.padded_vocab_size}: the data folder's meta.json vocab_size "
                            f"does not match its tokens; prepare the data again (--overwrite) or pass a larger "
                            f"--vocab_size")

    # ------------------------------------------------------------------ checkpoints
    @property
    def sharded_model(self) -> torch.nn.Module:
        """The strategy's module (plain, DDP or FSDP) behind Fabric's wrapper: what state-dict helpers expect."""
        return getattr(self.model, "_forward_module", self.model)

    def model_state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(self.sharded_model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return {clean_name(k): v for k, v in sd.items()}

    def optimizer_state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        sd = get_optimizer_state_dict(self.sharded_model, self.optimizer.optimizer,
                                      options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if "state" not in sd:  # full_state_dict + cpu_offload: only rank 0 receives the gathered state
            return sd
        sd["state"] = {clean_name(k): v for k, v in sd["state"].items()}
        for group in sd["param_groups"]:
            group["params"] = [clean_name(p) for p in group["params"]]
        return sd

    def loader_states(self) -> list[Any]:
        state = self.train_loader.state_dict()
        if self.fabric.world_size == 1:
            return [state]
        gathered: list[Any] = [None] * self.fabric.world_size
        torch.distributed.all_gather_object(gathered, state)
        return gathered

    def _drain_device_skips(self) -> list[int]:
        """The steps the fused optimizer skipped since the last call (--guard device; one host read)."""
        flags = self._skipped_at
        if flags is None:
            return []
        steps = [int(s) - 1 for s in flags[flags > 0].sort().values.tolist()]
        flags.zero_()
        if steps:
            self.fabric.print(f"step(s) {', '.join(map(str, steps))}: skipped in the optimizer (non-finite gradient "
                              f"norm)")
        return steps

    def _record_skips(self, steps: list[int]) -> None:
        self.skips.extend(steps)
        self._unchecked_skips += len(steps)

    def save(self, reason: str = "periodic") -> None:
        from lit_gpt.training.checkpoint import CheckpointError, options_hash, save_checkpoint

        self._record_skips(self._drain_device_skips())  # a checkpoint between log steps still records every skip
        model_sd, optim_sd, loaders = self.model_state(), self.optimizer_state(), self.loader_states()
        if self.fabric.global_rank == 0:
            state = {"model": model_sd, "optimizer": optim_sd, "step": self.step, "tokens": self.tokens,
                     "loader": loaders, "skipped_steps": list(self.skips), "loss_ema": self.loss_ema}
            meta = {"tokens": self.tokens, "options_hash": options_hash(self.opts.model_defining()),
                    "model_options": self.opts.model_defining(), "options": self.opts.to_dict(),
                    "config": self.config.to_dict(), "plan": self.plan.to_dict(), "reason": reason}
            try:
                path = save_checkpoint(self.out_dir, self.step, state, meta=meta, keep_last=self.opts.keep_last)
            except OSError as err:  # full disk, quota, read-only: the unfinished save was removed, older ones kept
                raise CheckpointError(f"cannot save the step-{self.step} checkpoint in {self.out_dir}: "
                                      f"{err.strerror or err}; free space (or lower --keep_last), then --resume auto "
                                      f"continues from the last saved checkpoint") from None
            self.fabric.print(f"saved checkpoint {path} ({reason})")
        self.fabric.barrier()
        self.last_save_time = time.monotonic()

    def restore(self) -> None:
        from lit_gpt.training.checkpoint import (CheckpointError, check_resume_compatible, find_resume_checkpoint,
                                                 load_checkpoint)

        opts = self.opts
        path: Optional[Path] = None
        if opts.resume:
            # rank 0 finds (and hashes) the checkpoint once; every rank gets its path, or the reason there is none
            found: tuple[Optional[str], Optional[str]] = (None, None)
            if self.fabric.global_rank == 0:
                try:
                    found = (self._resume_path(), None)
                except CheckpointError as err:
                    found = (None, str(err))
            path_str, error = self.fabric.broadcast(found, src=0)
            if error is not None:
                raise CheckpointError(error)
            path = Path(path_str) if path_str is not None else None
        if path is not None:
            state, manifest = load_checkpoint(path, verify=self.fabric.global_rank == 0)  # rank 0: cached, no re-hash
            check_resume_compatible(manifest, opts.model_defining())
            self._load_weights(state["model"])
            self._load_optimizer(state["optimizer"])
            self.step, self.tokens = int(state["step"]), int(state["tokens"])
            self.skips = deque(state.get("skipped_steps", []))
            self.loss_ema = state.get("loss_ema")
            loaders = state["loader"]
            if len(loaders) != self.fabric.world_size:
                raise OptionsError(f"checkpoint {path} was written by {len(loaders)} processes but this run has "
                                   f"{self.fabric.world_size}; resume with the same launch shape")
            self.train_loader.load_state_dict(loaders[self.fabric.global_rank])
            self.fabric.print(f"resumed from {path} at step {self.step} ({self.tokens:,} tokens)")
        elif opts.load_dir:
            from lit_gpt.training.checkpoint import load_weights

            src = Path(opts.load_dir)
            if src.is_dir() and (src / "state.pt").exists():
                weights = load_checkpoint(src)[0]["model"]
            elif src.is_dir():
                found = find_resume_checkpoint(src, log=self.fabric.print)
                if found is None:
                    raise OptionsError(f"--load_dir {src}: no intact checkpoint found there")
                weights = load_checkpoint(found)[0]["model"]
            else:
                weights = load_weights(src)
            self._load_weights(weights)
            self.fabric.print(f"loaded weights from {src} (new run: step 0, fresh optimizer)")

    def _resume_path(self) -> Optional[str]:
        """Rank 0: the verified checkpoint folder to resume from (None: start from scratch)."""
        from lit_gpt.training.checkpoint import (CorruptCheckpointError, MANIFEST_NAME, checkpoints_root,
                                                 find_resume_checkpoint, verify_checkpoint)

        if self.opts.resume == "auto":
            path = find_resume_checkpoint(self.out_dir, log=self.fabric.print)
            if path is None:
                self.fabric.print(f"--resume auto: no checkpoint in {self.out_dir}; starting from scratch")
            return None if path is None else str(path)
        path = Path(str(self.opts.resume))
        if not (path / MANIFEST_NAME).exists() and checkpoints_root(path).is_dir():  # a run folder
            found = find_resume_checkpoint(path, log=self.fabric.print)
            if found is None:
                raise CorruptCheckpointError(f"--resume {path}: no intact checkpoint under {checkpoints_root(path)}")
            return str(found)
        ok, reason = verify_checkpoint(path)
        if not ok:
            raise CorruptCheckpointError(f"--resume {path}: checkpoint {path.name} is {reason}")
        return str(path)

    def _load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(self.sharded_model, self._with_wrapper_names(weights),
                             options=StateDictOptions(full_state_dict=True, strict=True))
        if self.working_copies is not None:
            self.optimizer.optimizer.refresh_working_copies()

    def _load_optimizer(self, optim_sd: dict[str, Any]) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        lookup = {clean_name(n): n for n, _ in self.sharded_model.named_parameters()}
        optim_sd = dict(optim_sd)
        optim_sd["state"] = {lookup.get(k, k): v for k, v in optim_sd["state"].items()}
        optim_sd["param_groups"] = [dict(g, params=[lookup.get(p, p) for p in g["params"]])
                                    for g in optim_sd["param_groups"]]
        set_optimizer_state_dict(self.sharded_model, self.optimizer.optimizer, optim_sd,
                                 options=StateDictOptions(full_state_dict=True))

    def _with_wrapper_names(self, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        names = {clean_name(k): k for k in get_model_state_dict(self.sharded_model).keys()}
        return {names.get(k, k): v for k, v in weights.items()}

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean loss over the first j·T tokens of each validation row, j = 1..k (length extrapolation)."""
        self.model.eval()
        T, k = self.opts.ctx_len, self.val_multiple
        sums = torch.zeros(k, device=self.fabric.device, dtype=torch.float64)
        counts = torch.zeros(k, device=self.fabric.device, dtype=torch.float64)
        for i, batch in enumerate(self.val_loader):
            if i >= self.opts.eval_iters:
                break
            self._check_ids(batch, "validation")
            batch = batch.to(self.fabric.device, non_blocking=True).long()
            x, y = batch[:, :-1], batch[:, 1:]
            losses = self.model(x, targets=y, loss_reduction="none").loss  # [B, k·T]
            cum = losses.double().sum(0).cumsum(0)
            for j in range(k):
                end = min((j + 1) * T, losses.shape[1])
                sums[j] += cum[end - 1]
                counts[j] += end * losses.shape[0]
        sums = self.fabric.all_reduce(sums, reduce_op="sum")
        counts = self.fabric.all_reduce(counts, reduce_op="sum")
        self.model.train()
        values = (sums / counts.clamp(min=1)).tolist()
        result = {f"val_loss_{j + 1}x": v for j, v in enumerate(values) if counts[j] > 0}
        result["val_loss"] = result.get("val_loss_1x", float("nan"))
        return result

    # ------------------------------------------------------------------ the loop
    def _install_signal_handlers(self) -> None:
        def request_stop(signum, _frame):
            self.stop_requested = True
            print(f"received signal {signum}: checkpointing at the next step boundary", file=sys.stderr, flush=True)

        for sig in (signal.SIGTERM, getattr(signal, "SIGUSR1", None)):
            if sig is not None:
                signal.signal(sig, request_stop)

    def _guard(self, loss: float, grad_norm: float) -> Optional[str]:
        """Why this step should be skipped, or None."""
        opts = self.opts
        if opts.skip_nonfinite and not (math.isfinite(loss) and math.isfinite(grad_norm)):
            return f"non-finite loss/grad (loss {loss}, grad norm {grad_norm})"
        if opts.spike_threshold and self.loss_ema is not None and loss > opts.spike_threshold * self.loss_ema:
            return f"loss spike ({loss:.4f} > {opts.spike_threshold} x average {self.loss_ema:.4f})"
        return None

    def forward_backward(self, batches: Iterator[torch.Tensor], lr: float) -> StepResult:
        """One optimizer step's gradients: grad-accumulated micro steps, then clipping (on the device, arming the
        fused optimizer to clip and to skip a non-finite step, or through Fabric on the host path)."""
        fabric, model, optimizer, opts = self.fabric, self.model, self.optimizer, self.opts
        ga = self.plan.grad_accum_steps
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]
        step_loss = torch.zeros((), device=fabric.device)
        for micro in range(ga):
            batch = next(batches).to(fabric.device, non_blocking=True).long()
            x, y = batch[:, :-1], batch[:, 1:]
            sync = nullcontext() if micro == ga - 1 else fabric.no_backward_sync(model)
            # micro steps after the first sum their weight gradients in the GEMMs; not the one DDP reduces, whose
            # hooks need autograd to deliver every gradient
            accumulate = self.working_copies is not None and micro > 0 and (micro < ga - 1 or fabric.world_size == 1)
            with sync, self.working_copies.accumulating() if accumulate else nullcontext():
                loss = model(x, targets=y, label_smoothing=opts.label_smoothing).loss
                fabric.backward(loss / ga)
            step_loss += loss.detach() / ga
        if self.guard_on_device:
            from lit_gpt.kernels.fused_ops import clip_and_guard_

            norm, found_inf = clip_and_guard_(optimizer, model.parameters(), self.plan.grad_clip,
                                              skip_nonfinite=opts.skip_nonfinite,
                                              sum_over_shards=self._sum_over_shards())
            skipped = found_inf if opts.skip_nonfinite else torch.zeros_like(found_inf)
            return StepResult(step_loss, norm, skipped=skipped.to(fabric.device))
        grad_norm = fabric.clip_gradients(model, optimizer, max_norm=self.plan.grad_clip, error_if_nonfinite=False)
        return StepResult(step_loss, grad_norm)

    def _sum_over_shards(self):
        """For sharded gradients: sum this rank's squared norm over the shards (None: gradients are replicated)."""
        if self.system.strategy != "fsdp" or self.fabric.world_size == 1:
            return None
        sharding = fsdp_sharding(self.opts, self.system.nodes)
        if sharding == "NO_SHARD":
            return None
        replicas = self.system.nodes if sharding == "HYBRID_SHARD" else 1  # each shard is held once per node
        return lambda sq: reduce_across_ranks(sq, "sum") / replicas  # on the device: no host sync inside the step

    def train_step(self, batches: Iterator[torch.Tensor], lr: float) -> StepResult:
        """One optimizer step exactly as ``train`` runs it (the benchmarks time this): gradients, the guard, the
        optimizer step and zero_grad. The host guard synchronizes once; the device guard never does."""
        fabric, opts, optimizer = self.fabric, self.opts, self.optimizer
        result = self.forward_backward(batches, lr)
        if result.skipped is None and (opts.skip_nonfinite or opts.spike_threshold):
            mean_loss = fabric.all_reduce(result.loss, reduce_op="mean")
            norm = result.grad_norm
            norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # a DTensor under FSDP2
            loss_value, norm_value = float(mean_loss), float(norm)
            result.skip_reason = self._guard(loss_value, norm_value)
            if result.skip_reason is None:
                self.loss_ema = loss_value if self.loss_ema is None else 0.98 * self.loss_ema + 0.02 * loss_value
        if result.skip_reason is None:
            optimizer.step()  # on the device path the kernel itself leaves a skipped step untouched
        optimizer.zero_grad(set_to_none=True)
        return result

    def train(self) -> int:
        opts, plan, fabric = self.opts, self.plan, self.fabric
        optimizer, device = self.optimizer, fabric.device
        run = {"run_name": opts.run_name, "options": opts.to_dict(), "config": self.config.to_dict(),
               "plan": plan.to_dict(), "system": self.system.__dict__, "world_size": fabric.world_size,
               "weight_cast": self.weight_cast}
        recorder = RunRecorder(self.out_dir, run, self.val_multiple, opts.logger) if fabric.global_rank == 0 else None
        fabric.print(f"run {opts.run_name}: {plan.n_params:,} parameters ({plan.n_params_non_embedding:,} "
                     f"non-embedding), {plan.max_steps} steps of {plan.global_batch_tokens:,} tokens, peak lr "
                     f"{plan.lr:.3e}, {self.system.strategy} on {fabric.world_size} x {self.system.accelerator}")
        self._install_signal_handlers()
        throughput = Throughput(plan.flops_per_token, self.peak_flops, fabric.world_size)
        tokens_per_step = plan.global_batch_tokens
        batches = self._batches()
        self.last_save_time = time.monotonic()
        start_time, start_step = time.perf_counter(), self.step
        loss_sum = torch.zeros((), device=device)
        loss_steps = torch.zeros((), device=device)
        # device guard: step s writes s + 1 at s % log_step when the optimizer skipped it; read at log steps and
        # before checkpoints (_drain_device_skips)
        self._skipped_at = torch.zeros(opts.log_step, device=device) if self.guard_on_device else None
        # stop signals and timed saves, agreed by all ranks a few steps late rather than with a host sync per step
        votes = RankVote(device, fabric.world_size)
        profiler = self._profiler()
        status = "finished"
        try:
            while self.step < plan.max_steps:
                lr = plan.lr_at(self.step)
                result = self.train_step(batches, lr)
                newly_skipped = []
                if result.skipped is not None:
                    loss_sum += torch.where(result.skipped > 0, 0.0, result.loss)
                    loss_steps += 1 - result.skipped
                    self._skipped_at[self.step % opts.log_step] = result.skipped * (self.step + 1)
                elif result.skip_reason is None:
                    loss_sum += result.loss
                    loss_steps += 1
                else:
                    newly_skipped.append(self.step)
                    fabric.print(f"step {self.step}: skipped, {result.skip_reason}")
                self.step += 1
                self.tokens += tokens_per_step
                log_now = self.step % opts.log_step == 0 or self.step == plan.max_steps
                if log_now:
                    newly_skipped += self._drain_device_skips()
                self._record_skips(newly_skipped)
                while self.skips and self.skips[0] <= self.step - 100:
                    self.skips.popleft()
                if profiler is not None:
                    profiler.step()
                too_many = self._unchecked_skips and len(self.skips) > opts.max_skips
                self._unchecked_skips = 0
                if too_many:
                    self.save("too many skipped steps")
                    raise TrainingStopped(f"{len(self.skips)} of the last 100 steps were skipped (limit --max_skips "
                                          f"{opts.max_skips}); stopped with a checkpoint at step {self.step}. Lower the "
                                          f"learning rate or inspect the data, then --resume auto")
                row: dict[str, Any] = {}
                if log_now:
                    mean = fabric.all_reduce(loss_sum / loss_steps.clamp(min=1), reduce_op="mean").item()
                    mean = mean if loss_steps.item() > 0 else float("nan")  # every step of the window was skipped
                    loss_sum.zero_()
                    loss_steps.zero_()
                    rate, mfu = throughput.measure(self.tokens)
                    mem = torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None
                    elapsed = time.perf_counter() - start_time
                    eta = elapsed / max(self.step - start_step, 1) * (plan.max_steps - self.step)
                    row.update(step=self.step, tokens=self.tokens, flops=plan.flops_per_token * self.tokens,
                               train_loss=mean, lr=lr, tokens_per_sec=rate, mfu=mfu, max_mem_gb=mem, elapsed_s=elapsed)
                    fabric.print(live_line(self.step, plan.max_steps, mean, rate, mfu, mem, lr, eta))
                if self.step % opts.eval_step == 0 or self.step == plan.max_steps:
                    values = self.validate()
                    row.update(values, step=self.step, tokens=self.tokens, flops=plan.flops_per_token * self.tokens)
                    shown = ", ".join(f"{k[9:]} {v:.4f}" for k, v in values.items() if k.startswith("val_loss_"))
                    fabric.print(f"step {self.step}: validation loss {values['val_loss']:.4f} ({shown})")
                if row and recorder is not None:
                    recorder.log(row)
                    recorder.update(step=self.step, tokens=self.tokens)
                time_to_save = (opts.save_interval_minutes is not None
                                and time.monotonic() - self.last_save_time > 60 * opts.save_interval_minutes)
                stop, save_due = votes(self.stop_requested, time_to_save)
                if stop:
                    self.save("signal")
                    status = "preempted"
                    fabric.print(f"stopped at step {self.step} on a signal; resume with --resume auto")
                    break
                if self.step % opts.save_step == 0 or self.step == plan.max_steps or save_due:
                    self.save("final" if self.step == plan.max_steps else "periodic")
                    votes.clear()  # votes cast before this save would ask for it again
        except TrainingStopped:
            status = "stopped"
            raise
        except BaseException:
            status = "failed"
            raise
        finally:
            if profiler is not None:
                profiler.__exit__(None, None, None)
            if recorder is not None:
                try:
                    recorder.close(status)
                except OSError as err:  # e.g. a full disk: keep the error that stopped the run, not this one
                    if status in ("finished", "preempted"):
                        raise
                    print(f"warning: could not record status {status!r} in run.json: {err}", file=sys.stderr)
        return 0

    def _profiler(self):
        if not self.opts.profile:
            return None
        from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        trace_dir = self.out_dir / "profile"
        prof = profile(activities=activities, schedule=schedule(wait=1, warmup=1, active=self.opts.profile, repeat=1),
                       on_trace_ready=tensorboard_trace_handler(str(trace_dir)), record_shapes=True)
        prof.__enter__()
        return prof

    def validate_only(self) -> int:
        values = self.validate()
        self.fabric.print(json.dumps(values))
        if self.fabric.global_rank == 0:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "validation.json").write_text(json.dumps(values, indent=2))
        return 0


def run(opts: RunOptions) -> int:
    trainer = Trainer(opts)
    trainer.setup()
    if trainer.opts.dry_run:
        from lit_gpt import planner

        report = dry_run_report(trainer.opts, trainer.config, trainer.plan, trainer.system)
        estimates = planner.report_for(trainer.plan, trainer.config, trainer.system, trainer.opts)
        report["estimates"] = {k: v for k, v in estimates.items() if k in ("memory", "time", "warnings")}
        print(planner.render(trainer.plan, trainer.config, trainer.system, trainer.opts), file=sys.stderr)
        print(json.dumps(report, indent=2, default=str))  # stdout stays one JSON object
        return 0
    trainer.build()
    trainer.build_loaders()
    trainer.restore()
    if trainer.opts.validation_only:
        return trainer.validate_only()
    return trainer.train()
