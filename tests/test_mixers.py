"""Token mixers: shapes, causality, document isolation, decoding, fast-path parity, μP groups, guarded imports.

CPU, fp32, tiny widths. Tolerances: fast attention paths vs the explicit-mask reference 2e-5 (fp32 reorderings);
decoding vs the full forward and varlen vs separate documents 1e-5 (absolute, outputs of order 1);
causality is checked with the same 1e-6 bound (masked keys get exactly zero weight).
GPU-marked tests (skipped without CUDA) compare the compiled Flex / flash / block-local paths in bf16.
"""

from __future__ import annotations

import ast
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from lit_gpt.config import Config, LayerSpec
from lit_gpt.kernels.attention_masks import (attention_mask, block_local_attention, cu_seqlens_from_doc_ids,
                                             flex_attention, flex_available, reference_attention)
from lit_gpt.kernels.causal_conv import causal_conv1d, causal_conv1d_reference
from lit_gpt.layers.attention import CausalSelfAttention, CrossAttention, attention, choose_impl
from lit_gpt.layers.context import SeqContext, document_ids
from lit_gpt.layers.diff_attention import DiffCrossAttention, DiffSelfAttention, lambda_init
from lit_gpt.layers.gmu import GatedMemoryUnit
from lit_gpt.layers.mamba import Mamba
from lit_gpt.layers.rotary import rope_cache
from lit_gpt.layers.state import DecodeState
from lit_gpt.scaling import is_vector_like

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile"),
              pytest.mark.usefixtures("one_thread")]  # tests/conftest.py
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
ATOL = 1e-5


def tiny(**kw) -> Config:
    base = dict(vocab_size=256)
    base.update(kw)
    return Config.from_name("samba_d4", ar=16, **base)  # n_embd 64, 4 heads x 16, 2 KV groups


def diff_cfg(**kw) -> Config:
    return Config.from_name("sambayda_d4", ar=16, head_size=8, vocab_size=256, **kw)  # 4 heads x 8, 2 groups


def make_ctx(cfg: Config, T: int, *, doc_ids=None, state=None, rope: bool = False, offset: int = 0) -> SeqContext:
    r = rope_cache(cfg.head_size, torch.arange(offset, offset + T), cfg.rope_base) if rope else None
    return SeqContext(rope=r, doc_ids=doc_ids, state=state)


# Every self-contained mixer (cross-attention and GMU need a producer; they get their own tests)
MIXERS = {
    "attn": lambda: (CausalSelfAttention, tiny(), LayerSpec(1, "attention", rope=True)),
    "attn_nope": lambda: (CausalSelfAttention, tiny(), LayerSpec(1, "attention")),
    "swa": lambda: (CausalSelfAttention, tiny(), LayerSpec(1, "attention", window=5, rope=True)),
    "attn_bias": lambda: (CausalSelfAttention, tiny(attn_bias=True), LayerSpec(1, "attention", window=7)),
    "diff": lambda: (DiffSelfAttention, diff_cfg(), LayerSpec(3, "attention", diff_attn=True)),
    "diff_swa": lambda: (DiffSelfAttention, diff_cfg(), LayerSpec(1, "attention", window=6, diff_attn=True,
                                                                  rope=True)),
    "mamba": lambda: (Mamba, tiny(), LayerSpec(0, "mamba")),
}


def build(name: str, seed: int = 0):
    cls, cfg, spec = MIXERS[name]()
    torch.manual_seed(seed)
    m = cls(cfg, spec).eval()
    with torch.no_grad():  # non-trivial biases / norm weights so the tests see them
        for n, p in m.named_parameters():
            if n.endswith("bias") and "dt_proj" not in n or "norm" in n:
                p.add_(0.1 * torch.randn_like(p))
    return m, cfg, spec


def run(m, cfg, spec, x, **ctx_kw):
    return m(x, make_ctx(cfg, x.shape[1], rope=spec.rope, **ctx_kw))


