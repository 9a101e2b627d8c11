// Per-element math of reparam_kl, shared by the CPU and CUDA kernels.
//
// T is float or double on either side, or an at::vec::Vectorized on the CPU: only +, -, *
// and construction from a constant are used. std = exp(logvar / 2) comes in from the
// caller (each side has its own exp), and var = exp(logvar) is taken as std * std.
#pragma once

#include "common/philox.h"

namespace fastvae {

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
