// CPU kernels of fastvae::_deconv_block_fwd / _deconv_block_bwd (schemas in csrc/ops.cpp,
// semantics in fastvae/reference.py).
//
// Forward: conv_transpose2d through ATen (oneDNN, bias fused by the conv) or the Winograd
// forward of csrc/cpu/conv_transpose_nhwc.cpp (in float32 for bfloat16/float16 on CPUs
// without instructions for them, see conv_in_float), then one
// pass of per-(sample, group) statistics (chunked two-pass moments merged with Chan's
// formula) and one pass of normalize + affine/AdaIN + activation into y.
// Backward: one pass recomputing n from pre_norm and the saved statistics that yields
// grad_scale/grad_shift, grad_bias and the group sums, a second pass writing grad_pre_norm,
// then the convolution's backward for x and weight (csrc/cpu/conv_transpose_nhwc.cpp for
// float32/float64, ATen's convolution_backward otherwise). The layout both convolutions run
// in and the backward's algorithm are the call's conv plan (cpu/conv_plan.h). The
// per-element math is csrc/common/deconv_epilogue.h, shared with the CUDA kernels.
//
// Layouts: pre_norm, in x's layout, is dense NCHW (a (sample, channel) plane is a
// contiguous run of H*W) or dense NHWC (a (sample, pixel) row is a contiguous run of C);
// loops are written once per layout with compile-time strides so the inner loops vectorize.
// Built once per CPU capability (cpu/capability.h).
#include "cpu/capability.h"

#include <ATen/ATen.h>
#include <ATen/ExpandUtils.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/Utils.h>

#include <algorithm>
#include <vector>

#include "common/deconv_args.h"
#include "common/deconv_epilogue.h"
#include "cpu/conv_plan.h"
#include "cpu/conv_transpose_nhwc.h"
#include "cpu/huge_page_empty.h"
#include "cpu/layout.h"
#include "cpu/wide_gemm.h"