# ------------------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("name", list(MIXERS))
def test_shapes_and_backward(name):
    m, cfg, spec = build(name)
    x = torch.randn(2, 23, cfg.n_embd, requires_grad=True)
    y = run(m, cfg, spec, x)
    assert y.shape == x.shape and y.dtype == x.dtype and torch.isfinite(y).all()
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_gmu_and_cross_shapes():
    cfg = tiny()
    torch.manual_seed(0)
    gmu = GatedMemoryUnit(cfg, LayerSpec(2, "gmu"))
    x = torch.randn(2, 9, cfg.n_embd)
    ctx = SeqContext(shared={"memory": torch.randn(2, 9, cfg.d_inner)})
    assert gmu(x, ctx).shape == x.shape
    with pytest.raises(RuntimeError, match="memory"):
        gmu(x, SeqContext())
    cross = CrossAttention(cfg, LayerSpec(3, "cross_attention"))
    with pytest.raises(RuntimeError, match="shared K/V"):
        cross(x, SeqContext())
    k = torch.randn(2, cfg.n_query_groups, 9, cfg.head_size)
    assert cross(x, SeqContext(shared={"kv": (k, k.clone(), None)})).shape == x.shape
    dcfg = diff_cfg()
    dcross = DiffCrossAttention(dcfg, LayerSpec(3, "cross_attention", diff_attn=True))
    xd = torch.randn(2, 9, dcfg.n_embd)
    kd = torch.randn(2, dcfg.n_query_groups, 9, dcfg.head_size)
    assert dcross(xd, SeqContext(shared={"kv": (kd, kd.clone(), None)})).shape == xd.shape


# ------------------------------------------------------------------------------------------------ causality
@pytest.mark.parametrize("name", list(MIXERS))
def test_causality(name):
    m, cfg, spec = build(name)
    x = torch.randn(2, 20, cfg.n_embd)
    with torch.no_grad():
        y = run(m, cfg, spec, x)
        for t in (0, 7, 19):
            x2 = x.clone()
            x2[:, t] += torch.randn_like(x2[:, t])
            y2 = run(m, cfg, spec, x2)
            torch.testing.assert_close(y2[:, :t], y[:, :t], atol=1e-6, rtol=0)
            assert (y2[:, t] - y[:, t]).abs().max() > 1e-4  # the token itself does change


# ------------------------------------------------------------------------------------------------ varlen
@pytest.mark.parametrize("name", list(MIXERS))
def test_document_isolation(name):
    """[docA docB] with document ids gives docB exactly the outputs of docB alone (and docA those of docA)."""
    m, cfg, spec = build(name)
    la, lb = 9, 14
    xa, xb = torch.randn(2, la, cfg.n_embd), torch.randn(2, lb, cfg.n_embd)
    doc = torch.cat((torch.zeros(2, la), torch.ones(2, lb)), dim=1).long()
    with torch.no_grad():
        packed = run(m, cfg, spec, torch.cat((xa, xb), 1), doc_ids=doc)
        alone_a = run(m, cfg, spec, xa)
        alone_b = run(m, cfg, spec, xb)
    torch.testing.assert_close(packed[:, :la], alone_a, atol=ATOL, rtol=0)
    torch.testing.assert_close(packed[:, la:], alone_b, atol=ATOL, rtol=0)


def test_document_isolation_three_docs_per_row_differ():
    """Rows with different layouts (including a one-token document) in one batch."""
    m, cfg, spec = build("swa")
    x = torch.randn(2, 16, cfg.n_embd)
    doc = torch.tensor([[0] * 5 + [1] + [2] * 10, [0] * 12 + [1] * 4])
    with torch.no_grad():
        packed = run(m, cfg, spec, x, doc_ids=doc)
        for b in range(2):
            for d in doc[b].unique():
                idx = (doc[b] == d).nonzero().squeeze(1)
                alone = run(m, cfg, spec, x[b:b + 1, idx])
                torch.testing.assert_close(packed[b:b + 1, idx], alone, atol=ATOL, rtol=0)


