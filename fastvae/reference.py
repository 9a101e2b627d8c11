"""Plain-PyTorch ground truth for every op: the tests, benchmarks and fallbacks share it.

Math runs in float32 (float64 for float64 inputs); outputs are cast back to the input
dtype. Each op has the backend interface every backend implements:
  reparam_kl_fwd(mu, logvar, eps, seed) -> (z, kl_per_sample)
  reparam_kl_bwd(grad_z, grad_kl, mu, logvar, eps, seed) -> (grad_mu, grad_logvar)
  deconv_block_fwd(x, weight, bias, scale, shift, geometry, groups, activation,
                   negative_slope, eps) -> (y, pre_norm, mean, rstd)
  deconv_block_bwd(grad_y, x, weight, pre_norm, mean, rstd, scale, shift, has_bias,
                   geometry, groups, activation, negative_slope, eps)
      -> (grad_x, grad_weight, grad_bias, grad_scale, grad_shift)
`seed` is a 0-d int64 tensor. `scale`/`shift` are None or 4-D tensors that broadcast to
the output: (1, C, 1, 1) for norm_weight/norm_bias, (N, C, 1, 1) or (N, C, H, W) for
AdaIN. `geometry` is the transposed convolution's [stride_h, stride_w, padding_h,
padding_w, output_padding_h, output_padding_w] (dilation 1, groups 1). `groups`: > 0 for
GroupNorm statistics per (sample, group), mean/rstd (N, groups); 0 for no norm, mean/rstd
(N, 0); BATCH (-1) for BatchNorm statistics per channel over (N, H, W), mean/rstd (1, C).
Absent gradients come back as None.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import philox

BATCH = -1  # `groups` value of BatchNorm's per-channel statistics over (N, H, W)
K4S2P1 = [2, 2, 1, 1, 0, 0]  # geometry of the classic block: 4x4 kernel, stride 2, padding 1


def as_broadcast(t: Optional[Tensor], per_channel: bool) -> Optional[Tensor]:
    """A scale/shift as it broadcasts to the output: (C,) -> (1, C, 1, 1); (N, C) ->
    (N, C, 1, 1); (N, C, H, W) stays."""
    if t is None:
        return None
    if per_channel:
        return t.view(1, -1, 1, 1)
    return t if t.dim() == 4 else t.view(*t.shape, 1, 1)


def _is_channels_last(t: Tensor) -> bool:
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def memory_format(t: Tensor, weight: Optional[Tensor] = None) -> torch.memory_format:
    """t's memory format (a tensor that is both, a 1x1 map, counts as contiguous); given a
    weight, deconv_block's output's by eager's convolution rule: channels_last when the
    input or the weight is (model.to(memory_format=channels_last) makes every layer's output
    channels_last, whatever the input's layout). Every backend allocates by this rule."""
    if _is_channels_last(t) or (weight is not None and _is_channels_last(weight)):
        return torch.channels_last
    return torch.contiguous_format


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------- reparam_kl


def noise(mu: Tensor, eps: Optional[Tensor], seed: Tensor) -> Tensor:
    """The eps the op uses, in the compute dtype: given, or the Philox stream of `seed`."""
    acc = compute_dtype(mu.dtype)
    if eps is not None:
        return eps.to(acc)
    return philox.randn(int(seed), mu.numel(), device=mu.device).view(mu.shape).to(acc)


def reparam_kl_fwd(mu: Tensor, logvar: Tensor, eps: Optional[Tensor], seed: Tensor):
    acc = compute_dtype(mu.dtype)
    m, lv = mu.to(acc), logvar.to(acc)
    z = m + torch.exp(0.5 * lv) * noise(mu, eps, seed)
    kl = -0.5 * (1 + lv - m * m - torch.exp(lv))
    return z.to(mu.dtype), kl.reshape(mu.shape[0], -1).sum(1)


def reparam_kl_bwd(grad_z: Tensor, grad_kl: Tensor, mu: Tensor, logvar: Tensor,
                   eps: Optional[Tensor], seed: Tensor):
    acc = compute_dtype(mu.dtype)
    m, lv = mu.to(acc), logvar.to(acc)
    g_z = grad_z.to(acc)
    g_kl = grad_kl.to(acc).view((-1,) + (1,) * (mu.dim() - 1))  # (B, 1, ...)
    std = torch.exp(0.5 * lv)
    grad_mu = g_z + g_kl * m
    grad_logvar = g_z * noise(mu, eps, seed) * 0.5 * std + g_kl * 0.5 * (torch.exp(lv) - 1)
    return grad_mu.to(mu.dtype), grad_logvar.to(mu.dtype)


# --------------------------------------------------------------------------- deconv_block


def activate(a: Tensor, activation: str, negative_slope: float) -> Tensor:
    if activation == "leaky_relu":
        return F.leaky_relu(a, negative_slope)
    if activation == "relu":
        return F.relu(a)
    if activation == "silu":
        return F.silu(a)
    if activation == "tanh":
        return torch.tanh(a)
    if activation == "sigmoid":
        return torch.sigmoid(a)
    if activation == "gelu":
        return F.gelu(a)
    if activation == "gelu_tanh":
        return F.gelu(a, approximate="tanh")
    return a


def activate_grad(a: Tensor, activation: str, negative_slope: float) -> Tensor:
    """d act(a) / da."""
    if activation == "leaky_relu":
        # in a's dtype from the start: torch.where of two Python floats is float32, which
        # rounded the slope (0.2) and so float64 gradients to 1e-8
        return torch.full_like(a, negative_slope).masked_fill_(a > 0, 1.0)
    if activation == "relu":
        return (a > 0).to(a.dtype)
    if activation == "silu":
        s = torch.sigmoid(a)
        return s * (1 + a * (1 - s))
    if activation == "tanh":
        return 1 - torch.tanh(a).square()
    if activation == "sigmoid":
        s = torch.sigmoid(a)
        return s * (1 - s)
    if activation == "gelu":  # Phi(a) + a * phi(a)
        phi = torch.exp(-0.5 * a * a) * (2 * torch.pi) ** -0.5
        return 0.5 * (1 + torch.erf(a * 0.5**0.5)) + a * phi
    if activation == "gelu_tanh":  # 0.5 a (1 + tanh(u)), u = sqrt(2/pi) (a + 0.044715 a^3)
        k = (2 / torch.pi) ** 0.5
        t = torch.tanh(k * (a + 0.044715 * a**3))
        return 0.5 * (1 + t) + 0.5 * a * (1 - t * t) * k * (1 + 3 * 0.044715 * a * a)
    return torch.ones_like(a)


def _grouped(t: Tensor, groups: int) -> Tensor:
    """t (N, C, H, W) as (S, G, L), reduced over L: (N, groups, C/groups*H*W) per sample,
    or for BATCH (1, C, N*H*W) per channel (a copy)."""
    if groups == BATCH:
        return t.transpose(0, 1).reshape(1, t.shape[1], -1)
    return t.reshape(t.shape[0], groups, -1)


def _ungrouped(g: Tensor, groups: int, shape) -> Tensor:
    """The inverse of _grouped."""
    if groups == BATCH:
        return g.view(shape[1], shape[0], *shape[2:]).transpose(0, 1)
    return g.reshape(shape)


def group_stats(h: Tensor, groups: int, eps: float):
    """Biased mean and 1/sqrt(var + eps) of each (sample, group), (N, groups) each, or of
    each channel over (N, H, W) for BATCH, (1, C) each."""
    g = _grouped(h, groups)
    mean = g.mean(-1)
    var = (g - mean[..., None]).square().mean(-1)
    return mean, torch.rsqrt(var + eps)


def normalize(h: Tensor, mean: Tensor, rstd: Tensor, groups: int) -> Tensor:
    g = _grouped(h, groups)
    return _ungrouped((g - mean[..., None]) * rstd[..., None], groups, h.shape)


def conv_transpose(x: Tensor, weight: Tensor, bias: Optional[Tensor], geometry) -> Tensor:
    sh, sw, ph, pw, oh, ow = geometry
    return F.conv_transpose2d(x, weight, bias, stride=(sh, sw), padding=(ph, pw),
                              output_padding=(oh, ow))


def deconv_block_fwd(x, weight, bias, scale, shift, geometry, groups, activation,
                     negative_slope, eps):
    acc = compute_dtype(x.dtype)
    pre_norm = conv_transpose(x, weight, bias, geometry)  # (N, C, Ho, Wo), x's dtype
    h = pre_norm.to(acc)
    if groups:
        mean, rstd = group_stats(h, groups, eps)
        h = normalize(h, mean, rstd, groups)
    else:
        h = h.clone()  # y must not alias pre_norm, even with nothing to apply
        mean, rstd = h.new_empty(h.shape[0], 0), h.new_empty(h.shape[0], 0)
    if scale is not None:
        h = h * scale.to(acc)
    if shift is not None:
        h = h + shift.to(acc)
    y = activate(h, activation, negative_slope).to(x.dtype)
    return y, pre_norm, mean, rstd


def deconv_block_bwd(grad_y, x, weight, pre_norm, mean, rstd, scale, shift, has_bias,
                     geometry, groups, activation, negative_slope, eps):
    acc = compute_dtype(x.dtype)
    h = pre_norm.to(acc)
    if groups:  # statistics recomputed: the reference trusts nothing it was handed
        mean, rstd = group_stats(h, groups, eps)
        n = normalize(h, mean, rstd, groups)
    else:
        n = h
    a = n if scale is None else n * scale.to(acc)
    if shift is not None:
        a = a + shift.to(acc)
    g_a = grad_y.to(acc) * activate_grad(a, activation, negative_slope)
    grad_scale = None if scale is None else (g_a * n).sum_to_size(scale.shape).to(scale.dtype)
    grad_shift = None if shift is None else g_a.sum_to_size(shift.shape).to(shift.dtype)
    g_n = g_a if scale is None else g_a * scale.to(acc)
    if groups:
        gn, nn_ = _grouped(g_n, groups), _grouped(n, groups)
        g_h = rstd[..., None] * (gn - gn.mean(-1, keepdim=True)
                                 - nn_ * (gn * nn_).mean(-1, keepdim=True))
        g_h = _ungrouped(g_h, groups, h.shape)
    else:
        g_h = g_n
    grad_x, grad_weight, grad_bias = conv_transpose_backward(
        g_h.to(x.dtype), x, weight, has_bias, geometry)
    return grad_x, grad_weight, grad_bias, grad_scale, grad_shift


def conv_transpose_backward(grad_out: Tensor, x: Tensor, weight: Tensor, has_bias: bool,
                            geometry):
    """Gradients of conv_transpose2d(x, weight, bias, *geometry) through ATen."""
    sh, sw, ph, pw, oh, ow = geometry
    grad_x, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
        grad_out, x, weight, [weight.shape[1]] if has_bias else None,
        [sh, sw], [ph, pw], [1, 1], True, [oh, ow], 1, [True, True, has_bias])
    return grad_x, grad_weight, grad_bias
