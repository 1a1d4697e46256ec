"""bf16 working copies written by the optimizer (training/working_copies.py): same forward as autocast, same run,
exact resume, and the cases where they must not apply."""

from __future__ import annotations

import json
from contextlib import nullcontext

import pytest
import torch
from torch import nn

from lit_gpt.kernels import adamw
from lit_gpt.kernels.adamw import TritonAdamW
from lit_gpt.training.cli import main
from lit_gpt.training.working_copies import (WorkingCopies, WorkingCopyLinear, accumulate_weight_gradient_, attach,
                                             weight_gradient)
from test_pretrain import TINY, assert_same_run, final_weights, read_metrics, resume_from


def _pair(bias: bool, monkeypatch):
    monkeypatch.setattr(adamw, "MIN_TRITON_NUMEL", 1)  # the optimizer's kernel takes (and so copies) any size
    torch.manual_seed(0)
    plain = nn.Linear(64, 48, bias=bias)
    swapped = nn.Linear(64, 48, bias=bias)
    swapped.load_state_dict(plain.state_dict())
    copies = attach(swapped, TritonAdamW(swapped.parameters(), lr=1e-3))
    assert copies.modules == [swapped] and isinstance(swapped, WorkingCopyLinear)
    return plain, swapped


@pytest.mark.parametrize("bias", [False, True])
def test_linear_on_working_copy_is_autocast_linear(bias, monkeypatch):
    plain, swapped = _pair(bias, monkeypatch)
    x = torch.randn(3, 5, 64)
    outs, grads = [], []
    for module in (plain, swapped):
        xi = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = module(xi)
        y.float().square().sum().backward()
        outs.append(y)
        grads.append([xi.grad, module.weight.grad] + ([module.bias.grad] if bias else []))
    assert outs[0].dtype == outs[1].dtype == torch.bfloat16
    assert torch.equal(outs[0], outs[1])
    assert torch.equal(grads[0][0], grads[1][0])  # input gradient: the same bf16 GEMM, cast to fp32
    assert torch.equal(grads[0][1], grads[1][1]) and grads[1][1].dtype == torch.float32  # weight gradient
    if bias:  # summed in fp32 here, in bf16 by autocast's linear
        assert torch.allclose(grads[0][2], grads[1][2], rtol=1e-2, atol=1e-2)
    assert torch.equal(plain(x), swapped(x))  # outside autocast: the fp32 weight, as a plain Linear


