"""fastvae.deconv_block: the reference against torch.nn modules, every backend against it."""
import contextlib
import copy
import itertools

import pytest
import torch
from torch import nn

import fastvae
from conftest import assert_close_to_reference, backend_params
from fastvae.reference import K4S2P1

KERNEL_BACKENDS = [p for p in backend_params("deconv_block") if p.id != "reference"]
ACTIVATIONS = {"leaky_relu": nn.LeakyReLU(0.2), "relu": nn.ReLU(), "silu": nn.SiLU(),
               "none": nn.Identity()}
# (norm, affine): affine is "none", "channel" (norm_weight/bias), "style" ((N, C) AdaIN)
# or "spatial" ((N, C, 2H, 2W) AdaIN)
OPTIONS = [("group", "channel"), ("group", "style"), ("instance", "spatial"),
           ("instance", "none"), ("none", "style"), ("none", "none"), ("group", "none")]


def make_args(n=2, cin=6, cout=8, h=5, w=3, norm="group", affine="channel", groups=4,
              dtype=torch.float32, layout="contiguous", bias=True):
    x = torch.randn(n, cin, h, w, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.randn(n, cin, h, 2 * w, dtype=dtype)[..., ::2]
    kwargs = dict(norm=norm, num_groups=groups)
    if affine == "channel":
        kwargs.update(norm_weight=1 + 0.5 * torch.randn(cout, dtype=dtype),
                      norm_bias=torch.randn(cout, dtype=dtype))
    elif affine in ("style", "spatial"):
        shape = (n, cout) if affine == "style" else (n, cout, 2 * h, 2 * w)
        kwargs.update(style_scale=1 + 0.5 * torch.randn(shape, dtype=dtype),
                      style_shift=torch.randn(shape, dtype=dtype))
    weight = torch.randn(cin, cout, 4, 4, dtype=dtype) / (cin * 4) ** 0.5
    b = torch.randn(cout, dtype=dtype) if bias else None
    return x, weight, b, kwargs


def tensors_of(x, weight, bias, kwargs):
    named = {"x": x, "weight": weight, "bias": bias}
    named.update({k: v for k, v in kwargs.items() if isinstance(v, torch.Tensor)})
    return {k: v for k, v in named.items() if v is not None}


def run(backend, x, weight, bias, kwargs, grad_y, dtype=None):
    """y and the gradient of every tensor argument, with inputs cast to `dtype`."""
    leaves = {k: (v.to(dtype) if dtype else v).detach().requires_grad_()
              for k, v in tensors_of(x, weight, bias, kwargs).items()}
    other = {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)}
    tensor_kwargs = {k: v for k, v in leaves.items() if k not in ("x", "weight", "bias")}
    y = fastvae.deconv_block(leaves["x"], leaves["weight"], leaves.get("bias"), backend=backend,
                             **other, **tensor_kwargs)
    grads = torch.autograd.grad(y, list(leaves.values()), grad_y.to(y.dtype))
    return {"y": y, **{"grad_" + k: g for k, g in zip(leaves, grads)}}


# ----------------------------------------------------------------------- the reference


