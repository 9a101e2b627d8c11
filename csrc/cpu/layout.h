// NCHW <-> channels_last copies of 4-D CPU tensors, with a dtype conversion in the same pass.
//
// ATen's copy between the two layouts ran at 4-6 GB/s here (6 ms for a 16.8 MB
// NCHW -> channels_last copy against 1 ms for a plain one). These transpose one block of
// pixels of one sample at a time (all channels: the block stays in L1), float32 in register
// tiles (8 x 8 on AVX2, 16 x 16 on AVX-512). Built per CPU capability (cpu/capability.h).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>
#include <ATen/cpu/vec/vec.h>

#include "cpu/huge_page_empty.h"

#include <algorithm>
#include <type_traits>
#include <vector>

namespace fastvae::cpu::CPU_CAPABILITY {  // cpu/capability.h

namespace layout_detail {

constexpr int64_t kPixels = 64;  // pixels per block: kPixels x C values stay in L1

// One block: rows x cols of src (row stride ld_src) into dst transposed (row stride ld_dst).
// float to float in register transposes (at::vec: 8 x 8 on AVX2, 16 x 16 on AVX-512), the
// edges (AVX2) and other types one element at a time.
template <typename in_t, typename out_t>
void transpose_block(const in_t* src, int64_t ld_src, out_t* dst, int64_t ld_dst, int64_t rows,
                     int64_t cols) {
  int64_t r8 = 0, c8 = 0;
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<in_t, float> && std::is_same_v<out_t, float>) {
    // 16 x 16 register transposes, the edges by masked loads and stores
    at::vec::transpose_mxn<float>(src, ld_src, dst, ld_dst, static_cast<int>(rows),
                                  static_cast<int>(cols));
    return;
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<in_t, float> && std::is_same_v<out_t, float>) {
    r8 = rows / 8 * 8;
    c8 = cols / 8 * 8;
    for (int64_t r = 0; r < r8; r += 8)
      for (int64_t c = 0; c < c8; c += 8)
        at::vec::transpose_mxn<float, 8, 8>(src + r * ld_src + c, ld_src, dst + c * ld_dst + r, ld_dst);
  }
#endif
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = r < r8 ? c8 : 0; c < cols; ++c)
      dst[c * ld_dst + r] = static_cast<out_t>(src[r * ld_src + c]);
}

// dst[n][p][c] = src[n][c][p] (to_nhwc) or dst[n][c][p] = src[n][p][c], p over hw pixels.
template <typename in_t, typename out_t>
void transpose(const in_t* src, out_t* dst, int64_t n, int64_t c, int64_t hw, bool to_nhwc) {
  const int64_t blocks = (hw + kPixels - 1) / kPixels;
  at::parallel_for(0, n * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task / blocks, p0 = task % blocks * kPixels;
      const int64_t len = std::min(kPixels, hw - p0);
      const in_t* in = src + s * c * hw;
      out_t* out = dst + s * c * hw;
      if (to_nhwc) {  // (c x len) at column p0 -> (len x c) at row p0
        transpose_block(in + p0, hw, out + p0 * c, c, c, len);
      } else {        // (len x c) at row p0 -> (c x len) at column p0
        transpose_block(in + p0 * c, c, out + p0, hw, len, c);
      }
    }
  });
}

}  // namespace layout_detail

// t (4-D) in `format` and `type`: t itself when it already is; dense NCHW <-> channels_last
// by the blocked copy above; anything else through ATen.
inline at::Tensor to_layout(const at::Tensor& t, at::ScalarType type, at::MemoryFormat format) {
  if (t.scalar_type() == type && t.is_contiguous(format)) return t;
  const bool to_nhwc = format == at::MemoryFormat::ChannelsLast;
  const at::MemoryFormat from = to_nhwc ? at::MemoryFormat::Contiguous : at::MemoryFormat::ChannelsLast;
  if (t.dim() != 4 || !t.is_contiguous(from) || t.is_contiguous(format)) {
    return t.to(type, /*non_blocking=*/false, /*copy=*/false, format);
  }
  RECORD_FUNCTION("fastvae::to_layout", std::vector<c10::IValue>());  // its own profiler range
  at::Tensor out = empty_huge(t.sizes(), type, format);
  const int64_t n = t.size(0), c = t.size(1), hw = t.size(2) * t.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, t.scalar_type(), "to_layout", [&] {
    using in_t = scalar_t;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, type, "to_layout", [&] {
      layout_detail::transpose(t.data_ptr<in_t>(), out.data_ptr<scalar_t>(), n, c, hw, to_nhwc);
    });
  });
  return out;
}

// Whether a transposed convolution's weight (Cin, Cout, kH, kW) is stored channels_last (a
// model moved with .to(memory_format=torch.channels_last)): each input channel's taps are
// then kH * kW rows of Cout values, which the Winograd weight transforms and the 1x1-input
// GEMM take as they are, and grad_weight is written the same way, with no layout copy of
// either (three copies of every weight a step: 3% of a channels_last DCGAN's fwd+bwd).
inline bool taps_last(const at::Tensor& weight) {
  return !weight.is_contiguous() && weight.is_contiguous(at::MemoryFormat::ChannelsLast);
}

}  // namespace fastvae::cpu::CPU_CAPABILITY
