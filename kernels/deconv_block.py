"""Triton deconv_block: act(affine(norm(conv_transpose2d(x, w, b, stride=2, padding=1)))).

Forward, three launches:
  1. `_deconv_fwd_kernel`: the transposed convolution (any kernel, stride, padding and
     output_padding; dilation 1) as stride_h * stride_w stride-1 convolutions, one per
     output phase (ry, rx): output row oy = ry + SH*m only sees kernel rows
     ky = (ry + PH) % SH + SH*t at input rows iy = m + (ry + PH) // SH - t, for
     t < TY = ceil(KH / SH) (taps past the kernel masked), and the same for columns. Each
     phase is a dense implicit GEMM, M = ceil(Ho/SH)*ceil(Wo/SW) pixels of one sample,
     N = Cout, K = TY*TX*Cin; the 4x4/2/1 block has four phases of 2x2 taps, none masked.
     fp32 accumulation in `tl.dot`; the epilogue adds the bias, stores pre_norm once, and
     writes per-tile, per-channel partial statistics (sum and the sum of squares about the
     tile mean, and the tile's pixel count) so nothing re-reads pre_norm for them.
  2. `_group_stats_kernel`: one tiny program per statistic ((sample, group), or a channel
     over every sample for BatchNorm) merges the partials with Chan's parallel-variance
     formula in a fixed order (deterministic, no atomics).
  3. `_norm_act_fwd_kernel`: normalize + affine/AdaIN + activation, elementwise.
Backward: `_norm_act_bwd_kernel` (one program per statistic: recompute the
normalized values from pre_norm and mean/rstd, reduce the group's two sums, write
grad_pre_norm and per-(sample, channel) sums for grad_scale/grad_shift), then the
convolution gradients through ATen (cuDNN on a GPU), as fastvae.reference does.
"""
import os

import torch
import triton
import triton.language as tl

from fastvae.reference import conv_transpose_backward, memory_format

# Conv tiles (BLOCK_M pixels x BLOCK_N output channels x BLOCK_K input channels per step).
# tl.dot needs every dim >= 16. Per architecture a big tile for large layers and a small
# one for small images / few programs. Chosen by compile_check: 128x128 tiles, 4-warp
# 128x64 tiles and BLOCK_K=64 big tiles spill (on odd shapes) once the statistics epilogue
# is in. Float32 inputs run exact ("ieee") products on the FMA units: a smaller K step.
CONV_CONFIGS = {
    80: [dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, num_warps=8, num_stages=3),
         dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=8, num_stages=3)],
    90: [dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, num_warps=8, num_stages=3),
         dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3)],
}
FP32_CONV_CONFIG = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=16, num_warps=8, num_stages=2)
W_PAD = 16  # weight rows padded to 16 elements

# Under TRITON_INTERPRET each program instance costs milliseconds: small tiles keep
# tensors tiny and the tests' grids short.
INTERPRET_CONV_CONFIG = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, num_warps=1, num_stages=1)

# float32 inputs get exact products, as the reference (within 1e-5): tf32 would not be.
# Half-precision inputs are unaffected by it.
DOT_PRECISION = "ieee"

# Elementwise tiles: BLOCK_C channels x BLOCK_HW pixels, 2048 elements over 4 warps.
NORM_BLOCK_C = 8
NORM_BLOCK_HW = 256
NUM_WARPS = 4
# Per-statistic programs of the backward sweep their planes in tiles this size; BatchNorm's
# programs own one channel each. Larger tiles spilled once the kernel gained the sample loop
# BatchNorm needs (compile_check: 4 x 256 on 4 and 8 warps, 4 x 128).
BWD_BLOCK_C = 4
BWD_BLOCK_HW = 64
BWD_BATCH_BLOCK_HW = 128
BWD_NUM_WARPS = 4
STATS_BLOCK = 256  # partials merged per step by _group_stats_kernel

ACT_NONE, ACT_RELU, ACT_LEAKY, ACT_SILU, ACT_TANH, ACT_SIGMOID, ACT_GELU, ACT_GELU_TANH = range(8)
ACTIVATIONS = {"none": ACT_NONE, "relu": ACT_RELU, "leaky_relu": ACT_LEAKY, "silu": ACT_SILU,
               "tanh": ACT_TANH, "sigmoid": ACT_SIGMOID, "gelu": ACT_GELU,
               "gelu_tanh": ACT_GELU_TANH}
