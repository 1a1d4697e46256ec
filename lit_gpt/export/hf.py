"""Export a litscale checkpoint.

* **Transformer++** (every layer full causal attention with RoPE, RMSNorm, SwiGLU MLP, no differential attention):
  a standard Hugging Face ``LlamaForCausalLM`` folder (``model.safetensors``, ``config.json``,
  ``generation_config.json``, ``tokenizer.json`` + ``tokenizer_config.json``) that ``transformers`` loads without
  custom code. Every μP++ multiplier is folded into weights, since Llama has none:

  - residual-branch multiplier r (1/√(2L) under μP++): ``o_proj`` and ``down_proj`` weights (and biases) × r;
  - logit multiplier m (d0/L under μP/μP++): ``lm_head`` × m. With tied embeddings and m ≠ 1 the head cannot be
    folded without changing the embedding, so the export is **untied** (lm_head = m·wte) and says so;
  - attention scale: ours is s = √hd0/hd under μP, Llama's 1/√hd, so ``q_proj`` rows (and bias) × s·√hd
    (RoPE is linear, so scaling q before it is the same as scaling the scores).

  Layout mapping: our fused ``qkv`` rows are [q | k | v] (n_head·hd, G·hd, G·hd) → q/k/v_proj; RoPE is
  rotate-half over the whole head (Llama's convention); MLP ``fc`` rows [gate | up] → gate_proj/up_proj,
  ``proj`` → down_proj; GQA maps query head h to K/V group h // (n_head/G) in both.

* **Every other architecture** (hybrids, SWA, NoPE, differential attention): our own format — ``model.safetensors``
  (the state dict as trained, multipliers not folded), ``config.json`` (``{"litscale": {...}}``), the tokenizer and
  a README.md; load it with ``lit_gpt.inference.load_model(folder)``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch

from lit_gpt.config import Config

__all__ = ["ExportError", "llama_compatible", "to_llama_state_dict", "llama_config", "export", "export_hf",
           "export_litscale"]


class ExportError(ValueError):
    pass


def llama_compatible(config: Config) -> Optional[str]:
    """None when the model is exactly a Llama; else the reason it is not."""
    plan = config.layer_plan()
    if any(layer.mixer != "attention" for layer in plan):
        kinds = sorted({layer.mixer for layer in plan})
        return f"{config.name} is a hybrid ({', '.join(kinds)} layers)"
    if any(layer.window is not None for layer in plan):
        return f"{config.name} has sliding-window attention layers"
    if not config.rope:
        return f"{config.name} has no RoPE (NoPE attention)"
    if config.diff_attn:
        return f"{config.name} uses differential attention"
    if config.norm != "rmsnorm":
        return f"{config.name} uses {config.norm}"
    if not config.mlp:
        return f"{config.name} has no MLP"
    if config.varlen:
        return None  # document masking is a training-time choice; inference of one document is the same
    return None


def to_llama_state_dict(sd: dict[str, torch.Tensor], config: Config) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Our GPT state dict → Llama names with every multiplier folded. Returns (state dict, notes)."""
    notes: list[str] = []
    r = config.residual_multiplier
    m = config.logit_multiplier
    q_fold = config.attention_scale * math.sqrt(config.head_size)
    A, K = config.attn_dim, config.kv_dim
    hidden = config.intermediate_size
    out: dict[str, torch.Tensor] = {"model.embed_tokens.weight": sd["transformer.wte.weight"].clone()}
    for i in range(config.n_layer):
        p, q = f"transformer.h.{i}.", f"model.layers.{i}."
        w = sd[p + "mixer.qkv.weight"]
        out[q + "self_attn.q_proj.weight"] = w[:A] * q_fold
        out[q + "self_attn.k_proj.weight"] = w[A:A + K].clone()
        out[q + "self_attn.v_proj.weight"] = w[A + K:].clone()
        out[q + "self_attn.o_proj.weight"] = sd[p + "mixer.proj.weight"] * r
        if config.attn_bias:
            b = sd[p + "mixer.qkv.bias"]
            out[q + "self_attn.q_proj.bias"] = b[:A] * q_fold
            out[q + "self_attn.k_proj.bias"] = b[A:A + K].clone()
            out[q + "self_attn.v_proj.bias"] = b[A + K:].clone()
            out[q + "self_attn.o_proj.bias"] = sd[p + "mixer.proj.bias"] * r
        fc = sd[p + "mlp.fc.weight"]
        out[q + "mlp.gate_proj.weight"] = fc[:hidden].clone()
        out[q + "mlp.up_proj.weight"] = fc[hidden:].clone()
        out[q + "mlp.down_proj.weight"] = sd[p + "mlp.proj.weight"] * r
        out[q + "input_layernorm.weight"] = sd[p + "norm_1.weight"].clone()
        out[q + "post_attention_layernorm.weight"] = sd[p + "norm_2.weight"].clone()
    out["model.norm.weight"] = sd["transformer.ln_f.weight"].clone()
    head = sd.get("lm_head.weight", sd["transformer.wte.weight"])
    if config.tied_embeddings and m == 1.0:
        pass  # stays tied: Llama's tie_word_embeddings
    else:
        out["lm_head.weight"] = head * m
        if config.tied_embeddings:
            notes.append(f"tied embeddings with logit multiplier {m:g}: exported UNTIED (lm_head = {m:g} x "
                         "embedding), since the multiplier cannot be folded into a shared matrix")
    if r != 1.0:
        notes.append(f"residual multiplier {r:.6g} folded into o_proj and down_proj")
    if m != 1.0:
        notes.append(f"logit multiplier {m:.6g} folded into lm_head")
    if abs(q_fold - 1.0) > 1e-12:
        notes.append(f"attention scale {config.attention_scale:.6g} (Llama: 1/sqrt({config.head_size})) folded "
                     f"into q_proj as x{q_fold:.6g}")
    return {k: v.contiguous() for k, v in out.items()}, notes


