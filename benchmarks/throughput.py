"""Training-step throughput of the real ``Trainer`` (what pretrain runs), optionally against the HF Llama peer.

    python benchmarks/throughput.py --train_model transformer --depth 16 --ctx_len 4096 --micro_bsz 2 \\
        --variants base,fast --peer hf_llama --json out.json
    python benchmarks/throughput.py --cpu            # seconds on a laptop: tiny model, no compile

Each variant builds a fresh ``Trainer`` from ``RunOptions`` (no data folder: a synthetic stream of random tokens
in pinned host memory, like the loader's), then times exactly ``Trainer.train_step`` (gradients, clipping, the
guard, ``optimizer.step``, ``zero_grad``). A variant is a ``+``-joined set of tokens:

    base           the step as pretrain runs it today (on CUDA: the guard inside the fused AdamW, ``--guard device``)
    host_guard     ``--guard host``: clipping through Fabric and the non-finite check on the host (one sync per step)
    no_guard       no non-finite guard (``--skip_nonfinite false``)
    fused_ce       head cross-entropy through kernels/fused_ops.py (bf16 GEMMs + one compiled pass per chunk)
    dense_ce       full logits + F.cross_entropy;  chunked_ce: the eager chunked autograd Function
    fused_clip     ``--guard device``: clipping and the non-finite guard inside the fused AdamW kernel (no sync)
    expand_kv      GQA keys/values expanded to all heads before SDPA (instead of ``enable_gqa``)
    cudnn_attn     SDPA backend priority cuDNN > flash > efficient > math
    model_compile  torch.compile of the whole model instead of each Block (implies dense_ce unless given)
    no_compile     eager;   ac: activation checkpointing per Block
    fast           = fused_ce+fused_clip
    torch_adamw    torch's fused multi-tensor AdamW;  triton_adamw: kernels/adamw.py (``--adamw_kernel``; auto = triton
                   on CUDA)
    forward_cast   autocast casts the fp32 weights at every forward;  optimizer_cast: the Triton AdamW writes bf16
                   working copies (``--weight_cast``; auto = optimizer on CUDA)
    plain_swiglu   SwiGLU's backward as autograd/inductor write it (``LITSCALE_SWIGLU_TRITON=0``) instead of the
                   one-pass Triton kernel of kernels/swiglu.py
    autograd_accum with --grad_accum > 1: autograd adds each micro step's weight gradients to .grad instead of the
                   weight-gradient GEMMs adding into the gradient so far (training/working_copies.py)

``hf_llama`` in ``--variants`` (or ``--peer hf_llama``, appended last) runs the peer in the same process after our
model is freed. Results print as a table and as JSON lines; ``--json`` keeps them all (rewritten after each).
MFU: FLOPs per token from ``lit_gpt.scaling.flops_per_token`` (SPEC §6) and from the shared anchors' formula
6·(params − embedding) + 6·L·w·T, both over 989 TF/s (H100/H200 dense bf16).

``--profile_steps N [--profile_dir DIR]``: after a variant's timed steps, N more under torch.profiler, and a breakdown
of the step's kernel time (idle gap, categories, phases, gemm TF/s, top kernels; benchmarks/profile_breakdown.py).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import sys
import tempfile
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.hf_llama_peer import PEAK_BF16, anchor_flops_per_token  # noqa: E402
from benchmarks.timing import environment, peak_memory_gb, time_steps  # noqa: E402

TOKENS = ("base", "host_guard", "no_guard", "fused_ce", "dense_ce", "chunked_ce", "fused_clip", "expand_kv", "cudnn_attn",
          "model_compile", "no_compile", "ac", "fast", "torch_adamw", "triton_adamw", "forward_cast", "optimizer_cast",
          "plain_swiglu", "autograd_accum")
PEERS = ("hf_llama",)
CPU_DEFAULTS = dict(depth=2, ar=32, ctx_len=64, micro_bsz=2, steps=3, warmup=1)
GPU_DEFAULTS = dict(depth=16, ar=None, ctx_len=4096, micro_bsz=2, steps=10, warmup=3)


@dataclass
class Variant:
    name: str
    ce: Optional[str] = None  # None: the default choice of kernels/cross_entropy.py
    guard: bool = True
    guard_on: str = "auto"  # RunOptions.guard
    expand_kv: bool = False
    cudnn_attn: bool = False
    compile: str = "blocks"  # blocks | model | none
    ac: bool = False
    adamw: str = "auto"  # RunOptions.adamw_kernel
    weight_cast: str = "auto"  # RunOptions.weight_cast
    plain_swiglu: bool = False
    autograd_accum: bool = False
    tokens: list[str] = field(default_factory=list)

    def trace_key(self) -> tuple:
        """What changes the traced code: when it differs from the previous variant, dynamo's caches are reset."""
        return (self.expand_kv, self.cudnn_attn, self.compile, self.ac, self.plain_swiglu)


