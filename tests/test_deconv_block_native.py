"""The native CPU deconv_block (csrc/cpu/deconv_block.cpp) against the reference.

test_deconv_block.py runs every backend through a cycle of options; here the native
backend gets every norm x affine x activation combination, both layouts of its kernels,
the statistics' stability, output layout and aliasing, float64 gradcheck and what autograd
saves for backward.
"""
import itertools

import pytest
import torch
from torch import nn

import fastvae
from fastvae import reference
from fastvae.ops import backend_norm_args
from fastvae.reference import K4S2P1
from conftest import assert_close_to_reference, backend_params
from test_deconv_block import make_args, run, tensors_of

pytestmark = [*(p.marks[0] for p in backend_params("deconv_block") if p.id == "native"),
              pytest.mark.usefixtures("every_cpu_capability")]  # each native CPU build

NORMS = ("group", "instance", "batch", "none")
AFFINES = ("none", "channel", "style", "spatial")
ACTIVATIONS = ("leaky_relu", "relu", "silu", "tanh", "sigmoid", "gelu", "gelu_tanh", "none")
LAYOUTS = ("contiguous", "channels_last", "strided")


def compare(dtype, norm, affine, activation, layout, n=2, cin=5, cout=8, h=5, w=3, groups=4):
    x, weight, bias, kwargs = make_args(n=n, cin=cin, cout=cout, h=h, w=w, norm=norm,
                                        affine=affine, groups=groups, dtype=dtype, layout=layout)
    kwargs["activation"] = activation
    grad_y = torch.randn(n, cout, 2 * h, 2 * w)
    out = run("native", x, weight, bias, kwargs, grad_y)
    ref_low = run("reference", x, weight, bias, kwargs, grad_y)
    hi = torch.float64 if dtype == torch.float32 else torch.float32
    ref_hi = run("reference", x, weight, bias, kwargs, grad_y, dtype=hi)
    assert set(out) == set(ref_low)
    for name in ref_low:
        assert out[name].dtype == ref_low[name].dtype, name
        assert out[name].shape == ref_low[name].shape, name
        if name == "grad_bias" and norm != "none" and dtype == torch.float32:
            # a sum of grad_pre_norm over each group, which cancels to ~0 (exactly 0 for
            # instance norm): its error is absolute, eps-sized relative to the terms summed
            scale = ref_low["grad_x"].abs().max().item() + 1
            torch.testing.assert_close(out[name], ref_low[name], rtol=0, atol=1e-5 * scale * h * w)
            continue
        assert_close_to_reference(out[name], ref_low[name], ref_hi[name], dtype, name)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("norm, affine", list(itertools.product(NORMS, AFFINES)))
