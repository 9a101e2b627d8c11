// Argument checks of the native reparam_kl kernels (CPU and CUDA): one TORCH_CHECK per
// condition, each message naming the argument. The public op validates first (fastvae/
// _validate.py); these guard direct calls of torch.ops.fastvae._reparam_kl_*.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

namespace fastvae {

inline void check_float_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_floating_point(), name, " must be a floating tensor, got ", t.scalar_type());
}

// `t` has `like`'s shape, dtype and device.
inline void check_like(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.sizes() == like.sizes(), name, " must have the shape of mu ", like.sizes(),
              ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " must have the dtype of mu (",
              like.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), name, " must be on mu's device (", like.device(),
              "), got ", t.device());
}

inline void check_seed(const at::Tensor& seed) {
  TORCH_CHECK(seed.dim() == 0 && seed.scalar_type() == at::kLong,
              "seed must be a 0-d int64 tensor, got ", seed.dim(), "-d ", seed.scalar_type());
}

// The common checks of forward and backward: mu floating with a non-empty batch, logvar
// and eps like mu, a 0-d int64 seed.
inline void check_reparam_kl_args(const at::Tensor& mu, const at::Tensor& logvar,
                                  const c10::optional<at::Tensor>& eps,
                                  const at::Tensor& seed) {
  check_float_tensor(mu, "mu");
  TORCH_CHECK(mu.dim() >= 1 && mu.size(0) > 0, "mu must have a non-empty batch dimension, got shape ",
              mu.sizes());
  check_like(logvar, "logvar", mu);
  if (eps.has_value()) check_like(*eps, "eps", mu);
  check_seed(seed);
}

}  // namespace fastvae
