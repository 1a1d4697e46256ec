"""Benchmarks and the fused step pieces they compare (CPU, a few seconds; the GPU numbers come from gpu_suite.sh)."""

from __future__ import annotations

import copy
import json
import os
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # benchmarks/ is a folder of the repository, not of the installed package
    sys.path.insert(0, str(REPO))

from benchmarks import throughput  # noqa: E402
from benchmarks.hf_llama_peer import anchor_flops_per_token  # noqa: E402
from lit_gpt.config import Config  # noqa: E402
from lit_gpt.kernels.cross_entropy import linear_cross_entropy  # noqa: E402
from lit_gpt.kernels.fused_ops import (clip_and_guard_, default_chunk_rows, disarm_,  # noqa: E402
                                       fused_linear_cross_entropy, supports_fused_guard)
from lit_gpt.scaling import count_parameters, flops_per_token  # noqa: E402


# ------------------------------------------------------------------------------------------ fused cross-entropy
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("chunk_rows", [None, 64, 1000])
def test_fused_ce_matches_cross_entropy(label_smoothing, chunk_rows):
    torch.manual_seed(0)
    n, c, v = 300, 16, 77
    hidden = torch.randn(n, c, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, c, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, v, (n,))
    targets[::7] = -100
    ref = F.cross_entropy(hidden @ weight.T, targets, ignore_index=-100, label_smoothing=label_smoothing)
    g_hidden, g_weight = torch.autograd.grad(3 * ref, (hidden, weight))
    out = fused_linear_cross_entropy(hidden, weight, targets, label_smoothing=label_smoothing, chunk_rows=chunk_rows)
    f_hidden, f_weight = torch.autograd.grad(3 * out, (hidden, weight))
    assert out.dtype == torch.float32
    assert abs(out.item() - ref.item()) < 1e-5  # the softmax math is fp32
    torch.testing.assert_close(f_hidden, g_hidden, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(f_weight, g_weight, atol=1e-6, rtol=1e-5)


def test_fused_ce_dispatch_batched_and_no_grad(monkeypatch):
    torch.manual_seed(1)
    hidden = torch.randn(2, 10, 8)
    weight = torch.randn(50, 8)
    targets = torch.randint(0, 50, (2, 10))
    ref = F.cross_entropy((hidden @ weight.T).view(-1, 50), targets.view(-1))
    out = linear_cross_entropy(hidden, weight, targets, impl="fused")
    assert abs(out.item() - ref.item()) < 1e-5
    monkeypatch.setenv("LITSCALE_CE_IMPL", "fused")
    with torch.no_grad():
        assert abs(linear_cross_entropy(hidden, weight, targets).item() - ref.item()) < 1e-5


def test_default_chunk_rows():
    assert default_chunk_rows(8192, 32000) == 8192  # micro_bsz 2 x ctx 4096: one chunk
    assert default_chunk_rows(16384, 32000) == 8192
    assert default_chunk_rows(100, 200064) == 100
    assert default_chunk_rows(10**6, 200064) % 256 == 0


# ------------------------------------------------------------------------------------------ clip + guard
def _pair():
    torch.manual_seed(0)
    m1 = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))
    m2 = copy.deepcopy(m1)
    o1 = torch.optim.AdamW(m1.parameters(), lr=1e-2, fused=True)
    o2 = torch.optim.AdamW(m2.parameters(), lr=1e-2, fused=True)
    return m1, m2, o1, o2


def test_clip_and_guard_matches_clip_grad_norm_and_skips_nonfinite():
    m1, m2, o1, o2 = _pair()
    assert supports_fused_guard(o2)
    for step in range(4):
        x = torch.randn(5, 8) * 10
        for m in (m1, m2):
            m(x).pow(2).sum().backward()
        if step == 2:  # a non-finite step: the reference skips it, the fused guard must leave everything as is
            for p in m2.parameters():
                p.grad[0].fill_(float("nan"))
            o1.zero_grad()
            norm, found = clip_and_guard_(o2, m2.parameters(), 1.0)
            assert found.item() == 1.0 and not math.isfinite(norm.item())
        else:
            ref = torch.nn.utils.clip_grad_norm_(m1.parameters(), 1.0)
            norm, found = clip_and_guard_(o2, m2.parameters(), 1.0)
            assert found.item() == 0.0 and abs(norm.item() - ref.item()) < 1e-3 * ref.item()
            o1.step()
        o2.step()
        o1.zero_grad()
        o2.zero_grad()
        for a, b in zip(m1.parameters(), m2.parameters()):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    p1, p2 = next(m1.parameters()), next(m2.parameters())
    assert o1.state[p1]["step"].item() == o2.state[p2]["step"].item() == 3
    disarm_(o2)
    assert o2.grad_scale is None and o2.found_inf is None


