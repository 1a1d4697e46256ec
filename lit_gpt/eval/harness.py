"""lm-evaluation-harness adapter: a litscale checkpoint as an lm-eval model named ``ArchScale`` (alias ``litscale``).

Importing this module imports ``lm_eval`` (it is the only module that does); ``import lit_gpt`` never needs it.
Call :func:`register` to add the model to lm-eval's registry (``eval.py`` does that, then runs lm-eval's CLI).

``--model_args`` understood: ``pretrained`` (run folder, checkpoint folder, export folder or weights file),
``config`` (optional check/override, see :func:`lit_gpt.inference.load_model`), ``tokenizer`` (override),
``max_length`` (context window; default the training length), ``dtype`` (``auto``: bf16 on CUDA, fp32 on CPU),
``batch_size`` (also ``--batch_size``), ``max_gen_toks`` (default 256), ``prefix_eos`` (prepend EOS to every
request; default False, lm-eval's usual behaviour), ``allow_extrapolation`` (allow max_length beyond the training
length of RoPE models), ``seed`` (sampling). Unknown lm-eval extras (``trust_remote_code``, ...) are accepted.

Data parallel: under ``accelerate launch --multi_gpu --num_processes N`` / ``torchrun --nproc_per_node N``
(``WORLD_SIZE`` > 1) each process loads the model on ``cuda:LOCAL_RANK`` (NCCL), or on the CPU (gloo) with
``--device cpu`` or without CUDA, and lm-eval's evaluator gives each rank its share of the requests and gathers the
metrics on rank 0; this class provides the rank, world size and collectives it needs. Note that
``accelerate launch --cpu --num_processes N`` starts ONE process unless ``--mpirun_hostfile`` is given (accelerate's
multi-CPU launch goes through ``mpirun``); on one CPU machine use ``--multi_gpu`` (torchrun) with ``--device cpu``.
"""

from __future__ import annotations

import atexit
import logging
import os
from typing import Any, Optional

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from lit_gpt.eval.scoring import extrapolation_problem, generate, score_continuations
from lit_gpt.inference import load_model

log = logging.getLogger(__name__)
MODEL_NAMES = ("ArchScale", "litscale")


def _bool(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "y", "on")
    return bool(v)


def _env_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return default


