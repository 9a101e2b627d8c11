// Which convolution path deconv_block's native CPU kernels take for one call: the layout the
// two convolutions run in and whether the backward is the Winograd one
// (cpu/conv_transpose_nhwc.cpp). The epilogue is fused whatever the plan.
//
// Paths (FASTVAE_CONV_PATH forces one, for tests and for tools/conv_paths.py):
//   nchw               oneDNN's forward and backward in NCHW (layout copies for a
//                      channels_last x): for an NCHW x, eager PyTorch's convolutions exactly
//   channels_last      the same in channels_last (copies for an NCHW x)
//   winograd           channels_last, forward and backward by Winograd F(2x2, 2x2)
//                      (cpu/conv_transpose_nhwc.cpp): 4x4 stride-2 padding-1 kernels in
//                      float32/float64 only (else channels_last)
//   winograd_forward   the Winograd forward, oneDNN's channels_last backward
//   winograd_backward  oneDNN's channels_last forward, the Winograd backward
//   gemm               matrix products: a small map's rows (N*H*W, Cin) times the weight
//                      (Cin, Cout*kH*kW), summed into the output by col2im; backward
//                      im2col of the gradient and two products. A 1x1 input without
//                      padding (DCGAN's latent) needs no col2im: output pixel (i, j) is tap
//                      (i, j) times the input pixel. oneDNN's deconvolution runs 1x1-4x4
//                      maps up to 2.5x slower than these products where the pixels are
//                      few for the weight's size, so auto takes gemm for every 1x1 input
//                      and where Cin >= Tg * N*H*W, before the thresholds below (Tg fitted
//                      by tools/conv_paths.py; csrc/cpu/conv_plan.cpp has the numbers).
// "auto" (the default): each direction by Winograd where x holds at least Tf (forward) or
// Tb (backward) pixels (N*H*W) per input channel and Cin, Cout >= Tmf or Tmb; the other
// direction, if any, in channels_last. Per input channel: the Winograd fixed costs (weight
// transforms, a weight gradient a thread, U read by every task) grow with Cin*Cout while
// its savings grow with the pixels, and measured, 512-channel layers lost up to 2048
// pixels, 256-channel ones up to 1024, 128-channel ones won from 4096 (tools/conv_paths.py);
// few channels run the GEMMs (K or N a channel count) at a fraction of the BLAS rate. With
// no Winograd (or another geometry: VanillaVAE's and CycleGAN's 3x3 stride-2 layers):
// channels_last where x holds at least Tc pixels (N*H*W) and the fewer of Cin and Cout is
// at least Tcm (oneDNN's channels_last kernels lose to its NCHW ones on small maps and on
// an RGB layer's 3 channels, and win on large maps, by up to 2x at VanillaVAE's
// 32->32@32 b64), else nchw. The thresholds, one set per layout of x (the copies are part of
// the cost), are chosen by tools/conv_paths.py from measured layers, one table per class of
// CPU (conv_plan_thresholds.h says why); conv_plan_table_<class>.h holds each with its
// measurements.
#pragma once

#include <ATen/core/Tensor.h>

#include "cpu/conv_plan_thresholds.h"

namespace fastvae {
namespace cpu {

struct ConvPlan {
  bool channels_last;              // convolutions in channels_last (else NCHW; gemm: x's)
  bool winograd_forward = false;   // the forward by Winograd (implies channels_last)
  bool winograd_backward = false;  // the backward by Winograd (implies channels_last)
  bool gemm = false;               // forward and backward as matrix products (small maps)
  const char* name() const {
    if (gemm) return "gemm";
    if (winograd_forward) return winograd_backward ? "winograd" : "winograd_forward";
    if (winograd_backward) return "winograd_backward";
    return channels_last ? "channels_last" : "nchw";
  }
};

// The plan for x (N, Cin, H, W) and `cout` output channels of a block whose geometry is the
// 4x4/2/1 one when `k4s2p1`; `conv_type` is the dtype the convolutions run in (float32 for
// upcast bf16/fp16).
// The table the rule reads: FASTVAE_CONV_TABLE's, else this CPU's class's.
const plan_table::Table& conv_plan_table();

ConvPlan plan_conv(const at::Tensor& x, int64_t cout, bool k4s2p1, at::ScalarType conv_type);

}  // namespace cpu
}  // namespace fastvae
