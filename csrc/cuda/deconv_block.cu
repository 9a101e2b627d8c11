// CUDA kernels of fastvae::_deconv_block_fwd / _deconv_block_bwd (schemas in csrc/ops.cpp,
// semantics in fastvae/reference.py), the same structure as csrc/cpu/deconv_block.cpp and
// the per-element math of csrc/common/deconv_epilogue.h.
//
// Forward: conv_transpose2d through ATen (cuDNN, bias fused) in x's memory format; a
// moments kernel (one block per (sample, channel) plane and split, Welford per thread on
// values shifted by the statistic's first element, Chan merge across the warp and block, in
// float32), a finalize kernel merging the partials of each statistic, then one elementwise
// kernel for normalize + affine/AdaIN + activation.
// Backward: a reduction kernel giving per-plane sums of g_a, g_a*n, g_n, g_n*n (and the
// spatial AdaIN gradients; grad_h directly without norm), a finalize kernel per statistic
// and one per affine gradient (fixed summation order: deterministic), an elementwise grad_h
// kernel, then convolution_backward through ATen.
// The kernels read statistics and scale/shift through index maps (StatPlanes, AffineArg):
// the host builds no per-plane tables, so a step is about 8 launches around cuDNN's (on an
// H200 the launcher's ~40 small ATen ops of per-plane tables cost more than the kernels).
#include <ATen/Dispatch.h>
#include <ATen/ExpandUtils.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/conv_transpose2d.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <tuple>
#include <vector>
#include <type_traits>

#include "common/deconv_args.h"
#include "common/deconv_epilogue.h"

namespace fastvae {
namespace {

using deconv::Activation;
using deconv::format_of;
using deconv::output_format;
using deconv::parse_activation;
using deconv::Moments;

constexpr int kThreads = 256;
constexpr int64_t kSplitElems = 4096;  // plane elements per reduction block
constexpr int kMaxSplits = 64;
constexpr int64_t kBatch = -1;  // `groups` of BatchNorm: per channel over (N, H, W)

// Offset of pixel p of (sample, channel) plane `plane` in a dense NCHW or NHWC tensor.
__device__ __forceinline__ int64_t plane_offset(int64_t plane, int64_t p, int64_t c, int64_t hw,
                                                bool nhwc) {
  return nhwc ? ((plane / c) * hw + p) * c + plane % c : plane * hw + p;
}

// (sample * C + channel) of a dense element index.
__device__ __forceinline__ int64_t plane_of(int64_t idx, int64_t c, int64_t hw, bool nhwc) {
  return nhwc ? (idx / (hw * c)) * c + idx % c : idx / hw;
}

template <typename T>
__device__ __forceinline__ Moments<T> shfl_down(Moments<T> m, int offset) {
  return Moments<T>{__shfl_down_sync(0xffffffffu, m.count, offset),
                    __shfl_down_sync(0xffffffffu, m.mean, offset),
                    __shfl_down_sync(0xffffffffu, m.m2, offset)};
}

// Chan merge of every thread's moments; the result is valid in thread 0.
template <typename T>
__device__ Moments<T> block_merge(Moments<T> m) {
  __shared__ T buf[3][kThreads / 32];
  for (int off = 16; off > 0; off /= 2) m = deconv::merge(m, shfl_down(m, off));
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) {
    buf[0][warp] = m.count;
    buf[1][warp] = m.mean;
    buf[2][warp] = m.m2;
  }
  __syncthreads();
  if (warp == 0) {
    m = lane < blockDim.x / 32 ? Moments<T>{buf[0][lane], buf[1][lane], buf[2][lane]}
                               : Moments<T>{0, 0, 0};
    for (int off = 16; off > 0; off /= 2) m = deconv::merge(m, shfl_down(m, off));
  }
  return m;
}

// Sum of four values over the block, valid in thread 0.
template <typename T>
__device__ void block_sum4(T v[4]) {
  __shared__ T buf[4][kThreads / 32];
  for (int k = 0; k < 4; ++k)
    for (int off = 16; off > 0; off /= 2) v[k] += __shfl_down_sync(0xffffffffu, v[k], off);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0)
    for (int k = 0; k < 4; ++k) buf[k][warp] = v[k];
  __syncthreads();
  if (warp == 0) {
    for (int k = 0; k < 4; ++k) {
      v[k] = lane < blockDim.x / 32 ? buf[k][lane] : T(0);
      for (int off = 16; off > 0; off /= 2) v[k] += __shfl_down_sync(0xffffffffu, v[k], off);
    }
  }
}

