"""Triton selective scan: fused forward and backward kernels, exposed as ``torch.library`` custom ops.

Layout: one program per (batch element, block of channels, time segment); the state h [d_state, BLOCK_D] lives
in registers (fp32), lanes along channels, and the program walks through time.  The forward takes one step per
iteration (a = exp(delta A) in (0, 1], or 0 at a reset; h = a h + delta x B; y = C h + D x) with the next step's
loads issued before the current step's arithmetic.  The backward works in tiles of BWD_BLOCK_T steps: a tile is
loaded at once and the recurrence inside it is an associative scan over time of the affine maps h -> a h + u.
(An earlier tile forward lost to the step forward by 1.2-1.5x on an H100, and a step backward lost to the
tile backward; docs/benchmarks.md.)

Forward saves the inputs plus the state at the start of every checkpoint chunk (CONFIG["CKPT_STEPS"] steps):
[batch, n_chunks, d_inner, d_state] fp32.  Backward walks the chunks in reverse: it recomputes the states at
the start of the chunk's tiles one step at a time, as the forward does (kept in a small per-program scratch
buffer; 4% faster than doing it tile by tile at 64k tokens), then for each tile in reverse
recomputes h inside the tile, runs the reverse recurrence dL/dh_t = C_t gy_t + a_{t+1} dL/dh_{t+1} and forms
all gradients.  Identity used (no division, no shifted tiles):  a_t h_{t-1} = h_t - u_t.

Time segments: when batch * d_inner is too small to fill the GPU, time is also cut into segments run by
separate programs; a summary pass (segment scanned from zero: end state and product of decays; or, in
backward, the reverse analogue) is chained by one small kernel over the segments (_chain_segments) and the main
kernels start each segment from there.

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

from lit_gpt.kernels.triton_support import interpreting

__all__ = ["selective_scan_triton", "CONFIG", "checkpoint_steps"]


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


# Launch configuration. Mutable so that benchmarks can sweep it; CKPT_STEPS (the checkpoint
# interval) must not change between a forward and its backward.
CONFIG = {
    # Defaults from the H100 sweeps of 2026-11-26 (`python benchmarks/scan.py --sweep-only`, docs/benchmarks.md):
    # forward one warp per 64 channels (two per lane): 4.07 ms at 64k tokens x 4096 channels (0.99 ms at 8k);
    # backward one warp, one channel per lane, 2-step tiles (wider or longer tiles, and a step-pair backward,
    # were slower).  The backward keeps the states at the start of every tile of one checkpoint chunk in a
    # per-program scratch buffer (CKPT_STEPS / BWD_BLOCK_T states): CKPT_STEPS 8 made it 10% faster than 64 but
    # saves 8x the states between forward and backward (d_state * 4 / CKPT_STEPS bytes per token and channel),
    # so 64 stays.
    "CKPT_STEPS": _env_int("LITSCALE_SCAN_CKPT_STEPS", 64),  # forward saves the state every CKPT_STEPS steps
    "FWD_BLOCK_D": _env_int("LITSCALE_SCAN_FWD_BLOCK_D", 64),
    "FWD_WARPS": _env_int("LITSCALE_SCAN_FWD_WARPS", 1),
    "BWD_BLOCK_T": _env_int("LITSCALE_SCAN_BWD_BLOCK_T", 2),
    "BWD_BLOCK_D": _env_int("LITSCALE_SCAN_BWD_BLOCK_D", 32),
    "BWD_WARPS": _env_int("LITSCALE_SCAN_BWD_WARPS", 1),
    # register cap per thread (0: the compiler's choice, ~255): fewer registers, more resident warps to hide the
    # exp2 latency, at the price of spills
    "FWD_MAXNREG": _env_int("LITSCALE_SCAN_FWD_MAXNREG", 0),
    "BWD_MAXNREG": _env_int("LITSCALE_SCAN_BWD_MAXNREG", 0),
    # time segments run by separate programs (more parallelism for small batch * d_inner, at the price of
    # one extra pass over the data): 0 = automatic (aim at SEG_WARPS_PER_SM resident warps), else forced.
    "SEGMENTS": _env_int("LITSCALE_SCAN_SEGMENTS", 0),
    "SEG_WARPS_PER_SM": _env_int("LITSCALE_SCAN_SEG_WARPS_PER_SM", 8),
    # softplus of dt with the special-function unit's approximate log (0: the precise log; see _softplus)
    "FAST_SOFTPLUS": _env_int("LITSCALE_SCAN_FAST_SOFTPLUS", 1),
}


def _check_config(cfg) -> None:
    bt = cfg["BWD_BLOCK_T"]
    if bt < 1 or bt & (bt - 1) or cfg["CKPT_STEPS"] % bt:
        raise ValueError(f"BWD_BLOCK_T={bt} must be a power of two dividing CKPT_STEPS={cfg['CKPT_STEPS']}")
    for k in ("FWD_BLOCK_D", "BWD_BLOCK_D"):
        if cfg[k] < 1 or cfg[k] & (cfg[k] - 1):
            raise ValueError(f"{k}={cfg[k]} must be a power of two")


def _sm_count(device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter


def _segments(b: int, dim: int, n_ckpt: int, block_d: int, warps: int, device) -> Tuple[int, int]:
    """(number of time segments, segment length in steps); segments hold whole checkpoint chunks."""
    if n_ckpt <= 1:
        return 1, CONFIG["CKPT_STEPS"] * max(n_ckpt, 1)
    s = CONFIG["SEGMENTS"]
    if s <= 0:
        have = b * triton.cdiv(dim, block_d) * warps
        s = (CONFIG["SEG_WARPS_PER_SM"] * _sm_count(device)) // max(have, 1)
    s = max(1, min(s, n_ckpt))
    chunks = triton.cdiv(n_ckpt, s)
    return triton.cdiv(n_ckpt, chunks), chunks * CONFIG["CKPT_STEPS"]


def checkpoint_steps() -> int:
    return CONFIG["CKPT_STEPS"]


def _n_ckpt(T):
    s = checkpoint_steps()
    return (T + s - 1) // s


# ----------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _softplus(z, FAST: tl.constexpr):
    """log(1 + e^z): z for large z; for e^z < 1/32 the series of log1p to e^4 (relative error < 2e-7, where
    log(1 + e^z) in fp32 loses the low bits of e^z); else the log of 1 + e^z (relative error < 2e-6 from the fp32
    rounding of 1 + e^z), which with FAST is the special-function unit's approximate log (MUFU.LG2; < 1e-5) instead
    of the ≈ 20-instruction precise one: a third of the forward's per-step instructions were these logs
    (docs/benchmarks.md, section 3)."""
    e = tl.exp(z)
    if FAST:
        big = tl.extra.cuda.libdevice.fast_logf(1.0 + e)
    else:
        big = tl.log(1.0 + e)
    small = e * (1.0 + e * (-0.5 + e * (0.3333333333333333 - 0.25 * e)))
    return tl.where(z > 20.0, z, tl.where(e < 0.03125, small, big))


@triton.jit
def _affine_combine(a1, u1, a2, u2):
    # forward scan: (a1, u1) is the earlier segment, (a2, u2) the later one; h -> a2 (a1 h + u1) + u2
    return a1 * a2, a2 * u1 + u2


@triton.jit
def _reverse_tile(a, v, q, offs_t, BLOCK_T: tl.constexpr):
    """Reverse recurrence inside one tile (rows = time): g_t = v_t + a_{t+1} g_{t+1}, where q = a_{t+1} g_{t+1}
    for the tile's last row comes from the next tile.  Returns (g for every row, a_0 g_0 for the previous
    tile, product of the tile's a).  Unrolled over the (in-thread) time rows: tl.associative_scan with
    reverse=True lowers to lane-reversing shuffles on sm_90, which this avoids."""
    g = tl.zeros_like(v)
    carry = q
    prod = tl.full(q.shape, 1.0, tl.float32)
    for k in tl.static_range(BLOCK_T):
        sel = offs_t[:, None, None] == BLOCK_T - 1 - k
        a_r = tl.sum(tl.where(sel, a, 0.0), axis=0)
        g_r = tl.sum(tl.where(sel, v, 0.0), axis=0) + carry
        g = tl.where(sel, g_r[None, :, :], g)
        carry = a_r * g_r
        prod = prod * a_r
    return g, carry, prod


@triton.jit
def _load_tile(x_ptr, dt_ptr, B_ptr, C_ptr, reset_ptr, A, bias, base_xd, base_bn, base_r, t0, T, DIM, NS, sn,
               offs_t, offs_d, offs_n, mask_d, mask_n,
               HAS_BIAS: tl.constexpr, HAS_RESET: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Loads one time tile and forms a = exp(delta A), u = delta x B, both [BT, NP, BD] (d fastest)."""
    t = (t0 + offs_t).to(tl.int64)
    mask_t = t < T
    m2 = mask_t[:, None] & mask_d[None, :]
    xd_off = base_xd + t[:, None] * DIM + offs_d[None, :]
    x = tl.load(x_ptr + xd_off, mask=m2, other=0.0).to(tl.float32)
    z = tl.load(dt_ptr + xd_off, mask=m2, other=0.0).to(tl.float32)
    if HAS_BIAS:
        z = z + bias[None, :]
    if SOFTPLUS:
        delta = _softplus(z, SOFTPLUS == 2)
    else:
        delta = z
    delta = tl.where(m2, delta, 0.0)  # padding: a = 1, u = 0 (state passes through unchanged)
    bn_off = base_bn + t[:, None] * NS + offs_n[None, :] * sn
    mtn = mask_t[:, None] & mask_n[None, :]
    Bt = tl.load(B_ptr + bn_off, mask=mtn, other=0.0).to(tl.float32)  # [BT, NP]
    Ct = tl.load(C_ptr + bn_off, mask=mtn, other=0.0).to(tl.float32)
    a = tl.exp(delta[:, None, :] * A[None, :, :])  # [BT, NP, BD]
    if HAS_RESET:
        r = tl.load(reset_ptr + base_r + t, mask=mask_t, other=0)
        a = tl.where(r[:, None, None] != 0, 0.0, a)
    u = (delta * x)[:, None, :] * Bt[:, :, None]
    return x, z, delta, Bt, Ct, a, u, m2, mask_t, xd_off, bn_off, mtn


