// The CPU registrations of fastvae's native ops: each call runs the kernels of one CPU
// capability (cpu/capability.h), the best this CPU supports, or FASTVAE_CPU_CAPABILITY's.
//
// Built for baseline x86-64 like everything outside the capability sources, so that
// importing the extension and choosing never executes an instruction the CPU lacks.
// FASTVAE_CPU_CAPABILITY (default | avx2 | avx512, or unset / "auto") is read per call, as
// FASTVAE_CONV_PATH is: tests switch it to run every variant against the reference.
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "cpu/kernels.h"

FASTVAE_CPU_KERNELS(DEFAULT)
#ifdef FASTVAE_X86_CAPABILITIES
FASTVAE_CPU_KERNELS(AVX2)
FASTVAE_CPU_KERNELS(AVX512)
#endif

namespace fastvae::cpu {
namespace {

enum class Capability { kDefault, kAvx2, kAvx512 };

const char* name_of(Capability c) {
  return c == Capability::kAvx512 ? "avx512" : c == Capability::kAvx2 ? "avx2" : "default";
}

// The best capability this CPU (and OS: gcc's cpuid checks XGETBV) runs; ATen's AVX2 and
// AVX512 builds require the same features.
Capability best_supported() {
#ifdef FASTVAE_X86_CAPABILITIES
  static const Capability best = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
      return Capability::kAvx512;
    }
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c")) {
      return Capability::kAvx2;
    }
    return Capability::kDefault;
  }();
  return best;
#else
  return Capability::kDefault;
#endif
}

Capability active() {
  const char* forced = std::getenv("FASTVAE_CPU_CAPABILITY");
  if (forced == nullptr || *forced == '\0' || std::strcmp(forced, "auto") == 0) {
    return best_supported();
  }
  Capability want;
  if (std::strcmp(forced, "avx512") == 0) {
    want = Capability::kAvx512;
  } else if (std::strcmp(forced, "avx2") == 0) {
    want = Capability::kAvx2;
  } else {
    TORCH_CHECK(std::strcmp(forced, "default") == 0,
                "FASTVAE_CPU_CAPABILITY must be auto, default, avx2 or avx512, got '", forced, "'");
    want = Capability::kDefault;
  }
  TORCH_CHECK(want <= best_supported(), "FASTVAE_CPU_CAPABILITY=", forced,
              ": this CPU (or this build) runs at most '", name_of(best_supported()), "'");
  return want;
}

#ifdef FASTVAE_X86_CAPABILITIES
#define FASTVAE_CPU_DISPATCH(fn, ...)                                  \
  switch (active()) {                                                 \
    case Capability::kAvx512: return AVX512::fn(__VA_ARGS__);         \
    case Capability::kAvx2: return AVX2::fn(__VA_ARGS__);             \
    default: return DEFAULT::fn(__VA_ARGS__);                         \
  }
#else
#define FASTVAE_CPU_DISPATCH(fn, ...) \
  active();                           \
  return DEFAULT::fn(__VA_ARGS__);
#endif

std::tuple<at::Tensor, at::Tensor> reparam_kl_fwd(const at::Tensor& mu, const at::Tensor& logvar,
                                                  const c10::optional<at::Tensor>& eps,
                                                  const at::Tensor& seed) {
  FASTVAE_CPU_DISPATCH(reparam_kl_fwd, mu, logvar, eps, seed)
}

std::tuple<at::Tensor, at::Tensor> reparam_kl_bwd(const at::Tensor& grad_z, const at::Tensor& grad_kl,
                                                  const at::Tensor& mu, const at::Tensor& logvar,
                                                  const c10::optional<at::Tensor>& eps,
                                                  const at::Tensor& seed) {
  FASTVAE_CPU_DISPATCH(reparam_kl_bwd, grad_z, grad_kl, mu, logvar, eps, seed)
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> deconv_block_fwd(
    const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,
    at::IntArrayRef geometry, int64_t groups, c10::string_view activation, double negative_slope,
    double eps) {
  FASTVAE_CPU_DISPATCH(deconv_block_fwd, x, weight, bias, scale, shift, geometry, groups,
                       activation, negative_slope, eps)
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deconv_block_bwd(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& pre_norm, const at::Tensor& mean, const at::Tensor& rstd,
    const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,
    bool has_bias, at::IntArrayRef geometry, int64_t groups, c10::string_view activation,
    double negative_slope, double eps) {
  FASTVAE_CPU_DISPATCH(deconv_block_bwd, grad_y, x, weight, pre_norm, mean, rstd, scale, shift,
                       has_bias, geometry, groups, activation, negative_slope, eps)
}

std::string deconv_block_conv_plan(const at::Tensor& x, const at::Tensor& weight,
                                   at::IntArrayRef geometry) {
  return DEFAULT::deconv_block_conv_plan(x, weight, geometry);  // the same rule everywhere
}

// The capability the next call runs ("supported": the best this CPU runs).
std::string cpu_capability(bool supported) {
  return name_of(supported ? best_supported() : active());
}

}  // namespace
}  // namespace fastvae::cpu

TORCH_LIBRARY_FRAGMENT(fastvae, m) {
  // "default", "avx2" or "avx512": the CPU kernels the next call runs, or (supported=True)
  // the best this CPU runs.
  m.def("_cpu_capability(bool supported=False) -> str", &fastvae::cpu::cpu_capability);
}

TORCH_LIBRARY_IMPL(fastvae, CPU, m) {
  m.impl("_reparam_kl_fwd", &fastvae::cpu::reparam_kl_fwd);
  m.impl("_reparam_kl_bwd", &fastvae::cpu::reparam_kl_bwd);
  m.impl("_deconv_block_fwd", &fastvae::cpu::deconv_block_fwd);
  m.impl("_deconv_block_bwd", &fastvae::cpu::deconv_block_bwd);
  m.impl("_deconv_block_conv_plan", &fastvae::cpu::deconv_block_conv_plan);
}
