// reparam_kl on CUDA: one pass forward, one pass backward, noise drawn in the kernel.
//
// The same math as csrc/cpu/reparam_kl.cpp, through the same headers (common/philox.h,
// common/reparam_kl.h). The (B, D) view is split into row-aligned tasks of kChunk
// elements; blocks take tasks grid-stride, each thread moving 128-bit vectors. Forward:
// each task's KL partial sum is reduced in a fixed order (warp shuffles, then the warps
// through shared memory) and stored to its own slot; a second kernel adds a row's slots in
// a fixed order. No float atomics, so kl is the same on every run. Backward needs no
// reduction: grad_kl is one value per task.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <utility>

#include "common/checks.h"
#include "common/philox.h"
#include "common/reparam_kl.h"

namespace fastvae {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kItems = 4;  // 128-bit vectors per thread per task
constexpr int kWarps = kThreads / 32;

// N elements moved as one 128-bit load or store.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};


// The (B, D) view split into row-aligned tasks of `chunk` elements.
struct Tasks {
  int64_t cols, per_row, chunk, count;
  __device__ int64_t row(int64_t t) const { return t / per_row; }
  __device__ int64_t begin(int64_t t) const { return row(t) * cols + (t % per_row) * chunk; }
  __device__ int64_t end(int64_t t) const {
    const int64_t stop = (t % per_row + 1) * chunk;
    return row(t) * cols + (stop < cols ? stop : cols);
  }
};

// The seed: read on the device when it lives there (no host sync), else passed by value.
__device__ __forceinline__ uint64_t load_seed(const int64_t* seed_ptr, uint64_t seed_value) {
  return seed_ptr != nullptr ? static_cast<uint64_t>(*seed_ptr) : seed_value;
}

// Sum of `v` over the block, the same order on every run; the result is valid in thread 0.
template <typename acc_t>
__device__ acc_t block_sum(acc_t v) {
  __shared__ acc_t warp_sums[kWarps];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kWarps ? warp_sums[lane] : acc_t(0);
    for (int offset = kWarps / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  __syncthreads();  // warp_sums is reused by the next task
  return v;
}

// The noise of element i (the flattened row-major index).
template <typename scalar_t, typename acc_t, bool kHasEps>
__device__ __forceinline__ acc_t noise(const scalar_t* eps_v, int k, uint64_t seed, int64_t i) {
  if constexpr (kHasEps) {
    return static_cast<acc_t>(eps_v[k]);
  } else {
    return static_cast<acc_t>(randn(seed, static_cast<uint64_t>(i)));
  }
}

// z for every element, and each task's KL partial sum into partial[task].
// mu, logvar, eps, z: (B * D,) contiguous; partial: (tasks.count,).
template <typename scalar_t, int kVec, bool kHasEps>
__global__ void __launch_bounds__(kThreads)
reparam_kl_fwd_kernel(const scalar_t* __restrict__ mu, const scalar_t* __restrict__ logvar,
                      const scalar_t* __restrict__ eps, const int64_t* seed_ptr,
                      uint64_t seed_value, scalar_t* __restrict__ z,
                      at::opmath_type<scalar_t>* __restrict__ partial, Tasks tasks) {
  using acc_t = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t, kVec>;
  const uint64_t seed = load_seed(seed_ptr, seed_value);
  for (int64_t t = blockIdx.x; t < tasks.count; t += gridDim.x) {
    const int64_t begin = tasks.begin(t), end = tasks.end(t);
    acc_t kl = 0;
    for (int item = 0; item < kItems; ++item) {
      const int64_t i = begin + (static_cast<int64_t>(item) * kThreads + threadIdx.x) * kVec;
      if (i >= end) break;  // cols % kVec == 0, so a vector never crosses the end
      const P m = *reinterpret_cast<const P*>(mu + i);
      const P lv = *reinterpret_cast<const P*>(logvar + i);
      P e;
      if constexpr (kHasEps) e = *reinterpret_cast<const P*>(eps + i);
      P out;
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const acc_t mk = static_cast<acc_t>(m.v[k]), lvk = static_cast<acc_t>(lv.v[k]);
        const acc_t std = expf(0.5f * lvk);
        const acc_t ek = noise<scalar_t, acc_t, kHasEps>(e.v, k, seed, i + k);
        out.v[k] = static_cast<scalar_t>(reparam_z(mk, std, ek));
        kl += kl_term(mk, lvk, std * std);
      }
      *reinterpret_cast<P*>(z + i) = out;
    }
    kl = block_sum(kl);
    if (threadIdx.x == 0) partial[t] = kl;
  }
}

// kl[row] = the row's partial sums added in task order; one warp per row.
template <typename acc_t>
__global__ void reparam_kl_sum_kernel(const acc_t* __restrict__ partial, acc_t* __restrict__ kl,
                                      int64_t rows, int64_t per_row) {
  const int64_t row = blockIdx.x;
  if (row >= rows) return;
  acc_t s = 0;
  for (int64_t c = threadIdx.x; c < per_row; c += 32) s += partial[row * per_row + c];
  for (int offset = 16; offset > 0; offset /= 2) s += __shfl_down_sync(0xffffffffu, s, offset);
  if (threadIdx.x == 0) kl[row] = s;
}

// grad_mu, grad_logvar for every element; grad_kl: (B,) in the accumulation type.
template <typename scalar_t, int kVec, bool kHasEps>
__global__ void __launch_bounds__(kThreads)
reparam_kl_bwd_kernel(const scalar_t* __restrict__ grad_z,
                      const at::opmath_type<scalar_t>* __restrict__ grad_kl,
                      const scalar_t* __restrict__ mu, const scalar_t* __restrict__ logvar,
                      const scalar_t* __restrict__ eps, const int64_t* seed_ptr,
                      uint64_t seed_value, scalar_t* __restrict__ grad_mu,
                      scalar_t* __restrict__ grad_logvar, Tasks tasks) {
  using acc_t = at::opmath_type<scalar_t>;
  using P = Pack<scalar_t, kVec>;
  const uint64_t seed = load_seed(seed_ptr, seed_value);
  for (int64_t t = blockIdx.x; t < tasks.count; t += gridDim.x) {
    const int64_t begin = tasks.begin(t), end = tasks.end(t);
    const acc_t gkl = grad_kl[tasks.row(t)];
    for (int item = 0; item < kItems; ++item) {
      const int64_t i = begin + (static_cast<int64_t>(item) * kThreads + threadIdx.x) * kVec;
      if (i >= end) break;
      const P gz = *reinterpret_cast<const P*>(grad_z + i);
      const P m = *reinterpret_cast<const P*>(mu + i);
      const P lv = *reinterpret_cast<const P*>(logvar + i);
      P e;
      if constexpr (kHasEps) e = *reinterpret_cast<const P*>(eps + i);
      P gm, glv;
#pragma unroll
      for (int k = 0; k < kVec; ++k) {
        const acc_t gzk = static_cast<acc_t>(gz.v[k]), lvk = static_cast<acc_t>(lv.v[k]);
        const acc_t std = expf(0.5f * lvk);
        const acc_t ek = noise<scalar_t, acc_t, kHasEps>(e.v, k, seed, i + k);
        gm.v[k] = static_cast<scalar_t>(reparam_kl_grad_mu(gzk, gkl, static_cast<acc_t>(m.v[k])));
        glv.v[k] = static_cast<scalar_t>(reparam_kl_grad_logvar(gzk, gkl, std, std * std, ek));
      }
      *reinterpret_cast<P*>(grad_mu + i) = gm;
      *reinterpret_cast<P*>(grad_logvar + i) = glv;
    }
  }
}

// 128-bit vectors when every pointer is 16-byte aligned and rows are whole vectors,
// else one element at a time.
template <typename scalar_t>
bool can_vectorize(int64_t cols, std::initializer_list<const void*> ptrs) {
  constexpr int vec = 16 / sizeof(scalar_t);
  if (cols % vec != 0) return false;
  for (const void* p : ptrs) {
    if (p != nullptr && reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  }
  return true;
}

Tasks make_tasks(const at::Tensor& mu, int vec) {
  Tasks t;
  const int64_t rows = mu.size(0);
  t.cols = mu.numel() / rows;
  t.chunk = static_cast<int64_t>(kThreads) * kItems * vec;
  t.per_row = std::max<int64_t>(1, (t.cols + t.chunk - 1) / t.chunk);
  t.count = rows * t.per_row;
  return t;
}

int grid_size(int64_t tasks) {
  int device = 0, sms = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return static_cast<int>(std::min<int64_t>(tasks, static_cast<int64_t>(sms) * 8));
}

// (device pointer or nullptr, host value): a CUDA seed is read by the kernel.
std::pair<const int64_t*, uint64_t> seed_arg(const at::Tensor& seed, const at::Tensor& mu) {
  if (seed.is_cuda()) {
    TORCH_CHECK(seed.device() == mu.device(), "seed must be on the CPU or on mu's device (",
                mu.device(), "), got ", seed.device());
    return {seed.const_data_ptr<int64_t>(), 0};
  }
  return {nullptr, static_cast<uint64_t>(seed.item<int64_t>())};
}

void check_cuda(const at::Tensor& mu) {
  TORCH_CHECK(mu.is_cuda(), "mu must be a CUDA tensor, got ", mu.device());
  TORCH_CHECK(mu.scalar_type() != at::kDouble,
              "mu: float64 is supported on the CPU only; on CUDA use float32, float16 or bfloat16");
}

// float32, float16, bfloat16: the CUDA dtypes of the contract (float64 is CPU-only).
#define FASTVAE_DISPATCH_CUDA_FLOATS(TYPE, NAME, ...)                    \
  AT_DISPATCH_SWITCH(TYPE, NAME, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)              \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

std::tuple<at::Tensor, at::Tensor> reparam_kl_fwd(const at::Tensor& mu, const at::Tensor& logvar,
                                                  const c10::optional<at::Tensor>& eps,
                                                  const at::Tensor& seed) {
  check_reparam_kl_args(mu, logvar, eps, seed);
  check_cuda(mu);
  const c10::cuda::CUDAGuard guard(mu.device());
  const at::Tensor mu_c = mu.contiguous(), logvar_c = logvar.contiguous();
  const at::Tensor eps_c = eps.has_value() ? eps->contiguous() : at::Tensor();
  const int64_t* seed_ptr;
  uint64_t seed_value;
  std::tie(seed_ptr, seed_value) = seed_arg(seed, mu);
  const auto acc_type = at::kFloat;
  at::Tensor z = at::empty(mu.sizes(), mu.options());
  at::Tensor kl = at::empty({mu.size(0)}, mu.options().dtype(acc_type));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FASTVAE_DISPATCH_CUDA_FLOATS(mu.scalar_type(), "reparam_kl_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* m = mu_c.const_data_ptr<scalar_t>();
    const scalar_t* lv = logvar_c.const_data_ptr<scalar_t>();
    const scalar_t* e = eps_c.defined() ? eps_c.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* zp = z.mutable_data_ptr<scalar_t>();
    constexpr int kVec = 16 / sizeof(scalar_t);
    const bool vec = can_vectorize<scalar_t>(mu.numel() / mu.size(0), {m, lv, e, zp});
    const Tasks tasks = make_tasks(mu, vec ? kVec : 1);
    at::Tensor partial = at::empty({tasks.count}, kl.options());
    acc_t* pp = partial.mutable_data_ptr<acc_t>();
    const int grid = grid_size(tasks.count);
    auto launch = [&](auto vec_c, auto has_eps_c) {
      reparam_kl_fwd_kernel<scalar_t, decltype(vec_c)::value, decltype(has_eps_c)::value>
          <<<grid, kThreads, 0, stream>>>(m, lv, e, seed_ptr, seed_value, zp, pp, tasks);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    using V = std::integral_constant<int, kVec>;
    using S = std::integral_constant<int, 1>;
    using Y = std::true_type;
    using N = std::false_type;
    if (vec) {
      e ? launch(V{}, Y{}) : launch(V{}, N{});
    } else {
      e ? launch(S{}, Y{}) : launch(S{}, N{});
    }
    reparam_kl_sum_kernel<acc_t><<<mu.size(0), 32, 0, stream>>>(
        pp, kl.mutable_data_ptr<acc_t>(), mu.size(0), tasks.per_row);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {z, kl};
}

std::tuple<at::Tensor, at::Tensor> reparam_kl_bwd(const at::Tensor& grad_z, const at::Tensor& grad_kl,
                                                  const at::Tensor& mu, const at::Tensor& logvar,
                                                  const c10::optional<at::Tensor>& eps,
                                                  const at::Tensor& seed) {
  check_reparam_kl_args(mu, logvar, eps, seed);
  check_cuda(mu);
  check_like(grad_z, "grad_z", mu);
  check_float_tensor(grad_kl, "grad_kl");
  TORCH_CHECK(grad_kl.dim() == 1 && grad_kl.size(0) == mu.size(0),
              "grad_kl must have shape (B,) = (", mu.size(0), ",), got ", grad_kl.sizes());
  TORCH_CHECK(grad_kl.device() == mu.device(), "grad_kl must be on mu's device (", mu.device(),
              "), got ", grad_kl.device());
  const c10::cuda::CUDAGuard guard(mu.device());
  const at::Tensor mu_c = mu.contiguous(), logvar_c = logvar.contiguous();
  const at::Tensor grad_z_c = grad_z.contiguous();
  const at::Tensor eps_c = eps.has_value() ? eps->contiguous() : at::Tensor();
  const int64_t* seed_ptr;
  uint64_t seed_value;
  std::tie(seed_ptr, seed_value) = seed_arg(seed, mu);
  const auto acc_type = at::kFloat;
  const at::Tensor grad_kl_c = grad_kl.to(acc_type).contiguous();
  at::Tensor grad_mu = at::empty(mu.sizes(), mu.options());
  at::Tensor grad_logvar = at::empty(mu.sizes(), mu.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  FASTVAE_DISPATCH_CUDA_FLOATS(mu.scalar_type(), "reparam_kl_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gz = grad_z_c.const_data_ptr<scalar_t>();
    const acc_t* gkl = grad_kl_c.const_data_ptr<acc_t>();
    const scalar_t* m = mu_c.const_data_ptr<scalar_t>();
    const scalar_t* lv = logvar_c.const_data_ptr<scalar_t>();
    const scalar_t* e = eps_c.defined() ? eps_c.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* gm = grad_mu.mutable_data_ptr<scalar_t>();
    scalar_t* glv = grad_logvar.mutable_data_ptr<scalar_t>();
    constexpr int kVec = 16 / sizeof(scalar_t);
    const bool vec = can_vectorize<scalar_t>(mu.numel() / mu.size(0), {gz, m, lv, e, gm, glv});
    const Tasks tasks = make_tasks(mu, vec ? kVec : 1);
    const int grid = grid_size(tasks.count);
    auto launch = [&](auto vec_c, auto has_eps_c) {
      reparam_kl_bwd_kernel<scalar_t, decltype(vec_c)::value, decltype(has_eps_c)::value>
          <<<grid, kThreads, 0, stream>>>(gz, gkl, m, lv, e, seed_ptr, seed_value, gm, glv, tasks);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    using V = std::integral_constant<int, kVec>;
    using S = std::integral_constant<int, 1>;
    using Y = std::true_type;
    using N = std::false_type;
    if (vec) {
      e ? launch(V{}, Y{}) : launch(V{}, N{});
    } else {
      e ? launch(S{}, Y{}) : launch(S{}, N{});
    }
  });
  return {grad_mu, grad_logvar};
}

}  // namespace
}  // namespace cuda
}  // namespace fastvae

TORCH_LIBRARY_IMPL(fastvae, CUDA, m) {
  m.impl("_reparam_kl_fwd", &fastvae::cuda::reparam_kl_fwd);
  m.impl("_reparam_kl_bwd", &fastvae::cuda::reparam_kl_bwd);
}
