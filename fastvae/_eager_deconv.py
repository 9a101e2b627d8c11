"""deconv_block as the eager modules it replaces compute it: ConvTranspose2d, then GroupNorm /
InstanceNorm / BatchNorm (or AdaIN's affine), then the activation, each one PyTorch op with
PyTorch's own autograd.

`backend="auto"` takes this path where the fused kernels are measured slower than eager
PyTorch (the brief: never ship a path slower than what it replaces). Today that is every
CUDA layer: on an H200 the fused CUDA block ran at 0.52-0.89x eager on the 14 layer/layout
cases of bench/gpu_check.py (host-bound launches and slow epilogue reductions), the Triton
block at 0.3-0.6x, so `fastvae.deconv_block` on CUDA with `auto` runs these ops.
`backend="native"` or `"triton"` named explicitly still runs the fused kernels. Math and dtypes are eager's (a bfloat16 block
normalizes in bfloat16 as nn.GroupNorm does), not the float32 of the fused backends; and
so is autograd: a second derivative works here, where the fused ops refuse one.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .reference import activate, as_broadcast


def uses_eager(requested: str, concrete: str, x: Tensor,
               running_mean: Optional[Tensor] = None) -> bool:
    """Whether fastvae.deconv_block runs eager's ops instead of `concrete`'s kernels: for
    `auto` on CUDA, where no layer measured yet is faster fused, native or Triton (see the
    module docstring; bench/gpu_check.py times both against eager on the next GPU). Not
    for running statistics of another dtype than x (float32 buffers beside a bfloat16
    block): F.batch_norm refuses those, the fused backends take them."""
    if running_mean is not None and running_mean.dtype != x.dtype:
        return False
    return requested == "auto" and concrete != "reference" and x.device.type == "cuda"


def deconv_block(x: Tensor, weight: Tensor, bias: Optional[Tensor], geometry: list,
                 norm: str, num_groups: int, norm_weight: Optional[Tensor],
                 norm_bias: Optional[Tensor], running_mean: Optional[Tensor],
                 running_var: Optional[Tensor], momentum: Optional[float], training: bool,
                 style_scale: Optional[Tensor], style_shift: Optional[Tensor],
                 activation: str, negative_slope: float, eps: float) -> Tensor:
    """fastvae.deconv_block's arguments, already validated; the same result up to rounding,
    and the running statistics updated in place by F.batch_norm itself."""
    sh, sw, ph, pw, oh, ow = geometry
    h = F.conv_transpose2d(x, weight, bias, stride=(sh, sw), padding=(ph, pw),
                           output_padding=(oh, ow))
    # (validated: norm_weight/norm_bias and AdaIN's style_scale/style_shift never both)
    if norm == "batch":
        batch_stats = training or running_mean is None
        h = F.batch_norm(h, running_mean, running_var, norm_weight, norm_bias,
                         training=batch_stats, momentum=momentum or 0.0, eps=eps)
    elif norm == "group":
        h = F.group_norm(h, num_groups, norm_weight, norm_bias, eps)
    elif norm == "instance":
        h = F.instance_norm(h, weight=norm_weight, bias=norm_bias, eps=eps)
    elif norm_weight is not None or norm_bias is not None:
        h = _affine(h, as_broadcast(norm_weight, True), as_broadcast(norm_bias, True))
    if style_scale is not None or style_shift is not None:  # AdaIN: per sample, or per pixel
        h = _affine(h, as_broadcast(style_scale, False), as_broadcast(style_shift, False))
    return activate(h, activation, negative_slope)


def _affine(h: Tensor, scale: Optional[Tensor], shift: Optional[Tensor]) -> Tensor:
    """h * scale + shift in h's dtype, one kernel when both are given."""
    scale = None if scale is None else scale.to(h.dtype)
    shift = None if shift is None else shift.to(h.dtype)
    if scale is not None and shift is not None:
        return torch.addcmul(shift, h, scale)
    return h * scale if shift is None else h + shift