# ------------------------------------------------------------------------------------------------ decoding
@pytest.mark.parametrize("name", list(MIXERS))
@pytest.mark.parametrize("split", [(11, 5), (1, 0), (16, 0)])
def test_decoding_matches_full_forward(name, split):
    """Prefill P tokens, then a chunk of C tokens, then one token at a time == one full forward."""
    m, cfg, spec = build(name)
    T = 24
    x = torch.randn(2, T, cfg.n_embd)
    P, C = split
    with torch.no_grad():
        full = run(m, cfg, spec, x)
        state = DecodeState(cfg.n_layer, 2)
        outs = []
        bounds = [0, P] + ([P + C] if C else []) + list(range(P + C + 1, T + 1))
        for s, e in zip(bounds[:-1], bounds[1:]):
            outs.append(m(x[:, s:e], make_ctx(cfg, e - s, state=state, rope=spec.rope, offset=s)))
            state.pos = e
        inc = torch.cat(outs, dim=1)
    torch.testing.assert_close(inc, full, atol=ATOL, rtol=0)
    layer_state = state.layers[spec.index]
    if spec.window is not None:  # the cache never holds more than the window needs
        assert layer_state["k"].shape[2] == spec.window - 1
    if spec.mixer == "mamba":
        assert layer_state["conv"].shape == (2, cfg.d_inner, cfg.mamba_d_conv - 1)
        assert layer_state["ssm"].shape == (2, cfg.d_inner, cfg.mamba_d_state)
        assert layer_state["ssm"].dtype == torch.float32


def test_yoco_producer_cross_decoding():
    """Producer (full attention) + cross-attention + Mamba memory + GMU, decoded vs full, both plain and diff."""
    for cfg, diff in ((tiny(), False), (diff_cfg(), True)):
        torch.manual_seed(0)
        mem = Mamba(cfg, LayerSpec(0, "mamba", saves_memory=True))
        prod_cls = DiffSelfAttention if diff else CausalSelfAttention
        cross_cls = DiffCrossAttention if diff else CrossAttention
        prod = prod_cls(cfg, LayerSpec(1, "attention", produces_kv=True, diff_attn=diff))
        gmu = GatedMemoryUnit(cfg, LayerSpec(2, "gmu"))
        cross = cross_cls(cfg, LayerSpec(3, "cross_attention", diff_attn=diff))

        def forward(x, ctx):
            return cross(gmu(x + prod(mem(x, ctx), ctx), ctx), ctx)

        x = torch.randn(2, 15, cfg.n_embd)
        with torch.no_grad():
            full = forward(x, SeqContext())
            state = DecodeState(4, 2)
            outs = []
            for s, e in [(0, 6), (6, 9)] + [(i, i + 1) for i in range(9, 15)]:
                outs.append(forward(x[:, s:e], SeqContext(state=state)))
                state.pos = e
        torch.testing.assert_close(torch.cat(outs, 1), full, atol=ATOL, rtol=0)


# ------------------------------------------------------------------------------------------------ Mamba details
def test_mamba_init_and_memory():
    cfg = tiny()
    torch.manual_seed(0)
    m = Mamba(cfg, LayerSpec(0, "mamba", saves_memory=True))
    assert torch.equal(m.A_log[3], torch.log(torch.arange(1, 17, dtype=torch.float32)))
    assert torch.equal(m.D, torch.ones(cfg.d_inner))
    dt = torch.nn.functional.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-4 - 1e-9 and dt.max() <= 0.1 + 1e-6 and dt.min() < 0.003
    bound = cfg.dt_rank ** -0.5
    assert m.dt_proj.weight.abs().max() <= bound and m.dt_proj.weight.abs().max() > 0.5 * bound
    assert m.conv1d.weight.shape == (cfg.d_inner, 1, 4) and m.conv1d.bias is not None
    ctx = SeqContext()
    m(torch.randn(2, 7, cfg.n_embd), ctx)
    assert ctx.shared["memory"].shape == (2, 7, cfg.d_inner)


