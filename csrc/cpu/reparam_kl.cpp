// reparam_kl on the CPU: one pass forward, one pass backward, noise drawn in the kernel.
//
// Forward reads mu and logvar (and eps when given), writes z and the per-sample KL; with
// eps = None the noise is Philox (common/philox.h) and nothing is read for it. Backward
// reads grad_z, mu and logvar and regenerates the same noise from (seed, i).
//
// Work is split into chunks (tasks) of at most kChunk elements that never straddle a row
// of the (B, D) view; each chunk's KL partial sum has a fixed order, and a row's partials
// are added in chunk order, so kl does not depend on the thread count or the schedule.
// Inside a chunk, blocks of kLanes elements are staged through small arrays: integer
// Philox on the 64-bit slots of SSE2/AVX2/AVX-512 registers (cpu/philox_lanes.h),
// Box-Muller and float32's std = exp(logvar / 2) (exp_f, common/reparam_kl.h) in loops gcc
// vectorizes, the rest in Vectorized. Built once per CPU capability (cpu/capability.h).
#include "cpu/capability.h"

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/checks.h"
#include "common/philox.h"
#include "common/reparam_kl.h"
#include "cpu/huge_page_empty.h"
#include "cpu/philox_lanes.h"

namespace fastvae::cpu::CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

using philox_lanes::kLanes;             // elements per block
constexpr int64_t kChunk = 8192;        // elements per KL partial sum (and per task at most)
constexpr int64_t kGrainElems = 16384;  // below this many elements, one thread

// out[l] = tl.randn(seed, offset + l) for l < kLanes.
inline void randn_block(uint64_t seed, uint64_t offset, float* out) {
  alignas(64) uint32_t i1[kLanes], i2[kLanes];
  philox_lanes::philox_block(seed, offset, i1, i2);
  alignas(64) float r2[kLanes], c[kLanes];
  for (int l = 0; l < kLanes; ++l) {  // auto-vectorized: the header math is branch-free
    r2[l] = box_muller_radius_sq(i1[l]);
    c[l] = box_muller_cos(i2[l]);
  }
  for (int64_t l = 0; l < kLanes; l += Vectorized<float>::size()) {
    (Vectorized<float>::loadu(r2 + l).sqrt() * Vectorized<float>::loadu(c + l)).store(out + l);
  }
}

// The kLanes acc_t values at src[0, n): src itself when it already is a full block of
// acc_t, else converted into buf, with 0 past n (a zero KL term).
template <typename scalar_t, typename acc_t>
inline const acc_t* load_lanes(const scalar_t* src, int64_t n, acc_t* buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (n == kLanes) return src;
  }
  for (int64_t l = 0; l < kLanes; ++l) buf[l] = l < n ? static_cast<acc_t>(src[l]) : acc_t(0);
  return buf;
}

// Where to compute the kLanes outputs for dst[0, n): dst itself when it can take a full
// block of acc_t, else buf (then store_lanes converts and copies).
template <typename scalar_t, typename acc_t>
inline acc_t* out_lanes(scalar_t* dst, int64_t n, acc_t* buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (n == kLanes) return dst;
  }
  return buf;
}

template <typename scalar_t, typename acc_t>
inline void store_lanes(const acc_t* src, int64_t n, scalar_t* dst) {
  if (static_cast<const void*>(src) == static_cast<const void*>(dst)) return;
  for (int64_t l = 0; l < n; ++l) dst[l] = static_cast<scalar_t>(src[l]);
}

// The noise of elements [i, i + kLanes): given, or drawn from the seed.
template <typename scalar_t, typename acc_t>
inline const acc_t* noise_lanes(const scalar_t* eps, uint64_t seed, int64_t i, int64_t n,
                                acc_t* buf) {
  if (eps != nullptr) return load_lanes(eps + i, n, buf);
  if (n < kLanes) {
    // A row's tail, one element at a time through the scalar randn the CUDA kernels
    // run: the tests' odd sizes check that code path too.
    for (int64_t l = 0; l < kLanes; ++l) {
      buf[l] = l < n ? static_cast<acc_t>(randn(seed, static_cast<uint64_t>(i + l))) : acc_t(0);
    }
    return buf;
  }
  if constexpr (std::is_same_v<acc_t, float>) {
    randn_block(seed, static_cast<uint64_t>(i), buf);
  } else {
    alignas(64) float drawn[kLanes];
    randn_block(seed, static_cast<uint64_t>(i), drawn);
    for (int l = 0; l < kLanes; ++l) buf[l] = static_cast<acc_t>(drawn[l]);
  }
  return buf;
}

// std = exp(logvar / 2) of a block's kLanes lanes: float32 by exp_f in a loop gcc
// vectorizes (common/reparam_kl.h), float64 by Vectorized's exp.
template <typename acc_t>
inline void std_lanes(const acc_t* logvar, acc_t* std) {
  if constexpr (std::is_same_v<acc_t, float>) {
    for (int l = 0; l < kLanes; ++l) std[l] = exp_f(0.5f * logvar[l]);
  } else {
    using Vec = Vectorized<acc_t>;
    for (int64_t l = 0; l < kLanes; l += Vec::size()) {
      (Vec::loadu(logvar + l) * Vec(acc_t(0.5))).exp().store(std + l);
    }
  }
}

