// The backward of deconv_block's transposed convolution (4x4, stride 2, padding 1) on
// channels_last float32/float64 tensors, as BLAS GEMMs over gathers that stay in cache.
//
// oneDNN's backward of this convolution runs at 90-125 GFLOP/s on the 64->32 decoder
// shape here (its weight gradient at about a third of the GEMM rate), a GEMM at up to 150;
// im2col into memory costs more than it saves (it writes 4x the output), so each task
// gathers a few rows' patches into an L2-sized buffer and hands them to the GEMM. The
// forward stays with oneDNN, which measured faster than the same GEMM scheme.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace fastvae {
namespace cpu {

// Whether the GEMM path takes these operands: x and weight float32 or float64, x dense
// channels_last, and a BLAS with sgemm_/dgemm_ linked into torch.
bool conv_transpose_nhwc_supported(const at::Tensor& x, const at::Tensor& weight);

// (grad_x, grad_weight) of conv_transpose2d(x, weight, stride=2, padding=1) for the
// output gradient grad_out; grad_x channels_last, grad_weight in weight's memory format.
std::tuple<at::Tensor, at::Tensor> conv_transpose_nhwc_backward(const at::Tensor& grad_out,
                                                                const at::Tensor& x,
                                                                const at::Tensor& weight);

}  // namespace cpu
}  // namespace fastvae
