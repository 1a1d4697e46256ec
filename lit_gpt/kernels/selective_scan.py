"""Selective scan (Mamba-1 SSM recurrence) with several interchangeable implementations.

Math (per batch element b, channel d, state index n; all accumulation in float32)::

    delta_t = softplus(dt_t + dt_bias)            (or dt_t + dt_bias when dt_softplus=False)
    h_t     = exp(delta_t * A) * h_{t-1} + delta_t * B_t * x_t
    y_t     = sum_n C_t[n] * h_t[n] + D * x_t

``reset[b, t] = True`` marks the first token of a new document: the state is zeroed *before* token t
(equivalently exp(delta_t * A) is replaced by 0 at t), so packed documents never see each other.

Implementations (``impl``):

* ``"reference"`` -- sequential Python loop over time; the ground truth for tests.
* ``"chunked"``   -- pure PyTorch.  Time is cut into chunks; inside a chunk the linear recurrence
  h_t = a_t h_{t-1} + u_t is solved with a log-depth (Hillis-Steele) scan on (a, u) pairs, where every
  product of decays is a product of numbers in [0, 1] (exp of non-positive numbers only, no division,
  no exp of positive cumulative sums).  Chunks are chained sequentially through the carried state and
  each chunk is wrapped in activation checkpointing, so memory is bounded by
  O(batch * chunk * d_inner * d_state) at any time (never batch * T * d_inner * d_state), in forward
  and in backward.  Autograd works through it.  CPU default.
* ``"triton"``    -- fused Triton kernels (forward and backward), see ``selective_scan_triton.py``.
* ``"mamba_ssm"`` -- ``mamba_ssm``'s CUDA ``selective_scan_fn`` when installed (no reset and no
  initial-state support there: those calls fall back to the next best implementation).

``impl=None`` picks: mamba_ssm (CUDA, importable, no reset, no initial_state) > triton (CUDA) > chunked.
The environment variable ``LITSCALE_SCAN_IMPL`` forces one for every call that passes ``impl=None``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_gpt.kernels.triton_support import runs_on

IMPLS = ("reference", "chunked", "triton", "mamba_ssm")
DEFAULT_CHUNK_SIZE = 64

__all__ = [
    "IMPLS",
    "selective_scan",
    "selective_scan_reference",
    "selective_scan_chunked",
    "selective_scan_step",
    "resolve_impl",
    "mamba_ssm_available",
    "triton_available",
]


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _acc(t: Tensor) -> torch.dtype:
    """Accumulation dtype: float32, or float64 for float64 inputs (gradcheck)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _delta(dt: Tensor, dt_bias: Optional[Tensor], dt_softplus: bool) -> Tensor:
    """delta in the accumulation dtype, same shape as dt."""
    z = dt.to(_acc(dt))
    if dt_bias is not None:
        z = z + dt_bias.to(z.dtype)
    return F.softplus(z) if dt_softplus else z


def _check_shapes(x, dt, A, B, C, D, dt_bias, reset, initial_state) -> None:
    if x.dim() != 3:
        raise ValueError(f"x must be [batch, T, d_inner], got {tuple(x.shape)}")
    b, T, d = x.shape
    if dt.shape != x.shape:
        raise ValueError(f"dt must have x's shape {tuple(x.shape)}, got {tuple(dt.shape)}")
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"A must be [d_inner={d}, d_state], got {tuple(A.shape)}")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.shape != (b, T, n):
            raise ValueError(f"{name} must be [batch, T, d_state] = {(b, T, n)}, got {tuple(t.shape)}")
    for name, t in (("D", D), ("dt_bias", dt_bias)):
        if t is not None and t.shape != (d,):
            raise ValueError(f"{name} must be [d_inner={d}], got {tuple(t.shape)}")
    if reset is not None and reset.shape != (b, T):
        raise ValueError(f"reset must be [batch, T] = {(b, T)}, got {tuple(reset.shape)}")
    if initial_state is not None and initial_state.shape != (b, d, n):
        raise ValueError(f"initial_state must be [batch, d_inner, d_state] = {(b, d, n)}, "
                         f"got {tuple(initial_state.shape)}")