def _launch_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) set by the launcher: torchrun / ``accelerate launch --multi_gpu`` (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``) or MPI, which ``accelerate launch --cpu --mpirun_hostfile`` uses (Open MPI,
    Intel MPI / MPICH, MVAPICH variables, as accelerate reads them). (1 process when none is set.)"""
    world = _env_int(("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"), 1)
    rank = _env_int(("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK"), 0)
    local = _env_int(("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK"),
                     rank)
    return rank, world, local


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            pass


class LitScaleLM(TemplateLM):
    """lm-eval LM over :func:`lit_gpt.inference.load_model`."""

    def __init__(self, pretrained: str, config: Optional[str] = None, tokenizer: Optional[str] = None,
                 max_length: Optional[int] = None, dtype: str = "auto", batch_size: Any = 1,
                 max_batch_size: Optional[int] = None, device: Optional[str] = None, max_gen_toks: int = 256,
                 prefix_eos: Any = False, allow_extrapolation: Any = False, seed: int = 1234, **extra: Any):
        super().__init__()
        unquote = lambda v: v.strip().strip("'\"") if isinstance(v, str) else v  # noqa: E731
        pretrained, config, tokenizer = unquote(pretrained), unquote(config), unquote(tokenizer)
        if extra:
            log.info("ArchScale model: ignoring model args %s", sorted(extra))
        rank, world, local = _launch_env()
        if world > 1:
            device = self._init_distributed(device, rank, world, local)
        elif _bool(os.environ.get("ACCELERATE_USE_CPU", "false")) and "MASTER_PORT" in os.environ:
            # accelerate's simple launcher sets MASTER_* only for --num_processes > 1, yet starts one process
            log.warning("ArchScale model: `accelerate launch --cpu --num_processes N` starts a single process "
                        "(accelerate launches several CPU processes only through mpirun, --mpirun_hostfile); "
                        "this process evaluates everything. For N CPU processes on one machine use "
                        "`accelerate launch --multi_gpu --num_processes N eval.py ... --device cpu` or torchrun.")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self._device = torch.device(device)
        self.model, self.config, self.tok, self.info = load_model(pretrained, self._device, dtype,
                                                                   config_override=config, tokenizer=tokenizer)
        for note in self.info.notes:
            log.warning("ArchScale model: %s", note)
        self._max_length = int(max_length) if max_length else int(self.config.block_size)
        problem = extrapolation_problem(self.config, self._max_length)
        if problem and not _bool(allow_extrapolation):
            raise ValueError(problem.replace("--allow_extrapolation (allow_extrapolation=True)",
                                             "model_args allow_extrapolation=True"))
        if isinstance(batch_size, str) and batch_size.startswith("auto"):
            log.warning("ArchScale model: batch_size=auto is not supported; using %d", max_batch_size or 8)
            batch_size = max_batch_size or 8
        self.batch_size = max(1, int(batch_size))
        self.max_gen_toks = int(max_gen_toks)
        self.prefix_eos = _bool(prefix_eos)
        self.seed = int(seed)
        log.info("ArchScale model: %s (%s, step %s) from %s, max_length %d, %s on %s", self.config.name,
                 self.config.parameterization, self.info.step, self.info.checkpoint, self._max_length,
                 next(self.model.parameters()).dtype, self._device)

    def _init_distributed(self, device: Optional[str], rank: int, world: int, local: int) -> str:
        """One process of a data-parallel launch: pick this rank's device and join (or reuse) the process group.

        CUDA: ``cuda:LOCAL_RANK`` (modulo the visible devices) and NCCL; CPU (``--device cpu``, ``accelerate launch
        --cpu`` or no CUDA): gloo. Ranks come from the launcher's environment (see :func:`_launch_env`)."""
        import torch.distributed as dist

        use_cpu = (not torch.cuda.is_available() or (device is not None and str(device).startswith("cpu"))
                   or _bool(os.environ.get("ACCELERATE_USE_CPU", "false")))
        if use_cpu:
            device = "cpu"
        else:
            index = local % torch.cuda.device_count()
            torch.cuda.set_device(index)
            device = f"cuda:{index}"
        if not dist.is_initialized():
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", "29500")
            backend = "gloo" if use_cpu else "nccl"
            kwargs = {} if use_cpu else {"device_id": torch.device(device)}
            dist.init_process_group(backend, rank=rank, world_size=world, **kwargs)
            atexit.register(_destroy_process_group)
        self._rank, self._world_size = dist.get_rank(), dist.get_world_size()
        if self._world_size != world:
            log.warning("ArchScale model: launcher says %d processes, process group has %d", world, self._world_size)
        log.info("ArchScale model: rank %d of %d on %s", self._rank, self._world_size, device)
        return device

    # ------------------------------------------------------------------ lm-eval plumbing
    @property
    def eot_token_id(self) -> int:
        return self.tok.eos_id

    @property
    def prefix_token_id(self) -> int:
        return self.tok.bos_id if self.tok.bos_id is not None else self.tok.eos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return str(self.info.tokenizer_path)

    def tok_encode(self, string: str, add_special_tokens: Optional[bool] = None, **kwargs: Any) -> list[int]:
        ids = self.tok.encode(string)
        if self.prefix_eos and add_special_tokens is not False:
            ids = [self.prefix_token_id] + ids
        return ids

    def tok_decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids)

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return tensor
        import torch.distributed as dist

        t = tensor.reshape(1) if tensor.dim() == 0 else tensor
        out = [torch.zeros_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t)
        return torch.cat(out)

    def gather_object(self, obj: Any, dst: int = 0) -> Optional[list[Any]]:
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out if self.rank == dst else None

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    # ------------------------------------------------------------------ requests
    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        pairs = [(ctx, cont) for _, ctx, cont in requests]
        bar = tqdm(total=len(pairs), desc="loglikelihood", disable=disable_tqdm or self.rank != 0)
        out = score_continuations(self.model, pairs, max_length=self.max_length, batch_size=self.batch_size,
                                  pad_id=self.tok.eos_id, progress=bar.update)
        bar.close()
        for (key, _, _), res in zip(requests, out):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, res)
        return out

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """Whole-document log-likelihood with lm-eval's rolling windows (each token predicted once)."""
        windows, owners = [], []
        for n, req in enumerate(requests):
            (text,) = req.args
            tokens = self.tok.encode(text)
            for win in get_rolling_token_windows(tokens, prefix_token=self.prefix_token_id,
                                                 max_seq_len=self.max_length, context_len=1):
                windows.append(make_disjoint_window(win))
                owners.append(n)
        bar = tqdm(total=len(windows), desc="loglikelihood_rolling", disable=disable_tqdm or self.rank != 0)
        scores = score_continuations(self.model, windows, max_length=self.max_length, batch_size=self.batch_size,
                                     pad_id=self.tok.eos_id, progress=bar.update)
        bar.close()
        totals = [0.0] * len(requests)
        for n, (s, _) in zip(owners, scores):
            totals[n] += s
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        results: list[Optional[str]] = [None] * len(requests)
        # requests with the same generation settings are decoded together
        by_kwargs: dict[str, list[int]] = {}
        for n, req in enumerate(requests):
            by_kwargs.setdefault(repr(sorted(req.args[1].items())), []).append(n)
        bar = tqdm(total=len(requests), desc="generate_until", disable=disable_tqdm or self.rank != 0)
        for members in by_kwargs.values():
            kw = dict(requests[members[0]].args[1])
            until = kw.pop("until", None) or []
            if isinstance(until, str):
                until = [until]
            eos_text = self.tok.decode([self.eot_token_id])
            if eos_text and eos_text not in until:
                until = [*until, eos_text]
            max_gen = int(kw.pop("max_gen_toks", kw.pop("max_new_tokens", self.max_gen_toks)))
            temperature = float(kw.pop("temperature", 0.0) or 0.0)
            if not _bool(kw.pop("do_sample", temperature > 0)):
                temperature = 0.0
            top_k = kw.pop("top_k", None)
            top_p = kw.pop("top_p", None)
            budget = max(1, self.max_length - max_gen)
            prompts = []
            for n in members:
                ids = self.tok_encode(requests[n].args[0])
                prompts.append((ids or [self.prefix_token_id])[-budget:])

            def stop(i: int, generated: list[int], _until=until) -> bool:
                text = self.tok.decode(generated)
                return any(u in text for u in _until if u)

            outs = generate(self.model, prompts, max_new_tokens=max_gen, batch_size=self.batch_size,
                            eos_id=self.eot_token_id, stop=stop, temperature=temperature,
                            top_k=int(top_k) if top_k else None, top_p=float(top_p) if top_p else None,
                            seed=self.seed, progress=bar.update)
            for n, gen in zip(members, outs):
                text = self.tok.decode(gen)
                for u in until:
                    if u and u in text:
                        text = text[:text.index(u)]
                results[n] = text
                self.cache_hook.add_partial("generate_until", requests[n].args, text)
        bar.close()
        return results  # type: ignore[return-value]


_REGISTERED = False


def register() -> type:
    """Register ``LitScaleLM`` with lm-eval as ``ArchScale`` and ``litscale`` (idempotent)."""
    global _REGISTERED
    if not _REGISTERED:
        register_model(*MODEL_NAMES)(LitScaleLM)
        _REGISTERED = True
    return LitScaleLM
