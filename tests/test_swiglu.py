"""lit_gpt/kernels/swiglu.py: the one-pass Triton backward of silu(gate) · up against fp64 autograd."""

from __future__ import annotations

import os
import textwrap

import pytest
import torch
from script_runner import run_script


def grad_errors(device: str, dtype: torch.dtype, shape: tuple, seed: int = 0, compile_backend=None) -> dict:
    """Max errors of ``swiglu`` (output, gradient) against fp64 autograd on the same rounded inputs, relative to
    the reference's largest magnitude, and the largest error per element in units of its own size."""
    from lit_gpt.kernels.swiglu import swiglu, swiglu_reference

    gen = torch.Generator().manual_seed(seed)
    fused = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3).to(dtype).to(device)
    grad = torch.randn(shape[:-1] + (shape[-1] // 2,), generator=gen, dtype=torch.float64).to(dtype).to(device)
    x = fused.clone().requires_grad_()
    fn = swiglu if compile_backend is None else torch.compile(swiglu, backend=compile_backend, fullgraph=True)
    y = fn(x)
    (dx,) = torch.autograd.grad(y, x, grad)
    r = fused.double().requires_grad_()
    y_ref = swiglu_reference(r)
    (dr,) = torch.autograd.grad(y_ref, r, grad.double())
    scale = dr.abs().max().item()
    big = dr.abs() > 1e-3 * scale
    return {"path": type(y.grad_fn).__name__ if compile_backend is None else "compiled",
            "out_rel": ((y.double() - y_ref).abs().max() / y_ref.abs().max()).item(),
            "grad_rel": ((dx.double() - dr).abs().max() / scale).item(),
            "grad_elem_rel": ((dx.double() - dr).abs()[big] / dr.abs()[big]).max().item(),
            "dtype": str(dx.dtype)}


def test_plain_path_without_a_kernel(monkeypatch):
    """On CPU (no interpreter), and with LITSCALE_SWIGLU_TRITON=0, swiglu is the plain torch expression."""
    from lit_gpt.kernels.swiglu import swiglu

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("the interpreter runs the kernel on CPU tensors")
    x = torch.randn(4, 10, requires_grad=True)
    assert type(swiglu(x).grad_fn).__name__ == "MulBackward0"
    r = grad_errors("cpu", torch.float32, (3, 4, 2 * 9))
    assert r["path"] == "MulBackward0" and r["grad_rel"] < 1e-6, r


_INTERPRET_SCRIPT = textwrap.dedent(r"""
    import json, os, sys
    sys.path.insert(0, sys.argv[1]); sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
    import torch
    torch.set_num_threads(1)
    try:
        import triton  # noqa: F401
        import lit_gpt.kernels.swiglu as sw
    except Exception as e:
        print("UNSUPPORTED import:", repr(e)); sys.exit(77)
    from test_swiglu import grad_errors
    sw.BLOCK = 16  # several column blocks per row and a masked tail at H = 37
    out = {"fp32": grad_errors("cpu", torch.float32, (3, 5, 2 * 37)),
           "bf16": grad_errors("cpu", torch.bfloat16, (7, 2 * 40), seed=1),
           "compiled": grad_errors("cpu", torch.float32, (2, 2 * 37), seed=2, compile_backend="aot_eager")}
    os.environ[sw.ENV] = "0"
    out["disabled"] = grad_errors("cpu", torch.float32, (2, 2 * 8))
    print("RESULT " + json.dumps(out))
""")


def test_triton_backward_in_the_interpreter(tmp_path):
    pytest.importorskip("triton")
    r = run_script(tmp_path, _INTERPRET_SCRIPT)
    assert r["fp32"]["path"] == "_SwiGLUBackward" and r["fp32"]["grad_elem_rel"] < 1e-5, r
    # the interpreter's bf16 cast truncates (the GPU rounds to nearest even): within one bf16 step, 2^-7
    assert r["bf16"]["path"] == "_SwiGLUBackward" and r["bf16"]["dtype"] == "torch.bfloat16", r
    assert r["bf16"]["grad_elem_rel"] < 2**-7, r
    # torch.compile traces the autograd Function and the custom op in one graph
    assert r["compiled"]["grad_elem_rel"] < 1e-5, r
    assert r["disabled"]["path"] == "MulBackward0", r


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_backward_on_cuda(dtype):
    pytest.importorskip("triton")
    r = grad_errors("cuda", dtype, (2, 300, 2 * 1100))
    assert r["path"] == "_SwiGLUBackward", r
    # one rounding of the fp32 result: at most half a bf16 step (2^-9) per element, fp32 to libdevice accuracy
    assert r["grad_elem_rel"] < (2**-8 if dtype == torch.bfloat16 else 1e-5), r
    compiled = grad_errors("cuda", dtype, (2, 64, 2 * 1100), seed=3, compile_backend="inductor")
    assert compiled["grad_elem_rel"] < (2**-8 if dtype == torch.bfloat16 else 1e-5), compiled


@pytest.mark.gpu
@cuda
def test_swiglu_bwd_opcheck():
    pytest.importorskip("triton")
    from lit_gpt.kernels import swiglu  # noqa: F401

    fused = torch.randn(3, 16, 2 * 96, device="cuda", dtype=torch.bfloat16)
    grad = torch.randn(3, 16, 96, device="cuda", dtype=torch.bfloat16)
    torch.library.opcheck(torch.ops.litscale.swiglu_bwd.default, (fused, grad))