# ----------------------------------------------------------------------------------------------
# (a) reference: sequential loop
# ----------------------------------------------------------------------------------------------
def selective_scan_reference(x, dt, A, B, C, D=None, *, dt_bias=None, dt_softplus=True, reset=None,
                             initial_state=None, return_final_state=False):
    """Sequential loop over time (float32). For tests; slow."""
    _check_shapes(x, dt, A, B, C, D, dt_bias, reset, initial_state)
    b, T, d = x.shape
    n = A.shape[1]
    delta = _delta(dt, dt_bias, dt_softplus)
    f = delta.dtype
    xf, Af, Bf, Cf = x.to(f), A.to(f), B.to(f), C.to(f)
    h = initial_state.to(f) if initial_state is not None else x.new_zeros(b, d, n, dtype=f)
    ys = []
    for t in range(T):
        a = torch.exp(delta[:, t, :, None] * Af)
        if reset is not None:
            a = a * (~reset[:, t]).to(a.dtype)[:, None, None]
        h = a * h + (delta[:, t] * xf[:, t])[:, :, None] * Bf[:, t, None, :]
        ys.append((h * Cf[:, t, None, :]).sum(-1))
    y = torch.stack(ys, dim=1) if T > 0 else xf.new_zeros(b, 0, d)
    if D is not None:
        y = y + xf * D.to(f)
    y = y.to(x.dtype)
    return (y, h) if return_final_state else y


# ----------------------------------------------------------------------------------------------
# (b) chunked: pure PyTorch, bounded memory
# ----------------------------------------------------------------------------------------------
def _scan_chunk(h0: Tensor, delta: Tensor, xf: Tensor, Bf: Tensor, Cf: Tensor, Af: Tensor,
                reset: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """One chunk of L steps. h0 [b,d,n]; delta, xf [b,L,d]; Bf, Cf [b,L,n]; reset [b,L] bool or None.

    Returns y without the D term [b,L,d] (fp32) and the state after the chunk [b,d,n].
    """
    L = delta.shape[1]
    a = torch.exp(delta.unsqueeze(-1) * Af)  # [b,L,d,n], in (0, 1] since delta >= 0 and A < 0
    if reset is not None:
        a = a * (~reset).to(a.dtype)[:, :, None, None]
    u = (delta * xf).unsqueeze(-1) * Bf.unsqueeze(2)  # [b,L,d,n]
    # Hillis-Steele inclusive scan of the affine maps h -> a h + u: after the step with offset k,
    # (a_t, u_t) describes the composition over the window (t-2k, t].  Only products of a's appear.
    k = 1
    while k < L:
        u = torch.cat([u[:, :k], torch.addcmul(u[:, k:], a[:, k:], u[:, :-k])], dim=1)
        a = torch.cat([a[:, :k], a[:, k:] * a[:, :-k]], dim=1)
        k *= 2
    h = torch.addcmul(u, a, h0.unsqueeze(1))  # h_t = (prod_{s<=t} a_s) h0 + u_t
    y = (h * Cf.unsqueeze(2)).sum(-1)  # not einsum: autocast would run that in bf16
    return y, h[:, -1]


def selective_scan_chunked(x, dt, A, B, C, D=None, *, dt_bias=None, dt_softplus=True, reset=None,
                           initial_state=None, return_final_state=False, chunk_size: int = DEFAULT_CHUNK_SIZE,
                           checkpoint: Optional[bool] = None):
    """Pure-PyTorch chunked scan (see module docstring). ``checkpoint=None`` checkpoints each chunk
    whenever autograd is recording, which bounds the backward memory to one chunk's graph."""
    _check_shapes(x, dt, A, B, C, D, dt_bias, reset, initial_state)
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    b, T, d = x.shape
    n = A.shape[1]
    delta = _delta(dt, dt_bias, dt_softplus)  # [b,T,d] fp32 (no d_state factor)
    f = delta.dtype
    xf, Af, Bf, Cf = x.to(f), A.to(f), B.to(f), C.to(f)
    h = initial_state.to(f) if initial_state is not None else x.new_zeros(b, d, n, dtype=f)
    if checkpoint is None:
        checkpoint = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (x, dt, A, B, C, dt_bias, initial_state))
    ys = []
    for s in range(0, T, chunk_size):
        e = min(T, s + chunk_size)
        r = reset[:, s:e] if reset is not None else None
        args = (h, delta[:, s:e], xf[:, s:e], Bf[:, s:e], Cf[:, s:e], Af, r)
        if checkpoint:
            y_c, h = torch.utils.checkpoint.checkpoint(_scan_chunk, *args, use_reentrant=False)
        else:
            y_c, h = _scan_chunk(*args)
        ys.append(y_c)
    y = torch.cat(ys, dim=1) if ys else xf.new_zeros(b, 0, d)
    if D is not None:
        y = y + xf * D.to(f)
    y = y.to(x.dtype)
    return (y, h) if return_final_state else y


