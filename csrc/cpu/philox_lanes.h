// tl.randn's Philox stream for a block of kLanes consecutive counters, in the widest integer
// registers of the capability this file is built for (cpu/capability.h): SSE2 on baseline
// x86-64, AVX2, or AVX-512 (8 x 64-bit slots).
//
// Layout: one counter word per 64-bit slot, in its low half. Register 2m holds elements
// W*m + {0, 2, 4, ...} and register 2m + 1 elements W*m + {1, 3, 5, ...}, W = 32-bit words per
// register. A round's 32 x 32 -> 64-bit products are then one mul_epu32 per slot, with the
// high word a shift and the low word the product itself: mul_epu32 reads only the low half
// of a slot and xor keeps halves apart, so the high halves may hold anything. (Packed W to a
// register, each product also needs a second multiply for the odd lanes, a blend and a
// mullo: half again as many multiplies.)
#pragma once

#include <immintrin.h>

#include <cstdint>

#include "common/philox.h"

namespace fastvae::cpu::CPU_CAPABILITY {  // cpu/capability.h
namespace philox_lanes {

constexpr int64_t kLanes = 32;  // counters per block, on every capability

#if defined(CPU_CAPABILITY_AVX512)
using Reg = __m512i;
inline Reg set1(uint32_t k) { return _mm512_set1_epi32(static_cast<int>(k)); }
inline Reg iota() { return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }
inline Reg xor_(Reg a, Reg b) { return _mm512_xor_si512(a, b); }
inline Reg add32(Reg a, Reg b) { return _mm512_add_epi32(a, b); }
inline Reg mul_slots(Reg a, Reg b) { return _mm512_mul_epu32(a, b); }
inline Reg high_to_low(Reg a) { return _mm512_srli_epi64(a, 32); }
inline Reg pack(Reg even, Reg odd) {  // low halves of even's slots, then odd's
  return _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}
inline Reg load(const uint32_t* p) { return _mm512_loadu_si512(p); }
inline void store(uint32_t* p, Reg v) { _mm512_storeu_si512(p, v); }
#elif defined(CPU_CAPABILITY_AVX2)
using Reg = __m256i;
inline Reg set1(uint32_t k) { return _mm256_set1_epi32(static_cast<int>(k)); }
inline Reg iota() { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }
inline Reg xor_(Reg a, Reg b) { return _mm256_xor_si256(a, b); }
inline Reg add32(Reg a, Reg b) { return _mm256_add_epi32(a, b); }
inline Reg mul_slots(Reg a, Reg b) { return _mm256_mul_epu32(a, b); }
inline Reg high_to_low(Reg a) { return _mm256_srli_epi64(a, 32); }
inline Reg pack(Reg even, Reg odd) { return _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA); }
inline Reg load(const uint32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const Reg*>(p)); }
inline void store(uint32_t* p, Reg v) { _mm256_storeu_si256(reinterpret_cast<Reg*>(p), v); }
#else  // SSE2, part of every x86-64 CPU
using Reg = __m128i;
inline Reg set1(uint32_t k) { return _mm_set1_epi32(static_cast<int>(k)); }
inline Reg iota() { return _mm_setr_epi32(0, 1, 2, 3); }
inline Reg xor_(Reg a, Reg b) { return _mm_xor_si128(a, b); }
inline Reg add32(Reg a, Reg b) { return _mm_add_epi32(a, b); }
inline Reg mul_slots(Reg a, Reg b) { return _mm_mul_epu32(a, b); }
inline Reg high_to_low(Reg a) { return _mm_srli_epi64(a, 32); }
inline Reg pack(Reg even, Reg odd) {  // SSE2 has no 32-bit blend
  return _mm_or_si128(_mm_and_si128(even, _mm_set1_epi64x(0xffffffff)), _mm_slli_epi64(odd, 32));
}
inline Reg load(const uint32_t* p) { return _mm_loadu_si128(reinterpret_cast<const Reg*>(p)); }
inline void store(uint32_t* p, Reg v) { _mm_storeu_si128(reinterpret_cast<Reg*>(p), v); }
#endif

constexpr int kWords = sizeof(Reg) / sizeof(uint32_t);  // 32-bit words per register
constexpr int kRegs = 2 * kLanes / kWords;              // registers per Philox word
static_assert(kLanes % kWords == 0, "a block is whole registers");

// kLanes counter words in the slot layout above: philox_first_two's U.
struct Word {
  Reg v[kRegs];
};

inline Word operator^(const Word& a, const Word& b) {
  Word r;
  for (int g = 0; g < kRegs; ++g) r.v[g] = xor_(a.v[g], b.v[g]);
  return r;
}

inline Word operator^(const Word& a, uint32_t k) {
  const Reg kv = set1(k);
  Word r;
  for (int g = 0; g < kRegs; ++g) r.v[g] = xor_(a.v[g], kv);
  return r;
}

inline void mul_hilo(uint32_t a, const Word& b, Word& hi, Word& lo) {
  const Reg av = set1(a);
  for (int g = 0; g < kRegs; ++g) {
    const Reg p = mul_slots(av, b.v[g]);
    hi.v[g] = high_to_low(p);
    lo.v[g] = p;
  }
}

// kWords packed uint32 (register m of a block) -> the slot pair 2m, 2m + 1.
inline void unpack(Reg packed, Reg& even, Reg& odd) {
  even = packed;
  odd = high_to_low(packed);
}

// The counter words (offset + l) for lanes l < kLanes: low and high halves.
inline void counters(uint64_t offset, Word& lo, Word& hi) {
  const uint32_t lo0 = static_cast<uint32_t>(offset);
  if (lo0 <= UINT32_MAX - kLanes) {  // no carry into the high word inside the block
    const Reg base = add32(set1(lo0), iota());
    const Reg high = set1(static_cast<uint32_t>(offset >> 32));
    for (int m = 0; m < kRegs / 2; ++m) {
      unpack(add32(base, set1(kWords * m)), lo.v[2 * m], lo.v[2 * m + 1]);
      hi.v[2 * m] = hi.v[2 * m + 1] = high;
    }
    return;
  }
  uint32_t l32[kLanes], h32[kLanes];
  for (int l = 0; l < kLanes; ++l) {
    l32[l] = static_cast<uint32_t>(offset + l);
    h32[l] = static_cast<uint32_t>((offset + l) >> 32);
  }
  for (int m = 0; m < kRegs / 2; ++m) {
    unpack(load(l32 + kWords * m), lo.v[2 * m], lo.v[2 * m + 1]);
    unpack(load(h32 + kWords * m), hi.v[2 * m], hi.v[2 * m + 1]);
  }
}

// The first two Philox4x32-10 words of counters offset + l, l < kLanes, under `seed`.
inline void philox_block(uint64_t seed, uint64_t offset, uint32_t* out0, uint32_t* out1) {
  Word c0, c1;
  counters(offset, c0, c1);
  philox_first_two(c0, c1, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
  for (int m = 0; m < kRegs / 2; ++m) {
    store(out0 + kWords * m, pack(c0.v[2 * m], c0.v[2 * m + 1]));
    store(out1 + kWords * m, pack(c1.v[2 * m], c1.v[2 * m + 1]));
  }
}

}  // namespace philox_lanes
}  // namespace fastvae::cpu::CPU_CAPABILITY
