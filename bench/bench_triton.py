"""The triton backend on CUDA against eager PyTorch and torch.compile, in bfloat16.

    pytest bench/bench_triton.py --benchmark-only

Skipped without a CUDA device. reparam_kl reports GB/s over the bytes it must move
(forward: read mu, logvar, write z; backward adds grad_z read and two gradient writes);
deconv_block reports TFLOP/s of its convolution (2*N*H*W*Cin*Cout*16 forward, three
times that forward + backward) and GB/s over its unavoidable traffic (x, y and, with
norm, pre_norm written once). The H100 roofline prediction is in the README.
"""
import pytest
import torch
from torch import nn

import fastvae
from roofline import annotate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DTYPE = torch.bfloat16
REPARAM_SHAPES = {"16x4x64x64": (16, 4, 64, 64), "256x512": (256, 512)}
# name: (N, Cin, H, W, Cout)
DECONV_SHAPES = {"256to128_16px": (8, 256, 16, 16, 128), "128to64_32px": (8, 128, 32, 32, 64),
                 "64to32_64px": (8, 64, 64, 64, 32)}
GROUPS = 32


def _reparam_eager(mu, logvar):
    eps = torch.randn_like(mu)
    z = mu + torch.exp(0.5 * logvar) * eps
    kl = -0.5 * (1 + logvar.float() - mu.float() ** 2 - torch.exp(logvar.float()))
    return z, kl.flatten(1).sum(1).mean()


_reparam_compiled = torch.compile(_reparam_eager)


def _reparam_triton(mu, logvar):
    return fastvae.reparam_kl(mu, logvar, backend="triton")


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("shape_name", list(REPARAM_SHAPES))
@pytest.mark.parametrize("impl", ["eager", "compile", "triton"])
def test_reparam_kl(benchmark, impl, shape_name, backward):
    shape = REPARAM_SHAPES[shape_name]
    fn = {"eager": _reparam_eager, "compile": _reparam_compiled, "triton": _reparam_triton}[impl]
    mu = torch.randn(shape, device="cuda", dtype=DTYPE, requires_grad=backward)
    logvar = torch.randn(shape, device="cuda", dtype=DTYPE).clamp(-3, 3).requires_grad_(backward)
    grad_z = torch.randn_like(mu)

    def run():
        z, kl = fn(mu, logvar)
        if backward:
            torch.autograd.backward((z, kl), (grad_z, torch.ones_like(kl)))
        torch.cuda.synchronize()

    benchmark.group = f"triton reparam_kl {shape_name} {'fwd+bwd' if backward else 'fwd'}"
    benchmark(run)
    tensors = 3 + (5 if backward else 0)
    annotate(benchmark, bytes_moved=tensors * mu.numel() * mu.element_size())


def _deconv_eager(cin, cout):
    block = nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.GroupNorm(GROUPS, cout),
                          nn.LeakyReLU(0.2))
    return block.to(device="cuda", dtype=DTYPE, memory_format=torch.channels_last)


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("shape_name", list(DECONV_SHAPES))
@pytest.mark.parametrize("impl", ["eager", "compile", "triton"])
def test_deconv_block(benchmark, impl, shape_name, backward):
    n, cin, h, w, cout = DECONV_SHAPES[shape_name]
    torch.manual_seed(0)
    block = _deconv_eager(cin, cout)
    if impl == "compile":
        fn = torch.compile(block)
    elif impl == "triton":
        fn = fastvae.nn.DeconvBlock.from_modules(block[0], block[1], block[2], backend="triton")
        fn = fn.to(device="cuda", dtype=DTYPE)
    else:
        fn = block
    x = torch.randn(n, cin, h, w, device="cuda", dtype=DTYPE).contiguous(
        memory_format=torch.channels_last).requires_grad_(backward)
    grad_y = torch.randn(n, cout, 2 * h, 2 * w, device="cuda", dtype=DTYPE).contiguous(
        memory_format=torch.channels_last)

    def run():
        y = fn(x)
        if backward:
            y.backward(grad_y)
        torch.cuda.synchronize()

    benchmark.group = f"triton deconv_block {shape_name} {'fwd+bwd' if backward else 'fwd'}"
    benchmark(run)
    conv_flops = 2 * n * h * w * cin * cout * 16 * (3 if backward else 1)
    out_bytes = n * cout * 4 * h * w * x.element_size()
    annotate(benchmark, flops=conv_flops, bytes_moved=x.numel() * x.element_size() + 2 * out_bytes)
    benchmark.extra_info["TFLOP/s"] = round(conv_flops / benchmark.stats.stats.mean / 1e12, 2)
