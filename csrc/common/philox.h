// Triton's `tl.randn(seed, i)` noise stream as inline functions for the CPU and CUDA kernels.
//
// Exactly the arithmetic of fastvae/philox.py (the ground truth, checked against Triton):
// Philox4x32-10 with counter (i_lo, i_hi, 0, 0) and key (seed_lo, seed_hi), the first two
// outputs mapped to uniforms as Triton's uint_to_uniform_float, then the Box-Muller cosine
// branch, all in float32. log and cos are written out here (branch-free polynomials,
// Cephes coefficients, about 1 ulp on the ranges used) rather than taken from libm, so that:
//   - the CPU lane loops auto-vectorize (no libm calls in the loop body), and
//   - nvcc's --use_fast_math cannot swap in its low-accuracy __logf/__cosf,
// which makes the CPU tests check the very arithmetic the CUDA kernels run.
#pragma once

#include <cstdint>

#ifdef __CUDACC__
#define FASTVAE_HD __host__ __device__ __forceinline__
#else
#define FASTVAE_HD inline __attribute__((always_inline))
#endif

namespace fastvae {

constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;
constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;
constexpr int kPhiloxRounds = 10;
constexpr float kUintToUniform = 4.6566127342e-10f;  // largest s with (2**31 - 1) * s < 1
constexpr float kTwoPi = 6.283185307179586f;
constexpr float kMinUniform = 1.0e-7f;  // u1 is clamped here so log(u1) stays finite

FASTVAE_HD uint32_t mul_hi(uint32_t a, uint32_t b) {
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
}

FASTVAE_HD uint32_t float_bits(float x) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(x);
#else
  return __builtin_bit_cast(uint32_t, x);
#endif
}

FASTVAE_HD float bits_float(uint32_t x) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(x);
#else
  return __builtin_bit_cast(float, x);
#endif
}

// `take_a ? a : b` as bit operations: written as a ternary, gcc turns the float selects
// below into branches before its vectorizer runs, and the CPU lane loops stay scalar.
FASTVAE_HD float select_f(bool take_a, float a, float b) {
  const uint32_t mask = 0u - static_cast<uint32_t>(take_a);
  return bits_float((float_bits(a) & mask) | (float_bits(b) & ~mask));
}

