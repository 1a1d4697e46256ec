"""TritonAdamW (lit_gpt/kernels/adamw.py) against torch's fused AdamW: same updates, same skips, same state."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import torch
from script_runner import run_script

# Runs in a subprocess (TRITON_INTERPRET must be set before triton is imported) and also, unchanged, on CUDA.
_PARITY_SCRIPT = textwrap.dedent(r"""
    import copy, json, os, sys
    sys.path.insert(0, sys.argv[1])
    device = sys.argv[2]
    import torch
    torch.set_num_threads(1)
    try:
        import lit_gpt.kernels.adamw as adamw
        import triton  # noqa: F401
    except Exception as e:
        print("UNSUPPORTED import:", repr(e)); sys.exit(77)
    if device == "cpu":  # tiny programs: several per tensor, a masked tail, and both paths (Triton / torch's fused)
        adamw.BLOCK, adamw.WARPS, adamw.MIN_TRITON_NUMEL = 32, 1, 40
        sizes = [(7, 13), (45,), (3,), (64,), (5, 9)]
    else:
        sizes = [(1024, 1536), (3000, 700), (2048,), (3,), (1 << 20) + 5]
    dtypes = [torch.float32] if device == "cpu" else [torch.float32, torch.bfloat16]
    calls = {"triton": 0}
    original = adamw.adamw_step_
    def counting(*a, **k):
        calls["triton"] += 1
        return original(*a, **k)
    adamw.adamw_step_ = counting

    def make(dtype, seed=0):
        gen = torch.Generator().manual_seed(seed)
        return [torch.nn.Parameter(torch.randn(s, generator=gen).to(device, dtype)) for s in sizes]

    def groups(ps):  # two groups as μP makes them: different lr and weight decay
        return [{"params": ps[:3], "lr": 3e-2, "weight_decay": 0.1}, {"params": ps[3:], "lr": 1e-2, "weight_decay": 0.0}]

    result = {}
    for dtype in dtypes:
        ref_p, tri_p = make(dtype), make(dtype)
        ref = torch.optim.AdamW(groups(ref_p), betas=(0.9, 0.95), eps=1e-8, fused=True)
        tri = adamw.TritonAdamW(groups(tri_p), betas=(0.9, 0.95), eps=1e-8, fused=True)
        # bf16 working copies (training/working_copies.py) of every fp32 parameter, kernel path and torch's path alike
        copies = [p.detach().to(torch.bfloat16) for p in tri_p] if dtype == torch.float32 else []
        for p, c in zip(tri_p, copies):
            tri.keep_working_copy(p, c)
        copy_diffs = [0.0]
        gen = torch.Generator().manual_seed(1)
        for step in range(5):
            grads = [torch.randn(p.shape, generator=gen).to(device, dtype) for p in ref_p]
            if step == 3:
                grads[0][0] = float("nan")  # the guard's found_inf: both must skip and not count the step
            for ps in (ref_p, tri_p):
                for p, g in zip(ps, grads):
                    p.grad = g.clone()
            for opt, ps in ((ref, ref_p), (tri, tri_p)):
                norm = torch.nn.utils.get_total_norm([p.grad for p in ps], foreach=True).float()
                opt.found_inf = (~torch.isfinite(norm)).float() if step >= 2 else None
                opt.grad_scale = torch.clamp((norm + 1e-6) / 2.0, min=1.0) if step >= 1 and step != 3 else None
                opt.step()
            copy_diffs += [(c.float() - p.detach().to(torch.bfloat16).float()).abs().max().item()
                           for p, c in zip(tri_p, copies)]
        tol_key = str(dtype).split(".")[-1]
        result["copy_max_diff_" + tol_key] = max(copy_diffs)
        result["max_rel_diff_" + tol_key] = max(((a.float() - b.float()).abs().max() / b.float().abs().max()).item()
                                                for a, b in zip(tri_p, ref_p))
        result["state_rel_diff_" + tol_key] = max(
            ((tri.state[a][k].float() - ref.state[b][k].float()).abs().max()
             / ref.state[b][k].float().abs().max().clamp_min(1e-30)).item()
            for a, b in zip(tri_p, ref_p) for k in ("exp_avg", "exp_avg_sq"))
        result["steps_" + tol_key] = sorted({float(tri.state[p]["step"]) for p in tri_p}
                                            | {float(ref.state[p]["step"]) for p in ref_p})
        # state_dicts interchange: torch's state continues in TritonAdamW exactly as in torch's AdamW
        moved_p = [torch.nn.Parameter(p.detach().clone()) for p in ref_p]
        moved = adamw.TritonAdamW(groups(moved_p), betas=(0.9, 0.95), eps=1e-8, fused=True)
        moved.load_state_dict(copy.deepcopy(ref.state_dict()))  # as from a checkpoint: no tensors shared
        result["same_state_keys"] = sorted(moved.state_dict()["state"][0]) == sorted(ref.state_dict()["state"][0])
        grads = [torch.randn(p.shape, generator=gen).to(device, dtype) for p in ref_p]
        for ps in (ref_p, moved_p):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
        ref.grad_scale = ref.found_inf = None  # the loop armed them for its last step only
        ref.step()
        moved.step()
        result["resumed_rel_diff_" + tol_key] = max(
            ((a.float() - b.float()).abs().max() / b.float().abs().max()).item() for a, b in zip(moved_p, ref_p))
    if device == "cpu":  # FSDP2's parameters are DTensors: the kernel updates their local shards
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import Shard, distribute_tensor
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[3])
        dist.init_process_group("gloo", rank=0, world_size=1)
        mesh = init_device_mesh("cpu", (1,))
        before = calls["triton"]
        ref_p, tri_p = make(torch.float32), make(torch.float32)
        tri_p = [torch.nn.Parameter(distribute_tensor(p.detach(), mesh, [Shard(0)])) for p in tri_p]
        ref = torch.optim.AdamW(groups(ref_p), betas=(0.9, 0.95), eps=1e-8, fused=True)
        tri = adamw.TritonAdamW(groups(tri_p), betas=(0.9, 0.95), eps=1e-8, fused=True)
        gen = torch.Generator().manual_seed(2)
        for step in range(3):
            grads = [torch.randn(p.shape, generator=gen) for p in ref_p]
            for p, g in zip(ref_p, grads):
                p.grad = g.clone()
            for p, g in zip(tri_p, grads):
                p.grad = distribute_tensor(g.clone(), mesh, [Shard(0)])
            ref.step()
            tri.step()
        result["dtensor_rel_diff"] = max(((a.full_tensor() - b).abs().max() / b.abs().max()).item()
                                         for a, b in zip(tri_p, ref_p))
        result["dtensor_triton_calls"] = calls["triton"] - before
        dist.destroy_process_group()
    result["triton_calls"] = calls["triton"]
    print("RESULT " + json.dumps(result))