# Layout note: tiles are [time, state, channel] with the channel axis last.  Every state-shaped array the
# kernels read or write (A, initial/final states, checkpoints, segment summaries, dA partials) is laid out
# [.., NS, DIM] -- channels contiguous -- and B/C's state stride `sn` (always 1) is a runtime argument that Triton
# does not specialise.  Then the only contiguous axis the compiler sees is the channel axis, lanes are laid along
# channels, and time and state live inside each thread: the scans over time and the sums over the state need no
# shuffles.  (With [.., DIM, NS] state arrays, Triton 3.6 laid 16 lanes along the state axis instead: 128
# shuffles and a shared-memory layout conversion per forward step; checked in its TTGIR and SASS for sm_90.)
@triton.jit
def _channel_block(pid_d, A_ptr, bias_ptr, D_ptr, DIM, NS, NP: tl.constexpr, BLOCK_D: tl.constexpr,
                   HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr):
    """A program's channels: offsets and masks, A [NP, BD] (fp32), dt bias and D [BD] (zeros when absent)."""
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, NP)
    mask_d = offs_d < DIM
    mask_n = offs_n < NS
    mnd = mask_n[:, None] & mask_d[None, :]
    nd_off = offs_n[:, None] * DIM + offs_d[None, :]  # [NP, BD] into a [.., NS, DIM] array (channels contiguous)
    A = tl.load(A_ptr + nd_off, mask=mnd, other=0.0).to(tl.float32)
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    Dv = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    return offs_d, offs_n, mask_d, mask_n, mnd, nd_off, A, bias, Dv


