// A @ B for deconv_block's gemm path (small maps: U-Net's 1024->512 at 2x2-8x8), where B
// is wide: the weight (Cin x 16 Cout) or the gradient's windows (N*H*W x 16 Cout), 2-32 MB.
// On the AVX-512 build, float32, small_gemm's register tile (cpu/small_gemm.h) with the
// loops the other way round: A packed once for all its rows, then B a 32-column panel at a
// time (K x 32 floats stay in L2 while every row block uses them), the panels split over
// the threads. small_gemm's own order (row blocks outer, all of B for each) re-reads a wide
// B from memory once per 12 rows. Elsewhere, and for B not row-major, at::mm (MKL, whose
// sgemm runs its AVX2 kernels on AMD CPUs: 108-113 GFLOP/s a core on a Zen 5 EPYC, against
// small_gemm's 235-257). Built once per CPU capability (cpu/capability.h).
#pragma once

#include "cpu/huge_page_empty.h"
#include "cpu/small_gemm.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

namespace fastvae::cpu::CPU_CAPABILITY {

#if defined(CPU_CAPABILITY_AVX512)
namespace wide_gemm_detail {

// Columns j .. j + 31 of C's row block (`rows` rows from ap, 1-12) by small_gemm's tile.
template <int rows = small_gemm_detail::kRows>
void panel_rows(int rows_left, int64_t k, const float* ap, const float* b, int64_t ldb, float* c,
                int64_t ldc, int64_t width) {
  if constexpr (rows > 0) {
    if (rows_left != rows) {
      panel_rows<rows - 1>(rows_left, k, ap, b, ldb, c, ldc, width);
      return;
    }
    using small_gemm_detail::tile;
    if (width > 16) {
      tile<rows, 2>(k, ap, b, ldb, c, ldc, false,
                    width == 32 ? __mmask16(0xffff) : __mmask16((1u << (width - 16)) - 1));
    } else {
      tile<rows, 1>(k, ap, b, ldb, c, ldc, false, __mmask16((1u << width) - 1));
    }
  }
}

// A's row blocks packed k-major, block r at ap + r * kRows * k (small_gemm_detail::pack).
template <int rows = small_gemm_detail::kRows>
void pack_rows(int rows_left, int64_t k, const float* a, int64_t sa_row, int64_t sa_k,
               float* ap) {
  if constexpr (rows > 0) {
    if (rows_left != rows) {
      pack_rows<rows - 1>(rows_left, k, a, sa_row, sa_k, ap);
      return;
    }
    small_gemm_detail::pack<rows>(k, a, sa_row, sa_k, ap);
  }
}

}  // namespace wide_gemm_detail
#endif

// a (m x k) @ b (k x n) as a new contiguous (m x n) tensor.
inline at::Tensor wide_mm(const at::Tensor& a, const at::Tensor& b) {
#if defined(CPU_CAPABILITY_AVX512)
  const bool own = a.scalar_type() == at::kFloat && b.scalar_type() == at::kFloat &&
                   b.stride(1) == 1 && (a.stride(0) == 1 || a.stride(1) == 1) &&
                   a.size(0) > 0 && a.size(1) > 0 && b.size(1) > 0;
  if (own) {
    using namespace wide_gemm_detail;
    constexpr int64_t kRows = small_gemm_detail::kRows, kPanel = 32;
    const int64_t m = a.size(0), k = a.size(1), n = b.size(1);
    const int64_t blocks = (m + kRows - 1) / kRows, panels = (n + kPanel - 1) / kPanel;
    const at::Tensor packed = empty_huge({blocks * kRows * k}, at::kFloat);
    at::Tensor c = at::empty({m, n}, a.options());
    const float* ap = a.data_ptr<float>();
    float* pp = packed.data_ptr<float>();
    at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        pack_rows(static_cast<int>(std::min(kRows, m - r * kRows)), k,
                  ap + r * kRows * a.stride(0), a.stride(0), a.stride(1), pp + r * kRows * k);
      }
    });
    const float* bp = b.data_ptr<float>();
    float* cp = c.data_ptr<float>();
    at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
      for (int64_t j = begin * kPanel; j < std::min(end * kPanel, n); j += kPanel) {
        for (int64_t r = 0; r < blocks; ++r) {
          panel_rows(static_cast<int>(std::min(kRows, m - r * kRows)), k, pp + r * kRows * k,
                     bp + j, b.stride(0), cp + r * kRows * n + j, n, std::min(kPanel, n - j));
        }
      }
    });
    return c;
  }
#endif
  return at::mm(a, b);
}

}  // namespace fastvae::cpu::CPU_CAPABILITY