def test_clip_and_guard_sums_sharded_norms():
    """Two ranks each holding half of every gradient (as FSDP shards them) clip with the global norm."""
    m1, m2, o1, o2 = _pair()
    x = torch.randn(5, 8) * 10
    for m in (m1, m2):
        m(x).pow(2).sum().backward()
    ref = torch.nn.utils.clip_grad_norm_(m1.parameters(), 1.0)
    full = [p.grad.flatten() for p in m2.parameters()]
    halves = [[g[: g.numel() // 2] for g in full], [g[g.numel() // 2:] for g in full]]
    other = torch.nn.utils.get_total_norm(halves[1], 2.0) ** 2
    local = [torch.nn.Parameter(torch.zeros_like(g)) for g in halves[0]]
    for p, g in zip(local, halves[0]):
        p.grad = g.clone()
    opt = torch.optim.AdamW(local, lr=1e-2, fused=True)
    norm, found = clip_and_guard_(opt, local, 1.0, sum_over_shards=lambda sq: sq + other)
    assert found.item() == 0.0
    torch.testing.assert_close(norm, ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(opt.grad_scale, ref / 1.0 + 1e-6, rtol=1e-5, atol=0)


def test_clip_and_guard_needs_fused_adam():
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    assert not supports_fused_guard(opt)
    with pytest.raises(ValueError, match="fused"):
        clip_and_guard_(opt, model.parameters(), 1.0)


# ------------------------------------------------------------------------------------------ throughput script
def test_parse_variant_tokens():
    v = throughput.parse_variant("fast+expand_kv", compile_default=True, ac_default=False)
    assert (v.ce, v.guard_on, v.expand_kv, v.guard, v.compile) == ("fused", "device", True, True, "blocks")
    assert throughput.parse_variant("base", compile_default=True, ac_default=False).guard_on == "auto"
    assert throughput.parse_variant("host_guard", compile_default=True, ac_default=False).guard_on == "host"
    v = throughput.parse_variant("model_compile", compile_default=True, ac_default=False)
    assert (v.ce, v.compile) == ("dense", "model")
    v = throughput.parse_variant("no_guard+chunked_ce+no_compile+ac", compile_default=True, ac_default=False)
    assert (v.ce, v.guard, v.compile, v.ac) == ("chunked", False, "none", True)
    with pytest.raises(SystemExit):
        throughput.parse_variant("fast+warp_speed", compile_default=True, ac_default=False)
    assert throughput.parse_variant("base", compile_default=True, ac_default=False).adamw == "auto"
    assert throughput.parse_variant("torch_adamw", compile_default=True, ac_default=False).adamw == "torch"
    assert throughput.parse_variant("fast+triton_adamw", compile_default=True, ac_default=False).adamw == "triton"
    assert throughput.parse_variant("autograd_accum", compile_default=True, ac_default=False).autograd_accum
    assert not throughput.parse_variant("base", compile_default=True, ac_default=False).autograd_accum


def test_cpu_smoke_optimizer_benchmark(tmp_path):
    """benchmarks/optimizer.py on CPU (no interpreter: TritonAdamW takes torch's step, so the rows agree exactly)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the interpreter would run the kernel: minutes")
    from benchmarks import optimizer

    out = tmp_path / "opt.json"
    assert optimizer.main(["--cpu", "--train_model", "sambay", "--depth", "4", "--ar", "8", "--steps", "2",
                           "--warmup", "1", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["optimizer"] for r in data["rows"]] == ["torch_fused", "triton"]
    assert data["params"] > 0 and data["max_rel_diff"] == 0.0


def test_expand_kv_patch_keeps_the_loss():
    from lit_gpt.model import GPT

    torch.manual_seed(0)
    config = Config.from_arch("transformer", 4, ar=16, block_size=32, vocab_size=128)
    assert config.n_query_groups < config.n_head
    model = GPT(config)
    idx = torch.randint(0, 128, (2, 32))
    ref = model(idx, targets=idx).loss
    with throughput.expanded_kv(True):
        out = model(idx, targets=idx).loss
    torch.testing.assert_close(out, ref)


def test_anchor_and_spec_flops_agree_for_transformer():
    config = Config.from_arch("transformer", 16, block_size=4096)
    counts = count_parameters(config)
    anchor = anchor_flops_per_token(counts.total, counts.embedding, 16, config.n_embd, 4096)
    assert abs(anchor / flops_per_token(config, 4096) - 1) < 1e-3


def test_cpu_smoke_runs_the_trainer_step(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # --cpu sets it; monkeypatch restores it afterwards
    out = tmp_path / "tp.json"
    rc = throughput.main(["--cpu", "--depth", "1", "--ar", "16", "--ctx_len", "32", "--vocab_size", "256",
                          "--steps", "2", "--warmup", "1", "--variants", "base,fused_ce+expand_kv+no_guard",
                          "--planner", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["device"].startswith("cpu") and data["torch"] == torch.__version__
    rows = {r["name"]: r for r in data["results"]}
    assert set(rows) == {"base", "fused_ce+expand_kv+no_guard"}
    for r in rows.values():
        assert "error" not in r, r.get("traceback")
        assert r["tokens_per_s"] > 0 and r["mfu_spec"] is None
        assert abs(r["final_loss"] - math.log(256)) < 0.5
        assert "planner" in r
    assert rows["fused_ce+expand_kv+no_guard"]["ce_impl"] == "fused"
    table = throughput.summarize_files([str(out), str(tmp_path / "missing.json")])
    assert "base" in table and "missing.json: no results" in table


def test_cpu_peer_has_our_shape():
    pytest.importorskip("transformers")
    from benchmarks.hf_llama_peer import llama_config
    from transformers import LlamaForCausalLM

    config = Config.from_arch("transformer", 4, ar=16, block_size=32, vocab_size=256)
    peer = LlamaForCausalLM(llama_config(config))
    assert sum(p.numel() for p in peer.parameters()) == count_parameters(config).total
    with pytest.raises(ValueError, match="full attention"):
        llama_config(Config.from_arch("sambay", 4, ar=16, block_size=32))


def test_training_loop_imports_without_data_or_cli_packages():
    code = ("import sys, lit_gpt.training.loop, benchmarks.throughput; "
            "bad = [m for m in ('litdata', 'jsonargparse', 'transformers') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_gpu_suite_script_parses():
    subprocess.run(["bash", "-n", str(REPO / "benchmarks" / "gpu_suite.sh")], check=True)


def test_cross_entropy_default_choice(monkeypatch):
    from lit_gpt.kernels import cross_entropy

    monkeypatch.delenv("LITSCALE_CE_IMPL", raising=False)
    monkeypatch.setattr(cross_entropy, "_liger_available", lambda: False)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert cross_entropy.choose_impl(8192, 32000, cuda) == "fused"
    assert cross_entropy.choose_impl(8192, 32000, cpu) == "chunked"
    assert cross_entropy.choose_impl(64, 32000, cuda) == "dense"


def test_cpu_fused_clip_variant_through_the_trainer(tmp_path, monkeypatch):
    """``fast`` (= --guard device: grad_scale/found_inf on the real fused AdamW, CPU's standing in for CUDA's) end to
    end through Trainer.train_step."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    out = tmp_path / "tp.json"
    rc = throughput.main(["--cpu", "--depth", "1", "--ar", "16", "--ctx_len", "32", "--vocab_size", "256",
                          "--steps", "2", "--warmup", "1", "--variants", "fast,host_guard", "--json", str(out)])
    assert rc == 0
    fast, host = json.loads(out.read_text())["results"][:2]
    assert "error" not in fast, fast.get("traceback")
    assert fast["ce_impl"] == "fused" and fast["variant"]["guard_on"] == "device" and fast["skipped_steps"] == 0
    assert host["variant"]["guard_on"] == "host"
    assert abs(fast["final_loss"] - math.log(256)) < 0.5


CEILING_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
try:
    import torch
    from benchmarks import scan_ceiling as sc
except ImportError as err:
    print(err); sys.exit(77)
errors = {"exp2_fma": sc.exp2_fma_error("cpu", 4096)}
tokens, dim, ns = 32, 64, 16
x, dt, _, A2, B, C = sc.make_inputs(tokens, dim, ns, torch.bfloat16, "cpu")
for work in sc.WORKS:
    for poly in (0, 5, 16):
        out = torch.empty(tokens, dim)
        sc.ceiling_kernel[(tokens // 16, dim // 32)](x, dt, A2, B, C, out, dim, NS=ns, WORK=sc.WORKS[work], POLY=poly,
                                                     BLOCK_T=16, BLOCK_D=32)
        want = sc.reference(work, x, dt, A2, B, C)
        errors[f"{work}_poly{poly}"] = ((out.double() - want).abs().max() / want.abs().max()).item()
print("RESULT " + json.dumps(errors))
"""


def test_scan_ceiling_kernels_compute_what_they_claim(tmp_path):
    """benchmarks/scan_ceiling.py's kernels in Triton's interpreter: the FMA-only exp2 within 3e-7 of exact over the
    scan's range, and every stage (with 0, 5 or 16 of its exponentials on FMAs) equal to its float64 reference."""
    from script_runner import run_script

    errors = run_script(tmp_path, CEILING_SCRIPT)
    assert errors.pop("exp2_fma") < 3e-7
    assert len(errors) == 9 and max(errors.values()) < 1e-5, errors