namespace fastvae::cpu::CPU_CAPABILITY {
namespace {

using deconv::Activation;
using deconv::format_of;
using deconv::output_format;
using deconv::parse_activation;
using deconv::Moments;

constexpr int64_t kChunk = 2048;      // NCHW: elements per two-pass chunk (stays in L1)
constexpr int64_t kPixelBlock = 64;   // NHWC: pixels per statistics task, runs per backward task
constexpr int64_t kMinRun = 64;       // NHWC: elements per epilogue run at least

// NHWC: pixels per epilogue run. A run of one pixel is C values; with few channels (an RGB
// output layer: 3) a loop that short does not vectorize, so a run spans several pixels and
// reads per-channel operands from tables repeated that many times (repeat_pixels).
int64_t run_pixels(int64_t c) {
  return std::min(kPixelBlock, std::max<int64_t>(1, (kMinRun + c - 1) / c));
}

// A (N, C) table as (N, P * C): each row repeated for P consecutive pixels.
template <typename acc_t>
std::vector<acc_t> repeat_pixels(const acc_t* table, int64_t n, int64_t c, int64_t pixels) {
  std::vector<acc_t> out(n * pixels * c);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t q = 0; q < pixels; ++q)
      std::copy(table + i * c, table + (i + 1) * c, out.data() + (i * pixels + q) * c);
  return out;
}

// Calls f(std::integral_constant<Activation, A>) with the runtime activation as a constant.
template <typename F>
void dispatch_activation(Activation act, F&& f) {
  switch (act) {
    case Activation::kLeakyRelu: return f(std::integral_constant<Activation, Activation::kLeakyRelu>{});
    case Activation::kRelu: return f(std::integral_constant<Activation, Activation::kRelu>{});
    case Activation::kSilu: return f(std::integral_constant<Activation, Activation::kSilu>{});
    case Activation::kTanh: return f(std::integral_constant<Activation, Activation::kTanh>{});
    case Activation::kSigmoid:
      return f(std::integral_constant<Activation, Activation::kSigmoid>{});
    case Activation::kGelu: return f(std::integral_constant<Activation, Activation::kGelu>{});
    case Activation::kGeluTanh:
      return f(std::integral_constant<Activation, Activation::kGeluTanh>{});
    default: return f(std::integral_constant<Activation, Activation::kNone>{});
  }
}

// Whether the convolution of a `type` block runs in float32 on upcast copies: bfloat16 and
// float16 where the CPU has no instructions for them (AVX512-BF16/FP16, AMX), on which
// oneDNN's low-precision convolutions measured 17x slower than float32 here (1.16 s
// against 69 ms, forward + backward at 64->32@64). The outputs are rounded back.
bool conv_in_float(at::ScalarType type) {
  if (type != at::kBFloat16 && type != at::kHalf) return false;
  static const auto caps = at::cpu::get_cpu_capabilities();
  const auto has = [](const char* name) {
    const auto it = caps.find(name);
    return it != caps.end() && it->second.isBool() && it->second.toBool();
  };
  static const bool bf16 = has("avx512_bf16") || has("amx_bf16");
  static const bool fp16 = has("avx512_fp16") || has("amx_fp16");
  return type == at::kBFloat16 ? !bf16 : !fp16;
}

// Whether a call's convolutions run in float32: as above, and always on the gemm path
// (col2im would sum the overlapping windows in bf16/fp16, rounding at every add).
bool conv_in_float(at::ScalarType type, const cpu::ConvPlan& plan) {
  return conv_in_float(type) || (plan.gemm && (type == at::kBFloat16 || type == at::kHalf));
}

// weight or bias as the convolution takes it: float32 when `upcast`, else t itself.
at::Tensor conv_operand(const at::Tensor& t, bool upcast) {
  return upcast ? t.to(at::kFloat) : t;
}

// x or grad_pre_norm as the convolutions take them: in the plan's layout (cpu/conv_plan.h),
// in float32 when `upcast`.
at::Tensor conv_activation(const at::Tensor& t, bool upcast, const cpu::ConvPlan& plan) {
  return to_layout(t, upcast ? at::kFloat : t.scalar_type(),
                        plan.channels_last ? at::MemoryFormat::ChannelsLast
                                           : at::MemoryFormat::Contiguous);
}

// The transposed convolution's [stride_h, stride_w, padding_h, padding_w, output_padding_h,
// output_padding_w] (dilation 1, groups 1).
struct Geometry {
  int64_t v[6];
  at::IntArrayRef stride() const { return {v, 2}; }
  at::IntArrayRef padding() const { return {v + 2, 2}; }
  at::IntArrayRef output_padding() const { return {v + 4, 2}; }
  // A 1x1 input, no padding or output_padding: the output is the kernel's footprint, pixel
  // (i, j) being tap (i, j) times the input pixel, whatever the stride. (With padding the
  // output is the centre taps; the col2im form below crops them without copying the
  // weight: U-Net 1024->512@1 fwd+bwd 9.3 ms against 29.0 for a product on copied taps.)
  bool single_pixel(const at::Tensor& x) const {
    return x.size(2) == 1 && x.size(3) == 1 && v[2] == 0 && v[3] == 0 && v[4] == 0 && v[5] == 0;
  }
  // The 4x4 stride-2 padding-1 block: the Winograd paths' geometry.
  // The output's size along `axis` (0: H, 1: W) for input x and weight.
  int64_t output_size(const at::Tensor& x, const at::Tensor& weight, int axis) const {
    return (x.size(2 + axis) - 1) * v[axis] - 2 * v[2 + axis] + weight.size(2 + axis) +
           v[4 + axis];
  }
  bool is_k4s2p1(const at::Tensor& weight) const {
    return weight.size(2) == 4 && weight.size(3) == 4 && v[0] == 2 && v[1] == 2 && v[2] == 1 &&
           v[3] == 1 && v[4] == 0 && v[5] == 0;
  }
};

Geometry parse_geometry(at::IntArrayRef g) {
  TORCH_CHECK(g.size() == 6, "deconv_block: geometry must hold 6 ints, got ", g.size());
  Geometry geo;
  std::copy(g.begin(), g.end(), geo.v);
  return geo;
}

// The conv path of a call (cpu/conv_plan.h); `upcast`: its convolutions run in float32.
cpu::ConvPlan conv_plan_of(const at::Tensor& x, const at::Tensor& weight, const Geometry& geo,
                           bool upcast) {
  return cpu::plan_conv(x, weight.size(1), geo.is_k4s2p1(weight),
                        upcast ? at::kFloat : x.scalar_type());
}

// A (R, C, kH, kW) tensor (the weight, or the gradient of a 1x1 input's output) as the
// (R, C*kH*kW) matrix with columns (kH, kW, C) when `last` (a view of a channels_last
// tensor), (C, kH, kW) otherwise; and such a matrix back as (R, C, kH, kW) of `sizes`.
at::Tensor taps_matrix(const at::Tensor& t, bool last) {
  return last ? t.permute({0, 2, 3, 1}).reshape({t.size(0), -1}) : t.reshape({t.size(0), -1});
}
at::Tensor from_taps_matrix(const at::Tensor& m, at::IntArrayRef sizes, bool last) {
  return last ? m.view({sizes[0], sizes[2], sizes[3], sizes[1]}).permute({0, 3, 1, 2})
              : m.view(sizes);
}

// The transposed convolution of a 1x1 x (single_pixel): (N, Cin) @ W as a (Cin, kH*kW*Cout)
// matrix, bias added by addmm. The matrix is a view of the weight in its own column order
// (taps_matrix): for a taps_last weight, the output (N, kH, kW, Cout) is then channels_last,
// as eager's is for a channels_last weight.
at::Tensor single_pixel_forward(const at::Tensor& x, const at::Tensor& weight,
                                const c10::optional<at::Tensor>& bias) {
  const int64_t n = x.size(0), kk = weight.size(2) * weight.size(3);
  const bool last = taps_last(weight);
  const at::Tensor xm = x.reshape({n, x.size(1)});
  const at::Tensor wm = taps_matrix(weight, last);
  const at::Tensor y = bias.has_value() && bias->defined()
                           ? at::addmm(last ? bias->repeat(kk) : bias->repeat_interleave(kk),
                                       xm, wm)
                           : at::mm(xm, wm);
  return from_taps_matrix(y, {n, weight.size(1), weight.size(2), weight.size(3)}, last);
}

// Its backward: grad_x = grad @ W^T, grad_W = x^T @ grad, grad's columns and grad_W in the
// weight's order (a view of a grad in the weight's layout).
std::tuple<at::Tensor, at::Tensor> single_pixel_backward(const at::Tensor& grad,
                                                         const at::Tensor& x,
                                                         const at::Tensor& weight) {
  const int64_t n = x.size(0), cin = x.size(1);
  const bool last = taps_last(weight);
  const at::Tensor g = taps_matrix(grad, last);
  const at::Tensor xm = x.reshape({n, cin});
  const at::Tensor grad_x = at::mm(g, taps_matrix(weight, last).t()).view({n, cin, 1, 1});
  return {grad_x, from_taps_matrix(at::mm(xm.t(), g), weight.sizes(), last)};
}

// x (N, Cin, H, W) as the (N*H*W, Cin) matrix of its pixels (a view for channels_last).
at::Tensor pixel_rows(const at::Tensor& x) {
  return x.permute({0, 2, 3, 1}).reshape({x.size(0) * x.size(2) * x.size(3), x.size(1)});
}

// A channels_last (taps_last) weight on small maps: its (Cin, kH*kW*Cout) taps matrix is a
// view, so the product's columns are (kH, kW, Cout), and the col2im and im2col below run
// on channels_last maps. ATen's need (Cout, kH, kW) columns: a permuting copy of the
// weight each way and one of grad_weight back (U-Net 1024->512@4 b8: 32 MB each, 27 ms of
// copies a fwd+bwd).
//
// y (N, Cout, Ho, Wo) channels_last from cols (N*H*W, kH*kW*Cout): each output pixel the
// bias plus, over its taps, the row of the input pixel that tap comes from (a gather:
// output rows run in parallel).
at::Tensor col2im_taps_last(const at::Tensor& cols, const at::Tensor& x,
                            const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                            const Geometry& geo) {
  const int64_t n = x.size(0), h = x.size(2), w = x.size(3), co = weight.size(1);
  const int64_t kh = weight.size(2), kw = weight.size(3);
  const int64_t ho = geo.output_size(x, weight, 0), wo = geo.output_size(x, weight, 1);
  at::Tensor y = at::empty({n, co, ho, wo}, cols.options(), at::MemoryFormat::ChannelsLast);
  const bool has_bias = bias.has_value() && bias->defined();
  const at::Tensor b = has_bias ? bias->contiguous() : at::zeros({co}, cols.options());
  // input index of output index o through tap k along an axis, or -1
  const auto source = [](int64_t o, int64_t k, int64_t stride, int64_t pad, int64_t size) {
    const int64_t t = o + pad - k;
    return t >= 0 && t % stride == 0 && t / stride < size ? t / stride : -1;
  };
  AT_DISPATCH_FLOATING_TYPES(cols.scalar_type(), "col2im_taps_last", [&] {
    const scalar_t* cp = cols.data_ptr<scalar_t>();
    const scalar_t* bp = b.data_ptr<scalar_t>();
    scalar_t* yp = y.data_ptr<scalar_t>();
    at::parallel_for(0, n * ho, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t s = row / ho, oy = row % ho;
        for (int64_t ox = 0; ox < wo; ++ox) {
          scalar_t* out = yp + (row * wo + ox) * co;
          std::copy(bp, bp + co, out);
          for (int64_t ky = 0; ky < kh; ++ky) {
            const int64_t iy = source(oy, ky, geo.v[0], geo.v[2], h);
            if (iy < 0) continue;
            for (int64_t kx = 0; kx < kw; ++kx) {
              const int64_t ix = source(ox, kx, geo.v[1], geo.v[3], w);
              if (ix < 0) continue;
              const scalar_t* src =
                  cp + ((s * h + iy) * w + ix) * kh * kw * co + (ky * kw + kx) * co;
              for (int64_t c = 0; c < co; ++c) out[c] += src[c];
            }
          }
        }
      }
    });
  });
  return y;
}

