// Single-threaded float32 C = A B (+ C) for the Winograd convolution's products, in AVX-512:
// each call is one of a task's small GEMMs (a few hundred rows, K and N of 64-2048 channels)
// while the tasks run in parallel.
//
// Why not the BLAS: torch's x86 wheels link MKL, and MKL runs its AVX2 kernels on AMD CPUs.
// On a Zen 5 EPYC (family 26), whose AVX-512 runs at full width (a loop of independent
// 512-bit FMAs: 265-269 GFLOP/s a core), MKL's sgemm ran these shapes at 74-110 GFLOP/s a
// core (128x256x128, 128x512x256, 128x256x512) and this kernel at 235-257, in cache.
//
// The register tile is kRows rows of C by 32 columns (two zmm): 24 accumulators, per k two
// loads of B and kRows broadcasts of A. A is packed per block of kRows rows, k-major, so the
// broadcasts read one stream whatever A's strides (A^T costs nothing: the weight gradient's
// V^T); B is read in place, rows of N contiguous (ldb apart), its last 16-column vector
// masked. C's rows are written once, added to when `accumulate`.
#pragma once

#if defined(CPU_CAPABILITY_AVX512)
#include <immintrin.h>

#include <cstdint>
#include <vector>

namespace fastvae::cpu::CPU_CAPABILITY {
namespace small_gemm_detail {

constexpr int kRows = 12;

// C's rows 0 .. rows - 1, columns 16 * vectors (the last `last`-masked), += / = the packed
// A block (ap[k * rows + i]) times B.
template <int rows, int vectors>
inline void tile(int64_t k_size, const float* __restrict ap, const float* __restrict b,
                 int64_t ldb, float* c, int64_t ldc, bool accumulate, __mmask16 last) {
  __m512 acc[rows][vectors];
#pragma GCC unroll 16
  for (int i = 0; i < rows; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < vectors; ++v) acc[i][v] = _mm512_setzero_ps();
  for (int64_t k = 0; k < k_size; ++k) {
    __m512 bv[vectors];
#pragma GCC unroll 2
    for (int v = 0; v < vectors; ++v) {
      const float* row = b + k * ldb + 16 * v;
      bv[v] = v == vectors - 1 ? _mm512_maskz_loadu_ps(last, row) : _mm512_loadu_ps(row);
    }
    const float* ak = ap + k * rows;
#pragma GCC unroll 16
    for (int i = 0; i < rows; ++i) {
      const __m512 a = _mm512_set1_ps(ak[i]);
#pragma GCC unroll 2
      for (int v = 0; v < vectors; ++v) acc[i][v] = _mm512_fmadd_ps(a, bv[v], acc[i][v]);
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < rows; ++i) {
#pragma GCC unroll 2
    for (int v = 0; v < vectors; ++v) {
      float* out = c + i * ldc + 16 * v;
      const __mmask16 mask = v == vectors - 1 ? last : __mmask16(0xffff);
      __m512 r = acc[i][v];
      if (accumulate) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(mask, out));
      _mm512_mask_storeu_ps(out, mask, r);
    }
  }
}

// ap[k * rows + i] = a[i * sa_row + k * sa_k]. Columns of A^T (sa_row 1: the weight
// gradient's V^T) are copied `rows` at a time; rows of A (the products' V and Gm) element by
// element: a 16 x 16 register transpose (at::vec::transpose_mxn) took longer (perf, GN32
// 256->128@16 b8: 7.0% of the samples against 6.3%).
template <int rows>
inline void pack(int64_t k_size, const float* a, int64_t sa_row, int64_t sa_k, float* ap) {
  if (sa_row == 1) {
    const __mmask16 mask = __mmask16((1u << rows) - 1);
    for (int64_t k = 0; k < k_size; ++k) {
      _mm512_mask_storeu_ps(ap + k * rows, mask, _mm512_maskz_loadu_ps(mask, a + k * sa_k));
    }
    return;
  }
  for (int64_t k = 0; k < k_size; ++k) {
    for (int i = 0; i < rows; ++i) ap[k * rows + i] = a[i * sa_row + k * sa_k];
  }
}

// `rows` rows of C: pack their A (a[i * sa_row + k * sa_k]) into ap, then 32 columns a tile.
template <int rows>
void row_block(int64_t n, int64_t k_size, const float* a, int64_t sa_row, int64_t sa_k,
               const float* b, int64_t ldb, float* c, int64_t ldc, bool accumulate, float* ap) {
  pack<rows>(k_size, a, sa_row, sa_k, ap);
  int64_t j = 0;
  for (; j + 32 <= n; j += 32) {
    tile<rows, 2>(k_size, ap, b + j, ldb, c + j, ldc, accumulate, 0xffff);
  }
  const int64_t left = n - j;  // 0 .. 31
  if (left > 16) {
    tile<rows, 2>(k_size, ap, b + j, ldb, c + j, ldc, accumulate,
                  __mmask16((1u << (left - 16)) - 1));
  } else if (left > 0) {
    tile<rows, 1>(k_size, ap, b + j, ldb, c + j, ldc, accumulate, __mmask16((1u << left) - 1));
  }
}

template <int rows>
void rest(int64_t n, int64_t k_size, const float* a, int64_t sa_row, int64_t sa_k, const float* b,
          int64_t ldb, float* c, int64_t ldc, bool accumulate, float* ap, int64_t left) {
  if constexpr (rows > 0) {
    if (left == rows) {
      row_block<rows>(n, k_size, a, sa_row, sa_k, b, ldb, c, ldc, accumulate, ap);
    } else {
      rest<rows - 1>(n, k_size, a, sa_row, sa_k, b, ldb, c, ldc, accumulate, ap, left);
    }
  }
}

}  // namespace small_gemm_detail

// C (m x n, ldc) = A B, or C += A B when `accumulate`; A's element (i, k) at
// a[i * sa_row + k * sa_k], B row-major (k x n, ldb).
inline void small_gemm(int64_t m, int64_t n, int64_t k_size, const float* a, int64_t sa_row,
                       int64_t sa_k, const float* b, int64_t ldb, float* c, int64_t ldc,
                       bool accumulate) {
  using namespace small_gemm_detail;
  thread_local std::vector<float> packed;
  if (packed.size() < static_cast<size_t>(k_size * kRows)) packed.resize(k_size * kRows);
  int64_t i = 0;
  for (; i + kRows <= m; i += kRows) {
    row_block<kRows>(n, k_size, a + i * sa_row, sa_row, sa_k, b, ldb, c + i * ldc, ldc,
                     accumulate, packed.data());
  }
  rest<kRows - 1>(n, k_size, a + i * sa_row, sa_row, sa_k, b, ldb, c + i * ldc, ldc, accumulate,
                  packed.data(), m - i);
}

}  // namespace fastvae::cpu::CPU_CAPABILITY
#endif
