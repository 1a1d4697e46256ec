"""GPT model: exact parameter counts, causality, μP initialization rules, tied embeddings, Python API."""

import math

import pytest
import torch

from lit_gpt.model import GPT, Config
from lit_gpt.scaling import count_parameters


def tiny(name="transformer_d4", **kw):
    kw.setdefault("vocab_size", 256)
    return Config.from_name(name, ar=16, **kw)


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("depth", [1, 3, 4, 8])
def test_exact_param_count(depth, tied):
    cfg = tiny(f"transformer_d{depth}", tied_embeddings=tied)
    model = GPT(cfg)
    counts = count_parameters(cfg)
    assert model.num_parameters() == counts.total
    assert model.num_parameters(non_embedding=True) == counts.non_embedding


def test_full_size_closed_form_on_meta():
    for L in (8, 16):
        cfg = Config.from_name(f"transformer_d{L}")
        with torch.device("meta"):
            model = GPT(cfg)
        n = model.num_parameters(non_embedding=True)
        assert n == count_parameters(cfg).non_embedding
        assert n == pytest.approx(14.5 * 128**2 * L**3, rel=1e-3)


@pytest.mark.parametrize("p", ["sp", "mup++"])
def test_causality(p):
    torch.manual_seed(0)
    model = GPT(tiny(parameterization=p)).eval()
    for name, param in model.named_parameters():  # zero readout would hide leaks: give the head weights
        if "lm_head" in name:
            torch.nn.init.normal_(param, std=0.02)
    idx = torch.randint(0, 256, (2, 24))
    ref = model(idx).logits
    t = 11
    changed = idx.clone()
    changed[:, t] = (changed[:, t] + 1) % 256
    out = model(changed).logits
    assert torch.allclose(out[:, :t], ref[:, :t], atol=1e-6)
    assert not torch.allclose(out[:, t:], ref[:, t:], atol=1e-6)


def test_init_rules():
    torch.manual_seed(0)
    L = 4
    sp = GPT(Config.from_name("transformer_d4", ar=64, vocab_size=512, parameterization="sp"))
    mup = GPT(Config.from_name("transformer_d4", ar=64, vocab_size=512, parameterization="mup++"))
    mup_tied = GPT(Config.from_name("transformer_d4", ar=64, vocab_size=512, parameterization="mup++",
                                    tied_embeddings=True))
    w = 256
    std = lambda t: t.float().std().item()
    assert std(sp.transformer.h[0].mixer.qkv.weight) == pytest.approx(0.02, rel=0.05)
    assert std(sp.transformer.h[0].mixer.proj.weight) == pytest.approx(0.02 / math.sqrt(2 * L), rel=0.05)
    assert std(sp.transformer.h[0].mlp.proj.weight) == pytest.approx(0.02 / math.sqrt(2 * L), rel=0.05)
    assert std(sp.lm_head.weight) == pytest.approx(0.02, rel=0.05)
    assert std(sp.transformer.wte.weight) == pytest.approx(1e-4, rel=0.05)
    kaiming = 1 / math.sqrt(3 * w)
    assert std(mup.transformer.h[0].mixer.qkv.weight) == pytest.approx(kaiming, rel=0.05)
    assert std(mup.transformer.h[0].mixer.proj.weight) == pytest.approx(1 / math.sqrt(3 * w), rel=0.05)
    assert mup.lm_head.weight.abs().sum() == 0  # zero readout
    assert std(mup_tied.transformer.h[0].mixer.proj.weight) == pytest.approx(kaiming / math.sqrt(2 * L), rel=0.05)
    assert std(mup_tied.transformer.wte.weight) == pytest.approx(0.02, rel=0.05)
    assert mup_tied.lm_head.weight is mup_tied.transformer.wte.weight


def test_api_and_loss_paths():
    from lit_gpt.model import GPT as G, Config as C  # ArchScale-compatible import path

    model = G(C.from_name("transformer_d2", ar=16, vocab_size=300))
    idx = torch.randint(0, 300, (2, 16))
    out = model(idx)
    assert out.logits.shape == (2, 16, model.config.padded_vocab_size)
    dense = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]), idx[:, 1:].reshape(-1))
    assert model.loss(idx[:, :-1], idx[:, 1:]).item() == pytest.approx(dense.item(), rel=1e-5)
    per_token = model(idx[:, :-1], targets=idx[:, 1:], loss_reduction="none").loss
    assert per_token.shape == (2, 15) and per_token.mean().item() == pytest.approx(dense.item(), rel=1e-5)


def test_chunked_cross_entropy_matches_dense():
    from lit_gpt.kernels.cross_entropy import linear_cross_entropy

    torch.manual_seed(0)
    h = torch.randn(37, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    y = torch.randint(0, 50, (37,))
    y[5] = -100
    for ls in (0.0, 0.1):
        a = linear_cross_entropy(h, w, y, impl="chunked", chunk_size=8, label_smoothing=ls)
        ga = torch.autograd.grad(a, (h, w))
        b = linear_cross_entropy(h, w, y, impl="dense", label_smoothing=ls)
        gb = torch.autograd.grad(b, (h, w))
        assert a.item() == pytest.approx(b.item(), rel=1e-6)
        for x1, x2 in zip(ga, gb):
            assert torch.allclose(x1, x2, atol=1e-6)
