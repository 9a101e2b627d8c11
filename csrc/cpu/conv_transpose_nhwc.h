// The backward of deconv_block's transposed convolution (4x4, stride 2, padding 1) on
// channels_last float32/float64 tensors, by Winograd's F(2x2, 2x2) with BLAS GEMMs.
//
// oneDNN's backward of this convolution runs at 90-125 GFLOP/s on the 64->32 decoder shape
// here (its weight gradient at about a third of the GEMM rate) and a direct GEMM scheme
// (im2col of cache-sized blocks) at about 138; each output phase of the convolution is a
// 2x2 filter, so F(2x2, 2x2) needs 9 multiplies where the direct sums take 16, and its
// transforms are additions. The forward stays with oneDNN: a Winograd forward measured no
// faster there (its GEMMs have K = Cin, 64 on that shape, where MKL runs at ~70 GFLOP/s).
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace fastvae::cpu::CPU_CAPABILITY {  // cpu/capability.h

// Whether the GEMM path takes these operands: x and weight float32 or float64, x dense
// channels_last, and a BLAS with sgemm_/dgemm_ linked into torch.
bool conv_transpose_nhwc_supported(const at::Tensor& x, const at::Tensor& weight);

// (grad_x, grad_weight) of conv_transpose2d(x, weight, stride=2, padding=1) for the
// output gradient grad_out; grad_x channels_last, grad_weight in weight's memory format.
std::tuple<at::Tensor, at::Tensor> conv_transpose_nhwc_backward(const at::Tensor& grad_out,
                                                                const at::Tensor& x,
                                                                const at::Tensor& weight);

}  // namespace fastvae::cpu::CPU_CAPABILITY