// Which planes (sample * C + channel) share a statistic. GroupNorm: statistic
// s = sample * groups + group holds planes first(s) + k, k < C / groups; BatchNorm: statistic
// s = channel holds planes s + k * C, k < N. The kernels index the statistics through it, so
// no per-plane table is built on the host.
struct StatPlanes {
  int64_t c, groups, members, stride;  // groups == kBatch for BatchNorm
  __host__ __device__ bool batch() const { return groups == kBatch; }
  __host__ __device__ int64_t first(int64_t s) const {
    return batch() ? s : (s / groups) * c + (s % groups) * (c / groups);
  }
  __host__ __device__ int64_t stat_of(int64_t plane) const {
    return batch() ? plane % c : (plane / c) * groups + (plane % c) / (c / groups);
  }
};

// groups != 0 only: without a norm there are no statistics (and c / groups is undefined)
StatPlanes stat_planes(int64_t n, int64_t c, int64_t groups) {
  if (groups == kBatch) return StatPlanes{c, kBatch, n, c};
  return StatPlanes{c, groups, c / groups, 1};
}

// The shift each statistic's moments are taken about: pixel 0 of its first plane (keeps the
// variance exact when the mean is large against the spread).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t stat_shift(const scalar_t* h, const StatPlanes& sp, int64_t s,
                                            int64_t hw, bool nhwc) {
  return static_cast<acc_t>(h[plane_offset(sp.first(s), 0, sp.c, hw, nhwc)]);
}

// grid (N*C, splits): moments of one split of a plane, shifted by its statistic's shift.
template <typename scalar_t, typename acc_t>
__global__ void plane_moments_kernel(const scalar_t* __restrict__ h,  // (N, C, H, W) dense
                                     StatPlanes sp, int64_t hw, bool nhwc,
                                     acc_t* __restrict__ partial) {   // (N*C, splits, 3)
  const int64_t plane = blockIdx.x;
  const int64_t chunk = (hw + gridDim.y - 1) / gridDim.y;
  const int64_t p0 = blockIdx.y * chunk, p1 = min(hw, p0 + chunk);
  const acc_t k = stat_shift<scalar_t, acc_t>(h, sp, sp.stat_of(plane), hw, nhwc);
  Moments<acc_t> m{0, 0, 0};
  for (int64_t p = p0 + threadIdx.x; p < p1; p += blockDim.x)
    m = deconv::push(m, static_cast<acc_t>(h[plane_offset(plane, p, sp.c, hw, nhwc)]) - k);
  m = block_merge(m);
  if (threadIdx.x == 0) {
    acc_t* out = partial + (plane * gridDim.y + blockIdx.y) * 3;
    out[0] = m.count;
    out[1] = m.mean;
    out[2] = m.m2;
  }
}

// One thread per statistic: merges its planes' partials into mean and rstd.
template <typename scalar_t, typename acc_t>
__global__ void group_finalize_kernel(const scalar_t* __restrict__ h,
                                      const acc_t* __restrict__ partial,  // (N*C, splits, 3)
                                      int64_t n_stats, StatPlanes sp, int splits, int64_t hw,
                                      bool nhwc, acc_t eps,
                                      acc_t* __restrict__ mean,  // (N, groups) or (1, C)
                                      acc_t* __restrict__ rstd) {
  const int64_t s = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (s >= n_stats) return;
  const int64_t first = sp.first(s);
  Moments<acc_t> m{0, 0, 0};
  for (int64_t k = 0; k < sp.members; ++k)
    for (int j = 0; j < splits; ++j) {
      const acc_t* q = partial + ((first + k * sp.stride) * splits + j) * 3;
      m = deconv::merge(m, Moments<acc_t>{q[0], q[1], q[2]});
    }
  mean[s] = stat_shift<scalar_t, acc_t>(h, sp, s, hw, nhwc) + m.mean;
  rstd[s] = deconv::rstd_of(m, eps);
}

// scale or shift as the kernels read it: absent (the default 1 / 0), a per-(sample, channel)
// value read through strides (sample stride 0 when shared by the batch), or spatial: dense
// in the output's layout, read at the element's own index.
template <typename acc_t>
struct AffineArg {
  const acc_t* p;
  int64_t sn, sc;
  bool full;
  acc_t fill;
  __device__ __forceinline__ acc_t at(int64_t i, int64_t plane, int64_t c) const {
    if (p == nullptr) return fill;
    return full ? p[i] : p[(plane / c) * sn + (plane % c) * sc];
  }
};

