// Per-element math of reparam_kl, shared by the CPU and CUDA kernels.
//
// T is float or double on either side, or an at::vec::Vectorized on the CPU: only +, -, *
// and construction from a constant are used. std = exp(logvar / 2) comes in from the
// caller (CUDA: expf; CPU float32: exp_f below), and var = exp(logvar) is taken as
// std * std.
#pragma once

#include "common/philox.h"  // first: its FASTVAE_HD
#include "common/exp_poly.h"

namespace fastvae {

// exp(x) in float32 (Cephes expf: x = n ln2 + r with |r| <= ln2 / 2, ln2 in two parts, a
// degree-7 polynomial in r, common/exp_poly.h; about 1 ulp), branch-free so the CPU lane
// loops vectorize it: ATen's Vectorized exp is a call into Sleef per vector, 0.4 ns of the
// AVX2 kernel's 3.8 an element. 2^n is applied as two exact powers of two, so results in
// the subnormal range round once, as libm's do; exp(x) is +inf above 88.72 (and for +inf),
// 0 below -104 (and for -inf), and NaN for NaN.
FASTVAE_HD float exp_f(float x) {
  constexpr float kMax = 88.72283935546875f;  // the least float whose exp overflows
  constexpr float kMin = -104.0f;             // exp(kMin) < FLT_TRUE_MIN / 2: rounds to 0
  constexpr float kRound = 12582912.0f;       // 1.5 * 2^23: adding it rounds to an integer
  const float xs = select_f(x > kMax, kMax, select_f(x < kMin, kMin, x));  // NaN stays NaN
  const float t = xs * 1.44269504088896341f + kRound;
  const float n = t - kRound;  // round(xs / ln 2), in [-150, 128]
  const int32_t ni = static_cast<int32_t>(float_bits(t) - float_bits(kRound));
  const float r = (xs - n * 0.693359375f) - n * -2.12194440e-4f;
  const float p = exp_poly(r);
  const int32_t n1 = ni >> 1, n2 = ni - n1;  // each in [-75, 64]: normal powers of two
  // at the clamps the product itself overflows to +inf (kMax) or rounds to 0 (kMin)
  return p * bits_float(static_cast<uint32_t>(n1 + 127) << 23) *
         bits_float(static_cast<uint32_t>(n2 + 127) << 23);
}

// z = mu + std * eps.
template <class T>
FASTVAE_HD T reparam_z(T mu, T std, T eps) {
  return mu + std * eps;
}

// The KL term of one element: -0.5 * (1 + logvar - mu^2 - var).
template <class T>
FASTVAE_HD T kl_term(T mu, T logvar, T var) {
  return T(-0.5) * (T(1) + logvar - mu * mu - var);
}

// d/dmu of (grad_z * z + grad_kl * kl_term).
template <class T>
FASTVAE_HD T reparam_kl_grad_mu(T grad_z, T grad_kl, T mu) {
  return grad_z + grad_kl * mu;
}

// d/dlogvar of (grad_z * z + grad_kl * kl_term): dz/dlogvar = eps * std / 2,
// dkl/dlogvar = (var - 1) / 2.
template <class T>
FASTVAE_HD T reparam_kl_grad_logvar(T grad_z, T grad_kl, T std, T var, T eps) {
  return grad_z * eps * T(0.5) * std + grad_kl * T(0.5) * (var - T(1));
}

}  // namespace fastvae