BATCH = -1  # `groups` of BatchNorm (fastvae.reference.BATCH): per channel over (N, H, W)


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@triton.jit
def _cast(v, dtype: tl.constexpr, INTERPRET: tl.constexpr):
    """v.to(dtype) rounding to nearest even: the interpreter truncates float32 -> bfloat16
    (GPUs round), so under it round the float32 bits first."""
    if INTERPRET:
        if dtype == tl.bfloat16:
            bits = v.to(tl.float32).to(tl.uint32, bitcast=True)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            v = bits.to(tl.float32, bitcast=True)
    return v.to(dtype)


@triton.jit
def _deconv_fwd_kernel(
    x_ptr,  # (N, Cin, H, W), strides sx*
    w_ptr,  # (KH, KW, Cin, Cout_pad) contiguous: the weight as (ky, kx, ci, co), zero-padded
    bias_ptr,  # (Cout,), read only when HAS_BIAS
    out_ptr,  # (N, Cout, Ho, Wo) pre_norm, strides so*
    psum_ptr,  # (N, P, Cout) ACC, P = SH*SW*n_mt: per-tile channel sums, written when STATS
    pm2_ptr,  # (N, P, Cout) ACC: per-tile sums of squares about the tile mean
    pcnt_ptr,  # (N, P) ACC: pixels in each tile
    Cin, Cout, Cout_pad, H, W, Ho, Wo, MX, n_mt,
    sx0, sx1, sx2, sx3,
    so0, so1, so2, so3,
    KH: tl.constexpr, KW: tl.constexpr,
    SH: tl.constexpr, SW: tl.constexpr,
    PH: tl.constexpr, PW: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    STATS: tl.constexpr,
    ACC: tl.constexpr,
    INTERPRET: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0).to(tl.int64)
    pid_n = tl.program_id(1)
    phase = tl.program_id(2)
    ry = phase // SW  # the phase's first output row and column
    rx = phase % SW
    n = pid_m // n_mt
    mt = pid_m % n_mt
    rows = mt * BLOCK_M + tl.arange(0, BLOCK_M)  # pixel my * MX + mx of this phase
    my = rows // MX
    mx = rows % MX
    oy = ry + SH * my
    ox = rx + SW * mx
    row_ok = (oy < Ho) & (ox < Wo)
    ky0 = (ry + PH) % SH  # kernel rows ky0 + SH*t reach this phase from input rows
    dy = (ry + PH) // SH  # my + dy - t
    kx0 = (rx + PW) % SW
    dx = (rx + PW) // SW
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output channel
    col_ok = cols < Cout
    ks = tl.arange(0, BLOCK_K)
    # 64-bit sample bases; offsets inside one sample and inside the weight fit in int32
    # (the launcher checks), which halves the address registers of every tile.
    x_base = x_ptr + n * sx0
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
    TY: tl.constexpr = (KH + SH - 1) // SH
    TX: tl.constexpr = (KW + SW - 1) // SW
    for t in tl.static_range(TY * TX):
        ky = ky0 + SH * (t // TX)
        kx = kx0 + SW * (t % TX)
        iy = my + dy - t // TX
        ix = mx + dx - t % TX
        tap_ok = (ky < KH) & (kx < KW)  # past the kernel in this phase: nothing to add
        pix_ok = row_ok & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W) & tap_ok
        pix_off = iy * sx2 + ix * sx3  # (BLOCK_M,)
        w_tap = w_ptr + (ky * KW + kx) * Cin * Cout_pad
        for k0 in range(0, Cin, BLOCK_K):
            ci = k0 + ks
            ci_ok = ci < Cin
            a = tl.load(x_base + pix_off[:, None] + ci[None, :] * sx1,
                        mask=pix_ok[:, None] & ci_ok[None, :], other=0.0)
            b = tl.load(w_tap + ci[:, None] * Cout_pad + cols[None, :],
                        mask=ci_ok[:, None] & col_ok[None, :] & tap_ok, other=0.0)
            if DOT_FP32:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION, out_dtype=ACC)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(ACC)[None, :]
    out_off = oy * so2 + ox * so3  # (BLOCK_M,)
    out_ptrs = out_ptr + n * so0 + out_off[:, None] + (cols * so1)[None, :]
    ok = row_ok[:, None] & col_ok[None, :]
    stored = _cast(acc, out_ptr.dtype.element_ty, INTERPRET)
    tl.store(out_ptrs, stored, mask=ok)
    if STATS:
        # statistics of the values as stored, so that normalizing pre_norm (here and in
        # the backward) sees exactly zero mean and unit variance, as the reference does
        count = tl.sum(row_ok.to(ACC), axis=0)
        acc = stored.to(ACC)
        v = tl.where(ok, acc, 0.0)
        tile_sum = tl.sum(v, axis=0)  # (BLOCK_N,)
        d = tl.where(ok, acc - (tile_sum / tl.maximum(count, 1.0))[None, :], 0.0)
        tile_m2 = tl.sum(d * d, axis=0)
        tile = n * SH * SW * n_mt + phase * n_mt + mt
        tl.store(psum_ptr + tile * Cout + cols, tile_sum, mask=col_ok)
        tl.store(pm2_ptr + tile * Cout + cols, tile_m2, mask=col_ok)
        tl.store(pcnt_ptr + tile, count, mask=pid_n == 0)