// The sum of kParts vectors' lanes, in a fixed order.
template <int kParts, typename acc_t>
inline acc_t sum_lanes(const Vectorized<acc_t> (&parts)[kParts]) {
  acc_t s = 0;
  for (int p = 0; p < kParts; ++p) {
    alignas(64) acc_t lanes[Vectorized<acc_t>::size()];
    parts[p].store(lanes);
    for (int l = 0; l < Vectorized<acc_t>::size(); ++l) s += lanes[l];
  }
  return s;
}

// Elements [begin, end) of one row: writes z, returns the chunk's KL partial sum.
template <typename scalar_t>
at::opmath_type<scalar_t> fwd_chunk(const scalar_t* mu, const scalar_t* logvar,
                                    const scalar_t* eps, uint64_t seed, scalar_t* z,
                                    int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  // One KL accumulator per vector of a block: each lane adds kChunk / kLanes terms at most.
  constexpr int kParts = kLanes / Vec::size();
  Vec kl[kParts];
  for (Vec& part : kl) part = Vec(acc_t(0));
  for (int64_t i = begin; i < end; i += kLanes) {
    const int64_t n = std::min(kLanes, end - i);
    alignas(64) acc_t m_buf[kLanes], lv_buf[kLanes], e_buf[kLanes], z_buf[kLanes];
    const acc_t* m = load_lanes(mu + i, n, m_buf);
    const acc_t* lv = load_lanes(logvar + i, n, lv_buf);
    const acc_t* e = noise_lanes(eps, seed, i, n, e_buf);
    acc_t* out = out_lanes(z + i, n, z_buf);
    alignas(64) acc_t std_buf[kLanes];
    std_lanes(lv, std_buf);
    for (int p = 0; p < kParts; ++p) {
      const int64_t l = p * Vec::size();
      const Vec mv = Vec::loadu(m + l), lvv = Vec::loadu(lv + l);
      const Vec std = Vec::loadu(std_buf + l);
      reparam_z(mv, std, Vec::loadu(e + l)).store(out + l);
      kl[p] += kl_term(mv, lvv, std * std);
    }
    store_lanes(out, n, z + i);
  }
  return sum_lanes(kl);
}

template <typename scalar_t>
void bwd_chunk(const scalar_t* grad_z, at::opmath_type<scalar_t> grad_kl, const scalar_t* mu,
               const scalar_t* logvar, const scalar_t* eps, uint64_t seed, scalar_t* grad_mu,
               scalar_t* grad_logvar, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  using Vec = Vectorized<acc_t>;
  const Vec gkl(grad_kl);
  for (int64_t i = begin; i < end; i += kLanes) {
    const int64_t n = std::min(kLanes, end - i);
    alignas(64) acc_t gz_buf[kLanes], m_buf[kLanes], lv_buf[kLanes], e_buf[kLanes];
    alignas(64) acc_t gm_buf[kLanes], glv_buf[kLanes];
    const acc_t* gz = load_lanes(grad_z + i, n, gz_buf);
    const acc_t* m = load_lanes(mu + i, n, m_buf);
    const acc_t* lv = load_lanes(logvar + i, n, lv_buf);
    const acc_t* e = noise_lanes(eps, seed, i, n, e_buf);
    acc_t* gm = out_lanes(grad_mu + i, n, gm_buf);
    acc_t* glv = out_lanes(grad_logvar + i, n, glv_buf);
    alignas(64) acc_t std_buf[kLanes];
    std_lanes(lv, std_buf);
    for (int64_t l = 0; l < kLanes; l += Vec::size()) {
      const Vec gzv = Vec::loadu(gz + l);
      const Vec std = Vec::loadu(std_buf + l);
      reparam_kl_grad_mu(gzv, gkl, Vec::loadu(m + l)).store(gm + l);
      reparam_kl_grad_logvar(gzv, gkl, std, std * std, Vec::loadu(e + l)).store(glv + l);
    }
    store_lanes(gm, n, grad_mu + i);
    store_lanes(glv, n, grad_logvar + i);
  }
}

// The (B, D) view split into row-aligned chunks: task t covers chunk t % per_row of row
// t / per_row.
struct Chunks {
  int64_t rows, cols, per_row;
  explicit Chunks(const at::Tensor& mu)
      : rows(mu.size(0)), cols(rows ? mu.numel() / rows : 0),
        per_row(std::max<int64_t>(1, (cols + kChunk - 1) / kChunk)) {}
  int64_t tasks() const { return rows * per_row; }
  int64_t begin(int64_t t) const { return (t / per_row) * cols + (t % per_row) * kChunk; }
  int64_t end(int64_t t) const {
    return (t / per_row) * cols + std::min(cols, (t % per_row + 1) * kChunk);
  }
  int64_t grain() const { return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, std::min(cols, kChunk))); }
};

