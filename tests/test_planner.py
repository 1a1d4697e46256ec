"""Planner: exact parameter counts, hand-computed memory terms, and the estimate against measured CPU memory."""

from __future__ import annotations

import math

import pytest

from lit_gpt.config import Config
from lit_gpt.planner import (CE_DENSE_LIMIT, Assumptions, block_activation_bytes, build_report, format_plan_table,
                             memory_estimate, plan_report)
from lit_gpt.scaling import BaseHyperparameters, Launch, count_parameters, transfer


def tiny(arch: str = "transformer", depth: int = 2, ar: int = 16, vocab: int = 256, **kw) -> Config:
    return Config.from_arch(arch, depth, ar=ar, vocab_size=vocab, block_size=64, parameterization="mup++", **kw)


def test_ce_limit_matches_kernel():
    from lit_gpt.kernels import cross_entropy

    assert CE_DENSE_LIMIT == cross_entropy.DENSE_LIMIT


@pytest.mark.parametrize("arch,depth", [("transformer", 2), ("transformer", 3), ("sambay", 4), ("samba", 2)])
def test_parameters_exact(arch, depth):
    torch = pytest.importorskip("torch")
    from lit_gpt.model import GPT

    cfg = tiny(arch, depth)
    plan = transfer(BaseHyperparameters(d0=2, b0=256), cfg, Launch(micro_batch=4, seq_len=64), max_steps=3)
    report = build_report(plan, cfg, Assumptions(accelerator="cpu"))
    model = GPT(cfg)
    assert report["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    assert report["parameters"]["non_embedding"] == model.num_parameters(non_embedding=True)
    assert report["flops"]["per_token"] == plan.flops_per_token
    assert len(report["model"]["layers"]) == depth
    del torch


def test_state_terms_by_sharding():
    cfg = tiny(depth=4, ar=32)
    P = count_parameters(cfg).total
    single = memory_estimate(cfg, 2, 64, Assumptions(accelerator="cpu"))["bytes"]
    assert single["weights"] == 4 * P and single["optimizer"] == 8 * P and single["gradients"] == 0
    full = memory_estimate(cfg, 2, 64, Assumptions(devices=8, strategy="fsdp", sharding="full"))
    b = full["bytes"]
    assert full["sharded_over"] == 8 and full["precision"] == "bf16-mixed"
    assert b["weights"] == int(4 * P / 8) and b["optimizer"] == int(8 * P / 8)
    grad_op = memory_estimate(cfg, 2, 64, Assumptions(devices=8, strategy="fsdp", sharding="grad_op"))["bytes"]
    assert grad_op["weights"] == 4 * P and grad_op["optimizer"] == int(8 * P / 8)
    hybrid = memory_estimate(cfg, 2, 64, Assumptions(devices=4, nodes=2, strategy="fsdp"))
    assert hybrid["sharding"] == "hybrid" and hybrid["sharded_over"] == 4
    ddp = memory_estimate(cfg, 2, 64, Assumptions(devices=2, strategy="ddp"))["bytes"]
    assert ddp["weights"] == 4 * P and ddp["ddp_buckets"] == 4 * P
    accum = memory_estimate(cfg, 2, 64, Assumptions(devices=8, strategy="fsdp"), grad_accum=4)["bytes"]
    assert accum["gradients"] == 4 * P  # FSDP no_sync keeps unsharded gradients while accumulating
    true16 = memory_estimate(cfg, 2, 64, Assumptions(precision="bf16-true"))["bytes"]
    assert true16["weights"] == 2 * P and true16["optimizer"] == 4 * P


def test_block_activations_by_hand():
    # transformer d4 ar32: w 128, 4 heads x 32, 1 kv group (K = 32), MLP hidden 512, RoPE
    cfg = Config.from_arch("transformer", 4, ar=32, vocab_size=512, block_size=256)
    assert (cfg.n_embd, cfg.attn_dim, cfg.kv_dim, cfg.intermediate_size) == (128, 128, 32, 512)
    spec = cfg.layer_plan()[0]
    n, a = 1000, 2
    w, A, K, H = 128, 128, 32, 512
    norm = n * w * 4 + n * w * a + n * 4
    attention = n * a * ((A + 2 * K) + (A + K) + A) + n * cfg.n_head * 4
    mlp = n * a * 4 * H
    expected = 2 * n * w * 4 + 2 * norm + attention + mlp
    assert block_activation_bytes(cfg, spec, n, a) == expected
    # fp32: every activation 4 bytes
    assert block_activation_bytes(cfg, spec, n, 4) == (2 * n * w * 4 + 2 * (n * w * 8 + n * 4)
                                                       + n * 4 * (A + 2 * K + A + K + A) + n * cfg.n_head * 4
                                                       + n * 4 * 4 * H)


def test_head_and_checkpointing_terms():
    cfg = Config.from_arch("transformer", 2, ar=64, vocab_size=32000, block_size=4096)
    big = memory_estimate(cfg, 4, 4096, Assumptions())  # 16k tokens x 32k vocab > 2^26: chunked loss
    V, w = cfg.padded_vocab_size, cfg.n_embd
    assert big["bytes"]["head_transient"] == 4096 * V * 4 * 2 + V * w * 2
    assert big["total_with_checkpointing"] < big["total"]
    assert big["activations_checkpointed"] < big["bytes"]["activations"]


def test_report_table_and_fit_warning():
    from lit_gpt.training.options import RunOptions

    small = plan_report(RunOptions(train_model="transformer", depth=8, train_name="scaling_mup", vocab_size=32000,
                                   devices=8))
    assert small["memory"]["fits"] and not small["warnings"]
    assert small["time"]["hours"] > 0 and math.isclose(small["time"]["assumed_mfu"], 0.4)
    rules = {r["name"]: r for r in small["hyperparameters"]}
    assert "sqrt(d0/L)" in rules["peak lr"]["rule"] and math.isclose(rules["logit multiplier"]["value"], 2.0)
    table = format_plan_table(small)
    assert "memory per device" in table and "hyperparameter" in table and "time" in table
    huge = plan_report(RunOptions(train_model="transformer", depth=24, train_name="scaling_mup", vocab_size=32000,
                                  micro_bsz=8, devices=1))
    assert not huge["memory"]["fits"] and huge["warnings"]
    assert "exceeds" in format_plan_table(huge)


@pytest.mark.parametrize("arch,depth,ar", [("transformer", 2, 64), ("transformer", 4, 32)])
def test_estimate_matches_measured_cpu_peak(arch, depth, ar):
    """Peak tensor memory of a real training step (forward, backward, clip, AdamW) on CPU, fp32."""
    torch = pytest.importorskip("torch")
    from lit_gpt.model import GPT
    from lit_gpt.planner import measure_peak_tensor_bytes
    from lit_gpt.scaling import param_groups

    torch.manual_seed(0)
    mbs, T = 4, 256
    cfg = Config.from_arch(arch, depth, ar=ar, vocab_size=512, block_size=T, parameterization="mup++")
    model = GPT(cfg)
    plan = transfer(BaseHyperparameters(d0=depth, b0=mbs * T), cfg, Launch(micro_batch=mbs, seq_len=T), max_steps=3)
    opt = torch.optim.AdamW(param_groups(model, plan), lr=1e-3, foreach=False)
    batch = torch.randint(0, 512, (mbs, T + 1))

    def step():
        loss = model(batch[:, :-1], targets=batch[:, 1:]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # the optimizer states exist from here on
    resident = list(model.parameters()) + [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    resident_bytes = sum(t.numel() * t.element_size() for t in resident)
    measured = measure_peak_tensor_bytes(step, resident)
    total = resident_bytes + measured["peak"]
    estimate = memory_estimate(cfg, mbs, T, Assumptions(accelerator="cpu"))["total"]
    assert measured["end"] == 0
    assert abs(estimate - total) / total < 0.15, (estimate, total)
