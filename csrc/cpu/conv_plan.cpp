// The conv path rule of csrc/cpu/conv_plan.h.
#include "cpu/conv_plan.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "cpu/conv_plan_table.h"

namespace fastvae {
namespace cpu {

// gemm (csrc/cpu/conv_plan.h) for every 1x1 input and for maps of at most kGemmMaxPlane
// pixels a sample holding at most kGemmMaxPixels in all (N*H*W). `tools/conv_paths.py
// --small-maps`, fwd+bwd against the best other path: 1x1 inputs 1.6x-3.6x; 2x2 (U-Net
// 1024->512@2, N*H*W 4-32) 2.4x-2.9x; 4x4 at N*H*W 256 (DCGAN 512->256@4 b16) 1.10x-1.25x
// on an AVX-512 Xeon but 0.91x on an AVX-512 EPYC (2026-12-04), at 1024 (b64) 0.67x-1.01x;
// 8x8 maps 0.43x-0.83x. So 2x2 at most: where 4x4 gains it is by 10-25%, where it loses
// the block falls behind eager.
constexpr int64_t kGemmMaxPlane = 4;
constexpr int64_t kGemmMaxPixels = 512;

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
  const int64_t plane = x.size(2) * x.size(3), pixels = x.size(0) * plane;
  if (plane == 1 || (plane <= kGemmMaxPlane && pixels <= kGemmMaxPixels)) {
    return {x_channels_last, false, false, true};
  }
  const plan_table::Thresholds& t =
      x_channels_last ? plan_table::kChannelsLastInput : plan_table::kNchwInput;
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
