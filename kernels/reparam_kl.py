"""Triton reparam_kl: z = mu + exp(logvar / 2) * eps and the per-sample KL, one launch each way.

Inputs are viewed as (B, D) rows (D = every dim but the first). Each program owns one
BLOCK-wide chunk of one row: it draws the noise `tl.randn(seed, i)` for the flattened
row-major index i (the contract's stream), writes z, and writes the chunk's KL sum to a
(B, n_chunks) buffer that the launcher sums in a fixed order (deterministic, no atomics).
The backward regenerates the same noise from (seed, i).
"""
import os

import torch
import triton
import triton.language as tl

# 1024 elements over 4 warps is 8 per thread: two 128-bit loads of float32 (one of
# half) per thread when rows are 16-byte aligned, and few enough programs to hide the
# Philox cost behind memory traffic.
MAX_BLOCK = 1024
MIN_BLOCK = 16  # small rows still get a power-of-two tile at least one vector wide
NUM_WARPS = 4

_ACC = {torch.float64: tl.float64}  # everything else accumulates in float32


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
def _reparam_kl_fwd_kernel(
    mu_ptr,  # (B, D) contiguous
    logvar_ptr,  # (B, D) contiguous
    eps_ptr,  # (B, D) contiguous, read only when HAS_EPS
    seed_ptr,  # () int64, on the data's device
    z_ptr,  # (B, D) out, mu's dtype
    kl_part_ptr,  # (B, n_chunks) out, ACC: each chunk's KL sum
    D,
    n_chunks,
    HAS_EPS: tl.constexpr,
    ACC: tl.constexpr,
    INTERPRET: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    row = pid // n_chunks
    chunk = pid % n_chunks
    cols = chunk * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = cols < D
    offs = row * D + cols  # int64: the flattened element index, also the Philox counter
    mu = tl.load(mu_ptr + offs, mask=mask, other=0.0).to(ACC)
    lv = tl.load(logvar_ptr + offs, mask=mask, other=0.0).to(ACC)
    if HAS_EPS:
        eps = tl.load(eps_ptr + offs, mask=mask, other=0.0).to(ACC)
    else:
        eps = tl.randn(tl.load(seed_ptr), offs).to(ACC)
    std = tl.exp(0.5 * lv)
    z = mu + std * eps
    tl.store(z_ptr + offs, _cast(z, z_ptr.dtype.element_ty, INTERPRET), mask=mask)
    kl = -0.5 * (1.0 + lv - mu * mu - std * std)
    kl = tl.where(mask, kl, 0.0)
    tl.store(kl_part_ptr + row * n_chunks + chunk, tl.sum(kl, axis=0))


@triton.jit
def _reparam_kl_bwd_kernel(
    grad_z_ptr,  # (B, D) contiguous, read only when HAS_GRAD_Z
    grad_kl_ptr,  # (B,) contiguous, read only when HAS_GRAD_KL
    mu_ptr,  # (B, D) contiguous
    logvar_ptr,  # (B, D) contiguous
    eps_ptr,  # (B, D) contiguous, read only when HAS_EPS
    seed_ptr,  # () int64, on the data's device
    grad_mu_ptr,  # (B, D) out, mu's dtype
    grad_logvar_ptr,  # (B, D) out, mu's dtype
    D,
    n_chunks,
    HAS_GRAD_Z: tl.constexpr,
    HAS_GRAD_KL: tl.constexpr,
    HAS_EPS: tl.constexpr,
    ACC: tl.constexpr,
    INTERPRET: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    row = pid // n_chunks
    chunk = pid % n_chunks
    cols = chunk * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = cols < D
    offs = row * D + cols
    mu = tl.load(mu_ptr + offs, mask=mask, other=0.0).to(ACC)
    lv = tl.load(logvar_ptr + offs, mask=mask, other=0.0).to(ACC)
    std = tl.exp(0.5 * lv)
    grad_mu = tl.zeros([BLOCK], ACC)
    grad_lv = tl.zeros([BLOCK], ACC)
    if HAS_GRAD_Z:
        g_z = tl.load(grad_z_ptr + offs, mask=mask, other=0.0).to(ACC)
        if HAS_EPS:
            eps = tl.load(eps_ptr + offs, mask=mask, other=0.0).to(ACC)
        else:
            eps = tl.randn(tl.load(seed_ptr), offs).to(ACC)
        grad_mu += g_z
        grad_lv += g_z * eps * 0.5 * std
    if HAS_GRAD_KL:
        g_kl = tl.load(grad_kl_ptr + row).to(ACC)
        grad_mu += g_kl * mu
        grad_lv += g_kl * 0.5 * (std * std - 1.0)
    tl.store(grad_mu_ptr + offs, _cast(grad_mu, grad_mu_ptr.dtype.element_ty, INTERPRET), mask=mask)
    tl.store(grad_logvar_ptr + offs, _cast(grad_lv, grad_logvar_ptr.dtype.element_ty, INTERPRET), mask=mask)


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _block(d: int) -> int:
    return max(MIN_BLOCK, min(MAX_BLOCK, triton.next_power_of_2(d)))


def _rows(t, b: int):
    """(B, D) contiguous view of t (a copy only when t is strided)."""
    return t.contiguous().view(b, -1)


def _acc(dtype):
    return _ACC.get(dtype, tl.float32)


def _new_output(shape, dtype, device):
    """Every output buffer comes from here (the tests poison it to catch unwritten elements)."""
    return torch.empty(shape, dtype=dtype, device=device)


def reparam_kl_fwd(mu, logvar, eps, seed):
    b = mu.shape[0]
    d = mu.numel() // b
    mu2, lv2 = _rows(mu, b), _rows(logvar, b)
    eps2 = _rows(eps, b) if eps is not None else mu2
    seed = seed.to(device=mu.device, dtype=torch.int64)
    block = _block(d)
    n_chunks = triton.cdiv(d, block)
    acc_dtype = torch.float64 if mu.dtype == torch.float64 else torch.float32
    z = _new_output((b, d), mu.dtype, mu.device)
    kl_part = _new_output((b, n_chunks), acc_dtype, mu.device)
    _reparam_kl_fwd_kernel[(b * n_chunks,)](
        mu2, lv2, eps2, seed, z, kl_part, d, n_chunks,
        HAS_EPS=eps is not None, ACC=_acc(mu.dtype), INTERPRET=_interpret(), BLOCK=block, num_warps=NUM_WARPS)
    return z.view(mu.shape), kl_part.sum(1)


def reparam_kl_bwd(grad_z, grad_kl, mu, logvar, eps, seed):
    b = mu.shape[0]
    d = mu.numel() // b
    mu2, lv2 = _rows(mu, b), _rows(logvar, b)
    eps2 = _rows(eps, b) if eps is not None else mu2
    g_z = _rows(grad_z, b) if grad_z is not None else mu2
    g_kl = grad_kl.contiguous() if grad_kl is not None else mu2
    seed = seed.to(device=mu.device, dtype=torch.int64)
    block = _block(d)
    n_chunks = triton.cdiv(d, block)
    grad_mu = _new_output((b, d), mu.dtype, mu.device)
    grad_logvar = _new_output((b, d), mu.dtype, mu.device)
    _reparam_kl_bwd_kernel[(b * n_chunks,)](
        g_z, g_kl, mu2, lv2, eps2, seed, grad_mu, grad_logvar, d, n_chunks,
        HAS_GRAD_Z=grad_z is not None, HAS_GRAD_KL=grad_kl is not None,
        HAS_EPS=eps is not None, ACC=_acc(mu.dtype), INTERPRET=_interpret(), BLOCK=block, num_warps=NUM_WARPS)
    return grad_mu.view(mu.shape), grad_logvar.view(mu.shape)