def torch_modules(cin, cout, norm, groups, activation, weight, bias, kwargs):
    conv = nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=bias is not None).double()
    conv.weight.data.copy_(weight)
    if bias is not None:
        conv.bias.data.copy_(bias)
    layers = [conv]
    if norm != "none":
        affine = "norm_weight" in kwargs
        layer = (nn.GroupNorm(groups, cout, affine=affine) if norm == "group"
                 else nn.InstanceNorm2d(cout, affine=affine)).double()
        if affine:
            layer.weight.data.copy_(kwargs["norm_weight"])
            layer.bias.data.copy_(kwargs["norm_bias"])
        layers.append(layer)
    return nn.Sequential(*layers), ACTIVATIONS[activation]


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
@pytest.mark.parametrize("norm, affine", OPTIONS)
def test_reference_matches_torch_modules(norm, affine, activation):
    x, weight, bias, kwargs = make_args(norm=norm, affine=affine, dtype=torch.float64)
    stack, act = torch_modules(6, 8, norm, 4, activation, weight, bias, kwargs)
    x_ref = x.clone().requires_grad_()
    pre = stack(x_ref)
    if affine in ("style", "spatial"):  # AdaIN on top of the parameter-free norm
        scale, shift = kwargs["style_scale"], kwargs["style_shift"]
        if affine == "style":
            scale, shift = scale[..., None, None], shift[..., None, None]
        pre = pre * scale + shift
    y_ref = act(pre)
    grad_y = torch.randn_like(y_ref)
    out = run("reference", x, weight, bias, dict(kwargs, activation=activation), grad_y)
    torch.testing.assert_close(out["y"], y_ref)
    conv = stack[0]
    expected = {"grad_x": x_ref, "grad_weight": conv.weight, "grad_bias": conv.bias}
    if "norm_weight" in kwargs:
        expected.update(grad_norm_weight=stack[1].weight, grad_norm_bias=stack[1].bias)
    grads = torch.autograd.grad(y_ref, list(expected.values()), grad_y)
    for name, g in zip(expected, grads):
        torch.testing.assert_close(out[name], g, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("norm, affine", OPTIONS[:5])
def test_reference_gradcheck(norm, affine):
    x, weight, bias, kwargs = make_args(n=2, cin=3, cout=4, h=3, w=2, norm=norm, affine=affine,
                                        groups=2, dtype=torch.float64)
    names = list(tensors_of(x, weight, bias, kwargs))
    values = [t.requires_grad_() for t in tensors_of(x, weight, bias, kwargs).values()]
    other = {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)}

    def fn(*tensors):
        named = dict(zip(names, tensors))
        return fastvae.deconv_block(named.pop("x"), named.pop("weight"), named.pop("bias"),
                                    activation="silu", backend="reference", **other, **named)

    assert torch.autograd.gradcheck(fn, values)


# ------------------------------------------------------------- every backend vs reference


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("norm, affine, activation", [
    (n, a, act) for (n, a), act in zip(OPTIONS, itertools.cycle(ACTIVATIONS))])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_backend_matches_reference(backend, norm, affine, activation, dtype, layout):
    if dtype != torch.float32 and activation in ("relu", "leaky_relu"):
        # In half precision a pre-activation one rounding step from 0 may land on either
        # side of the kink in kernel and reference, flipping that gradient element: the
        # kinked activations are checked in float32, the smooth ones in every dtype.
        activation = "silu"
    x, weight, bias, kwargs = make_args(n=2, cin=5, cout=8, h=5, w=3, norm=norm, affine=affine,
                                        dtype=dtype, layout=layout)
    kwargs["activation"] = activation
    grad_y = torch.randn(2, 8, 10, 6)
    out = run(backend, x, weight, bias, kwargs, grad_y)
    ref_low = run("reference", x, weight, bias, kwargs, grad_y)
    ref_hi = run("reference", x, weight, bias, kwargs, grad_y, dtype=torch.float32)
    assert out["y"].shape == (2, 8, 10, 6)
    for name in ref_low:
        assert out[name].dtype == ref_low[name].dtype, name
        if name == "grad_bias" and norm != "none":
            # Exactly zero in exact arithmetic (the norm removes the bias): both sides are
            # rounding noise, bounded by a multiple of torch's own.
            noise = max(4 * ref_low[name].abs().max().item(), 1e-4)
            assert out[name].abs().max().item() <= noise, name
            continue
        assert_close_to_reference(out[name], ref_low[name], ref_hi[name], dtype, name)