def _mamba_by_hand(m: Mamba, x: torch.Tensor) -> torch.Tensor:
    """Independent re-derivation of SPEC §5 with a per-token loop (no shared kernels)."""
    d, N, K = m.d_inner, m.d_state, m.d_conv
    xz = x @ m.in_proj.weight.T
    xs, z = xz[..., :d], xz[..., d:]
    w = m.conv1d.weight[:, 0]  # [d, K]
    B_, T, _ = x.shape
    h = torch.zeros(B_, d, N)
    A = -torch.exp(m.A_log)
    ys = []
    for t in range(T):
        xc = m.conv1d.bias.clone().expand(B_, d).clone()
        for j in range(K):
            if t - j >= 0:
                xc = xc + w[:, K - 1 - j] * xs[:, t - j]
        xc = torch.nn.functional.silu(xc)
        dbl = xc @ m.x_proj.weight.T
        dt_r, Bt, Ct = dbl[:, :m.dt_rank], dbl[:, m.dt_rank:m.dt_rank + N], dbl[:, m.dt_rank + N:]
        delta = torch.nn.functional.softplus(dt_r @ m.dt_proj.weight.T + m.dt_proj.bias)
        h = torch.exp(delta[..., None] * A) * h + (delta * xc)[..., None] * Bt[:, None]
        y = (h * Ct[:, None]).sum(-1) + m.D * xc
        ys.append(y * torch.nn.functional.silu(z[:, t]))
    return torch.stack(ys, 1) @ m.out_proj.weight.T