// Operands of the elementwise kernels.
template <typename acc_t>
struct Epilogue {
  const acc_t* mean;  // per statistic, nullptr without norm
  const acc_t* rstd;
  StatPlanes sp;
  AffineArg<acc_t> scale, shift;
  Activation act;
  acc_t slope;
  int64_t c, hw;
  bool nhwc;
  __device__ __forceinline__ acc_t mean_of(int64_t plane) const {
    return mean ? mean[sp.stat_of(plane)] : acc_t(0);
  }
  __device__ __forceinline__ acc_t rstd_of(int64_t plane) const {
    return rstd ? rstd[sp.stat_of(plane)] : acc_t(1);
  }
};

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ h, scalar_t* __restrict__ y,
                               int64_t total, Epilogue<acc_t> e) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t pl = plane_of(i, e.c, e.hw, e.nhwc);
    y[i] = static_cast<scalar_t>(deconv::forward<acc_t>(
        static_cast<acc_t>(h[i]), e.mean_of(pl), e.rstd_of(pl), e.scale.at(i, pl, e.c),
        e.shift.at(i, pl, e.c), e.act, e.slope));
  }
}

// grid (N*C, splits): per-plane partial sums of g_a, g_a*n, g_n, g_n*n; spatial AdaIN
// gradients; grad_h = g_n when there is no norm.
template <typename scalar_t, typename acc_t>
__global__ void backward_reduce_kernel(const scalar_t* __restrict__ gy,
                                       const scalar_t* __restrict__ h, Epilogue<acc_t> e,
                                       acc_t* __restrict__ gscale_full,
                                       acc_t* __restrict__ gshift_full,
                                       scalar_t* __restrict__ gh,   // written when write_gh
                                       bool write_gh,
                                       acc_t* __restrict__ partial) {  // (N*C, splits, 4)
  const int64_t plane = blockIdx.x;
  const int64_t chunk = (e.hw + gridDim.y - 1) / gridDim.y;
  const int64_t p0 = blockIdx.y * chunk, p1 = min(e.hw, p0 + chunk);
  const acc_t mean = e.mean_of(plane), rstd = e.rstd_of(plane);
  acc_t v[4] = {0, 0, 0, 0};
  for (int64_t p = p0 + threadIdx.x; p < p1; p += blockDim.x) {
    const int64_t i = plane_offset(plane, p, e.c, e.hw, e.nhwc);
    const acc_t sc = e.scale.at(i, plane, e.c);
    const auto t = deconv::backward_terms<acc_t>(
        static_cast<acc_t>(gy[i]), static_cast<acc_t>(h[i]), mean, rstd, sc,
        e.shift.at(i, plane, e.c), e.act, e.slope);
    const acc_t g_n = t.g_a * sc;
    if (gscale_full) gscale_full[i] = t.g_a * t.n;
    if (gshift_full) gshift_full[i] = t.g_a;
    if (write_gh) gh[i] = static_cast<scalar_t>(g_n);
    v[0] += t.g_a;
    v[1] += t.g_a * t.n;
    v[2] += g_n;
    v[3] += g_n * t.n;
  }
  block_sum4(v);
  if (threadIdx.x == 0)
    for (int k = 0; k < 4; ++k) partial[(plane * gridDim.y + blockIdx.y) * 4 + k] = v[k];
}

// One thread per statistic: the means of g_n and g_n * n over its planes, in a fixed order
// (deterministic). mean_gn is (n_stats, 2).
template <typename acc_t>
__global__ void backward_finalize_kernel(const acc_t* __restrict__ partial,  // (N*C, splits, 4)
                                         int64_t n_stats, StatPlanes sp, int splits, int64_t hw,
                                         acc_t* __restrict__ mean_gn) {
  const int64_t s = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (s >= n_stats) return;
  const int64_t first = sp.first(s);
  acc_t g = 0, g_n = 0;
  for (int64_t k = 0; k < sp.members; ++k)
    for (int j = 0; j < splits; ++j) {
      const acc_t* q = partial + ((first + k * sp.stride) * splits + j) * 4;
      g += q[2];
      g_n += q[3];
    }
  const acc_t count = static_cast<acc_t>(sp.members * hw);
  mean_gn[2 * s] = g / count;
  mean_gn[2 * s + 1] = g_n / count;
}