@triton.jit
def _state_step(h, x, z, Bc, A, bias, r_ptr, HAS_BIAS: tl.constexpr, HAS_RESET: tl.constexpr,
                SOFTPLUS: tl.constexpr, A_IN_LOG2: tl.constexpr):
    """One step of the recurrence for a row: delta = softplus(z + bias), a = exp(delta A) (0 at a document start),
    h <- a h + delta x B; returns (h, a). A_IN_LOG2: A is given times log2 e, so a = exp2(delta A) (the forward
    keeps that copy; the backward, short of registers, passes A itself)."""
    if HAS_BIAS:
        z = z + bias
    if SOFTPLUS:
        delta = _softplus(z, SOFTPLUS == 2)
    else:
        delta = z
    if A_IN_LOG2:
        a = tl.exp2(delta[None, :] * A)
    else:
        a = tl.exp(delta[None, :] * A)
    if HAS_RESET:
        a = tl.where(tl.load(r_ptr) != 0, 0.0, a)
    return a * h + (delta * x)[None, :] * Bc, a


@triton.jit
def _load_step(xp, zp, Bp, Cp, mask_d, n_col_mask, EVEN_D: tl.constexpr, EVEN_N: tl.constexpr):
    """One step's x, dt rows [BD] and B, C columns [NP, 1], unmasked where the block is full."""
    if EVEN_D:
        x = tl.load(xp)
        z = tl.load(zp)
    else:
        x = tl.load(xp, mask=mask_d, other=0.0)
        z = tl.load(zp, mask=mask_d, other=0.0)
    if EVEN_N:
        Bc = tl.load(Bp)
        Cc = tl.load(Cp)
    else:
        Bc = tl.load(Bp, mask=n_col_mask, other=0.0)
        Cc = tl.load(Cp, mask=n_col_mask, other=0.0)
    return x, z, Bc, Cc


@triton.jit
def _chain_segments_kernel(u_ptr, p_ptr, first_ptr, out_ptr, n_seg, M, HAS_FIRST: tl.constexpr,
                           REVERSE: tl.constexpr, BLOCK: tl.constexpr):
    """The state each time segment starts from, from the segments' summaries ([b, n_seg, M] each, M = states x
    channels): forward, out[0] = first and out[s] = P[s-1] out[s-1] + U[s-1]; REVERSE (the backward's gradients
    arriving at segment ends), out[n-1] = first and out[s-1] = P[s] out[s] + U[s]; ``first`` zero when absent. One
    launch for what a host-side loop did in two per segment while the device waited."""
    pid_b = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M
    h = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_FIRST:
        h = tl.load(first_ptr + pid_b * M + offs, mask=mask, other=0.0).to(tl.float32)
    for k in range(0, n_seg - 1):  # the summaries of the last (REVERSE: the first) segment are never written
        if REVERSE:
            s = n_seg - 1 - k
        else:
            s = k
        row = (pid_b * n_seg + s) * M + offs
        tl.store(out_ptr + row, h, mask=mask)
        h = tl.load(p_ptr + row, mask=mask, other=0.0) * h + tl.load(u_ptr + row, mask=mask, other=0.0)
    if REVERSE:
        last = 0
    else:
        last = n_seg - 1
    tl.store(out_ptr + (pid_b * n_seg + last) * M + offs, h, mask=mask)


