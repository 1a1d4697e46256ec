"""One loader for every evaluation and export tool: ``load_model(path, device, dtype) -> (model, config, tokenizer, info)``.

``path`` may be

* a **run folder** (``OUT/`` with ``checkpoints/``): its newest intact checkpoint (newer broken ones are skipped
  and said so in ``info.notes``); the tokenizer is ``OUT/tokenizer.json``;
* a **checkpoint folder** (``.../step-XXXXXXXX/`` with ``manifest.json``): config from the manifest, tokenizer from
  the folder itself (averaged checkpoints carry one) or from the run folder above it;
* a **litscale export folder** (``config.json`` with a ``"litscale"`` entry, ``*.safetensors``, ``tokenizer.json``),
  as written by ``python -m lit_gpt.export`` for hybrid architectures;
* a **weights file** (``.safetensors``, ``.pt``, ``.pth``, ``.bin``, ``.ckpt``) or a folder of them, together with a
  config: a ``config.json`` next to it, or ``config_override``.

The architecture always comes from what the checkpoint recorded (never from path names). ``config_override`` is
an optional *check or amendment*: a model name (``"sambay_d16"``) must agree with the recorded architecture and
depth; a dict of Config fields (e.g. ``{"block_size": 32768}``) is applied on top; a Config or a JSON file
replaces the config (needed only for bare weight files without one).

Nothing here runs pickled code: weights are read with ``torch.load(weights_only=True)`` or safetensors, and a file
that needs code raises :class:`~lit_gpt.training.checkpoint.UnsafeCheckpointError`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch

from lit_gpt.config import Config, ConfigError

__all__ = ["ModelLoadError", "LoadInfo", "load_model", "resolve_checkpoint", "resolve_dtype", "build_model",
           "clean_state_dict", "EXPORT_FORMAT"]

EXPORT_FORMAT = "litscale-export-v1"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
ConfigLike = Union[None, str, os.PathLike, dict, Config]


class ModelLoadError(ValueError):
    """A path, config or tokenizer that cannot make a model; the message says what is wrong and what to pass."""


@dataclass
class LoadInfo:
    source: str  # the path the caller gave
    kind: str  # "run" | "checkpoint" | "export" | "weights"
    checkpoint: str  # the folder or file the weights came from
    run_dir: Optional[str] = None  # the run folder when known (where eval results go by default)
    step: Optional[int] = None
    tokens: Optional[int] = None
    tokenizer_path: Optional[str] = None
    config_source: str = ""
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ---------------------------------------------------------------------------------------------- small helpers
def resolve_dtype(dtype: Union[None, str, torch.dtype], device: Union[str, torch.device]) -> torch.dtype:
    """``None``/``"auto"``: bfloat16 on CUDA, float32 elsewhere. Accepts torch dtypes and their usual names."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or str(dtype).lower() == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    names = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32, "32": torch.float32,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "bf16-true": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16, "half": torch.float16, "16": torch.float16}
    key = str(dtype).lower().replace("torch.", "")
    if key not in names:
        raise ModelLoadError(f"unknown dtype {dtype!r}: use float32, bfloat16 or float16")
    return names[key]


def clean_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes (``_orig_mod.`` of torch.compile, ``module.`` of DDP, ``_forward_module.`` of Fabric)."""
    prefixes = ("_forward_module.", "_orig_mod.", "module.")
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if k.startswith(p):
                    k, changed = k[len(p):], True
            k = k.replace("._orig_mod.", ".").replace("._checkpoint_wrapped_module.", ".")
        out[k] = v
    return out


def _config_from_json(path: Path) -> Config:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"cannot read config {path}: {e}") from None
    return _config_from_data(data, str(path))


def _config_from_data(data: Any, where: str) -> Config:
    """A Config dict, or a file that holds one: run.json / manifest.json / our export's config.json."""
    if isinstance(data, dict):
        for key in ("litscale", "meta"):
            if isinstance(data.get(key), dict):
                data = data[key]
        if isinstance(data.get("config"), dict):
            data = data["config"]
        if data.get("model_type") == "llama" and "n_layer" not in data:
            raise ModelLoadError(f"{where} is a Hugging Face Llama config: load that folder with "
                                 "transformers.AutoModelForCausalLM, not litscale")
        if "n_layer" in data and "n_embd" in data:
            try:
                return Config.from_dict(data)
            except (ConfigError, TypeError) as e:
                raise ModelLoadError(f"{where}: invalid litscale config ({e})") from None
    raise ModelLoadError(f"{where} holds no litscale config (expected the fields of lit_gpt.config.Config)")


