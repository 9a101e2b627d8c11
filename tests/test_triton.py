"""The triton backend under TRITON_INTERPRET=1 on CPU tensors (conftest sets it).

The interpreter costs ~4.5 ms per program instance, so shapes are tiny and odd; float32
and float16 only (bfloat16 arithmetic is wrong inside the interpreter, see PLATFORM.md),
float64 for gradcheck. Every comparison is against fastvae.reference, values and
gradients with a random upstream gradient.
"""
import pytest
import torch

import fastvae
from fastvae import philox, reference
from fastvae.reference import K4S2P1
from tests.conftest import LOW_PRECISION_FLOOR, assert_close_to_reference, noncontiguous

from fastvae.kernels import reparam_kl as rk

DTYPES = (torch.float32, torch.float16)


@pytest.fixture
def poisoned_outputs(monkeypatch):
    """Kernel output buffers start as NaN, so an element a kernel never writes shows."""
    def new_output(shape, dtype, device, layout=torch.contiguous_format):
        return torch.empty(shape, dtype=dtype, device=device,
                           memory_format=layout).fill_(float("nan"))
    for module in _kernel_modules():
        monkeypatch.setattr(module, "_new_output", new_output)


def _kernel_modules():
    import importlib
    mods = [rk]
    try:
        mods.append(importlib.import_module("fastvae.kernels.deconv_block"))
    except ImportError:
        pass
    return mods


def _seed():
    return torch.randint(2**62, (), dtype=torch.int64)


# ----------------------------------------------------------------------------- reparam_kl

REPARAM_SHAPES = [(3, 5, 7), (2, 1), (5, 37), (2, 3, 1, 700)]  # 700: two chunks per row


def _reparam_case(shape, dtype, strided, with_eps):
    mu = torch.randn(shape) * 2
    logvar = torch.randn(shape)
    eps = torch.randn(shape) if with_eps else None
    args32 = (mu, logvar, eps)
    low = [None if t is None else t.to(dtype) for t in args32]
    if strided:
        low = [None if t is None else noncontiguous(t) for t in low]
    return args32, low


@pytest.mark.parametrize("shape", REPARAM_SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("with_eps", [False, True])
def test_reparam_kl_matches_reference(shape, dtype, strided, with_eps, poisoned_outputs):
    (mu32, lv32, eps32), (mu, lv, eps) = _reparam_case(shape, dtype, strided, with_eps)
    seed = _seed()
    z, kl = rk.reparam_kl_fwd(mu, lv, eps, seed)
    z_low, kl_low = reference.reparam_kl_fwd(mu, lv, eps, seed)
    z_ref, kl_ref = reference.reparam_kl_fwd(mu.float(), lv.float(),
                                             None if eps is None else eps.float(), seed)
    assert z.dtype == dtype and kl.dtype == torch.float32 and kl.shape == (shape[0],)
    assert_close_to_reference(z, z_low, z_ref, dtype, "z")
    torch.testing.assert_close(kl, kl_ref, rtol=1e-5, atol=1e-4)

    grad_z = noncontiguous(torch.randn(shape).to(dtype)) if strided else torch.randn(shape).to(dtype)
    grad_kl = torch.randn(shape[0])
    got = rk.reparam_kl_bwd(grad_z, grad_kl, mu, lv, eps, seed)
    low = reference.reparam_kl_bwd(grad_z, grad_kl, mu, lv, eps, seed)
    ref = reference.reparam_kl_bwd(grad_z.float(), grad_kl, mu.float(), lv.float(),
                                   None if eps is None else eps.float(), seed)
    for name, g, g_low, g_ref in zip(("grad_mu", "grad_logvar"), got, low, ref):
        assert g.dtype == dtype and g.shape == shape
        assert_close_to_reference(g, g_low, g_ref, dtype, name)


def test_reparam_kl_absent_grads():
    mu, lv = torch.randn(3, 9), torch.randn(3, 9)
    seed = _seed()
    g_z = torch.randn(3, 9)
    g_mu, g_lv = rk.reparam_kl_bwd(g_z, None, mu, lv, None, seed)
    r_mu, r_lv = reference.reparam_kl_bwd(g_z, torch.zeros(3), mu, lv, None, seed)
    torch.testing.assert_close(g_mu, r_mu)
    torch.testing.assert_close(g_lv, r_lv)
    g_kl = torch.randn(3)
    g_mu, g_lv = rk.reparam_kl_bwd(None, g_kl, mu, lv, None, seed)
    r_mu, r_lv = reference.reparam_kl_bwd(torch.zeros(3, 9), g_kl, mu, lv, None, seed)
    torch.testing.assert_close(g_mu, r_mu)
    torch.testing.assert_close(g_lv, r_lv)


@pytest.mark.parametrize("seed", [0, 1, 2**31 + 5, 2**62 - 1])
def test_reparam_kl_noise_is_the_philox_stream(seed):
    """mu = 0, logvar = 0 gives z = eps: exactly tl.randn(seed, i) for flat index i."""
    shape = (3, 4, 71)
    z, _ = rk.reparam_kl_fwd(torch.zeros(shape), torch.zeros(shape), None,
                             torch.tensor(seed, dtype=torch.int64))
    expected = philox.randn(seed, z.numel()).view(shape)
    torch.testing.assert_close(z, expected, rtol=0, atol=1e-5)
    assert z.std() > 0.5  # not a constant


def test_reparam_kl_public_op_float64_gradcheck():
    mu = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    lv = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    f = lambda m, l: fastvae.reparam_kl(m, l, seed=7, reduction="none", backend="triton")  # noqa: E731
    assert torch.autograd.gradcheck(f, (mu, lv))


@pytest.mark.parametrize("with_eps", [False, True])
def test_reparam_kl_opcheck(with_eps):
    mu = torch.randn(3, 6, requires_grad=True)
    lv = torch.randn(3, 6, requires_grad=True)
    eps = torch.randn(3, 6) if with_eps else None
    seed = torch.tensor(11, dtype=torch.int64)
    torch.library.opcheck(torch.ops.fastvae.reparam_kl.default, (mu, lv, eps, seed, "triton"))
    torch.library.opcheck(torch.ops.fastvae.reparam_kl.default,
                          (mu.detach(), lv.detach(), eps, seed, "triton"))


def test_reparam_kl_compile_fullgraph():
    mu, lv = torch.randn(4, 10, requires_grad=True), torch.randn(4, 10, requires_grad=True)

    def f(m, l):
        z, kl = fastvae.reparam_kl(m, l, seed=5, backend="triton")
        return z.sum() + kl

    compiled = torch.compile(f, fullgraph=True)
    out = compiled(mu, lv)
    expected = f(mu, lv)
    torch.testing.assert_close(out, expected)
    g = torch.autograd.grad(out, (mu, lv))
    g_ref = torch.autograd.grad(f(mu, lv), (mu, lv))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)