@pytest.mark.parametrize("hw", [(5, 3), (1, 1)])  # 1x1: x is both layouts at once
@pytest.mark.parametrize("weight_layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("x_layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("backend", backend_params("deconv_block"))
def test_memory_format_follows_eager(backend, x_layout, weight_layout, hw):
    """y is channels_last when x or the weight is, as nn.ConvTranspose2d's output (so a
    model.to(memory_format=channels_last) stays channels_last from a 1x1 latent on), and
    grad_x takes x's layout; the values are the contiguous call's."""
    x, weight, bias, kwargs = make_args(h=hw[0], w=hw[1], layout=x_layout)
    if weight_layout == "channels_last":
        weight = weight.contiguous(memory_format=torch.channels_last)
    conv = nn.ConvTranspose2d(weight.shape[0], weight.shape[1], 4, 2, 1)
    conv.weight.data, conv.bias.data = weight, bias
    x_eager = x.detach().clone().requires_grad_()
    y_eager = conv(x_eager)
    grad_y = torch.randn(y_eager.shape)
    y_eager.backward(grad_y)
    out = run(backend, x, weight, bias, kwargs, grad_y)
    for got, want, name in ((out["y"], y_eager, "y"), (out["grad_x"], x_eager.grad, "grad_x")):
        for fmt in (torch.contiguous_format, torch.channels_last):
            assert got.is_contiguous(memory_format=fmt) == want.is_contiguous(memory_format=fmt), (
                f"{name}: {fmt} {got.stride()} against eager's {want.stride()}")
    plain = run("reference", x.contiguous(), weight.contiguous(), bias, kwargs, grad_y)
    for name in plain:
        torch.testing.assert_close(out[name], plain[name], rtol=1e-5, atol=1e-5,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_backend_float64_and_batch_one_and_single_channel_groups(backend):
    x, weight, bias, kwargs = make_args(n=1, cin=3, cout=4, h=7, w=1, norm="instance",
                                        affine="channel", dtype=torch.float64)
    grad_y = torch.randn(1, 4, 14, 2, dtype=torch.float64)
    out = run(backend, x, weight, bias, kwargs, grad_y)
    ref = run("reference", x, weight, bias, kwargs, grad_y)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("backend", backend_params("deconv_block"))
@pytest.mark.parametrize("norm, affine", [("group", "channel"), ("instance", "spatial"),
                                          ("none", "none")])
def test_opcheck(backend, norm, affine):
    x, weight, bias, kwargs = make_args(norm=norm, affine=affine)
    scale = kwargs.get("norm_weight", kwargs.get("style_scale"))
    shift = kwargs.get("norm_bias", kwargs.get("style_shift"))
    if scale is not None:
        scale, shift = (t.view(1, -1, 1, 1) if t.dim() == 1 else t.view(*t.shape, *[1] * (4 - t.dim()))
                        for t in (scale, shift))
        scale.requires_grad_(), shift.requires_grad_()
    groups = {"group": 4, "instance": 8, "none": 0}[norm]
    args = (x.requires_grad_(), weight.requires_grad_(), bias.requires_grad_(), scale, shift,
            K4S2P1, groups, "leaky_relu", 0.2, 1e-5, backend)
    torch.library.opcheck(torch.ops.fastvae.deconv_block.default, args)


class _PassThroughFunctionMode(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend", backend_params("deconv_block"))
@pytest.mark.parametrize("norm, affine", [("group", "channel"), ("instance", "spatial"),
                                          ("batch", "channel"), ("none", "none")])
def test_eager_function_and_registered_op_agree(backend, norm, affine):
    """Eager calls on plain tensors run ops._DeconvBlockFunction (the custom-op wrapper's
    overhead skipped); under a mode, compile or a subclass the registered op runs. Both
    give the same values, gradients and running statistics, and each is taken."""
    x, weight, bias, kwargs = make_args(norm=norm, affine=affine)
    running = ({"running_mean": torch.randn(8), "running_var": torch.rand(8) + 0.5}
               if norm == "batch" else {})
    grad_y = torch.randn(2, 8, 10, 6)
    results = {}
    for path, mode in (("function", None), ("op", _PassThroughFunctionMode())):
        state = {k: v.clone() for k, v in running.items()}
        leaves = {k: v.detach().requires_grad_() for k, v in tensors_of(x, weight, bias, kwargs).items()}
        options = {k: v for k, v in leaves.items() if k not in ("x", "weight", "bias")}
        with mode if mode is not None else contextlib.nullcontext():
            y = fastvae.deconv_block(leaves["x"], leaves["weight"], leaves["bias"],
                                     backend=backend, **options, **state, norm=norm,
                                     num_groups=kwargs["num_groups"])
            grads = torch.autograd.grad(y, list(leaves.values()), grad_y)
        out = {"y": y, **{"grad_" + k: g for k, g in zip(leaves, grads)}}
        node = type(out["y"].grad_fn).__name__
        assert ("DeconvBlockFunction" in node) == (path == "function"), node
        results[path] = {**out, **state}
    torch.testing.assert_close(results["function"], results["op"], rtol=0, atol=0)


# ------------------------------------------------------------------------- the module


@pytest.mark.parametrize("conv, norm_layer, activation", [
    (nn.ConvTranspose2d(6, 8, 4, 2, 1), nn.GroupNorm(4, 8), nn.LeakyReLU(0.1)),
    (nn.ConvTranspose2d(6, 8, 4, 2, 1), nn.InstanceNorm2d(8, affine=True), nn.SiLU()),
    (nn.ConvTranspose2d(6, 8, 3, 2, 1, output_padding=1), nn.InstanceNorm2d(8), nn.ReLU()),
    (nn.ConvTranspose2d(6, 8, 3, 2, 1, output_padding=1, bias=False), nn.BatchNorm2d(8),
     nn.LeakyReLU()),
    (nn.ConvTranspose2d(6, 8, 4, 1, 0), nn.BatchNorm2d(8, momentum=None), nn.GELU("tanh")),
    (nn.ConvTranspose2d(6, 8, 2, 2, 0), nn.BatchNorm2d(8, affine=False), nn.Sigmoid()),
    (nn.ConvTranspose2d(6, 8, 4, 2, 1), None, nn.Tanh()),
    (nn.ConvTranspose2d(6, 8, 4, 2, 1), None, None)])
def test_module_from_modules_matches_and_shares_the_modules(conv, norm_layer, activation):
    conv, norm_layer = copy.deepcopy(conv).double(), copy.deepcopy(norm_layer)
    if norm_layer is not None:
        norm_layer.double()
        if norm_layer.affine:
            nn.init.normal_(norm_layer.weight), nn.init.normal_(norm_layer.bias)
    seq = nn.Sequential(conv, norm_layer or nn.Identity(), activation or nn.Identity())
    reference = copy.deepcopy(seq)
    block = fastvae.nn.DeconvBlock.from_modules(conv, norm_layer, activation)
    assert block.weight is conv.weight and block.bias is conv.bias  # shared, not copied
    if isinstance(norm_layer, nn.BatchNorm2d):
        assert block.running_mean is norm_layer.running_mean
    for step in range(3):  # training steps: BatchNorm's running statistics move in both
        x = torch.randn(3, 6, 5, 7, dtype=torch.float64) + step
        torch.testing.assert_close(block(x), reference(x), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(seq.state_dict(), reference.state_dict(), rtol=1e-9, atol=1e-12)
    block.eval(), reference.eval()
    torch.testing.assert_close(block(x), reference(x), rtol=1e-9, atol=1e-12)


def test_module_style_starts_as_identity_affine():
    block = fastvae.nn.DeconvBlock(6, 8, num_groups=2, style_dim=5)
    x = torch.randn(2, 6, 4, 4)
    plain = fastvae.deconv_block(x, block.weight, block.bias, num_groups=2)
    torch.testing.assert_close(block(x, torch.randn(2, 5)), plain)
    with pytest.raises(ValueError, match="style"):
        block(x)


@pytest.mark.parametrize("args, error, match", [
    ((nn.Conv2d(3, 4, 3),), TypeError, "conv_transpose"),
    ((nn.ConvTranspose2d(3, 4, 3, 2, 1, dilation=2),), ValueError, "conv_transpose: dilation"),
    ((nn.ConvTranspose2d(4, 4, 3, 2, 1, groups=2),), ValueError, "conv_transpose: dilation"),
    ((nn.ConvTranspose2d(3, 4, 4, 2, 1), nn.LayerNorm(4)), TypeError, "norm: LayerNorm"),
    ((nn.ConvTranspose2d(3, 4, 4, 2, 1), nn.InstanceNorm2d(4, track_running_stats=True)),
     ValueError, "norm: InstanceNorm2d with track_running_stats"),
    ((nn.ConvTranspose2d(3, 4, 4, 2, 1), None, nn.PReLU()), TypeError, "activation: PReLU"),
    ((torch.nn.utils.spectral_norm(nn.ConvTranspose2d(3, 4, 4, 2, 1)),), ValueError, "hooks"),
    ((torch.nn.utils.parametrizations.weight_norm(nn.ConvTranspose2d(3, 4, 4, 2, 1)),),
     ValueError, "parametrized"),
])
def test_module_from_modules_refuses_what_it_cannot_represent(args, error, match):
    with pytest.raises(error, match=match):
        fastvae.nn.DeconvBlock.from_modules(*args)


# ------------------------------------------------------------------------- bad input


def call(**overrides):
    x, weight, bias, kwargs = make_args(norm="group", affine="none")
    args = dict(x=x, weight=weight, bias=bias, **kwargs)
    args.update(overrides)
    return fastvae.deconv_block(args.pop("x"), args.pop("weight"), args.pop("bias"), **args)


@pytest.mark.parametrize("overrides, error, match", [
    (dict(x=torch.randn(6, 5, 3)), ValueError, "x must be 4-D"),
    (dict(x=torch.randn(0, 6, 5, 3)), ValueError, "empty batch"),
    (dict(x=torch.randint(0, 3, (2, 6, 5, 3))), TypeError, "x must be"),
    (dict(weight=torch.randn(6, 8, 4)), ValueError, "weight"),
    (dict(stride=0), ValueError, "stride"),
    (dict(stride=(2, 2, 2)), TypeError, "stride"),
    (dict(padding=-1), ValueError, "padding"),
    (dict(padding=9), ValueError, "padding is too large"),
    (dict(output_padding=2), ValueError, "output_padding"),
    (dict(weight=torch.randn(5, 8, 4, 4)), ValueError, "weight"),
    (dict(weight=torch.randn(6, 8, 4, 4).double()), TypeError, "weight"),
    (dict(bias=torch.randn(7)), ValueError, "bias"),
    (dict(num_groups=3), ValueError, "num_groups"),
    (dict(num_groups=0), ValueError, "num_groups"),
    (dict(norm="layer"), ValueError, "norm"),
    (dict(norm="batch", running_mean=torch.zeros(8)), ValueError, "running_var"),
    (dict(norm="batch", running_mean=torch.zeros(7), running_var=torch.ones(7)), ValueError,
     "running_mean"),
    (dict(norm="batch", x=torch.randn(1, 6, 1, 1), weight=torch.randn(6, 8, 1, 1), stride=1),
     ValueError, "more than 1 value per channel"),
    (dict(norm="group", running_mean=torch.zeros(8), running_var=torch.ones(8)), ValueError,
     "running_mean"),
    (dict(norm="batch", running_mean=torch.zeros(8), running_var=torch.ones(8), momentum=None),
     TypeError, "momentum"),
    (dict(activation="elu"), ValueError, "activation"),
    (dict(norm_weight=torch.randn(3)), ValueError, "norm_weight"),
    (dict(style_scale=torch.randn(2, 7)), ValueError, "style_scale"),
    (dict(style_shift=torch.randn(2, 8, 5, 3)), ValueError, "style_shift"),
    (dict(style_scale=torch.randn(2, 8), norm_weight=torch.randn(8)), ValueError, "not both"),
    (dict(bias=torch.randn(8, device="meta")), ValueError, "bias"),
    (dict(eps=0.0), ValueError, "eps"),
    (dict(backend="cudnn"), ValueError, "backend"),
])
def test_bad_input_names_the_argument(overrides, error, match):
    with pytest.raises(error, match=match):
        call(**overrides)


def test_non_finite_input_propagates():
    x, weight, bias, kwargs = make_args(norm="none", affine="none")
    x[0, 0, 0, 0] = float("nan")
    y = fastvae.deconv_block(x, weight, bias, norm="none", backend="reference")
    assert y[0].isnan().any() and not y[1].isnan().any()