// body(t) for every task t, on at::parallel_for's threads. Each thread takes batches of
// `grain` tasks from a shared counter rather than a fixed 1/n of them, so a thread that
// shares its core with another process does not hold the others up. Results stay
// deterministic: every task writes its own slots.
template <typename Body>
void for_each_task(const Chunks& chunks, const Body& body) {
  const int64_t tasks = chunks.tasks(), grain = chunks.grain();
  const int threads = at::get_num_threads();
  if (tasks <= grain || threads == 1) {
    for (int64_t t = 0; t < tasks; ++t) body(t);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    for (int64_t t0 = next.fetch_add(grain); t0 < tasks; t0 = next.fetch_add(grain)) {
      for (int64_t t = t0; t < std::min(tasks, t0 + grain); ++t) body(t);
    }
  });
}

uint64_t seed_value(const at::Tensor& seed) {
  return static_cast<uint64_t>(seed.item<int64_t>());  // Triton reads the seed as uint64
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> reparam_kl_fwd(const at::Tensor& mu, const at::Tensor& logvar,
                                                  const c10::optional<at::Tensor>& eps,
                                                  const at::Tensor& seed) {
  check_reparam_kl_args(mu, logvar, eps, seed);
  const at::Tensor mu_c = mu.contiguous(), logvar_c = logvar.contiguous();
  const at::Tensor eps_c = eps.has_value() ? eps->contiguous() : at::Tensor();
  const uint64_t s = seed_value(seed);
  const auto acc_type = mu.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor z = empty_huge(mu.sizes(), mu.scalar_type());
  at::Tensor kl = at::empty({mu.size(0)}, mu.options().dtype(acc_type));
  const Chunks chunks(mu);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "reparam_kl_fwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<acc_t> partial(chunks.tasks());
    const scalar_t* m = mu_c.const_data_ptr<scalar_t>();
    const scalar_t* lv = logvar_c.const_data_ptr<scalar_t>();
    const scalar_t* e = eps_c.defined() ? eps_c.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* zp = z.mutable_data_ptr<scalar_t>();
    for_each_task(chunks, [&](int64_t t) {
      partial[t] = fwd_chunk(m, lv, e, s, zp, chunks.begin(t), chunks.end(t));
    });
    acc_t* out = kl.mutable_data_ptr<acc_t>();
    for (int64_t b = 0; b < chunks.rows; ++b) {  // a row's partials in chunk order
      double sum = 0;
      for (int64_t c = 0; c < chunks.per_row; ++c) sum += partial[b * chunks.per_row + c];
      out[b] = static_cast<acc_t>(sum);
    }
  });
  return {z, kl};
}

std::tuple<at::Tensor, at::Tensor> reparam_kl_bwd(const at::Tensor& grad_z, const at::Tensor& grad_kl,
                                                  const at::Tensor& mu, const at::Tensor& logvar,
                                                  const c10::optional<at::Tensor>& eps,
                                                  const at::Tensor& seed) {
  check_reparam_kl_args(mu, logvar, eps, seed);
  check_like(grad_z, "grad_z", mu);
  check_float_tensor(grad_kl, "grad_kl");
  TORCH_CHECK(grad_kl.dim() == 1 && grad_kl.size(0) == mu.size(0),
              "grad_kl must have shape (B,) = (", mu.size(0), ",), got ", grad_kl.sizes());
  TORCH_CHECK(grad_kl.device() == mu.device(), "grad_kl must be on mu's device (", mu.device(),
              "), got ", grad_kl.device());
  const at::Tensor mu_c = mu.contiguous(), logvar_c = logvar.contiguous();
  const at::Tensor grad_z_c = grad_z.contiguous();
  const at::Tensor eps_c = eps.has_value() ? eps->contiguous() : at::Tensor();
  const uint64_t s = seed_value(seed);
  const auto acc_type = mu.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor grad_kl_c = grad_kl.to(acc_type).contiguous();
  at::Tensor grad_mu = empty_huge(mu.sizes(), mu.scalar_type());
  at::Tensor grad_logvar = empty_huge(mu.sizes(), mu.scalar_type());
  const Chunks chunks(mu);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mu.scalar_type(), "reparam_kl_bwd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* gz = grad_z_c.const_data_ptr<scalar_t>();
    const acc_t* gkl = grad_kl_c.const_data_ptr<acc_t>();
    const scalar_t* m = mu_c.const_data_ptr<scalar_t>();
    const scalar_t* lv = logvar_c.const_data_ptr<scalar_t>();
    const scalar_t* e = eps_c.defined() ? eps_c.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* gm = grad_mu.mutable_data_ptr<scalar_t>();
    scalar_t* glv = grad_logvar.mutable_data_ptr<scalar_t>();
    for_each_task(chunks, [&](int64_t t) {
      bwd_chunk(gz, gkl[t / chunks.per_row], m, lv, e, s, gm, glv, chunks.begin(t), chunks.end(t));
    });
  });
  return {grad_mu, grad_logvar};
}

}  // namespace fastvae::cpu::CPU_CAPABILITY
