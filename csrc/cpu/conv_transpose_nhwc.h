// deconv_block's transposed convolution (4x4, stride 2, padding 1) on channels_last
// float32/float64 tensors, forward and backward, by Winograd's F(2x2, 2x2): its products in
// cpu/small_gemm.h (float32, AVX-512 build) or the BLAS.
//
// oneDNN's backward of this convolution runs at 90-125 GFLOP/s on the 64->32 decoder shape
// here (its weight gradient at about a third of the GEMM rate) and a direct GEMM scheme
// (im2col of cache-sized blocks) at about 138; each output phase of the convolution is a
// 2x2 filter, so F(2x2, 2x2) needs 9 multiplies where the direct sums take 16, and its
// transforms are additions. On an AVX-512 AMD EPYC, where oneDNN's forward runs these layers
// near the FMA peak (256->128@32 batch 8: 8.6 GFLOP in 42-46 ms, ~190 GFLOP/s), the Winograd
// forward still ran 1.1x-1.3x faster on maps of 2048+ pixels and 2.1x at 64->3@32 (oneDNN
// is slow with 3 output channels), and fwd+bwd 1.1x-1.3x on DCGAN's 256->128@8 and
// 128->64@16 at batch 64; with 512 input channels or few pixels the fixed costs (weight
// transforms, one weight gradient a thread: O(Cin Cout)) lose. tools/conv_paths.py picks
// where each direction runs it, per class of CPU (csrc/cpu/conv_plan_thresholds.h).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace fastvae::cpu::CPU_CAPABILITY {  // cpu/capability.h

// Whether the GEMM path takes these operands: x and weight float32 or float64, x dense
// channels_last, and a BLAS with sgemm_/dgemm_ linked into torch.
bool conv_transpose_nhwc_supported(const at::Tensor& x, const at::Tensor& weight);

// conv_transpose2d(x, weight, bias, stride=2, padding=1), channels_last; bias (Cout) of
// x's type, or absent.
at::Tensor conv_transpose_nhwc_forward(const at::Tensor& x, const at::Tensor& weight,
                                      const c10::optional<at::Tensor>& bias);

// (grad_x, grad_weight) of conv_transpose2d(x, weight, stride=2, padding=1) for the
// output gradient grad_out; grad_x channels_last, grad_weight in weight's memory format.
std::tuple<at::Tensor, at::Tensor> conv_transpose_nhwc_backward(const at::Tensor& grad_out,
                                                                const at::Tensor& x,
                                                                const at::Tensor& weight);

}  // namespace fastvae::cpu::CPU_CAPABILITY