// Its adjoint: windows (N*H*W, kH*kW*Cout), each input pixel's row the output pixels its
// taps reach in grad (channels_last), zeros past the edges.
at::Tensor im2col_taps_last(const at::Tensor& grad, const at::Tensor& x,
                            const at::Tensor& weight, const Geometry& geo) {
  const int64_t n = x.size(0), h = x.size(2), w = x.size(3), co = weight.size(1);
  const int64_t kh = weight.size(2), kw = weight.size(3), ho = grad.size(2), wo = grad.size(3);
  const at::Tensor g = to_layout(grad, grad.scalar_type(), at::MemoryFormat::ChannelsLast);
  at::Tensor windows = at::empty({n * h * w, kh * kw * co}, grad.options());
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "im2col_taps_last", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    scalar_t* wp = windows.data_ptr<scalar_t>();
    at::parallel_for(0, n * h, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t s = row / h, iy = row % h;
        for (int64_t ix = 0; ix < w; ++ix) {
          scalar_t* dst = wp + (row * w + ix) * kh * kw * co;
          for (int64_t ky = 0; ky < kh; ++ky) {
            const int64_t oy = iy * geo.v[0] - geo.v[2] + ky;
            for (int64_t kx = 0; kx < kw; ++kx, dst += co) {
              const int64_t ox = ix * geo.v[1] - geo.v[3] + kx;
              if (oy < 0 || oy >= ho || ox < 0 || ox >= wo) {
                std::fill(dst, dst + co, scalar_t(0));
              } else {
                const scalar_t* src = gp + ((s * ho + oy) * wo + ox) * co;
                std::copy(src, src + co, dst);
              }
            }
          }
        }
      }
    });
  });
  return windows;
}

// The transposed convolution of a small map as one product (cpu/wide_gemm.h) and a col2im:
// the rows of x (N*H*W, Cin) times the weight (Cin, Cout*kH*kW) give every input pixel's
// contribution to its kH x kW window of the output, which col2im sums into place (bias
// added after).
at::Tensor small_map_forward(const at::Tensor& x, const at::Tensor& weight,
                             const c10::optional<at::Tensor>& bias, const Geometry& geo) {
  const int64_t n = x.size(0), cin = x.size(1), h = x.size(2), w = x.size(3);
  if (taps_last(weight)) {
    return col2im_taps_last(wide_mm(pixel_rows(x), taps_matrix(weight, true)), x, weight, bias,
                            geo);
  }
  const int64_t kh = weight.size(2), kw = weight.size(3);
  const int64_t ho = geo.output_size(x, weight, 0), wo = geo.output_size(x, weight, 1);
  const at::Tensor cols = wide_mm(pixel_rows(x), weight.reshape({cin, -1}))
                              .view({n, h * w, -1})
                              .transpose(1, 2);  // (N, Cout*kH*kW, H*W)
  at::Tensor y = at::col2im(cols, {ho, wo}, {kh, kw}, {1, 1}, geo.padding(), geo.stride());
  if (bias.has_value() && bias->defined()) y.add_(bias->view({1, -1, 1, 1}));
  return y;
}

// Its backward: im2col of the gradient gathers each input pixel's output window, then
// grad_x = windows @ W^T (at::mm: W^T is W read transposed) and grad_W = rows(x)^T @ windows.
std::tuple<at::Tensor, at::Tensor> small_map_backward(const at::Tensor& grad,
                                                      const at::Tensor& x,
                                                      const at::Tensor& weight,
                                                      const Geometry& geo) {
  const int64_t n = x.size(0), cin = x.size(1), h = x.size(2), w = x.size(3);
  if (taps_last(weight)) {
    const at::Tensor windows = im2col_taps_last(grad, x, weight, geo);
    const at::Tensor grad_x = at::mm(windows, taps_matrix(weight, true).t())
                                  .view({n, h, w, cin})
                                  .permute({0, 3, 1, 2});  // channels_last
    const at::Tensor gw = wide_mm(pixel_rows(x).t(), windows);
    return {grad_x, from_taps_matrix(gw, weight.sizes(), true)};
  }
  const at::Tensor windows =
      at::im2col(grad, {weight.size(2), weight.size(3)}, {1, 1}, geo.padding(), geo.stride())
          .transpose(1, 2)
          .reshape({n * h * w, -1});  // (N*H*W, Cout*kH*kW)
  const at::Tensor wm = weight.reshape({cin, -1});
  const at::Tensor grad_x =
      at::mm(windows, wm.t()).view({n, h, w, cin}).permute({0, 3, 1, 2});  // channels_last
  const at::Tensor grad_weight = wide_mm(pixel_rows(x).t(), windows).view(weight.sizes());
  return {grad_x, grad_weight};
}

// Scale/shift as the kernels read them: a (N, C) table in the compute type, or, for
// spatial AdaIN, a full tensor in pre_norm's layout. Absent ones become 1 / 0 tables.
template <typename acc_t>
struct Affine {
  at::Tensor table;  // (N, C) acc_t when per channel
  at::Tensor full;   // (N, C, H, W) acc_t in the output's layout when spatial
  bool spatial() const { return full.defined(); }
  const acc_t* data() const { return (spatial() ? full : table).template data_ptr<acc_t>(); }
};

