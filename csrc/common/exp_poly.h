// Cephes expf's polynomial, shared by the kernels' branch-free exps (exp_f in
// common/reparam_kl.h, exp_nonpositive in common/deconv_epilogue.h): e^r for |r| <= ln 2 / 2,
// to about 1 ulp; the callers reduce x = n ln 2 + r and scale by 2^n.
#pragma once

#ifndef FASTVAE_HD  // (common/philox.h defines its own, always inlined)
#ifdef __CUDACC__
#define FASTVAE_HD __host__ __device__
#else
#define FASTVAE_HD
#endif
#endif

namespace fastvae {

// (constexpr: inline whichever FASTVAE_HD the including header defined)
FASTVAE_HD constexpr float exp_poly(float r) {
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * r * r + r + 1.0f;
}

}  // namespace fastvae
