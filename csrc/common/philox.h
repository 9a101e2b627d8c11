// Triton's `tl.randn(seed, i)` noise stream as inline functions for the CPU and CUDA kernels.
//
// The stream of fastvae/philox.py (the ground truth, checked against Triton): Philox4x32-10
// with counter (i_lo, i_hi, 0, 0) and key (seed_lo, seed_hi), bit for bit; its first two
// outputs mapped to uniforms as Triton's uint_to_uniform_float, bit for bit; then the
// Box-Muller cosine branch in float32, equal to the reference's to float rounding. log and
// cos are written out here (branch-free polynomials: Cephes' logf, a Taylor cosine of 2 pi u
// reduced in u; about 1 ulp on the ranges used) rather than taken from libm, so that:
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

// One Philox4x32 round on counter (c0, c1, c2, c3) with key (k0, k1). U is uint32_t, or a
// CPU SIMD word providing mul_hilo and operator^ (found by argument-dependent lookup), so
// CPU lanes and CUDA threads run these very functions.
template <class U>
FASTVAE_HD void philox_round(U& c0, U& c1, U& c2, U& c3, uint32_t k0, uint32_t k1) {
  U hi_b, lo_b, hi_a, lo_a;
  mul_hilo(kPhiloxRoundB, c2, hi_b, lo_b);
  mul_hilo(kPhiloxRoundA, c0, hi_a, lo_a);
  c0 = hi_b ^ c1 ^ k0;
  c1 = lo_b;
  c2 = hi_a ^ c3 ^ k1;
  c3 = lo_a;
}

// The first two output words of Philox4x32-10 for counter (c0, c1, 0, 0) and key (k0, k1),
// left in c0 and c1: the ten rounds, less two of their twenty products that cannot change
// these words (round 1 multiplies c2 = 0; round 10's product of c0 only feeds words 2, 3).
template <class U>
FASTVAE_HD void philox_first_two(U& c0, U& c1, uint32_t k0, uint32_t k1) {
  U c2, c3;
  mul_hilo(kPhiloxRoundA, c0, c2, c3);  // round 1: (hi_a, lo_a)
  c2 = c2 ^ k1;                         // hi_a ^ c3 ^ k1 with c3 = 0
  c0 = c1 ^ k0;                         // hi_b ^ c1 ^ k0 with hi_b = 0
  c1 = c1 ^ c1;                         // lo_b = 0 (U need not convert from an integer)
#ifdef __CUDACC__
#pragma unroll
#else
#pragma GCC unroll 8
#endif
  for (int r = 1; r < kPhiloxRounds - 1; ++r) {
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
    philox_round(c0, c1, c2, c3, k0, k1);
  }
  U hi_b, lo_b;
  mul_hilo(kPhiloxRoundB, c2, hi_b, lo_b);  // round 10
  c0 = hi_b ^ c1 ^ (k0 + kPhiloxKeyA);
  c1 = lo_b;
}

// The first two of Philox4x32-10's four outputs for counter (offset_lo, offset_hi, 0, 0)
// and key (seed_lo, seed_hi).
FASTVAE_HD void philox(uint64_t seed, uint64_t offset, uint32_t& out0, uint32_t& out1) {
  out0 = static_cast<uint32_t>(offset);
  out1 = static_cast<uint32_t>(offset >> 32);
  philox_first_two(out0, out1, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
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
  // The Cephes polynomial in Estrin's form: the same terms, a shorter dependency chain.
  const float z = f * f;
  const float z2 = z * z;
  const float p01 = 3.3333331174e-1f - 2.4999993993e-1f * f;
  const float p23 = 2.0000714765e-1f - 1.6668057665e-1f * f;
  const float p45 = 1.4249322787e-1f - 1.2420140846e-1f * f;
  const float p67 = 1.1676998740e-1f - 1.1514610310e-1f * f;
  const float p0_3 = p01 + p23 * z;
  const float p4_7 = p45 + p67 * z;
  const float p = p0_3 + (p4_7 + 7.0376836292e-2f * z2) * z2;
  float y = p * f * z;
  y += -2.12194440e-4f * ef;
  y += -0.5f * z;
  return f + y + 0.693359375f * ef;
}

// cos(2 pi u) for u in [0, 1], the Box-Muller cosine, reduced in u rather than in the
// angle: with t = u - 1/2, cos(2 pi u) = -cos(2 pi |t|), and with b = min(|t|, 1/2 - |t|)
// in [0, 1/4], cos(2 pi |t|) = cos(2 pi b), negated when |t| > 1/4. The subtractions are
// exact (Sterbenz) but for u < 1/4, where t rounds by at most 2^-26; then one even Taylor
// polynomial to x^12 (remainder < 7e-9 on [0, pi/2]). Compared with reducing the rounded
// angle 2 pi u by multiples of pi/2 (which rounds the angle by up to 2.4e-7 first), this
// is one polynomial instead of a sine and a cosine and a select.
FASTVAE_HD float cos_2pi(float u) {
  const float a = bits_float(float_bits(u - 0.5f) & 0x7FFFFFFFu);  // |t|
  const float b = select_f(a < 0.25f, a, 0.5f - a);
  const float x = b * kTwoPi;
  const float x2 = x * x;
  float p = 2.08767569878681e-9f;  // 1 / 12!
  p = p * x2 - 2.75573192239859e-7f;
  p = p * x2 + 2.48015873015873e-5f;
  p = p * x2 - 1.38888888888889e-3f;
  p = p * x2 + 4.16666666666667e-2f;
  p = p * x2 - 0.5f;
  p = p * x2 + 1.0f;
  const uint32_t negate = static_cast<uint32_t>(a <= 0.25f) << 31;  // -p for |t| <= 1/4
  return bits_float(float_bits(p) ^ negate);
}

// Box-Muller, split in its radius and angle halves so the CPU can take the square root
// with a SIMD instruction (gcc keeps a scalar libm call for sqrtf under -fmath-errno).
// -2 log(u1), the squared radius, with u1 clamped to kMinUniform.
FASTVAE_HD float box_muller_radius_sq(uint32_t i1) {
  const float u1 = uint_to_uniform(i1);
  return -2.0f * log_f(select_f(u1 < kMinUniform, kMinUniform, u1));
}

FASTVAE_HD float box_muller_cos(uint32_t i2) { return cos_2pi(uint_to_uniform(i2)); }

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