# --------------------------------------------------------------------------- deconv_block

from fastvae.kernels import deconv_block as db  # noqa: E402

ACTS = ("leaky_relu", "silu", "relu", "none")
NORMS = {"group": dict(norm="group"), "instance": dict(norm="instance"), "none": dict(norm="none")}
AFFINES = ("none", "norm_weight", "adain", "spatial_adain")


def _deconv_inputs(x_shape, cout, affine, bias=True, kernel=4):
    """float32 inputs and keyword tensors of one contract option."""
    n, cin, h, w = x_shape
    x = torch.randn(x_shape)
    weight = torch.randn(cin, cout, kernel, kernel) / (kernel * cin) ** 0.5
    tensors = dict(x=x, weight=weight, bias=torch.randn(cout) if bias else None)
    if affine == "norm_weight":
        tensors.update(norm_weight=1 + 0.5 * torch.randn(cout), norm_bias=torch.randn(cout))
    elif affine == "adain":
        tensors.update(style_scale=1 + 0.5 * torch.randn(n, cout), style_shift=torch.randn(n, cout))
    elif affine == "spatial_adain":
        tensors.update(style_scale=1 + 0.5 * torch.randn(n, cout, 2 * h, 2 * w),
                       style_shift=torch.randn(n, cout, 2 * h, 2 * w))
    return tensors


def _deconv_run(backend, tensors, dtype, grad_y, layout=None, **kwargs):
    """y and the gradients of every tensor input, through the public op."""
    leaves = {k: None if t is None else t.to(dtype) for k, t in tensors.items()}
    if layout is not None:
        leaves = {k: None if t is None else layout(k, t) for k, t in leaves.items()}
    for t in leaves.values():
        if t is not None:
            t.requires_grad_(True)
    x = leaves.pop("x")
    weight = leaves.pop("weight")
    y = fastvae.deconv_block(x, weight, backend=backend, **leaves, **kwargs)
    inputs = [x, weight] + [t for t in leaves.values() if t is not None]
    grads = torch.autograd.grad(y, inputs, grad_y.to(dtype))
    names = ["x", "weight"] + [k for k, t in leaves.items() if t is not None]
    return y, dict(zip(names, grads))


