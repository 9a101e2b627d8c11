// conv_transpose2d(kernel 4, stride 2, padding 1) on channels_last tensors, forward and
// backward, by Winograd's F(2x2, 2x2) over the four output phases (see the header for why).
//
// Along one axis, output 2m is x[m-1] w3 + x[m] w1 and output 2m+1 is x[m] w2 + x[m+1] w0:
// each output phase is a 2-tap filter of x. Tile t reads d = x[2t-1], x[2t], x[2t+1] and
// makes outputs 4t-1 .. 4t+2, two per phase, by F(2, 2) with one input transform for both:
//   v = (d0 - d1, d1, d2 - d1)                                input transform B
//   u_even = (w3, w3 + w1, w1), u_odd = (w2, w2 + w0, w0)     filter transform G
//   m = v * u,  y0 = m0 + m1,  y1 = m1 + m2                   output transform A, per phase
//   outputs 4t-1, 4t, 4t+1, 4t+2 = odd y0, even y0, odd y1, even y1
// 3 products for 2 outputs where the direct sum takes 4. In 2-D a tile is 3x3 inputs and
// 4x4 outputs, and each of its 9 transform points xi is one product of V_xi (tiles x ci)
// with U_xi (ci x [phase y][phase x][co]): a GEMM with 9/16 of the direct multiplies. The
// backward is its adjoint: Gm = A^T of grad_out, then per point grad_V = Gm U^T (B^T of it
// is scattered onto grad_x) and grad_U += V^T Gm (G^T of it is grad_weight).
//
// Two tilings. Shared tiles (above): one input transform serves the four phases and the
// GEMMs have 4 Cout columns, but tiles cover the output from row -1 in steps of 4, so a
// row of tiles is H / 2 + 1 long and the products past the edges are wasted (6% of the
// work at H = W = 64, 27% at 16, 125% at 4). A phase's own tiles: phase p's tile t reads
// x[2t - 1 + p] .. x[2t + 1 + p] and makes its outputs 4t + p and 4t + 2 + p, so none runs
// past an even edge, for an input transform per phase and GEMMs of Cout columns. Layers
// with Cout >= kPhasedMinChannels take the phases' own tiles, both directions.
//
// Backward on shared tiles: tasks of a few tile rows of one sample, whose V, Gm and grad_V
// stay in cache between the transforms and the GEMMs; grad_x rows between tasks (halos)
// are added at the end. On a phase's own tiles grad_x is computed as the stride-2
// convolution it is (backward_phased): 2x2 tiles of grad_x that do not overlap, so tasks
// run across samples as the forward's do.
// Built once per CPU capability (cpu/capability.h). Its buffers are tensors, not
// std::vector<T>: an AVX-512 build that emits std::vector<float>'s constructors out of line
// (it did once its transforms grew) gives the linker AVX-512 copies of weak symbols the
// baseline code shares (tests/test_cpu_capability.py).
#include "cpu/capability.h"
#include "cpu/conv_transpose_nhwc.h"
#include "cpu/huge_page_empty.h"
#include "cpu/layout.h"
#include "cpu/small_gemm.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <initializer_list>
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

namespace fastvae::cpu::CPU_CAPABILITY {
namespace {

constexpr int64_t kPoints = 9;        // transform points per tile (3 x 3)
constexpr int64_t kTaskTiles = 128;   // tiles per shared-tile backward task, about (whole
                                      // tile rows; measured 40-256)
// Tasks across samples: at most kForwardTiles tiles in the forward (measured 64-256 on
// 128->64 and 512->256 layers: 128 within noise of the best), kBackwardTiles in
// backward_phased (with small_gemm, 128 / 256 / 512 over seven DCGAN/GN/U-Net layers
// fwd+bwd: 256 up to 7% faster than 128 on 256-channel layers, where each task's grad_U
// products (K = its tiles) read and write all of grad_U's slice, 512 2-8% slower). A phase's
// own tiles from Cout >= kPhasedMinChannels (forward at 64->3@32: shared tiles 2.1x
// oneDNN, per-phase 0.43x; 128->64@16: per-phase 1.17x, shared 1.05x; 64 channels a tie).
constexpr int64_t kForwardTiles = 128;
constexpr int64_t kBackwardTiles = 256;
constexpr int64_t kPhasedMinChannels = 64;

// Whether float32 products run in small_gemm (cpu/small_gemm.h: the AVX-512 build) rather
// than the BLAS. It reads B by rows, so the backward's grad_x products take U^T (which
// transform_weight writes instead of U), where the BLAS reads U transposed in place.
template <typename T>
constexpr bool own_gemm() {
#if defined(CPU_CAPABILITY_AVX512)
  return std::is_same_v<T, float>;
#else
  return false;
#endif
}

// Row-major C (m x n, ldc) = op(A) op(B) + beta C (beta 0 or 1), op(X) = X or X^T as stored.
// Column-major BLAS sees C^T = op(B)^T op(A)^T.
template <typename T>
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda,
          const T* b, int64_t ldb, T beta, T* c, int64_t ldc) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (own_gemm<T>()) {
    if (!tb) {
      small_gemm(m, n, k, a, ta ? 1 : lda, ta ? lda : 1, b, ldb, c, ldc, beta != T(0));
      return;
    }
  }
#endif
  const int mi = static_cast<int>(n), ni = static_cast<int>(m), ki = static_cast<int>(k);
  const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
  const char opa = tb ? 'T' : 'N', opb = ta ? 'T' : 'N';
  const T one = 1;
  if constexpr (std::is_same_v<T, float>) {
    sgemm_(&opa, &opb, &mi, &ni, &ki, &one, b, &la, a, &lb, &beta, c, &lc);
  } else {
    dgemm_(&opa, &opb, &mi, &ni, &ki, &one, b, &la, a, &lb, &beta, c, &lc);
  }
}