def _find_tokenizer(*folders: Optional[Path]) -> Optional[Path]:
    for folder in folders:
        if folder is not None and (folder / "tokenizer.json").is_file():
            return folder / "tokenizer.json"
    return None


# ---------------------------------------------------------------------------------------------- resolution
def resolve_checkpoint(path: Union[str, os.PathLike]) -> tuple[str, Path, Optional[Path]]:
    """``(kind, where, run_dir)`` for a path: kind in run | checkpoint | export | weights. No weights are read."""
    from lit_gpt.training.checkpoint import MANIFEST_NAME, checkpoints_root, find_resume_checkpoint

    p = Path(path).expanduser()
    if not p.exists():
        raise ModelLoadError(f"no such checkpoint: {p}")
    if p.is_dir():
        if (p / MANIFEST_NAME).is_file():
            run_dir = p.parent.parent if p.parent.name == "checkpoints" else None
            return "checkpoint", p, run_dir
        if checkpoints_root(p).is_dir():
            notes: list[str] = []
            found = find_resume_checkpoint(p, log=notes.append)
            if found is None:
                raise ModelLoadError(f"run folder {p} has no intact checkpoint under {checkpoints_root(p)}"
                                     + (f" ({'; '.join(notes)})" if notes else ""))
            return "run", found, p
        cfg = p / "config.json"
        if cfg.is_file():
            try:
                data = json.loads(cfg.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                data = {}
            if isinstance(data, dict) and data.get("model_type") == "llama" and "litscale" not in data:
                raise ModelLoadError(f"{p} is a Hugging Face Llama export: load it with "
                                     "transformers.AutoModelForCausalLM.from_pretrained, not litscale")
            if isinstance(data, dict) and "litscale" in data:
                return "export", p, None
        if any(p.glob("*.safetensors")) or any(q for ext in WEIGHT_SUFFIXES for q in p.glob("*" + ext)):
            return "weights", p, None
        raise ModelLoadError(
            f"{p} is not a litscale run folder (no checkpoints/), checkpoint folder (no manifest.json), export "
            f"(no config.json with 'litscale') or folder of weight files ({', '.join(WEIGHT_SUFFIXES)})")
    if p.suffix.lower() in WEIGHT_SUFFIXES:
        return "weights", p, None
    if p.name == MANIFEST_NAME:
        return resolve_checkpoint(p.parent)
    raise ModelLoadError(f"{p}: unknown checkpoint format {p.suffix or '(no suffix)'!r}; pass a run folder, a "
                         f"checkpoint folder, an export folder or a weight file ({', '.join(WEIGHT_SUFFIXES)})")


def _apply_override(config: Optional[Config], override: ConfigLike, weights: Optional[dict], info: LoadInfo) -> Config:
    """Combine the recorded config with ``config_override`` (see the module docstring)."""
    if override is None or override == "":
        if config is None:
            raise ModelLoadError(f"{info.checkpoint} carries no config: pass config= a litscale config.json (or a "
                                 "model name such as transformer_d8 together with the weights' shapes)")
        return config
    if isinstance(override, Config):
        info.config_source = "override (Config)"
        return override
    if isinstance(override, dict):
        if config is None:
            info.config_source = "override (dict)"
            try:
                return Config.from_dict(override) if "n_layer" in override else _config_from_name(
                    override["name"], weights, {k: v for k, v in override.items() if k != "name"}, info)
            except KeyError:
                raise ModelLoadError("config override dict needs 'name' or the full Config fields") from None
        name = override.get("name")
        changes = {k: v for k, v in override.items() if k != "name"}
        if name:
            _check_name(name, config)
        try:
            new = config.replace(**changes) if changes else config
        except (TypeError, ConfigError) as e:
            raise ModelLoadError(f"config override {changes}: {e}") from None
        if changes:
            info.notes.append(f"config fields overridden: {changes}")
        return new
    text = str(override)
    if text.endswith(".json") or Path(text).is_file():
        new = _config_from_json(Path(text))
        if config is not None and (new.n_layer, new.n_embd, new.layer_rule) != (config.n_layer, config.n_embd,
                                                                                  config.layer_rule):
            raise ModelLoadError(f"config {text} ({new.name}) does not describe the checkpoint ({config.name}, "
                                 f"{config.n_layer} layers, width {config.n_embd})")
        info.config_source = f"override file {text}"
        return new
    if config is None:
        info.config_source = f"model name {text} + weight shapes"
        return _config_from_name(text, weights, {}, info)
    _check_name(text, config)
    info.notes.append(f"config={text} agrees with the checkpoint's config ({config.name}); using the recorded one")
    return config


def _check_name(name: str, config: Config) -> None:
    try:
        named = Config.from_name(name)
    except ConfigError as e:
        raise ModelLoadError(str(e)) from None
    if (named.arch, named.n_layer) != (config.arch, config.n_layer):
        raise ModelLoadError(f"config={name} disagrees with the checkpoint, which is {config.name} "
                             f"({config.arch}, {config.n_layer} layers, width {config.n_embd}); drop config= to use "
                             "the checkpoint's own config")


def _config_from_name(name: str, weights: Optional[dict], extra: dict, info: LoadInfo) -> Config:
    """A bare weights file + a model name: width and vocabulary from the tensors' shapes."""
    try:
        base = Config.from_name(name)
    except ConfigError as e:
        raise ModelLoadError(str(e)) from None
    kwargs: dict[str, Any] = {}
    if weights is not None:
        wte = weights.get("transformer.wte.weight")
        if wte is None:
            raise ModelLoadError(f"{info.checkpoint} has no transformer.wte.weight: not litscale GPT weights")
        vocab, n_embd = wte.shape
        kwargs["vocab_size"] = int(extra.pop("vocab_size", vocab))
        if n_embd != base.n_embd:
            if n_embd % base.n_layer:
                raise ModelLoadError(f"weights have width {n_embd}, not a multiple of depth {base.n_layer} ({name})")
            kwargs["ar"] = n_embd // base.n_layer
        kwargs["tied_embeddings"] = "lm_head.weight" not in weights or (
            weights["lm_head.weight"].data_ptr() == wte.data_ptr())
    ar = kwargs.pop("ar", None)
    kwargs.update(extra)
    if "parameterization" not in kwargs:
        info.notes.append("the weights record no parameterization: assuming 'sp' (pass config= a dict or JSON with "
                          "parameterization='mup++' for μP++ models, else the multipliers are wrong)")
    try:
        return Config.from_name(name, ar=ar, **kwargs)
    except (ConfigError, TypeError) as e:
        raise ModelLoadError(f"config {name}: {e}") from None


def build_model(config: Config, state_dict: dict[str, torch.Tensor], device: Union[str, torch.device] = "cpu",
                dtype: torch.dtype = torch.float32, where: str = "checkpoint") -> torch.nn.Module:
    """GPT(config) on the meta device, then the weights assigned (no random init of a big model)."""
    from lit_gpt.model import GPT

    sd = clean_state_dict(state_dict)
    with torch.device("meta"):
        model = GPT(config)
    expected = model.state_dict()
    if config.tied_embeddings:
        sd.setdefault("lm_head.weight", sd.get("transformer.wte.weight"))
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise ModelLoadError(
            f"{where} does not match config {config.name} ({config.layer_rule}, {config.n_layer} layers): "
            f"missing {missing[:6]}{'…' if len(missing) > 6 else ''}, unexpected "
            f"{unexpected[:6]}{'…' if len(unexpected) > 6 else ''}")
    for k, v in expected.items():
        if tuple(sd[k].shape) != tuple(v.shape):
            if k in ("transformer.wte.weight", "lm_head.weight"):
                raise ModelLoadError(f"vocabulary mismatch: {where} has {k} of shape {tuple(sd[k].shape)} but config "
                                     f"{config.name} expects {tuple(v.shape)} (padded_vocab_size "
                                     f"{config.padded_vocab_size})")
            raise ModelLoadError(f"{where}: {k} has shape {tuple(sd[k].shape)}, config {config.name} expects "
                                 f"{tuple(v.shape)}")
    sd = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    if config.tied_embeddings:
        model.lm_head.weight = model.transformer.wte.weight
    return model.eval()


# ---------------------------------------------------------------------------------------------- main entry
def load_model(path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu",
               dtype: Union[None, str, torch.dtype] = None, config_override: ConfigLike = None, *,
               tokenizer: Union[None, str, os.PathLike] = None, verify: bool = True):
    """Load a model for inference: returns ``(model, config, tokenizer, info)`` with the model in eval mode.

    ``tokenizer`` overrides the tokenizer the checkpoint carries (its vocabulary must fit the model's).
    """
    from lit_gpt.data import DataError
    from lit_gpt.data.tokenizer import Tokenizer
    from lit_gpt.training.checkpoint import load_checkpoint, load_weights

    kind, where, run_dir = resolve_checkpoint(path)
    info = LoadInfo(source=str(path), kind=kind, checkpoint=str(where), run_dir=str(run_dir) if run_dir else None)
    config: Optional[Config] = None
    weights: dict[str, torch.Tensor]
    tok_path: Optional[Path] = None
    if kind in ("run", "checkpoint"):
        state, manifest = load_checkpoint(where, map_location="cpu", verify=verify)
        meta = manifest.get("meta") or {}
        info.step, info.tokens = manifest.get("step"), manifest.get("tokens")
        if isinstance(meta.get("config"), dict):
            config = _config_from_data(meta["config"], f"{where}/manifest.json")
            info.config_source = f"{where.name}/manifest.json"
        weights = state.get("model") if isinstance(state.get("model"), dict) else None
        if weights is None:
            raise ModelLoadError(f"{where}/state.pt has no 'model' state dict (keys: {sorted(state)[:8]})")
        tok_path = _find_tokenizer(where, run_dir)
    elif kind == "export":
        config = _config_from_json(where / "config.json")
        info.config_source = "config.json"
        weights = load_weights(where)
        tok_path = _find_tokenizer(where)
    else:
        weights = load_weights(where)
        folder = where if where.is_dir() else where.parent
        if (folder / "config.json").is_file() and not isinstance(config_override, (Config, dict)) and not (
                config_override and (str(config_override).endswith(".json"))):
            try:
                config = _config_from_json(folder / "config.json")
                info.config_source = "config.json next to the weights"
            except ModelLoadError:
                config = None
        tok_path = _find_tokenizer(folder)
    config = _apply_override(config, config_override, weights, info)
    if not info.config_source:
        info.config_source = "checkpoint"

    if tokenizer is not None:
        tok_path = Path(tokenizer)
        if tok_path.is_dir():
            tok_path = tok_path / "tokenizer.json"
        info.notes.append(f"tokenizer overridden: {tok_path}")
    if tok_path is None:
        raise ModelLoadError(f"no tokenizer.json found with {where}"
                             + (f" or in run folder {run_dir}" if run_dir else "")
                             + ": pass tokenizer=PATH (a tokenizer.json or a folder holding one)")
    try:
        tok = Tokenizer.from_path(tok_path)
    except DataError as e:
        raise ModelLoadError(str(e)) from None
    info.tokenizer_path = str(tok_path)
    info.notes.extend(check_tokenizer(tok, config, str(tok_path)))

    model = build_model(config, weights, device=device, dtype=resolve_dtype(dtype, device), where=str(where))
    return model, config, tok, info


def check_tokenizer(tok: Any, config: Config, where: str = "tokenizer") -> list[str]:
    """The tokenizer must emit only ids the model has rows for, and agree on EOS when the config recorded it."""
    if tok.vocab_size > config.padded_vocab_size:
        raise ModelLoadError(f"vocabulary mismatch: {where} has {tok.vocab_size} ids but the model "
                             f"{config.name} has only {config.padded_vocab_size} embedding rows (vocab_size "
                             f"{config.vocab_size}): use the tokenizer the model was trained with")
    if tok.vocab_size > config.vocab_size:
        raise ModelLoadError(f"vocabulary mismatch: {where} has {tok.vocab_size} ids but the model {config.name} "
                             f"was trained with vocab_size {config.vocab_size}: use the tokenizer of its run folder")
    if config.eos_id is not None and tok.eos_id != config.eos_id:
        raise ModelLoadError(f"tokenizer mismatch: {where} has EOS id {tok.eos_id} but the model was trained with "
                             f"eos_id {config.eos_id}: use the tokenizer of its run folder")
    if tok.vocab_size < config.vocab_size:
        return [f"the tokenizer has {tok.vocab_size} ids, fewer than the model's vocab_size {config.vocab_size}"]
    return []