template <typename acc_t>
Affine<acc_t> make_affine(const c10::optional<at::Tensor>& t, const at::Tensor& out,
                          at::MemoryFormat fmt, double fill) {
  const int64_t n = out.size(0), c = out.size(1);
  const auto opts = out.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
  Affine<acc_t> a;
  if (!t.has_value() || !t->defined()) {
    a.table = at::full({n, c}, fill, opts);
  } else if (t->size(2) == 1 && t->size(3) == 1) {
    a.table = t->to(opts.dtype()).expand({n, c, 1, 1}).reshape({n, c}).contiguous();
  } else {
    a.full = t->to(opts.dtype()).expand(out.sizes()).contiguous(fmt);
  }
  return a;
}

constexpr int64_t kBatch = -1;  // `groups` of BatchNorm: per channel over (N, H, W)

// Which (sample, channel) planes share a statistic: GroupNorm's (sample, group), or
// BatchNorm's channel over every sample when groups == kBatch.
struct StatGroups {
  int64_t n, c, groups;
  bool batch() const { return groups == kBatch; }
  int64_t count() const { return batch() ? c : n * groups; }  // statistics: mean/rstd numel
  int64_t of(int64_t i, int64_t j) const { return batch() ? j : i * groups + j / (c / groups); }
  // The plane whose pixel 0 shifts the values of plane (i, j)'s statistic: its first member.
  int64_t first_plane(int64_t i, int64_t j) const {
    return batch() ? j : i * c + j / (c / groups) * (c / groups);
  }
  int64_t planes_per_stat() const { return batch() ? n : c / groups; }
};

// Statistics expanded to (N, C) tables of mean and rstd (0 / 1 without norm).
template <typename acc_t>
void expand_groups(const acc_t* per_group, int64_t n, int64_t c, int64_t groups, acc_t none,
                   std::vector<acc_t>& out) {
  out.assign(n * c, none);
  if (groups == 0) return;
  const StatGroups sg{n, c, groups};
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < c; ++j) out[i * c + j] = per_group[sg.of(i, j)];
}

// ------------------------------------------------------------------------------ stats

// Per-(sample, channel) moments of pre_norm, then merged into the statistics of StatGroups
// (per (sample, group), or per channel for BatchNorm). Every value is first shifted by its
// statistic's first element, so the partial means the merge works with are O(std) rather
// than O(|mean|): float32 keeps their digits when |mean| >> std (the subtraction of two
// nearby floats is exact).
template <typename scalar_t, typename acc_t>
void group_stats(const at::Tensor& pre, bool nhwc, int64_t groups, double eps,
                 at::Tensor& mean_out, at::Tensor& rstd_out) {
  const int64_t n = pre.size(0), c = pre.size(1), hw = pre.size(2) * pre.size(3);
  const StatGroups sg{n, c, groups};
  const scalar_t* p = pre.data_ptr<scalar_t>();
  std::vector<acc_t> shift(n * c);  // per (n, c): pixel 0 of its statistic's first plane
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < c; ++j) {
      const int64_t first = sg.first_plane(i, j);  // (sample, channel) index = i0 * c + j0
      shift[i * c + j] = static_cast<acc_t>(
          p[nhwc ? first / c * hw * c + first % c : first * hw]);
    }
  // partial moments: NCHW one per (n, c); NHWC one per (n, pixel block, c)
  const int64_t blocks = nhwc ? (hw + kPixelBlock - 1) / kPixelBlock : 1;
  std::vector<acc_t> pmean(n * blocks * c), pm2(n * blocks * c);
  if (!nhwc) {
    at::parallel_for(0, n * c, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const scalar_t* src = p + plane * hw;
        const acc_t k = shift[plane];
        Moments<acc_t> m{0, 0, 0};
        for (int64_t s = 0; s < hw; s += kChunk) {
          const int64_t len = std::min(kChunk, hw - s);
          acc_t sum = 0, m2 = 0;
#pragma omp simd reduction(+ : sum)
          for (int64_t i = 0; i < len; ++i) sum += static_cast<acc_t>(src[s + i]) - k;
          const acc_t mu = sum / len;
#pragma omp simd reduction(+ : m2)
          for (int64_t i = 0; i < len; ++i) {
            const acc_t d = static_cast<acc_t>(src[s + i]) - k - mu;
            m2 += d * d;
          }
          m = deconv::merge(m, Moments<acc_t>{acc_t(len), mu, m2});
        }
        pmean[plane] = m.mean;
        pm2[plane] = m.m2;
      }
    });
  } else {
    at::parallel_for(0, n * blocks, 1, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t i = task / blocks, b = task % blocks;
        const int64_t p0 = b * kPixelBlock, np = std::min(kPixelBlock, hw - p0);
        const scalar_t* src = p + (i * hw + p0) * c;
        const acc_t* k = shift.data() + i * c;
        acc_t* mu = pmean.data() + task * c;
        acc_t* m2 = pm2.data() + task * c;
        for (int64_t q = 0; q < np; ++q) {
#pragma omp simd
          for (int64_t j = 0; j < c; ++j) mu[j] += static_cast<acc_t>(src[q * c + j]) - k[j];
        }
        for (int64_t j = 0; j < c; ++j) mu[j] /= np;
        for (int64_t q = 0; q < np; ++q) {
#pragma omp simd
          for (int64_t j = 0; j < c; ++j) {
            const acc_t d = static_cast<acc_t>(src[q * c + j]) - k[j] - mu[j];
            m2[j] += d * d;
          }
        }
      }
    });
  }
  // merged in a fixed order (deterministic): samples, pixel blocks, channels
  std::vector<Moments<acc_t>> merged(sg.count(), Moments<acc_t>{0, 0, 0});
  for (int64_t i = 0; i < n; ++i)
    for (int64_t b = 0; b < blocks; ++b) {
      const acc_t cnt = nhwc ? acc_t(std::min(kPixelBlock, hw - b * kPixelBlock)) : acc_t(hw);
      const int64_t base = (i * blocks + b) * c;
      for (int64_t j = 0; j < c; ++j) {
        Moments<acc_t>& m = merged[sg.of(i, j)];
        m = deconv::merge(m, Moments<acc_t>{cnt, pmean[base + j], pm2[base + j]});
      }
    }
  acc_t* mean = mean_out.data_ptr<acc_t>();
  acc_t* rstd = rstd_out.data_ptr<acc_t>();
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < c; ++j) {
      const int64_t k = sg.of(i, j);
      mean[k] = shift[i * c + j] + merged[k].mean;
      rstd[k] = deconv::rstd_of(merged[k], static_cast<acc_t>(eps));
    }
}

