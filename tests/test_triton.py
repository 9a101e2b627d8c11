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
from tests.conftest import assert_close_to_reference, noncontiguous

from fastvae.kernels import reparam_kl as rk

DTYPES = (torch.float32, torch.float16)


@pytest.fixture
def poisoned_outputs(monkeypatch):
    """Kernel output buffers start as NaN, so an element a kernel never writes shows."""
    def new_output(shape, dtype, device):
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
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