// C (m x ci, ldc) = A (m x 4 co, lda) times point `point`'s U^T: grad_x's products. With
// own_gemm, `ut` is U^T (9, 4 co, ci), read by rows, and `u` null; else `ut` is null and the
// BLAS reads U transposed.
template <typename T>
void gemm_u_transposed(int64_t m, int64_t ci, int64_t co, const T* a, int64_t lda, const T* u,
                       const T* ut, int64_t point, T* c, int64_t ldc) {
  if (ut != nullptr) {
    gemm<T>(false, false, m, ci, 4 * co, a, lda, ut + point * 4 * co * ci, ci, T(0), c, ldc);
  } else {
    gemm<T>(false, true, m, ci, 4 * co, a, lda, u + point * ci * 4 * co, 4 * co, T(0), c, ldc);
  }
}

// Where U (9, ci, 4 co) holds the transformed tap (a = py * 3 + xy, b = px * 3 + xx) of
// channels (i, o): U[xy * 3 + xx][i][(py * 2 + px) * co + o].
inline int64_t u_offset(int64_t a, int64_t b, int64_t i, int64_t o, int64_t ci, int64_t co) {
  const int64_t point = a % 3 * 3 + b % 3, phase = a / 3 * 2 + b / 3;
  return (point * ci + i) * 4 * co + phase * co + o;
}

// The filter transform G along one axis, for n filters at once: u[p * 3 + xi] from the
// taps w, for phase p = 0 (even outputs, g = (w3, w1)) and p = 1 (odd, g = (w2, w0)); and
// its adjoint G^T. One contiguous row per tap and per transformed value (restrict: the
// rows never overlap, so the loops vectorize).
template <typename T>
void filter_rows(const T* __restrict w0, const T* __restrict w1, const T* __restrict w2,
                 const T* __restrict w3, T* __restrict u0, T* __restrict u1, T* __restrict u2,
                 T* __restrict u3, T* __restrict u4, T* __restrict u5, int64_t n) {
  for (int64_t o = 0; o < n; ++o) {
    u0[o] = w3[o];
    u1[o] = w3[o] + w1[o];
    u2[o] = w1[o];
    u3[o] = w2[o];
    u4[o] = w2[o] + w0[o];
    u5[o] = w0[o];
  }
}
template <typename T>
void filter_rows_adjoint(const T* __restrict u0, const T* __restrict u1,
                         const T* __restrict u2, const T* __restrict u3,
                         const T* __restrict u4, const T* __restrict u5, T* __restrict w0,
                         T* __restrict w1, T* __restrict w2, T* __restrict w3, int64_t n) {
  for (int64_t o = 0; o < n; ++o) {
    w0[o] = u4[o] + u5[o];
    w1[o] = u1[o] + u2[o];
    w2[o] = u3[o] + u4[o];
    w3[o] = u0[o] + u1[o];
  }
}

// weight (ci, co, 4, 4) -> U (9, ci, 4 co), laid out as u_offset says, or its transpose
// U^T (9, 4 co, ci) when `transposed` (the backward's, with own_gemm: it needs no U). Per
// input channel i: its taps as k[ky * 4 + kx][o] (the weight's own rows when taps_last,
// else transposed), G along y into t[a * 4 + kx][o], then G along x into U's 36 rows (a, b)
// of i: every pass runs over contiguous rows of co (the loop over (i, o) that wrote 36
// scattered values a pair took ~8% of a 512->256@4 fwd+bwd). For U^T the rows of
// kWeightBlock channels are transposed from a block in cache: a transpose of U in memory
// after the transform read and wrote 2 x 4.7 MB at 256->128.
constexpr int64_t kWeightBlock = 16;

template <typename T>
void transform_weight(const at::Tensor& weight, T* u, bool transposed) {
  const int64_t ci = weight.size(0), co = weight.size(1);
  const bool direct = taps_last(weight);
  const at::Tensor w = direct ? weight : weight.contiguous();
  const T* wp = w.data_ptr<T>();
  const int64_t blocks = (ci + kWeightBlock - 1) / kWeightBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    // U^T's block: row (a, b) of channel i0 + j at rows[((a * 6 + b) * kWeightBlock + j) * co]
    const int64_t block_rows = transposed ? 36 * kWeightBlock : 0;
    const at::Tensor buffer = at::empty({(16 + 24 + block_rows) * co}, weight.options());
    T* const k_rows = buffer.data_ptr<T>();
    T* const t = k_rows + 16 * co;
    T* const rows = t + 24 * co;
    for (int64_t block = begin; block < end; ++block) {
      const int64_t i0 = block * kWeightBlock, i1 = std::min(i0 + kWeightBlock, ci);
      for (int64_t i = i0; i < i1; ++i) {
        const T* k = wp + i * co * 16;
        if (!direct) {
          layout_detail::transpose_block(k, 16, k_rows, co, co, 16);
          k = k_rows;
        }
        const auto k_row = [&](int64_t r) { return k + r * co; };
        const auto t_row = [&](int64_t r) { return t + r * co; };
        const auto u_row = [&](int64_t a, int64_t b) {
          return transposed ? rows + ((a * 6 + b) * kWeightBlock + i - i0) * co
                            : u + u_offset(a, b, i, 0, ci, co);
        };
        for (int64_t kx = 0; kx < 4; ++kx) {
          filter_rows(k_row(kx), k_row(4 + kx), k_row(8 + kx), k_row(12 + kx), t_row(kx),
                      t_row(4 + kx), t_row(8 + kx), t_row(12 + kx), t_row(16 + kx),
                      t_row(20 + kx), co);
        }
        for (int64_t a = 0; a < 6; ++a) {
          filter_rows(t_row(a * 4), t_row(a * 4 + 1), t_row(a * 4 + 2), t_row(a * 4 + 3),
                      u_row(a, 0), u_row(a, 1), u_row(a, 2), u_row(a, 3), u_row(a, 4),
                      u_row(a, 5), co);
        }
      }
      if (!transposed) continue;
      for (int64_t a = 0; a < 6; ++a) {
        for (int64_t b = 0; b < 6; ++b) {  // U^T[point][phase * co + o][i]
          const int64_t point = a % 3 * 3 + b % 3, phase = a / 3 * 2 + b / 3;
          layout_detail::transpose_block(rows + (a * 6 + b) * kWeightBlock * co, co,
                                         u + (point * 4 + phase) * co * ci + i0, ci, i1 - i0,
                                         co);
        }
      }
    }
  });
}