def parse_variant(name: str, compile_default: bool, ac_default: bool) -> Variant:
    tokens = [t for t in name.split("+") if t]
    unknown = [t for t in tokens if t not in TOKENS]
    if unknown or not tokens:
        raise SystemExit(f"unknown variant token(s) {unknown or [name]} in {name!r}; valid: {', '.join(TOKENS)} "
                         f"(join with '+'), or a peer: {', '.join(PEERS)}")
    v = Variant(name=name, compile="blocks" if compile_default else "none", ac=ac_default, tokens=tokens)
    for t in tokens:
        if t == "fast":
            v.ce, v.guard_on = v.ce or "fused", "device"
        elif t == "no_guard":
            v.guard = False
        elif t == "host_guard":
            v.guard_on = "host"
        elif t.endswith("_ce"):
            v.ce = t[:-3]
        elif t == "fused_clip":
            v.guard_on = "device"
        elif t == "expand_kv":
            v.expand_kv = True
        elif t == "cudnn_attn":
            v.cudnn_attn = True
        elif t == "model_compile":
            v.compile = "model"
        elif t == "no_compile":
            v.compile = "none"
        elif t == "ac":
            v.ac = True
        elif t.endswith("_adamw"):
            v.adamw = t[:-6]
        elif t.endswith("_cast"):
            v.weight_cast = t[:-5]
        elif t == "plain_swiglu":
            v.plain_swiglu = True
        elif t == "autograd_accum":
            v.autograd_accum = True
    if v.compile == "model" and v.ce is None:
        v.ce = "dense"
    return v


# ------------------------------------------------------------------------------------------ patches
@contextlib.contextmanager
def env_var(name: str, value: Optional[str]):
    old = os.environ.get(name)
    if value is not None:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