@triton.jit
def _group_stats_kernel(
    psum_ptr,  # (N, P, Cout) ACC partial tiles per channel
    pm2_ptr,  # (N, P, Cout) ACC
    pcnt_ptr,  # (N, P) ACC pixels per tile
    mean_ptr,  # (N, G) out, ACC; (1, Cout) for BatchNorm
    rstd_ptr,  # (N, G) out, ACC; (1, Cout) for BatchNorm
    N, Cout, G, P, eps,
    BATCH_STATS: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    # program (n, g): the statistic of sample n's group g, or (0, c) channel c over every
    # sample for BatchNorm; its partials are NS samples x P tiles x CPG channels
    s0 = tl.program_id(0).to(tl.int64)
    s1 = tl.program_id(1).to(tl.int64)
    if BATCH_STATS:
        NS = N
        CPG = 1
        n0 = s0 * 0
        c0 = s1
    else:
        NS = 1
        CPG = Cout // G
        n0 = s0
        c0 = s1 * CPG
    total = NS * P * CPG
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], ACC)
    acc_cnt = tl.zeros([BLOCK], ACC)
    for start in range(0, total, BLOCK):
        idx = start + offs
        ok = idx < total
        tile = (n0 + idx // (P * CPG)) * P + (idx // CPG) % P
        acc += tl.load(psum_ptr + tile * Cout + c0 + idx % CPG, mask=ok, other=0.0)
        acc_cnt += tl.load(pcnt_ptr + tile, mask=ok, other=0.0)
    count = tl.sum(acc_cnt, axis=0)
    mean = tl.sum(acc, axis=0) / count
    m2 = tl.zeros([BLOCK], ACC)
    for start in range(0, total, BLOCK):
        idx = start + offs
        ok = idx < total
        tile = (n0 + idx // (P * CPG)) * P + (idx // CPG) % P
        off = tile * Cout + c0 + idx % CPG
        s = tl.load(psum_ptr + off, mask=ok, other=0.0)
        q = tl.load(pm2_ptr + off, mask=ok, other=0.0)
        cnt = tl.load(pcnt_ptr + tile, mask=ok, other=0.0)
        delta = s / tl.maximum(cnt, 1.0) - mean
        m2 += tl.where(ok, q + cnt * delta * delta, 0.0)
    var = tl.sum(m2, axis=0) / count
    tl.store(mean_ptr + s0 * G + s1, mean)
    tl.store(rstd_ptr + s0 * G + s1, 1.0 / tl.sqrt(var + eps))


@triton.jit
def _erf(x):
    """erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): libdevice's erf is a call whose
    frame counted as spills in the BatchNorm backward (compile_check)."""
    t = 1.0 / (1.0 + 0.3275911 * tl.abs(x))
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027
                                                                      + t * 1.061405429))))
    e = 1.0 - poly * tl.exp(-x * x)
    return tl.where(x < 0, -e, e)


@triton.jit
def _tanh(a):
    return 2.0 / (1.0 + tl.exp(-2.0 * a)) - 1.0  # tl has no tanh; exact to float rounding


@triton.jit
def _activate(a, ACT: tl.constexpr, slope):
    if ACT == 1:
        a = tl.maximum(a, 0.0)
    elif ACT == 2:
        a = tl.where(a > 0, a, a * slope)
    elif ACT == 3:
        a = a / (1.0 + tl.exp(-a))
    elif ACT == 4:
        a = _tanh(a)
    elif ACT == 5:
        a = 1.0 / (1.0 + tl.exp(-a))
    elif ACT == 6:  # a * Phi(a), Phi(a) = (1 + erf(a / sqrt(2))) / 2
        a = 0.5 * a * (1.0 + _erf(a * 0.7071067811865476))
    elif ACT == 7:  # 0.5 a (1 + tanh(sqrt(2 / pi) (a + 0.044715 a^3)))
        a = 0.5 * a * (1.0 + _tanh(0.7978845608028654 * (a + 0.044715 * a * a * a)))
    return a


