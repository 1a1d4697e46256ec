"""The measured peer: Hugging Face ``LlamaForCausalLM`` at the shape of one of our configs, one training step
the way the shared anchor (``anchors/anchor_hf_llama.py``, copied here as a function) runs it: bf16 autocast,
SDPA attention, fused AdamW, ``torch.compile`` of the whole model, no gradient clipping.

``python benchmarks/hf_llama_peer.py --depth 16 --ctx_len 4096 --micro_bsz 2`` prints one JSON line, like the
anchor. ``benchmarks/throughput.py --peer hf_llama`` calls ``run_peer`` in the same process as our model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.timing import environment, peak_memory_gb, time_steps  # noqa: E402
from lit_gpt.config import Config  # noqa: E402
from lit_gpt.scaling import flops_per_token  # noqa: E402

PEAK_BF16 = 989e12  # H100/H200 SXM dense bf16 (SPEC §6)


def anchor_flops_per_token(n_params: int, n_embedding: int, n_layer: int, width: int, seq_len: int) -> float:
    """The shared anchors' formula: 6·(params − input embedding) + 6·L·w·T (causal attention)."""
    return 6.0 * (n_params - n_embedding) + 6.0 * n_layer * width * seq_len


def llama_config(config: Config, attn: str = "sdpa"):
    """The LlamaConfig of the same shape as ``config`` (full-attention Transformer++ layouts only)."""
    from transformers import LlamaConfig

    if config.layer_rule != "attention" or config.sliding_window is not None:
        raise ValueError(f"the HF Llama peer has full attention only; {config.name} uses {config.layer_rule}")
    return LlamaConfig(vocab_size=config.padded_vocab_size, hidden_size=config.n_embd,
                       intermediate_size=config.intermediate_size, num_hidden_layers=config.n_layer,
                       num_attention_heads=config.n_head, num_key_value_heads=config.n_query_groups,
                       head_dim=config.head_size, max_position_embeddings=config.block_size,
                       rms_norm_eps=config.norm_eps, tie_word_embeddings=config.tied_embeddings,
                       attn_implementation=attn)


def run_peer(config: Config, *, micro_bsz: int, ctx_len: int, steps: int = 10, warmup: int = 3,
             compile: bool = True, device: Optional[torch.device] = None, attn: str = "sdpa",
             seed: int = 0) -> dict[str, Any]:
    """Build, warm up and time the peer; returns tokens/s, MFU (both FLOP formulas), peak memory."""
    from transformers import LlamaForCausalLM

    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    torch.manual_seed(seed)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    model = LlamaForCausalLM(llama_config(config, attn)).to(device)
    n_all = sum(p.numel() for p in model.parameters())
    n_emb = model.model.embed_tokens.weight.numel()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=cuda)
    fwd = torch.compile(model) if compile else model
    x = torch.randint(0, config.vocab_size, (micro_bsz, ctx_len), device=device)

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = fwd(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    timing = time_steps(step, steps=steps, warmup=warmup, device=device)
    dt = timing["step_s"]
    tok = micro_bsz * ctx_len / dt
    fpt_anchor = anchor_flops_per_token(n_all, n_emb, config.n_layer, config.n_embd, ctx_len)
    fpt_spec = flops_per_token(config, ctx_len)
    peak = PEAK_BF16 if cuda else None
    result = dict(name="hf_llama", kind="peer", compile=compile, attn=attn, depth=config.n_layer,
                  width=config.n_embd, ctx_len=ctx_len, micro_bsz=micro_bsz, steps=steps, warmup=warmup,
                  params=n_all, step_ms=round(dt * 1e3, 2), tokens_per_s=round(tok, 1),
                  mfu_spec=None if peak is None else round(tok * fpt_spec / peak, 4),
                  mfu_anchor=None if peak is None else round(tok * fpt_anchor / peak, 4),
                  flops_per_token_spec=fpt_spec, flops_per_token_anchor=fpt_anchor,
                  peak_mem_gb=peak_memory_gb(device),
                  median_step_ms=round(timing["median_step_s"] * 1e3, 2), warmup_s=round(timing["warmup_s"], 1),
                  final_loss=round(float(timing["last"]), 4))
    del fwd, model, opt, x
    return result


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=int, default=16)
    p.add_argument("--ar", type=int, default=None, help="width per layer (default 128, the Transformer++ shape)")
    p.add_argument("--ctx_len", type=int, default=4096)
    p.add_argument("--micro_bsz", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--attn", default="sdpa")
    p.add_argument("--cpu", action="store_true")
    a = p.parse_args(argv)
    config = Config.from_arch("transformer", a.depth, ar=a.ar, block_size=a.ctx_len)
    device = torch.device("cpu" if a.cpu or not torch.cuda.is_available() else "cuda")
    result = run_peer(config, micro_bsz=a.micro_bsz, ctx_len=a.ctx_len, steps=a.steps, warmup=a.warmup,
                      compile=a.compile and device.type == "cuda", device=device, attn=a.attn)
    result.update(environment(device))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