// ---------------------------------------------------------------------------- forward

// y over one contiguous run of `len` elements. kStat/kScale/kShift: 1 when that operand
// varies along the run (NHWC channels, spatial AdaIN), 0 when it is one value.
template <Activation A, int kStat, int kScale, int kShift, typename scalar_t, typename acc_t>
inline void forward_run(const scalar_t* h, scalar_t* y, int64_t len, const acc_t* mean,
                        const acc_t* rstd, const acc_t* scale, const acc_t* shift, acc_t slope) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    y[i] = static_cast<scalar_t>(deconv::forward<acc_t>(
        static_cast<acc_t>(h[i]), mean[i * kStat], rstd[i * kStat], scale[i * kScale],
        shift[i * kShift], A, slope));
  }
}

template <typename scalar_t, typename acc_t>
void normalize_activate(const at::Tensor& pre, at::Tensor& y, bool nhwc, const acc_t* mean,
                        const acc_t* rstd, const Affine<acc_t>& scale,
                        const Affine<acc_t>& shift, Activation act, acc_t slope) {
  const int64_t n = pre.size(0), c = pre.size(1), hw = pre.size(2) * pre.size(3);
  const scalar_t* h = pre.data_ptr<scalar_t>();
  scalar_t* out = y.data_ptr<scalar_t>();
  const acc_t* s = scale.data();
  const acc_t* t = shift.data();
  dispatch_activation(act, [&](auto a) {
    constexpr Activation A = decltype(a)::value;
    if (nhwc) {  // runs of P pixels x C channels: everything varies along the run
      const int64_t P = run_pixels(c), len = P * c, runs = (hw + P - 1) / P;
      const auto m = repeat_pixels(mean, n, c, P), r = repeat_pixels(rstd, n, c, P);
      const auto sp = repeat_pixels(scale.spatial() ? mean : s, n, c, P);
      const auto tp = repeat_pixels(shift.spatial() ? mean : t, n, c, P);
      at::parallel_for(0, n * runs, std::max<int64_t>(1, 256 / P), [&](int64_t begin, int64_t end) {
        for (int64_t run = begin; run < end; ++run) {
          const int64_t i = run / runs, q = run % runs * P;
          const int64_t off = (i * hw + q) * c, l = std::min(P, hw - q) * c;
          forward_run<A, 1, 1, 1>(h + off, out + off, l, m.data() + i * len, r.data() + i * len,
                                  scale.spatial() ? s + off : sp.data() + i * len,
                                  shift.spatial() ? t + off : tp.data() + i * len, slope);
        }
      });
      return;
    }
    at::parallel_for(0, n * c, 1, [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const int64_t off = plane * hw;
        const acc_t* m = mean + plane;
        const acc_t* r = rstd + plane;
        if (!scale.spatial() && !shift.spatial()) {
          forward_run<A, 0, 0, 0>(h + off, out + off, hw, m, r, s + plane, t + plane, slope);
        } else if (!shift.spatial()) {
          forward_run<A, 0, 1, 0>(h + off, out + off, hw, m, r, s + off, t + plane, slope);
        } else if (!scale.spatial()) {
          forward_run<A, 0, 0, 1>(h + off, out + off, hw, m, r, s + plane, t + off, slope);
        } else {
          forward_run<A, 0, 1, 1>(h + off, out + off, hw, m, r, s + off, t + off, slope);
        }
      }
    });
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> deconv_block_fwd(
    const at::Tensor& x, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
    const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,
    at::IntArrayRef geometry, int64_t groups, c10::string_view activation, double negative_slope,
    double eps) {
  TORCH_CHECK(x.dim() == 4 && weight.dim() == 4, "deconv_block: x and weight must be 4-D");
  const Geometry geo = parse_geometry(geometry);
  const Activation act = parse_activation(activation);
  const at::MemoryFormat fmt = output_format(x, weight);
  const cpu::ConvPlan plan = conv_plan_of(x, weight, geo, conv_in_float(x.scalar_type()));
  const bool upcast = conv_in_float(x.scalar_type(), plan);
  c10::optional<at::Tensor> b = bias;
  if (b.has_value() && b->defined()) b = conv_operand(*b, upcast);
  at::Tensor conv;
  const at::Tensor xc = conv_activation(x, upcast, plan), wc = conv_operand(weight, upcast);
  if (plan.gemm) {
    conv = geo.single_pixel(x) ? single_pixel_forward(xc, wc, b)
                               : small_map_forward(xc, wc, b, geo);
  } else if (plan.winograd_forward && conv_transpose_nhwc_supported(xc, wc)) {
    conv = conv_transpose_nhwc_forward(xc, wc, b);
  } else {
    // oneDNN adds a stride-1 transposed convolution's bias to an NCHW output in a reference
    // loop, 1-2 ns an output element (DCGAN's 100->512 k4s1p0 layer, batch 64: 2.28 ms with
    // the bias, 1.42 without it plus at::add_); with stride 2, or channels_last, it costs
    // nothing measurable (tools/conv_paths.py --small-maps prints the comparison)
    const bool bias_after = b.has_value() && b->defined() && !plan.channels_last &&
                            geo.v[0] == 1 && geo.v[1] == 1;
    conv = at::conv_transpose2d(xc, wc, bias_after ? c10::optional<at::Tensor>() : b,
                                geo.stride(), geo.padding(), geo.output_padding());
    if (bias_after) conv.add_(b->view({1, -1, 1, 1}));
  }
  const at::Tensor pre = to_layout(conv, x.scalar_type(), fmt);
  const int64_t n = pre.size(0), c = pre.size(1);
  TORCH_CHECK(groups == kBatch || (groups >= 0 && (groups == 0 || c % groups == 0)),
              "deconv_block: groups must divide the output channels (or be -1, BatchNorm)");
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast && c > 1;
  const auto stat_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const std::vector<int64_t> stat_shape =
      groups == kBatch ? std::vector<int64_t>{1, c} : std::vector<int64_t>{n, groups};
  at::Tensor mean = at::empty(stat_shape, x.options().dtype(stat_type));
  at::Tensor rstd = at::empty(stat_shape, x.options().dtype(stat_type));
  at::Tensor y = empty_huge(pre.sizes(), pre.scalar_type(), fmt);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "deconv_block_fwd", [&] {
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    if (groups) group_stats<scalar_t, acc_t>(pre, nhwc, groups, eps, mean, rstd);
    std::vector<acc_t> mean_c, rstd_c;
    expand_groups<acc_t>(groups ? mean.data_ptr<acc_t>() : nullptr, n, c, groups, 0, mean_c);
    expand_groups<acc_t>(groups ? rstd.data_ptr<acc_t>() : nullptr, n, c, groups, 1, rstd_c);
    const auto s = make_affine<acc_t>(scale, pre, fmt, 1.0);
    const auto t = make_affine<acc_t>(shift, pre, fmt, 0.0);
    normalize_activate<scalar_t, acc_t>(pre, y, nhwc, mean_c.data(), rstd_c.data(), s, t, act,
                                        static_cast<acc_t>(negative_slope));
  });
  return {y, pre, mean, rstd};
}

namespace {

// --------------------------------------------------------------------------- backward

// Per-(sample, channel) sums the backward needs.
constexpr int64_t kSums = 5;
template <typename acc_t>
struct Sums {
  acc_t g_a = 0;      // grad_shift (per channel)
  acc_t g_a_n = 0;    // grad_scale (per channel)
  acc_t g_n = 0;      // group mean of g_n
  acc_t g_n_n = 0;    // group mean of g_n * n
  acc_t n = 0;        // sum of n: with the two above, grad_bias without another pass
};

// Pass 1 over one run: accumulates the sums (kVec: per element of the run, in `acc` laid
// out [5][stride]; else one each); writes the spatial grad_scale/grad_shift terms (kGS, kGT)
// and grad_h directly when there is no norm (kWriteGh).
template <Activation A, int kStat, int kScale, int kShift, bool kGS, bool kGT, bool kWriteGh,
          typename scalar_t, typename acc_t>
inline void backward_run(const scalar_t* gy, const scalar_t* h, int64_t len, const acc_t* mean,
                         const acc_t* rstd, const acc_t* scale, const acc_t* shift, acc_t slope,
                         acc_t* gscale_full, acc_t* gshift_full, scalar_t* gh, acc_t* acc,
                         int64_t stride = 0) {
  constexpr bool kVec = kStat == 1;  // NHWC: one set of sums per channel
  acc_t s_ga = 0, s_gan = 0, s_gn = 0, s_gnn = 0, s_n = 0;
#pragma omp simd reduction(+ : s_ga, s_gan, s_gn, s_gnn, s_n)
  for (int64_t i = 0; i < len; ++i) {
    const acc_t sc = scale[i * kScale];
    const auto t = deconv::backward_terms<acc_t>(static_cast<acc_t>(gy[i]), static_cast<acc_t>(h[i]),
                                                 mean[i * kStat], rstd[i * kStat], sc,
                                                 shift[i * kShift], A, slope);
    const acc_t g_n = t.g_a * sc;
    if constexpr (kGS) gscale_full[i] = t.g_a * t.n;
    if constexpr (kGT) gshift_full[i] = t.g_a;
    if constexpr (kWriteGh) gh[i] = static_cast<scalar_t>(g_n);
    if constexpr (kVec) {
      acc[i] += t.g_a;
      acc[stride + i] += t.g_a * t.n;
      acc[2 * stride + i] += g_n;
      acc[3 * stride + i] += g_n * t.n;
      acc[4 * stride + i] += t.n;
    } else {
      s_ga += t.g_a;
      s_gan += t.g_a * t.n;
      s_gn += g_n;
      s_gnn += g_n * t.n;
      s_n += t.n;
    }
  }
  if constexpr (!kVec) {
    acc[0] += s_ga;
    acc[1] += s_gan;
    acc[2] += s_gn;
    acc[3] += s_gnn;
    acc[4] += s_n;
  }
}

// Pass 2 over one run: grad_h from the group means (cm = mean of g_n, cn = of g_n * n).
template <Activation A, int kStat, int kScale, int kShift, typename scalar_t, typename acc_t>
inline void grad_h_run(const scalar_t* gy, const scalar_t* h, int64_t len, const acc_t* mean,
                       const acc_t* rstd, const acc_t* scale, const acc_t* shift, acc_t slope,
                       const acc_t* cm, const acc_t* cn, scalar_t* gh) {
#pragma omp simd
  for (int64_t i = 0; i < len; ++i) {
    const acc_t sc = scale[i * kScale];
    const auto t = deconv::backward_terms<acc_t>(static_cast<acc_t>(gy[i]), static_cast<acc_t>(h[i]),
                                                 mean[i * kStat], rstd[i * kStat], sc,
                                                 shift[i * kShift], A, slope);
    gh[i] = static_cast<scalar_t>(deconv::grad_pre_norm<acc_t>(
        t.g_a * sc, t.n, rstd[i * kStat], cm[i * kStat], cn[i * kStat]));
  }
}

// Calls f(integral_constant<int, kScale>, integral_constant<int, kShift>) for the NCHW
// strides of scale/shift (1 = spatial, 0 = one value per plane).
template <typename F>
void dispatch_strides(bool spatial_scale, bool spatial_shift, F&& f) {
  using Z = std::integral_constant<int, 0>;
  using O = std::integral_constant<int, 1>;
  if (spatial_scale && spatial_shift) return f(O{}, O{});
  if (spatial_scale) return f(O{}, Z{});
  if (spatial_shift) return f(Z{}, O{});
  return f(Z{}, Z{});
}

template <typename scalar_t, typename acc_t>
void epilogue_backward(const at::Tensor& gy_t, const at::Tensor& pre, at::Tensor& gh_t, bool nhwc,
                       int64_t groups, const acc_t* mean, const acc_t* rstd,
                       const Affine<acc_t>& scale, const Affine<acc_t>& shift, Activation act,
                       acc_t slope, std::vector<Sums<acc_t>>& sums, at::Tensor& gscale_full,
                       at::Tensor& gshift_full, std::vector<acc_t>& grad_bias) {
  const int64_t n = pre.size(0), c = pre.size(1), hw = pre.size(2) * pre.size(3);
  const scalar_t* gy = gy_t.data_ptr<scalar_t>();
  const scalar_t* h = pre.data_ptr<scalar_t>();
  scalar_t* gh = gh_t.data_ptr<scalar_t>();
  const acc_t* s = scale.data();
  const acc_t* t = shift.data();
  acc_t* gsf = gscale_full.defined() ? gscale_full.data_ptr<acc_t>() : nullptr;
  acc_t* gtf = gshift_full.defined() ? gshift_full.data_ptr<acc_t>() : nullptr;
  const bool ss = scale.spatial(), ts = shift.spatial();
  // NHWC: runs of P pixels (run_pixels), per-channel operands repeated P times; a task is
  // kPixelBlock runs, its sums per element of a run folded to one Sums vector of length c
  // per (n, task), reduced below (tasks of a fixed size: the sums do not depend on the
  // thread count; kPixelBlock runs, not pixels, so the fold stays a small part of a task)
  const int64_t P = nhwc ? run_pixels(c) : 1, len = P * c, block = kPixelBlock * P;
  const int64_t blocks = nhwc ? (hw + block - 1) / block : 1;
  std::vector<acc_t> part(nhwc ? n * blocks * kSums * c : 0);  // [task][kSums][c]
  std::vector<acc_t> mp, rp, sp, tp;
  if (nhwc) {
    mp = repeat_pixels(mean, n, c, P);
    rp = repeat_pixels(rstd, n, c, P);
    sp = repeat_pixels(scale.spatial() ? mean : s, n, c, P);
    tp = repeat_pixels(shift.spatial() ? mean : t, n, c, P);
  }
  sums.assign(n * c, Sums<acc_t>{});
  dispatch_activation(act, [&](auto a) {
    constexpr Activation A = decltype(a)::value;
    auto pass1 = [&](auto write_gh) {
      constexpr bool W = decltype(write_gh)::value;
      if (nhwc) {
        dispatch_strides(ss, ts, [&](auto ks, auto kt) {
          constexpr bool GS = decltype(ks)::value, GT = decltype(kt)::value;
          at::parallel_for(0, n * blocks, 1, [&](int64_t begin, int64_t end) {
            std::vector<acc_t> acc(kSums * len);  // [kSums][P][c]
            for (int64_t task = begin; task < end; ++task) {
              const int64_t i = task / blocks, p0 = (task % blocks) * block;
              const int64_t p1 = std::min(p0 + block, hw);
              std::fill(acc.begin(), acc.end(), acc_t(0));
              for (int64_t q = p0; q < p1; q += P) {
                const int64_t off = (i * hw + q) * c, l = std::min(P, p1 - q) * c;
                backward_run<A, 1, 1, 1, GS, GT, W>(
                    gy + off, h + off, l, mp.data() + i * len, rp.data() + i * len,
                    GS ? s + off : sp.data() + i * len, GT ? t + off : tp.data() + i * len,
                    slope, gsf + (GS ? off : 0), gtf + (GT ? off : 0), gh + off, acc.data(),
                    len);
              }
              acc_t* folded = part.data() + task * kSums * c;
              for (int64_t k = 0; k < kSums; ++k)
                for (int64_t q = 0; q < P; ++q)
                  for (int64_t j = 0; j < c; ++j) folded[k * c + j] += acc[(k * P + q) * c + j];
            }
          });
        });
        for (int64_t i = 0; i < n; ++i)
          for (int64_t b = 0; b < blocks; ++b)
            for (int64_t j = 0; j < c; ++j) {
              const acc_t* p = part.data() + (i * blocks + b) * kSums * c + j;
              auto& q = sums[i * c + j];
              q.g_a += p[0]; q.g_a_n += p[c]; q.g_n += p[2 * c]; q.g_n_n += p[3 * c];
              q.n += p[4 * c];
            }
        return;
      }
      dispatch_strides(ss, ts, [&](auto ks, auto kt) {
        constexpr int KS = decltype(ks)::value, KT = decltype(kt)::value;
        at::parallel_for(0, n * c, 1, [&](int64_t begin, int64_t end) {
          for (int64_t plane = begin; plane < end; ++plane) {
            const int64_t off = plane * hw;
            acc_t part[kSums] = {0, 0, 0, 0, 0};
            backward_run<A, 0, KS, KT, KS == 1, KT == 1, W>(
                gy + off, h + off, hw, mean + plane, rstd + plane, KS ? s + off : s + plane,
                KT ? t + off : t + plane, slope, gsf + (KS ? off : 0), gtf + (KT ? off : 0),
                gh + off, part);
            sums[plane] = Sums<acc_t>{part[0], part[1], part[2], part[3], part[4]};
          }
        });
      });
    };
    grad_bias.assign(c, 0);
    if (groups == 0) {  // grad_h = g_n
      pass1(std::true_type{});
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < c; ++j) grad_bias[j] += sums[i * c + j].g_n;
      return;
    }
    pass1(std::false_type{});
    // each statistic's means of g_n and g_n * n, expanded per (sample, channel)
    const StatGroups sg{n, c, groups};
    const acc_t count = static_cast<acc_t>(sg.planes_per_stat() * hw);
    std::vector<acc_t> a1(sg.count(), 0), a2(sg.count(), 0), cm(n * c), cn(n * c);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < c; ++j) {
        a1[sg.of(i, j)] += sums[i * c + j].g_n;
        a2[sg.of(i, j)] += sums[i * c + j].g_n_n;
      }
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < c; ++j) {
        cm[i * c + j] = a1[sg.of(i, j)] / count;
        cn[i * c + j] = a2[sg.of(i, j)] / count;
      }
    // grad_bias = the sum of grad_h over each channel, from the sums of its terms
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < c; ++j) {
        const int64_t k = i * c + j;
        grad_bias[j] += rstd[k] * (sums[k].g_n - hw * cm[k] - cn[k] * sums[k].n);
      }
    if (nhwc) {
      const int64_t runs = (hw + P - 1) / P;
      const auto cmp = repeat_pixels(cm.data(), n, c, P), cnp = repeat_pixels(cn.data(), n, c, P);
      at::parallel_for(0, n * runs, std::max<int64_t>(1, 256 / P), [&](int64_t begin, int64_t end) {
        for (int64_t run = begin; run < end; ++run) {
          const int64_t i = run / runs, q = run % runs * P;
          const int64_t off = (i * hw + q) * c, l = std::min(P, hw - q) * c;
          grad_h_run<A, 1, 1, 1>(gy + off, h + off, l, mp.data() + i * len, rp.data() + i * len,
                                 ss ? s + off : sp.data() + i * len,
                                 ts ? t + off : tp.data() + i * len, slope, cmp.data() + i * len,
                                 cnp.data() + i * len, gh + off);
        }
      });
      return;
    }
    dispatch_strides(ss, ts, [&](auto ks, auto kt) {
      constexpr int KS = decltype(ks)::value, KT = decltype(kt)::value;
      at::parallel_for(0, n * c, 1, [&](int64_t begin, int64_t end) {
        for (int64_t plane = begin; plane < end; ++plane) {
          const int64_t off = plane * hw;
          grad_h_run<A, 0, KS, KT>(gy + off, h + off, hw, mean + plane, rstd + plane,
                                   KS ? s + off : s + plane, KT ? t + off : t + plane, slope,
                                   cm.data() + plane, cn.data() + plane, gh + off);
        }
      });
    });
  });
}