def test_mamba_matches_spec_by_hand():
    m, cfg, spec = build("mamba")
    x = torch.randn(2, 13, cfg.n_embd)
    with torch.no_grad():
        torch.testing.assert_close(run(m, cfg, spec, x), _mamba_by_hand(m, x), atol=ATOL, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ diff attention
def test_diff_attention_matches_spec_by_hand():
    """Explicit per-pair computation with softmax maps; GQA (4 heads, 2 groups) and a window."""
    cfg = diff_cfg()
    torch.manual_seed(0)
    m = DiffSelfAttention(cfg, LayerSpec(2, "attention", window=4, diff_attn=True))
    assert m.lambda_init == pytest.approx(lambda_init(2)) == pytest.approx(0.8 - 0.6 * torch.exp(torch.tensor(-0.6)).item())
    x = torch.randn(2, 10, cfg.n_embd)
    with torch.no_grad():
        y = m(x, SeqContext())
        q, k, v = m.split_heads(x)
        H, G, D, T = cfg.n_head, cfg.n_query_groups, cfg.head_size, 10
        r = H // G
        mask = attention_mask(torch.arange(T), torch.arange(T), window=4)
        lam = (torch.exp(m.lambda_q1 @ m.lambda_k1) - torch.exp(m.lambda_q2 @ m.lambda_k2) + m.lambda_init)
        outs = []
        for h in range(H // 2):
            g = h // r
            a = [torch.softmax((q[:, 2 * h + i] @ k[:, 2 * g + i].transpose(-1, -2) * cfg.attention_scale)
                               .masked_fill(~mask, float("-inf")), -1) for i in (0, 1)]
            vp = torch.cat((v[:, 2 * g], v[:, 2 * g + 1]), -1)
            o = a[0] @ vp - lam * (a[1] @ vp)
            o = torch.nn.functional.rms_norm(o, (2 * D,), m.sub_norm.weight, 1e-5) * (1 - m.lambda_init)
            outs.append(o)
        ref = m.proj(torch.cat(outs, -1))
    torch.testing.assert_close(y, ref, atol=ATOL, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ attention paths
def _qkv(B=2, H=4, G=2, T=37, D=8, Dv=None, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, D, generator=g).to(device, dtype)
    k = torch.randn(B, G, T, D, generator=g).to(device, dtype)
    v = torch.randn(B, G, T, Dv or D, generator=g).to(device, dtype)
    return q, k, v


def _docs(B, T, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 6, (B, T), generator=g)
    return document_ids(tokens, eos_id=0).to(device)


@pytest.mark.parametrize("window", [1, 3, 8, 16, 36, 100])
@pytest.mark.parametrize("docs", [False, True])
@pytest.mark.parametrize("dv", [8, 16])
def test_block_local_matches_reference(window, docs, dv):
    q, k, v = _qkv(Dv=dv)
    doc = _docs(2, 37) if docs else None
    ref = reference_attention(q, k, v, scale=0.3, window=window, q_doc=doc, k_doc=doc)
    got = block_local_attention(q, k, v, scale=0.3, window=window, doc_ids=doc)
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=0)
    got_tile = block_local_attention(q, k, v, scale=0.3, window=window, doc_ids=doc, tile=max(window, 12))
    torch.testing.assert_close(got_tile, ref, atol=2e-5, rtol=0)


def test_block_local_gradients_match_reference():
    q, k, v = (t.requires_grad_() for t in _qkv(T=29))
    doc = _docs(2, 29, seed=3)
    grads = []
    for fn in (lambda: reference_attention(q, k, v, scale=0.35, window=6, q_doc=doc, k_doc=doc),
               lambda: block_local_attention(q, k, v, scale=0.35, window=6, doc_ids=doc)):
        out = fn()
        grads.append(torch.autograd.grad((out * torch.linspace(-1, 1, out.shape[-1])).sum(), (q, k, v)))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=0)


@pytest.mark.parametrize("window,docs", [(None, True), (8, False), (8, True), (None, False)])
def test_flex_matches_reference_cpu(window, docs):
    """FlexAttention runs eagerly on CPU (slow; CUDA compiles it). Value width 2·D as in differential attention."""
    q, k, v = _qkv(T=40, Dv=16)
    doc = _docs(2, 40, seed=1) if docs else None
    ref = reference_attention(q, k, v, scale=0.3, window=window, q_doc=doc, k_doc=doc)
    got = flex_attention(q, k, v, scale=0.3, window=window, doc_ids=doc, compiled=False)
    torch.testing.assert_close(got, ref, atol=2e-5, rtol=0)


@pytest.mark.parametrize("impl", ["reference", "sdpa", "block_local", "flex"])
def test_dispatch_forced_impl_parity(impl, monkeypatch):
    """LITSCALE_ATTN_IMPL forces a backend where it applies; every layout still matches the reference."""
    monkeypatch.setenv("LITSCALE_ATTN_IMPL", impl)
    q, k, v = _qkv(T=24)
    doc = _docs(2, 24, seed=2)
    for window in (None, 5):
        for d in (None, doc):
            ref = reference_attention(q, k, v, scale=0.3, window=window, q_doc=d, k_doc=d)
            torch.testing.assert_close(attention(q, k, v, scale=0.3, window=window, doc_ids=d), ref, atol=2e-5, rtol=0)
    expected = {"reference": "reference", "sdpa": "reference", "block_local": "block_local", "flex": "flex"}[impl]
    assert choose_impl(q, v, window=5, doc_ids=None) == expected


def test_dispatch_auto_choices_cpu(monkeypatch):
    monkeypatch.delenv("LITSCALE_ATTN_IMPL", raising=False)
    q, k, v = _qkv(T=64)
    assert choose_impl(q, v, window=None, doc_ids=None) == "sdpa"
    assert choose_impl(q, v, window=128, doc_ids=None) == "sdpa"  # window >= T does not bind
    assert choose_impl(q, v, window=16, doc_ids=None) == "block_local"
    assert choose_impl(q, v, window=None, doc_ids=_docs(2, 64)) == "reference"
    with pytest.raises(ValueError):
        choose_impl(q, v, window=None, doc_ids=None, impl="nope")
    with pytest.raises(RuntimeError):
        choose_impl(q, v, window=None, doc_ids=None, impl="flash")


def test_cu_seqlens():
    doc = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 2, 2]])
    cu, mx = cu_seqlens_from_doc_ids(doc)
    assert cu.tolist() == [0, 2, 5, 6, 8, 10] and mx == 3 and cu.dtype == torch.int32