# ----------------------------------------------------------------------------------------------
# (d) mamba_ssm
# ----------------------------------------------------------------------------------------------
def _constant_for_compile(fn):
    """torch.compile: evaluate once at trace time and treat the result as a constant (no graph break on the
    imports inside the probe)."""
    try:
        return torch._dynamo.assume_constant_result(fn)
    except Exception:  # pragma: no cover - very old or stripped torch
        return fn


_PROBES: dict = {}


def _probe(name: str) -> bool:
    if name not in _PROBES:
        try:
            if name == "mamba_ssm":
                from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # noqa: F401
            else:
                from lit_gpt.kernels import selective_scan_triton  # noqa: F401
            _PROBES[name] = True
        except Exception:  # missing, or broken installs (ABI mismatch etc.)
            _PROBES[name] = False
    return _PROBES[name]


@_constant_for_compile
def mamba_ssm_available() -> bool:
    return importlib.util.find_spec("mamba_ssm") is not None and _probe("mamba_ssm")


@_constant_for_compile
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None and _probe("triton")


def _selective_scan_mamba(x, dt, A, B, C, D, dt_bias, dt_softplus, return_final_state):
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as fn
    # mamba_ssm layout: u, delta [b, d, T]; B, C [b, n, T]; out [b, d, T] in u's dtype.
    out = fn(x.transpose(1, 2).contiguous(), dt.transpose(1, 2).contiguous(), A.float().contiguous(),
             B.transpose(1, 2).contiguous(), C.transpose(1, 2).contiguous(),
             D=D.float().contiguous() if D is not None else None, z=None,
             delta_bias=dt_bias.float().contiguous() if dt_bias is not None else None,
             delta_softplus=dt_softplus, return_last_state=return_final_state)
    if return_final_state:
        y, last = out
        return y.transpose(1, 2).to(x.dtype), last.float()
    return out.transpose(1, 2).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# dispatch
# ----------------------------------------------------------------------------------------------
def _triton_runs_on(x: Tensor) -> bool:
    return triton_available() and runs_on(x)


@functools.lru_cache(maxsize=None)
def _warn_once(msg: str) -> None:
    warnings.warn(msg, stacklevel=3)


