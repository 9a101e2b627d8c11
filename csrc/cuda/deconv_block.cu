// CUDA kernels of fastvae::_deconv_block_fwd / _deconv_block_bwd (schemas in csrc/ops.cpp,
// semantics in fastvae/reference.py), the same structure as csrc/cpu/deconv_block.cpp and
// the per-element math of csrc/common/deconv_epilogue.h.
//
// Forward: conv_transpose2d through ATen (cuDNN, bias fused) in x's memory format; a
// moments kernel (one block per (sample, channel) plane and split, Welford per thread on
// values shifted by the group's first element, Chan merge across the warp and block, in
// float32), a finalize kernel merging the partials of each (sample, group), then one
// elementwise kernel for normalize + affine/AdaIN + activation.
// Backward: a reduction kernel giving per-plane sums of g_a, g_a*n, g_n, g_n*n (and the
// spatial AdaIN gradients; grad_h directly without norm), a deterministic sum over splits,
// an elementwise grad_h kernel, then convolution_backward through ATen.
#include <ATen/Dispatch.h>
#include <ATen/ExpandUtils.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/conv_transpose2d.h>
#include <ATen/ops/convolution_backward.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
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

// grid (N*C, splits): moments of one split of a plane, shifted by shift[plane].
template <typename scalar_t, typename acc_t>
__global__ void plane_moments_kernel(const scalar_t* __restrict__ h,     // (N, C, H, W) dense
                                     const acc_t* __restrict__ shift,    // (N*C)
                                     int64_t c, int64_t hw, bool nhwc,
                                     acc_t* __restrict__ partial) {      // (N*C, splits, 3)
  const int64_t plane = blockIdx.x;
  const int64_t chunk = (hw + gridDim.y - 1) / gridDim.y;
  const int64_t p0 = blockIdx.y * chunk, p1 = min(hw, p0 + chunk);
  const acc_t k = shift[plane];
  Moments<acc_t> m{0, 0, 0};
  for (int64_t p = p0 + threadIdx.x; p < p1; p += blockDim.x)
    m = deconv::push(m, static_cast<acc_t>(h[plane_offset(plane, p, c, hw, nhwc)]) - k);
  m = block_merge(m);
  if (threadIdx.x == 0) {
    acc_t* out = partial + (plane * gridDim.y + blockIdx.y) * 3;
    out[0] = m.count;
    out[1] = m.mean;
    out[2] = m.m2;
  }
}

// Which planes (sample * C + channel) share a statistic: statistic s of `per_sample` ones
// per sample starts at plane (s / per_sample) * C + (s % per_sample) * width and has
// `members` planes `stride` apart. GroupNorm: per_sample = groups, width = C / groups,
// stride 1, members = C / groups; BatchNorm: per_sample = C, width 1, stride C, members N.
struct StatPlanes {
  int64_t c, per_sample, width, stride, members;
  __host__ __device__ int64_t first(int64_t s) const {
    return (s / per_sample) * c + (s % per_sample) * width;
  }
};

StatPlanes stat_planes(int64_t n, int64_t c, int64_t groups) {
  if (groups == kBatch) return StatPlanes{c, c, 1, c, n};
  return StatPlanes{c, groups, c / groups, 1, c / groups};
}

// One thread per statistic: merges its planes' partials into mean and rstd.
template <typename acc_t>
__global__ void group_finalize_kernel(const acc_t* __restrict__ partial,  // (N*C, splits, 3)
                                      const acc_t* __restrict__ shift,    // (N*C)
                                      int64_t n_stats, StatPlanes sp, int splits, acc_t eps,
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
  mean[s] = shift[first] + m.mean;
  rstd[s] = deconv::rstd_of(m, eps);
}

// Operands of the elementwise kernels: per-plane tables and per-element affine terms.
template <typename acc_t>
struct Epilogue {
  const acc_t* mean;   // (N*C)
  const acc_t* rstd;   // (N*C)
  const acc_t* scale;  // (N*C), or dense like the output when scale_full
  const acc_t* shift;
  bool scale_full, shift_full;
  Activation act;
  acc_t slope;
  int64_t c, hw;
  bool nhwc;
};

