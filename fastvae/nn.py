"""Drop-in modules around the fused ops."""
import math
from typing import Optional

import torch
from torch import Tensor, nn

from . import _validate
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
    """ConvTranspose2d(k=4, s=2, p=1) + bias + GroupNorm/InstanceNorm/AdaIN + activation.

    With `style_dim`, forward(x, style) maps style (N, style_dim) through a linear layer to
    AdaIN scale (1 + the first half, so a zero style is the identity) and shift.
    """

    def __init__(self, in_channels: int, out_channels: int, *, norm: str = "group",
                 num_groups: int = 32, activation: str = "leaky_relu",
                 style_dim: Optional[int] = None, backend: str = "auto",
                 negative_slope: float = 0.2, eps: float = 1e-5, bias: bool = True,
                 affine: bool = True, device=None, dtype=None):
        super().__init__()
        _validate.choice("norm", norm, _validate.NORMS)
        _validate.choice("activation", activation, _validate.ACTIVATIONS)
        if norm == "group" and out_channels % num_groups:
            raise ValueError(f"num_groups={num_groups} does not divide out_channels={out_channels}")
        factory = {"device": device, "dtype": dtype}
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm, self.num_groups, self.activation = norm, num_groups, activation
        self.negative_slope, self.eps, self.backend = negative_slope, eps, backend
        self.style_dim = style_dim
        self.weight = nn.Parameter(torch.empty(in_channels, out_channels, 4, 4, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        use_affine = affine and norm != "none" and style_dim is None
        self.norm_weight = nn.Parameter(torch.ones(out_channels, **factory)) if use_affine else None
        self.norm_bias = nn.Parameter(torch.zeros(out_channels, **factory)) if use_affine else None
        self.style = nn.Linear(style_dim, 2 * out_channels, **factory) if style_dim else None
        self.reset_parameters()

    def reset_parameters(self):
        # nn.ConvTranspose2d's init: fan_in is weight.size(1) * 4 * 4 for transposed convs
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.out_channels * 16)
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
        """The block with AdaIN parameters given directly: (N, Cout) or (N, Cout, 2H, 2W)."""
        tensors = [x, self.weight, self.bias, self.norm_weight, self.norm_bias,
                   style_scale, style_shift]
        if torch.is_autocast_enabled(x.device.type):  # custom ops are not autocast
            dtype = torch.get_autocast_dtype(x.device.type)
            tensors = [t if t is None else t.to(dtype) for t in tensors]
        x, weight, bias, norm_weight, norm_bias, style_scale, style_shift = tensors
        return deconv_block(
            x, weight, bias, norm=self.norm, num_groups=self.num_groups,
            norm_weight=norm_weight, norm_bias=norm_bias, style_scale=style_scale,
            style_shift=style_shift, activation=self.activation,
            negative_slope=self.negative_slope, eps=self.eps, backend=self.backend)

    @classmethod
    def from_modules(cls, conv_transpose: nn.ConvTranspose2d, norm: Optional[nn.Module] = None,
                     activation: Optional[nn.Module] = None, *, backend: str = "auto"):
        """A DeconvBlock computing conv_transpose -> norm -> activation, weights copied."""
        c = conv_transpose
        if not isinstance(c, nn.ConvTranspose2d):
            raise TypeError(f"conv_transpose must be nn.ConvTranspose2d, got {type(c).__name__}")
        if (c.kernel_size, c.stride, c.padding, c.output_padding, c.dilation, c.groups) != (
                (4, 4), (2, 2), (1, 1), (0, 0), (1, 1), 1):
            raise ValueError("conv_transpose must have kernel_size=4, stride=2, padding=1, "
                             "output_padding=0, dilation=1, groups=1")
        kwargs = {"norm": "none", "eps": 1e-5, "affine": False}
        if isinstance(norm, nn.GroupNorm):
            kwargs = {"norm": "group", "num_groups": norm.num_groups, "eps": norm.eps,
                      "affine": norm.affine}
        elif isinstance(norm, nn.InstanceNorm2d):
            if norm.track_running_stats:
                raise ValueError("norm: InstanceNorm2d with track_running_stats=True uses "
                                 "running statistics in eval; not supported")
            kwargs = {"norm": "instance", "eps": norm.eps, "affine": norm.affine}
        elif norm is not None and not isinstance(norm, nn.Identity):
            raise TypeError(f"norm must be nn.GroupNorm, nn.InstanceNorm2d, nn.Identity or None, "
                            f"got {type(norm).__name__}")
        if isinstance(activation, nn.LeakyReLU):
            kwargs.update(activation="leaky_relu", negative_slope=activation.negative_slope)
        elif isinstance(activation, (nn.ReLU, nn.SiLU)):
            kwargs.update(activation="relu" if isinstance(activation, nn.ReLU) else "silu")
        elif activation is None or isinstance(activation, nn.Identity):
            kwargs.update(activation="none")
        else:
            raise TypeError(f"activation must be nn.LeakyReLU, nn.ReLU, nn.SiLU, nn.Identity or "
                            f"None, got {type(activation).__name__}")
        block = cls(c.in_channels, c.out_channels, bias=c.bias is not None, backend=backend,
                    device=c.weight.device, dtype=c.weight.dtype, **kwargs)
        with torch.no_grad():
            block.weight.copy_(c.weight)
            if c.bias is not None:
                block.bias.copy_(c.bias)
            if block.norm_weight is not None:
                block.norm_weight.copy_(norm.weight)
                block.norm_bias.copy_(norm.bias)
        return block

    def extra_repr(self):
        s = f"{self.in_channels}, {self.out_channels}, norm={self.norm!r}"
        if self.norm == "group":
            s += f", num_groups={self.num_groups}"
        return s + f", activation={self.activation!r}, backend={self.backend!r}"
