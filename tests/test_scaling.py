"""μP++ transfer rules against SPEC §2-§5 formulas and golden values."""

import math

import pytest

from lit_gpt.config import ARCHS, Config, ConfigError
from lit_gpt.scaling import (BaseHyperparameters, Launch, closed_form_non_embedding, count_parameters, layer_counts,
                             flops_per_token, is_vector_like, lr_factor, transfer)

GOLDEN = [  # L, w, N (M), tokens (B), vector lr, matrix lr, logit mult, branch mult
    (8, 1024, 121.6, 12.5, 5.657e-4, 1.131e-3, 2.0, 0.25),
    (16, 2048, 973.1, 100.0, 4.0e-4, 4.0e-4, 1.0, 0.1768),
    (24, 3072, 3284.0, 337.5, 3.266e-4, 2.177e-4, 0.6667, 0.1443),
]


@pytest.mark.parametrize("L,w,n,tokens,vec_lr,mat_lr,logit,branch", GOLDEN)
def test_transformer_mup_golden(L, w, n, tokens, vec_lr, mat_lr, logit, branch):
    cfg = Config.from_name(f"transformer_d{L}", parameterization="mup++")
    plan = transfer(BaseHyperparameters(), cfg, Launch(nodes=1, devices=8, micro_batch=4, seq_len=4096))
    assert cfg.n_embd == w
    assert plan.global_batch_tokens == 2**21
    assert plan.n_params_non_embedding / 1e6 == pytest.approx(n, rel=2e-3)
    assert plan.train_tokens / 1e9 == pytest.approx(tokens, rel=2e-3)
    assert plan.lr * plan.groups["vector"].lr_mult == pytest.approx(vec_lr, rel=1e-3)
    assert plan.lr * plan.groups["matrix"].lr_mult == pytest.approx(mat_lr, rel=1e-3)
    assert plan.groups["vector"].weight_decay == 0.0 and plan.groups["matrix"].weight_decay == 0.1
    assert cfg.logit_multiplier == pytest.approx(logit, rel=1e-3)
    assert cfg.residual_multiplier == pytest.approx(branch, rel=1e-3)
    assert cfg.attention_scale == pytest.approx(math.sqrt(128) / 128)