// The adjoint of transform_weight: grad_U (9, ci, 4 co) -> grad_weight (ci, co, 4, 4) in
// its own layout (taps_last or contiguous), its passes in reverse.
template <typename T>
void untransform_weight(const T* gu, at::Tensor& grad_weight) {
  const int64_t ci = grad_weight.size(0), co = grad_weight.size(1);
  const bool direct = taps_last(grad_weight);
  T* gw = grad_weight.data_ptr<T>();
  at::parallel_for(0, ci, 1, [&](int64_t begin, int64_t end) {
    const at::Tensor buffer = at::empty({(16 + 24) * co}, grad_weight.options());
    T* const k_rows = buffer.data_ptr<T>();
    T* const t = k_rows + 16 * co;
    for (int64_t i = begin; i < end; ++i) {
      T* k = direct ? gw + i * co * 16 : k_rows;
      const auto k_row = [&](int64_t r) { return k + r * co; };
      const auto t_row = [&](int64_t r) { return t + r * co; };
      const auto u_row = [&](int64_t a, int64_t b) { return gu + u_offset(a, b, i, 0, ci, co); };
      for (int64_t a = 0; a < 6; ++a) {
        filter_rows_adjoint(u_row(a, 0), u_row(a, 1), u_row(a, 2), u_row(a, 3), u_row(a, 4),
                            u_row(a, 5), t_row(a * 4), t_row(a * 4 + 1), t_row(a * 4 + 2),
                            t_row(a * 4 + 3), co);
      }
      for (int64_t kx = 0; kx < 4; ++kx) {
        filter_rows_adjoint(t_row(kx), t_row(4 + kx), t_row(8 + kx), t_row(12 + kx),
                            t_row(16 + kx), t_row(20 + kx), k_row(kx), k_row(4 + kx),
                            k_row(8 + kx), k_row(12 + kx), co);
      }
      if (!direct) layout_detail::transpose_block(k, co, gw + i * co * 16, 16, 16, co);
    }
  });
}

// Task geometry: `ty` x `tx` tiles a sample of n x h x w; backward tasks of `rows` tile
// rows of one sample.
struct Tiles {
  int64_t n, h, w, ty, tx, rows, blocks;  // blocks: tasks per sample
  Tiles(int64_t n_, int64_t h_, int64_t w_, int64_t ty_, int64_t tx_)
      : n(n_), h(h_), w(w_), ty(ty_), tx(tx_) {
    const auto ceil_div = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
    const int64_t most = std::max<int64_t>(kTaskTiles / tx, 1);  // rows a task may take
    rows = ceil_div(ty, ceil_div(ty, most));  // evened out over the fewest tasks
    blocks = ceil_div(ty, rows);
  }
  int64_t tasks() const { return n * blocks; }
  int64_t max_tiles() const { return rows * tx; }
  int64_t first_row(int64_t task) const { return task % blocks * rows; }
  int64_t end_row(int64_t task) const { return std::min(first_row(task) + rows, ty); }
  // The two tilings of x (N, C, H, W) (see the top of this file): tiles shared by the
  // phases, H / 2 + 1 a column from output row -1; a phase's own, ceil(H / 2) a column.
  static Tiles shared(const at::Tensor& x) {
    return Tiles(x.size(0), x.size(2), x.size(3), x.size(2) / 2 + 1, x.size(3) / 2 + 1);
  }
  static Tiles per_phase(const at::Tensor& x) {
    return Tiles(x.size(0), x.size(2), x.size(3), (x.size(2) + 1) / 2, (x.size(3) + 1) / 2);
  }
};

// Whether a layer of `co` output channels takes a phase's own tiles, both directions.
inline bool phase_tiles(int64_t co) { return co >= kPhasedMinChannels; }

// Tile (ty, tx, sample s) of tile number `tile`, tiles numbered over (sample, row, column).
struct Tile {
  int64_t s, ty, tx;
  Tile(const Tiles& g, int64_t tile)
      : s(tile / (g.tx * g.ty)), ty(tile / g.tx % g.ty), tx(tile % g.tx) {}
};

