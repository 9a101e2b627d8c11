"""reparam_kl on the latents a VAE really has: eager PyTorch, torch.compile, every backend.

Baseline: the plain formula with eps = torch.randn_like(mu), as users write it.
Bytes moved (the floor): forward reads mu, logvar and writes z; backward reads grad_z,
mu, logvar and writes two gradients (the noise is regenerated, never stored).
"""
import pytest
import torch

import fastvae
from roofline import annotate
from fastvae.backends import _unavailable_reason

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SHAPES = {"latent_16x4x64x64": (16, 4, 64, 64), "vector_256x512": (256, 512)}
BACKENDS = [pytest.param(b, marks=pytest.mark.skipif(
    _unavailable_reason(b, "reparam_kl", DEVICE.type) is not None,
    reason=str(_unavailable_reason(b, "reparam_kl", DEVICE.type))))
    for b in ("reference", "native", "triton")]


def eager(mu, logvar):
    eps = torch.randn_like(mu)
    z = mu + torch.exp(0.5 * logvar) * eps
    kl = -0.5 * (1 + logvar - mu * mu - torch.exp(logvar))
    return z, kl.flatten(1).sum(1).mean()


_compiled = torch.compile(eager)


def fused(backend):
    return lambda mu, logvar: fastvae.reparam_kl(mu, logvar, backend=backend)


def inputs(shape):
    mu = torch.randn(shape, device=DEVICE, requires_grad=True)
    logvar = torch.randn(shape, device=DEVICE).clamp(-3, 3).requires_grad_()
    return mu, logvar


def step(fn, mu, logvar, grad_z, backward):
    def run():
        z, kl = fn(mu, logvar)
        if backward:
            torch.autograd.backward((z, kl), (grad_z, torch.ones_like(kl)))
            mu.grad = logvar.grad = None
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
    return run


def bytes_moved(shape, backward):
    n = torch.Size(shape).numel() * 4
    return 3 * n + (6 * n if backward else 0)


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("impl", ["eager", "compile"] + BACKENDS)
def test_reparam_kl(benchmark, copy_bandwidth, impl, shape_name, backward):
    shape = SHAPES[shape_name]
    fn = {"eager": eager, "compile": _compiled}.get(impl) or fused(impl)
    mu, logvar = inputs(shape)
    grad_z = torch.randn(shape, device=DEVICE)
    benchmark.group = f"reparam_kl {shape_name} {'fwd+bwd' if backward else 'fwd'}"
    benchmark(step(fn, mu, logvar, grad_z, backward))
    annotate(benchmark, bytes_moved=bytes_moved(shape, backward), copy_bandwidth=copy_bandwidth)