// grad of a per-channel (1|N, C, 1, 1) operand from the (N, C) sums, or of a spatial one
// from its per-element terms; shaped and typed like the operand.
template <typename acc_t>
at::Tensor affine_grad(const c10::optional<at::Tensor>& t, const std::vector<Sums<acc_t>>& sums,
                       bool of_scale, const at::Tensor& full, int64_t n, int64_t c,
                       const at::TensorOptions& acc_opts) {
  if (!t.has_value() || !t->defined()) return at::empty({0}, acc_opts);
  at::Tensor g;
  if (full.defined()) {
    g = full;
  } else {
    g = at::empty({n, c, 1, 1}, acc_opts);
    acc_t* d = g.data_ptr<acc_t>();
    for (int64_t k = 0; k < n * c; ++k) d[k] = of_scale ? sums[k].g_a_n : sums[k].g_a;
  }
  return at::sum_to(g, t->sizes()).to(t->scalar_type()).contiguous();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> deconv_block_bwd(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& weight,
    const at::Tensor& pre_norm, const at::Tensor& mean, const at::Tensor& rstd,
    const c10::optional<at::Tensor>& scale, const c10::optional<at::Tensor>& shift,
    bool has_bias, at::IntArrayRef geometry, int64_t groups, c10::string_view activation,
    double negative_slope, double eps) {
  const Activation act = parse_activation(activation);
  const Geometry geo = parse_geometry(geometry);
  const at::MemoryFormat fmt = output_format(x, weight);
  const at::Tensor pre = pre_norm.contiguous(fmt);
  const at::Tensor gy = grad_y.to(pre.scalar_type()).contiguous(fmt);
  const int64_t n = pre.size(0), c = pre.size(1);
  const bool nhwc = fmt == at::MemoryFormat::ChannelsLast && c > 1;
  at::Tensor gh = empty_huge(pre.sizes(), pre.scalar_type(), fmt);
  at::Tensor grad_scale, grad_shift, grad_bias;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "deconv_block_bwd", [&] {
    using acc_t = std::conditional_t<std::is_same<scalar_t, double>::value, double, float>;
    const auto acc_opts = pre.options().dtype(c10::CppTypeToScalarType<acc_t>::value);
    std::vector<acc_t> mean_c, rstd_c;
    const at::Tensor mean_a = groups ? mean.to(acc_opts.dtype()).contiguous() : mean;
    const at::Tensor rstd_a = groups ? rstd.to(acc_opts.dtype()).contiguous() : rstd;
    expand_groups<acc_t>(groups ? mean_a.data_ptr<acc_t>() : nullptr, n, c, groups, 0, mean_c);
    expand_groups<acc_t>(groups ? rstd_a.data_ptr<acc_t>() : nullptr, n, c, groups, 1, rstd_c);
    const auto s = make_affine<acc_t>(scale, pre, fmt, 1.0);
    const auto t = make_affine<acc_t>(shift, pre, fmt, 0.0);
    at::Tensor gsf, gtf;
    if (s.spatial()) gsf = at::empty_like(s.full);
    if (t.spatial()) gtf = at::empty_like(t.full);
    std::vector<Sums<acc_t>> sums;
    std::vector<acc_t> gb;
    epilogue_backward<scalar_t, acc_t>(gy, pre, gh, nhwc, groups, mean_c.data(), rstd_c.data(),
                                       s, t, act, static_cast<acc_t>(negative_slope), sums, gsf,
                                       gtf, gb);
    grad_scale = affine_grad<acc_t>(scale, sums, true, gsf, n, c, acc_opts);
    grad_shift = affine_grad<acc_t>(shift, sums, false, gtf, n, c, acc_opts);
    // grad_bias comes from the epilogue's sums, not from the convolution's backward (oneDNN
    // sums it with a scalar reference kernel, 10-20% of its whole backward here)
    if (has_bias) grad_bias = at::tensor(gb, acc_opts).to(x.scalar_type());
  });
  if (!has_bias) grad_bias = at::empty({0}, x.options());
  const cpu::ConvPlan plan = conv_plan_of(x, weight, geo, conv_in_float(x.scalar_type()));
  const bool upcast = conv_in_float(x.scalar_type(), plan);
  const at::Tensor xc = conv_activation(x, upcast, plan);
  const at::Tensor wc = conv_operand(weight, upcast);
  const at::Tensor ghc = conv_activation(gh, upcast, plan);
  at::Tensor grad_x, grad_weight;
  if (plan.gemm) {
    std::tie(grad_x, grad_weight) = geo.single_pixel(x)
                                        ? single_pixel_backward(ghc, xc, wc)
                                        : small_map_backward(ghc, xc, wc, geo);
  } else if (plan.winograd_backward && conv_transpose_nhwc_supported(xc, wc)) {
    std::tie(grad_x, grad_weight) = conv_transpose_nhwc_backward(ghc, xc, wc);
  } else {
    std::tie(grad_x, grad_weight, std::ignore) = at::convolution_backward(
        ghc, xc, wc, at::OptionalIntArrayRef(), geo.stride(), geo.padding(), {1, 1}, true,
        geo.output_padding(), 1, {true, true, false});
  }
  grad_x = to_layout(grad_x, x.scalar_type(), format_of(x));  // x's layout, as eager's
  if (upcast) grad_weight = grad_weight.to(weight.scalar_type());
  return {grad_x, grad_weight, grad_bias, grad_scale, grad_shift};
}

// The name of the conv path a call with these operands takes (for tests and tools).
std::string deconv_block_conv_plan(const at::Tensor& x, const at::Tensor& weight,
                                   at::IntArrayRef geometry) {
  return conv_plan_of(x, weight, parse_geometry(geometry), conv_in_float(x.scalar_type())).name();
}

}  // namespace fastvae::cpu::CPU_CAPABILITY
