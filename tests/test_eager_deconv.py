"""The eager path of deconv_block (fastvae/_eager_deconv.py): what `auto` runs where the
fused kernels lose to eager PyTorch (CUDA today). Run here on CPU tensors: against the
reference in float32/float64, bit for bit against the nn modules it replaces in every
dtype, and the routing of fastvae.deconv_block, nn.DeconvBlock and fastvae.fuse to it."""
import pytest
import torch
from torch import nn

import fastvae
from fastvae import _eager_deconv
from tests.conftest import TOLERANCES, bias_grad_rounding, noncontiguous
from tests.models.dcgan import Generator

GEOMETRIES = [(4, 2, 1, 0), (3, 2, 1, 1), (4, 1, 0, 0), (5, 3, 1, 2), (2, 2, 0, 0)]
ACTIVATIONS = ["leaky_relu", "relu", "silu", "tanh", "sigmoid", "gelu", "gelu_tanh", "none"]
# name: deconv_block keyword arguments (tensors filled in by make_args)
NORMS = {
    "group": dict(norm="group", num_groups=4, affine=True),
    "instance": dict(norm="instance", affine=True),
    "batch_train": dict(norm="batch", affine=True, running=True, training=True),
    "batch_eval": dict(norm="batch", affine=True, running=True, training=False),
    "batch_no_running": dict(norm="batch", affine=False, training=True),
    "none": dict(norm="none"),
    "adain": dict(norm="instance", style=True),
    "spatial_adain": dict(norm="group", num_groups=2, style="spatial"),
}


def make_args(case, n, cin, cout, h, geometry, dtype, layout):
    """Leaf tensors and deconv_block keyword arguments of one case."""
    k, s, p, op = geometry
    opts = dict(case)
    affine, running, style = opts.pop("affine", False), opts.pop("running", False), opts.pop("style", None)
    ho = (h - 1) * s - 2 * p + k + op
    x = torch.randn(n, cin, h, h, dtype=dtype)
    x = {"cl": lambda t: t.contiguous(memory_format=torch.channels_last),
         "strided": noncontiguous}.get(layout, lambda t: t)(x).requires_grad_()
    leaves = {"x": x, "weight": (torch.randn(cin, cout, k, k) / (cin * k) ** 0.5).to(dtype),
              "bias": torch.randn(cout, dtype=dtype)}
    if affine:
        leaves["norm_weight"] = (1 + 0.2 * torch.randn(cout)).to(dtype)
        leaves["norm_bias"] = (0.2 * torch.randn(cout)).to(dtype)
    if style:
        shape = (n, cout, ho, ho) if style == "spatial" else (n, cout)
        leaves["style_scale"] = (1 + 0.2 * torch.randn(shape)).to(dtype)
        leaves["style_shift"] = (0.2 * torch.randn(shape)).to(dtype)
    for t in leaves.values():
        t.requires_grad_()
    if running:
        opts["running_mean"] = 0.3 * torch.randn(cout, dtype=dtype)
        opts["running_var"] = (0.5 + torch.rand(cout)).to(dtype)
        opts["momentum"] = 0.1
    opts.update(stride=s, padding=p, output_padding=op)
    return leaves, opts, ho


def run(fn, leaves, opts, activation, g_y):
    x = leaves["x"]
    rest = {k: v for k, v in leaves.items() if k != "x"}
    y = fn(x, **rest, **opts, activation=activation)
    return (y, *torch.autograd.grad(y, list(leaves.values()), g_y))


def eager_path(x, weight, bias=None, *, stride, padding, output_padding, norm, num_groups=32,
               norm_weight=None, norm_bias=None, running_mean=None, running_var=None,
               momentum=0.1, training=True, style_scale=None, style_shift=None,
               activation="leaky_relu", negative_slope=0.2, eps=1e-5):
    """_eager_deconv.deconv_block called as fastvae.deconv_block is."""
    geometry = [stride, stride, padding, padding, output_padding, output_padding]
    return _eager_deconv.deconv_block(x, weight, bias, geometry, norm, num_groups, norm_weight,
                                      norm_bias, running_mean, running_var, momentum, training,
                                      style_scale, style_shift, activation, negative_slope, eps)


def geometry_of(opts):
    s, p, op = opts["stride"], opts["padding"], opts["output_padding"]
    return [s, s, p, p, op, op]


def block_opts(opts):
    """deconv_block keywords of `opts` other than the convolution's geometry."""
    return {k: v for k, v in opts.items() if k not in ("stride", "padding", "output_padding")}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("layout", ["nchw", "cl", "strided"])
