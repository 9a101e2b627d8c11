// The conv path rule of csrc/cpu/conv_plan.h.
#include "cpu/conv_plan.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "cpu/conv_plan_table.h"

namespace fastvae {
namespace cpu {

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
    if (std::strcmp(forced, "gemm") == 0) return {false, false, single_pixel};
    TORCH_CHECK(std::strcmp(forced, "nchw") == 0,
                "FASTVAE_CONV_PATH must be auto, gemm, winograd, channels_last or nchw, got ",
                forced);
    return {false, false};
  }
  if (single_pixel) return {false, false, true};
  const plan_table::Thresholds& t =
      x_channels_last ? plan_table::kChannelsLastInput : plan_table::kNchwInput;
  const int64_t plane = x.size(2) * x.size(3);
  if (winograd_ok && x.size(0) * plane >= t.winograd_min_pixels &&
      std::min(x.size(1), cout) >= t.winograd_min_channels) {
    return {true, true};
  }
  return {plane >= t.channels_last_min_plane, false};
}

}  // namespace cpu
}  // namespace fastvae