@triton.jit
def _activate_grad(a, ACT: tl.constexpr, slope):
    """d act(a) / da."""
    if ACT == 1:
        d = tl.where(a > 0, 1.0, 0.0)
    elif ACT == 2:
        d = tl.where(a > 0, 1.0, slope)
    elif ACT == 3:
        s = 1.0 / (1.0 + tl.exp(-a))
        d = s * (1.0 + a * (1.0 - s))
    elif ACT == 4:
        t = _tanh(a)
        d = 1.0 - t * t
    elif ACT == 5:
        s = 1.0 / (1.0 + tl.exp(-a))
        d = s * (1.0 - s)
    elif ACT == 6:  # Phi(a) + a phi(a), phi(a) = exp(-a^2 / 2) / sqrt(2 pi)
        d = (0.5 * (1.0 + _erf(a * 0.7071067811865476))
             + a * 0.3989422804014327 * tl.exp(-0.5 * a * a))
    elif ACT == 7:
        t = _tanh(0.7978845608028654 * (a + 0.044715 * a * a * a))
        d = 0.5 * (1.0 + t) + 0.5 * a * (1.0 - t * t) * 0.7978845608028654 * (
            1.0 + 3.0 * 0.044715 * a * a)
    else:
        d = tl.full(a.shape, 1.0, a.dtype)
    return d.to(a.dtype)