@pytest.mark.parametrize("compiled", [False, True])
def test_accumulating_sums_in_the_weight_gradient_op(compiled, monkeypatch):
    """Micro steps after the first: the module's backward adds its product to the gradient so far in place, autograd
    gets no weight gradient to accumulate (its hook sees None), and .grad ends up bit for bit what autograd's own
    accumulation gives, eager and compiled; a weight no backward reached keeps its gradient."""
    plain, swapped = _pair(False, monkeypatch)
    copies = WorkingCopies([swapped])
    run = torch.compile(swapped, backend="aot_eager") if compiled else swapped
    arrived = []
    swapped.weight.register_hook(lambda g: arrived.append(g is not None))

    def micro_step(module, x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            module(x).float().square().sum().backward()

    for i in range(3):
        x = torch.randn(3, 5, 64)
        micro_step(plain, x)
        before = swapped.weight.grad
        with copies.accumulating() if i else nullcontext():
            micro_step(run, x)
        assert torch.equal(plain.weight.grad, swapped.weight.grad)
        assert i == 0 or swapped.weight.grad is before  # summed in place
        assert swapped.accumulated is None
    assert arrived == [True, False, False]
    kept = swapped.weight.grad
    with copies.accumulating():
        pass
    assert swapped.weight.grad is kept


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_weight_gradient_accumulates_in_the_gemm_on_cuda():
    g = torch.randn(512, 48, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(512, 64, device="cuda", dtype=torch.bfloat16)
    accumulated = torch.randn(48, 64, device="cuda")
    want = accumulated.double() + g.t().double() @ x.double()
    pointer = accumulated.data_ptr()
    accumulate_weight_gradient_(accumulated, g, x)
    assert accumulated.data_ptr() == pointer and torch.allclose(accumulated.double(), want, rtol=1e-5, atol=1e-4)
    assert torch.equal(weight_gradient(g, x), torch.mm(g.t(), x, out_dtype=torch.float32))
    torch.library.opcheck(torch.ops.litscale.accumulate_weight_gradient_, (accumulated, g, x))


def test_copy_follows_optimizer_steps_and_refresh(monkeypatch):
    """The optimizer keeps the copy equal to the weight's bf16 rounding (here through torch's step on the CPU);
    refresh_working_copies() re-derives it after the weight changes outside the optimizer."""
    _, swapped = _pair(False, monkeypatch)
    optimizer = TritonAdamW(swapped.parameters(), lr=1e-2)
    optimizer.keep_working_copy(swapped.weight, swapped.working)
    for _ in range(3):
        swapped.weight.grad = torch.randn_like(swapped.weight)
        optimizer.step()
        assert torch.equal(swapped.working, swapped.weight.detach().to(torch.bfloat16))
    with torch.no_grad():
        swapped.weight.mul_(2)
    stale = swapped.working.clone()
    optimizer.refresh_working_copies()
    assert not torch.equal(stale, swapped.working)
    assert torch.equal(swapped.working, swapped.weight.detach().to(torch.bfloat16))
    assert attach(nn.Sequential(), optimizer).modules == []  # nothing to swap
    with pytest.raises(ValueError, match="must be bf16"):
        optimizer.keep_working_copy(swapped.weight, swapped.weight.detach().half())


def test_attach_leaves_tied_and_small_weights_and_state_dict_alone(monkeypatch):
    from lit_gpt.config import Config
    from lit_gpt.model import GPT

    config = Config.from_name("transformer_d2", ar=16, vocab_size=256, tied_embeddings=True)
    model = GPT(config)
    keys = list(model.state_dict())
    optimizer = TritonAdamW(model.parameters(), lr=1e-3)
    monkeypatch.setattr(adamw, "MIN_TRITON_NUMEL", 32 * 32 + 1)  # only matrices larger than n_embd²
    copies = attach(model, optimizer)
    swapped = {name for name, m in model.named_modules() if isinstance(m, WorkingCopyLinear)}
    assert swapped and "lm_head" not in swapped  # tied to the embedding, which reads the fp32 weight
    assert all(m.weight.numel() > 32 * 32 for m in copies.modules)
    assert all(isinstance(m, WorkingCopyLinear) == (name in swapped) for name, m in model.named_modules())
    assert list(model.state_dict()) == keys  # the copies are neither parameters nor buffers
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_weight_cast_option_resolves_and_refuses_what_cannot_work():
    from lit_gpt.training.loop import weight_cast
    from lit_gpt.training.options import OptionsError, RunOptions
    from lit_gpt.training.parallel import System

    def system(accelerator="cuda", precision="bf16-mixed", strategy="single"):
        return System(accelerator=accelerator, devices=1, nodes=1, strategy=strategy, precision=precision,
                      compile=False)

    assert weight_cast(RunOptions(), system()) == "optimizer"
    assert weight_cast(RunOptions(), system("cpu")) == "forward"  # no gain off the GPU
    assert weight_cast(RunOptions(adamw_kernel="triton", weight_cast="optimizer"), system("cpu")) == "optimizer"
    assert weight_cast(RunOptions(weight_cast="forward"), system()) == "forward"
    assert weight_cast(RunOptions(), system(strategy="fsdp")) == "forward"
    assert weight_cast(RunOptions(), system(precision="32-true")) == "forward"
    for opts, sys_, message in ((RunOptions(weight_cast="optimizer"), system(strategy="fsdp"), "FSDP"),
                                (RunOptions(weight_cast="optimizer"), system(precision="32-true"), "32-true"),
                                (RunOptions(weight_cast="optimizer", adamw_kernel="torch"), system(), "Triton AdamW")):
        with pytest.raises(OptionsError, match=message):
            weight_cast(opts, sys_)
    with pytest.raises(OptionsError, match="--weight_cast 'bf16' must be auto, forward or optimizer"):
        RunOptions(weight_cast="bf16").resolve()


BF16_RUN = TINY + ["--precision", "bf16-mixed", "--adamw_kernel", "triton", "--log_step", "1", "--eval_step", "100"]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[
    pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")])])
def test_bf16_run_with_working_copies_matches_autocast_casts_and_resumes(device, builtin_data, tmp_path, monkeypatch,
                                                                         capsys):
    """A bf16-mixed run with the optimizer's copies trains like autocast's casts (on the CPU exactly; on CUDA the
    weight gradients skip autocast's bf16 rounding, so closely); a resumed run matches the uninterrupted one, and a
    run started from saved weights starts from their copies."""
    monkeypatch.setattr(adamw, "MIN_TRITON_NUMEL", 1)  # every Linear of the tiny model gets a copy
    if device == "cpu":
        monkeypatch.setattr("lit_gpt.training.parallel.detect_accelerator", lambda: "cpu")

    def same(a, b):
        return a == b if device == "cpu" else a == pytest.approx(b, rel=2e-3)

    common = BF16_RUN + ["--train_data_dir", builtin_data, "--max_steps", "12", "--save_step", "6"]
    cast, copies, resumed = tmp_path / "cast", tmp_path / "copies", tmp_path / "resumed"
    assert main(common + ["--out_dir", str(cast), "--weight_cast", "forward"]) == 0
    assert "weight casts:" not in capsys.readouterr().out
    assert main(common + ["--out_dir", str(copies), "--weight_cast", "optimizer"]) == 0
    assert "weight casts: the optimizer writes bf16 copies of 8 Linear weights" in capsys.readouterr().out
    assert [json.loads((d / "run.json").read_text())["weight_cast"] for d in (cast, copies)] == ["forward", "optimizer"]
    a = [float(r["train_loss"]) for r in read_metrics(cast) if r["train_loss"]]
    b = [float(r["train_loss"]) for r in read_metrics(copies) if r["train_loss"]]
    assert len(a) == 12 and same(a, b)
    if device == "cpu":
        wa, wb = final_weights(cast), final_weights(copies)
        assert all(torch.equal(wa[k], wb[k]) and wb[k].dtype == wa[k].dtype for k in wa)
    resume_from(copies, resumed, 6)
    assert main(common + ["--out_dir", str(resumed), "--weight_cast", "optimizer", "--resume", "auto"]) == 0
    assert_same_run(copies, resumed, range(7, 13))
    # weights alone (--load_dir: no optimizer state, so no optimizer step re-derives the copies before the forward)
    loaded = {}
    for mode in ("forward", "optimizer"):
        out = tmp_path / f"loaded_{mode}"
        assert main(BF16_RUN + ["--train_data_dir", builtin_data, "--max_steps", "2", "--save_step", "100",
                                "--out_dir", str(out), "--weight_cast", mode, "--load_dir", str(copies)]) == 0
        loaded[mode] = [float(r["train_loss"]) for r in read_metrics(out) if r["train_loss"]]
    assert len(loaded["forward"]) == 2 and same(loaded["forward"], loaded["optimizer"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compiled_accumulating_run_matches_autocast_casts(builtin_data, tmp_path, monkeypatch):
    """Four micro steps per optimizer step through compiled Blocks: the GEMMs' accumulation (a second graph per
    Block, with the gradient so far as an input) trains like autocast's casts and autograd's accumulation."""
    monkeypatch.setattr(adamw, "MIN_TRITON_NUMEL", 1)
    run = BF16_RUN + ["--train_data_dir", builtin_data, "--max_steps", "6", "--save_step", "100", "--compile", "true",
                      "--total_bsz", "1024"]
    losses = {}
    for mode in ("forward", "optimizer"):
        out = tmp_path / mode
        assert main(run + ["--out_dir", str(out), "--weight_cast", mode]) == 0
        losses[mode] = [float(r["train_loss"]) for r in read_metrics(out) if r["train_loss"]]
    assert len(losses["forward"]) == 6 and losses["optimizer"] == pytest.approx(losses["forward"], rel=2e-3)


def test_accumulating_under_activation_checkpointing_matches_autocast_casts(builtin_data, tmp_path, monkeypatch):
    """Per-Block checkpointing recomputes each forward inside the backward, where the Linear reads the gradient so far
    again: a bf16 run at two micro steps per optimizer step still equals autocast's casts bit for bit on the CPU."""
    monkeypatch.setattr(adamw, "MIN_TRITON_NUMEL", 1)
    monkeypatch.setattr("lit_gpt.training.parallel.detect_accelerator", lambda: "cpu")
    run = BF16_RUN + ["--train_data_dir", builtin_data, "--max_steps", "4", "--save_step", "100",
                      "--activation_checkpointing", "true"]
    outs = {mode: tmp_path / mode for mode in ("forward", "optimizer")}
    for mode, out in outs.items():
        assert main(run + ["--out_dir", str(out), "--weight_cast", mode]) == 0
    losses = {mode: [r["train_loss"] for r in read_metrics(out) if r["train_loss"]] for mode, out in outs.items()}
    assert len(losses["forward"]) == 4 and losses["forward"] == losses["optimizer"]
    wa, wb = final_weights(outs["forward"]), final_weights(outs["optimizer"])
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