@pytest.mark.parametrize("norm", list(NORMS))
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "k%ds%dp%dop%d" % g)
def test_values_grads_and_running_stats_match_reference(geometry, norm, layout, dtype):
    activation = ACTIVATIONS[(GEOMETRIES.index(geometry) + list(NORMS).index(norm)) % 8]
    leaves, opts, ho = make_args(NORMS[norm], 3, 5, 8, 4, geometry, dtype, layout)
    g_y = torch.randn(3, 8, ho, ho, dtype=dtype)
    ref_opts = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in opts.items()}
    outs = run(eager_path, leaves, opts, activation, g_y)
    reference = lambda *a, **k: fastvae.deconv_block(*a, **k, backend="reference")  # noqa: E731
    refs = run(reference, leaves, ref_opts, activation, g_y)
    high = {k: v.detach().double().requires_grad_() for k, v in leaves.items()}
    high_opts = {k: v.double().clone() if isinstance(v, torch.Tensor) else v for k, v in opts.items()}
    refs_high = run(reference, high, high_opts, activation, g_y.double())
    for name, out, ref, ref_high in zip(["y", *leaves], outs, refs, refs_high):
        if dtype == torch.float64:
            torch.testing.assert_close(out, ref, **TOLERANCES[dtype], msg=lambda m: f"{name}: {m}")
        else:  # eager's float32 sums are not the reference's: judged at the gradient's scale
            # (a conv bias under a norm has a gradient of zero up to both sides' rounding:
            # judged at the float32 rounding of the sums it adds up, bias_grad_rounding)
            err = (out.double() - ref_high).abs().max().item()
            bound = 1e-4 * max(1.0, ref_high.abs().max().item())
            if name == "bias":
                bound = max(bound, bias_grad_rounding(
                    *(high[k] for k in ("x", "weight", "bias")), geometry_of(opts), g_y,
                    **{k: v for k, v in high.items() if k not in ("x", "weight", "bias")},
                    **block_opts(high_opts), activation=activation))
            assert err <= bound, f"{name}: error {err:.3g}, bound {bound:.3g}"
    for key in ("running_mean", "running_var"):
        if key in opts:
            torch.testing.assert_close(opts[key], ref_opts[key], **TOLERANCES[dtype])


