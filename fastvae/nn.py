"""Drop-in modules around the fused ops."""
import math
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from . import _validate, fusion
from .ops import deconv_block, reparam_kl


class ReparamKL(nn.Module):
    """(mu, logvar) -> (z, kl). In eval() mode z = mu (no noise); kl is still computed."""

    def __init__(self, reduction: str = "mean", backend: str = "auto"):
        super().__init__()
        _validate.choice("reduction", reduction, _validate.REDUCTIONS)
        self.reduction = reduction
        self.backend = backend

    def forward(self, mu: Tensor, logvar: Tensor):
        eps = None if self.training else torch.zeros_like(mu)
        return reparam_kl(mu, logvar, eps, reduction=self.reduction, backend=self.backend)

    def extra_repr(self):
        return f"reduction={self.reduction!r}, backend={self.backend!r}"


class DeconvBlock(nn.Module):
    """ConvTranspose2d + bias + GroupNorm/InstanceNorm/BatchNorm/AdaIN + activation.

    The convolution takes nn.ConvTranspose2d's kernel_size/stride/padding/output_padding
    (4/2/1/0 by default: the 2x up-sampling block). With `style_dim`, forward(x, style) maps
    style (N, style_dim) through a linear layer to AdaIN scale (1 + the first half, so a zero
    style is the identity) and shift. norm="batch" keeps running_mean/running_var/
    num_batches_tracked buffers and uses them as nn.BatchNorm2d does (momentum=None: a
    cumulative average).
    """

    def __init__(self, in_channels: int, out_channels: int, *, kernel_size: int = 4,
                 stride: int = 2, padding: Optional[int] = None,
                 output_padding: Optional[int] = None, norm: str = "group",
                 num_groups: int = 32, activation: str = "leaky_relu",
                 style_dim: Optional[int] = None, backend: str = "auto",
                 negative_slope: float = 0.2, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 track_running_stats: bool = True, bias: bool = True, affine: bool = True,
                 device=None, dtype=None):
        super().__init__()
        _validate.choice("norm", norm, _validate.NORMS)
        _validate.choice("activation", activation, _validate.ACTIVATIONS)
        if norm == "group" and out_channels % num_groups:
            raise ValueError(f"num_groups={num_groups} does not divide out_channels={out_channels}")
        factory = {"device": device, "dtype": dtype}
        self.in_channels, self.out_channels = in_channels, out_channels
        k = kernel_size if isinstance(kernel_size, tuple) else (kernel_size, kernel_size)
        self.kernel_size, self.stride = k, stride
        self.padding, self.output_padding = padding, output_padding
        self.norm, self.num_groups, self.activation = norm, num_groups, activation
        self.negative_slope, self.eps, self.backend = negative_slope, eps, backend
        self.momentum, self.track_running_stats = momentum, track_running_stats
        self.style_dim = style_dim
        self.weight = nn.Parameter(torch.empty(in_channels, out_channels, *k, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        use_affine = affine and norm != "none" and style_dim is None
        self.norm_weight = nn.Parameter(torch.ones(out_channels, **factory)) if use_affine else None
        self.norm_bias = nn.Parameter(torch.zeros(out_channels, **factory)) if use_affine else None
        if norm == "batch" and track_running_stats:
            self.register_buffer("running_mean", torch.zeros(out_channels, **factory))
            self.register_buffer("running_var", torch.ones(out_channels, **factory))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long,
                                                                     device=device))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None
        self.style = nn.Linear(style_dim, 2 * out_channels, **factory) if style_dim else None
        self.reset_parameters()

    def reset_parameters(self):
        # nn.ConvTranspose2d's init: fan_in is weight.size(1) * kH * kW for transposed convs
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.out_channels * self.weight[0, 0].numel())
            nn.init.uniform_(self.bias, -bound, bound)
        if self.style is not None:
            nn.init.zeros_(self.style.weight)
            nn.init.zeros_(self.style.bias)

    def forward(self, x: Tensor, style: Optional[Tensor] = None) -> Tensor:
        if (style is None) != (self.style is None):
            raise ValueError("style must be given exactly when the block has a style_dim")
        style_scale = style_shift = None
        if style is not None:
            style_scale, style_shift = self.style(style).chunk(2, dim=1)  # (N, Cout) each
            style_scale = style_scale + 1
        return self.apply_block(x, style_scale, style_shift)

    def apply_block(self, x: Tensor, style_scale: Optional[Tensor] = None,
                    style_shift: Optional[Tensor] = None) -> Tensor:
        """The block with AdaIN parameters given directly: (N, Cout) or (N, Cout, Ho, Wo)."""
        tensors = [x, self.weight, self.bias, self.norm_weight, self.norm_bias,
                   style_scale, style_shift]
        if torch.is_autocast_enabled(x.device.type):  # custom ops are not autocast
            dtype = torch.get_autocast_dtype(x.device.type)
            tensors = [t if t is None else t.to(dtype) for t in tensors]
        x, weight, bias, norm_weight, norm_bias, style_scale, style_shift = tensors
        batch = fusion.batch_norm_args(self) if self.norm == "batch" else {}
        return deconv_block(
            x, weight, bias, stride=self.stride, padding=self.padding,
            output_padding=self.output_padding, norm=self.norm, num_groups=self.num_groups,
            norm_weight=norm_weight, norm_bias=norm_bias, style_scale=style_scale,
            style_shift=style_shift, activation=self.activation,
            negative_slope=self.negative_slope, eps=self.eps, backend=self.backend, **batch)

    @classmethod
    def from_modules(cls, conv_transpose: nn.ConvTranspose2d, norm: Optional[nn.Module] = None,
                     activation: Optional[nn.Module] = None, *, backend: str = "auto"):
        """A DeconvBlock computing conv_transpose -> norm -> activation that shares their
        Parameter and buffer objects (no copies: training either trains both).

        Takes what fastvae.fuse fuses: any nn.ConvTranspose2d geometry with dilation 1 and
        groups 1; nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d without running statistics,
        nn.Identity or None; nn.ReLU, LeakyReLU, SiLU, GELU, Tanh, Sigmoid, Identity or None.
        Anything else (a parametrized or hooked conv included: use fastvae.fuse, which reads
        a parametrization on every call) is a TypeError/ValueError naming the argument.
        """
        c = conv_transpose
        if not isinstance(c, nn.ConvTranspose2d):
            raise TypeError(f"conv_transpose must be nn.ConvTranspose2d, got {type(c).__name__}")
        for name, module, check in (("conv_transpose", c, fusion.check_conv),
                                    ("norm", norm, fusion.check_norm),
                                    ("activation", activation, fusion.check_activation)):
            try:
                check(module)
            except fusion.Unfusable as e:
                raise type(e)(f"{name}: {e}") from None
        if parametrize.is_parametrized(c):
            raise ValueError("conv_transpose: its weight is parametrized, which a DeconvBlock "
                             "cannot hold; fastvae.fuse(model) fuses it and reads the "
                             "parametrization on every call")
        kwargs = {"norm": "none", "affine": False}
        if isinstance(norm, (nn.GroupNorm, nn.InstanceNorm2d, nn.BatchNorm2d)):
            kwargs = {"norm": {nn.GroupNorm: "group", nn.InstanceNorm2d: "instance",
                               nn.BatchNorm2d: "batch"}[type(norm)],
                      "eps": norm.eps, "affine": norm.affine}
            if type(norm) is nn.GroupNorm:
                kwargs["num_groups"] = norm.num_groups
            if type(norm) is nn.BatchNorm2d:
                kwargs.update(momentum=norm.momentum,
                              track_running_stats=norm.track_running_stats)
        act = fusion.activation_args(activation)
        block = cls(c.in_channels, c.out_channels, kernel_size=c.kernel_size, stride=c.stride,
                    padding=c.padding, output_padding=c.output_padding,
                    bias=c.bias is not None, backend=backend, device=c.weight.device,
                    dtype=c.weight.dtype, **kwargs, **act)
        block.weight, block.bias = c.weight, c.bias  # the same Parameter objects
        if kwargs["affine"]:
            block.norm_weight, block.norm_bias = norm.weight, norm.bias
        if type(norm) is nn.BatchNorm2d and norm.track_running_stats:
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(block, name, getattr(norm, name))  # the same buffer tensors
        return block

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, " \
            f"stride={self.stride}, norm={self.norm!r}"
        if self.norm == "group":
            s += f", num_groups={self.num_groups}"
        return s + f", activation={self.activation!r}, backend={self.backend!r}"
