// Per-element math of the deconv_block epilogue, shared by the CPU (csrc/cpu) and CUDA
// (csrc/cuda) kernels so both run the arithmetic the CPU tests check.
//
// Forward, per element of the pre-norm output h of channel c in (sample, group) g:
//   n = (h - mean_g) * rstd_g;  a = n * scale + shift;  y = act(a)
// Backward, with g_a = grad_y * act'(a) and g_n = g_a * scale:
//   grad_shift = sum g_a;  grad_scale = sum g_a * n
//   grad_h = rstd_g * (g_n - mean_g(g_n) - n * mean_g(g_n * n))
// Group statistics are (count, mean, M2) triples merged with Chan's formula, so they
// stay accurate when |mean| >> std (no sum-of-squares cancellation).
#pragma once

#include <cmath>

#include "common/exp_poly.h"  // and FASTVAE_HD, unless a header before defined it

namespace fastvae {
namespace deconv {

enum class Activation : int {
  kNone = 0,
  kLeakyRelu = 1,
  kRelu = 2,
  kSilu = 3,
  kTanh = 4,
  kSigmoid = 5,
  kGelu = 6,      // a * Phi(a), the erf form (nn.GELU())
  kGeluTanh = 7,  // nn.GELU(approximate="tanh")
};

// Constants of the GELU forms: 1/sqrt(2), 1/sqrt(2 pi), sqrt(2/pi), and the cubic term.
constexpr double kSqrtHalf = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
constexpr double kSqrt2OverPi = 0.79788456080286535588;
constexpr double kGeluCubic = 0.044715;

// (count, mean, M2): a partial of the biased variance M2 / count.
template <typename T>
struct Moments {
  T count;
  T mean;
  T m2;
};

// Chan et al.'s parallel merge of two partials; an empty side leaves the other unchanged.
template <typename T>
FASTVAE_HD inline Moments<T> merge(Moments<T> a, Moments<T> b) {
  T count = a.count + b.count;
  if (count == T(0)) return a;
  T delta = b.mean - a.mean;
  T wb = b.count / count;
  Moments<T> out;
  out.count = count;
  out.mean = a.mean + delta * wb;
  out.m2 = a.m2 + b.m2 + delta * delta * a.count * wb;
  return out;
}

// Welford's update of a partial with one value.
template <typename T>
FASTVAE_HD inline Moments<T> push(Moments<T> m, T v) {
  m.count += T(1);
  T d = v - m.mean;
  m.mean += d / m.count;
  m.m2 += d * (v - m.mean);
  return m;
}

// 1 / sqrt(biased variance + eps) of merged moments.
template <typename T>
FASTVAE_HD inline T rstd_of(Moments<T> m, T eps) {
  T var = m.count > T(0) ? m.m2 / m.count : T(0);
  return T(1) / std::sqrt(var + eps);
}

template <typename T>
FASTVAE_HD inline T sigmoid(T a) {
  return T(1) / (T(1) + std::exp(-a));
}

// exp(x) for float x <= 0 (or NaN, giving garbage the caller masks) in plain arithmetic the
// CPU loops vectorize: std::exp is a scalar call there (glibc's vector expf needs
// -ffast-math), which made a SiLU epilogue cost 60 ms of a 160 ms block at 128->64@64.
// Cephes' expf: 2^n * p(r), n = round(x / ln 2) by the 1.5 * 2^23 trick, r = x - n ln 2 in
// two parts, a degree-7 polynomial (common/exp_poly.h); about 1 ulp. Below -103.97 the
// float result is 0.
FASTVAE_HD inline float exp_nonpositive(float x) {
  const float xc = x < -87.3f ? -87.3f : x;  // keeps 2^n a normal float
  const float kRound = 12582912.0f;           // 1.5 * 2^23: t + kRound - kRound rounds t
  const float n = (xc * 1.44269504088896341f + kRound) - kRound;
  const float r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
  const float p = exp_poly(r);
  union {
    int i;
    float f;
  } scale;
  scale.i = (static_cast<int>(n) + 127) << 23;
  return x < -103.97f ? 0.0f : p * scale.f;
}

// float sigmoid through exp(-|a|) <= 1 (no overflow): the CPU loops vectorize it; NaN stays
// NaN, sigmoid(-inf) is 0 and sigmoid(inf) 1 as with the exact formula.
template <>
FASTVAE_HD inline float sigmoid<float>(float a) {
#ifdef __CUDA_ARCH__
  return 1.0f / (1.0f + expf(-a));
#else
  const float e = exp_nonpositive(a < 0.0f ? a : -a);
  const float s = (a < 0.0f ? e : 1.0f) / (1.0f + e);
  return a != a ? a : s;
#endif
}

// float tanh and erf for the CPU loops, in arithmetic they vectorize (std::tanh and std::erf
// are scalar calls there: a Tanh epilogue made DCGAN's 64->3 layer 2.2x slower than eager).
// tanh: Cephes' tanhf, an odd polynomial below |a| = 0.625, else (1 - e) / (1 + e) with
// e = exp(-2|a|), written 1 - 2e / (1 + e) so that the rounding of the quotient (<= 0.45)
// lands below the result's ulp; within 1.3 float eps (relative) of the exact value, float only
// (a double quotient gained half of that and cost two double divisions per 16 lanes).
// erf: Abramowitz & Stegun 7.1.26, |error| < 1.5e-7.
FASTVAE_HD inline float tanh_vec(float a) {
  const float x = a < 0.0f ? -a : a;
  const float e = exp_nonpositive(-2.0f * x);
  const float big = 1.0f - 2.0f * e / (1.0f + e);
  const float z = x * x;
  const float small =
      ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z +
        1.33314422036e-1f) * z - 3.33332819422e-1f) * z * x + x;
  const float t = x < 0.625f ? small : big;
  return a != a ? a : (a < 0.0f ? -t : t);
}