KINKED = ("relu", "leaky_relu")


def _check_deconv(x_shape, cout, affine, dtype, layout=None, bias=True, kernel=4, **kwargs):
    if dtype != torch.float32 and kwargs.get("activation", "leaky_relu") in KINKED:
        # In half precision a pre-activation within one rounding of 0 may take the other
        # side of the kink than in torch's run (different summation order), which moves
        # a whole gradient element: a coin flip, not an error. Kinks are tested in float32.
        kwargs["activation"] = "silu"
    tensors = _deconv_inputs(x_shape, cout, affine, bias, kernel)
    out_shape = fastvae.deconv_block(tensors["x"], tensors["weight"], norm="none",
                                     backend="reference", **{k: v for k, v in kwargs.items() if k in
                                                             ("stride", "padding", "output_padding")}).shape
    grad_y = torch.randn(out_shape)
    y, grads = _deconv_run("triton", tensors, dtype, grad_y, layout, **kwargs)
    y_low, grads_low = _deconv_run("reference", tensors, dtype, grad_y, layout, **kwargs)
    y_ref, grads_ref = _deconv_run("reference", tensors, torch.float32, grad_y, **kwargs)
    assert y.dtype == dtype and y.shape == y_ref.shape
    if layout is not None and tensors["x"].dim() == 4:
        x = layout("x", tensors["x"].to(dtype))
        assert y.is_contiguous(memory_format=reference.memory_format(x))
    _assert_close(y, y_low, y_ref, dtype, "y")
    assert grads.keys() == grads_ref.keys()
    for name in grads:
        assert grads[name].shape == grads_ref[name].shape, name
        if name == "bias" and kwargs.get("norm", "group") != "none":
            # The norm cancels the bias: its gradient is exactly zero, and what both
            # compute is rounding noise of a sum of many terms. Bound the noise by
            # torch's own, with room for a different summation order.
            noise = grads_low[name].float().abs().max().item()
            floor = 1e-4 if dtype == torch.float32 else 1e-3
            assert grads[name].float().abs().max().item() <= 4 * noise + floor, name
            continue
        _assert_close(grads[name], grads_low[name], grads_ref[name], dtype, f"grad_{name}")


def _assert_close(out, ref_low, ref_fp32, dtype, name):
    """conftest's rule, with 4x torch's own half-precision error instead of 2x: these
    groups hold as few as 8 values, so rstd is large and amplifies one-ulp differences
    in pre_norm, and the max error over a handful of values is a noisy statistic. A
    real bug is off by O(1), far outside either bound."""
    if dtype == torch.float32:
        assert_close_to_reference(out, ref_low, ref_fp32, dtype, name)
        return
    ref = ref_fp32.float()
    err = (out.float() - ref).abs().max().item()
    base = (ref_low.float() - ref).abs().max().item()
    bound = 4 * base + 2 * LOW_PRECISION_FLOOR[dtype] * max(1.0, ref.abs().max().item())
    assert err <= bound, f"{name}: {dtype} error {err:.3g} > bound {bound:.3g} (torch's own {base:.3g})"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("affine", AFFINES)
@pytest.mark.parametrize("norm", list(NORMS))
def test_deconv_block_every_option(norm, affine, dtype, poisoned_outputs):
    act = ACTS[(list(NORMS).index(norm) + AFFINES.index(affine)) % 4]
    _check_deconv((2, 8, 5, 3), 8, affine, dtype, **NORMS[norm], num_groups=4,
                  activation=act, negative_slope=0.1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTS)
def test_deconv_block_every_activation(activation, dtype, poisoned_outputs):
    _check_deconv((2, 8, 3, 5), 8, "adain", dtype, norm="group", num_groups=2,
                  activation=activation)


@pytest.mark.parametrize("x_shape, cout, groups", [
    ((1, 20, 5, 7), 20, 5),  # two channel tiles, two K steps, three pixel tiles per phase
    ((1, 3, 1, 1), 6, 3),  # a 1x1 input: every tap but one at the border
    ((3, 1, 2, 9), 2, 1),
])
@pytest.mark.parametrize("dtype", DTYPES)
def test_deconv_block_odd_shapes(x_shape, cout, groups, dtype, poisoned_outputs):
    _check_deconv(x_shape, cout, "norm_weight", dtype, norm="group", num_groups=groups)


def _strided(name, t):
    return noncontiguous(t)


def _channels_last(name, t):
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 and name == "x" else t


