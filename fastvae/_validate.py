"""Argument checks for the public ops: a clear TypeError/ValueError naming the argument."""
import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
REDUCTIONS = ("none", "mean", "sum")
NORMS = ("group", "instance", "batch", "none")
ACTIVATIONS = ("leaky_relu", "silu", "relu", "tanh", "sigmoid", "gelu", "gelu_tanh", "none")


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


def reparam_kl(mu, logvar, eps, seed, generator, reduction):
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
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if seed is not None:
            raise ValueError("give seed or generator, not both")
    choice("reduction", reduction, REDUCTIONS)


def _pair(name, value):
    """An int or a pair of ints as a pair, else a TypeError naming the argument."""
    pair = (value, value) if not isinstance(value, (tuple, list)) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair


def geometry(x, weight, stride, padding, output_padding):
    """[stride_h, stride_w, padding_h, padding_w, output_padding_h, output_padding_w] of the
    transposed convolution, checked as nn.ConvTranspose2d checks them, defaults filled in."""
    tensor("x", x)
    tensor("weight", weight, x)
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (N, Cin, H, W), got shape {tuple(x.shape)}")
    if weight.dim() != 4 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"weight must have shape (Cin={x.shape[1]}, Cout, kH, kW), the "
                         f"nn.ConvTranspose2d layout; got {tuple(weight.shape)}")
    k = tuple(weight.shape[2:])
    if min(k) < 1:
        raise ValueError(f"weight's kernel size must be positive, got {k}")
    s = _pair("stride", stride)
    if min(s) < 1:
        raise ValueError(f"stride must be positive, got {stride!r}")
    if padding is None:  # today's meaning for 4x4 kernels, else what keeps stride x the input
        p = tuple(1 if kd == 4 else max(0, (kd - sd) // 2) for kd, sd in zip(k, s))
    else:
        p = _pair("padding", padding)
        if min(p) < 0:
            raise ValueError(f"padding must be non-negative, got {padding!r}")
    if output_padding is None:  # exactly stride x the input where some valid value does it
        op = tuple(sd - kd + 2 * pd if 0 <= sd - kd + 2 * pd < sd else 0
                   for kd, sd, pd in zip(k, s, p))
    else:
        op = _pair("output_padding", output_padding)
        if min(op) < 0 or any(o >= sd for o, sd in zip(op, s)):
            raise ValueError(f"output_padding must be in [0, stride) (dilation is 1), got "
                             f"{output_padding!r} with stride {s}")
    return [*s, *p, *op]


def deconv_block(x, weight, bias, out_hw, norm, num_groups, norm_weight, norm_bias,
                 running_mean, running_var, momentum, training, style_scale, style_shift,
                 activation, eps):
    """The rest of deconv_block's arguments, after geometry() checked x and weight."""
    if x.shape[0] == 0:
        raise ValueError("x has an empty batch (shape[0] == 0)")
    if x.numel() == 0:
        raise ValueError(f"x has no elements, shape {tuple(x.shape)}")
    n = x.shape[0]
    cout = weight.shape[1]
    if cout == 0:
        raise ValueError("weight has Cout == 0 output channels")
    if min(out_hw) < 1:
        raise ValueError(f"the output would be {out_hw[0]}x{out_hw[1]}: padding is too large "
                         f"for this input and kernel")
    for name, t in (("bias", bias), ("norm_weight", norm_weight), ("norm_bias", norm_bias)):
        tensor(name, t, x, optional=True)
        shape(name, t, (cout,))
    choice("norm", norm, NORMS)
    if norm == "group":
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"num_groups must be a positive int, got {num_groups!r}")
        if cout % num_groups:
            raise ValueError(f"num_groups={num_groups} does not divide Cout={cout}")
    _batch_norm(norm, running_mean, running_var, momentum, training, n * out_hw[0] * out_hw[1],
                x, cout)
    style_shapes = ((n, cout), (n, cout, *out_hw))
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


def _batch_norm(norm, running_mean, running_var, momentum, training, count, x, cout):
    """running_mean/running_var/momentum/training, as F.batch_norm takes them."""
    if norm != "batch":
        if running_mean is not None or running_var is not None:
            raise ValueError(f"running_mean/running_var are for norm='batch', got norm={norm!r}")
        return
    if (running_mean is None) != (running_var is None):
        raise ValueError("give both running_mean and running_var, or neither")
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if t is not None:
            tensor(name, t)
            shape(name, t, (cout,))
            if t.device != x.device:
                raise ValueError(f"{name} is on {t.device} but the input is on {x.device}")
    if not isinstance(training, bool):
        raise TypeError(f"training must be a bool, got {type(training).__name__}")
    if training and running_mean is not None and (
            isinstance(momentum, bool) or not isinstance(momentum, (int, float))):
        raise TypeError(f"momentum must be a float when the running statistics are updated, "
                        f"got {momentum!r}")
    if (training or running_mean is None) and count <= 1:
        raise ValueError(f"norm='batch' needs more than 1 value per channel for batch "
                         f"statistics, got N*Ho*Wo = {count}")
