"""Triton's `tl.randn(seed, offset)` stream, reproduced with int64 torch ops.

The ground truth for every backend's in-kernel noise. It runs on any device because
32-bit unsigned arithmetic is emulated in int64: a 32x32-bit product is split into
16-bit halves so nothing overflows. Mirrors triton/language/random.py (Philox4x32-10,
counter (offset_lo, offset_hi, 0, 0), key (seed_lo, seed_hi), first two outputs,
Box-Muller cosine branch).
"""
import torch

MASK32 = 0xFFFFFFFF
PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
N_ROUNDS = 10
UINT_TO_UNIFORM_SCALE = 4.6566127342e-10  # largest s with (2**31 - 1) * s < 1.0 in float32
TWO_PI = 6.283185307179586


def _mul_hi_lo(a: int, b: torch.Tensor):
    """(a * b) >> 32 and (a * b) & MASK32 for a 32-bit constant a and uint32 values b."""
    b_hi, b_lo = b >> 16, b & 0xFFFF
    p_hi, p_lo = a * b_hi, a * b_lo  # each < 2**48
    hi = (p_hi + (p_lo >> 16)) >> 16
    lo = ((p_hi << 16) + p_lo) & MASK32
    return hi, lo


def philox4x32(seed: int, offset: torch.Tensor):
    """Four uint32 streams (as int64 tensors) for counters `offset` (int64) and `seed`."""
    seed &= (1 << 64) - 1  # Triton casts the seed to uint64
    k0, k1 = seed & MASK32, (seed >> 32) & MASK32
    c0 = offset & MASK32
    c1 = (offset >> 32) & MASK32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    for _ in range(N_ROUNDS):
        hi_b, lo_b = _mul_hi_lo(PHILOX_ROUND_B, c2)
        hi_a, lo_a = _mul_hi_lo(PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & MASK32
        k1 = (k1 + PHILOX_KEY_B) & MASK32
    return c0, c1, c2, c3


def uint_to_uniform(x: torch.Tensor) -> torch.Tensor:
    """uint32 (held in int64) -> float32 in [0, 1), as Triton's uint_to_uniform_float."""
    signed = torch.where(x >= 2**31, x - 2**32, x)  # bitcast to int32
    folded = torch.where(signed < 0, -signed - 1, signed)  # ~x for negatives
    return folded.to(torch.float32) * UINT_TO_UNIFORM_SCALE


def randn(seed: int, numel: int, device=None) -> torch.Tensor:
    """float32 normals: element i is `tl.randn(seed, i)`."""
    offset = torch.arange(numel, dtype=torch.int64, device=device)
    i1, i2, _, _ = philox4x32(seed, offset)
    u1 = torch.clamp_min(uint_to_uniform(i1), 1.0e-7)
    u2 = uint_to_uniform(i2)
    theta = TWO_PI * u2
    r = torch.sqrt(-2.0 * torch.log(u1))
    return r * torch.cos(theta)