@pytest.mark.parametrize("L", [2, 4, 12, 20, 32])
def test_rules_for_other_depths(L):
    base = BaseHyperparameters()
    launch = Launch(nodes=2, devices=4, micro_batch=2, seq_len=2048)
    for p in ("sp", "mup", "mup++"):
        cfg = Config.from_name(f"transformer_d{L}", parameterization=p)
        plan = transfer(base, cfg, launch)
        M = 2 * 4 * 2 * 2048
        b = (base.b0 // M) * M
        eta = base.eta0 * math.sqrt(b / base.b0) * (math.sqrt(base.d0 / L) if p == "mup++" else 1.0)
        assert plan.lr == pytest.approx(eta)
        assert plan.grad_accum_steps == b // M
        assert plan.global_batch_sequences_per_node == b // (2048 * 2)
        assert plan.max_iters == plan.train_tokens // M
        assert plan.warmup_iters == int(base.warmup_tokens0 // M)
        if p == "sp":
            assert set(plan.groups) == {"all"} and plan.groups["all"].weight_decay == 0.1
            assert cfg.logit_multiplier == 1.0 and cfg.residual_multiplier == 1.0
            assert cfg.attention_scale == pytest.approx(1 / math.sqrt(cfg.head_size))
        else:
            assert plan.groups["matrix"].lr_mult == pytest.approx(base.d0 / L)
            assert plan.groups["vector"].weight_decay == (0.0 if p == "mup++" else 0.1)
            assert cfg.logit_multiplier == pytest.approx(base.d0 / L)
        assert cfg.residual_multiplier == pytest.approx(1 / math.sqrt(2 * L) if p == "mup++" else 1.0)


def test_batch_rounding_and_errors():
    cfg = Config.from_name("transformer_d4", parameterization="mup++")
    plan = transfer(BaseHyperparameters(), cfg, Launch(1, 3, 5, 1000), total_batch_tokens=100_000)
    assert plan.global_batch_tokens == (100_000 // 15_000) * 15_000
    with pytest.raises(ValueError, match="smaller than one micro step"):
        transfer(BaseHyperparameters(), cfg, Launch(1, 8, 8, 8192), total_batch_tokens=1000)
    plan = transfer(BaseHyperparameters(), cfg, Launch(), max_tokens=5e9)
    assert plan.train_tokens == 5_000_000_000


def test_base_hps_aliases():
    hps = BaseHyperparameters(warmup_tokens=5.0, weight_decay=0.2, eps=1e-6, min_lr_mult=0.1, beta1=0.8, beta2=0.9)
    assert (hps.warmup_tokens0, hps.weight_decay0, hps.eps0, hps.min_lr0, hps.beta1_0, hps.beta2_0) == \
        (5.0, 0.2, 1e-6, 0.1, 0.8, 0.9)


def test_schedules():
    assert lr_factor(0, 10, 100, 0.0, "linear") == pytest.approx(0.1)
    assert lr_factor(9, 10, 100, 0.0, "linear") == pytest.approx(1.0)
    assert lr_factor(55, 10, 100, 0.0, "linear") == pytest.approx(0.5)
    assert lr_factor(100, 10, 100, 0.1, "linear") == pytest.approx(0.1)
    assert lr_factor(55, 10, 100, 0.0, "cosine") == pytest.approx(0.5)
    assert lr_factor(10 + int(90 * 5 / 7), 10, 100, 0.0, "wsd") == pytest.approx(1.0)
    assert lr_factor(100, 10, 100, 0.0, "wsd") == pytest.approx(0.0)


def test_vector_like_classification():
    for name in ("transformer.wte.weight", "lm_head.weight", "transformer.h.0.norm_1.weight", "transformer.ln_f.weight",
                 "transformer.h.0.mixer.conv1d.weight", "transformer.h.0.mixer.A_log", "transformer.h.0.mixer.D",
                 "transformer.h.0.mixer.dt_proj.bias", "transformer.h.0.mixer.lambda_q1"):
        assert is_vector_like(name), name
    for name in ("transformer.h.0.mixer.qkv.weight", "transformer.h.0.mlp.fc.weight", "transformer.h.0.mixer.dt_proj.weight"):
        assert not is_vector_like(name), name


def test_closed_forms_match_exact_counts():
    for arch in ARCHS:
        for L in (16, 24, 32):
            cfg = Config.from_name(f"{arch}_d{L}")
            exact = count_parameters(cfg).non_embedding
            assert exact == pytest.approx(closed_form_non_embedding(arch, L, ARCHS[arch].ar), rel=0.02), (arch, L)


def test_layer_counts_follow_the_layout():
    from collections import Counter

    for arch in ARCHS:
        for L in (4, 8, 12, 16, 20, 32):
            cfg = Config.from_name(f"{arch}_d{L}", ar=16, head_size=8)
            planned = Counter(spec.mixer for spec in cfg.layer_plan())
            counted = {k: v for k, v in layer_counts(cfg.layer_rule, L).items() if v}
            assert dict(planned) == counted, (arch, L)


def test_flops_transformer_matches_anchor_formula():
    cfg = Config.from_name("transformer_d16")
    counts = count_parameters(cfg)
    T = 4096
    anchor = 6 * (counts.total - counts.embedding) + 6 * 16 * 2048 * T
    assert flops_per_token(cfg, T) == pytest.approx(anchor, rel=2e-3)


def test_config_errors():
    with pytest.raises(ConfigError, match="divisible by 4"):
        Config.from_name("sambay_d6")
    with pytest.raises(ConfigError, match="unknown model name"):
        Config.from_name("gpt5_d8")
    # any depth works for non-YOCO archs, including awkward head splits
    for L in (1, 2, 3, 5, 7):
        cfg = Config.from_name(f"transformer_d{L}")
        assert cfg.n_head % cfg.n_query_groups == 0