// Tasks over all n * ty * tx tiles, numbered across samples (forward, backward_phased):
// at most `most_tiles` tiles each, as many for each thread (the slices split the tasks
// evenly: 3 tasks on 2 threads left one idle a third of the call).
struct Tasks {
  int64_t all, count;
  Tasks(const Tiles& g, int64_t most_tiles) : all(g.n * g.ty * g.tx) {
    const int64_t threads = std::min<int64_t>(at::get_num_threads(), all);
    const int64_t rounds = ((all + most_tiles - 1) / most_tiles + threads - 1) / threads;
    count = std::min(rounds * threads, all);
  }
  int64_t first(int64_t task) const { return all * task / count; }
  int64_t most() const { return (all + count - 1) / count; }  // tiles in a task, at most
};

// The first of `tasks` tasks that slice `slice` of `slices` (one a thread) runs; its last
// is the next slice's first - 1 (the forward's and SlicedGradU's split).
inline int64_t slice_first(int64_t tasks, int64_t slice, int64_t slices) {
  return tasks * slice / slices;
}

// Each slice's (thread's) scratch for its tasks' transforms and products: parts of the
// given sizes, carved from one uninitialized block of empty_huge, which keeps large blocks
// for the next call. std::vectors a call were zero-filled (5 MB a thread in a 256->128@16
// backward) and, past malloc's mmap threshold, fresh pages.
template <typename T>
class SliceScratch {
 public:
  SliceScratch(int64_t slices, std::initializer_list<int64_t> sizes)
      : offsets_(sizes.size() + 1, 0) {
    int64_t i = 0;
    for (int64_t size : sizes) offsets_[i + 1] = offsets_[i] + size, ++i;
    block_ = empty_huge({slices * offsets_.back()}, c10::CppTypeToScalarType<T>::value);
  }
  T* part(int64_t slice, int64_t index) {
    return block_.data_ptr<T>() + slice * offsets_.back() + offsets_[index];
  }

 private:
  std::vector<int64_t> offsets_;
  at::Tensor block_;
};

// B along x then y of one 3x3 patch (d[a][b]: n values each) into out[(a * 3 + b) * stride].
template <typename T>
inline void patch_transform(const T* const (&d)[3][3], int64_t n, int64_t stride, T* out) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) {
    T e[3][3];  // B along x
    for (int64_t a = 0; a < 3; ++a) {
      e[a][0] = d[a][0][c] - d[a][1][c];
      e[a][1] = d[a][1][c];
      e[a][2] = d[a][2][c] - d[a][1][c];
    }
    for (int64_t b = 0; b < 3; ++b) {  // B along y
      out[(0 * 3 + b) * stride + c] = e[0][b] - e[1][b];
      out[(1 * 3 + b) * stride + c] = e[1][b];
      out[(2 * 3 + b) * stride + c] = e[2][b] - e[1][b];
    }
  }
}

// A along x then y of one tile's 3x3 points (src[(a * 3 + b) * stride]: n values each,
// y0 = m0 + m1, y1 = m1 + m2), plus the bias, into its 2x2 outputs q[i][k].
template <typename T>
inline void tile_output(const T* src, int64_t n, int64_t stride, const T* bias,
                        T* const (&q)[2][2]) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) {
    T e[3][2];  // A along x
    for (int64_t a = 0; a < 3; ++a) {
      const T m1 = src[(a * 3 + 1) * stride + c];
      e[a][0] = src[(a * 3 + 0) * stride + c] + m1;
      e[a][1] = m1 + src[(a * 3 + 2) * stride + c];
    }
    for (int64_t k = 0; k < 2; ++k) {  // A along y
      q[0][k][c] = e[0][k] + e[1][k] + bias[c];
      q[1][k][c] = e[1][k] + e[2][k] + bias[c];
    }
  }
}

// Pixel (iy, ix) of sample s of an h x w channels_last map of n channels, or `outside`.
template <typename T>
inline T* pixel(T* map, int64_t s, int64_t iy, int64_t ix, int64_t h, int64_t w, int64_t n,
                T* outside) {
  const bool inside = iy >= 0 && iy < h && ix >= 0 && ix < w;
  return inside ? map + ((s * h + iy) * w + ix) * n : outside;
}

// V[xi][tile][ci] of tiles first .. end - 1: B of each 3x3 input patch, tile (ty, tx)'s
// patch having its corner at input pixel (2 ty - 1 + oy, 2 tx - 1 + ox). `zeros` (ci
// zeros) stands in for the pixels outside x.
template <typename T>
void input_transform(const T* x, const Tiles& g, int64_t ci, int64_t first, int64_t end,
                     int64_t oy, int64_t ox, const T* zeros, T* v) {
  for (int64_t tile = first; tile < end; ++tile) {
    const Tile t(g, tile);
    const T* d[3][3];
    for (int64_t a = 0; a < 3; ++a) {
      for (int64_t b = 0; b < 3; ++b) {
        d[a][b] = pixel(x, t.s, 2 * t.ty - 1 + oy + a, 2 * t.tx - 1 + ox + b, g.h, g.w, ci, zeros);
      }
    }
    patch_transform(d, ci, (end - first) * ci, v + (tile - first) * ci);
  }
}

// Along an axis, phase p's F(2, 2) outputs of tile t are 4t - p + 2i on the tiles shared
// by the phases (they start at output -1) and 4t + p + 2i on a phase's own.
inline int64_t phase_output(int64_t t, int64_t p, int64_t i, bool shared) {
  return 4 * t + 2 * i + (shared ? -p : p);
}

