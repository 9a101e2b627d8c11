// The conv path rule of csrc/cpu/conv_plan.h.
#include "cpu/conv_plan.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "cpu/conv_plan_table_default.h"
#include "cpu/conv_plan_table_amd_zen5.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace fastvae {
namespace cpu {

// gemm (csrc/cpu/conv_plan.h) for every 1x1 input, and where x has at least
// gemm_min_cin_per_pixel input channels per pixel (N*H*W): oneDNN's cost on a
// small map is mostly its per-call work on the weight, so the matrix products win where the
// pixels are few for the weight's size (pix2pix's 1024->512@4 b1: 2.5x), and lose where
// they are not (DCGAN's 512->256@4 b16, 256 pixels: 0.8x). tools/conv_paths.py fits it.

namespace {

// AMD, family 26 (Zen 5) or later, with AVX-512 (conv_plan_thresholds.h).
bool amd_zen5_or_later() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx)) return false;
  const bool amd = ebx == 0x68747541 && edx == 0x69746e65 && ecx == 0x444d4163;  // AuthenticAMD
  if (!amd || !__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return false;
  const unsigned base = (eax >> 8) & 0xf;
  const unsigned family = base == 0xf ? base + ((eax >> 20) & 0xff) : base;
  __builtin_cpu_init();
  return family >= 0x1a && __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

}  // namespace

const plan_table::Table& conv_plan_table() {
  const char* forced = std::getenv("FASTVAE_CONV_TABLE");  // read per call: tests switch it
  if (forced != nullptr && *forced != '\0' && std::strcmp(forced, "auto") != 0) {
    for (const plan_table::Table* t : {&plan_table::kDefault, &plan_table::kAmdZen5}) {
      if (std::strcmp(forced, t->name) == 0) return *t;
    }
    TORCH_CHECK(false, "FASTVAE_CONV_TABLE must be auto, default or amd_zen5, got ",
                forced);
  }
  static const bool zen5 = amd_zen5_or_later();
  return zen5 ? plan_table::kAmdZen5 : plan_table::kDefault;
}

ConvPlan plan_conv(const at::Tensor& x, int64_t cout, bool k4s2p1, at::ScalarType conv_type) {
  const bool x_channels_last = !x.is_contiguous() &&
                               x.is_contiguous(at::MemoryFormat::ChannelsLast);
  const bool winograd_ok =
      k4s2p1 && (conv_type == at::kFloat || conv_type == at::kDouble);
  const char* forced = std::getenv("FASTVAE_CONV_PATH");  // read per call: tests switch it
  if (forced != nullptr && *forced != '\0' && std::strcmp(forced, "auto") != 0) {
    const bool both = std::strcmp(forced, "winograd") == 0;
    const bool fwd = both || std::strcmp(forced, "winograd_forward") == 0;
    const bool bwd = both || std::strcmp(forced, "winograd_backward") == 0;
    if (fwd || bwd) return {true, fwd && winograd_ok, bwd && winograd_ok};
    if (std::strcmp(forced, "channels_last") == 0) return {true};
    if (std::strcmp(forced, "gemm") == 0) return {x_channels_last, false, false, true};
    TORCH_CHECK(std::strcmp(forced, "nchw") == 0,
                "FASTVAE_CONV_PATH must be auto, gemm, winograd, winograd_forward, "
                "winograd_backward, channels_last or nchw, got ", forced);
    return {false};
  }
  const plan_table::Table& table = conv_plan_table();
  const int64_t plane = x.size(2) * x.size(3), pixels = x.size(0) * plane;
  if (plane == 1 || (pixels > 0 && x.size(1) / pixels >= table.gemm_min_cin_per_pixel)) {
    return {x_channels_last, false, false, true};
  }
  const plan_table::Thresholds& t = x_channels_last ? table.channels_last_input : table.nchw_input;
  const int64_t channels = std::min(x.size(1), cout);
  const int64_t per_cin = pixels / x.size(1);  // the pixels' share of one input channel
  const bool fwd = winograd_ok && per_cin >= t.forward_min_pixels_per_cin &&
                   channels >= t.forward_min_channels;
  const bool bwd = winograd_ok && per_cin >= t.backward_min_pixels_per_cin &&
                   channels >= t.backward_min_channels;
  if (fwd || bwd) return {true, fwd, bwd};
  return {pixels >= t.channels_last_min_pixels && channels >= t.channels_last_min_channels};
}

}  // namespace cpu
}  // namespace fastvae