def llama_config(config: Config, tokenizer: Any, dtype: torch.dtype, tied: bool) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.padded_vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_query_groups,
        "head_dim": config.head_size,
        "hidden_act": "silu",
        "max_position_embeddings": config.block_size,
        "initializer_range": 0.02,
        "rms_norm_eps": config.norm_eps,
        "use_cache": True,
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": tokenizer.eos_id,
        "pad_token_id": None,
        "tie_word_embeddings": tied,
        "rope_theta": float(config.rope_base),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(config.rope_base)},
        "attention_bias": config.attn_bias,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "torch_dtype": str(dtype).replace("torch.", ""),
    }


def _save_tokenizer(tokenizer: Any, out: Path, max_len: int) -> None:
    tokenizer.processor.save(str(out / "tokenizer.json"))
    cfg: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_len,
                           "eos_token": tokenizer.processor.id_to_token(tokenizer.eos_id),
                           "clean_up_tokenization_spaces": False}
    if tokenizer.bos_id is not None:
        cfg["bos_token"] = tokenizer.processor.id_to_token(tokenizer.bos_id)
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    special = {k: v for k, v in cfg.items() if k in ("eos_token", "bos_token")}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} exists and is not empty: pass --overwrite or choose another folder")
    out.mkdir(parents=True, exist_ok=True)