// Gm[xi][tile][phase][co] = A^T of the 2x2 outputs of phases phase_first .. phase_end - 1
// of tiles first .. end - 1 in grad_out (zeros outside): A^T = (q0, q0 + q1, q1) per axis.
template <typename T>
void output_adjoint(const T* gout, const Tiles& g, int64_t co, int64_t first, int64_t end,
                    int64_t phase_first, int64_t phase_end, bool shared, const T* zeros,
                    T* gm) {
  const int64_t ld = (phase_end - phase_first) * co, stride = (end - first) * ld;
  for (int64_t tile = first; tile < end; ++tile) {
    const Tile t(g, tile);
    for (int64_t phase = phase_first; phase < phase_end; ++phase) {
      const int64_t py = phase / 2, px = phase % 2;
      const T* q[2][2];  // q[i][k]: the phase's F(2, 2) output i along y, k along x
      for (int64_t i = 0; i < 2; ++i) {
        for (int64_t k = 0; k < 2; ++k) {
          q[i][k] = pixel(gout, t.s, phase_output(t.ty, py, i, shared),
                          phase_output(t.tx, px, k, shared), 2 * g.h, 2 * g.w, co, zeros);
        }
      }
      T* dst = gm + (tile - first) * ld + (phase - phase_first) * co;
#pragma omp simd
      for (int64_t c = 0; c < co; ++c) {
        T e[2][3];  // A^T along x
        for (int64_t i = 0; i < 2; ++i) {
          e[i][0] = q[i][0][c];
          e[i][1] = q[i][0][c] + q[i][1][c];
          e[i][2] = q[i][1][c];
        }
        for (int64_t b = 0; b < 3; ++b) {  // A^T along y
          dst[(0 * 3 + b) * stride + c] = e[0][b];
          dst[(1 * 3 + b) * stride + c] = e[0][b] + e[1][b];
          dst[(2 * 3 + b) * stride + c] = e[1][b];
        }
      }
    }
  }
}

// The forward's output transform: A of M[xi][tile][phase][co] for phases phase_first ..
// phase_end - 1 of tiles first .. end - 1, plus the bias, into the phases' 2x2 outputs
// (phase_output). `sink` (co values) takes the outputs past the edges.
template <typename T>
void output_transform(const T* m, const Tiles& g, int64_t co, int64_t first, int64_t end,
                      int64_t phase_first, int64_t phase_end, bool shared, const T* bias,
                      T* sink, T* y) {
  const int64_t ld = (phase_end - phase_first) * co, stride = (end - first) * ld;
  for (int64_t tile = first; tile < end; ++tile) {
    const Tile t(g, tile);
    for (int64_t phase = phase_first; phase < phase_end; ++phase) {
      const int64_t py = phase / 2, px = phase % 2;
      T* q[2][2];
      for (int64_t i = 0; i < 2; ++i) {
        for (int64_t k = 0; k < 2; ++k) {
          q[i][k] = pixel(y, t.s, phase_output(t.ty, py, i, shared),
                          phase_output(t.tx, px, k, shared), 2 * g.h, 2 * g.w, co, sink);
        }
      }
      tile_output(m + (tile - first) * ld + (phase - phase_first) * co, co, stride, bias, q);
    }
  }
}

// The per-phase backward's grad_x operand. grad_x is a stride-2 convolution of grad_out:
// along an axis, grad_x[m] = g[2m] w1 + g[2m + 2] w3 + g[2m - 1] w0 + g[2m + 1] w2, for
// each phase p an F(2, 2) over g's rows of that parity, with the phase's filter transform
// reversed (point xi <-> 2 - xi: U's point 8 - xi in 2-D). Tile t makes grad_x[2t], [2t+1]
// from rows 4t + 2a - p, a = 0, 1, 2. Vg[xi][tile][phase][co] = B of those patches.
template <typename T>
void gradient_transform(const T* gout, const Tiles& g, int64_t co, int64_t first, int64_t end,
                        const T* zeros, T* vg) {
  const int64_t ld = 4 * co, stride = (end - first) * ld;
  for (int64_t tile = first; tile < end; ++tile) {
    const Tile t(g, tile);
    for (int64_t phase = 0; phase < 4; ++phase) {
      const int64_t py = phase / 2, px = phase % 2;
      const T* d[3][3];
      for (int64_t a = 0; a < 3; ++a) {
        for (int64_t b = 0; b < 3; ++b) {
          d[a][b] = pixel(gout, t.s, 4 * t.ty + 2 * a - py, 4 * t.tx + 2 * b - px, 2 * g.h,
                          2 * g.w, co, zeros);
        }
      }
      patch_transform(d, co, stride, vg + (tile - first) * ld + phase * co);
    }
  }
}

// grad_x's 2x2 pixels (2 ty + i, 2 tx + k) of tiles first .. end - 1: A of Mx[xi][tile][ci].
template <typename T>
void gradient_output(const T* mx, const Tiles& g, int64_t ci, int64_t first, int64_t end,
                     const T* zeros, T* sink, T* grad_x) {
  for (int64_t tile = first; tile < end; ++tile) {
    const Tile t(g, tile);
    T* q[2][2];
    for (int64_t i = 0; i < 2; ++i) {
      for (int64_t k = 0; k < 2; ++k) {
        q[i][k] = pixel(grad_x, t.s, 2 * t.ty + i, 2 * t.tx + k, g.h, g.w, ci, sink);
      }
    }
    tile_output(mx + (tile - first) * ci, ci, (end - first) * ci, zeros, q);
  }
}