def test_every_combination_float32(norm, affine, activation, layout):
    compare(torch.float32, norm, affine, activation, layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("norm, affine, activation", [
    ("group", "spatial", "silu"), ("instance", "style", "leaky_relu"), ("none", "channel", "relu"),
    ("batch", "channel", "gelu")])
def test_low_precision(norm, affine, activation, dtype, layout):
    if activation in ("relu", "leaky_relu"):
        compare_backward_on_native_forward(dtype, norm, affine, activation, layout)
    else:
        compare(dtype, norm, affine, activation, layout, h=7, w=5)


def as_float32(t):
    return None if t is None else t.float()


def compare_backward_on_native_forward(dtype, norm, affine, activation, layout, n=2, cin=5,
                                       cout=8, h=7, w=5, groups=4):
    """A kinked activation in half precision: a pre-activation one rounding step from 0 has
    either derivative, and native's convolution rounds differently from torch's (it runs
    bfloat16/float16 in float32 on CPUs without instructions for them), so end-to-end
    gradients differ by O(1) where the two roundings disagree. Here every backward gets
    native's saved forward state and the backward alone is held to the reference; native's
    forward output is held to it like any other."""
    x, weight, bias, kwargs = make_args(n=n, cin=cin, cout=cout, h=h, w=w, norm=norm,
                                        affine=affine, groups=groups, dtype=dtype, layout=layout)
    grad_y = torch.randn(n, cout, 2 * h, 2 * w).to(dtype)
    groups, scale, shift = backend_norm_args(
        norm, groups, cout, *(kwargs.get(k) for k in ("norm_weight", "norm_bias", "style_scale",
                                                       "style_shift")))
    options = (K4S2P1, groups, activation, 0.2, 1e-5)
    inputs = (x, weight, bias, scale, shift)
    y, pre, mean, rstd = torch.ops.fastvae._deconv_block_fwd(*inputs, *options)
    y_low = reference.deconv_block_fwd(*inputs, *options)[0]
    y_high = reference.deconv_block_fwd(*map(as_float32, inputs), *options)[0]
    assert_close_to_reference(y, y_low, y_high, dtype, "y")
    state = (grad_y, x, weight, pre, mean, rstd, scale, shift)
    out = torch.ops.fastvae._deconv_block_bwd(*state, True, *options)
    low = reference.deconv_block_bwd(*state, True, *options)
    high = reference.deconv_block_bwd(*map(as_float32, state), True, *options)
    for name, o, lo, hi in zip(("grad_x", "grad_weight", "grad_bias", "grad_scale", "grad_shift"),
                               out, low, high):
        if lo is not None:
            assert_close_to_reference(o, lo, hi, dtype, name)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("n, cin, cout, h, w, groups", [
    (1, 3, 4, 7, 1, 4),      # batch 1, groups of one channel, a 1-wide input
    (3, 2, 1, 1, 9, 1),      # one output channel, 1-high input
    (2, 16, 24, 9, 11, 6),   # NHWC runs longer than a vector, several pixel blocks
    (2, 6, 8, 13, 40, 4),    # channels_last backward: odd tile rows, 21 tiles a row
])
def test_odd_shapes(n, cin, cout, h, w, groups, layout):
    compare(torch.float32, "group", "spatial", "silu", layout, n=n, cin=cin, cout=cout, h=h, w=w,
            groups=groups)


@pytest.mark.parametrize("n, cin, cout, h, w", [
    (3, 7, 6, 11, 30),   # one backward task per sample; the forward's tiles shared by phases
    (2, 5, 6, 41, 30),   # 3 tasks of 7 tile rows per sample: the rows between tasks (halos)
    (1, 3, 2, 2, 300),   # a tile row longer than a task: one row per task
    (2, 2, 3, 1, 1),     # one pixel: every tile but one output is past the edge
    (3, 5, 64, 7, 9),    # Cout 64: the forward's tiles per phase, odd sizes past the edge
    (5, 3, 66, 12, 10),  # 150 tiles a phase: forward tasks across samples
    (2, 27, 70, 5, 7),   # small_gemm: 12-row blocks, a 3-row rest, masked columns in each product
])
@pytest.mark.parametrize("weight_layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_winograd_over_tile_edges(dtype, weight_layout, n, cin, cout, h, w, monkeypatch):
    """The channels_last Winograd forward and backward (csrc/cpu/conv_transpose_nhwc.cpp)
    against the reference (float64 to 1e-9, float32 as every float32 test), over
    tile and task edges; a channels_last weight is read and grad_weight written in its
    own layout (taps_last)."""
    monkeypatch.setenv("FASTVAE_CONV_PATH", "winograd")
    x, weight, bias, kwargs = make_args(n=n, cin=cin, cout=cout, h=h, w=w, groups=cout // 2 or 1,
                                        dtype=dtype, layout="channels_last")
    # smooth: leaky_relu's derivative flips where float32 rounds a pre-activation across 0,
    # and GroupNorm's backward spreads that over the group (seen: 15% of grad_x off)
    kwargs["activation"] = "silu"
    assert torch.ops.fastvae._deconv_block_conv_plan(x, weight, K4S2P1) == "winograd"
    if weight_layout == "channels_last":
        weight = weight.contiguous(memory_format=torch.channels_last)
    grad_y = torch.randn(n, cout, 2 * h, 2 * w, dtype=dtype)
    out = run("native", x, weight, bias, kwargs, grad_y)
    ref = run("reference", x, weight, bias, kwargs, grad_y)
    if dtype == torch.float64:
        for name in ref:
            torch.testing.assert_close(out[name], ref[name], rtol=1e-9, atol=1e-9,
                                       msg=lambda m, name=name: f"{name}: {m}")
    else:  # the convolution's outputs; the epilogue's sums over thousands of output pixels
        # (grad_bias, grad_norm_*: absolute float32 error, cancelling to ~0 under
        # GroupNorm) are held to float64 above and in the combination tests
        ref_high = run("reference", x, weight, bias, kwargs, grad_y, dtype=torch.float64)
        for name in ("y", "grad_x", "grad_weight"):
            assert_close_to_reference(out[name], ref[name], ref_high[name], dtype, name)
    leaf = weight.detach().requires_grad_()
    y = fastvae.deconv_block(x, leaf, bias, backend="native", **kwargs)
    y.backward(grad_y)
    assert leaf.grad.stride() == weight.stride()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("norm, affine, activation", [
    ("group", "spatial", "silu"), ("instance", "channel", "leaky_relu"), ("group", "style", "none"),
    ("none", "style", "silu"), ("batch", "channel", "tanh"), ("batch", "style", "gelu_tanh"),
    ("batch", "none", "sigmoid")])
def test_float64_gradcheck(norm, affine, activation, layout):
    x, weight, bias, kwargs = make_args(n=2, cin=3, cout=4, h=3, w=2, norm=norm, affine=affine,
                                        groups=2, dtype=torch.float64, layout=layout)
    names = list(tensors_of(x, weight, bias, kwargs))
    values = [t.detach().requires_grad_() for t in tensors_of(x, weight, bias, kwargs).values()]
    other = {k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)}

    def fn(*tensors):
        named = dict(zip(names, tensors))
        return fastvae.deconv_block(named.pop("x"), named.pop("weight"), named.pop("bias"),
                                    activation=activation, backend="native", **other, **named)

    assert torch.autograd.gradcheck(fn, values)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_statistics_stable_when_mean_dwarfs_std(layout):
    """Values 1e4 + O(1) noise: E[h^2] - E[h]^2 in float32 would lose every digit."""
    x, weight, _, _ = make_args(n=2, cin=6, cout=8, h=9, w=9, layout=layout)
    bias = torch.full((8,), 1e4)
    y, pre, mean, rstd = torch.ops.fastvae._deconv_block_fwd(
        x, weight, bias, None, None, K4S2P1, 4, "none", 0.2, 1e-5)
    g = pre.double().reshape(2, 4, -1)
    exact_mean, exact_var = g.mean(-1), g.var(-1, unbiased=False)
    assert exact_var.min() > 0.05  # the test is meaningful: std far below the mean
    torch.testing.assert_close(mean.double(), exact_mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(rstd.double(), torch.rsqrt(exact_var + 1e-5), rtol=1e-5, atol=0)
    exact_y = ((g - exact_mean[..., None]) * torch.rsqrt(exact_var + 1e-5)[..., None]).view(y.shape)
    torch.testing.assert_close(y.double(), exact_y, rtol=0, atol=2e-3)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_outputs_are_fresh_and_in_the_input_layout(layout):
    x, weight, bias, kwargs = make_args(layout=layout, affine="spatial")
    scale, shift = kwargs["style_scale"], kwargs["style_shift"]
    y, pre, mean, rstd = torch.ops.fastvae._deconv_block_fwd(
        x, weight, bias, scale, shift, K4S2P1, 4, "silu", 0.2, 1e-5)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert y.is_contiguous(memory_format=fmt) and pre.is_contiguous(memory_format=fmt)
    assert mean.shape == rstd.shape == (2, 4) and mean.dtype == torch.float32
    inputs = {t.untyped_storage().data_ptr() for t in (x, weight, bias, scale, shift)}
    outputs = [t.untyped_storage().data_ptr() for t in (y, pre, mean, rstd)]
    assert len(set(outputs)) == 4 and not inputs & set(outputs)
    grads = torch.ops.fastvae._deconv_block_bwd(
        torch.randn_like(y), x, weight, pre, mean, rstd, scale, shift, True, K4S2P1, 4, "silu",
        0.2, 1e-5)
    assert grads[0].shape == x.shape and grads[3].shape == scale.shape
    assert all(g.untyped_storage().data_ptr() not in inputs | set(outputs) for g in grads if g.numel())


def test_no_norm_statistics_are_empty():
    x, weight, bias, _ = make_args()
    _, _, mean, rstd = torch.ops.fastvae._deconv_block_fwd(x, weight, bias, None, None, K4S2P1, 0,
                                                           "relu", 0.2, 1e-5)
    assert mean.shape == rstd.shape == (2, 0)
    grads = torch.ops.fastvae._deconv_block_bwd(
        torch.randn(2, 8, 10, 6), x, weight, torch.randn(2, 8, 10, 6), mean, rstd, None, None,
        False, K4S2P1, 0, "relu", 0.2, 1e-5)
    assert [g.numel() for g in grads[2:]] == [0, 0, 0]


def poison_cpu_cache(nbytes, blocks):
    """Fills the native CPU block cache (csrc/cpu/huge_page_empty.h) with `blocks` freed
    blocks of `nbytes`, every element NaN: reparam_kl's z comes from it."""
    mu = torch.zeros(nbytes // 4)
    fwd = torch.ops.fastvae._reparam_kl_fwd
    zs = [fwd(mu, mu, None, torch.tensor(i))[0] for i in range(blocks)]
    for z in zs:
        z.fill_(float("nan"))
    del z, zs


@pytest.mark.parametrize("conv_path", ["winograd", "channels_last", "nchw"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_large_outputs_write_every_element_of_a_reused_block(layout, conv_path, monkeypatch):
    """Outputs and scratch of 4 MiB and more (y, pre_norm, grad_pre_norm, grad_x, layout
    copies) come from the block cache: a freed block handed out again is written whole."""
    monkeypatch.setenv("FASTVAE_CONV_PATH", conv_path)
    x, weight, bias, kwargs = make_args(n=4, cin=64, cout=16, h=64, w=64, layout=layout,
                                        affine="channel")
    kwargs["activation"] = "silu"
    grad_y = torch.randn(4, 16, 128, 128)
    nbytes = grad_y.numel() * 4  # y's and x's size: 4 MiB
    monkeypatch.setenv("FASTVAE_CPU_CACHE_MB", "0")
    poison_cpu_cache(nbytes, 1)  # empties the cache
    fresh = run("native", x, weight, bias, kwargs, grad_y)
    monkeypatch.setenv("FASTVAE_CPU_CACHE_MB", "256")
    poison_cpu_cache(nbytes, 8)
    assert torch.ops.fastvae._cpu_cache_bytes() == 8 * nbytes
    reused = run("native", x, weight, bias, kwargs, grad_y)
    assert torch.ops.fastvae._cpu_cache_bytes() < 8 * nbytes  # poisoned blocks were taken
    for name in fresh:
        torch.testing.assert_close(reused[name], fresh[name], rtol=1e-6, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("norm, affine", [("group", "channel"), ("instance", "spatial"),
                                          ("none", "style")])
def test_opcheck(norm, affine):
    x, weight, bias, kwargs = make_args(norm=norm, affine=affine, layout="channels_last")
    scale = kwargs.get("norm_weight", kwargs.get("style_scale"))
    shift = kwargs.get("norm_bias", kwargs.get("style_shift"))
    if scale is not None:
        scale, shift = (t.view(1, -1, 1, 1) if t.dim() == 1 else t.view(*t.shape, *[1] * (4 - t.dim()))
                        for t in (scale, shift))
        scale.requires_grad_(), shift.requires_grad_()
    groups = {"group": 4, "instance": 8, "none": 0}[norm]
    args = (x.requires_grad_(), weight.requires_grad_(), bias.requires_grad_(), scale, shift,
            K4S2P1, groups, "silu", 0.2, 1e-5, "native")
    torch.library.opcheck(torch.ops.fastvae.deconv_block.default, args)


def saved_bytes(fn):
    """Bytes of the distinct storages autograd saves for backward during fn(), leaves
    (parameters, which the model holds anyway) excluded."""
    storages = {}

    def pack(t):
        if not (t.requires_grad and t.is_leaf):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(storages.values()), out


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_saves_at_most_one_and_a_half_outputs(layout):
    """Issue 6: x (a leaf here but an activation in a model), pre_norm and the statistics."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(2, 64, 16, 16).contiguous(memory_format=fmt)
    conv = nn.ConvTranspose2d(64, 32, 4, 2, 1)
    x_act = (x.requires_grad_() * 1.0)  # a non-leaf, as a model's activation is
    native, y = saved_bytes(lambda: fastvae.deconv_block(
        x_act, conv.weight, conv.bias, num_groups=8, backend="native"))
    out_bytes = y.nbytes
    assert native <= 1.5 * out_bytes + 2 * 2 * 8 * 4  # + (N, groups) mean and rstd
    block = nn.Sequential(conv, nn.GroupNorm(8, 32), nn.LeakyReLU(0.2)).to(memory_format=fmt)
    eager, _ = saved_bytes(lambda: block(x_act))
    assert eager > 2 * out_bytes  # what the fused backward saves over eager (about 2.5x)


# ------------------------------------------------------------------ geometry, BatchNorm


GEOMETRIES = {  # name -> (kernel, stride, padding, output_padding, input h, w)
    "k4s2p1": (4, 2, 1, 0, 5, 3),
    "k3s2p1op1": (3, 2, 1, 1, 4, 5),
    "k2s2p0": (2, 2, 0, 0, 3, 4),
    "k4s1p0_1x1": (4, 1, 0, 0, 1, 1),  # DCGAN's first layer
    "k5s3p1op2": (5, 3, 1, 2, 3, 2),
    "k1s1p0": (1, 1, 0, 0, 4, 3),
}


def geometry_case(name, dtype, layout, norm="group", activation="gelu", n=3, cin=5, cout=8):
    k, stride, padding, output_padding, h, w = GEOMETRIES[name]
    torch.manual_seed(torch.seed() % 2**31)  # fresh each run
    x = torch.randn(n, cin, h, w, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.randn(n, cin, h, 2 * w, dtype=torch.float64)[..., ::2]
    weight = torch.randn(cin, cout, k, k, dtype=torch.float64) / (cin * k) ** 0.5
    tensors = {"x": x, "weight": weight, "bias": torch.randn(cout, dtype=torch.float64),
               "norm_weight": 1 + 0.5 * torch.randn(cout, dtype=torch.float64),
               "norm_bias": torch.randn(cout, dtype=torch.float64)}
    options = dict(stride=stride, padding=padding, output_padding=output_padding, norm=norm,
                   num_groups=4, activation=activation)
    return {k_: v.to(dtype) for k_, v in tensors.items()}, options


def run_case(tensors, options, backend, dtype=None):
    leaves = {k: (v.to(dtype) if dtype else v).detach().requires_grad_() for k, v in tensors.items()}
    y = fastvae.deconv_block(leaves["x"], leaves["weight"], leaves["bias"],
                             norm_weight=leaves["norm_weight"], norm_bias=leaves["norm_bias"],
                             backend=backend, **options)
    torch.manual_seed(1)
    grad_y = torch.randn(y.shape, dtype=torch.float64).to(y.dtype)
    grads = torch.autograd.grad(y, list(leaves.values()), grad_y)
    return {"y": y, **{"grad_" + k: g for k, g in zip(leaves, grads)}}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("norm", ["group", "batch", "none"])
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_geometry_float64(name, norm, layout):
    tensors, options = geometry_case(name, torch.float64, layout, norm=norm)
    out, ref = run_case(tensors, options, "native"), run_case(tensors, options, "reference")
    for key in ref:
        assert out[key].shape == ref[key].shape, key
        torch.testing.assert_close(out[key], ref[key], rtol=1e-9, atol=1e-9,
                                   msg=lambda m, key=key: f"{name} {key}: {m}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_geometry_low_precision(name, layout, dtype):
    tensors, options = geometry_case(name, dtype, layout, norm="batch", activation="silu")
    out = run_case(tensors, options, "native")
    low = run_case(tensors, options, "reference")
    high = run_case(tensors, options, "reference", dtype=torch.float64)
    for key in low:
        if key == "grad_bias":  # BatchNorm removes the bias: its gradient is ~0 by cancellation
            scale = low["grad_x"].abs().max().item() + 1
            tol = 1e-5 if dtype == torch.float32 else 5e-2
            torch.testing.assert_close(out[key].double(), high[key], rtol=0,
                                       atol=tol * scale * out["y"][0, 0].numel())
            continue
        assert_close_to_reference(out[key], low[key], high[key], dtype, f"{name} {key}")


@pytest.mark.parametrize("name", ["k3s2p1op1", "k4s1p0_1x1"])
def test_geometry_gradcheck(name):
    tensors, options = geometry_case(name, torch.float64, "contiguous", norm="batch",
                                     activation="tanh", n=2, cin=2, cout=4)
    names = list(tensors)

    def fn(*values):
        t = dict(zip(names, values))
        return fastvae.deconv_block(t["x"], t["weight"], t["bias"], norm_weight=t["norm_weight"],
                                    norm_bias=t["norm_bias"], backend="native", **options)
    assert torch.autograd.gradcheck(fn, [t.requires_grad_() for t in tensors.values()])


@pytest.mark.parametrize("groups, name", [(-1, "k3s2p1op1"), (4, "k5s3p1op2"), (-1, "k4s2p1")])
def test_opcheck_geometry_and_batch(groups, name):
    tensors, options = geometry_case(name, torch.float32, "channels_last")
    scale = tensors["norm_weight"].view(1, -1, 1, 1).requires_grad_()
    shift = tensors["norm_bias"].view(1, -1, 1, 1).requires_grad_()
    geometry = [options["stride"]] * 2 + [options["padding"]] * 2 + [options["output_padding"]] * 2
    args = (tensors["x"].requires_grad_(), tensors["weight"].requires_grad_(),
            tensors["bias"].requires_grad_(), scale, shift, geometry, groups, "gelu_tanh", 0.2,
            1e-5, "native")
    torch.library.opcheck(torch.ops.fastvae.deconv_block.default, args)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("momentum", [0.1, 0.5])
def test_batch_norm_matches_torch_modules(momentum, layout):
    """ConvTranspose2d + BatchNorm2d + activation: three training steps (running statistics
    updated in place), then eval, against the same torch.nn modules, float64."""
    torch.manual_seed(torch.seed() % 2**31)
    conv = nn.ConvTranspose2d(5, 6, 3, 2, 1, output_padding=1).double()
    bn = nn.BatchNorm2d(6, momentum=momentum).double()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    running_mean, running_var = bn.running_mean.clone(), bn.running_var.clone()
    for step in range(4):
        training = step < 3
        bn.train(training)
        x = (torch.randn(3, 5, 4, 7, dtype=torch.float64) + step).contiguous(
            memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
        y = fastvae.deconv_block(x, conv.weight, conv.bias, stride=2, padding=1, output_padding=1,
                                 norm="batch", norm_weight=bn.weight, norm_bias=bn.bias,
                                 running_mean=running_mean, running_var=running_var,
                                 momentum=momentum, training=training, eps=bn.eps,
                                 activation="sigmoid", backend="native")
        y_ref = torch.sigmoid(bn(conv(x)))
        torch.testing.assert_close(y, y_ref, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(running_mean, bn.running_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(running_var, bn.running_var, rtol=1e-12, atol=1e-12)
        params = [conv.weight, conv.bias, bn.weight, bn.bias]
        grad_y = torch.randn_like(y)
        got = torch.autograd.grad(y, params, grad_y)
        want = torch.autograd.grad(y_ref, params, grad_y)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_batch_statistics_stable_when_mean_dwarfs_std(layout):
    """BatchNorm statistics of values 1e4 + O(1) in float32: shifted and merged, not E[h^2]."""
    x, weight, _, _ = make_args(n=3, cin=6, cout=8, h=9, w=9, layout=layout)
    bias = torch.full((8,), 1e4)
    y, pre, mean, rstd = torch.ops.fastvae._deconv_block_fwd(
        x, weight, bias, None, None, K4S2P1, -1, "none", 0.2, 1e-5)
    g = pre.double().transpose(0, 1).reshape(8, -1)
    exact_mean, exact_var = g.mean(-1), g.var(-1, unbiased=False)
    assert mean.shape == rstd.shape == (1, 8)
    torch.testing.assert_close(mean[0].double(), exact_mean, rtol=1e-6, atol=0)
    torch.testing.assert_close(rstd[0].double(), torch.rsqrt(exact_var + 1e-5), rtol=1e-5, atol=0)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_non_square_geometry(layout):
    """A 3x5 kernel with stride (2, 3), padding (1, 2), output_padding (1, 0), float64."""
    torch.manual_seed(torch.seed() % 2**31)
    x = torch.randn(2, 4, 3, 4, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(4, 6, 3, 5, dtype=torch.float64)
    out = {}
    for backend in ("native", "reference"):
        leaves = [t.clone().requires_grad_() for t in (x, weight)]
        y = fastvae.deconv_block(*leaves, stride=(2, 3), padding=(1, 2), output_padding=(1, 0),
                                 norm="batch", activation="gelu_tanh", backend=backend)
        out[backend] = [y, *torch.autograd.grad(y, leaves, torch.ones_like(y))]
    assert out["native"][0].shape == (2, 6, 6, 10)  # nn.ConvTranspose2d's sizes
    for a, b in zip(out["native"], out["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