def resolve_impl(impl: Optional[str], x: Tensor, reset: Optional[Tensor] = None,
                 initial_state: Optional[Tensor] = None) -> str:
    """The single dispatch rule. Explicit ``impl`` > ``$LITSCALE_SCAN_IMPL`` > automatic choice.

    An explicit ``impl`` that cannot run raises; one forced through the environment falls back to
    the automatic choice with a warning.  ``mamba_ssm`` without support for the call's features
    (reset / initial_state / non-CUDA) falls back to the automatic choice (it has no reset support).
    """
    source = "argument"
    if impl is None:
        impl = os.environ.get("LITSCALE_SCAN_IMPL") or None
        source = "LITSCALE_SCAN_IMPL"
    if impl in (None, "auto"):
        impl = None
    elif impl not in IMPLS:
        raise ValueError(f"unknown selective-scan impl {impl!r} (from {source}); choose from {IMPLS}")

    if impl == "mamba_ssm":
        if x.is_cuda and mamba_ssm_available() and reset is None and initial_state is None:
            return "mamba_ssm"
        if not (x.is_cuda and mamba_ssm_available()) and source == "argument":
            raise RuntimeError("impl='mamba_ssm' needs CUDA tensors and an importable mamba_ssm")
        impl = None  # reset / initial_state are not supported there: fall back
    if impl == "triton" and not _triton_runs_on(x):
        if source == "argument":
            raise RuntimeError("impl='triton' needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1) "
                               "and an importable triton")
        _warn_once(f"LITSCALE_SCAN_IMPL=triton cannot run on {x.device}; using the automatic choice")
        impl = None
    if impl is not None:
        return impl
    if x.is_cuda:
        if reset is None and initial_state is None and mamba_ssm_available():
            return "mamba_ssm"
        if _triton_runs_on(x):
            return "triton"
    return "chunked"


def selective_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor] = None, *,
                   dt_bias: Optional[Tensor] = None, dt_softplus: bool = True, reset: Optional[Tensor] = None,
                   initial_state: Optional[Tensor] = None, return_final_state: bool = False,
                   impl: Optional[str] = None) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Selective scan. x, dt [batch, T, d_inner]; A [d_inner, N]; B, C [batch, T, N]; D, dt_bias [d_inner];
    reset bool [batch, T]; initial_state [batch, d_inner, N] (fp32).

    Returns y [batch, T, d_inner] in x.dtype, and the final state [batch, d_inner, N] (fp32) when
    ``return_final_state``.
    """
    _check_shapes(x, dt, A, B, C, D, dt_bias, reset, initial_state)
    if reset is not None and reset.dtype != torch.bool:
        reset = reset.bool()
    which = resolve_impl(impl, x, reset, initial_state)
    if which == "mamba_ssm":
        return _selective_scan_mamba(x, dt, A, B, C, D, dt_bias, dt_softplus, return_final_state)
    kwargs = dict(dt_bias=dt_bias, dt_softplus=dt_softplus, reset=reset, initial_state=initial_state,
                  return_final_state=return_final_state)
    if which == "triton":
        from lit_gpt.kernels.selective_scan_triton import selective_scan_triton
        return selective_scan_triton(x, dt, A, B, C, D, **kwargs)
    if which == "reference":
        return selective_scan_reference(x, dt, A, B, C, D, **kwargs)
    return selective_scan_chunked(x, dt, A, B, C, D, **kwargs)


# ----------------------------------------------------------------------------------------------
# one-token decoding
# ----------------------------------------------------------------------------------------------
def selective_scan_step(state: Tensor, x_t: Tensor, dt_t: Tensor, A: Tensor, B_t: Tensor, C_t: Tensor,
                        D: Optional[Tensor] = None, dt_bias: Optional[Tensor] = None,
                        dt_softplus: bool = True) -> Tuple[Tensor, Tensor]:
    """One decoding step. state [batch, d_inner, N] fp32; x_t, dt_t [batch, d_inner]; B_t, C_t [batch, N].

    Returns (y_t [batch, d_inner] in x_t.dtype, new_state [batch, d_inner, N] fp32). Pure function
    (the caller stores new_state where it wants).
    """
    delta = _delta(dt_t, dt_bias, dt_softplus)  # [b, d]
    f = delta.dtype
    xf = x_t.to(f)
    new_state = torch.exp(delta.unsqueeze(-1) * A.to(f)) * state.to(f) \
        + (delta * xf).unsqueeze(-1) * B_t.to(f).unsqueeze(1)
    y = (new_state * C_t.to(f).unsqueeze(1)).sum(-1)  # (no einsum: autocast would make it bf16)
    if D is not None:
        y = y + xf * D.to(f)
    return y.to(x_t.dtype), new_state