def export_hf(model: torch.nn.Module, config: Config, tokenizer: Any, info: Any, out: Union[str, os.PathLike], *,
              dtype: Optional[torch.dtype] = None, overwrite: bool = False) -> dict[str, Any]:
    from safetensors.torch import save_file

    reason = llama_compatible(config)
    if reason is not None:
        raise ExportError(f"cannot export as Llama: {reason}")
    out = Path(out)
    _prepare_out(out, overwrite)
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    llama_sd, notes = to_llama_state_dict(sd, config)
    dtype = dtype or torch.float32
    llama_sd = {k: v.to(dtype) for k, v in llama_sd.items()}
    tied = "lm_head.weight" not in llama_sd
    save_file(llama_sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    hf_cfg = llama_config(config, tokenizer, dtype, tied)
    (out / "config.json").write_text(json.dumps(hf_cfg, indent=2) + "\n", encoding="utf-8")
    gen = {"bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id, "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n", encoding="utf-8")
    _save_tokenizer(tokenizer, out, config.block_size)
    provenance = {"source": info.checkpoint, "step": info.step, "tokens": info.tokens, "litscale_config":
                  config.to_dict(), "notes": notes}
    (out / "litscale_export.json").write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
    (out / "README.md").write_text(
        f"# {config.name} (litscale export, Llama format)\n\n"
        f"Exported from `{info.checkpoint}` (step {info.step}). A standard `LlamaForCausalLM`:\n\n"
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "model = AutoModelForCausalLM.from_pretrained(PATH)\ntokenizer = AutoTokenizer.from_pretrained(PATH)\n```\n\n"
        "The μP++ multipliers of the original are folded into the weights:\n\n"
        + "".join(f"- {n}\n" for n in notes) + f"\nTrained context length: {config.block_size} tokens.\n",
        encoding="utf-8")
    return {"format": "hf-llama", "out": str(out), "notes": notes, "tied": tied}


def export_litscale(model: torch.nn.Module, config: Config, tokenizer: Any, info: Any,
                    out: Union[str, os.PathLike], *, dtype: Optional[torch.dtype] = None, overwrite: bool = False,
                    reason: str = "") -> dict[str, Any]:
    from safetensors.torch import save_file

    from lit_gpt.inference import EXPORT_FORMAT

    out = Path(out)
    _prepare_out(out, overwrite)
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if config.tied_embeddings:
        sd.pop("lm_head.weight", None)  # shared with the embedding; re-tied on load
    if dtype is not None:
        sd = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(out / "model.safetensors"), metadata={"format": "pt"})
    meta = {"litscale": {"format": EXPORT_FORMAT, "config": config.to_dict(), "source": info.checkpoint,
                         "step": info.step, "tokens": info.tokens}}
    (out / "config.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    _save_tokenizer(tokenizer, out, config.block_size)
    why = f" ({reason})" if reason else ""
    (out / "README.md").write_text(
        f"# {config.name} (litscale export)\n\n"
        f"This architecture has no standard Hugging Face equivalent{why}, so it is exported in litscale's own "
        "format: `model.safetensors` (weights as trained; μP++ multipliers are applied by the model code, not "
        "folded), `config.json` (the litscale Config under `litscale`), `tokenizer.json`.\n\n"
        "Load with lit_gpt.inference.load_model:\n\n"
        "```python\nfrom lit_gpt.inference import load_model\n"
        "model, config, tokenizer, info = load_model(PATH, device=\"cuda\", dtype=\"bfloat16\")\n```\n\n"
        f"Exported from `{info.checkpoint}` (step {info.step}).\n", encoding="utf-8")
    return {"format": "litscale", "out": str(out), "notes": [f"litscale format: {reason}" if reason else
                                                             "litscale format"]}


def export(checkpoint: Union[str, os.PathLike], out: Union[str, os.PathLike], *, fmt: str = "hf",
           config: Any = None, tokenizer: Optional[str] = None, dtype: Optional[str] = None,
           overwrite: bool = False) -> dict[str, Any]:
    """``fmt="hf"``: Llama for Transformer++, else (with a statement why) our own format; ``fmt="litscale"``."""
    from lit_gpt.inference import load_model, resolve_dtype

    model, cfg, tok, info = load_model(checkpoint, "cpu", torch.float32, config_override=config, tokenizer=tokenizer)
    out_dtype = resolve_dtype(dtype, "cpu") if dtype else None
    reason = llama_compatible(cfg)
    if fmt == "hf" and reason is None:
        return export_hf(model, cfg, tok, info, out, dtype=out_dtype, overwrite=overwrite)
    if fmt not in ("hf", "litscale"):
        raise ExportError(f"unknown export format {fmt!r}: use hf or litscale")
    return export_litscale(model, cfg, tok, info, out, dtype=out_dtype, overwrite=overwrite,
                           reason=(f"{reason}; Hugging Face transformers has no such model class without custom "
                                   "code" if reason else "requested"))