template <typename scalar_t, typename acc_t>
__global__ void forward_kernel(const scalar_t* __restrict__ h, scalar_t* __restrict__ y,
                               int64_t total, Epilogue<acc_t> e) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t pl = plane_of(i, e.c, e.hw, e.nhwc);
    y[i] = static_cast<scalar_t>(deconv::forward<acc_t>(
        static_cast<acc_t>(h[i]), e.mean[pl], e.rstd[pl], e.scale[e.scale_full ? i : pl],
        e.shift[e.shift_full ? i : pl], e.act, e.slope));
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
  acc_t v[4] = {0, 0, 0, 0};
  for (int64_t p = p0 + threadIdx.x; p < p1; p += blockDim.x) {
    const int64_t i = plane_offset(plane, p, e.c, e.hw, e.nhwc);
    const acc_t sc = e.scale[e.scale_full ? i : plane];
    const auto t = deconv::backward_terms<acc_t>(
        static_cast<acc_t>(gy[i]), static_cast<acc_t>(h[i]), e.mean[plane], e.rstd[plane], sc,
        e.shift[e.shift_full ? i : plane], e.act, e.slope);
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

template <typename scalar_t, typename acc_t>
__global__ void grad_h_kernel(const scalar_t* __restrict__ gy, const scalar_t* __restrict__ h,
                              Epilogue<acc_t> e, const acc_t* __restrict__ mean_gn,    // (N*C)
                              const acc_t* __restrict__ mean_gn_n,                     // (N*C)
                              scalar_t* __restrict__ gh, int64_t total) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t pl = plane_of(i, e.c, e.hw, e.nhwc);
    const acc_t sc = e.scale[e.scale_full ? i : pl];
    const auto t = deconv::backward_terms<acc_t>(
        static_cast<acc_t>(gy[i]), static_cast<acc_t>(h[i]), e.mean[pl], e.rstd[pl], sc,
        e.shift[e.shift_full ? i : pl], e.act, e.slope);
    gh[i] = static_cast<scalar_t>(
        deconv::grad_pre_norm<acc_t>(t.g_a * sc, t.n, e.rstd[pl], mean_gn[pl], mean_gn_n[pl]));
  }
}

// ------------------------------------------------------------------------------ host

int elementwise_grid(int64_t total) {
  return static_cast<int>(std::min<int64_t>((total + kThreads - 1) / kThreads, 65535));
}

int splits_of(int64_t hw) {
  return static_cast<int>(std::min<int64_t>((hw + kSplitElems - 1) / kSplitElems, kMaxSplits));
}

// (N, groups) or, for BatchNorm, (1, C) statistics -> (N*C) table; `none` without norm.
at::Tensor per_plane(const at::Tensor& per_group, int64_t n, int64_t c, int64_t groups,
                     double none, const at::TensorOptions& acc) {
  if (groups == 0) return at::full({n * c}, none, acc);
  if (groups == kBatch) {
    return per_group.to(acc.dtype()).view({1, c}).expand({n, c}).reshape({n * c}).contiguous();
  }
  return per_group.to(acc.dtype()).view({n, groups, 1}).expand({n, groups, c / groups})
      .reshape({n * c}).contiguous();
}

