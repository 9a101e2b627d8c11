// The gradients of conv_transpose2d(kernel 4, stride 2, padding 1) on channels_last
// tensors as GEMMs over cache-sized gathers (see conv_transpose_nhwc.h for why).
//
// Input pixel (iy, ix) meets the 4 x 4 patch of the output from (2iy - 1, 2ix - 1) through
// tap (ky, kx). Per block of input rows, one gather P[pixel][ky][kx][co] of grad_out (in
// the compute type, zeros for the padding) serves both gradients:
//   grad_x[pixel][ci] = sum P[pixel][ky][kx][co] Wr[ky][kx][co][ci]   (one GEMM)
//   grad_wr[ky][kx][co][ci] += sum over pixels P[pixel][ky][kx][co] x[pixel][ci]
// with Wr[ky][kx][co][ci] = weight[ci][co][ky][kx].
#include "cpu/conv_transpose_nhwc.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cstring>
#include <vector>

// The Fortran BLAS that torch links (MKL in its x86 wheels), LP64. Weak, so that a torch
// built without them still loads the extension and takes ATen's convolution instead.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k,
            const double* alpha, const double* a, const int* lda, const double* b,
            const int* ldb, const double* beta, double* c, const int* ldc) __attribute__((weak));
}

namespace fastvae {
namespace cpu {
namespace {

constexpr int64_t kBlockRows = 256;  // backward: gathered pixels per task, about

// Row-major C (m x n, ldc) = op(A) B + beta C with op(A) = A (m x k) or, transposed,
// A^T for A (k x m). Column-major BLAS sees C^T = B^T op(A)^T.
template <typename T>
void gemm(bool transpose_a, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
  const int mi = static_cast<int>(n), ni = static_cast<int>(m), ki = static_cast<int>(k);
  const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
  const char ta = 'N', tb = transpose_a ? 'T' : 'N';
  const T one = 1;
  if constexpr (std::is_same_v<T, float>) {
    sgemm_(&ta, &tb, &mi, &ni, &ki, &one, b, &la, a, &lb, &beta, c, &lc);
  } else {
    dgemm_(&ta, &tb, &mi, &ni, &ki, &one, b, &la, a, &lb, &beta, c, &lc);
  }
}

// dst = the pixels [first, first + len) of a row of `width` pixels of c channels each,
// zeros for those outside the row (the convolution's padding).
template <typename T>
void copy_pixels(const T* row, int64_t width, int64_t c, int64_t first, int64_t len, T* dst) {
  if (first >= 0 && first + len <= width) {  // all inside: one copy
    std::memcpy(dst, row + first * c, len * c * sizeof(T));
    return;
  }
  for (int64_t p = first; p < first + len; ++p, dst += c) {
    if (p >= 0 && p < width) {
      std::memcpy(dst, row + p * c, c * sizeof(T));
    } else {
      std::memset(dst, 0, c * sizeof(T));
    }
  }
}

template <typename T>
void backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
              at::Tensor& grad_x, at::Tensor& grad_wr) {
  const int64_t n = x.size(0), cin = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t cout = weight.size(1), k = 16 * cout;
  const at::Tensor wr = weight.permute({2, 3, 1, 0}).contiguous();  // Wr[ky][kx][co][ci]
  const T* wp = wr.data_ptr<T>();
  const T* gp = grad_out.data_ptr<T>();
  const T* xp = x.data_ptr<T>();
  T* gxp = grad_x.data_ptr<T>();
  const int64_t rows = std::clamp<int64_t>(kBlockRows / std::max<int64_t>(w, 1), 1, h);
  const int64_t blocks = (h + rows - 1) / rows;
  // One slice of the tasks per thread, each with its own grad_wr, summed in slice order:
  // the result depends on the thread count only, and a nested call (run inline) is safe.
  const int64_t tasks = n * blocks;
  const int64_t slices = std::min<int64_t>(at::get_num_threads(), tasks);
  std::vector<T> partial(slices * k * cin, T(0));
  at::parallel_for(0, slices, 1, [&](int64_t slice_begin, int64_t slice_end) {
    std::vector<T> p(rows * w * k);  // P[pixel][ky][kx][co]
    for (int64_t slice = slice_begin; slice < slice_end; ++slice) {
      T* gw = partial.data() + slice * k * cin;
      for (int64_t task = tasks * slice / slices; task < tasks * (slice + 1) / slices; ++task) {
        const int64_t s = task / blocks, iy0 = task % blocks * rows;
        const int64_t iy1 = std::min(iy0 + rows, h), pixels = (iy1 - iy0) * w;
        for (int64_t iy = iy0; iy < iy1; ++iy) {
          for (int64_t ky = 0; ky < 4; ++ky) {
            const int64_t oy = 2 * iy - 1 + ky;
            for (int64_t ix = 0; ix < w; ++ix) {
              T* dst = p.data() + ((iy - iy0) * w + ix) * k + ky * 4 * cout;
              if (oy < 0 || oy >= 2 * h) {
                std::memset(dst, 0, 4 * cout * sizeof(T));
              } else {
                copy_pixels(gp + (s * 2 * h + oy) * 2 * w * cout, 2 * w, cout, 2 * ix - 1, 4, dst);
              }
            }
          }
        }
        const int64_t first = (s * h + iy0) * w;  // the block's first pixel
        gemm<T>(false, pixels, cin, k, p.data(), k, wp, cin, T(0), gxp + first * cin, cin);
        gemm<T>(true, k, cin, pixels, p.data(), k, xp + first * cin, cin, T(1), gw, cin);
      }
    }
  });
  T* out = grad_wr.data_ptr<T>();
  std::copy(partial.begin(), partial.begin() + k * cin, out);
  for (int64_t t = 1; t < slices; ++t) {
    const T* part = partial.data() + t * k * cin;
    for (int64_t e = 0; e < k * cin; ++e) out[e] += part[e];
  }
}

}  // namespace

bool conv_transpose_nhwc_supported(const at::Tensor& x, const at::Tensor& weight) {
  const auto type = x.scalar_type();
  const bool blas =
      type == at::kFloat ? sgemm_ != nullptr : type == at::kDouble && dgemm_ != nullptr;
  return blas && weight.scalar_type() == type && x.dim() == 4 && weight.dim() == 4 &&
         weight.size(0) == x.size(1) && weight.size(2) == 4 && weight.size(3) == 4 &&
         x.is_contiguous(at::MemoryFormat::ChannelsLast) && x.numel() > 0 &&
         weight.numel() > 0 && x.numel() < (int64_t{1} << 31);
}

std::tuple<at::Tensor, at::Tensor> conv_transpose_nhwc_backward(const at::Tensor& grad_out,
                                                                const at::Tensor& x,
                                                                const at::Tensor& weight) {
  // its own profiler range: benchmarks tell the epilogue's time from the convolution's
  RECORD_FUNCTION("fastvae::conv_transpose_nhwc_backward", std::vector<c10::IValue>());
  const at::Tensor g = grad_out.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor grad_x = at::empty_like(x);
  at::Tensor grad_wr = at::empty({4, 4, weight.size(1), weight.size(0)}, weight.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_transpose_nhwc_backward", [&] {
    backward<scalar_t>(g, x, weight.contiguous(), grad_x, grad_wr);
  });
  at::Tensor grad_weight = at::empty_like(weight);
  grad_weight.copy_(grad_wr.permute({3, 2, 0, 1}));
  return {grad_x, grad_weight};
}

}  // namespace cpu
}  // namespace fastvae