@contextlib.contextmanager
def expanded_kv(enabled: bool):
    """Expand GQA keys/values to all query heads before ``lit_gpt.layers.attention.attention`` (benchmark only)."""
    if not enabled:
        yield
        return
    import lit_gpt.layers.attention as attn_mod

    original = attn_mod.attention

    def attention(q, k, v, *args, **kwargs):
        h, g = q.shape[1], k.shape[1]
        if h != g and k.shape[2] == q.shape[2]:
            b, _, t, d = k.shape
            k = k[:, :, None].expand(b, g, h // g, t, d).reshape(b, h, t, d)
            v = v[:, :, None].expand(b, g, h // g, t, v.shape[-1]).reshape(b, h, t, v.shape[-1])
        return original(q, k, v, *args, **kwargs)

    attn_mod.attention = attention
    try:
        yield
    finally:
        attn_mod.attention = original


@contextlib.contextmanager
def cudnn_first(enabled: bool):
    if not enabled:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    order = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    with sdpa_kernel(order, set_priority=True):
        yield


# ------------------------------------------------------------------------------------------ data
def synthetic_batches(vocab: int, micro_bsz: int, ctx_len: int, device: torch.device, seed: int = 0,
                      distinct: int = 4) -> Iterator[torch.Tensor]:
    """Rows of ctx_len + 1 random token ids (int32, pinned on CUDA hosts), like the litdata loader yields."""
    gen = torch.Generator().manual_seed(seed)
    rows = [torch.randint(0, vocab, (micro_bsz, ctx_len + 1), generator=gen, dtype=torch.int32)
            for _ in range(distinct)]
    if device.type == "cuda":
        rows = [r.pin_memory() for r in rows]
    while True:
        yield from rows


# ------------------------------------------------------------------------------------------ one run of ours
def run_ours(args: argparse.Namespace, variant: Variant, work_dir: Path) -> dict[str, Any]:
    from lit_gpt.scaling import count_parameters
    from lit_gpt.training.loop import Trainer
    from lit_gpt.training.options import RunOptions

    out_dir = Path(tempfile.mkdtemp(prefix="tp_", dir=work_dir))
    tokens_per_step = args.micro_bsz * args.ctx_len * args.grad_accum
    opts = RunOptions(train_model=args.train_model, depth=args.depth, ar=args.ar, vocab_size=args.vocab_size,
                      train_name=args.train_name, ctx_len=args.ctx_len, micro_bsz=args.micro_bsz,
                      total_bsz=tokens_per_step, max_steps=args.warmup + args.steps + args.profile_steps + 1,
                      out_dir=str(out_dir), train_data_dir=str(out_dir), devices=1, strategy="single",
                      precision=args.precision, compile=variant.compile == "blocks",
                      activation_checkpointing=variant.ac, skip_nonfinite=variant.guard, guard=variant.guard_on,
                      adamw_kernel=variant.adamw, weight_cast=variant.weight_cast, seed=args.seed, num_workers=0)
    with contextlib.ExitStack() as stack:
        stack.enter_context(env_var("LITSCALE_CE_IMPL", variant.ce))
        stack.enter_context(env_var("LITSCALE_SWIGLU_TRITON", "0" if variant.plain_swiglu else None))
        stack.enter_context(expanded_kv(variant.expand_kv))
        stack.enter_context(cudnn_first(variant.cudnn_attn))
        trainer = Trainer(opts)
        trainer.setup(meta={"vocab_size": args.vocab_size, "eos_id": None})
        device = torch.device("cuda") if trainer.system.accelerator == "cuda" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        mem_before = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        trainer.build()
        if variant.autograd_accum and trainer.working_copies is not None:
            trainer.working_copies.accumulating = contextlib.nullcontext
        if variant.compile == "model":
            trainer.model._forward_module.compile()
        config, plan, fabric, optimizer = trainer.config, trainer.plan, trainer.fabric, trainer.optimizer
        batches = synthetic_batches(config.vocab_size, args.micro_bsz, args.ctx_len, device, seed=args.seed)
        loss_sum = torch.zeros((), device=device)
        counter = {"step": 0, "skipped": 0}

        def step() -> torch.Tensor:
            result = trainer.train_step(batches, plan.lr_at(counter["step"]))
            if result.skip_reason is None:
                loss_sum.add_(result.loss)
            else:
                counter["skipped"] += 1
            counter["step"] += 1
            return result.loss

        graphs_before = dynamo_counts()
        timing = time_steps(step, steps=args.steps, warmup=args.warmup, device=device)
        final_loss = float(timing["last"])
        graphs_after = dynamo_counts()
        n_params = sum(p.numel() for p in trainer.model.parameters())
        counts = count_parameters(config)
        result = summarize(args, variant.name, "ours", timing, tokens_per_step, device, n_params,
                           plan.flops_per_token,
                           anchor_flops_per_token(counts.total, counts.embedding, config.n_layer, config.n_embd,
                                                  args.ctx_len))
        result.update(variant=asdict(variant), final_loss=round(final_loss, 4), skipped_steps=counter["skipped"],
                      model=config.name, ce_impl=variant.ce or "default", compile=variant.compile,
                      mem_before_gb=round(mem_before / 1e9, 2),
                      dynamo={k: graphs_after[k] - graphs_before[k] for k in graphs_after})
        if args.profile_steps:
            result["profile"] = profile_ours(args, variant, trainer, step, device, tokens_per_step, result["step_ms"])
        if args.planner:
            try:
                result["planner"] = planner_estimate(trainer.opts, config, args.micro_bsz, args.ctx_len,
                                                     trainer.system.accelerator, variant.ac)
            except Exception as err:
                result["planner"] = {"error": f"{type(err).__name__}: {err}"}
        del trainer, batches, optimizer, fabric, step, timing
    shutil.rmtree(out_dir, ignore_errors=True)
    return result


def profile_ours(args, variant: Variant, trainer: Any, step, device: torch.device, tokens: int,
                 step_ms: float) -> dict[str, Any]:
    """``--profile_steps``: the breakdown of benchmarks/profile_breakdown.py for this variant's (warm) step; a failure
    is recorded in the row instead of discarding the variant's timing."""
    from benchmarks import profile_breakdown as pb
    from lit_gpt.kernels import cross_entropy, fused_ops

    marks = [(trainer.fabric, "clip_gradients", pb.CLIP_MARK), (fused_ops, "clip_and_guard_", pb.CLIP_MARK)]
    if variant.compile != "model":  # the head's loss runs eagerly after the compiled Blocks
        marks.append((cross_entropy, "linear_cross_entropy", pb.HEAD_MARK))
    linear = sum(m.weight.numel() for m in trainer.model.modules() if isinstance(m, torch.nn.Linear))
    try:
        return pb.profile_steps(step, args.profile_steps, device, name=variant.name, tokens=tokens,
                                model_flops=trainer.plan.flops_per_token * tokens, linear_weights=linear,
                                step_ms=step_ms, peak_flops=PEAK_BF16 if device.type == "cuda" else None, marks=marks,
                                out_dir=args.profile_dir)
    except Exception as err:
        print(traceback.format_exc(), file=sys.stderr, flush=True)
        return {"error": f"{type(err).__name__}: {err}"}


def dynamo_counts() -> dict[str, int]:
    """Compiled graphs and graph breaks so far (a variant's delta shows recompiles and fallbacks)."""
    from torch._dynamo.utils import counters

    return {"unique_graphs": int(counters["stats"]["unique_graphs"]),
            "graph_breaks": int(sum(counters["graph_break"].values()))}


def planner_estimate(options: Any, config: Any, micro_bsz: int, ctx_len: int, accelerator: str,
                     activation_checkpointing: bool) -> dict[str, Any]:
    """The planner's per-device memory estimate for this run (``lit_gpt.planner.memory_estimate``), in GB."""
    try:
        from lit_gpt.planner import assumptions_from_options, memory_estimate
    except ImportError as err:
        return {"estimate_gb": None, "note": f"no planner ({err})"}
    assumptions = assumptions_from_options(options, accelerator=accelerator,
                                           activation_checkpointing=activation_checkpointing)
    est = memory_estimate(config, micro_bsz, ctx_len, assumptions)
    total = est["total_with_checkpointing"] if activation_checkpointing else est["total"]
    return {"estimate_gb": round(total / 1e9, 3), "terms_gb": {k: round(v / 1e9, 3) for k, v in est["bytes"].items()},
            "source": "lit_gpt.planner.memory_estimate"}


def summarize(args, name: str, kind: str, timing: dict, tokens_per_step: int, device: torch.device, n_params: int,
              fpt_spec: float, fpt_anchor: float) -> dict[str, Any]:
    tok = tokens_per_step / timing["step_s"]
    peak = PEAK_BF16 if device.type == "cuda" else None
    return dict(name=name, kind=kind, depth=args.depth, ctx_len=args.ctx_len, micro_bsz=args.micro_bsz,
                grad_accum=args.grad_accum, steps=args.steps, warmup=args.warmup, params=n_params,
                step_ms=round(timing["step_s"] * 1e3, 2), median_step_ms=round(timing["median_step_s"] * 1e3, 2),
                tokens_per_s=round(tok, 1), mfu_spec=None if peak is None else round(tok * fpt_spec / peak, 4),
                mfu_anchor=None if peak is None else round(tok * fpt_anchor / peak, 4),
                flops_per_token_spec=fpt_spec, flops_per_token_anchor=fpt_anchor, peak_mem_gb=peak_memory_gb(device),
                warmup_s=round(timing["warmup_s"], 1))


def run_hf_peer(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from benchmarks.hf_llama_peer import run_peer
    from lit_gpt.training.options import RunOptions

    if args.grad_accum != 1:
        raise RuntimeError("the HF peer runs one micro batch per step; use --grad_accum 1")
    opts = RunOptions(train_model=args.train_model, depth=args.depth, ar=args.ar, vocab_size=args.vocab_size,
                      train_name=args.train_name, ctx_len=args.ctx_len, micro_bsz=args.micro_bsz).resolve()
    config = opts.model_config(args.vocab_size)
    return run_peer(config, micro_bsz=args.micro_bsz, ctx_len=args.ctx_len, steps=args.steps, warmup=args.warmup,
                    compile=args.compile and device.type == "cuda", device=device)


def free_memory(reset_dynamo: bool) -> None:
    gc.collect()
    if reset_dynamo:
        torch._dynamo.reset()
        gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ------------------------------------------------------------------------------------------ driver
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Training-step throughput of the real Trainer, optionally vs HF Llama",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--train_model", default="transformer")
    p.add_argument("--depth", type=int, default=None)
    p.add_argument("--ar", type=int, default=None)
    p.add_argument("--ctx_len", type=int, default=None)
    p.add_argument("--micro_bsz", type=int, default=None)
    p.add_argument("--grad_accum", type=int, default=1)
    p.add_argument("--vocab_size", type=int, default=32000)
    p.add_argument("--train_name", default="scaling")
    p.add_argument("--precision", default=None, help="default: bf16-mixed on CUDA, 32-true on CPU")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="regional compile of each Block (default: on for CUDA)")
    p.add_argument("--ac", choices=("none", "block"), default="none", help="activation checkpointing")
    p.add_argument("--variants", default="base", help="comma-separated; tokens joined by '+': " + ", ".join(TOKENS))
    p.add_argument("--peer", choices=PEERS, default=None, help="also run this peer (last) in the same process")
    p.add_argument("--json", default=None, help="write all results here (rewritten after each run)")
    p.add_argument("--cpu", action="store_true", help="CPU smoke mode: tiny model, no compile, seconds")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--planner", action="store_true", help="attach the planner's memory estimate to each of our runs")
    p.add_argument("--profile_steps", type=int, default=0,
                   help="after the timed steps, profile this many more and print where the time goes")
    p.add_argument("--profile_dir", default=None,
                   help="with --profile_steps: also write each variant's breakdown JSON and a gzipped trace here")
    p.add_argument("--summarize", nargs="+", default=None, metavar="JSON",
                   help="print one table from result files written by --json, then exit")
    return p


def resolve_args(args: argparse.Namespace) -> argparse.Namespace:
    defaults = CPU_DEFAULTS if args.cpu else GPU_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.compile is None:
        args.compile = not args.cpu
    return args


def format_table(results: list[dict[str, Any]]) -> str:
    peer = next((r for r in results if r.get("kind") == "peer" and "tokens_per_s" in r), None)
    head = f"{'run':<34} {'tok/s':>11} {'step ms':>8} {'MFU spec':>9} {'MFU anch':>9} {'peak GB':>8} {'vs peer':>8}"
    lines = [head, "-" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"{r['name']:<34} ERROR {r['error'][:80]}")
            continue
        pct = lambda v: "-" if v is None else f"{100 * v:.1f}%"  # noqa: E731
        ratio = "-" if peer is None or r is peer else f"{r['tokens_per_s'] / peer['tokens_per_s']:.3f}x"
        mem = "-" if r.get("peak_mem_gb") is None else f"{r['peak_mem_gb']:.1f}"
        lines.append(f"{r['name']:<34} {r['tokens_per_s']:>11,.0f} {r['step_ms']:>8.1f} {pct(r['mfu_spec']):>9} "
                     f"{pct(r['mfu_anchor']):>9} {mem:>8} {ratio:>8}")
    return "\n".join(lines)


def summarize_files(paths: list[str]) -> str:
    """One table per result file (missing or unreadable files are named, not fatal)."""
    blocks = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            blocks.append(f"## {path}: no results ({type(err).__name__})")
            continue
        title = (f"## {data.get('train_model')} d{data.get('depth')} ctx {data.get('ctx_len')} mbs "
                 f"{data.get('micro_bsz')} on {data.get('device')} (torch {data.get('torch')}, {data.get('date')})")
        rows = data.get("results", [])
        lines = [title, format_table(rows)]
        for r in rows:
            planner = r.get("planner")
            if planner and planner.get("estimate_gb") is not None:
                lines.append(f"   planner memory, {r['name']}: estimate {planner['estimate_gb']} GB vs measured peak "
                             f"{r.get('peak_mem_gb')} GB")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def main(argv: Optional[list[str]] = None) -> int:
    args = resolve_args(build_parser().parse_args(argv))
    if args.summarize:
        print(summarize_files(args.summarize))
        return 0
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before the first CUDA query
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    if args.peer and args.peer not in names:
        names.append(args.peer)
    runs = [n if n in PEERS else parse_variant(n, args.compile, args.ac == "block") for n in names]
    header = dict(environment(device), command="python benchmarks/throughput.py " + " ".join(
        argv if argv is not None else sys.argv[1:]), train_model=args.train_model, depth=args.depth, ar=args.ar,
        ctx_len=args.ctx_len, micro_bsz=args.micro_bsz)
    print(json.dumps({"benchmark": "throughput", **header}), flush=True)
    results: list[dict[str, Any]] = []
    work_dir = Path(tempfile.mkdtemp(prefix="litscale_throughput_"))
    previous_key = None
    try:
        for run in runs:
            try:
                if isinstance(run, str):
                    free_memory(reset_dynamo=True)
                    previous_key = None
                    result = run_hf_peer(args, device)
                    free_memory(reset_dynamo=True)
                else:
                    key = run.trace_key()
                    free_memory(reset_dynamo=previous_key is not None and key != previous_key)
                    previous_key = key
                    result = run_ours(args, run, work_dir)
            except Exception as err:  # one failing variant (OOM, compile error) must not end the comparison
                name = run if isinstance(run, str) else run.name
                result = dict(name=name, kind="peer" if isinstance(run, str) else "ours",
                              error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc()[-3000:])
                print(result["traceback"], file=sys.stderr, flush=True)
                previous_key = None
            if "error" in result:  # outside the handler: the traceback no longer holds the failed run's tensors
                free_memory(reset_dynamo=True)
            results.append(result)
            print(json.dumps({k: v for k, v in result.items() if k not in ("traceback", "variant", "profile")}),
                  flush=True)
            if args.json:
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps(dict(header, results=results), indent=2))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    print(format_table(results), flush=True)
    return 1 if results and all("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
