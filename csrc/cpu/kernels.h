// The entry points of the per-capability CPU kernels (cpu/capability.h), declared for one
// capability's namespace by FASTVAE_CPU_KERNELS(DEFAULT | AVX2 | AVX512). Arguments follow the
// schemas in csrc/ops.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <string>
#include <tuple>

#define FASTVAE_CPU_KERNELS(ISA)                                                                  \
  namespace fastvae::cpu::ISA {                                                                   \
  std::tuple<at::Tensor, at::Tensor> reparam_kl_fwd(const at::Tensor& mu,                        \
                                                    const at::Tensor& logvar,                     \
                                                    const c10::optional<at::Tensor>& eps,         \
                                                    const at::Tensor& seed);                      \
  std::tuple<at::Tensor, at::Tensor> reparam_kl_bwd(                                              \
      const at::Tensor& grad_z, const at::Tensor& grad_kl, const at::Tensor& mu,                  \
      const at::Tensor& logvar, const c10::optional<at::Tensor>& eps, const at::Tensor& seed);    \
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> deconv_block_fwd(                    \
      const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,       \
      const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,             \
      at::IntArrayRef geometry, int64_t groups, c10::string_view activation,                      \
      double negative_slope, double eps);                                                         \
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deconv_block_bwd(        \
      const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,                    \
      const at::Tensor& pre_norm, const at::Tensor& mean, const at::Tensor& rstd,                 \
      const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,             \
      bool has_bias, at::IntArrayRef geometry, int64_t groups, c10::string_view activation,       \
      double negative_slope, double eps);                                                         \
  std::string deconv_block_conv_plan(const at::Tensor& x, const at::Tensor& weight,               \
                                     at::IntArrayRef geometry);                                   \
  }