// B^T of grad_V[xi][tile][ci], added onto acc: the task's input rows 2 t0 - 1 .. 2 t1 - 1,
// columns -1 .. 2 tx - 1 (offset by one), ci values each.
template <typename T>
void input_adjoint(const T* gv, const Tiles& g, int64_t ci, int64_t t0, int64_t t1, T* acc) {
  const int64_t tiles = (t1 - t0) * g.tx, stride = tiles * ci, cols = 2 * g.tx + 1;
  int64_t tile = 0;
  for (int64_t ty = t0; ty < t1; ++ty) {
    for (int64_t tx = 0; tx < g.tx; ++tx, ++tile) {
      T* d[3][3];
      for (int64_t a = 0; a < 3; ++a)
        for (int64_t b = 0; b < 3; ++b)
          d[a][b] = acc + ((2 * (ty - t0) + a) * cols + 2 * tx + b) * ci;
      const T* src = gv + tile * ci;
#pragma omp simd
      for (int64_t c = 0; c < ci; ++c) {
        T e[3][3];  // B^T along y: (v0, v1 - v0 - v2, v2)
        for (int64_t b = 0; b < 3; ++b) {
          const T v0 = src[(0 * 3 + b) * stride + c], v1 = src[(1 * 3 + b) * stride + c];
          const T v2 = src[(2 * 3 + b) * stride + c];
          e[0][b] = v0;
          e[1][b] = v1 - v0 - v2;
          e[2][b] = v2;
        }
        for (int64_t a = 0; a < 3; ++a) {  // B^T along x
          d[a][0][c] += e[a][0];
          d[a][1][c] += e[a][1] - e[a][0] - e[a][2];
          d[a][2][c] += e[a][2];
        }
      }
    }
  }
}

// y (channels_last) = conv_transpose2d(x, weight) + bias, U the transformed weight, on
// one of two tilings. Shared: the backward's tiles, one input transform for the four
// phases and GEMMs of 4 Cout columns, but tiles past the edges (27% more work at 16x16,
// 56% at 8x8, 125% at 4x4). Per phase: along an axis, phase p's tile t reads inputs
// 2t - 1 + p .. 2t + 1 + p and makes outputs 4t + p and 4t + 2 + p, so no tile runs past
// an even edge, for four input transforms and GEMMs of Cout columns; it wins from
// Cout >= kPhasedMinChannels (see there). Per task and tile group: V = B x, M = V U per
// transform point, y = A M. A task's tiles run across samples (the forward has no halo),
// so the GEMMs keep about kForwardTiles rows on small maps too.
template <typename T>
void forward(const at::Tensor& x, const at::Tensor& u, const T* bias, at::Tensor& y) {
  const int64_t ci = x.size(1), co = y.size(1);
  const bool shared = !phase_tiles(co);
  const Tiles g = shared ? Tiles::shared(x) : Tiles::per_phase(x);
  const int64_t groups = shared ? 1 : 4, cols = shared ? 4 * co : co;  // tile groups, GEMM N
  const Tasks tasks(g, kForwardTiles);
  const T* xp = x.data_ptr<T>();
  const T* up = u.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  const at::Tensor zero_pixel = at::zeros({ci}, x.options());
  const T* zeros = zero_pixel.data_ptr<T>();
  const int64_t slices = std::min<int64_t>(at::get_num_threads(), tasks.count);
  const int64_t most = tasks.most();
  SliceScratch<T> scratch(slices, {kPoints * most * ci, kPoints * most * cols, co});
  at::parallel_for(0, slices, 1, [&](int64_t slice_begin, int64_t slice_end) {
    for (int64_t slice = slice_begin; slice < slice_end; ++slice) {
      T* v = scratch.part(slice, 0);
      T* m = scratch.part(slice, 1);
      T* sink = scratch.part(slice, 2);
      for (int64_t task = slice_first(tasks.count, slice, slices);
           task < slice_first(tasks.count, slice + 1, slices); ++task) {
        const int64_t first = tasks.first(task), last = tasks.first(task + 1);
        const int64_t tiles = last - first;
        for (int64_t group = 0; group < groups; ++group) {  // shared: all phases; else phase
          const int64_t py = shared ? 0 : group / 2, px = shared ? 0 : group % 2;
          input_transform(xp, g, ci, first, last, py, px, zeros, v);
          for (int64_t p = 0; p < kPoints; ++p) {  // U's columns of the group's phases
            gemm<T>(false, false, tiles, cols, ci, v + p * tiles * ci, ci,
                    up + p * ci * 4 * co + group * co, 4 * co, T(0), m + p * tiles * cols,
                    cols);
          }
          output_transform(m, g, co, first, last, shared ? 0 : group, shared ? 4 : group + 1,
                           shared, bias, sink, yp);
        }
      }
    }
  });
}

// grad_U summed over slices of the tasks, one slice per thread, in slice order: the
// result depends on the thread count only, and a nested call (run inline) is safe. Slice 0
// writes grad_U itself and the others a partial each, in huge pages (huge_page_empty.h);
// a slice's first task overwrites (beta 0), so nothing is zero-filled, and the sum runs on
// every thread (it was a serial copy and add of slices x U's size, 38 MB at 512->256).
template <typename T>
struct SlicedGradU {
  int64_t tasks, slices, nu;
  T* grad_u;
  at::Tensor partial;
  SlicedGradU(int64_t tasks_, int64_t nu_, at::Tensor& grad_u_)
      : tasks(tasks_), slices(std::min<int64_t>(at::get_num_threads(), tasks_)), nu(nu_),
        grad_u(grad_u_.data_ptr<T>()),
        partial(empty_huge({(slices - 1) * nu_}, grad_u_.scalar_type())) {}
  T* of(int64_t slice) { return slice == 0 ? grad_u : partial.data_ptr<T>() + (slice - 1) * nu; }
  int64_t first(int64_t slice) const { return slice_first(tasks, slice, slices); }
  void sum() {  // grad_U = slice 0 + slice 1 + ..., per element in slice order
    if (slices == 1) return;
    const T* part = partial.data_ptr<T>();
    at::parallel_for(0, nu, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t t = 0; t + 1 < slices; ++t) {
        const T* src = part + t * nu;
        for (int64_t e = begin; e < end; ++e) grad_u[e] += src[e];
      }
    });
  }
};

