"""HF export: Transformer++ checkpoints become a plain LlamaForCausalLM with identical logits; hybrids use our format."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "fixtures" / "eval_task"))
from tiny_run import make_run, random_model, tiny_config  # noqa: E402

from lit_gpt.inference import load_model  # noqa: E402

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install transformers)")


@pytest.mark.parametrize("overrides, tied", [
    (dict(n_query_groups=2, depth_name="transformer_d4"), False),  # μP++, GQA, untied: folds r, m, attention scale
    (dict(tied_embeddings=True), True),  # tied with logit multiplier 8: exported untied
    (dict(parameterization="sp", tied_embeddings=True), True),  # SP tied, m = 1: stays tied
])
def test_hf_llama_logits_match(tmp_path, overrides, tied):
    from lit_gpt.export.__main__ import main

    name = overrides.pop("depth_name", "transformer_d2")
    cfg = tiny_config(name, vocab_size=384, **overrides)
    run = make_run(tmp_path / "run", cfg, model=random_model(cfg, seed=1, head_std=1.0))
    out = tmp_path / "hf"
    result = main(["hf", str(run), str(out)])
    assert result["format"] == "hf-llama"
    hf_cfg = json.loads((out / "config.json").read_text())
    assert hf_cfg["model_type"] == "llama" and hf_cfg["num_key_value_heads"] == cfg.n_query_groups
    expect_tied = cfg.tied_embeddings and cfg.logit_multiplier == 1.0
    assert hf_cfg["tie_word_embeddings"] is expect_tied
    if cfg.tied_embeddings and not expect_tied:
        assert any("UNTIED" in n for n in result["notes"])
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    ours, _, tok, _ = load_model(run, "cpu", "float32")
    ids = torch.randint(0, cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = ours(ids).logits
        b = hf(ids).logits
    assert a.abs().max() > 1.0  # non-trivial logits
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "The quick brown fox jumps over the lazy dog."
    assert hf_tok(text, add_special_tokens=False).input_ids == tok.encode(text)
    assert hf_tok.eos_token_id == tok.eos_id
    from lit_gpt.inference import ModelLoadError

    with pytest.raises(ModelLoadError, match="Hugging Face Llama export"):
        load_model(out)


def test_hybrid_exports_litscale_format(tmp_path):
    from lit_gpt.export.__main__ import main

    cfg = tiny_config("sambay_d4", vocab_size=384, tied_embeddings=True)
    model = random_model(cfg, seed=2)
    run = make_run(tmp_path / "run", cfg, model=model)
    out = tmp_path / "exp"
    result = main(["hf", str(run), str(out)])
    assert result["format"] == "litscale"
    readme = (out / "README.md").read_text()
    assert "lit_gpt.inference.load_model" in readme and "hybrid" in readme
    m2, cfg2, _, info = load_model(out, "cpu")
    assert info.kind == "export" and cfg2 == cfg
    ids = torch.randint(0, 384, (1, 24))
    with torch.no_grad():
        torch.testing.assert_close(m2(ids).logits, model(ids).logits)
    with pytest.raises(SystemExit):  # refuses to overwrite
        main(["hf", str(run), str(out)])