FASTVAE_HD inline float erf_vec(float a) {
  const float x = a < 0.0f ? -a : a;
  const float t = 1.0f / (1.0f + 0.3275911f * x);
  const float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f +
                     t * (-1.453152027f + t * 1.061405429f))));
  const float e = 1.0f - poly * exp_nonpositive(-x * x);
  return a != a ? a : (a < 0.0f ? -e : e);
}

// tanh and erf of the epilogue: the vectorizable float forms on the CPU, libm's otherwise.
template <typename T>
FASTVAE_HD inline T tanh_of(T a) {
  return std::tanh(a);
}

template <typename T>
FASTVAE_HD inline T erf_of(T a) {
  return std::erf(a);
}

template <>
FASTVAE_HD inline float tanh_of<float>(float a) {
#ifdef __CUDA_ARCH__
  return tanhf(a);
#else
  return tanh_vec(a);
#endif
}

template <>
FASTVAE_HD inline float erf_of<float>(float a) {
#ifdef __CUDA_ARCH__
  return erff(a);
#else
  return erf_vec(a);
#endif
}

template <typename T>
FASTVAE_HD inline T max0(T a) {
  return a < T(0) ? T(0) : a;
}

template <typename T>
FASTVAE_HD inline T min0(T a) {
  return a > T(0) ? T(0) : a;
}

template <typename T>
FASTVAE_HD inline T activate(T a, Activation act, T slope) {
  switch (act) {
    // max/min as compare-and-select (NaN passes through), which the CPU loops vectorize
    case Activation::kLeakyRelu: return max0(a) + slope * min0(a);
    case Activation::kRelu: return max0(a);
    case Activation::kSilu: return a * sigmoid(a);
    case Activation::kTanh: return tanh_of(a);
    case Activation::kSigmoid: return sigmoid(a);
    case Activation::kGelu: return T(0.5) * a * (T(1) + erf_of(a * T(kSqrtHalf)));
    case Activation::kGeluTanh:
      return T(0.5) * a * (T(1) + tanh_of(T(kSqrt2OverPi) * (a + T(kGeluCubic) * a * a * a)));
    default: return a;
  }
}

// d act(a) / da. leaky_relu and relu use a > 0 as PyTorch does (slope, resp. 0, at a == 0).
template <typename T>
FASTVAE_HD inline T activate_grad(T a, Activation act, T slope) {
  switch (act) {
    case Activation::kLeakyRelu: return a > T(0) ? T(1) : slope;
    case Activation::kRelu: return a > T(0) ? T(1) : T(0);
    case Activation::kSilu: {
      T s = sigmoid(a);
      return s * (T(1) + a * (T(1) - s));
    }
    case Activation::kTanh: {
      T t = tanh_of(a);
      return T(1) - t * t;
    }
    case Activation::kSigmoid: {
      T s = sigmoid(a);
      return s * (T(1) - s);
    }
    case Activation::kGelu:  // Phi(a) + a * phi(a)
      return T(0.5) * (T(1) + erf_of(a * T(kSqrtHalf))) +
             a * T(kInvSqrt2Pi) * std::exp(T(-0.5) * a * a);
    case Activation::kGeluTanh: {
      T a2 = a * a;
      T t = tanh_of(T(kSqrt2OverPi) * (a + T(kGeluCubic) * a2 * a));
      return T(0.5) * (T(1) + t) +
             T(0.5) * a * (T(1) - t * t) * T(kSqrt2OverPi) * (T(1) + T(3 * kGeluCubic) * a2);
    }
    default: return T(1);
  }
}

// Forward of one element: returns act(a) and writes n (the normalized value) if asked.
template <typename T>
FASTVAE_HD inline T forward(T h, T mean, T rstd, T scale, T shift, Activation act, T slope) {
  T n = (h - mean) * rstd;  // subtract first: h * rstd - mean * rstd cancels when |mean| >> std
  return activate(n * scale + shift, act, slope);
}

// The per-element terms of the backward: n and g_a = grad_y * act'(a).
template <typename T>
struct BackwardTerms {
  T n;
  T g_a;
};

template <typename T>
FASTVAE_HD inline BackwardTerms<T> backward_terms(T grad_y, T h, T mean, T rstd, T scale,
                                                  T shift, Activation act, T slope) {
  BackwardTerms<T> t;
  t.n = (h - mean) * rstd;
  t.g_a = grad_y * activate_grad(t.n * scale + shift, act, slope);
  return t;
}

// grad_h of one element from g_n = g_a * scale and the group means of g_n and g_n * n.
template <typename T>
FASTVAE_HD inline T grad_pre_norm(T g_n, T n, T rstd, T mean_gn, T mean_gn_n) {
  return rstd * (g_n - mean_gn - n * mean_gn_n);
}

}  // namespace deconv
}  // namespace fastvae
