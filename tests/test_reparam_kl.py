"""fastvae.reparam_kl: the reference against the formula, every backend against the reference."""
import contextlib

import pytest
import torch

import fastvae
from fastvae import philox
from conftest import assert_close_to_reference, backend_params, noncontiguous

KERNEL_BACKENDS = [p for p in backend_params("reparam_kl") if p.id != "reference"]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
SHAPES = [(4, 7), (3, 5, 11, 13), (1, 1), (2, 1031)]  # odd sizes; 2x1031 spans several blocks


def fresh_seed() -> int:
    return int(torch.randint(2**62, ()))


def inputs(shape, dtype, layout="contiguous"):
    mu = torch.randn(shape, dtype=dtype)
    logvar = torch.randn(shape, dtype=dtype).clamp(-4, 4)
    if layout == "strided":
        mu, logvar = noncontiguous(mu), noncontiguous(logvar)
    return mu, logvar


def formula(mu, logvar, eps):
    """The contract, written out by hand."""
    z = mu + torch.exp(0.5 * logvar) * eps
    kl = -0.5 * (1 + logvar - mu**2 - torch.exp(logvar))
    return z, kl.reshape(mu.shape[0], -1).sum(1)


# ----------------------------------------------------------------------- the reference


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("shape", SHAPES)
def test_reference_matches_formula_values_and_grads(shape, reduction):
    mu, logvar = (t.double().requires_grad_() for t in inputs(shape, torch.float64))
    eps = torch.randn(shape, dtype=torch.float64)
    z, kl = fastvae.reparam_kl(mu, logvar, eps, reduction=reduction, backend="reference")
    z_ref, kl_rows = formula(mu, logvar, eps)
    kl_ref = {"none": kl_rows, "mean": kl_rows.mean(), "sum": kl_rows.sum()}[reduction]
    torch.testing.assert_close(z, z_ref)
    torch.testing.assert_close(kl, kl_ref)
    g_z, g_kl = torch.randn_like(z), torch.randn_like(kl)
    grads = torch.autograd.grad((z, kl), (mu, logvar), (g_z, g_kl))
    grads_ref = torch.autograd.grad((z_ref, kl_ref), (mu, logvar), (g_z, g_kl))
    torch.testing.assert_close(grads, grads_ref)


def test_reference_noise_is_the_philox_stream():
    mu, logvar = inputs((3, 5, 7), torch.float32)
    seed = fresh_seed()
    z, _ = fastvae.reparam_kl(mu, logvar, seed=seed, backend="reference")
    eps = philox.randn(seed, mu.numel()).view(mu.shape)
    torch.testing.assert_close(z, mu + torch.exp(0.5 * logvar) * eps)


@pytest.mark.parametrize("with_eps", [False, True])
@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_reference_gradcheck(with_eps, reduction):
    mu, logvar = (t.requires_grad_() for t in inputs((3, 2, 5), torch.float64))
    eps = torch.randn(3, 2, 5, dtype=torch.float64) if with_eps else None
    seed = fresh_seed()
    fn = lambda m, lv: fastvae.reparam_kl(m, lv, eps, seed=seed, reduction=reduction,  # noqa: E731
                                          backend="reference")
    assert torch.autograd.gradcheck(fn, (mu, logvar))


def test_seed_none_follows_torch_manual_seed():
    mu, logvar = inputs((4, 9), torch.float32)
    torch.manual_seed(1234)
    z1, _ = fastvae.reparam_kl(mu, logvar)
    z2, _ = fastvae.reparam_kl(mu, logvar)
    torch.manual_seed(1234)
    z3, _ = fastvae.reparam_kl(mu, logvar)
    assert torch.equal(z1, z3)
    assert not torch.equal(z1, z2)


def test_eps_gets_no_gradient():
    mu, logvar = inputs((2, 3), torch.float64)
    eps = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    z, kl = fastvae.reparam_kl(mu.requires_grad_(), logvar, eps)
    (z.sum() + kl).backward()
    assert eps.grad is None and mu.grad is not None


# ------------------------------------------------------------- every backend vs reference


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_eps", [False, True])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_backend_matches_reference(backend, with_eps, dtype, shape, layout):
    mu, logvar = inputs(shape, dtype, layout)
    eps = torch.randn(shape, dtype=dtype) if with_eps else None
    seed = fresh_seed()

    def run(m, lv, e, name):
        m, lv = m.detach().requires_grad_(), lv.detach().requires_grad_()
        z, kl = fastvae.reparam_kl(m, lv, e, seed=seed, reduction="none", backend=name)
        grads = torch.autograd.grad((z, kl), (m, lv), (g_z.to(z.dtype), g_kl.to(kl.dtype)))
        return (z, kl) + grads

    g_z, g_kl = torch.randn(shape), torch.randn(shape[0])
    out = run(mu, logvar, eps, backend)
    ref_low = run(mu, logvar, eps, "reference")
    wide = torch.float64 if dtype == torch.float64 else torch.float32
    ref_hi = run(mu.to(wide), logvar.to(wide), None if eps is None else eps.to(wide), "reference")
    # The in-kernel noise is float32 in every dtype ("the same stream up to float
    # rounding"), so float64 outputs that depend on it get float32's tolerance.
    noise_dtype = torch.float32 if dtype == torch.float64 and eps is None else dtype
    for name, o, lo, hi in zip(("z", "kl", "grad_mu", "grad_logvar"), out, ref_low, ref_hi):
        assert o.dtype == lo.dtype and o.shape == lo.shape, name
        tol_dtype = {"kl": lo.dtype, "grad_mu": dtype}.get(name, noise_dtype)
        assert_close_to_reference(o, lo, hi, tol_dtype, name)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_backend_propagates_non_finite_like_reference(backend):
    mu, logvar = inputs((3, 8), torch.float32)
    mu[0, 1], mu[1, 2], logvar[2, 3], logvar[0, 5] = float("inf"), float("nan"), float("nan"), 200.0
    seed = fresh_seed()
    out = fastvae.reparam_kl(mu, logvar, seed=seed, reduction="none", backend=backend)
    ref = fastvae.reparam_kl(mu, logvar, seed=seed, reduction="none", backend="reference")
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, equal_nan=True)