# ------------------------------------------------------------------------------------------------ causal conv
@pytest.mark.parametrize("docs", [False, True])
def test_causal_conv_paths(docs):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 19, 6, generator=g)
    w, b = torch.randn(6, 1, 4, generator=g), torch.randn(6, generator=g)
    doc = torch.tensor([[0] * 7 + [1] * 12, [0] * 2 + [1] + [2] * 16]) if docs else None
    # by hand
    ref = torch.zeros_like(x)
    for bi in range(2):
        for t in range(19):
            acc = b.clone()
            for j in range(4):
                s = t - j
                if s >= 0 and (doc is None or doc[bi, s] == doc[bi, t]):
                    acc = acc + w[:, 0, 3 - j] * x[bi, s]
            ref[bi, t] = acc
    torch.testing.assert_close(causal_conv1d(x, w, b, doc_ids=doc), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(causal_conv1d_reference(x, w, b, doc_ids=doc), ref, atol=1e-5, rtol=0)
    if not docs:
        torch.testing.assert_close(causal_conv1d(x, w, b, impl="conv1d"), ref, atol=1e-5, rtol=0)
    # state continuation: split anywhere, same outputs
    for cut in (1, 2, 5):
        y1, s1 = causal_conv1d(x[:, :cut], w, b, return_final_state=True)
        y2, s2 = causal_conv1d(x[:, cut:], w, b, initial_state=s1, return_final_state=True)
        if not docs:
            torch.testing.assert_close(torch.cat((y1, y2), 1), ref, atol=1e-5, rtol=0)
        torch.testing.assert_close(s2, x[:, -3:].transpose(1, 2), atol=0, rtol=0)


# ------------------------------------------------------------------------------------------------ μP groups
def test_param_group_classification():
    vector = {"A_log", "D", "conv1d.weight", "conv1d.bias", "dt_proj.bias", "lambda_q1", "lambda_k1",
              "lambda_q2", "lambda_k2", "sub_norm.weight", "qkv.bias", "proj.bias", "q.bias"}
    matrix = {"in_proj.weight", "x_proj.weight", "dt_proj.weight", "out_proj.weight", "qkv.weight", "proj.weight",
              "q.weight"}
    cfg = diff_cfg(attn_bias=True)
    modules = [Mamba(cfg, LayerSpec(0, "mamba")), DiffSelfAttention(cfg, LayerSpec(1, "attention", diff_attn=True)),
               DiffCrossAttention(cfg, LayerSpec(3, "cross_attention", diff_attn=True)),
               GatedMemoryUnit(cfg, LayerSpec(2, "gmu"))]
    seen = set()
    for mod in modules:
        for name, _ in mod.named_parameters():
            full = f"transformer.h.0.mixer.{name}"
            expected = name in vector
            assert name in vector | matrix, f"unclassified parameter {name}"
            assert is_vector_like(full) == expected, name
            seen.add(name)
    assert seen == vector | matrix


# ------------------------------------------------------------------------------------------------ guarded imports
OPTIONAL = ("flash_attn", "mamba_ssm", "causal_conv1d")


def test_no_unguarded_optional_imports():
    """Optional GPU packages are imported only inside functions or try blocks, never at module import time."""
    offenders = []
    for path in (ROOT / "lit_gpt").rglob("*.py"):
        tree = ast.parse(path.read_text())
        guarded = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Try, ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    guarded.add(id(sub))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] in OPTIONAL for n in names) and id(node) not in guarded:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders, offenders


BLOCKED_ZOO = r"""
import sys
for name in {blocked!r}:
    sys.modules[name] = None  # any import of these raises ImportError
import torch
torch.set_num_threads(1)
from lit_gpt.config import ARCHS, Config
from lit_gpt.model import GPT
for arch in ARCHS:
    kw = dict(ar=16, head_size=8) if arch == "phi4miniflash" else dict(ar=8)
    cfg = Config.from_name(arch + "_d4", vocab_size=256, sliding_window=4 if ARCHS[arch].window else None,
                           varlen=True, eos_id=0, **kw)
    model = GPT(cfg)
    idx = torch.randint(0, 256, (2, 12))
    loss = model(idx, targets=idx).loss
    loss.backward()
    state = model.init_state(2)
    with torch.no_grad():
        model(idx[:, :5], state=state); model(idx[:, 5:6], state=state)
for name in {blocked!r}:
    assert sys.modules[name] is None
print("ok", len(ARCHS))
"""