// scale/shift as the kernels read them: (N*C) table, or dense in the output's layout.
at::Tensor affine_operand(const c10::optional<at::Tensor>& t, const at::Tensor& out,
                          at::MemoryFormat fmt, double fill, const at::TensorOptions& acc,
                          bool* full) {
  const int64_t n = out.size(0), c = out.size(1);
  *full = false;
  if (!t.has_value() || !t->defined()) return at::full({n * c}, fill, acc);
  TORCH_CHECK(t->device() == out.device(), "deconv_block: scale/shift must be on x's device");
  if (t->size(2) == 1 && t->size(3) == 1)
    return t->to(acc.dtype()).expand({n, c, 1, 1}).reshape({n * c}).contiguous();
  *full = true;
  return t->to(acc.dtype()).expand(out.sizes()).contiguous(fmt);
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
  const auto acc = x.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  const int64_t n_stats = groups == kBatch ? c : n * groups;
  const auto stat_shape = groups == kBatch ? std::vector<int64_t>{1, c}
                                           : std::vector<int64_t>{n, groups};
  at::Tensor mean = at::empty(stat_shape, acc), rstd = at::empty(stat_shape, acc);
  at::Tensor y = at::empty_like(pre);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "deconv_block_fwd", [&] {
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    if (groups) {
      // every plane's shift: pixel 0 of its statistic's first plane
      const at::Tensor pixel0 = pre.select(3, 0).select(2, 0).to(acc.dtype());  // (N, C)
      const at::Tensor shift_t =
          groups == kBatch
              ? pixel0.select(0, 0).view({1, c}).expand({n, c}).reshape({n * c}).contiguous()
              : pixel0.view({n, groups, c / groups}).select(2, 0).view({n, groups, 1})
                    .expand({n, groups, c / groups}).reshape({n * c}).contiguous();
      const StatPlanes sp = stat_planes(n, c, groups);  // groups != 0: c / groups is defined
      const int splits = splits_of(hw);
      at::Tensor partial = at::empty({n * c, splits, 3}, acc);
      plane_moments_kernel<scalar_t, acc_t><<<dim3(n * c, splits), kThreads, 0, stream>>>(
          pre.data_ptr<scalar_t>(), shift_t.data_ptr<acc_t>(), c, hw, nhwc,
          partial.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      group_finalize_kernel<acc_t><<<(n_stats + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
          partial.data_ptr<acc_t>(), shift_t.data_ptr<acc_t>(), n_stats, sp, splits,
          static_cast<acc_t>(eps), mean.data_ptr<acc_t>(), rstd.data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const at::Tensor mean_p = per_plane(mean, n, c, groups, 0.0, acc);
    const at::Tensor rstd_p = per_plane(rstd, n, c, groups, 1.0, acc);
    bool sfull, tfull;
    const at::Tensor s = affine_operand(scale, pre, fmt, 1.0, acc, &sfull);
    const at::Tensor t = affine_operand(shift, pre, fmt, 0.0, acc, &tfull);
    const Epilogue<acc_t> e{mean_p.data_ptr<acc_t>(), rstd_p.data_ptr<acc_t>(), s.data_ptr<acc_t>(),
                            t.data_ptr<acc_t>(), sfull, tfull, act,
                            static_cast<acc_t>(negative_slope), c, hw, nhwc};
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
  const auto acc = x.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  at::Tensor gh = at::empty_like(pre);
  at::Tensor grad_scale = at::empty({0}, acc), grad_shift = at::empty({0}, acc);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "deconv_block_bwd", [&] {
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    const at::Tensor mean_p = per_plane(mean, n, c, groups, 0.0, acc);
    const at::Tensor rstd_p = per_plane(rstd, n, c, groups, 1.0, acc);
    bool sfull, tfull;
    const at::Tensor s = affine_operand(scale, pre, fmt, 1.0, acc, &sfull);
    const at::Tensor t = affine_operand(shift, pre, fmt, 0.0, acc, &tfull);
    at::Tensor gsf = sfull ? at::empty_like(s) : at::Tensor();
    at::Tensor gtf = tfull ? at::empty_like(t) : at::Tensor();
    const Epilogue<acc_t> e{mean_p.data_ptr<acc_t>(), rstd_p.data_ptr<acc_t>(), s.data_ptr<acc_t>(),
                            t.data_ptr<acc_t>(), sfull, tfull, act,
                            static_cast<acc_t>(negative_slope), c, hw, nhwc};
    const int splits = splits_of(hw);
    at::Tensor partial = at::empty({n * c, splits, 4}, acc);
    backward_reduce_kernel<scalar_t, acc_t><<<dim3(n * c, splits), kThreads, 0, stream>>>(
        gy.data_ptr<scalar_t>(), pre.data_ptr<scalar_t>(), e,
        sfull ? gsf.data_ptr<acc_t>() : nullptr, tfull ? gtf.data_ptr<acc_t>() : nullptr,
        gh.data_ptr<scalar_t>(), groups == 0, partial.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const at::Tensor sums = partial.sum(1).view({n, c, 4});  // fixed order: deterministic
    if (scale.has_value() && scale->defined()) {
      const at::Tensor g = sfull ? gsf : sums.select(2, 1).reshape({n, c, 1, 1});
      grad_scale = at::sum_to(g, scale->sizes()).to(scale->scalar_type()).contiguous();
    }
    if (shift.has_value() && shift->defined()) {
      const at::Tensor g = tfull ? gtf : sums.select(2, 0).reshape({n, c, 1, 1});
      grad_shift = at::sum_to(g, shift->sizes()).to(shift->scalar_type()).contiguous();
    }
    if (groups) {
      // each statistic's means of g_n and g_n * n over its planes, per plane
      auto group_mean = [&](int k) {
        if (groups == kBatch) {
          return sums.select(2, k).sum(0, true).div(static_cast<double>(n * hw))
              .expand({n, c}).reshape({n * c}).contiguous();
        }
        const int64_t cg = c / groups;
        return sums.select(2, k).reshape({n, groups, cg}).sum(2, true)
            .div(static_cast<double>(cg * hw)).expand({n, groups, cg}).reshape({n * c})
            .contiguous();
      };
      const at::Tensor mean_gn = group_mean(2), mean_gn_n = group_mean(3);
      const int64_t total = pre.numel();
      grad_h_kernel<scalar_t, acc_t><<<elementwise_grid(total), kThreads, 0, stream>>>(
          gy.data_ptr<scalar_t>(), pre.data_ptr<scalar_t>(), e, mean_gn.data_ptr<acc_t>(),
          mean_gn_n.data_ptr<acc_t>(), gh.data_ptr<scalar_t>(), total);
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
