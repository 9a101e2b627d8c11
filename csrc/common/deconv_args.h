// Host-side argument reading shared by the CPU and CUDA deconv_block ops: the activation's
// name and the memory formats of the outputs, so both backends follow one rule.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include "common/deconv_epilogue.h"

namespace fastvae {
namespace deconv {

inline Activation parse_activation(c10::string_view name) {
  if (name == "leaky_relu") return Activation::kLeakyRelu;
  if (name == "relu") return Activation::kRelu;
  if (name == "silu") return Activation::kSilu;
  if (name == "tanh") return Activation::kTanh;
  if (name == "sigmoid") return Activation::kSigmoid;
  if (name == "gelu") return Activation::kGelu;
  if (name == "gelu_tanh") return Activation::kGeluTanh;
  TORCH_CHECK(name == "none", "deconv_block: unknown activation ", name);
  return Activation::kNone;
}

// A tensor's own memory format: channels_last only when it is that and not also contiguous.
inline at::MemoryFormat format_of(const at::Tensor& t) {
  if (!t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast)) {
    return at::MemoryFormat::ChannelsLast;
  }
  return at::MemoryFormat::Contiguous;
}

// The output's (and pre_norm's), by eager's rule for a convolution
// (fastvae.reference.memory_format): channels_last when x or the weight is. grad_x is x's.
inline at::MemoryFormat output_format(const at::Tensor& x, const at::Tensor& weight) {
  return format_of(weight) == at::MemoryFormat::ChannelsLast ? at::MemoryFormat::ChannelsLast
                                                             : format_of(x);
}

}  // namespace deconv
}  // namespace fastvae