@pytest.mark.parametrize("layout", [_strided, _channels_last], ids=["strided", "channels_last"])
@pytest.mark.parametrize("affine", ["adain", "spatial_adain"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_deconv_block_layouts(layout, affine, dtype, poisoned_outputs):
    _check_deconv((2, 6, 3, 4), 6, affine, dtype, layout, bias=affine == "adain",
                  norm="instance")


GEOMETRIES = {  # name -> (kernel, stride, padding, output_padding, x shape)
    "k3s2p1op1": (3, 2, 1, 1, (2, 5, 3, 4)),
    "k2s2p0": (2, 2, 0, 0, (2, 5, 3, 2)),
    "k4s1p0_1x1": (4, 1, 0, 0, (3, 5, 1, 1)),  # DCGAN's first layer
    "k5s3p1op2": (5, 3, 1, 2, (1, 3, 2, 3)),  # odd: masked taps in some phases
    "k1s1p0": (1, 1, 0, 0, (2, 4, 3, 3)),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", ["batch", "group", "none"])
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_deconv_block_geometry(name, norm, dtype, poisoned_outputs):
    k, stride, padding, output_padding, x_shape = GEOMETRIES[name]
    act = ("gelu", "tanh", "sigmoid")[list(GEOMETRIES).index(name) % 3]
    _check_deconv(x_shape, 8, "norm_weight" if norm != "none" else "adain", dtype, kernel=k,
                  stride=stride, padding=padding, output_padding=output_padding, norm=norm,
                  num_groups=4, activation=act)


NEW_ACTIVATIONS = ("tanh", "sigmoid", "gelu", "gelu_tanh")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", NEW_ACTIVATIONS)
@pytest.mark.parametrize("layout", [None, _channels_last], ids=["contiguous", "channels_last"])
def test_deconv_block_batch_norm_and_new_activations(activation, layout, dtype, poisoned_outputs):
    _check_deconv((3, 6, 3, 4), 8, "norm_weight", dtype, layout, norm="batch",
                  activation=activation)


def test_deconv_block_batch_statistics():
    """BatchNorm's (1, C) mean/rstd from the conv epilogue's partials, a geometry whose
    phases have different pixel counts (output_padding, stride 3)."""
    t = _deconv_inputs((3, 5, 4, 3), 6, "none", kernel=5)
    geometry = [3, 3, 1, 1, 2, 2]
    got = db.deconv_block_fwd(t["x"], t["weight"], t["bias"], None, None, geometry, -1, "none",
                              0.2, 1e-5)
    ref = reference.deconv_block_fwd(t["x"], t["weight"], t["bias"], None, None, geometry, -1,
                                     "none", 0.2, 1e-5)
    for name, a, b in zip(("y", "pre_norm", "mean", "rstd"), got, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")
    assert got[2].shape == (1, 6)


def test_deconv_block_opcheck_geometry_and_batch():
    t = _deconv_inputs((2, 4, 3, 2), 4, "norm_weight", kernel=3)
    args = [t["x"], t["weight"], t["bias"], t["norm_weight"].view(1, -1, 1, 1),
            t["norm_bias"].view(1, -1, 1, 1)]
    for a in args:
        a.requires_grad_(True)
    torch.library.opcheck(torch.ops.fastvae.deconv_block.default,
                          (*args, [2, 2, 1, 1, 1, 1], -1, "gelu_tanh", 0.2, 1e-5, "triton"))


def test_deconv_block_backend_interface_stats():
    """mean/rstd from the conv epilogue's partials equal the reference's statistics."""
    t = _deconv_inputs((2, 20, 5, 7), 20, "none")
    for groups in (1, 5, 20):
        got = db.deconv_block_fwd(t["x"], t["weight"], t["bias"], None, None, K4S2P1, groups, "none", 0.2,
                                  1e-5)
        ref = reference.deconv_block_fwd(t["x"], t["weight"], t["bias"], None, None,
                                         K4S2P1, groups, "none", 0.2, 1e-5)
        for name, a, b in zip(("y", "pre_norm", "mean", "rstd"), got, ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")
        assert got[2].shape == (2, groups) and got[2].dtype == torch.float32


def test_deconv_block_float64_gradcheck():
    torch.manual_seed(0)
    args = [torch.randn(1, 2, 2, 3, dtype=torch.float64, requires_grad=True),
            torch.randn(2, 4, 4, 4, dtype=torch.float64, requires_grad=True),
            torch.randn(4, dtype=torch.float64, requires_grad=True),
            torch.randn(1, 4, 4, 6, dtype=torch.float64, requires_grad=True),
            torch.randn(1, 4, dtype=torch.float64, requires_grad=True)]

    def f(x, w, b, s, sh):
        return fastvae.deconv_block(x, w, b, num_groups=2, style_scale=s, style_shift=sh,
                                    activation="silu", backend="triton")
    assert torch.autograd.gradcheck(f, args, fast_mode=True)


@pytest.mark.parametrize("affine", ["norm_weight", "spatial_adain"])
def test_deconv_block_opcheck(affine):
    t = _deconv_inputs((2, 4, 3, 2), 4, affine)
    if affine == "norm_weight":
        scale, shift = t["norm_weight"].view(1, -1, 1, 1), t["norm_bias"].view(1, -1, 1, 1)
    else:
        scale, shift = t["style_scale"], t["style_shift"]
    args = [t["x"], t["weight"], t["bias"], scale, shift]
    for a in args:
        a.requires_grad_(True)
    torch.library.opcheck(torch.ops.fastvae.deconv_block.default,
                          (*args, K4S2P1, 2, "leaky_relu", 0.2, 1e-5, "triton"))
    torch.library.opcheck(torch.ops.fastvae.deconv_block.default,
                          (*[a.detach() for a in args], K4S2P1, 0, "silu", 0.2, 1e-5,
                           "triton"))


def test_deconv_block_compile_fullgraph():
    t = _deconv_inputs((2, 4, 3, 3), 8, "adain")
    x, w = t["x"].requires_grad_(), t["weight"].requires_grad_()

    def f(x, w, s, sh):
        y = fastvae.deconv_block(x, w, style_scale=s, style_shift=sh, num_groups=4,
                                 backend="triton")
        z, kl = fastvae.reparam_kl(y, y * 0.1, seed=3, backend="triton")
        return z, kl

    compiled = torch.compile(f, fullgraph=True)
    z, kl = compiled(x, w, t["style_scale"], t["style_shift"])
    z_ref, kl_ref = f(x, w, t["style_scale"], t["style_shift"])
    torch.testing.assert_close(z, z_ref)
    torch.testing.assert_close(kl, kl_ref)
    g = torch.autograd.grad((z * z_ref.detach()).sum() + kl, (x, w))
    g_ref = torch.autograd.grad((z_ref * z_ref.detach()).sum() + kl_ref, (x, w))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------ ahead-of-time compile


def test_compile_check_one_kernel_per_op():
    """Both ops' kernels compile for sm_90 without spills (the full check, every kernel,
    config, dtype and sm_80 too, is `python -m fastvae.kernels.compile_check`, run by CI
    separately). A subprocess: compiling needs TRITON_INTERPRET unset before triton loads."""
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-m", "fastvae.kernels.compile_check", "--arch", "90", "--dtype", "bf16",
         "--cases", "1"],
        env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    for kernel in ("_reparam_kl_fwd_kernel", "_reparam_kl_bwd_kernel", "_deconv_fwd_kernel",
                   "_group_stats_kernel", "_norm_act_fwd_kernel", "_norm_act_bwd_kernel"):
        assert kernel in out.stdout, kernel
    assert " 0 failed or spilled" in out.stdout


def test_deconv_block_non_square_geometry():
    """A 3x5 kernel, stride (2, 3), padding (1, 2), output_padding (1, 0): phases of
    different sizes and taps, at the backend interface against the reference."""
    torch.manual_seed(torch.seed() % 2**31)
    x, weight, bias = torch.randn(2, 4, 3, 4), torch.randn(4, 6, 3, 5), torch.randn(6)
    geometry = [2, 3, 1, 2, 1, 0]
    for groups in (2, -1):
        got = db.deconv_block_fwd(x, weight, bias, None, None, geometry, groups, "tanh", 0.2,
                                  1e-5)
        ref = reference.deconv_block_fwd(x, weight, bias, None, None, geometry, groups, "tanh",
                                         0.2, 1e-5)
        for name, a, b in zip(("y", "pre_norm", "mean", "rstd"), got, ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")
        grad_y = torch.randn_like(ref[0])
        got_g = db.deconv_block_bwd(grad_y, x, weight, *got[1:], None, None, True, geometry,
                                    groups, "tanh", 0.2, 1e-5)
        ref_g = reference.deconv_block_bwd(grad_y, x, weight, *ref[1:], None, None, True,
                                           geometry, groups, "tanh", 0.2, 1e-5)
        for a, b in zip(got_g[:3], ref_g[:3]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