// One thread per element of a per-channel or per-(sample, channel) grad_scale / grad_shift:
// the sum of partial column `col` over the planes and splits it covers (all samples when
// the affine term is shared by the batch).
template <typename acc_t>
__global__ void affine_grad_kernel(const acc_t* __restrict__ partial,  // (N*C, splits, 4)
                                   int64_t n, int64_t c, int splits, int col, bool per_sample,
                                   acc_t* __restrict__ out) {           // (N or 1, C)
  const int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (e >= (per_sample ? n : 1) * c) return;
  const int64_t ch = e % c;
  const int64_t n0 = per_sample ? e / c : 0, n1 = per_sample ? n0 + 1 : n;
  acc_t sum = 0;
  for (int64_t i = n0; i < n1; ++i)
    for (int j = 0; j < splits; ++j) sum += partial[((i * c + ch) * splits + j) * 4 + col];
  out[e] = sum;
}

template <typename scalar_t, typename acc_t>
__global__ void grad_h_kernel(const scalar_t* __restrict__ gy, const scalar_t* __restrict__ h,
                              Epilogue<acc_t> e,
                              const acc_t* __restrict__ mean_gn,  // (n_stats, 2)
                              scalar_t* __restrict__ gh, int64_t total) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t pl = plane_of(i, e.c, e.hw, e.nhwc);
    const int64_t s = e.sp.stat_of(pl);
    const acc_t sc = e.scale.at(i, pl, e.c), rstd = e.rstd[s];
    const auto t = deconv::backward_terms<acc_t>(
        static_cast<acc_t>(gy[i]), static_cast<acc_t>(h[i]), e.mean[s], rstd, sc,
        e.shift.at(i, pl, e.c), e.act, e.slope);
    gh[i] = static_cast<scalar_t>(
        deconv::grad_pre_norm<acc_t>(t.g_a * sc, t.n, rstd, mean_gn[2 * s], mean_gn[2 * s + 1]));
  }
}

// ------------------------------------------------------------------------------ host

int elementwise_grid(int64_t total) {
  return static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, 65535));
}

int blocks_of(int64_t threads) { return static_cast<int>((threads + kThreads - 1) / kThreads); }

int splits_of(int64_t hw) {
  return static_cast<int>(std::min<int64_t>((hw + kSplitElems - 1) / kSplitElems, kMaxSplits));
}

// `t` in the compute type, dense: no copy when it already is (float32 statistics always are).
at::Tensor in_acc(const at::Tensor& t, at::ScalarType acc) {
  return t.to(acc).contiguous();
}

// The operand of an optional scale/shift of shape (N or 1, C or 1, Ho or 1, Wo or 1); the
// tensor it reads is returned in `keep` (alive until the kernels are launched).
template <typename acc_t>
AffineArg<acc_t> affine_arg(const c10::optional<at::Tensor>& t, const at::Tensor& out,
                            at::MemoryFormat fmt, acc_t fill, at::ScalarType acc,
                            at::Tensor* keep) {
  if (!t.has_value() || !t->defined()) return AffineArg<acc_t>{nullptr, 0, 0, false, fill};
  TORCH_CHECK(t->device() == out.device(), "deconv_block: scale/shift must be on x's device");
  TORCH_CHECK(t->dim() == 4, "deconv_block: scale/shift must be 4-D");
  if (t->size(2) == 1 && t->size(3) == 1) {
    *keep = in_acc(*t, acc);
    const int64_t sc = keep->size(1) == 1 ? 0 : 1;
    const int64_t sn = keep->size(0) == 1 ? 0 : keep->size(1);
    return AffineArg<acc_t>{keep->data_ptr<acc_t>(), sn, sc, false, fill};
  }
  *keep = t->to(acc).expand(out.sizes()).contiguous(fmt);
  return AffineArg<acc_t>{keep->data_ptr<acc_t>(), 0, 0, true, fill};
}