def modules_for(norm, cin, cout, geometry, activation, leaves, opts, dtype):
    """The eager nn modules a fused block replaces, holding the same values."""
    k, s, p, op = geometry
    conv = nn.ConvTranspose2d(cin, cout, k, s, p, op).to(dtype)
    mods = [conv]
    if norm == "group":
        mods.append(nn.GroupNorm(opts["num_groups"], cout))
    elif norm == "instance":
        mods.append(nn.InstanceNorm2d(cout, affine=True))
    elif norm.startswith("batch"):
        bn = nn.BatchNorm2d(cout, momentum=0.1)
        if "running_mean" in opts:
            bn.running_mean, bn.running_var = opts["running_mean"].clone(), opts["running_var"].clone()
        mods.append(bn.train(opts.get("training", True)))
    act = {"leaky_relu": nn.LeakyReLU(0.2), "relu": nn.ReLU(), "silu": nn.SiLU(),
           "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid(), "gelu": nn.GELU(),
           "gelu_tanh": nn.GELU(approximate="tanh"), "none": nn.Identity()}[activation]
    block = nn.Sequential(*mods, act).to(dtype)
    with torch.no_grad():
        conv.weight.copy_(leaves["weight"])
        conv.bias.copy_(leaves["bias"])
        if len(mods) == 2:
            mods[1].weight.copy_(leaves["norm_weight"])
            mods[1].bias.copy_(leaves["norm_bias"])
    return block


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("norm", ["group", "instance", "batch_train", "batch_eval", "none"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_bit_for_bit_the_modules_it_replaces(activation, norm, dtype):
    geometry = GEOMETRIES[ACTIVATIONS.index(activation) % len(GEOMETRIES)]
    case = dict(NORMS[norm], affine=norm != "none")
    leaves, opts, ho = make_args(case, 2, 8, 8, 5, geometry, dtype, "nchw")
    block = modules_for(norm, 8, 8, geometry, activation, leaves, opts, dtype)
    g_y = torch.randn(2, 8, ho, ho, dtype=dtype)
    outs = run(eager_path, leaves, opts, activation, g_y)
    x = leaves["x"].detach().requires_grad_()
    y = block(x)
    params = [block[0].weight, block[0].bias] + ([block[1].weight, block[1].bias]
                                                  if norm != "none" else [])
    refs = (y, *torch.autograd.grad(y, [x, *params], g_y))
    for name, out, ref in zip(["y", *leaves], outs, refs):
        assert torch.equal(out, ref), f"{name} differs from the eager modules'"
    if norm.startswith("batch"):
        assert torch.equal(opts["running_mean"], block[1].running_mean)
        assert torch.equal(opts["running_var"], block[1].running_var)


def test_gradcheck_float64():
    for norm in ("group", "batch_train", "adain"):
        leaves, opts, _ = make_args(NORMS[norm], 2, 3, 4, 3, (4, 2, 1, 0), torch.float64, "nchw")
        opts.pop("running_mean", None), opts.pop("running_var", None)
        names = list(leaves)
        fn = lambda *ts: eager_path(ts[0], **dict(zip(names[1:], ts[1:])), **opts,  # noqa: E731
                                    activation="silu")
        assert torch.autograd.gradcheck(fn, tuple(leaves.values()))


class _Stub:
    def __init__(self, device_type, dtype=torch.bfloat16):
        self.device, self.dtype = torch.device(device_type), dtype


def test_rule_takes_eager_for_auto_native_on_cuda_only():
    assert _eager_deconv.uses_eager("auto", "native", _Stub("cuda"))
    assert not _eager_deconv.uses_eager("native", "native", _Stub("cuda"))  # asked for: fused
    assert not _eager_deconv.uses_eager("auto", "native", _Stub("cpu"))
    assert _eager_deconv.uses_eager("auto", "triton", _Stub("cuda"))  # CUDA without native
    assert not _eager_deconv.uses_eager("triton", "triton", _Stub("cuda"))
    assert not _eager_deconv.uses_eager("auto", "reference", _Stub("cuda"))
    # float32 running statistics beside a bfloat16 block: F.batch_norm refuses them
    assert not _eager_deconv.uses_eager("auto", "native", _Stub("cuda"), torch.zeros(3))
    assert _eager_deconv.uses_eager("auto", "native", _Stub("cuda"),
                                    torch.zeros(3, dtype=torch.bfloat16))


@pytest.fixture
def eager_everywhere(monkeypatch):
    """The routing as it is on CUDA, applied to CPU tensors; counts the eager path's calls."""
    calls = []
    real = _eager_deconv.deconv_block

    def counted(*args):
        calls.append(1)
        return real(*args)
    monkeypatch.setattr(_eager_deconv, "uses_eager", lambda requested, concrete, x, rm=None:
                        requested == "auto" and concrete == "native")
    monkeypatch.setattr(_eager_deconv, "deconv_block", counted)
    return calls


def test_auto_runs_the_eager_path_where_the_rule_says(eager_everywhere):
    leaves, opts, ho = make_args(NORMS["batch_train"], 2, 6, 4, 4, (4, 2, 1, 0), torch.float32, "nchw")
    explicit = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in opts.items()}
    g_y = torch.randn(2, 4, ho, ho)
    outs = run(fastvae.deconv_block, leaves, opts, "relu", g_y)
    assert len(eager_everywhere) == 1
    expected = run(eager_path, leaves, explicit, "relu", g_y)
    for out, ref in zip(outs, expected):
        assert torch.equal(out, ref)
    assert torch.equal(opts["running_mean"], explicit["running_mean"])  # updated once, not twice
    calls = len(eager_everywhere)
    run(lambda *a, **k: fastvae.deconv_block(*a, **k, backend="native"), leaves, explicit, "relu", g_y)
    assert len(eager_everywhere) == calls  # an explicit backend runs its own kernels


def test_fused_dcgan_trains_as_the_original_on_the_eager_path(eager_everywhere):
    torch.manual_seed(0)
    original = Generator(nz=8, ngf=4, nc=3)
    fused = fastvae.fuse(Generator(nz=8, ngf=4, nc=3))
    fused.load_state_dict(original.state_dict())
    z = torch.randn(4, 8, 1, 1)
    for _ in range(2):  # training steps: running statistics and num_batches_tracked move
        y0, y1 = original(z), fused(z)
        assert torch.equal(y0, y1)
        g = torch.randn_like(y0)
        g0 = torch.autograd.grad(y0, list(original.parameters()), g)
        g1 = torch.autograd.grad(y1, list(fused.parameters()), g)
        assert all(torch.equal(a, b) for a, b in zip(g0, g1))
    assert eager_everywhere
    for (k, a), (_, b) in zip(original.state_dict().items(), fused.state_dict().items()):
        assert torch.equal(a, b), k
    original.eval(), fused.eval()
    assert torch.equal(original(z), fused(z))


def test_compiles_fullgraph_on_the_eager_path(eager_everywhere):
    leaves, opts, _ = make_args(NORMS["group"], 2, 4, 4, 3, (4, 2, 1, 0), torch.float32, "nchw")
    rest = {k: v for k, v in leaves.items() if k != "x"}
    fn = torch.compile(lambda x: fastvae.deconv_block(x, **rest, **opts, activation="silu"),
                       fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(fn(leaves["x"]), eager_path(leaves["x"], **rest, **opts,
                                                           activation="silu"))
