"""Argument checks for the public ops: a clear TypeError/ValueError naming the argument."""
import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
REDUCTIONS = ("none", "mean", "sum")
NORMS = ("group", "instance", "none")
ACTIVATIONS = ("leaky_relu", "silu", "relu", "none")


def tensor(name, t, like=None, *, optional=False):
    """A floating tensor, on `like`'s device with `like`'s dtype when `like` is given."""
    if t is None and optional:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if like is not None:
        if t.device != like.device:
            raise ValueError(f"{name} is on {t.device} but the input is on {like.device}")
        if t.dtype != like.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but the input has {like.dtype}")


def shape(name, t, expected, what=""):
    if t is not None and tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}{what}, got {tuple(t.shape)}")


def choice(name, value, options):
    if value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")


def reparam_kl(mu, logvar, eps, seed, reduction):
    tensor("mu", mu)
    tensor("logvar", logvar, mu)
    tensor("eps", eps, mu, optional=True)
    if mu.dim() == 0:
        raise ValueError("mu must have a batch dimension, got a 0-d tensor")
    if mu.shape[0] == 0:
        raise ValueError("mu has an empty batch (shape[0] == 0)")
    shape("logvar", logvar, mu.shape, " (the shape of mu)")
    shape("eps", eps, mu.shape, " (the shape of mu)")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    choice("reduction", reduction, REDUCTIONS)


def deconv_block(x, weight, bias, norm, num_groups, norm_weight, norm_bias,
                 style_scale, style_shift, activation, eps):
    tensor("x", x)
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (N, Cin, H, W), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x has an empty batch (shape[0] == 0)")
    if x.numel() == 0:
        raise ValueError(f"x has no elements, shape {tuple(x.shape)}")
    tensor("weight", weight, x)
    n, cin, h, w = x.shape
    if weight.dim() != 4 or weight.shape[0] != cin or tuple(weight.shape[2:]) != (4, 4):
        raise ValueError(
            f"weight must have shape (Cin={cin}, Cout, 4, 4), the nn.ConvTranspose2d layout "
            f"of the kernel_size=4, stride=2, padding=1 block; got {tuple(weight.shape)}")
    cout = weight.shape[1]
    if cout == 0:
        raise ValueError("weight has Cout == 0 output channels")
    for name, t in (("bias", bias), ("norm_weight", norm_weight), ("norm_bias", norm_bias)):
        tensor(name, t, x, optional=True)
        shape(name, t, (cout,))
    choice("norm", norm, NORMS)
    if norm == "group":
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
        if cout % num_groups:
            raise ValueError(f"num_groups={num_groups} does not divide Cout={cout}")
    style_shapes = ((n, cout), (n, cout, 2 * h, 2 * w))
    for name, t in (("style_scale", style_scale), ("style_shift", style_shift)):
        tensor(name, t, x, optional=True)
        if t is not None and tuple(t.shape) not in style_shapes:
            raise ValueError(f"{name} must have shape {style_shapes[0]} or {style_shapes[1]}, "
                             f"got {tuple(t.shape)}")
    if (style_scale is not None or style_shift is not None) and (
            norm_weight is not None or norm_bias is not None):
        raise ValueError("give either style_scale/style_shift (AdaIN) or "
                         "norm_weight/norm_bias, not both")
    choice("activation", activation, ACTIVATIONS)
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
