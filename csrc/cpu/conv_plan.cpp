// The conv path rule of csrc/cpu/conv_plan.h.
#include "cpu/conv_plan.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "cpu/conv_plan_table.h"

namespace fastvae {
namespace cpu {

// gemm (csrc/cpu/conv_plan.h) for inputs of at most this many pixels a sample: `tools/
// conv_paths.py --small-maps` times it against the other paths on the sweep's 1x1-4x4
// inputs (gemm 1.1-3.2x faster there) and 8x8 ones (0.84x: oneDNN's direct kernels win).
constexpr int64_t kGemmMaxPlane = 16;

ConvPlan plan_conv(const at::Tensor& x, int64_t cout, bool k4s2p1, bool single_pixel,
                   at::ScalarType conv_type) {
  const bool x_channels_last = !x.is_contiguous() &&
                               x.is_contiguous(at::MemoryFormat::ChannelsLast);
  const bool winograd_ok =
      k4s2p1 && (conv_type == at::kFloat || conv_type == at::kDouble);
  const char* forced = std::getenv("FASTVAE_CONV_PATH");  // read per call: tests switch it
  if (forced != nullptr && *forced != '\0' && std::strcmp(forced, "auto") != 0) {
    if (std::strcmp(forced, "winograd") == 0) return {true, winograd_ok};
    if (std::strcmp(forced, "channels_last") == 0) return {true, false};
    if (std::strcmp(forced, "gemm") == 0) return {x_channels_last, false, true};
    TORCH_CHECK(std::strcmp(forced, "nchw") == 0,
                "FASTVAE_CONV_PATH must be auto, gemm, winograd, channels_last or nchw, got ",
                forced);
    return {false, false};
  }
  const int64_t plane = x.size(2) * x.size(3);
  if (single_pixel || plane <= kGemmMaxPlane) return {x_channels_last, false, true};
  const plan_table::Thresholds& t =
      x_channels_last ? plan_table::kChannelsLastInput : plan_table::kNchwInput;
  if (winograd_ok && x.size(0) * plane >= t.winograd_min_pixels &&
      std::min(x.size(1), cout) >= t.winograd_min_channels) {
    return {true, true};
  }
  return {plane >= t.channels_last_min_plane, false};
}

}  // namespace cpu
}  // namespace fastvae
