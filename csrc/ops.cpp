// The schemas of the native kernels and the (empty) Python module fastvae._C.
//
// One schema per op; csrc/cpu/*.cpp and csrc/cuda/*.cu each register one implementation
// per dispatch key. These are the `native` backend of the public custom ops in
// fastvae/ops.py, called below autograd: the public ops own autograd and fake tensors.
// Arguments follow the backend interface documented in fastvae/reference.py.
#include <Python.h>
#include <torch/library.h>

#include <string>
#include <vector>

#include "cpu/conv_plan.h"
#include "cpu/huge_page_empty.h"

extern "C" {
// Importing fastvae._C runs the static registrations below; the module itself is empty.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fastvae, m) {
  // z = mu + exp(logvar / 2) * eps; kl (B,) per-sample KL, float32 (float64 for float64).
  // eps = None: the Philox stream of the 0-d int64 `seed`, as tl.randn(seed, i).
  m.def("_reparam_kl_fwd(Tensor mu, Tensor logvar, Tensor? eps, Tensor seed) -> (Tensor, Tensor)");
  m.def(
      "_reparam_kl_bwd(Tensor grad_z, Tensor grad_kl, Tensor mu, Tensor logvar, Tensor? eps, "
      "Tensor seed) -> (Tensor, Tensor)");
  // Returns (y, pre_norm, mean, rstd); scale/shift broadcast to y. geometry: [stride_h,
  // stride_w, padding_h, padding_w, output_padding_h, output_padding_w]. groups > 0: GroupNorm
  // statistics, mean/rstd (N, groups); 0: no norm, (N, 0); -1: BatchNorm's per channel over
  // (N, H, W), (1, C).
  m.def(
      "_deconv_block_fwd(Tensor x, Tensor weight, Tensor? bias, Tensor? scale, Tensor? shift, "
      "int[] geometry, int groups, str activation, float negative_slope, float eps) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  // Returns (grad_x, grad_weight, grad_bias, grad_scale, grad_shift); absent ones are empty.
  m.def(
      "_deconv_block_bwd(Tensor grad_y, Tensor x, Tensor weight, Tensor pre_norm, Tensor mean, "
      "Tensor rstd, Tensor? scale, Tensor? shift, bool has_bias, int[] geometry, int groups, "
      "str activation, float negative_slope, float eps) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // CPU: the name of the convolution path _deconv_block_* take for these operands
  // (csrc/cpu/conv_plan.h).
  m.def("_deconv_block_conv_plan(Tensor x, Tensor weight, int[] geometry) -> str");
  // CPU: the thresholds of that path rule in use (csrc/cpu/conv_plan_thresholds.h): Tg, then
  // (Tf, Tmf, Tb, Tmb, Tc, Tcm) for an NCHW x and for a channels_last x; and its class's name.
  m.def("_deconv_block_conv_plan_table() -> int[]", [] {
    const fastvae::cpu::plan_table::Table& table = fastvae::cpu::conv_plan_table();
    std::vector<int64_t> out{table.gemm_min_cin_per_pixel};
    for (const auto& th : {table.nchw_input, table.channels_last_input}) {
      out.insert(out.end(), {th.forward_min_pixels_per_cin, th.forward_min_channels,
                             th.backward_min_pixels_per_cin, th.backward_min_channels,
                             th.channels_last_min_pixels, th.channels_last_min_channels});
    }
    return out;
  });
  m.def("_deconv_block_conv_plan_class() -> str",
        [] { return std::string(fastvae::cpu::conv_plan_table().name); });
  // CPU: bytes of freed large blocks kept for reuse (csrc/cpu/huge_page_empty.h).
  m.def("_cpu_cache_bytes() -> int",
        [] { return static_cast<int64_t>(fastvae::cpu::huge_cache_bytes()); });
}