@pytest.mark.parametrize("backend", backend_params("reparam_kl"))
@pytest.mark.parametrize("with_eps", [False, True])
def test_opcheck(backend, with_eps):
    mu, logvar = (t.requires_grad_() for t in inputs((3, 5, 7), torch.float32))
    eps = torch.randn(3, 5, 7) if with_eps else None
    seed = torch.tensor(fresh_seed())
    torch.library.opcheck(torch.ops.fastvae.reparam_kl.default, (mu, logvar, eps, seed, backend))
    grads = (torch.randn(3, 5, 7), torch.randn(3), mu.detach(), logvar.detach(), eps, seed, backend)
    torch.library.opcheck(torch.ops.fastvae.reparam_kl_backward.default, grads)


class _PassThroughFunctionMode(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend", backend_params("reparam_kl"))
@pytest.mark.parametrize("with_eps", [False, True])
def test_eager_function_and_registered_op_agree(backend, with_eps):
    """Eager calls on plain tensors run ops._ReparamKLFunction; under a mode, compile or a
    subclass the registered op runs. Same values and gradients, and each path is taken."""
    mu, logvar = inputs((3, 5, 7), torch.float32)
    eps = torch.randn(3, 5, 7) if with_eps else None
    grad_z, seed = torch.randn(3, 5, 7), fresh_seed()
    results = {}
    for path, mode in (("function", None), ("op", _PassThroughFunctionMode())):
        m, lv = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
        with mode if mode is not None else contextlib.nullcontext():
            z, kl = fastvae.reparam_kl(m, lv, eps, seed=seed, reduction="sum", backend=backend)
            grads = torch.autograd.grad((z, kl), (m, lv), (grad_z, torch.tensor(0.7)))
        node = type(z.grad_fn).__name__
        assert ("ReparamKLFunction" in node) == (path == "function"), node
        results[path] = (z, kl, *grads)
    torch.testing.assert_close(results["function"], results["op"], rtol=0, atol=0)


# ------------------------------------------------------------------------- the module


def test_module_eval_mode_is_deterministic_mean():
    module = fastvae.nn.ReparamKL(reduction="sum")
    mu, logvar = inputs((4, 6), torch.float32)
    module.eval()
    z, kl = module(mu, logvar)
    assert torch.equal(z, mu)
    _, kl_ref = fastvae.reparam_kl(mu, logvar, reduction="sum", backend="reference")
    torch.testing.assert_close(kl, kl_ref)
    module.train()
    z_train, _ = module(mu, logvar)
    assert not torch.equal(z_train, mu)


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("case, error, match", [
    (lambda mu, lv: fastvae.reparam_kl(mu, lv[:, :3]), ValueError, "logvar"),
    (lambda mu, lv: fastvae.reparam_kl(mu, lv.double()), TypeError, "logvar"),
    (lambda mu, lv: fastvae.reparam_kl(mu.long(), lv), TypeError, "mu"),
    (lambda mu, lv: fastvae.reparam_kl(mu[:0], lv[:0]), ValueError, "empty batch"),
    (lambda mu, lv: fastvae.reparam_kl(mu[0, 0], lv[0, 0]), ValueError, "mu"),
    (lambda mu, lv: fastvae.reparam_kl(mu, lv, reduction="avg"), ValueError, "reduction"),
    (lambda mu, lv: fastvae.reparam_kl(mu, lv, backend="cuda"), ValueError, "backend"),
    (lambda mu, lv: fastvae.reparam_kl(mu, lv, torch.randn(4, 3)), ValueError, "eps"),
    (lambda mu, lv: fastvae.reparam_kl(mu, lv, seed=1.5), TypeError, "seed"),
    (lambda mu, lv: fastvae.reparam_kl(mu.numpy(), lv), TypeError, "mu"),
    (lambda mu, lv: fastvae.reparam_kl(mu, lv.to("meta")), ValueError, "logvar"),
])
def test_bad_input_names_the_argument(case, error, match):
    mu, logvar = inputs((4, 5), torch.float32)
    with pytest.raises(error, match=match):
        case(mu, logvar)


def test_unavailable_backend_is_a_runtime_error_not_a_fallback(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    mu, logvar = inputs((2, 3), torch.float32)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        fastvae.reparam_kl(mu, logvar, backend="triton")