def test_zoo_runs_with_optional_packages_blocked():
    code = BLOCKED_ZOO.format(blocked=OPTIONAL)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("LITSCALE_ATTN_IMPL", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ok" in out.stdout


# ------------------------------------------------------------------------------------------------ GPU
@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["flex", "block_local", "flash", "sdpa"])
@pytest.mark.parametrize("window,docs", [(None, False), (128, False), (512, True), (None, True)])
def test_gpu_attention_paths_bf16(impl, window, docs):
    from lit_gpt.kernels.attention_masks import flash_attn_available

    if impl == "flash" and not flash_attn_available():
        pytest.skip("flash-attn not installed")
    if impl == "block_local" and window is None:
        pytest.skip("block-local needs a window")
    if impl == "sdpa" and (window is not None or docs):
        pytest.skip("sdpa is_causal only serves plain causal attention")
    T = 2048
    q, k, v = (t.requires_grad_() for t in _qkv(B=2, H=8, G=2, T=T, D=64, device="cuda", dtype=torch.bfloat16))
    doc = _docs(2, T, seed=5, device="cuda") if docs else None
    if doc is not None:  # few long documents (random EOS every ~6 tokens would be all-tiny)
        doc = (torch.arange(T, device="cuda") // 700).expand(2, T).contiguous()
        doc[1] = torch.arange(T, device="cuda") // 300
    scale = 0.125
    ref = reference_attention(q.float(), k.float(), v.float(), scale=scale, window=window, q_doc=doc, k_doc=doc)
    got = attention(q, k, v, scale=scale, window=window, doc_ids=doc, impl=impl)
    torch.testing.assert_close(got.float(), ref, atol=2e-2, rtol=2e-2)
    g = torch.randn_like(got)
    gq = torch.autograd.grad(got, q, g)[0]
    gq_ref = torch.autograd.grad(ref, q, g.float())[0]
    torch.testing.assert_close(gq.float(), gq_ref.float(), atol=5e-2, rtol=5e-2)


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("head", [64, 128])  # phi4miniflash heads are 64 wide, SambaY-DA's 128 (value 2·head)
@pytest.mark.parametrize("docs", [False, True])
def test_gpu_diff_attention_value_width_paths(head, docs):
    q, k, v = (t.requires_grad_() for t in _qkv(B=1, H=8, G=4, T=1024, D=head, Dv=2 * head, device="cuda",
                                                 dtype=torch.bfloat16))
    doc = (torch.arange(1024, device="cuda") // 300)[None] if docs else None
    ref = reference_attention(q.float(), k.float(), v.float(), scale=head ** -0.5, window=256, q_doc=doc, k_doc=doc)
    for impl in ("flex", "block_local", "reference") + (("flash",) if _flash() else ()):
        got = attention(q, k, v, scale=head ** -0.5, window=256, doc_ids=doc, impl=impl)
        torch.testing.assert_close(got.float(), ref, atol=2e-2, rtol=2e-2)
        got.sum().backward()  # the backward runs for every path
        q.grad = k.grad = v.grad = None


def _flash() -> bool:
    from lit_gpt.kernels.attention_masks import flash_attn_available

    return flash_attn_available()


@pytest.fixture
def no_tf32():
    """fp32 GPU-vs-CPU comparisons: keep cuDNN's conv in true fp32."""
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = old


@cuda
@pytest.mark.gpu
@pytest.mark.parametrize("docs", [False, True])
def test_gpu_mamba_matches_cpu(docs, no_tf32):
    """The CUDA layer (auto scan: mamba_ssm / Triton; conv: package / cuDNN / masked shifts) vs CPU, fp32,
    outputs and input gradients."""
    m, cfg, spec = build("mamba")
    x = torch.randn(2, 300, cfg.n_embd)
    doc = (torch.arange(300) // 97).expand(2, 300).contiguous() if docs else None
    g = torch.randn(2, 300, cfg.n_embd)
    x_cpu = x.clone().requires_grad_()
    ref = run(m, cfg, spec, x_cpu, doc_ids=doc)
    ref.backward(g)
    x_gpu = x.cuda().requires_grad_()
    got = run(m.cuda(), cfg, spec, x_gpu, doc_ids=None if doc is None else doc.cuda())
    got.backward(g.cuda())
    torch.testing.assert_close(got.detach().cpu(), ref.detach(), atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(x_gpu.grad.cpu(), x_cpu.grad, atol=1e-4, rtol=1e-3)


@cuda
@pytest.mark.gpu
def test_gpu_causal_conv_package_parity(no_tf32):
    x = torch.randn(2, 500, 64, device="cuda")
    w, b = torch.randn(64, 1, 4, device="cuda"), torch.randn(64, device="cuda")
    ref = causal_conv1d(x, w, b, impl="conv1d")
    torch.testing.assert_close(causal_conv1d(x, w, b), ref, atol=1e-4, rtol=1e-4)
    doc = (torch.arange(500, device="cuda") // 50).expand(2, 500)
    torch.testing.assert_close(causal_conv1d(x, w, b, doc_ids=doc), causal_conv1d_reference(x, w, b, doc_ids=doc))


# ------------------------------------------------------------------------------------------------ benchmarks
def _load_benchmark(name: str):
    import importlib.util

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    return module


def test_benchmarks_cpu_smoke(tmp_path, capsys):
    """Both benchmark scripts run in --cpu --small mode (trimmed further here) and write their JSON."""
    att = _load_benchmark("attention")
    assert att.main(["--cpu", "--small", "--seq-lens", "128", "--windows", "32", "--impls", "sdpa", "block_local",
                     "--repeats", "1", "--json", str(tmp_path / "att.json")]) == 0
    mix = _load_benchmark("mixers")
    assert mix.main(["--cpu", "--small", "--tokens", "128", "--mixers", "mamba", "gmu", "--no-varlen",
                     "--repeats", "1", "--json", str(tmp_path / "mix.json")]) == 0
    out = capsys.readouterr().out
    assert "| block-local swa32 | 128 |" in out and "| mamba | chunked | 64 |" in out
    import json

    rows = json.loads((tmp_path / "att.json").read_text())["rows"]
    assert all(r["parity_err"] is not None and r["parity_err"] < 1e-4 for r in rows)
    assert json.loads((tmp_path / "mix.json").read_text())["rows"][0]["fwd_ms"] > 0


@pytest.mark.parametrize("varlen", [False, True])
def test_flex_masks_built_before_compiled_blocks(monkeypatch, varlen):
    """The model builds the Flex block masks before its Blocks run, so a compiled Block traces the whole layer
    (building a mask inside one is a graph break per attention layer) and computes what the eager model does."""
    from torch._dynamo.utils import counters

    from lit_gpt.layers.attention import flex_masks
    from lit_gpt.model import GPT

    if not flex_available():
        pytest.skip("FlexAttention not available")
    monkeypatch.setenv("LITSCALE_ATTN_IMPL", "flex")  # on CPU Flex serves only no-grad calls
    cfg = Config.from_arch("sambay", 8, ar=8, vocab_size=256, block_size=256, parameterization="mup++")
    if varlen:
        cfg.varlen, cfg.eos_id = True, 3
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    x = torch.randint(0, 256, (2, 256))
    x[:, 100] = 3  # a document boundary (used when varlen)
    windows = {s.window for s in cfg.layer_plan() if s.mixer in ("attention", "cross_attention")}
    assert set(flex_masks(cfg, 256, None, x.device)) == windows  # forced Flex: every attention layer's window
    monkeypatch.delenv("LITSCALE_ATTN_IMPL")
    assert flex_masks(cfg, 256, None, x.device) == {}  # CPU, not forced: no Flex, nothing built
    monkeypatch.setenv("LITSCALE_ATTN_IMPL", "flex")
    with torch.no_grad():
        eager = model(x).logits
    torch._dynamo.reset()
    counters.clear()
    try:
        for block in model.transformer.h:
            block.compile(backend="eager")
        with torch.no_grad():
            compiled = model(x).logits
        assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
        torch.testing.assert_close(compiled, eager, rtol=0, atol=0)
        graphs = counters["stats"]["unique_graphs"]
        x[:, 100], x[:, 180] = 7, 3  # another document layout (a new mask every batch): no recompilation
        with torch.no_grad():
            model(x)
        assert counters["stats"]["unique_graphs"] == graphs
    finally:
        torch._dynamo.reset()  # Block.forward's compiled variants count against dynamo's recompile limit