template <typename T>
void backward(const at::Tensor& gout, const at::Tensor& x, const T* up,
              const T* ut, at::Tensor& grad_x, at::Tensor& grad_u) {
  const int64_t ci = x.size(1), co = gout.size(1), nu = kPoints * ci * 4 * co;
  const Tiles g = Tiles::shared(x);
  const T* gp = gout.data_ptr<T>();
  const T* xp = x.data_ptr<T>();
  T* gxp = grad_x.data_ptr<T>();
  const at::Tensor zero_pixel = at::zeros({std::max(ci, co)}, x.options());
  const T* zeros = zero_pixel.data_ptr<T>();
  const int64_t cols = 2 * g.tx + 1, row = g.w * ci;  // acc row: columns -1 .. 2 tx - 1
  // Input row 2 t0 - 1 of a task also takes the task above's last tile row: the task keeps
  // its part of that row in `halo`, added once all tasks are done.
  const at::Tensor halo_rows = at::empty({g.tasks() * row}, x.options());
  T* halo = halo_rows.data_ptr<T>();
  const int64_t tasks = g.tasks();
  SlicedGradU<T> sliced(tasks, nu, grad_u);
  const int64_t most = g.max_tiles(), acc_size = (2 * g.rows + 1) * cols * ci;
  SliceScratch<T> scratch(sliced.slices, {kPoints * most * ci, kPoints * most * ci,
                                          kPoints * most * 4 * co, acc_size});
  at::parallel_for(0, sliced.slices, 1, [&](int64_t slice_begin, int64_t slice_end) {
    for (int64_t slice = slice_begin; slice < slice_end; ++slice) {
      T* v = scratch.part(slice, 0);
      T* gv = scratch.part(slice, 1);
      T* gm = scratch.part(slice, 2);
      T* acc = scratch.part(slice, 3);
      T* gu = sliced.of(slice);
      const int64_t first = sliced.first(slice);
      for (int64_t task = first; task < sliced.first(slice + 1); ++task) {
        const T beta = task == first ? T(0) : T(1);
        const int64_t s = task / g.blocks, t0 = g.first_row(task), t1 = g.end_row(task);
        const int64_t tiles = (t1 - t0) * g.tx;
        input_transform(xp, g, ci, (s * g.ty + t0) * g.tx, (s * g.ty + t1) * g.tx, 0, 0,
                        zeros, v);
        output_adjoint(gp, g, co, (s * g.ty + t0) * g.tx, (s * g.ty + t1) * g.tx, 0, 4, true,
                       zeros, gm);
        for (int64_t p = 0; p < kPoints; ++p) {
          const T* gmp = gm + p * tiles * 4 * co;
          gemm_u_transposed(tiles, ci, co, gmp, 4 * co, up, ut, p, gv + p * tiles * ci, ci);
          gemm<T>(true, false, ci, 4 * co, tiles, v + p * tiles * ci, ci, gmp, 4 * co, beta,
                  gu + p * ci * 4 * co, 4 * co);
        }
        std::fill(acc, acc + acc_size, T(0));
        input_adjoint(gv, g, ci, t0, t1, acc);
        // acc row r is input row 2 t0 - 1 + r; column c + 1 is input column c
        for (int64_t r = 0; r < 2 * (t1 - t0) + 1; ++r) {
          const int64_t iy = 2 * t0 - 1 + r;
          if (iy < 0 || iy >= g.h) continue;
          const T* src = acc + (r * cols + 1) * ci;
          T* dst = r == 0 ? halo + task * row : gxp + (s * g.h + iy) * row;
          std::copy(src, src + row, dst);
        }
      }
    }
  });
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t s = task / g.blocks, iy = 2 * g.first_row(task) - 1;
    if (iy < 0 || iy >= g.h) continue;
    const T* src = halo + task * row;
    T* dst = gxp + (s * g.h + iy) * row;
    for (int64_t e = 0; e < row; ++e) dst[e] += src[e];
  }
  sliced.sum();
}

