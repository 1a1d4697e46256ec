"""Triton selective scan: fused forward and backward kernels, exposed as ``torch.library`` custom ops.

Layout: one program per (batch element, block of BLOCK_D channels); the state h [BLOCK_D, d_state] lives
in registers (fp32) and the program walks through time sequentially in tiles of BLOCK_T steps.  A tile is
loaded at once (coalesced [BLOCK_T, BLOCK_D] loads of x and dt, [BLOCK_T, d_state] loads of B and C) and the
recurrence inside the tile is an associative scan over the time axis of the affine maps h -> a h + u
(a = exp(delta A) in (0, 1], or 0 at a reset), so only the carry between tiles is sequential.

Forward saves the inputs plus the state at the start of every checkpoint chunk (CONFIG["CKPT_STEPS"] steps):
[batch, n_chunks, d_inner, d_state] fp32.  Backward walks the chunks in reverse: it recomputes the states at
the start of the chunk's tiles (kept in a small per-program scratch buffer), then for each tile in reverse
recomputes h inside the tile, runs the reverse scan for dL/dh_t = C_t gy_t + a_{t+1} dL/dh_{t+1} and forms
all gradients.  Identities used (no division, no shifted tiles):  a_t h_{t-1} = h_t - u_t, and the reverse
recurrence is solved with the associative triple (a_first, prod of the following a's, value).

dA, dD and d(dt_bias) are reduced per program in registers (then summed over the batch in PyTorch); dB and
dC, which are sums over channels, are accumulated with fp32 atomics.

``TRITON_INTERPRET=1`` (set before triton is imported) runs the same kernels on CPU tensors (tests).
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["selective_scan_triton", "CONFIG", "checkpoint_steps"]


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


# Launch configuration. Mutable so that benchmarks can sweep it; CKPT_STEPS (the checkpoint
# interval) must not change between a forward and its backward.
CONFIG = {
    "CKPT_STEPS": _env_int("LITSCALE_SCAN_CKPT_STEPS", 128),  # forward saves the state every CKPT_STEPS steps
    "FWD_BLOCK_T": _env_int("LITSCALE_SCAN_FWD_BLOCK_T", 16),
    "FWD_BLOCK_D": _env_int("LITSCALE_SCAN_FWD_BLOCK_D", 32),
    "FWD_WARPS": _env_int("LITSCALE_SCAN_FWD_WARPS", 4),
    "BWD_BLOCK_T": _env_int("LITSCALE_SCAN_BWD_BLOCK_T", 16),
    "BWD_BLOCK_D": _env_int("LITSCALE_SCAN_BWD_BLOCK_D", 16),
    "BWD_WARPS": _env_int("LITSCALE_SCAN_BWD_WARPS", 8),
}


def _check_config(cfg) -> None:
    for k in ("FWD_BLOCK_T", "BWD_BLOCK_T"):
        bt = cfg[k]
        if bt < 1 or bt & (bt - 1) or cfg["CKPT_STEPS"] % bt:
            raise ValueError(f"{k}={bt} must be a power of two dividing CKPT_STEPS={cfg['CKPT_STEPS']}")
    for k in ("FWD_BLOCK_D", "BWD_BLOCK_D"):
        if cfg[k] < 1 or cfg[k] & (cfg[k] - 1):
            raise ValueError(f"{k}={cfg[k]} must be a power of two")


def checkpoint_steps() -> int:
    return CONFIG["CKPT_STEPS"]


def _n_ckpt(T):
    s = checkpoint_steps()
    return (T + s - 1) // s


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _softplus(z):
    # log(1 + exp(z)); exp(z) for very negative z (log1p accuracy), z for large z.
    return tl.where(z > 20.0, z, tl.where(z < -15.0, tl.exp(z), tl.log(1.0 + tl.exp(z))))


@triton.jit
def _affine_combine(a1, u1, a2, u2):
    # forward scan: (a1, u1) is the earlier segment, (a2, u2) the later one; h -> a2 (a1 h + u1) + u2
    return a1 * a2, a2 * u1 + u2


@triton.jit
def _reverse_combine(f1, e1, v1, f2, e2, v2):
    # reverse scan (scan order runs backwards in time): (f1, e1, v1) summarises the LATER segment R,
    # (f2, e2, v2) the EARLIER segment L.  For a segment [i..j]: f = a_i, e = prod_{i<r<=j} a_r and
    # g_i = v + e * q where q = a_{j+1} g_{j+1} is the gradient arriving from after the segment.
    ef = e2 * f1
    return f2, ef * e1, v2 + ef * v1


@triton.jit
def _load_tile(x_ptr, dt_ptr, B_ptr, C_ptr, reset_ptr, A, bias, base_xd, base_bn, base_r, t0, T, DIM, NS,
               offs_t, offs_d, offs_n, mask_d, mask_n,
               HAS_BIAS: tl.constexpr, HAS_RESET: tl.constexpr, SOFTPLUS: tl.constexpr):
    t = (t0 + offs_t).to(tl.int64)
    mask_t = t < T
    m2 = mask_t[:, None] & mask_d[None, :]
    xd_off = base_xd + t[:, None] * DIM + offs_d[None, :]
    x = tl.load(x_ptr + xd_off, mask=m2, other=0.0).to(tl.float32)
    z = tl.load(dt_ptr + xd_off, mask=m2, other=0.0).to(tl.float32)
    if HAS_BIAS:
        z = z + bias[None, :]
    if SOFTPLUS:
        delta = _softplus(z)
    else:
        delta = z
    delta = tl.where(m2, delta, 0.0)  # padding: a = 1, u = 0 (state passes through unchanged)
    bn_off = base_bn + t[:, None] * NS + offs_n[None, :]
    mtn = mask_t[:, None] & mask_n[None, :]
    Bt = tl.load(B_ptr + bn_off, mask=mtn, other=0.0).to(tl.float32)
    Ct = tl.load(C_ptr + bn_off, mask=mtn, other=0.0).to(tl.float32)
    a = tl.exp(delta[:, :, None] * A[None, :, :])  # [BT, BD, NP]
    if HAS_RESET:
        r = tl.load(reset_ptr + base_r + t, mask=mask_t, other=0)
        a = tl.where(r[:, None, None] != 0, 0.0, a)
    u = (delta * x)[:, :, None] * Bt[:, None, :]
    return x, z, delta, Bt, Ct, a, u, m2, mask_t, xd_off, bn_off, mtn


@triton.jit
def _scan_fwd_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, reset_ptr, h0_ptr,
                     y_ptr, hT_ptr, ckpt_ptr,
                     T, DIM, NS, n_ckpt,
                     NP: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, CKPT_TILES: tl.constexpr,
                     HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESET: tl.constexpr,
                     HAS_H0: tl.constexpr, SOFTPLUS: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_t = tl.arange(0, BLOCK_T)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, NP)
    mask_d = offs_d < DIM
    mask_n = offs_n < NS
    mdn = mask_d[:, None] & mask_n[None, :]
    dn_off = offs_d[:, None] * NS + offs_n[None, :]
    A = tl.load(A_ptr + dn_off, mask=mdn, other=0.0).to(tl.float32)
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    Dv = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    state_off = pid_b * DIM * NS + dn_off  # [b, DIM, NS] layout
    h = tl.zeros([BLOCK_D, NP], dtype=tl.float32)
    if HAS_H0:
        h = tl.load(h0_ptr + state_off, mask=mdn, other=0.0).to(tl.float32)
    base_xd = pid_b * T * DIM
    base_bn = pid_b * T * NS
    base_r = pid_b * T
    n_tiles = tl.cdiv(T, BLOCK_T)
    for j in range(0, n_tiles):
        if j % CKPT_TILES == 0:  # CKPT_TILES = CKPT_STEPS // BLOCK_T (forward tiles per checkpoint)
            c = j // CKPT_TILES
            tl.store(ckpt_ptr + (pid_b * n_ckpt + c) * DIM * NS + dn_off, h, mask=mdn)
        x, z, delta, Bt, Ct, a, u, m2, mask_t, xd_off, bn_off, mtn = _load_tile(
            x_ptr, dt_ptr, B_ptr, C_ptr, reset_ptr, A, bias, base_xd, base_bn, base_r, j * BLOCK_T, T, DIM, NS,
            offs_t, offs_d, offs_n, mask_d, mask_n, HAS_BIAS, HAS_RESET, SOFTPLUS)
        P, U = tl.associative_scan((a, u), 0, _affine_combine)
        hs = P * h[None, :, :] + U
        y = tl.sum(hs * Ct[:, None, :], axis=2)
        if HAS_D:
            y += Dv[None, :] * x
        tl.store(y_ptr + xd_off, y.to(y_ptr.dtype.element_ty), mask=m2)
        h = tl.sum(tl.where(offs_t[:, None, None] == BLOCK_T - 1, hs, 0.0), axis=0)
    tl.store(hT_ptr + state_off, h, mask=mdn)


@triton.jit
def _scan_bwd_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, reset_ptr, ckpt_ptr, gy_ptr, gT_ptr,
                     scratch_ptr,
                     dx_ptr, ddt_ptr, dApart_ptr, dB_ptr, dC_ptr, dDpart_ptr, dbpart_ptr, dh0_ptr,
                     T, DIM, NS, n_ckpt,
                     NP: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, CKPT_TILES: tl.constexpr,
                     HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESET: tl.constexpr,
                     HAS_GT: tl.constexpr, WANT_DH0: tl.constexpr, SOFTPLUS: tl.constexpr):
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    n_dblk = tl.num_programs(1)
    offs_t = tl.arange(0, BLOCK_T)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, NP)
    mask_d = offs_d < DIM
    mask_n = offs_n < NS
    mdn = mask_d[:, None] & mask_n[None, :]
    dn_off = offs_d[:, None] * NS + offs_n[None, :]
    A = tl.load(A_ptr + dn_off, mask=mdn, other=0.0).to(tl.float32)
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    Dv = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    state_off = pid_b * DIM * NS + dn_off
    # q = a_{t+1} * dL/dh_{t+1}: the gradient reaching h_t from the future (g_final at the end).
    q = tl.zeros([BLOCK_D, NP], dtype=tl.float32)
    if HAS_GT:
        q = tl.load(gT_ptr + state_off, mask=mdn, other=0.0).to(tl.float32)
    dA_acc = tl.zeros([BLOCK_D, NP], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    base_xd = pid_b * T * DIM
    base_bn = pid_b * T * NS
    base_r = pid_b * T
    # per-program scratch for the states at the start of the tiles of one checkpoint chunk
    sc_base = (pid_b * n_dblk + pid_d) * CKPT_TILES * BLOCK_D * NP
    sc_off = tl.arange(0, BLOCK_D)[:, None] * NP + offs_n[None, :]
    n_tiles = tl.cdiv(T, BLOCK_T)
    for cc in range(0, n_ckpt):
        c = n_ckpt - 1 - cc
        j0 = c * CKPT_TILES
        nt = tl.minimum(n_tiles - j0, CKPT_TILES)
        # phase A: states at the start of every tile of this chunk
        h = tl.load(ckpt_ptr + (pid_b * n_ckpt + c) * DIM * NS + dn_off, mask=mdn, other=0.0)
        for jj in range(0, nt - 1):
            tl.store(scratch_ptr + sc_base + jj * BLOCK_D * NP + sc_off, h)
            x, z, delta, Bt, Ct, a, u, m2, mask_t, xd_off, bn_off, mtn = _load_tile(
                x_ptr, dt_ptr, B_ptr, C_ptr, reset_ptr, A, bias, base_xd, base_bn, base_r, (j0 + jj) * BLOCK_T,
                T, DIM, NS, offs_t, offs_d, offs_n, mask_d, mask_n, HAS_BIAS, HAS_RESET, SOFTPLUS)
            P, U = tl.associative_scan((a, u), 0, _affine_combine)
            hs = P * h[None, :, :] + U
            h = tl.sum(tl.where(offs_t[:, None, None] == BLOCK_T - 1, hs, 0.0), axis=0)
        tl.store(scratch_ptr + sc_base + (nt - 1) * BLOCK_D * NP + sc_off, h)
        tl.debug_barrier()
        # phase B: tiles in reverse
        for kk in range(0, nt):
            jj = nt - 1 - kk
            h0 = tl.load(scratch_ptr + sc_base + jj * BLOCK_D * NP + sc_off)
            x, z, delta, Bt, Ct, a, u, m2, mask_t, xd_off, bn_off, mtn = _load_tile(
                x_ptr, dt_ptr, B_ptr, C_ptr, reset_ptr, A, bias, base_xd, base_bn, base_r, (j0 + jj) * BLOCK_T,
                T, DIM, NS, offs_t, offs_d, offs_n, mask_d, mask_n, HAS_BIAS, HAS_RESET, SOFTPLUS)
            P, U = tl.associative_scan((a, u), 0, _affine_combine)
            hs = P * h0[None, :, :] + U  # h_t
            gy = tl.load(gy_ptr + xd_off, mask=m2, other=0.0).to(tl.float32)
            v = gy[:, :, None] * Ct[:, None, :]
            ones = tl.full([BLOCK_T, BLOCK_D, NP], 1.0, tl.float32)
            _f, E, V = tl.associative_scan((a, ones, v), 0, _reverse_combine, reverse=True)
            gh = V + E * q[None, :, :]  # dL/dh_t
            q = tl.sum(tl.where(offs_t[:, None, None] == 0, a * gh, 0.0), axis=0)
            hm = hs - u  # a_t h_{t-1}
            s_b = tl.sum(gh * Bt[:, None, :], axis=2)  # sum_n gh B
            dx = delta * s_b
            if HAS_D:
                dx += Dv[None, :] * gy
                dD_acc += tl.sum(gy * x, axis=0)
            gdec = gh * hm
            ddelta = x * s_b + tl.sum(gdec * A[None, :, :], axis=2)
            dA_acc += tl.sum(gdec * delta[:, :, None], axis=0)
            if SOFTPLUS:
                dz = ddelta * tl.sigmoid(z)
            else:
                dz = ddelta
            dz = tl.where(m2, dz, 0.0)
            db_acc += tl.sum(dz, axis=0)
            tl.store(dx_ptr + xd_off, dx.to(dx_ptr.dtype.element_ty), mask=m2)
            tl.store(ddt_ptr + xd_off, dz.to(ddt_ptr.dtype.element_ty), mask=m2)
            dBt = tl.sum(gh * (delta * x)[:, :, None], axis=1)  # [BT, NP]
            dCt = tl.sum(hs * gy[:, :, None], axis=1)
            tl.atomic_add(dB_ptr + bn_off, dBt, mask=mtn)
            tl.atomic_add(dC_ptr + bn_off, dCt, mask=mtn)
        tl.debug_barrier()
    tl.store(dApart_ptr + state_off, dA_acc, mask=mdn)
    if HAS_D:
        tl.store(dDpart_ptr + pid_b * DIM + offs_d, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(dbpart_ptr + pid_b * DIM + offs_d, db_acc, mask=mask_d)
    if WANT_DH0:
        tl.store(dh0_ptr + state_off, q, mask=mdn)


# ----------------------------------------------------------------------------------------------
# custom ops
# ----------------------------------------------------------------------------------------------
def _np2(n: int) -> int:
    return max(1, triton.next_power_of_2(n))


def _empty(ref: Tensor) -> Tensor:
    return ref.new_empty(0)


@torch.library.custom_op("litscale::selective_scan_fwd", mutates_args=())
def _scan_fwd(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Optional[Tensor],
              dt_bias: Optional[Tensor], reset: Optional[Tensor], initial_state: Optional[Tensor],
              dt_softplus: bool) -> Tuple[Tensor, Tensor, Tensor]:
    b, T, dim = x.shape
    ns = A.shape[1]
    n_ckpt = _n_ckpt(T)
    y = torch.empty_like(x)
    hT = torch.empty(b, dim, ns, device=x.device, dtype=torch.float32)
    ckpt = torch.empty(b, n_ckpt, dim, ns, device=x.device, dtype=torch.float32)
    if T == 0:
        hT.copy_(initial_state if initial_state is not None else torch.zeros_like(hT))
        return y, hT, ckpt
    cfg = CONFIG
    _check_config(cfg)
    grid = (b, triton.cdiv(dim, cfg["FWD_BLOCK_D"]))
    _scan_fwd_kernel[grid](
        x, dt, A, B, C, D if D is not None else x, dt_bias if dt_bias is not None else x,
        reset.view(torch.uint8) if reset is not None else x, initial_state if initial_state is not None else x,
        y, hT, ckpt, T, dim, ns, n_ckpt,
        NP=_np2(ns), BLOCK_T=cfg["FWD_BLOCK_T"], BLOCK_D=cfg["FWD_BLOCK_D"],
        CKPT_TILES=cfg["CKPT_STEPS"] // cfg["FWD_BLOCK_T"],
        HAS_D=D is not None, HAS_BIAS=dt_bias is not None, HAS_RESET=reset is not None,
        HAS_H0=initial_state is not None, SOFTPLUS=dt_softplus, num_warps=cfg["FWD_WARPS"])
    return y, hT, ckpt


@_scan_fwd.register_fake
def _scan_fwd_fake(x, dt, A, B, C, D, dt_bias, reset, initial_state, dt_softplus):
    b, T, dim = x.shape
    ns = A.shape[1]
    return (torch.empty_like(x), x.new_empty(b, dim, ns, dtype=torch.float32),
            x.new_empty(b, _n_ckpt(T), dim, ns, dtype=torch.float32))


@torch.library.custom_op("litscale::selective_scan_bwd", mutates_args=())
def _scan_bwd(gy: Tensor, g_final: Optional[Tensor], x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
              D: Optional[Tensor], dt_bias: Optional[Tensor], reset: Optional[Tensor], ckpt: Tensor,
              dt_softplus: bool, want_dh0: bool
              ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    b, T, dim = x.shape
    ns = A.shape[1]
    n_ckpt = ckpt.shape[1]
    dev = x.device
    f32 = torch.float32
    dx = torch.empty_like(x)
    ddt = torch.empty_like(dt)
    dB = torch.zeros(b, T, ns, device=dev, dtype=f32)
    dC = torch.zeros(b, T, ns, device=dev, dtype=f32)
    dA_part = torch.zeros(b, dim, ns, device=dev, dtype=f32)
    dD_part = torch.zeros(b, dim, device=dev, dtype=f32) if D is not None else None
    db_part = torch.zeros(b, dim, device=dev, dtype=f32) if dt_bias is not None else None
    dh0 = torch.zeros(b, dim, ns, device=dev, dtype=f32) if want_dh0 else None
    if T > 0:
        cfg = CONFIG
        _check_config(cfg)
        if cfg["CKPT_STEPS"] * n_ckpt < T or cfg["CKPT_STEPS"] * (n_ckpt - 1) >= T:
            raise RuntimeError("selective_scan_triton: CONFIG['CKPT_STEPS'] changed between forward and backward")
        np2 = _np2(ns)
        n_dblk = triton.cdiv(dim, cfg["BWD_BLOCK_D"])
        tiles = cfg["CKPT_STEPS"] // cfg["BWD_BLOCK_T"]
        scratch = torch.empty(b * n_dblk * tiles * cfg["BWD_BLOCK_D"] * np2, device=dev, dtype=f32)
        _scan_bwd_kernel[(b, n_dblk)](
            x, dt, A, B, C, D if D is not None else x, dt_bias if dt_bias is not None else x,
            reset.view(torch.uint8) if reset is not None else x, ckpt, gy,
            g_final if g_final is not None else x, scratch,
            dx, ddt, dA_part, dB, dC, dD_part if D is not None else dA_part,
            db_part if dt_bias is not None else dA_part, dh0 if want_dh0 else dA_part,
            T, dim, ns, n_ckpt,
            NP=np2, BLOCK_T=cfg["BWD_BLOCK_T"], BLOCK_D=cfg["BWD_BLOCK_D"], CKPT_TILES=tiles,
            HAS_D=D is not None, HAS_BIAS=dt_bias is not None, HAS_RESET=reset is not None,
            HAS_GT=g_final is not None, WANT_DH0=want_dh0, SOFTPLUS=dt_softplus, num_warps=cfg["BWD_WARPS"])
    else:
        dx.zero_()
        ddt.zero_()
        if want_dh0 and g_final is not None:
            dh0.copy_(g_final)
    dA = dA_part.sum(0).to(A.dtype)
    dD = dD_part.sum(0).to(D.dtype) if D is not None else _empty(x)
    dbias = db_part.sum(0).to(dt_bias.dtype) if dt_bias is not None else _empty(x)
    return (dx, ddt, dA, dB.to(B.dtype), dC.to(C.dtype), dD, dbias, dh0 if want_dh0 else _empty(x))


@_scan_bwd.register_fake
def _scan_bwd_fake(gy, g_final, x, dt, A, B, C, D, dt_bias, reset, ckpt, dt_softplus, want_dh0):
    b, T, dim = x.shape
    ns = A.shape[1]
    return (torch.empty_like(x), torch.empty_like(dt), torch.empty_like(A), torch.empty_like(B),
            torch.empty_like(C), torch.empty_like(D) if D is not None else x.new_empty(0),
            torch.empty_like(dt_bias) if dt_bias is not None else x.new_empty(0),
            x.new_empty(b, dim, ns, dtype=torch.float32) if want_dh0 else x.new_empty(0))


def _setup_context(ctx, inputs, output):
    x, dt, A, B, C, D, dt_bias, reset, initial_state, dt_softplus = inputs
    _y, _hT, ckpt = output
    ctx.save_for_backward(x, dt, A, B, C, D, dt_bias, reset, ckpt)
    ctx.dt_softplus = dt_softplus
    ctx.want_dh0 = initial_state is not None and initial_state.requires_grad
    ctx.set_materialize_grads(False)


def _backward(ctx, gy, g_final, _g_ckpt):
    x, dt, A, B, C, D, dt_bias, reset, ckpt = ctx.saved_tensors
    if gy is None:
        gy = torch.zeros_like(x)
    dx, ddt, dA, dB, dC, dD, dbias, dh0 = torch.ops.litscale.selective_scan_bwd(
        gy.contiguous(), g_final.contiguous() if g_final is not None else None, x, dt, A, B, C, D, dt_bias, reset,
        ckpt, ctx.dt_softplus, ctx.want_dh0)
    return (dx, ddt, dA, dB, dC, dD if D is not None else None, dbias if dt_bias is not None else None, None,
            dh0 if ctx.want_dh0 else None, None)


_scan_fwd.register_autograd(_backward, setup_context=_setup_context)


def selective_scan_triton(x, dt, A, B, C, D=None, *, dt_bias=None, dt_softplus=True, reset=None,
                          initial_state=None, return_final_state=False):
    """Triton path of ``selective_scan`` (same contract). Gradients flow to x, dt, A, B, C, D, dt_bias,
    initial_state and through the returned final state."""
    c = lambda t: t.contiguous() if t is not None else None  # noqa: E731
    if reset is not None:
        reset = reset.to(torch.bool)
    if initial_state is not None:
        initial_state = initial_state.float()
    y, hT, _ckpt = torch.ops.litscale.selective_scan_fwd(
        c(x), c(dt), c(A), c(B), c(C), c(D), c(dt_bias), c(reset), c(initial_state), bool(dt_softplus))
    return (y, hT) if return_final_state else y