// 32 x 32 -> 64-bit product of a round constant and a counter word, as (hi, lo) words.
FASTVAE_HD void mul_hilo(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

// The ten Philox4x32 rounds on counter (c0, c1, c2, c3) with key (k0, k1). U is uint32_t,
// or a CPU SIMD word providing mul_hilo and operator^ (found by argument-dependent lookup),
// so CPU lanes and CUDA threads run this very function.
template <class U>
FASTVAE_HD void philox_rounds(U& c0, U& c1, U& c2, U& c3, uint32_t k0, uint32_t k1) {
#ifdef __CUDACC__
#pragma unroll
#else
#pragma GCC unroll 10
#endif
  for (int r = 0; r < kPhiloxRounds; ++r) {
    U hi_b, lo_b, hi_a, lo_a;
    mul_hilo(kPhiloxRoundB, c2, hi_b, lo_b);
    mul_hilo(kPhiloxRoundA, c0, hi_a, lo_a);
    c0 = hi_b ^ c1 ^ k0;
    c1 = lo_b;
    c2 = hi_a ^ c3 ^ k1;
    c3 = lo_a;
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
}

// The first two of Philox4x32-10's four outputs for counter (offset_lo, offset_hi, 0, 0)
// and key (seed_lo, seed_hi).
FASTVAE_HD void philox(uint64_t seed, uint64_t offset, uint32_t& out0, uint32_t& out1) {
  uint32_t c0 = static_cast<uint32_t>(offset), c1 = static_cast<uint32_t>(offset >> 32);
  uint32_t c2 = 0, c3 = 0;
  philox_rounds(c0, c1, c2, c3, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  out0 = c0;
  out1 = c1;
}

// uint32 -> float32 in [0, 1) as Triton's uint_to_uniform_float: bitcast to int32, ~x for
// negatives (a non-negative int31), times kUintToUniform.
FASTVAE_HD float uint_to_uniform(uint32_t x) {
  const int32_t s = static_cast<int32_t>(x);
  const int32_t folded = s ^ (s >> 31);  // ~s for negatives
  return static_cast<float>(folded) * kUintToUniform;
}

// Natural log for finite x > 0 (Cephes logf): x = m * 2^e with m in [sqrt(1/2), sqrt(2)),
// log(m) by a degree-9 polynomial in f = m - 1, and e*log(2) added in two parts.
FASTVAE_HD float log_f(float x) {
  const uint32_t bits = float_bits(x);
  const float m = bits_float((bits & 0x007FFFFFu) | 0x3F000000u);  // x = m * 2^e, m in [0.5, 1)
  const int32_t small = m < 0.707106781186547524f;
  const int32_t e = static_cast<int32_t>(bits >> 23) - 126 - small;
  const float f = (m - 1.0f) + static_cast<float>(small) * m;  // exact: m - 1 or 2m - 1
  const float ef = static_cast<float>(e);
  const float z = f * f;
  float y = 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  y += -2.12194440e-4f * ef;
  y += -0.5f * z;
  return f + y + 0.693359375f * ef;
}

// cos(theta) for theta in [0, 2*pi] (the Box-Muller angle): reduced by multiples of pi/2
// (Cody-Waite, three parts) to [-pi/4, pi/4], then the Cephes sin or cos polynomial.
FASTVAE_HD float cos_f(float theta) {
  const float q = static_cast<float>(static_cast<int32_t>(theta * 0.636619772367581343f + 0.5f));
  float x = theta - q * 1.5703125f;
  x = x - q * 4.837512969970703125e-4f;
  x = x - q * 7.54978995489188216e-8f;
  const float x2 = x * x;
  float c = 2.443315711809948e-5f;
  c = c * x2 - 1.388731625493765e-3f;
  c = c * x2 + 4.166664568298827e-2f;
  c = c * x2 * x2 - 0.5f * x2 + 1.0f;
  float s = -1.9515295891e-4f;
  s = s * x2 + 8.3321608736e-3f;
  s = s * x2 - 1.6666654611e-1f;
  s = s * x2 * x + x;
  // cos(x + q*pi/2) for q mod 4 = 0, 1, 2, 3: cos x, -sin x, -cos x, sin x.
  const uint32_t k = static_cast<uint32_t>(q);
  const float v = select_f(k & 1, s, c);
  return bits_float(float_bits(v) ^ (((k + 1) & 2u) << 30));  // negate for k = 1, 2
}

// Box-Muller, split in its radius and angle halves so the CPU can take the square root
// with a SIMD instruction (gcc keeps a scalar libm call for sqrtf under -fmath-errno).
// -2 log(u1), the squared radius, with u1 clamped to kMinUniform.
FASTVAE_HD float box_muller_radius_sq(uint32_t i1) {
  const float u1 = uint_to_uniform(i1);
  return -2.0f * log_f(select_f(u1 < kMinUniform, kMinUniform, u1));
}

FASTVAE_HD float box_muller_cos(uint32_t i2) { return cos_f(kTwoPi * uint_to_uniform(i2)); }

// A standard normal from two Philox outputs: sqrt(-2 log u1) * cos(2 pi u2).
FASTVAE_HD float box_muller(uint32_t i1, uint32_t i2) {
#ifdef __CUDA_ARCH__
  const float r = __fsqrt_rn(box_muller_radius_sq(i1));  // correctly rounded under fast math
#else
  const float r = __builtin_sqrtf(box_muller_radius_sq(i1));
#endif
  return r * box_muller_cos(i2);
}

// Element `offset` of the stream of `seed`: Triton's tl.randn(seed, offset).
FASTVAE_HD float randn(uint64_t seed, uint64_t offset) {
  uint32_t i1, i2;
  philox(seed, offset, i1, i2);
  return box_muller(i1, i2);
}

}  // namespace fastvae