def _chain_segments(u: Tensor, p: Tensor, first: Optional[Tensor], reverse: bool) -> Tensor:
    """[b, n_seg, ns, dim] segment starts (see _chain_segments_kernel); ``first``: [b, ns, dim] or None."""
    b, n_seg = u.shape[:2]
    m = u[0, 0].numel()
    out = torch.empty_like(u)
    block = 1024
    _chain_segments_kernel[(b, triton.cdiv(m, block))](u, p, first if first is not None else u, out, n_seg, m,
                                                      HAS_FIRST=first is not None, REVERSE=reverse, BLOCK=block)
    return out


@triton.jit
def _scan_fwd_step_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, reset_ptr, h0_ptr,
                          y_ptr, hT_ptr, ckpt_ptr, sumU_ptr, sumP_ptr,
                          T, DIM, NS, n_ckpt, seg_len, n_seg,
                          NP: tl.constexpr, BLOCK_D: tl.constexpr, CKPT_STEPS: tl.constexpr,
                          EVEN_D: tl.constexpr, EVEN_N: tl.constexpr,
                          HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESET: tl.constexpr,
                          HAS_H0: tl.constexpr, SOFTPLUS: tl.constexpr, SUMMARY: tl.constexpr):
    """Grid (batch, channel blocks, time segments); segment s covers [s * seg_len, (s + 1) * seg_len).
    SUMMARY: only scan the segment from a zero state and store (end state, product of the decays), which lets the
    host chain the segments; otherwise start from h0[b, s] and write y, the checkpoints and h_T.

    One time step per iteration, so a step costs one exp2 and three FMAs per state.  The next step's inputs are loaded before
    this step's arithmetic (carried in registers) to hide the load latency; that load reads a clamped, valid
    time index so it needs no mask.  B[t] and C[t] are loaded as [NP, 1] columns that every lane holds whole
    (the same addresses across the warp) and broadcast over the channels for free."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    pid_s = tl.program_id(2)
    offs_d, offs_n, mask_d, mask_n, mnd, nd_off, A, bias, Dv = _channel_block(
        pid_d, A_ptr, bias_ptr, D_ptr, DIM, NS, NP, BLOCK_D, HAS_BIAS, HAS_D)
    # exp(delta A) = exp2(delta A log2 e): fold log2 e into A once (ex2 is the hardware instruction)
    A2 = A * 1.4426950408889634
    state_off = pid_b * DIM * NS + nd_off
    seg_off = (pid_b * n_seg + pid_s) * DIM * NS + nd_off
    h = tl.zeros([NP, BLOCK_D], dtype=tl.float32)
    if HAS_H0:
        h = tl.load(h0_ptr + seg_off, mask=mnd, other=0.0).to(tl.float32)
    p_acc = tl.full([NP, BLOCK_D], 1.0, tl.float32)
    t_lo = pid_s * seg_len
    t_hi = tl.minimum(T, t_lo + seg_len)
    n_col = offs_n[:, None]  # [NP, 1]; B and C rows are contiguous (the wrapper passes contiguous tensors)
    n_col_mask = mask_n[:, None]
    x_row = x_ptr + pid_b * T * DIM + offs_d  # row pointers at t = 0
    dt_row = dt_ptr + pid_b * T * DIM + offs_d
    y_row = y_ptr + pid_b * T * DIM + offs_d
    B_row = B_ptr + pid_b * T * NS
    C_row = C_ptr + pid_b * T * NS
    # the next step's inputs are loaded one step ahead; addresses are formed each step from the row index plus
    # per-lane constants, so no per-element pointer lives across iterations (running pointer tensors for the
    # [NP, 1] B and C columns, which every lane holds, cost 2 x NP 64-bit registers and spilled)
    t_cur = tl.minimum(t_lo, T - 1).to(tl.int64)  # the step as int64 (row offsets may pass 2^31)
    x_n, z_n, B_n, C_n = _load_step(x_row + t_cur * DIM, dt_row + t_cur * DIM, B_row + t_cur * NS + n_col,
                                    C_row + t_cur * NS + n_col, mask_d, n_col_mask, EVEN_D, EVEN_N)
    for t in range(t_lo, t_hi):
        x = x_n.to(tl.float32)
        z = z_n.to(tl.float32)
        Bt = B_n.to(tl.float32)
        Ct = C_n.to(tl.float32)
        t_next = tl.minimum(t_cur + 1, t_hi - 1)
        x_n, z_n, B_n, C_n = _load_step(x_row + t_next * DIM, dt_row + t_next * DIM, B_row + t_next * NS + n_col,
                                        C_row + t_next * NS + n_col, mask_d, n_col_mask, EVEN_D, EVEN_N)
        if not SUMMARY:
            if t % CKPT_STEPS == 0:
                tl.store(ckpt_ptr + (pid_b * n_ckpt + t // CKPT_STEPS) * DIM * NS + nd_off, h, mask=mnd)
        h, a = _state_step(h, x, z, Bt, A2, bias, reset_ptr + pid_b * T + t, HAS_BIAS, HAS_RESET, SOFTPLUS, True)
        if SUMMARY:
            p_acc = p_acc * a
        else:
            y = tl.sum(h * Ct, axis=0)
            if HAS_D:
                y += Dv * x
            if EVEN_D:
                tl.store(y_row + t_cur * DIM, y.to(y_ptr.dtype.element_ty))
            else:
                tl.store(y_row + t_cur * DIM, y.to(y_ptr.dtype.element_ty), mask=mask_d)
        t_cur += 1
    if SUMMARY:
        tl.store(sumU_ptr + seg_off, h, mask=mnd)
        tl.store(sumP_ptr + seg_off, p_acc, mask=mnd)
    else:
        tl.store(hT_ptr + state_off, h, mask=mnd & (pid_s == n_seg - 1))


@triton.jit(do_not_specialize=["sn"])
def _scan_bwd_kernel(x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, reset_ptr, ckpt_ptr, gy_ptr, gT_ptr,
                     scratch_ptr,
                     dx_ptr, ddt_ptr, dApart_ptr, dB_ptr, dC_ptr, dDpart_ptr, dbpart_ptr, dh0_ptr,
                     T, DIM, NS, n_ckpt, seg_len, n_seg, sn,
                     NP: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, CKPT_TILES: tl.constexpr,
                     HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_RESET: tl.constexpr,
                     HAS_GT: tl.constexpr, WANT_DH0: tl.constexpr, SOFTPLUS: tl.constexpr):
    # grid (batch, channel blocks, time segments); gT[b, s] is the gradient arriving at the end of segment s
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    pid_s = tl.program_id(2)
    n_dblk = tl.num_programs(1)
    offs_t = tl.arange(0, BLOCK_T)
    offs_d, offs_n, mask_d, mask_n, mnd, nd_off, A, bias, Dv = _channel_block(
        pid_d, A_ptr, bias_ptr, D_ptr, DIM, NS, NP, BLOCK_D, HAS_BIAS, HAS_D)
    state_off = pid_b * DIM * NS + nd_off
    seg_off = (pid_b * n_seg + pid_s) * DIM * NS + nd_off  # into [b, n_seg, DIM, NS]
    # q = a_{t+1} * dL/dh_{t+1}: the gradient reaching h_t from the future (g_final at the end).
    q = tl.zeros([NP, BLOCK_D], dtype=tl.float32)
    if HAS_GT:
        q = tl.load(gT_ptr + seg_off, mask=mnd, other=0.0).to(tl.float32)
    dA_acc = tl.zeros([NP, BLOCK_D], dtype=tl.float32)
    dD_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    base_xd = pid_b * T * DIM
    base_bn = pid_b * T * NS
    base_r = pid_b * T
    # per-program scratch for the states at the start of the tiles of one checkpoint chunk
    sc_base = ((pid_b * n_seg + pid_s) * n_dblk + pid_d) * CKPT_TILES * BLOCK_D * NP
    sc_off = offs_n[:, None] * BLOCK_D + tl.arange(0, BLOCK_D)[None, :]
    n_tiles = tl.cdiv(T, BLOCK_T)
    seg_chunks = seg_len // (CKPT_TILES * BLOCK_T)
    c_lo = pid_s * seg_chunks
    c_hi = tl.minimum(n_ckpt, c_lo + seg_chunks)
    for cc in range(0, c_hi - c_lo):
        c = c_hi - 1 - cc
        j0 = c * CKPT_TILES
        nt = tl.minimum(n_tiles - j0, CKPT_TILES)
        # phase A: states at the start of every tile of this chunk, one step per iteration as in the forward
        # (the tiles before the chunk's last one are always whole, so no step is masked in time)
        h = tl.load(ckpt_ptr + (pid_b * n_ckpt + c) * DIM * NS + nd_off, mask=mnd, other=0.0)
        t0 = (j0 * BLOCK_T).to(tl.int64)
        n_steps = (nt - 1) * BLOCK_T
        xp = x_ptr + base_xd + t0 * DIM + offs_d
        zp = dt_ptr + base_xd + t0 * DIM + offs_d
        Bp = B_ptr + base_bn + t0 * NS + offs_n[:, None] * sn
        x_n, z_n, B_n, _c = _load_step(xp, zp, Bp, Bp, mask_d, mask_n[:, None], False, False)
        for i in range(0, n_steps):
            if i % BLOCK_T == 0:
                tl.store(scratch_ptr + sc_base + (i // BLOCK_T) * BLOCK_D * NP + sc_off, h)
            x = x_n.to(tl.float32)
            z = z_n.to(tl.float32)
            Bc = B_n.to(tl.float32)
            more = i + 1 < n_steps  # load the next step's inputs before this step's arithmetic
            xp += tl.where(more, DIM, 0)
            zp += tl.where(more, DIM, 0)
            Bp += tl.where(more, NS, 0)
            x_n, z_n, B_n, _c = _load_step(xp, zp, Bp, Bp, mask_d, mask_n[:, None], False, False)
            h, _a = _state_step(h, x, z, Bc, A, bias, reset_ptr + base_r + t0 + i, HAS_BIAS, HAS_RESET, SOFTPLUS,
                                False)
        tl.store(scratch_ptr + sc_base + (nt - 1) * BLOCK_D * NP + sc_off, h)
        tl.debug_barrier()
        # phase B: tiles in reverse
        for kk in range(0, nt):
            jj = nt - 1 - kk
            h0 = tl.load(scratch_ptr + sc_base + jj * BLOCK_D * NP + sc_off)
            x, z, delta, Bt, Ct, a, u, m2, mask_t, xd_off, bn_off, mtn = _load_tile(
                x_ptr, dt_ptr, B_ptr, C_ptr, reset_ptr, A, bias, base_xd, base_bn, base_r, (j0 + jj) * BLOCK_T,
                T, DIM, NS, sn, offs_t, offs_d, offs_n, mask_d, mask_n, HAS_BIAS, HAS_RESET, SOFTPLUS)
            P, U = tl.associative_scan((a, u), 0, _affine_combine)
            hs = P * h0[None, :, :] + U  # h_t
            gy = tl.load(gy_ptr + xd_off, mask=m2, other=0.0).to(tl.float32)
            v = gy[:, None, :] * Ct[:, :, None]
            gh, q, _p = _reverse_tile(a, v, q, offs_t, BLOCK_T)  # gh = dL/dh_t
            hm = hs - u  # a_t h_{t-1}
            s_b = tl.sum(gh * Bt[:, :, None], axis=1)  # sum_n gh B   [BT, BD]
            dx = delta * s_b
            if HAS_D:
                dx += Dv[None, :] * gy
                dD_acc += tl.sum(gy * x, axis=0)
            gdec = gh * hm
            ddelta = x * s_b + tl.sum(gdec * A[None, :, :], axis=1)
            dA_acc += tl.sum(gdec * delta[:, None, :], axis=0)
            if SOFTPLUS:
                dz = ddelta * tl.sigmoid(z)
            else:
                dz = ddelta
            dz = tl.where(m2, dz, 0.0)
            db_acc += tl.sum(dz, axis=0)
            tl.store(dx_ptr + xd_off, dx.to(dx_ptr.dtype.element_ty), mask=m2)
            tl.store(ddt_ptr + xd_off, dz.to(ddt_ptr.dtype.element_ty), mask=m2)
            dBt = tl.sum(gh * (delta * x)[:, None, :], axis=2)  # [BT, NP] (sum over this block's channels)
            dCt = tl.sum(hs * gy[:, None, :], axis=2)
            tl.atomic_add(dB_ptr + bn_off, dBt, mask=mtn, sem="relaxed")
            tl.atomic_add(dC_ptr + bn_off, dCt, mask=mtn, sem="relaxed")
        tl.debug_barrier()
    tl.store(dApart_ptr + seg_off, dA_acc, mask=mnd)  # partial sums per (batch, segment)
    if HAS_D:
        tl.store(dDpart_ptr + (pid_b * n_seg + pid_s) * DIM + offs_d, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(dbpart_ptr + (pid_b * n_seg + pid_s) * DIM + offs_d, db_acc, mask=mask_d)
    if WANT_DH0:
        tl.store(dh0_ptr + state_off, q, mask=mnd & (pid_s == 0))


@triton.jit(do_not_specialize=["sn"])
def _scan_bwd_summary_kernel(dt_ptr, A_ptr, C_ptr, bias_ptr, reset_ptr, gy_ptr, sumQ_ptr, sumP_ptr,
                             T, DIM, NS, seg_len, n_seg, sn,
                             NP: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                             HAS_BIAS: tl.constexpr, HAS_RESET: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Reverse-time summary of segment s = program_id(2) + 1 (segment 0 is never needed): the gradient q that
    the segment hands to its predecessor when nothing arrives from its end, and the product of its decays.
    The recurrence q_t = a_t (C_t dy_t + q_{t+1}) involves no forward state, so no checkpoint is read."""
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    pid_s = tl.program_id(2) + 1
    offs_t = tl.arange(0, BLOCK_T)
    offs_d, offs_n, mask_d, mask_n, mnd, nd_off, A, bias, Dv = _channel_block(
        pid_d, A_ptr, bias_ptr, A_ptr, DIM, NS, NP, BLOCK_D, HAS_BIAS, False)
    q = tl.zeros([NP, BLOCK_D], dtype=tl.float32)
    p_acc = tl.full([NP, BLOCK_D], 1.0, tl.float32)
    base_xd = pid_b * T * DIM
    base_bn = pid_b * T * NS
    base_r = pid_b * T
    j_lo = pid_s * (seg_len // BLOCK_T)
    j_hi = tl.minimum(tl.cdiv(T, BLOCK_T), j_lo + seg_len // BLOCK_T)
    for jj in range(0, j_hi - j_lo):
        j = j_hi - 1 - jj
        # x and B are not needed here: pass dt and C in their place (their loads are dead code)
        x, z, delta, Bt, Ct, a, u, m2, mask_t, xd_off, bn_off, mtn = _load_tile(
            dt_ptr, dt_ptr, C_ptr, C_ptr, reset_ptr, A, bias, base_xd, base_bn, base_r, j * BLOCK_T, T, DIM, NS,
            sn, offs_t, offs_d, offs_n, mask_d, mask_n, HAS_BIAS, HAS_RESET, SOFTPLUS)
        gy = tl.load(gy_ptr + xd_off, mask=m2, other=0.0).to(tl.float32)
        v = gy[:, None, :] * Ct[:, :, None]
        _gh, q, p_tile = _reverse_tile(a, v, q, offs_t, BLOCK_T)
        p_acc = p_acc * p_tile
    seg_off = (pid_b * n_seg + pid_s) * DIM * NS + nd_off
    tl.store(sumQ_ptr + seg_off, q, mask=mnd)
    tl.store(sumP_ptr + seg_off, p_acc, mask=mnd)


# ----------------------------------------------------------------------------------------------
# custom ops
# ----------------------------------------------------------------------------------------------
def _maxnreg(n: int) -> dict:
    return {"maxnreg": n} if n > 0 else {}  # only when set: the interpreter takes no such option


def _softplus_mode(dt_softplus: bool) -> int:
    """The kernels' SOFTPLUS: 0 none, 1 with the precise log, 2 with the approximate one (GPU; the interpreter
    has no libdevice)."""
    if not dt_softplus:
        return 0
    return 2 if CONFIG["FAST_SOFTPLUS"] and not interpreting() else 1


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
    ckpt = torch.empty(b, n_ckpt, ns, dim, device=x.device, dtype=torch.float32)  # states: [.., NS, DIM]
    if T == 0:
        hT = initial_state.clone() if initial_state is not None else x.new_zeros(b, dim, ns, dtype=torch.float32)
        return y, hT, ckpt
    hT = torch.empty(b, ns, dim, device=x.device, dtype=torch.float32)
    cfg = CONFIG
    _check_config(cfg)
    n_dblk = triton.cdiv(dim, cfg["FWD_BLOCK_D"])
    n_seg, seg_len = _segments(b, dim, n_ckpt, cfg["FWD_BLOCK_D"], cfg["FWD_WARPS"], x.device)
    h0 = _states_last(initial_state)
    args = (x, dt, _states_last(A), B, C, D if D is not None else x, dt_bias if dt_bias is not None else x,
            reset.view(torch.uint8) if reset is not None else x)
    meta = dict(NP=_np2(ns), BLOCK_D=cfg["FWD_BLOCK_D"], HAS_D=D is not None,
                HAS_BIAS=dt_bias is not None, HAS_RESET=reset is not None, SOFTPLUS=_softplus_mode(dt_softplus),
                num_warps=cfg["FWD_WARPS"], **_maxnreg(cfg["FWD_MAXNREG"]))
    kernel = _scan_fwd_step_kernel
    meta.update(CKPT_STEPS=cfg["CKPT_STEPS"], EVEN_D=dim % cfg["FWD_BLOCK_D"] == 0, EVEN_N=ns == _np2(ns))
    if n_seg > 1:
        # pass 1: every segment but the last scans from zero -> (end state U_s, decay product P_s)
        sumU = torch.empty(b, n_seg, ns, dim, device=x.device, dtype=torch.float32)
        sumP = torch.empty_like(sumU)
        kernel[(b, n_dblk, n_seg - 1)](
            *args, x, y, hT, ckpt, sumU, sumP, T, dim, ns, n_ckpt, seg_len, n_seg,
            HAS_H0=False, SUMMARY=True, **meta)
        # chain: start of segment s = P_{s-1} * start_{s-1} + U_{s-1}
        h0 = _chain_segments(sumU, sumP, h0, reverse=False)
    kernel[(b, n_dblk, n_seg)](
        *args, h0 if h0 is not None else x, y, hT, ckpt, x, x, T, dim, ns, n_ckpt, seg_len, n_seg,
        HAS_H0=h0 is not None, SUMMARY=False, **meta)
    return y, _states_first(hT), ckpt


def _states_last(t: Optional[Tensor]) -> Optional[Tensor]:
    """[.., DIM, NS] -> contiguous [.., NS, DIM], the kernels' layout for state-shaped arrays (see the layout note)."""
    return None if t is None else t.transpose(-1, -2).contiguous()


def _states_first(t: Tensor) -> Tensor:
    """The kernels' [.., NS, DIM] back to the API's contiguous [.., DIM, NS]."""
    return t.transpose(-1, -2).contiguous()


@_scan_fwd.register_fake
def _scan_fwd_fake(x, dt, A, B, C, D, dt_bias, reset, initial_state, dt_softplus):
    b, T, dim = x.shape
    ns = A.shape[1]
    return (torch.empty_like(x), x.new_empty(b, dim, ns, dtype=torch.float32),
            x.new_empty(b, _n_ckpt(T), ns, dim, dtype=torch.float32))


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
    dh0 = torch.zeros(b, dim, ns, device=dev, dtype=f32) if want_dh0 else None
    n_seg = 1
    if T > 0:
        A_k = _states_last(A)  # the kernels' [NS, DIM] layout (see the layout note)
        dh0_k = torch.zeros(b, ns, dim, device=dev, dtype=f32) if want_dh0 else None
        cfg = CONFIG
        _check_config(cfg)
        if cfg["CKPT_STEPS"] * n_ckpt < T or cfg["CKPT_STEPS"] * (n_ckpt - 1) >= T:
            raise RuntimeError("selective_scan_triton: CONFIG['CKPT_STEPS'] changed between forward and backward")
        np2 = _np2(ns)
        n_dblk = triton.cdiv(dim, cfg["BWD_BLOCK_D"])
        tiles = cfg["CKPT_STEPS"] // cfg["BWD_BLOCK_T"]
        n_seg, seg_len = _segments(b, dim, n_ckpt, cfg["BWD_BLOCK_D"], cfg["BWD_WARPS"], dev)
        rst = reset.view(torch.uint8) if reset is not None else x
        gT = _states_last(g_final)[:, None] if g_final is not None else None  # [b, 1, ns, dim]
        if n_seg > 1:
            # pass 1: reverse summaries of segments 1..n_seg-1, then chain them from the end
            sumQ = torch.empty(b, n_seg, ns, dim, device=dev, dtype=f32)
            sumP = torch.empty_like(sumQ)
            _scan_bwd_summary_kernel[(b, n_dblk, n_seg - 1)](
                dt, A_k, C, dt_bias if dt_bias is not None else x, rst, gy, sumQ, sumP, T, dim, ns, seg_len, n_seg, 1,
                NP=np2, BLOCK_T=cfg["BWD_BLOCK_T"], BLOCK_D=cfg["BWD_BLOCK_D"], HAS_BIAS=dt_bias is not None,
                HAS_RESET=reset is not None, SOFTPLUS=_softplus_mode(dt_softplus), num_warps=cfg["BWD_WARPS"])
            gT = _chain_segments(sumQ, sumP, _states_last(g_final), reverse=True)
        dA_part = torch.empty(b * n_seg, ns, dim, device=dev, dtype=f32)
        dD_part = torch.empty(b * n_seg, dim, device=dev, dtype=f32) if D is not None else dA_part
        db_part = torch.empty(b * n_seg, dim, device=dev, dtype=f32) if dt_bias is not None else dA_part
        scratch = torch.empty(b * n_seg * n_dblk * tiles * cfg["BWD_BLOCK_D"] * np2, device=dev, dtype=f32)
        _scan_bwd_kernel[(b, n_dblk, n_seg)](
            x, dt, A_k, B, C, D if D is not None else x, dt_bias if dt_bias is not None else x,
            rst, ckpt, gy, gT.contiguous() if gT is not None else x, scratch,
            dx, ddt, dA_part, dB, dC, dD_part, db_part, dh0_k if want_dh0 else dA_part,
            T, dim, ns, n_ckpt, seg_len, n_seg, 1,
            NP=np2, BLOCK_D=cfg["BWD_BLOCK_D"], HAS_D=D is not None, HAS_BIAS=dt_bias is not None,
            HAS_RESET=reset is not None, HAS_GT=gT is not None, WANT_DH0=want_dh0, SOFTPLUS=_softplus_mode(dt_softplus),
            num_warps=cfg["BWD_WARPS"], BLOCK_T=cfg["BWD_BLOCK_T"], CKPT_TILES=tiles, **_maxnreg(cfg["BWD_MAXNREG"]))
        dA = _states_first(dA_part.sum(0)).to(A.dtype)
        if want_dh0:
            dh0 = _states_first(dh0_k)
        dD = dD_part.sum(0).to(D.dtype) if D is not None else _empty(x)
        dbias = db_part.sum(0).to(dt_bias.dtype) if dt_bias is not None else _empty(x)
    else:
        dx.zero_()
        ddt.zero_()
        if want_dh0 and g_final is not None:
            dh0.copy_(g_final)
        dA = torch.zeros_like(A)
        dD = torch.zeros_like(D) if D is not None else _empty(x)
        dbias = torch.zeros_like(dt_bias) if dt_bias is not None else _empty(x)
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