void check_inputs(const at::Tensor& x, const at::Tensor& weight, at::IntArrayRef geometry) {
  TORCH_CHECK(geometry.size() == 6, "deconv_block: geometry must hold 6 ints, got ",
              geometry.size());
  TORCH_CHECK(x.is_cuda(), "deconv_block: x must be a CUDA tensor, got ", x.device());
  TORCH_CHECK(weight.device() == x.device(), "deconv_block: weight must be on x's device (",
              x.device(), "), got ", weight.device());
  TORCH_CHECK(x.dim() == 4 && weight.dim() == 4, "deconv_block: x and weight must be 4-D");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> deconv_block_fwd(
    const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,
    at::IntArrayRef geometry, int64_t groups, c10::string_view activation, double negative_slope,
    double eps) {
  check_inputs(x, weight, geometry);
  const c10::cuda::CUDAGuard guard(x.device());
  const Activation act = parse_activation(activation);
  const at::MemoryFormat fmt = output_format(x, weight);
  at::Tensor pre = at::conv_transpose2d(x.contiguous(fmt), weight, bias, geometry.slice(0, 2),
                                        geometry.slice(2, 2), geometry.slice(4, 2))
                       .contiguous(fmt);
  const int64_t n = pre.size(0), c = pre.size(1), hw = pre.size(2) * pre.size(3);
  TORCH_CHECK(groups == kBatch || (groups >= 0 && (groups == 0 || c % groups == 0)),
              "deconv_block: groups must divide the output channels (or be -1, BatchNorm)");
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  const at::ScalarType acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto acc_opts = x.options().dtype(acc);
  const int64_t n_stats = groups == kBatch ? c : n * groups;
  const auto stat_shape = groups == kBatch ? std::vector<int64_t>{1, c}
                                           : std::vector<int64_t>{n, groups};
  at::Tensor mean = at::empty(stat_shape, acc_opts), rstd = at::empty(stat_shape, acc_opts);
  at::Tensor y = at::empty_like(pre);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "deconv_block_fwd", [&] {
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    StatPlanes sp{c, 0, 0, 0};
    if (groups) {
      sp = stat_planes(n, c, groups);  // groups != 0: c / groups is defined
      const int splits = splits_of(hw);
      at::Tensor partial = at::empty({n * c, splits, 3}, acc_opts);
      plane_moments_kernel<scalar_t, acc_t><<<dim3(n * c, splits), kThreads, 0, stream>>>(
          pre.data_ptr<scalar_t>(), sp, hw, nhwc, partial.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      group_finalize_kernel<scalar_t, acc_t><<<blocks_of(n_stats), kThreads, 0, stream>>>(
          pre.data_ptr<scalar_t>(), partial.data_ptr<acc_t>(), n_stats, sp, splits, hw, nhwc,
          static_cast<acc_t>(eps), mean.data_ptr<acc_t>(), rstd.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    at::Tensor s_keep, t_keep;
    const Epilogue<acc_t> e{groups ? mean.data_ptr<acc_t>() : nullptr,
                            groups ? rstd.data_ptr<acc_t>() : nullptr,
                            sp,
                            affine_arg<acc_t>(scale, pre, fmt, acc_t(1), acc, &s_keep),
                            affine_arg<acc_t>(shift, pre, fmt, acc_t(0), acc, &t_keep),
                            act, static_cast<acc_t>(negative_slope), c, hw, nhwc};
    const int64_t total = pre.numel();
    forward_kernel<scalar_t, acc_t><<<elementwise_grid(total), kThreads, 0, stream>>>(
        pre.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), total, e);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, pre, mean, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deconv_block_bwd(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& pre_norm, const at::Tensor& mean, const at::Tensor& rstd,
    const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,
    bool has_bias, at::IntArrayRef geometry, int64_t groups, c10::string_view activation,
    double negative_slope, double eps) {
  check_inputs(x, weight, geometry);
  TORCH_CHECK(grad_y.device() == x.device() && pre_norm.device() == x.device(),
              "deconv_block: grad_y and pre_norm must be on x's device");
  const c10::cuda::CUDAGuard guard(x.device());
  const Activation act = parse_activation(activation);
  const at::MemoryFormat fmt = output_format(x, weight);
  const at::Tensor pre = pre_norm.contiguous(fmt);
  const at::Tensor gy = grad_y.to(pre.scalar_type()).contiguous(fmt);
  const int64_t n = pre.size(0), c = pre.size(1), hw = pre.size(2) * pre.size(3);
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast;
  const at::ScalarType acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto acc_opts = x.options().dtype(acc);
  at::Tensor gh = at::empty_like(pre);
  at::Tensor grad_scale = at::empty({0}, acc_opts), grad_shift = at::empty({0}, acc_opts);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "deconv_block_bwd", [&] {
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    const StatPlanes sp = groups ? stat_planes(n, c, groups) : StatPlanes{c, 0, 0, 0};
    const at::Tensor mean_a = groups ? in_acc(mean, acc) : mean;
    const at::Tensor rstd_a = groups ? in_acc(rstd, acc) : rstd;
    at::Tensor s_keep, t_keep;
    const AffineArg<acc_t> s = affine_arg<acc_t>(scale, pre, fmt, acc_t(1), acc, &s_keep);
    const AffineArg<acc_t> t = affine_arg<acc_t>(shift, pre, fmt, acc_t(0), acc, &t_keep);
    at::Tensor gsf = s.full ? at::empty_like(s_keep) : at::Tensor();
    at::Tensor gtf = t.full ? at::empty_like(t_keep) : at::Tensor();
    const Epilogue<acc_t> e{groups ? mean_a.data_ptr<acc_t>() : nullptr,
                            groups ? rstd_a.data_ptr<acc_t>() : nullptr,
                            sp, s, t, act, static_cast<acc_t>(negative_slope), c, hw, nhwc};
    const int splits = splits_of(hw);
    at::Tensor partial = at::empty({n * c, splits, 4}, acc_opts);
    backward_reduce_kernel<scalar_t, acc_t><<<dim3(n * c, splits), kThreads, 0, stream>>>(
        gy.data_ptr<scalar_t>(), pre.data_ptr<scalar_t>(), e,
        s.full ? gsf.data_ptr<acc_t>() : nullptr, t.full ? gtf.data_ptr<acc_t>() : nullptr,
        gh.data_ptr<scalar_t>(), groups == 0, partial.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    // grad_scale / grad_shift: partial columns 1 (g_a * n) and 0 (g_a), or the spatial terms
    auto affine_grad = [&](const at::Tensor& like, bool full, const at::Tensor& g_full, int col) {
      if (full) return at::sum_to(g_full, like.sizes()).to(like.scalar_type()).contiguous();
      const bool per_sample = like.size(0) != 1;
      at::Tensor g = at::empty({per_sample ? n : 1, c}, acc_opts);
      affine_grad_kernel<acc_t><<<blocks_of(g.numel()), kThreads, 0, stream>>>(
          partial.data_ptr<acc_t>(), n, c, splits, col, per_sample, g.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return at::sum_to(g.view({g.size(0), c, 1, 1}), like.sizes()).to(like.scalar_type())
          .contiguous();
    };
    if (scale.has_value() && scale->defined()) grad_scale = affine_grad(*scale, s.full, gsf, 1);
    if (shift.has_value() && shift->defined()) grad_shift = affine_grad(*shift, t.full, gtf, 0);
    if (groups) {
      const int64_t n_stats = groups == kBatch ? c : n * groups;
      at::Tensor mean_gn = at::empty({n_stats, 2}, acc_opts);
      backward_finalize_kernel<acc_t><<<blocks_of(n_stats), kThreads, 0, stream>>>(
          partial.data_ptr<acc_t>(), n_stats, sp, splits, hw, mean_gn.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      const int64_t total = pre.numel();
      grad_h_kernel<scalar_t, acc_t><<<elementwise_grid(total), kThreads, 0, stream>>>(
          gy.data_ptr<scalar_t>(), pre.data_ptr<scalar_t>(), e, mean_gn.data_ptr<acc_t>(),
          gh.data_ptr<scalar_t>(), total);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  auto grads = at::convolution_backward(gh, x.contiguous(fmt), weight,
                                        has_bias ? at::OptionalIntArrayRef({weight.size(1)})
                                                 : at::OptionalIntArrayRef(),
                                        geometry.slice(0, 2), geometry.slice(2, 2), {1, 1}, true,
                                        geometry.slice(4, 2), 1, {true, true, has_bias});
  at::Tensor grad_bias = has_bias ? std::get<2>(grads) : at::empty({0}, x.options());
  return {std::get<0>(grads), std::get<1>(grads), grad_bias, grad_scale, grad_shift};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastvae, CUDA, m) {
  m.impl("_deconv_block_fwd", &deconv_block_fwd);
  m.impl("_deconv_block_bwd", &deconv_block_bwd);
}

}  // namespace fastvae