@triton.jit
def _norm_act_fwd_kernel(
    h_ptr,  # (N, C, Ho, Wo) pre_norm, strides sh*
    mean_ptr,  # (N, G) ACC, read when NORM; (1, C) when BATCH_STATS
    rstd_ptr,  # (N, G) ACC, read when NORM; (1, C) when BATCH_STATS
    scale_ptr,  # broadcast to (N, C, Ho, Wo) by strides ss* (0 on broadcast dims)
    shift_ptr,  # broadcast to (N, C, Ho, Wo) by strides sb* (0 on broadcast dims)
    y_ptr,  # (N, C, Ho, Wo) out, strides sy*
    C, Wo, HWo, G, slope,
    sh0, sh1, sh2, sh3,
    ss0, ss1, ss2, ss3,
    sb0, sb1, sb2, sb3,
    sy0, sy1, sy2, sy3,
    NORM: tl.constexpr,
    BATCH_STATS: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    ACT: tl.constexpr,
    ACC: tl.constexpr,
    INTERPRET: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    c = (tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)).to(tl.int64)
    p = (tl.program_id(2) * BLOCK_HW + tl.arange(0, BLOCK_HW)).to(tl.int64)
    c_ok = c < C
    ok = c_ok[:, None] & (p < HWo)[None, :]
    oy = (p // Wo)[None, :]
    ox = (p % Wo)[None, :]
    cc = c[:, None]
    v = tl.load(h_ptr + n * sh0 + cc * sh1 + oy * sh2 + ox * sh3, mask=ok, other=0.0).to(ACC)
    if NORM:
        if BATCH_STATS:
            grp = c
        else:
            grp = n * G + c // (C // G)
        mean = tl.load(mean_ptr + grp, mask=c_ok, other=0.0)
        rstd = tl.load(rstd_ptr + grp, mask=c_ok, other=0.0)
        v = (v - mean[:, None]) * rstd[:, None]
    if HAS_SCALE:
        v *= tl.load(scale_ptr + n * ss0 + cc * ss1 + oy * ss2 + ox * ss3, mask=ok, other=0.0).to(ACC)
    if HAS_SHIFT:
        v += tl.load(shift_ptr + n * sb0 + cc * sb1 + oy * sb2 + ox * sb3, mask=ok, other=0.0).to(ACC)
    v = _activate(v, ACT, slope)
    tl.store(y_ptr + n * sy0 + cc * sy1 + oy * sy2 + ox * sy3, _cast(v, y_ptr.dtype.element_ty, INTERPRET), mask=ok)


@triton.jit
def _bwd_tile(gy_ptr, h_ptr, scale_ptr, shift_ptr, n, c, p, c_ok, Wo, HWo, mean, rstd, slope,
              sg0, sg1, sg2, sg3, sh0, sh1, sh2, sh3, ss0, ss1, ss2, ss3, sb0, sb1, sb2, sb3,
              NORM: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr,
              ACT: tl.constexpr, ACC: tl.constexpr):
    """One (channels x pixels) tile: the normalized values, d loss / d(affine output) and
    d loss / d(normalized), recomputed from pre_norm; zero outside the mask."""
    ok = c_ok[:, None] & (p < HWo)[None, :]
    oy = (p // Wo)[None, :]
    ox = (p % Wo)[None, :]
    cc = c[:, None]
    nrm = tl.load(h_ptr + n * sh0 + cc * sh1 + oy * sh2 + ox * sh3, mask=ok, other=0.0).to(ACC)
    if NORM:
        nrm = (nrm - mean) * rstd
    a = nrm
    if HAS_SCALE:
        s = tl.load(scale_ptr + n * ss0 + cc * ss1 + oy * ss2 + ox * ss3, mask=ok, other=0.0).to(ACC)
        a = a * s
    if HAS_SHIFT:
        a += tl.load(shift_ptr + n * sb0 + cc * sb1 + oy * sb2 + ox * sb3, mask=ok, other=0.0).to(ACC)
    gy = tl.load(gy_ptr + n * sg0 + cc * sg1 + oy * sg2 + ox * sg3, mask=ok, other=0.0).to(ACC)
    g_a = tl.where(ok, gy * _activate_grad(a, ACT, slope), 0.0)
    g_n = g_a
    if HAS_SCALE:
        g_n = g_a * s
    nrm = tl.where(ok, nrm, 0.0)
    return nrm, g_a, g_n, ok, n * sh0 + cc * sh1 + oy * sh2 + ox * sh3


@triton.jit
def _norm_act_bwd_kernel(
    gy_ptr,  # (N, C, Ho, Wo) grad_y, strides sg*
    h_ptr,  # (N, C, Ho, Wo) pre_norm, strides sh* (shared by the three outputs below)
    mean_ptr,  # (N, G) ACC, read when NORM; (1, C) when BATCH_STATS
    rstd_ptr,  # (N, G) ACC, read when NORM; (1, C) when BATCH_STATS
    scale_ptr,  # broadcast to (N, C, Ho, Wo) by strides ss*
    shift_ptr,  # broadcast to (N, C, Ho, Wo) by strides sb*
    gh_ptr,  # (N, C, Ho, Wo) out: grad_pre_norm, strides sh*
    gs_ptr,  # out: (N, C, Ho, Wo) by sh* when SCALE_SPATIAL, else (N, C) per-channel sums
    gb_ptr,  # out: (N, C, Ho, Wo) by sh* when SHIFT_SPATIAL, else (N, C) per-channel sums
    N, C, Wo, HWo, G, CPG, slope,
    sg0, sg1, sg2, sg3,
    sh0, sh1, sh2, sh3,
    ss0, ss1, ss2, ss3,
    sb0, sb1, sb2, sb3,
    NORM: tl.constexpr,
    BATCH_STATS: tl.constexpr,
    HAS_SCALE: tl.constexpr,
    SCALE_SPATIAL: tl.constexpr,
    HAS_SHIFT: tl.constexpr,
    SHIFT_SPATIAL: tl.constexpr,
    ACT: tl.constexpr,
    ACC: tl.constexpr,
    INTERPRET: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_HW: tl.constexpr,
):
    # One program per statistic: (sample, group of CPG channels), or for BatchNorm
    # (0, channel) over every sample. Its sums need all of it, so the program sweeps it
    # twice (sums, then grad_pre_norm) instead of storing intermediates.
    s0 = tl.program_id(0).to(tl.int64)
    g = tl.program_id(1).to(tl.int64)
    if BATCH_STATS:
        n_lo = s0 * 0
        n_hi = n_lo + N
        c_lo = g
        c_hi = g + 1
        stat = g
    else:
        n_lo = s0
        n_hi = s0 + 1
        c_lo = g * CPG
        c_hi = tl.minimum(c_lo + CPG, C)
        stat = s0 * G + g
    mean = 0.0
    rstd = 1.0
    if NORM:
        mean = tl.load(mean_ptr + stat)
        rstd = tl.load(rstd_ptr + stat)
    sum_gn = tl.zeros([BLOCK_C, BLOCK_HW], ACC)
    sum_gnn = tl.zeros([BLOCK_C, BLOCK_HW], ACC)
    for n in range(n_lo, n_hi):
        for c0 in range(c_lo, c_hi, BLOCK_C):
            c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
            c_ok = c < c_hi
            ch_gs = tl.zeros([BLOCK_C, BLOCK_HW], ACC)
            ch_gb = tl.zeros([BLOCK_C, BLOCK_HW], ACC)
            for p0 in range(0, HWo, BLOCK_HW):
                p = (p0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
                nrm, g_a, g_n, ok, off = _bwd_tile(
                    gy_ptr, h_ptr, scale_ptr, shift_ptr, n, c, p, c_ok, Wo, HWo, mean, rstd,
                    slope, sg0, sg1, sg2, sg3, sh0, sh1, sh2, sh3, ss0, ss1, ss2, ss3,
                    sb0, sb1, sb2, sb3, NORM, HAS_SCALE, HAS_SHIFT, ACT, ACC)
                if HAS_SCALE:
                    if SCALE_SPATIAL:
                        tl.store(gs_ptr + off, _cast(g_a * nrm, gs_ptr.dtype.element_ty, INTERPRET),
                                 mask=ok)
                    else:
                        ch_gs += g_a * nrm
                if HAS_SHIFT:
                    if SHIFT_SPATIAL:
                        tl.store(gb_ptr + off, _cast(g_a, gb_ptr.dtype.element_ty, INTERPRET),
                                 mask=ok)
                    else:
                        ch_gb += g_a
                if NORM:
                    sum_gn += g_n
                    sum_gnn += g_n * nrm
                else:
                    tl.store(gh_ptr + off, _cast(g_n, gh_ptr.dtype.element_ty, INTERPRET), mask=ok)
            if HAS_SCALE and not SCALE_SPATIAL:
                tl.store(gs_ptr + n * C + c, tl.sum(ch_gs, axis=1), mask=c_ok)
            if HAS_SHIFT and not SHIFT_SPATIAL:
                tl.store(gb_ptr + n * C + c, tl.sum(ch_gb, axis=1), mask=c_ok)
    if NORM:
        count = ((c_hi - c_lo) * HWo * (n_hi - n_lo)).to(ACC)
        mean_gn = tl.sum(tl.sum(sum_gn, axis=1), axis=0) / count
        mean_gnn = tl.sum(tl.sum(sum_gnn, axis=1), axis=0) / count
        for n in range(n_lo, n_hi):
            for c0 in range(c_lo, c_hi, BLOCK_C):
                c = (c0 + tl.arange(0, BLOCK_C)).to(tl.int64)
                c_ok = c < c_hi
                for p0 in range(0, HWo, BLOCK_HW):
                    p = (p0 + tl.arange(0, BLOCK_HW)).to(tl.int64)
                    nrm, g_a, g_n, ok, off = _bwd_tile(
                        gy_ptr, h_ptr, scale_ptr, shift_ptr, n, c, p, c_ok, Wo, HWo, mean, rstd,
                        slope, sg0, sg1, sg2, sg3, sh0, sh1, sh2, sh3, ss0, ss1, ss2, ss3,
                        sb0, sb1, sb2, sb3, NORM, HAS_SCALE, HAS_SHIFT, ACT, ACC)
                    g_h = rstd * (g_n - mean_gn - nrm * mean_gnn)
                    tl.store(gh_ptr + off, _cast(g_h, gh_ptr.dtype.element_ty, INTERPRET), mask=ok)


# --------------------------------------------------------------------------- launchers

_ACC = {torch.float64: tl.float64}  # everything else accumulates in float32


def _acc(dtype):
    return _ACC.get(dtype, tl.float32)


def _new_output(shape, dtype, device, layout=torch.contiguous_format):
    """Every output buffer comes from here (the tests poison it to catch unwritten elements)."""
    return torch.empty(shape, dtype=dtype, device=device, memory_format=layout)


def _max_offset(t):
    """The largest element offset a view reaches from its first element."""
    return sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride()))


def _broadcast_strides(t, shape):
    """Strides of t broadcast to `shape` (0 on broadcast dims); (0,)*4 for None."""
    return (0, 0, 0, 0) if t is None else t.expand(shape).stride()


def conv_configs(arch: int, dtype) -> list:
    """Every conv tile the launcher may pick on sm_<arch> for inputs of `dtype`."""
    configs = CONV_CONFIGS[90 if arch >= 90 else 80]
    return [FP32_CONV_CONFIG] if dtype in (torch.float32, torch.float64) else configs


def conv_config(x, cout: int, phase_pixels: int, phases: int):
    """The conv tile for this input: the interpreter's, else by architecture and size."""
    if _interpret() or x.device.type != "cuda":
        return INTERPRET_CONV_CONFIG
    major, minor = torch.cuda.get_device_capability(x.device)
    configs = conv_configs(10 * major + minor, x.dtype)
    big = configs[0]
    # The big tile only when it still leaves >= 2 waves of programs.
    tiles = (x.shape[0] * phases * triton.cdiv(phase_pixels, big["BLOCK_M"])
             * triton.cdiv(cout, big["BLOCK_N"]))
    sms = torch.cuda.get_device_properties(x.device).multi_processor_count
    return big if tiles >= 2 * sms else configs[-1]


def out_size(size, k, stride, padding, output_padding):
    """nn.ConvTranspose2d's output size along one dim (dilation 1)."""
    return (size - 1) * stride - 2 * padding + k + output_padding


def _stats_shape(n, cout, groups):
    return (1, cout) if groups == BATCH else (n, groups)


def deconv_block_fwd(x, weight, bias, scale, shift, geometry, groups, activation,
                     negative_slope, eps):
    n, cin, h, w = x.shape
    cout, kh, kw = weight.shape[1:]
    sh, sw, ph, pw, oph, opw = geometry
    ho, wo = out_size(h, kh, sh, ph, oph), out_size(w, kw, sw, pw, opw)
    out_shape = (n, cout, ho, wo)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    fmt = memory_format(x, weight)
    # (ky, kx, ci, co) with co contiguous, padded to a multiple of W_PAD so every weight
    # row is 16-byte aligned: unaligned rows cost vector loads and make the tile spill.
    cout_pad = triton.cdiv(cout, W_PAD) * W_PAD
    w_taps = weight.new_zeros(kh, kw, cin, cout_pad)
    w_taps[..., :cout] = weight.permute(2, 3, 0, 1)
    if _max_offset(x[0]) >= 2**31:  # the kernel's in-sample offsets are int32
        x = x.contiguous(memory_format=fmt)
    if max(_max_offset(x[0]), x[0].numel() * 4, w_taps.numel()) >= 2**31:
        raise ValueError("deconv_block (triton): one sample of x or of the output, or the "
                         "weight, has 2**31 elements or more")
    bias_arg = bias.contiguous() if bias is not None else w_taps
    pre_norm = _new_output(out_shape, x.dtype, x.device, fmt)
    # one implicit GEMM per output phase over its my x mx pixels (see the module docstring)
    my, mx = triton.cdiv(ho, sh), triton.cdiv(wo, sw)
    cfg = dict(conv_config(x, cout, my * mx, sh * sw))
    bm, bn = cfg.pop("BLOCK_M"), cfg.pop("BLOCK_N")
    n_mt = triton.cdiv(my * mx, bm)
    tiles = sh * sw * n_mt  # partial statistics per sample and channel
    psum = _new_output((n, tiles, cout), acc, x.device) if groups else pre_norm
    pm2 = _new_output((n, tiles, cout), acc, x.device) if groups else pre_norm
    pcnt = _new_output((n, tiles), acc, x.device) if groups else pre_norm
    grid = (n * n_mt, triton.cdiv(cout, bn), sh * sw)
    _deconv_fwd_kernel[grid](
        x, w_taps, bias_arg, pre_norm, psum, pm2, pcnt, cin, cout, cout_pad, h, w, ho, wo, mx,
        n_mt, *x.stride(), *pre_norm.stride(), KH=kh, KW=kw, SH=sh, SW=sw, PH=ph, PW=pw,
        HAS_BIAS=bias is not None, STATS=bool(groups), ACC=_acc(x.dtype), INTERPRET=_interpret(),
        DOT_PRECISION=DOT_PRECISION,
        DOT_FP32=_interpret() and x.dtype == torch.bfloat16,  # the interpreter's bf16 dot is wrong
        BLOCK_M=bm, BLOCK_N=bn, **cfg)

    stats_shape = _stats_shape(n, cout, groups)
    mean = _new_output(stats_shape, acc, x.device)
    rstd = _new_output(stats_shape, acc, x.device)
    if groups:
        _group_stats_kernel[stats_shape](
            psum, pm2, pcnt, mean, rstd, n, cout, stats_shape[1], tiles, eps,
            BATCH_STATS=groups == BATCH, ACC=_acc(x.dtype), BLOCK=STATS_BLOCK,
            num_warps=NUM_WARPS)

    y = _new_output(out_shape, x.dtype, x.device, fmt)
    grid = (n, triton.cdiv(cout, NORM_BLOCK_C), triton.cdiv(ho * wo, NORM_BLOCK_HW))
    _norm_act_fwd_kernel[grid](
        pre_norm, mean, rstd,
        scale if scale is not None else pre_norm, shift if shift is not None else pre_norm, y,
        cout, wo, ho * wo, max(groups, 1), negative_slope,
        *pre_norm.stride(), *_broadcast_strides(scale, out_shape),
        *_broadcast_strides(shift, out_shape), *y.stride(),
        NORM=bool(groups), BATCH_STATS=groups == BATCH, HAS_SCALE=scale is not None,
        HAS_SHIFT=shift is not None,
        ACT=ACTIVATIONS[activation], ACC=_acc(x.dtype), INTERPRET=_interpret(),
        BLOCK_C=NORM_BLOCK_C, BLOCK_HW=NORM_BLOCK_HW, num_warps=NUM_WARPS)
    return y, pre_norm, mean, rstd


def _spatial(t, out_shape):
    return t is not None and tuple(t.shape[2:]) != (1, 1)


def _affine_grad_buffer(t, out_shape, pre_norm, acc):
    """Where the kernel writes t's gradient: full-size (pre_norm's strides) or (N, C) sums."""
    if t is None:
        return pre_norm
    if _spatial(t, out_shape):
        dtype = t.dtype if tuple(t.shape) == tuple(out_shape) else acc
        return _new_output(out_shape, dtype, pre_norm.device, memory_format(pre_norm))
    return _new_output(out_shape[:2], acc, pre_norm.device)


def _affine_grad(buf, t, out_shape):
    if t is None:
        return None
    if not _spatial(t, out_shape):
        buf = buf.view(*out_shape[:2], 1, 1)
    return buf.sum_to_size(t.shape).to(t.dtype)


def deconv_block_bwd(grad_y, x, weight, pre_norm, mean, rstd, scale, shift, has_bias,
                     geometry, groups, activation, negative_slope, eps):
    n, cout, ho, wo = pre_norm.shape
    out_shape = (n, cout, ho, wo)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    pre_norm = pre_norm.contiguous(memory_format=memory_format(pre_norm))
    grad_h = _new_output(out_shape, x.dtype, x.device, memory_format(pre_norm))
    if pre_norm.stride() != grad_h.stride():  # a dense layout that is neither format
        pre_norm = pre_norm.contiguous()
        grad_h = _new_output(out_shape, x.dtype, x.device)
    gs = _affine_grad_buffer(scale, out_shape, pre_norm, acc)
    gb = _affine_grad_buffer(shift, out_shape, pre_norm, acc)
    block_c, block_hw = BWD_BLOCK_C, BWD_BLOCK_HW
    if groups == BATCH:  # one program per channel, over every sample
        grid, cpg = (1, cout), 1
        block_c, block_hw = 1, BWD_BATCH_BLOCK_HW
        mean, rstd = mean.contiguous(), rstd.contiguous()
    elif groups:
        grid, cpg = (n, groups), cout // groups
        mean, rstd = mean.contiguous(), rstd.contiguous()
    else:
        grid, cpg = (n, triton.cdiv(cout, BWD_BLOCK_C)), BWD_BLOCK_C
        mean = rstd = pre_norm
    _norm_act_bwd_kernel[grid](
        grad_y, pre_norm, mean, rstd,
        scale if scale is not None else pre_norm, shift if shift is not None else pre_norm,
        grad_h, gs, gb, n, cout, wo, ho * wo, grid[1] if groups else 1, cpg, negative_slope,
        *grad_y.stride(), *pre_norm.stride(), *_broadcast_strides(scale, out_shape),
        *_broadcast_strides(shift, out_shape),
        NORM=bool(groups), BATCH_STATS=groups == BATCH, HAS_SCALE=scale is not None,
        SCALE_SPATIAL=_spatial(scale, out_shape),
        HAS_SHIFT=shift is not None, SHIFT_SPATIAL=_spatial(shift, out_shape),
        ACT=ACTIVATIONS[activation], ACC=_acc(x.dtype), INTERPRET=_interpret(),
        BLOCK_C=block_c, BLOCK_HW=block_hw, num_warps=BWD_NUM_WARPS)
    grad_x, grad_weight, grad_bias = conv_transpose_backward(grad_h, x, weight, has_bias,
                                                             geometry)
    return (grad_x, grad_weight, grad_bias, _affine_grad(gs, scale, out_shape),
            _affine_grad(gb, shift, out_shape))