""")


def _run_parity(tmp_path: Path, device: str) -> dict:
    import socket

    with socket.socket() as sock:  # a free port for the one-process gloo group of the DTensor case
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    return run_script(tmp_path, _PARITY_SCRIPT, device, port, interpret=device == "cpu", timeout=600)


def test_triton_adamw_matches_torch_fused_in_the_interpreter(tmp_path):
    pytest.importorskip("triton")
    r = _run_parity(tmp_path, "cpu")
    assert r["triton_calls"] > 0, "no tensor took the Triton kernel"
    assert r["max_rel_diff_float32"] < 1e-5 and r["state_rel_diff_float32"] < 1e-5, r
    assert r["steps_float32"] == [4.0], r  # five steps, the non-finite one skipped and not counted
    assert r["same_state_keys"] and r["resumed_rel_diff_float32"] < 1e-5, r
    assert r["dtensor_triton_calls"] > 0 and r["dtensor_rel_diff"] < 1e-5, r
    assert r["copy_max_diff_float32"] == 0.0, r  # the working copies are the updated weights, rounded as .to() does


def test_triton_adamw_is_torch_adamw_where_the_kernel_does_not_apply():
    """CPU tensors without the interpreter (and DTensors, CPU-offloaded FSDP) take torch's own fused step."""
    from lit_gpt.kernels.adamw import TritonAdamW, triton_step_applies

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the interpreter runs the kernel on CPU tensors")
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(17, 5)), torch.nn.Parameter(torch.randn(5))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    assert not triton_step_applies(b)
    ref, tri = torch.optim.AdamW(a, lr=1e-2, fused=True), TritonAdamW(b, lr=1e-2, fused=True)
    for _ in range(3):
        g = [torch.randn_like(p) for p in a]
        for ps in (a, b):
            for p, gi in zip(ps, g):
                p.grad = gi.clone()
        ref.step()
        tri.step()
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_adamw_kernel_option_picks_the_optimizer():
    from lit_gpt.kernels.adamw import TritonAdamW
    from lit_gpt.training.loop import adamw_class
    from lit_gpt.training.options import OptionsError, RunOptions
    from lit_gpt.training.parallel import System

    def system(accelerator):
        return System(accelerator=accelerator, devices=1, nodes=1, strategy="single", precision="32-true",
                      compile=False)

    assert adamw_class(RunOptions(), system("cuda")) is TritonAdamW
    assert adamw_class(RunOptions(), system("cpu")) is torch.optim.AdamW
    assert adamw_class(RunOptions(adamw_kernel="torch"), system("cuda")) is torch.optim.AdamW
    assert adamw_class(RunOptions(adamw_kernel="triton"), system("cpu")) is TritonAdamW
    with pytest.raises(OptionsError, match="--adamw_kernel 'fast' must be auto, torch or triton"):
        RunOptions(adamw_kernel="fast").resolve()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_triton_adamw_matches_torch_fused_on_cuda(tmp_path):
    r = _run_parity(tmp_path, "cuda")
    assert r["triton_calls"] > 0
    assert r["max_rel_diff_float32"] < 1e-5 and r["state_rel_diff_float32"] < 1e-5, r
    assert r["max_rel_diff_bfloat16"] < 2e-2, r  # one bf16 rounding of the update may differ
    assert r["resumed_rel_diff_float32"] < 1e-5, r
    assert r["steps_float32"] == [4.0] and r["steps_bfloat16"] == [4.0], r
    assert r["copy_max_diff_float32"] == 0.0, r
