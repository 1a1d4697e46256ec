"""Every registered architecture end to end (CPU, tiny widths): shapes, causality, incremental decoding == full
forward, varlen isolation through the model, exact parameter counts, the SPEC closed forms, a short training run,
the YOCO depth rule and the init rules the model applies to the mixers.
"""

from __future__ import annotations

import math

import pytest
import torch

from lit_gpt.config import ARCHS, Config, ConfigError
from lit_gpt.model import GPT
from lit_gpt.scaling import closed_form_non_embedding, count_parameters, spec_leading_term

VOCAB = 256
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def zoo_config(arch: str, depth: int = 4, **kw) -> Config:
    """Tiny width; windows shrunk to 4 so they bind at these lengths. phi4miniflash keeps 64-wide heads' ratio."""
    size = dict(ar=16, head_size=8) if arch == "phi4miniflash" else dict(ar=8)
    if ARCHS[arch].window is not None:
        kw.setdefault("sliding_window", 4)
    return Config.from_name(f"{arch}_d{depth}", vocab_size=VOCAB, **size, **kw)


def model_for(arch: str, depth: int = 4, seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    return GPT(zoo_config(arch, depth, **kw)).eval()


ZOO = list(ARCHS)


@pytest.mark.parametrize("arch", ZOO)
def test_shapes_and_loss(arch):
    model = model_for(arch)
    idx = torch.randint(0, VOCAB, (2, 17))
    out = model(idx)
    assert out.logits.shape == (2, 17, model.config.padded_vocab_size)
    loss = model(idx, targets=idx).loss
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert abs(loss.item() - math.log(model.config.padded_vocab_size)) < 1.0  # near-uniform at init


@pytest.mark.parametrize("arch", ZOO)
def test_causality(arch):
    model = model_for(arch, depth=8)
    idx = torch.randint(0, VOCAB, (1, 20))
    with torch.no_grad():
        ref = model(idx).logits
        for t in (3, 12):
            idx2 = idx.clone()
            idx2[0, t] = (idx2[0, t] + 1) % VOCAB
            out = model(idx2).logits
            torch.testing.assert_close(out[:, :t], ref[:, :t], atol=1e-6, rtol=0)
            assert (out[:, t] - ref[:, t]).abs().max() > 1e-7


@pytest.mark.parametrize("arch", ZOO)
def test_incremental_decoding_equals_full(arch):
    """Prefill 7 tokens, a 4-token chunk, then one token at a time (windows of 4 roll their caches)."""
    model = model_for(arch, depth=8)
    idx = torch.randint(0, VOCAB, (2, 21))
    with torch.no_grad():
        full = model(idx).logits
        state = model.init_state(2)
        pieces = [(0, 7), (7, 11)] + [(t, t + 1) for t in range(11, 21)]
        inc = torch.cat([model(idx[:, s:e], state=state).logits for s, e in pieces], dim=1)
    assert state.pos == 21
    torch.testing.assert_close(inc, full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ZOO)
def test_varlen_isolation_through_model(arch):
    """[docA EOS docB] with varlen: docB's logits equal those of docB alone (cross-attention and GMU included)."""
    eos = 0
    model = model_for(arch, depth=8, varlen=True, eos_id=eos)
    a = torch.randint(1, VOCAB, (2, 8))
    b = torch.randint(1, VOCAB, (2, 11))
    packed = torch.cat((a, torch.full((2, 1), eos), b), dim=1)
    with torch.no_grad():
        out = model(packed).logits
        alone = model(b).logits
        alone_a = model(torch.cat((a, torch.full((2, 1), eos)), 1)).logits
    torch.testing.assert_close(out[:, 9:], alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out[:, :9], alone_a, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ZOO)
@pytest.mark.parametrize("depth", [4, 8])
def test_parameter_count_exact(arch, depth):
    cfg = zoo_config(arch, depth, attn_bias=True) if arch == "sambay" else zoo_config(arch, depth)
    model = GPT(cfg)
    counted = count_parameters(cfg)
    assert model.num_parameters() == counted.total
    assert model.num_parameters(non_embedding=True) == counted.non_embedding


# Closed forms are leading-order (L³) approximations; lower-order terms (norms, Mamba's per-channel vectors, the
# YOCO producer/memory layers, rounded coefficients) decay like 1/L. Measured deviations at the SPEC aspect ratio:
# most archs are within 2% from d16 on; these exceed it and get the measured bound (+ margin):
#   sambayoco d16 +2.48% (exact leading coefficient is 13.5625·ar², not 13.5), mambay d16 +2.01%,
#   phi4miniflash (its 64-wide heads, 2 KV ratio and biases make attention scale with ar², so sambayda's form is
#   only indicative): d16 -1.55%, d24 -0.25%, d32 -2.28%.
@pytest.mark.parametrize("arch", ZOO)
def test_closed_form_parameter_count(arch):
    """The closed form (a polynomial in depth from SPEC §5's rules) is within 2% of the built model at every depth
    4…32, and exact whenever the width is a multiple of 16 (Mamba's dt_rank = ⌈w/16⌉ is the only rounding)."""
    checked = 0
    for depth in range(4, 33):
        try:
            cfg = Config.from_name(f"{arch}_d{depth}")
        except ConfigError:
            continue  # YOCO needs depth % 4 == 0; phi4miniflash needs 80·L divisible by 64
        exact = count_parameters(cfg).non_embedding
        closed = closed_form_non_embedding(arch, depth)
        assert closed == pytest.approx(exact, rel=0.02), (arch, depth)
        if cfg.n_embd % 16 == 0:
            assert closed == exact, (arch, depth)
        checked += 1
    assert checked >= 4  # phi4miniflash: depths 8, 16, 24, 32
    with torch.device("meta"):
        model = GPT(Config.from_name(f"{arch}_d16" if arch != "phi4miniflash" else f"{arch}_d32"))
    assert model.num_parameters(non_embedding=True) == count_parameters(model.config).non_embedding


# SPEC §5's mult·L³ against the closed form's L³ coefficient. The table writes Mamba as 6w² (it is 6.25w²: x_proj
# and dt_proj add w²/8 each) outside the all-Mamba row, and gives phi4miniflash SambaY's row, which assumes L heads
# of 128; at 64-wide heads with w/64 heads and KV groups of 2 its attention is 3w² (SWA) and 2w² (cross), so the
# true coefficient is 15.8125·ar² = 101,200 against the table's 14.5·80² + 144·80 = 104,320 (+3.1%).
LEADING_TERM_TOL = {"phi4miniflash": 0.035}


@pytest.mark.parametrize("arch", ZOO)
def test_spec_table_is_the_leading_term(arch):
    big = 1 << 16
    ratio = spec_leading_term(arch, big) / closed_form_non_embedding(arch, big)
    assert abs(ratio - 1) <= LEADING_TERM_TOL.get(arch, 0.01), (arch, ratio)


def test_closed_form_with_reduced_aspect_ratio():
    for arch in ZOO:
        for ar in (8, 16, 32):
            for depth in (4, 8, 16):
                try:
                    cfg = Config.from_name(f"{arch}_d{depth}", ar=ar)
                except ConfigError:
                    continue
                assert closed_form_non_embedding(arch, depth, ar) == pytest.approx(
                    count_parameters(cfg).non_embedding, rel=0.01), (arch, ar, depth)


def test_mamba_exact_closed_form():
    """The all-Mamba stack (with MLPs), derived exactly: N = 18.25·ar²·L³ + 112·ar·L² + ar·L (non-embedding)."""
    for depth in (1, 3, 8, 17):
        for ar in (16, 112):
            cfg = Config.from_name(f"mamba_d{depth}", ar=ar, head_size=128)
            w = ar * depth
            if w % 16:
                continue
            exact = 18.25 * ar**2 * depth**3 + 112 * ar * depth**2 + ar * depth
            assert count_parameters(cfg).non_embedding == exact
            with torch.device("meta"):
                assert GPT(cfg).num_parameters(non_embedding=True) == exact


@pytest.mark.parametrize("arch", ZOO)
def test_short_training_lowers_loss(arch):
    torch.manual_seed(0)
    model = GPT(zoo_config(arch, 4)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, VOCAB, (4, 33), generator=g)
    losses = []
    for _ in range(30):
        loss = model(idx[:, :-1], targets=idx[:, 1:]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 1.0, losses[::5]


@pytest.mark.parametrize("arch", ["sambay", "sambayda", "sambayoco", "mambay", "phi4miniflash"])
def test_yoco_invalid_depth(arch):
    with pytest.raises(ConfigError, match="divisible by 4"):
        Config.from_name(f"{arch}_d6", ar=16, head_size=8)


@pytest.mark.parametrize("param", ["sp", "mup++"])
def test_mamba_init_survives_model_reset(param):
    """GPT.reset_parameters keeps Mamba's dt bias, A_log and D; SP re-inits dt_proj's weight N(0, 0.02)."""
    torch.manual_seed(0)
    cfg = Config.from_name("mamba_d4", ar=64, vocab_size=VOCAB, parameterization=param)
    model = GPT(cfg)
    mixer = model.transformer.h[0].mixer
    dt = torch.nn.functional.softplus(mixer.dt_proj.bias)
    assert 1e-4 - 1e-9 <= dt.min() and dt.max() <= 0.1 + 1e-6
    assert torch.equal(mixer.A_log[0], torch.log(torch.arange(1.0, 17.0)))
    assert torch.equal(mixer.D, torch.ones_like(mixer.D))
    bound = cfg.dt_rank ** -0.5
    w = mixer.dt_proj.weight
    if param == "sp":
        assert abs(w.std().item() - 0.02) < 0.004
    else:
        assert w.abs().max() <= bound and w.std().item() > 0.4 * bound
    assert mixer.conv1d.bias.abs().max() > 0  # PyTorch's default conv init, not zeroed by the Linear pass


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("arch", ZOO)
@pytest.mark.parametrize("varlen", [False, True])
def test_gpu_zoo_bf16_matches_cpu(arch, varlen):
    """CUDA + bf16 autocast (fast attention paths, Triton/mamba_ssm scan) vs the CPU fp32 model: loss and finite
    gradients; then fp32 decoding on CUDA (prefill 256 + 44 single steps) vs the full forward."""
    kw = dict(ar=32, head_size=64)
    if ARCHS[arch].window is not None:
        kw["sliding_window"] = 128
    torch.manual_seed(0)
    cfg = Config.from_name(f"{arch}_d8", vocab_size=VOCAB, varlen=varlen, eos_id=0, **kw)
    model = GPT(cfg)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, VOCAB, (2, 1024), generator=g)
    with torch.no_grad():
        ref = model(idx[:, :-1], targets=idx[:, 1:]).loss
    model.cuda()
    idx_c = idx.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(idx_c[:, :-1], targets=idx_c[:, 1:]).loss
    loss.backward()
    assert abs(loss.item() - ref.item()) < 2e-2, (loss.item(), ref.item())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    dec = idx_c[:, :300].clamp_min(1)  # one document (decoding does not split at EOS)
    with torch.no_grad():  # fp32 on CUDA (cuDNN may use TF32 for the conv, hence the tolerance)
        full = model(dec).logits
        state = model.init_state(2)
        inc = [model(dec[:, :256], state=state).logits]
        inc += [model(dec[:, t:t + 1], state=state).logits for t in range(256, 300)]
    torch.testing.assert_close(torch.cat(inc, 1), full, atol=5e-3, rtol=5e-3)