// The backward on a phase's own tiles (the forward's, see forward()). Per task: grad_x by
// gradient_transform, one GEMM a point with U's flipped point (K = 4 Cout), and A, each
// grad_x pixel written once (grad_x's 2x2 tiles do not overlap: no halo, so tasks run
// across samples); then per phase, grad_U's columns of the phase += V^T Gm.
template <typename T>
void backward_phased(const at::Tensor& gout, const at::Tensor& x, const T* up,
                     const T* ut, at::Tensor& grad_x, at::Tensor& grad_u) {
  const int64_t ci = x.size(1), co = gout.size(1), nu = kPoints * ci * 4 * co;
  const Tiles g = Tiles::per_phase(x);
  const Tasks tasks(g, kBackwardTiles);
  const T* gp = gout.data_ptr<T>();
  const T* xp = x.data_ptr<T>();
  T* gxp = grad_x.data_ptr<T>();
  const at::Tensor zero_pixel = at::zeros({std::max(ci, co)}, x.options());
  const T* zeros = zero_pixel.data_ptr<T>();
  SlicedGradU<T> sliced(tasks.count, nu, grad_u);  // as in backward()
  const int64_t most = tasks.most();
  SliceScratch<T> scratch(sliced.slices, {kPoints * most * 4 * co, kPoints * most * ci,
                                          kPoints * most * ci, kPoints * most * co, ci});
  at::parallel_for(0, sliced.slices, 1, [&](int64_t slice_begin, int64_t slice_end) {
    for (int64_t slice = slice_begin; slice < slice_end; ++slice) {
      T* vg = scratch.part(slice, 0);
      T* mx = scratch.part(slice, 1);
      T* v = scratch.part(slice, 2);
      T* gm = scratch.part(slice, 3);
      T* sink = scratch.part(slice, 4);
      T* gu = sliced.of(slice);
      const int64_t first_task = sliced.first(slice);
      for (int64_t task = first_task; task < sliced.first(slice + 1); ++task) {
        const T beta = task == first_task ? T(0) : T(1);
        const int64_t first = tasks.first(task), last = tasks.first(task + 1);
        const int64_t tiles = last - first;
        gradient_transform(gp, g, co, first, last, zeros, vg);
        for (int64_t p = 0; p < kPoints; ++p) {
          gemm_u_transposed(tiles, ci, co, vg + p * tiles * 4 * co, 4 * co, up, ut,
                            kPoints - 1 - p, mx + p * tiles * ci, ci);
        }
        gradient_output(mx, g, ci, first, last, zeros, sink, gxp);
        for (int64_t phase = 0; phase < 4; ++phase) {
          input_transform(xp, g, ci, first, last, phase / 2, phase % 2, zeros, v);
          output_adjoint(gp, g, co, first, last, phase, phase + 1, false, zeros, gm);
          for (int64_t p = 0; p < kPoints; ++p) {
            gemm<T>(true, false, ci, co, tiles, v + p * tiles * ci, ci, gm + p * tiles * co, co,
                    beta, gu + p * ci * 4 * co + phase * co, 4 * co);
          }
        }
      }
    }
  });
  sliced.sum();
}

}  // namespace

bool conv_transpose_nhwc_supported(const at::Tensor& x, const at::Tensor& weight) {
  const auto type = x.scalar_type();
  const bool blas =
      type == at::kFloat ? sgemm_ != nullptr : type == at::kDouble && dgemm_ != nullptr;
  return blas && weight.scalar_type() == type && x.dim() == 4 && weight.dim() == 4 &&
         weight.size(0) == x.size(1) && weight.size(2) == 4 && weight.size(3) == 4 &&
         x.is_contiguous(at::MemoryFormat::ChannelsLast) && x.numel() > 0 &&
         weight.numel() > 0 && 4 * weight.size(1) < (int64_t{1} << 31);  // BLAS ints
}

at::Tensor conv_transpose_nhwc_forward(const at::Tensor& x, const at::Tensor& weight,
                                      const c10::optional<at::Tensor>& bias) {
  RECORD_FUNCTION("fastvae::conv_transpose_nhwc_forward", std::vector<c10::IValue>());
  const int64_t ci = weight.size(0), co = weight.size(1);
  at::Tensor u = empty_huge({kPoints, ci, 4 * co}, weight.scalar_type());
  at::Tensor y = empty_huge({x.size(0), co, 2 * x.size(2), 2 * x.size(3)}, x.scalar_type(),
                            at::MemoryFormat::ChannelsLast);
  const at::Tensor b =
      bias.has_value() && bias->defined() ? bias->contiguous() : at::zeros({co}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_transpose_nhwc_forward", [&] {
    transform_weight(weight, u.data_ptr<scalar_t>(), false);
    forward<scalar_t>(x, u, b.data_ptr<scalar_t>(), y);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> conv_transpose_nhwc_backward(const at::Tensor& grad_out,
                                                                const at::Tensor& x,
                                                                const at::Tensor& weight) {
  // its own profiler range: benchmarks tell the epilogue's time from the convolution's
  RECORD_FUNCTION("fastvae::conv_transpose_nhwc_backward", std::vector<c10::IValue>());
  const int64_t ci = weight.size(0), co = weight.size(1);
  const at::Tensor g = grad_out.contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor grad_x = empty_huge(x.sizes(), x.scalar_type(), at::MemoryFormat::ChannelsLast);
  at::Tensor grad_u = empty_huge({kPoints, ci, 4 * co}, weight.scalar_type());
  // in weight's memory format: a taps_last grad_weight is written by untransform_weight
  // directly, any other layout is made contiguous there and copied once
  at::Tensor grad_weight = at::empty_like(weight);
  at::Tensor grad_w = grad_weight.is_contiguous() || taps_last(grad_weight)
                          ? grad_weight
                          : at::empty({ci, co, 4, 4}, weight.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "conv_transpose_nhwc_backward", [&] {
    // grad_x's products take U^T with own_gemm (see there), else U read transposed
    const bool transposed = own_gemm<scalar_t>();
    at::Tensor u = empty_huge({kPoints, ci, 4 * co}, weight.scalar_type());
    transform_weight(weight, u.data_ptr<scalar_t>(), transposed);
    const scalar_t* up = transposed ? nullptr : u.data_ptr<scalar_t>();
    const scalar_t* utp = transposed ? u.data_ptr<scalar_t>() : nullptr;
    if (phase_tiles(co)) {
      backward_phased<scalar_t>(g, x, up, utp, grad_x, grad_u);
    } else {
      backward<scalar_t>(g, x, up, utp, grad_x, grad_u);
    }
    untransform_weight(grad_u.data_ptr<scalar_t>(), grad_w);
  });
  if (!grad_w.is_same(grad_weight)) grad_weight.copy_(grad_w);
  return {grad_x, grad_weight};
}

}  // namespace fastvae::cpu::CPU_CAPABILITY
